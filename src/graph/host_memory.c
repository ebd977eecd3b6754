/* Host memory for the batches a plan reads. Plain 64-byte aligned blocks for
 * now; the plan is passed so that a backend able to copy faster from
 * page-locked memory (CUDA's cudaHostAlloc) can hand that out instead, and
 * free it the same way. */
#include "graph/plan_internal.h"

void *keel_plan_host_alloc(keel_plan *plan, size_t bytes)
{
    (void)plan;
    return keel_aligned_alloc(bytes ? bytes : 1);
}

void keel_plan_host_free(keel_plan *plan, void *ptr)
{
    (void)plan;
    keel_aligned_free(ptr);
}
