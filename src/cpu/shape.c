/* Channel concat and slice on contiguous NCHW tensors: for each sample the
 * channels of a tensor are one run of C*H*W floats, so both are memcpys of
 * whole runs. (RESHAPE is a view and needs no kernel.) */
#include "cpu/cpu.h"
#include <string.h>

/* Product of the dimensions after the channel axis. */
static int64_t inner_size(const keel_node *x)
{
    int64_t inner = 1;
    for (int d = 2; d < x->ndim; d++)
        inner *= x->shape[d];
    return inner;
}

static int threads_for(const keel_launch *l, int64_t bytes)
{
    return bytes < (1 << 20) ? 1 : keel_cpu_threads(l->device);
}

/* One piece per (sample, input): input i of sample b lands at channel
 * offset_i of the output's sample b. */
keel_status keel_cpu_concat(const keel_launch *l)
{
    const keel_node *node = l->node;
    const int count = node->n_inputs;
    const int64_t batch = node->shape[0];
    const int64_t out_channels = node->shape[1];
    const int64_t inner = inner_size(node);
    const int64_t pieces = batch * count;
    float *out = l->out;
    const int64_t bytes = batch * out_channels * inner * (int64_t)sizeof(float);
#pragma omp parallel for num_threads(threads_for(l, bytes)) schedule(static)
    for (int64_t piece = 0; piece < pieces; piece++) {
        const int64_t b = piece / count;
        const int i = (int)(piece % count);
        int64_t offset = 0;
        for (int j = 0; j < i; j++)
            offset += node->inputs[j]->shape[1];
        const int64_t channels = node->inputs[i]->shape[1];
        const float *src = (const float *)l->in[i] + b * channels * inner;
        memcpy(out + (b * out_channels + offset) * inner, src, (size_t)(channels * inner) * sizeof(float));
    }
    return KEEL_OK;
}

keel_status keel_cpu_slice(const keel_launch *l)
{
    const keel_node *node = l->node;
    const int64_t batch = node->shape[0];
    const int64_t in_channels = node->inputs[0]->shape[1];
    const int64_t offset = node->attrs.slice.offset;
    const int64_t count = node->attrs.slice.count;
    const int64_t inner = inner_size(node);
    const float *in = l->in[0];
    float *out = l->out;
    const int64_t bytes = batch * count * inner * (int64_t)sizeof(float);
#pragma omp parallel for num_threads(threads_for(l, bytes)) schedule(static)
    for (int64_t b = 0; b < batch; b++)
        memcpy(out + b * count * inner, in + (b * in_channels + offset) * inner, (size_t)(count * inner) * sizeof(float));
    return KEEL_OK;
}
