/* Blocks laid out like the plan's parameters, one per device: each device
 * holds its own share of the trainable layout (parameters, gradients,
 * optimiser state) or of the state layout (running statistics), so a
 * device's fused optimiser update touches only its own memory. */
#include "graph/plan_internal.h"
#include <stdlib.h>

/* Floats past each share: the fused updates may round their launch up. */
#define BLOCK_SLACK 16

static void share_of(const keel_plan *plan, int d, bool trainable, int64_t *begin, int64_t *count)
{
    const keel_plan_device *dev = &plan->devices[d];
    *begin = trainable ? dev->param_begin : dev->state_begin;
    *count = trainable ? dev->param_floats : dev->state_floats;
}

keel_status keel_plan_blocks_alloc(keel_plan *plan, bool trainable, float ***out)
{
    float **blocks = calloc((size_t)plan->n_devices, sizeof *blocks);
    *out = blocks;
    if (!blocks)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory allocating parameter blocks");
    for (int d = 0; d < plan->n_devices; d++) {
        keel_plan_device *dev = &plan->devices[d];
        int64_t begin, count;
        share_of(plan, d, trainable, &begin, &count);
        size_t bytes = (size_t)(count + BLOCK_SLACK) * sizeof(float);
        blocks[d] = dev->backend->alloc(dev->device, bytes);
        if (!blocks[d])
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of %s on %s", bytes,
                             trainable ? "parameters" : "running statistics", dev->name);
    }
    return KEEL_OK;
}

void keel_plan_blocks_free(keel_plan *plan, float **blocks)
{
    for (int d = 0; blocks && d < plan->n_devices; d++)
        if (blocks[d])
            plan->devices[d].backend->free(plan->devices[d].device, blocks[d]);
    free(blocks);
}

keel_status keel_plan_blocks_fill(keel_plan *plan, bool trainable, float *const *blocks, float value)
{
    for (int d = 0; d < plan->n_devices; d++) {
        keel_plan_device *dev = &plan->devices[d];
        int64_t begin, count;
        share_of(plan, d, trainable, &begin, &count);
        keel_status st = dev->backend->fill(dev->device, blocks[d], value, (size_t)(count + BLOCK_SLACK));
        if (st != KEEL_OK)
            return st;
    }
    return KEEL_OK;
}

keel_status keel_plan_blocks_download(keel_plan *plan, bool trainable, float *const *blocks, float *host)
{
    for (int d = 0; d < plan->n_devices; d++) {
        keel_plan_device *dev = &plan->devices[d];
        int64_t begin, count;
        share_of(plan, d, trainable, &begin, &count);
        keel_status st = count ? dev->backend->download(dev->device, host + begin, blocks[d],
                                                        (size_t)count * sizeof(float))
                               : KEEL_OK;
        if (st != KEEL_OK)
            return st;
    }
    return KEEL_OK;
}

keel_status keel_plan_blocks_upload(keel_plan *plan, bool trainable, float *const *blocks, const float *host)
{
    for (int d = 0; d < plan->n_devices; d++) {
        keel_plan_device *dev = &plan->devices[d];
        int64_t begin, count;
        share_of(plan, d, trainable, &begin, &count);
        keel_status st = count ? dev->backend->upload(dev->device, blocks[d], host + begin,
                                                      (size_t)count * sizeof(float))
                               : KEEL_OK;
        if (st != KEEL_OK)
            return st;
    }
    return KEEL_OK;
}
