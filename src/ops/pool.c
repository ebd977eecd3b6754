/* Max and average pooling over the spatial axes of {N, C, H, W}.
 *
 * Output size (PyTorch's rule): out = (in + 2*pad - kernel)/stride + 1 with
 * floor division, or ceiling division in ceil mode, where a window that
 * would start past the input and its left padding is dropped. */
#include "ops/ops.h"

keel_pool2d_opts keel_pool_opts(int kernel, int stride, int padding)
{
    keel_pool2d_opts o = {0};
    o.kernel_h = o.kernel_w = kernel;
    o.stride_h = o.stride_w = stride;
    o.pad_h = o.pad_w = padding;
    return o;
}

int64_t keel_pool_out_size(int64_t in, int kernel, int stride, int pad, bool ceil_mode)
{
    if (stride <= 0)
        stride = kernel;
    if (stride <= 0)
        return 0;
    int64_t span = in + 2 * (int64_t)pad - kernel;
    if (span < 0)
        return 0;
    int64_t out = (span + (ceil_mode ? stride - 1 : 0)) / stride + 1;
    /* The last window must start inside the input or its left padding. */
    if (ceil_mode && (out - 1) * stride >= in + pad)
        out--;
    return out;
}

double keel_pool2d_flops(const keel_node *node)
{
    const keel_pool_attrs *a = &node->attrs.pool;
    return (double)keel_shape_numel(node->ndim, node->shape) * a->kernel_h * a->kernel_w;
}

/* Checks the geometry of a pooling layer and creates its node; `kind` names
 * the layer in messages ("max pooling"). */
static keel_node *pool_node(keel_graph *g, const char *name, keel_node *x, const keel_pool2d_opts *opts,
                            keel_op op, const char *kind)
{
    char buf[96];
    if (!opts)
        return keel_graph_fail(g, name, "%s needs options (kernel size)", kind);
    if (x->ndim != 4)
        return keel_graph_fail(g, name, "%s needs a 4-D input {N, C, H, W}, got %s", kind,
                               keel_node_shape_str(x, buf, sizeof buf));
    keel_pool_attrs a = {
        .kernel_h = opts->kernel_h, .kernel_w = opts->kernel_w,
        .stride_h = opts->stride_h ? opts->stride_h : opts->kernel_h,
        .stride_w = opts->stride_w ? opts->stride_w : opts->kernel_w,
        .pad_h = opts->pad_h, .pad_w = opts->pad_w,
        .ceil_mode = opts->ceil_mode, .exclude_pad = opts->exclude_pad,
    };
    keel_node_shape_str(x, buf, sizeof buf);
    if (a.kernel_h < 1 || a.kernel_w < 1)
        return keel_graph_fail(g, name, "%s kernel %dx%d must be at least 1x1 (input %s)", kind, a.kernel_h,
                               a.kernel_w, buf);
    if (a.stride_h < 1 || a.stride_w < 1)
        return keel_graph_fail(g, name, "%s stride %dx%d must be positive (input %s)", kind, a.stride_h,
                               a.stride_w, buf);
    if (a.pad_h < 0 || a.pad_w < 0 || a.pad_h > a.kernel_h / 2 || a.pad_w > a.kernel_w / 2)
        return keel_graph_fail(g, name,
                               "%s padding %dx%d must be between 0 and half the kernel %dx%d (input %s)", kind,
                               a.pad_h, a.pad_w, a.kernel_h, a.kernel_w, buf);
    int64_t padded_h = x->shape[2] + 2 * (int64_t)a.pad_h, padded_w = x->shape[3] + 2 * (int64_t)a.pad_w;
    if (a.kernel_h > padded_h || a.kernel_w > padded_w)
        return keel_graph_fail(g, name, "%s kernel %dx%d is larger than the padded input %lldx%lld (input %s)",
                               kind, a.kernel_h, a.kernel_w, (long long)padded_h, (long long)padded_w, buf);
    int64_t shape[4] = {x->shape[0], x->shape[1],
                        keel_pool_out_size(x->shape[2], a.kernel_h, a.stride_h, a.pad_h, a.ceil_mode),
                        keel_pool_out_size(x->shape[3], a.kernel_w, a.stride_w, a.pad_w, a.ceil_mode)};
    if (shape[0] < 1 || shape[1] < 1 || shape[2] < 1 || shape[3] < 1)
        return keel_graph_fail(g, name, "%s of input %s gives an empty output", kind, buf);
    keel_node *y = keel_node_new(g, op, name, 1, &x, 4, shape);
    if (!y)
        return NULL;
    y->attrs.pool = a;
    return y;
}

keel_node *keel_max_pool2d(keel_graph *g, const char *name, keel_node *x, const keel_pool2d_opts *opts)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "max_pool");
    keel_node *y = pool_node(g, name, x, opts, KEEL_OP_MAX_POOL2D, "max pooling");
    if (!y)
        return NULL;
    /* The winner of each window, for the backward pass. */
    y->aux_bytes = keel_shape_numel(y->ndim, y->shape) * (int64_t)sizeof(int32_t);
    return y;
}

keel_node *keel_avg_pool2d(keel_graph *g, const char *name, keel_node *x, const keel_pool2d_opts *opts)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "avg_pool");
    return pool_node(g, name, x, opts, KEEL_OP_AVG_POOL2D, "average pooling");
}

keel_node *keel_global_avg_pool2d(keel_graph *g, const char *name, keel_node *x)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "global_avg_pool");
    char buf[96];
    if (x->ndim != 4)
        return keel_graph_fail(g, name, "global average pooling needs a 4-D input {N, C, H, W}, got %s",
                               keel_node_shape_str(x, buf, sizeof buf));
    if (x->shape[2] > (1 << 30) || x->shape[3] > (1 << 30))
        return keel_graph_fail(g, name, "global average pooling: plane of input %s is too large",
                               keel_node_shape_str(x, buf, sizeof buf));
    /* One window covering the whole plane. */
    keel_pool2d_opts opts = {.kernel_h = (int)x->shape[2], .kernel_w = (int)x->shape[3]};
    return pool_node(g, name, x, &opts, KEEL_OP_AVG_POOL2D, "global average pooling");
}

static void pool_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx, keel_op op)
{
    keel_node *x = node->inputs[0];
    if (!keel_node_needs_grad(x))
        return;
    keel_node *d = keel_grad_node(g, op, node, "dx", 1, &dy, x->ndim, x->shape);
    if (!d)
        return;
    d->attrs = node->attrs;
    d->fwd = node;
    dx[0] = d;
}

/* dx gets dy at each window's winner (the saved argmax). */
void keel_max_pool2d_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    pool_backward(g, node, dy, dx, KEEL_OP_MAX_POOL2D_BWD);
}

/* dx gets dy / count spread over each window. */
void keel_avg_pool2d_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    pool_backward(g, node, dy, dx, KEEL_OP_AVG_POOL2D_BWD);
}
