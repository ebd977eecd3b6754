/* Element-wise kernels: activations, add, scale, dropout, fill, copy.
 *
 * The planner may run ACTIVATION, ACTIVATION_BWD, ADD, SCALE, DROPOUT and
 * DROPOUT_BWD in place (out == in[0]): every loop below reads element i of
 * its inputs before it writes element i of the output and touches nothing
 * else, so aliasing is safe. The formulas come from ops/math.h, the same
 * expressions the CUDA kernels run. */
#include "cpu/cpu.h"
#include "ops/math.h"
#include <string.h>

/* Below this many elements a parallel region costs more than the loop. */
#define PARALLEL_MIN_ELEMENTS 32768

static int64_t node_numel(const keel_node *node)
{
    return keel_shape_numel(node->ndim, node->shape);
}

static int threads_for(const keel_launch *l, int64_t n)
{
    return n < PARALLEL_MIN_ELEMENTS ? 1 : keel_cpu_threads(l->device);
}

keel_status keel_cpu_activation(const keel_launch *l)
{
    const keel_node *node = l->node;
    const float *x = l->in[0];
    float *y = l->out;
    const int64_t n = node_numel(node);
    const int threads = threads_for(l, n);
    const float slope = node->attrs.act.slope;
    switch (node->attrs.act.kind) {
    case KEEL_ACT_RELU:
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            y[i] = keel_relu_f(x[i]);
        return KEEL_OK;
    case KEEL_ACT_LEAKY_RELU:
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            y[i] = keel_leaky_relu_f(x[i], slope);
        return KEEL_OK;
    case KEEL_ACT_SIGMOID:
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            y[i] = keel_sigmoid_f(x[i]);
        return KEEL_OK;
    case KEEL_ACT_TANH:
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            y[i] = keel_tanh_f(x[i]);
        return KEEL_OK;
    }
    return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: unknown activation kind %d", node->name, (int)node->attrs.act.kind);
}

/* in[1] is y, or x for a leaky ReLU with a negative slope (see
 * keel_activation_backward): either way its sign says which branch ran. */
keel_status keel_cpu_activation_bwd(const keel_launch *l)
{
    const keel_node *node = l->node;
    const float *dy = l->in[0];
    const float *saved = l->in[1];
    float *dx = l->out;
    const int64_t n = node_numel(node);
    const int threads = threads_for(l, n);
    const float slope = node->attrs.act.slope;
    switch (node->attrs.act.kind) {
    case KEEL_ACT_RELU:
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            dx[i] = keel_relu_grad(dy[i], saved[i]);
        return KEEL_OK;
    case KEEL_ACT_LEAKY_RELU:
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            dx[i] = keel_leaky_relu_grad(dy[i], saved[i], slope);
        return KEEL_OK;
    case KEEL_ACT_SIGMOID:
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            dx[i] = keel_sigmoid_grad(dy[i], saved[i]);
        return KEEL_OK;
    case KEEL_ACT_TANH:
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            dx[i] = keel_tanh_grad(dy[i], saved[i]);
        return KEEL_OK;
    }
    return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: unknown activation kind %d", node->name, (int)node->attrs.act.kind);
}

keel_status keel_cpu_add(const keel_launch *l)
{
    const float *a = l->in[0];
    const float *b = l->in[1];
    float *y = l->out;
    const int64_t n = node_numel(l->node);
#pragma omp parallel for num_threads(threads_for(l, n)) schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] + b[i];
    return KEEL_OK;
}

keel_status keel_cpu_scale(const keel_launch *l)
{
    const float *x = l->in[0];
    float *y = l->out;
    const float s = l->node->attrs.scale.s;
    const int64_t n = node_numel(l->node);
#pragma omp parallel for num_threads(threads_for(l, n)) schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = s * x[i];
    return KEEL_OK;
}

/* Multiplies x by the dropout mask of node `mask_of` at this step; forward
 * and backward differ only in which node id keys the stream. */
static void apply_dropout(const keel_launch *l, const keel_node *mask_of, const float *x, float *y)
{
    const float p = mask_of->attrs.dropout.p;
    const float inv_keep = 1.0f / (1.0f - p);
    const uint64_t key = keel_dropout_key(l->seed, mask_of->id, l->step);
    const int64_t n = node_numel(l->node);
#pragma omp parallel for num_threads(threads_for(l, n)) schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = keel_dropout_f(x[i], key, (uint64_t)i, p, inv_keep);
}

static void copy_floats(const keel_launch *l, const float *x, float *y)
{
    if (x != y)
        memcpy(y, x, (size_t)node_numel(l->node) * sizeof(float));
}

keel_status keel_cpu_dropout(const keel_launch *l)
{
    if (l->training)
        apply_dropout(l, l->node, l->in[0], l->out);
    else
        copy_floats(l, l->in[0], l->out);
    return KEEL_OK;
}

/* No mask was stored: the same draws are made again from the forward's id. */
keel_status keel_cpu_dropout_bwd(const keel_launch *l)
{
    const keel_node *fwd = l->node->fwd;
    if (!fwd)
        return keel_fail(KEEL_ERR_STATE, "%s: dropout gradient without its forward node", l->node->name);
    apply_dropout(l, fwd, l->in[0], l->out);
    return KEEL_OK;
}

keel_status keel_cpu_fill(const keel_launch *l)
{
    float *y = l->out;
    const float value = l->node->attrs.fill.value;
    const int64_t n = node_numel(l->node);
#pragma omp parallel for num_threads(threads_for(l, n)) schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = value;
    return KEEL_OK;
}

/* Byte copy, so int32 labels cross devices as well as floats. */
keel_status keel_cpu_copy(const keel_launch *l)
{
    if (l->out != l->in[0])
        memcpy(l->out, l->in[0], (size_t)node_numel(l->node) * keel_dtype_size(l->node->dtype));
    return KEEL_OK;
}
