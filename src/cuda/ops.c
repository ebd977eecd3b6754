/* Run functions of the ops that are our own kernels (kernels/): each
 * reads the node's shapes and attributes, as the CPU kernel of the same kind
 * does, and enqueues the launch on the device's stream. A launch error names
 * the kernel and the node. */
#include "cuda/cuda_internal.h"
#include "ops/math.h"

#include <string.h>

#define ENTER(l)                                                           \
    do {                                                                   \
        keel_status enter_st_ = keel_cuda_enter((l)->device);              \
        if (enter_st_ != KEEL_OK)                                          \
            return enter_st_;                                              \
    } while (0)

#define LAUNCH(l, fn, args) KEEL_CUDA_TRY((l)->node->name, fn, args)

static cudaStream_t stream_of(const keel_launch *l) { return l->device->stream; }

/* ---- fill, copy ---------------------------------------------------------------------- */

keel_status keel_cuda_fill_node(const keel_launch *l)
{
    ENTER(l);
    LAUNCH(l, keel_k_fill, (stream_of(l), l->out, l->node->attrs.fill.value, keel_cuda_numel(l->node)));
    return KEEL_OK;
}

/* Bytes, so int32 labels move as well as floats; cudaMemcpyDefault lets the
 * source live on another GPU or in host memory.
 *
 * A source on another GPU was written by work its device only queued (a
 * run returns once its launch is queued), and that device may reuse the
 * buffer as soon as this node has run: so a copy between GPUs waits for the
 * source device first and for itself after. */
keel_status keel_cuda_copy(const keel_launch *l)
{
    ENTER(l);
    size_t bytes = (size_t)keel_cuda_numel(l->node) * keel_dtype_size(l->node->dtype);
    if (l->out == l->in[0] || !bytes)
        return KEEL_OK;
    struct cudaPointerAttributes source;
    LAUNCH(l, cudaPointerGetAttributes, (&source, l->in[0]));
    bool other_gpu = source.type == cudaMemoryTypeDevice && source.device != l->device->ordinal;
    if (other_gpu) {
        LAUNCH(l, cudaSetDevice, (source.device));
        LAUNCH(l, cudaDeviceSynchronize, ());
        LAUNCH(l, cudaSetDevice, (l->device->ordinal));
    }
    LAUNCH(l, cudaMemcpyAsync, (l->out, l->in[0], bytes, cudaMemcpyDefault, stream_of(l)));
    if (other_gpu)
        LAUNCH(l, cudaStreamSynchronize, (stream_of(l)));
    return KEEL_OK;
}

/* ---- element-wise ---------------------------------------------------------------------- */

static bool act_of(keel_act_kind kind, keel_k_act *out)
{
    switch (kind) {
    case KEEL_ACT_RELU: *out = KEEL_K_RELU; return true;
    case KEEL_ACT_LEAKY_RELU: *out = KEEL_K_LEAKY_RELU; return true;
    case KEEL_ACT_SIGMOID: *out = KEEL_K_SIGMOID; return true;
    case KEEL_ACT_TANH: *out = KEEL_K_TANH; return true;
    }
    return false;
}

keel_status keel_cuda_activation(const keel_launch *l)
{
    ENTER(l);
    keel_k_act act;
    if (!act_of(l->node->attrs.act.kind, &act))
        return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: unknown activation kind %d", l->node->name,
                         (int)l->node->attrs.act.kind);
    LAUNCH(l, keel_k_activation,
           (stream_of(l), act, l->node->attrs.act.slope, l->in[0], l->out, keel_cuda_numel(l->node)));
    return KEEL_OK;
}

keel_status keel_cuda_activation_bwd(const keel_launch *l)
{
    ENTER(l);
    keel_k_act act;
    if (!act_of(l->node->attrs.act.kind, &act))
        return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: unknown activation kind %d", l->node->name,
                         (int)l->node->attrs.act.kind);
    LAUNCH(l, keel_k_activation_bwd,
           (stream_of(l), act, l->node->attrs.act.slope, l->in[0], l->in[1], l->out, keel_cuda_numel(l->node)));
    return KEEL_OK;
}

keel_status keel_cuda_add(const keel_launch *l)
{
    ENTER(l);
    LAUNCH(l, keel_k_add, (stream_of(l), l->in[0], l->in[1], l->out, keel_cuda_numel(l->node), false));
    return KEEL_OK;
}

keel_status keel_cuda_scale(const keel_launch *l)
{
    ENTER(l);
    LAUNCH(l, keel_k_scale, (stream_of(l), l->in[0], l->out, l->node->attrs.scale.s, keel_cuda_numel(l->node)));
    return KEEL_OK;
}

/* The mask of node `mask_of` at this step, drawn as the CPU draws it. */
static keel_status apply_dropout(const keel_launch *l, const keel_node *mask_of)
{
    uint64_t key = keel_dropout_key(l->seed, mask_of->id, l->step);
    LAUNCH(l, keel_k_dropout,
           (stream_of(l), l->in[0], l->out, keel_cuda_numel(l->node), key, mask_of->attrs.dropout.p));
    return KEEL_OK;
}

keel_status keel_cuda_dropout(const keel_launch *l)
{
    ENTER(l);
    if (l->training)
        return apply_dropout(l, l->node);
    return keel_cuda_copy(l);
}

keel_status keel_cuda_dropout_bwd(const keel_launch *l)
{
    ENTER(l);
    if (!l->node->fwd)
        return keel_fail(KEEL_ERR_STATE, "%s: dropout gradient without its forward node", l->node->name);
    return apply_dropout(l, l->node->fwd);
}

keel_status keel_cuda_bias_grad(const keel_launch *l)
{
    ENTER(l);
    const keel_node *dy = l->node->inputs[0];
    LAUNCH(l, keel_k_bias_grad, (stream_of(l), l->in[0], l->out, dy->shape[0], dy->shape[1], keel_cuda_inner(dy)));
    return KEEL_OK;
}

/* ---- pooling --------------------------------------------------------------------------- */

/* `in` is the pooled input, `out` the pooled output, whichever way the node runs. */
static keel_k_pool_params pool_params(const keel_node *in, const keel_node *out, const keel_pool_attrs *a)
{
    keel_k_pool_params p = {
        .planes = in->shape[0] * in->shape[1],
        .in_h = in->shape[2], .in_w = in->shape[3], .out_h = out->shape[2], .out_w = out->shape[3],
        .kernel_h = a->kernel_h, .kernel_w = a->kernel_w, .stride_h = a->stride_h, .stride_w = a->stride_w,
        .pad_h = a->pad_h, .pad_w = a->pad_w, .exclude_pad = a->exclude_pad,
    };
    return p;
}

keel_status keel_cuda_max_pool2d(const keel_launch *l)
{
    ENTER(l);
    keel_k_pool_params p = pool_params(l->node->inputs[0], l->node, &l->node->attrs.pool);
    LAUNCH(l, keel_k_max_pool, (stream_of(l), &p, l->in[0], l->out, l->aux));
    return KEEL_OK;
}

keel_status keel_cuda_max_pool2d_bwd(const keel_launch *l)
{
    ENTER(l);
    if (!l->fwd_aux)
        return keel_fail(KEEL_ERR_STATE, "%s: max-pool gradient without its forward's argmax", l->node->name);
    keel_k_pool_params p = pool_params(l->node, l->node->inputs[0], &l->node->attrs.pool);
    LAUNCH(l, keel_k_max_pool_bwd, (stream_of(l), &p, l->in[0], l->fwd_aux, l->out));
    return KEEL_OK;
}

keel_status keel_cuda_avg_pool2d(const keel_launch *l)
{
    ENTER(l);
    keel_k_pool_params p = pool_params(l->node->inputs[0], l->node, &l->node->attrs.pool);
    LAUNCH(l, keel_k_avg_pool, (stream_of(l), &p, l->in[0], l->out));
    return KEEL_OK;
}

keel_status keel_cuda_avg_pool2d_bwd(const keel_launch *l)
{
    ENTER(l);
    keel_k_pool_params p = pool_params(l->node, l->node->inputs[0], &l->node->attrs.pool);
    LAUNCH(l, keel_k_avg_pool_bwd, (stream_of(l), &p, l->in[0], l->out));
    return KEEL_OK;
}

/* ---- normalisation ----------------------------------------------------------------------- */

static keel_k_lrn_params lrn_params(const keel_node *x, const keel_lrn_attrs *a)
{
    keel_k_lrn_params p = {.batch = x->shape[0], .channels = x->shape[1], .inner = keel_cuda_inner(x),
                           .size = a->size, .alpha = a->alpha, .beta = a->beta, .k = a->k};
    return p;
}

keel_status keel_cuda_lrn(const keel_launch *l)
{
    ENTER(l);
    keel_k_lrn_params p = lrn_params(l->node, &l->node->attrs.lrn);
    LAUNCH(l, keel_k_lrn, (stream_of(l), &p, l->in[0], l->out, l->aux));
    return KEEL_OK;
}

keel_status keel_cuda_lrn_bwd(const keel_launch *l)
{
    ENTER(l);
    if (!l->fwd_aux)
        return keel_fail(KEEL_ERR_STATE, "%s: LRN gradient without its forward's scale", l->node->name);
    keel_k_lrn_params p = lrn_params(l->node, &l->node->attrs.lrn);
    LAUNCH(l, keel_k_lrn_bwd, (stream_of(l), &p, l->in[0], l->in[1], l->in[2], l->fwd_aux, l->out));
    return KEEL_OK;
}

static keel_k_bn_params bn_params(const keel_node *x, const keel_bn_attrs *a)
{
    keel_k_bn_params p = {.batch = x->shape[0], .channels = x->shape[1], .inner = keel_cuda_inner(x),
                          .eps = a->eps, .momentum = a->momentum};
    return p;
}

keel_status keel_cuda_batch_norm(const keel_launch *l)
{
    ENTER(l);
    const keel_node *node = l->node;
    keel_k_bn_params p = bn_params(node, &node->attrs.bn);
    if (l->training && p.batch * p.inner < 2) {
        char buf[96];
        return keel_fail(KEEL_ERR_SHAPE,
                         "%s: batch norm in training needs more than one value per channel (input %s)", node->name,
                         keel_node_shape_str(node->inputs[0], buf, sizeof buf));
    }
    /* Inputs 3 and 4 are the running statistics in the state block, moved in place. */
    LAUNCH(l, keel_k_batch_norm,
           (stream_of(l), &p, l->training, l->in[0], l->in[1], l->in[2], l->in[3], l->in[4], l->out, l->aux));
    return KEEL_OK;
}

keel_status keel_cuda_batch_norm_bwd_gamma(const keel_launch *l)
{
    ENTER(l);
    keel_k_bn_params p = bn_params(l->node->inputs[1], &l->node->attrs.bn);
    LAUNCH(l, keel_k_batch_norm_bwd_gamma, (stream_of(l), &p, l->in[0], l->in[1], l->fwd_aux, l->out));
    return KEEL_OK;
}

keel_status keel_cuda_batch_norm_bwd_data(const keel_launch *l)
{
    ENTER(l);
    keel_k_bn_params p = bn_params(l->node, &l->node->attrs.bn);
    LAUNCH(l, keel_k_batch_norm_bwd_data,
           (stream_of(l), &p, l->in[0], l->in[1], l->in[2], l->in[3], l->in[4], l->fwd_aux, l->out));
    return KEEL_OK;
}

/* ---- structure: for each sample a tensor's channels are one contiguous run,
 * so concat and slice are strided 2-D copies (one row per sample). ----------- */

keel_status keel_cuda_concat(const keel_launch *l)
{
    ENTER(l);
    const keel_node *node = l->node;
    const int64_t batch = node->shape[0], inner = keel_cuda_inner(node);
    const size_t out_pitch = (size_t)(node->shape[1] * inner) * sizeof(float);
    int64_t offset = 0;
    for (int i = 0; i < node->n_inputs; i++) {
        const int64_t channels = node->inputs[i]->shape[1];
        const size_t run = (size_t)(channels * inner) * sizeof(float);
        if (run && batch)
            LAUNCH(l, cudaMemcpy2DAsync,
                   ((float *)l->out + offset * inner, out_pitch, l->in[i], run, run, (size_t)batch,
                    cudaMemcpyDeviceToDevice, stream_of(l)));
        offset += channels;
    }
    return KEEL_OK;
}

keel_status keel_cuda_slice(const keel_launch *l)
{
    ENTER(l);
    const keel_node *node = l->node;
    const int64_t batch = node->shape[0], inner = keel_cuda_inner(node);
    const size_t in_pitch = (size_t)(node->inputs[0]->shape[1] * inner) * sizeof(float);
    const size_t run = (size_t)(node->attrs.slice.count * inner) * sizeof(float);
    if (run && batch)
        LAUNCH(l, cudaMemcpy2DAsync,
               (l->out, run, (const float *)l->in[0] + node->attrs.slice.offset * inner, in_pitch, run,
                (size_t)batch, cudaMemcpyDeviceToDevice, stream_of(l)));
    return KEEL_OK;
}

/* ---- softmax and losses -------------------------------------------------------------------- */

keel_status keel_cuda_softmax(const keel_launch *l)
{
    ENTER(l);
    LAUNCH(l, keel_k_softmax, (stream_of(l), l->in[0], l->out, l->node->shape[0], l->node->shape[1]));
    return KEEL_OK;
}

keel_status keel_cuda_softmax_bwd(const keel_launch *l)
{
    ENTER(l);
    LAUNCH(l, keel_k_softmax_bwd, (stream_of(l), l->in[0], l->in[1], l->out, l->node->shape[0], l->node->shape[1]));
    return KEEL_OK;
}

/* Loss reductions need scratch: per-row losses for cross-entropy, block
 * partials for the element-wise losses. */
keel_status keel_cuda_loss_prepare(keel_device *d, const keel_node *node, int64_t *workspace, void **algo)
{
    (void)d;
    *algo = NULL;
    if (node->op == KEEL_OP_SOFTMAX_CROSS_ENTROPY)
        *workspace = node->inputs[0]->shape[0] * (int64_t)sizeof(double);
    else
        *workspace = KEEL_K_REDUCE_BYTES;
    return KEEL_OK;
}

keel_status keel_cuda_softmax_cross_entropy(const keel_launch *l)
{
    ENTER(l);
    const keel_node *node = l->node;
    const int64_t rows = node->inputs[0]->shape[0], classes = node->inputs[0]->shape[1];
    if (l->workspace_bytes < rows * (int64_t)sizeof(double))
        return keel_fail(KEEL_ERR_STATE, "%s: workspace of %lld bytes, %lld needed", node->name,
                         (long long)l->workspace_bytes, (long long)(rows * (int64_t)sizeof(double)));
    keel_device *d = l->device;
    d->bad_label_node = node;
    d->bad_label_labels = l->in[1];
    LAUNCH(l, keel_k_softmax_cross_entropy,
           (stream_of(l), l->in[0], l->in[1], l->aux, l->out, rows, classes, l->workspace, d->bad_label));
    return KEEL_OK;
}

/* Called after the stream has drained (sync, download). */
keel_status keel_cuda_check_labels(keel_device *d)
{
    const keel_node *node = d->bad_label_node;
    if (!node)
        return KEEL_OK;
    d->bad_label_node = NULL;
    unsigned long long first_bad = 0;
    KEEL_CUDA_TRY(d->name, cudaMemcpyAsync,
                  (&first_bad, d->bad_label, sizeof first_bad, cudaMemcpyDeviceToHost, d->stream));
    KEEL_CUDA_TRY(d->name, cudaStreamSynchronize, (d->stream));
    if (first_bad == ~0ull)
        return KEEL_OK;
    int32_t label = 0;
    KEEL_CUDA_TRY(node->name, cudaMemcpyAsync,
                  (&label, d->bad_label_labels + first_bad, sizeof label, cudaMemcpyDeviceToHost, d->stream));
    KEEL_CUDA_TRY(d->name, cudaMemsetAsync, (d->bad_label, 0xff, sizeof *d->bad_label, d->stream));
    KEEL_CUDA_TRY(d->name, cudaStreamSynchronize, (d->stream));
    long long classes = (long long)node->inputs[0]->shape[1];
    return keel_fail(KEEL_ERR_INVALID_ARGUMENT,
                     "%s: label %d of sample %llu is outside [0, %lld); the logits have %lld classes", node->name,
                     (int)label, first_bad, classes, classes);
}

keel_status keel_cuda_softmax_cross_entropy_bwd(const keel_launch *l)
{
    ENTER(l);
    if (!l->fwd_aux)
        return keel_fail(KEEL_ERR_STATE, "%s: cross-entropy gradient without its forward's probabilities",
                         l->node->name);
    LAUNCH(l, keel_k_softmax_cross_entropy_bwd,
           (stream_of(l), l->in[0], l->in[1], l->fwd_aux, l->out, l->node->shape[0], l->node->shape[1]));
    return KEEL_OK;
}

static keel_status check_reduce_workspace(const keel_launch *l)
{
    if (l->workspace_bytes < KEEL_K_REDUCE_BYTES || !l->workspace)
        return keel_fail(KEEL_ERR_STATE, "%s: workspace of %lld bytes, %lld needed", l->node->name,
                         (long long)l->workspace_bytes, (long long)KEEL_K_REDUCE_BYTES);
    return KEEL_OK;
}

keel_status keel_cuda_mse_loss(const keel_launch *l)
{
    ENTER(l);
    keel_status st = check_reduce_workspace(l);
    if (st != KEEL_OK)
        return st;
    LAUNCH(l, keel_k_mse_loss,
           (stream_of(l), l->in[0], l->in[1], l->out, keel_cuda_numel(l->node->inputs[0]), l->workspace));
    return KEEL_OK;
}

keel_status keel_cuda_mse_loss_bwd(const keel_launch *l)
{
    ENTER(l);
    LAUNCH(l, keel_k_mse_loss_bwd, (stream_of(l), l->in[0], l->in[1], l->in[2], l->out, keel_cuda_numel(l->node)));
    return KEEL_OK;
}

keel_status keel_cuda_bce_with_logits(const keel_launch *l)
{
    ENTER(l);
    keel_status st = check_reduce_workspace(l);
    if (st != KEEL_OK)
        return st;
    LAUNCH(l, keel_k_bce_with_logits,
           (stream_of(l), l->in[0], l->in[1], l->out, keel_cuda_numel(l->node->inputs[0]), l->workspace));
    return KEEL_OK;
}

keel_status keel_cuda_bce_with_logits_bwd(const keel_launch *l)
{
    ENTER(l);
    LAUNCH(l, keel_k_bce_with_logits_bwd,
           (stream_of(l), l->in[0], l->in[1], l->in[2], l->out, keel_cuda_numel(l->node)));
    return KEEL_OK;
}
