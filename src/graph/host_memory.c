/* Host memory for the batches a plan reads: page-locked where the plan's
 * device copies from it without a bounce buffer (CUDA pinned memory), so
 * keel_plan_set_input can copy asynchronously; 64-byte aligned blocks
 * otherwise. */
#include "graph/plan_internal.h"

void *keel_plan_host_alloc(keel_plan *plan, size_t bytes)
{
    if (plan && plan->backend->host_alloc)
        return plan->backend->host_alloc(plan->device, bytes);
    return keel_aligned_alloc(bytes ? bytes : 1);
}

void keel_plan_host_free(keel_plan *plan, void *ptr)
{
    if (plan && plan->backend->host_free)
        plan->backend->host_free(plan->device, ptr);
    else
        keel_aligned_free(ptr);
}
