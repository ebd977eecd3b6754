/* Convolution: conv2d, conv_transpose2d and their gradients.
 *
 * conv2d, for sample n, output channel k in group g and output pixel (p, q):
 *   y[n,k,p,q] = b[k] + sum_{c in g, i, j} w[k, c, i, j] *
 *                x[n, c, p*stride_h - pad_top + i*dilation_h, q*stride_w - pad_left + j*dilation_w]
 * (x is zero outside the image). Its data gradient is the transposed
 * convolution of dy with the same weight, and conv_transpose2d is that data
 * gradient used as a layer, so one kernel serves CONV2D_BWD_DATA and
 * CONV_TRANSPOSE2D, and the gradients of conv_transpose2d are conv2d
 * kernels with the roles of x and dy swapped. */
#include <math.h>
#include <stdio.h>
#include "ops/ops.h"

keel_conv2d_opts keel_conv_opts(int kernel, int stride, int padding)
{
    keel_conv2d_opts opts = {0};
    opts.kernel_h = opts.kernel_w = kernel;
    opts.stride_h = opts.stride_w = stride;
    opts.pad_top = opts.pad_bottom = opts.pad_left = opts.pad_right = padding;
    opts.dilation_h = opts.dilation_w = 1;
    opts.groups = 1;
    return opts;
}

int64_t keel_conv_out_size(int64_t in, int kernel, int stride, int pad_total, int dilation)
{
    int64_t span = in + pad_total - (int64_t)dilation * (kernel - 1) - 1;
    if (span < 0 || stride <= 0)
        return 0;
    return span / stride + 1;
}

/* The spatial size conv_transpose2d produces: conv2d's rule solved for its input. */
static int64_t conv_transpose_out_size(int64_t in, int kernel, int stride, int pad_total, int dilation,
                                       int output_pad)
{
    return (in - 1) * stride - pad_total + (int64_t)dilation * (kernel - 1) + output_pad + 1;
}

static int or_one(int v) { return v == 0 ? 1 : v; }

/* Checks the options against the input and fills in the attributes (0 means
 * 1 for stride, dilation and groups). `in_channels` is the channel count of
 * x; `out_channels` what the layer produces. Records the error and returns
 * false when something does not fit. */
static bool conv_attrs_make(keel_graph *g, const char *name, const char *op, const keel_node *x,
                            int out_channels, const keel_conv2d_opts *opts, bool transpose,
                            keel_conv_attrs *attrs)
{
    char shape[96];
    keel_node_shape_str(x, shape, sizeof shape);
    if (!opts) {
        keel_graph_fail(g, name, "%s needs options (kernel size at least; see keel_conv_opts) (input %s)", op,
                        shape);
        return false;
    }
    if (x->ndim != 4) {
        keel_graph_fail(g, name, "%s expects a 4-D input {N, C, H, W}, got %d-D input %s", op, x->ndim, shape);
        return false;
    }
    if (x->dtype != KEEL_F32) {
        keel_graph_fail(g, name, "%s expects a float32 input, got %s (input %s)", op, keel_dtype_name(x->dtype),
                        shape);
        return false;
    }
    if (out_channels <= 0) {
        keel_graph_fail(g, name, "out_channels must be positive, got %d (input %s)", out_channels, shape);
        return false;
    }
    if (opts->kernel_h <= 0 || opts->kernel_w <= 0) {
        keel_graph_fail(g, name, "kernel size must be positive, got %dx%d (input %s)", opts->kernel_h,
                        opts->kernel_w, shape);
        return false;
    }
    if (opts->stride_h < 0 || opts->stride_w < 0) {
        keel_graph_fail(g, name, "stride must not be negative, got %dx%d (input %s)", opts->stride_h,
                        opts->stride_w, shape);
        return false;
    }
    if (opts->dilation_h < 0 || opts->dilation_w < 0) {
        keel_graph_fail(g, name, "dilation must not be negative, got %dx%d (input %s)", opts->dilation_h,
                        opts->dilation_w, shape);
        return false;
    }
    if (opts->groups < 0) {
        keel_graph_fail(g, name, "groups must not be negative, got %d (input %s)", opts->groups, shape);
        return false;
    }
    if (opts->pad_top < 0 || opts->pad_bottom < 0 || opts->pad_left < 0 || opts->pad_right < 0) {
        keel_graph_fail(g, name, "padding must not be negative, got top %d bottom %d left %d right %d (input %s)",
                        opts->pad_top, opts->pad_bottom, opts->pad_left, opts->pad_right, shape);
        return false;
    }
    *attrs = (keel_conv_attrs){
        .kernel_h = opts->kernel_h, .kernel_w = opts->kernel_w,
        .stride_h = or_one(opts->stride_h), .stride_w = or_one(opts->stride_w),
        .pad_top = opts->pad_top, .pad_bottom = opts->pad_bottom,
        .pad_left = opts->pad_left, .pad_right = opts->pad_right,
        .dilation_h = or_one(opts->dilation_h), .dilation_w = or_one(opts->dilation_w),
        .groups = or_one(opts->groups),
        .has_bias = !opts->no_bias,
    };
    int64_t in_channels = x->shape[1];
    if (in_channels % attrs->groups != 0 || out_channels % attrs->groups != 0) {
        keel_graph_fail(g, name,
                        "groups %d must divide both the input channels (%lld) and the output channels (%d) "
                        "(input %s)",
                        attrs->groups, (long long)in_channels, out_channels, shape);
        return false;
    }
    if (!transpose) {
        if (opts->output_pad_h != 0 || opts->output_pad_w != 0) {
            keel_graph_fail(g, name, "output padding %dx%d applies to conv_transpose2d only (input %s)",
                            opts->output_pad_h, opts->output_pad_w, shape);
            return false;
        }
        return true;
    }
    if (opts->output_pad_h < 0 || opts->output_pad_w < 0) {
        keel_graph_fail(g, name, "output padding must not be negative, got %dx%d (input %s)", opts->output_pad_h,
                        opts->output_pad_w, shape);
        return false;
    }
    /* As PyTorch: a larger output padding would add rows no input reaches. */
    if ((opts->output_pad_h >= attrs->stride_h && opts->output_pad_h >= attrs->dilation_h) ||
        (opts->output_pad_w >= attrs->stride_w && opts->output_pad_w >= attrs->dilation_w)) {
        keel_graph_fail(g, name,
                        "output padding %dx%d must be smaller than the stride %dx%d or the dilation %dx%d "
                        "(input %s)",
                        opts->output_pad_h, opts->output_pad_w, attrs->stride_h, attrs->stride_w,
                        attrs->dilation_h, attrs->dilation_w, shape);
        return false;
    }
    attrs->output_pad_h = opts->output_pad_h;
    attrs->output_pad_w = opts->output_pad_w;
    return true;
}

/* The user's initialiser, or the layer default when the kind is DEFAULT. */
static keel_init init_or(keel_init user, keel_init fallback)
{
    return user.kind == KEEL_INIT_DEFAULT ? fallback : user;
}

/* PyTorch's bias default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the fan-in of its weight. */
static keel_init bias_default(int64_t fan_in)
{
    float bound = (float)(1.0 / sqrt((double)fan_in));
    return keel_init_uniform(-bound, bound);
}

/* Makes the weight (and bias) and the layer node. */
static keel_node *conv_layer_new(keel_graph *g, const char *name, keel_op op, keel_node *x,
                                 const keel_conv_attrs *attrs, const keel_conv2d_opts *opts,
                                 const int64_t weight_shape[4], int64_t bias_size, int64_t fan_in,
                                 const int64_t out_shape[4])
{
    keel_init weight_init = init_or(opts->weight_init, (keel_init){KEEL_INIT_KAIMING_UNIFORM});
    keel_node *inputs[3] = {x, NULL, NULL};
    inputs[1] = keel_param_new(g, name, "weight", 4, weight_shape, weight_init, true);
    if (!inputs[1])
        return NULL;
    if (attrs->has_bias) {
        keel_init bias_init = init_or(opts->bias_init, bias_default(fan_in));
        inputs[2] = keel_param_new(g, name, "bias", 1, &bias_size, bias_init, true);
        if (!inputs[2])
            return NULL;
    }
    keel_node *y = keel_node_new(g, op, name, attrs->has_bias ? 3 : 2, inputs, 4, out_shape);
    if (!y)
        return NULL;
    y->attrs.conv = *attrs;
    return y;
}

keel_node *keel_conv2d(keel_graph *g, const char *name, keel_node *x, int out_channels,
                       const keel_conv2d_opts *opts)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "conv2d");
    keel_conv_attrs a;
    if (!conv_attrs_make(g, name, "conv2d", x, out_channels, opts, false, &a))
        return NULL;

    int64_t padded_h = x->shape[2] + a.pad_top + a.pad_bottom;
    int64_t padded_w = x->shape[3] + a.pad_left + a.pad_right;
    int64_t extent_h = (int64_t)a.dilation_h * (a.kernel_h - 1) + 1;
    int64_t extent_w = (int64_t)a.dilation_w * (a.kernel_w - 1) + 1;
    if (extent_h > padded_h || extent_w > padded_w) {
        char shape[96], dilated[64] = "";
        if (a.dilation_h > 1 || a.dilation_w > 1)
            snprintf(dilated, sizeof dilated, " (dilated to %lldx%lld)", (long long)extent_h, (long long)extent_w);
        return keel_graph_fail(g, name, "kernel %dx%d%s is larger than the padded input %lldx%lld (input %s)",
                               a.kernel_h, a.kernel_w, dilated, (long long)padded_h, (long long)padded_w,
                               keel_node_shape_str(x, shape, sizeof shape));
    }

    int64_t in_channels = x->shape[1];
    int64_t out_shape[4] = {
        x->shape[0], out_channels,
        keel_conv_out_size(x->shape[2], a.kernel_h, a.stride_h, a.pad_top + a.pad_bottom, a.dilation_h),
        keel_conv_out_size(x->shape[3], a.kernel_w, a.stride_w, a.pad_left + a.pad_right, a.dilation_w),
    };
    int64_t weight_shape[4] = {out_channels, in_channels / a.groups, a.kernel_h, a.kernel_w};
    int64_t fan_in = weight_shape[1] * a.kernel_h * a.kernel_w;
    return conv_layer_new(g, name, KEEL_OP_CONV2D, x, &a, opts, weight_shape, out_channels, fan_in, out_shape);
}

keel_node *keel_conv_transpose2d(keel_graph *g, const char *name, keel_node *x, int out_channels,
                                 const keel_conv2d_opts *opts)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "conv_transpose2d");
    keel_conv_attrs a;
    if (!conv_attrs_make(g, name, "conv_transpose2d", x, out_channels, opts, true, &a))
        return NULL;

    int64_t out_h = conv_transpose_out_size(x->shape[2], a.kernel_h, a.stride_h, a.pad_top + a.pad_bottom,
                                            a.dilation_h, a.output_pad_h);
    int64_t out_w = conv_transpose_out_size(x->shape[3], a.kernel_w, a.stride_w, a.pad_left + a.pad_right,
                                            a.dilation_w, a.output_pad_w);
    if (out_h <= 0 || out_w <= 0) {
        char shape[96];
        return keel_graph_fail(g, name,
                               "padding top %d bottom %d left %d right %d leaves an empty output %lldx%lld "
                               "(input %s)",
                               a.pad_top, a.pad_bottom, a.pad_left, a.pad_right, (long long)out_h,
                               (long long)out_w, keel_node_shape_str(x, shape, sizeof shape));
    }

    int64_t in_channels = x->shape[1];
    int64_t out_shape[4] = {x->shape[0], out_channels, out_h, out_w};
    int64_t weight_shape[4] = {in_channels, out_channels / a.groups, a.kernel_h, a.kernel_w};
    /* PyTorch takes the fan-in from weight dimension 1 for the transpose too. */
    int64_t fan_in = weight_shape[1] * a.kernel_h * a.kernel_w;
    return conv_layer_new(g, name, KEEL_OP_CONV_TRANSPOSE2D, x, &a, opts, weight_shape, out_channels, fan_in,
                          out_shape);
}

/* ---- backward rules ------------------------------------------------------- */

static keel_node *conv_grad_node(keel_graph *g, keel_op op, keel_node *node, const char *suffix, keel_node *a,
                                 keel_node *b, const int64_t *shape)
{
    keel_node *inputs[2] = {a, b};
    keel_node *grad = keel_grad_node(g, op, node, suffix, 2, inputs, 4, shape);
    if (!grad)
        return NULL;
    grad->attrs.conv = node->attrs.conv;
    grad->attrs.conv.has_bias = false;
    return grad;
}

static keel_node *bias_grad_node(keel_graph *g, keel_node *node, keel_node *dy)
{
    int64_t channels = dy->shape[1];
    return keel_grad_node(g, KEEL_OP_BIAS_GRAD, node, "db", 1, &dy, 1, &channels);
}

/* y = conv(x, w) + b:  dx = conv's transpose of dy with w,  dw = dy (*) x,  db = sum of dy. */
void keel_conv2d_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *x = node->inputs[0], *w = node->inputs[1];
    if (keel_node_needs_grad(x))
        dx[0] = conv_grad_node(g, KEEL_OP_CONV2D_BWD_DATA, node, "dx", dy, w, x->shape);
    if (keel_node_needs_grad(w))
        dx[1] = conv_grad_node(g, KEEL_OP_CONV2D_BWD_WEIGHT, node, "dw", x, dy, w->shape);
    if (node->attrs.conv.has_bias && keel_node_needs_grad(node->inputs[2]))
        dx[2] = bias_grad_node(g, node, dy);
}

/* y = conv_transpose(x, w) + b is conv2d's data gradient, so its own data
 * gradient is conv2d(dy, w), and its weight gradient is conv2d's with dy in
 * the place of conv's input and x in the place of conv's output gradient. */
void keel_conv_transpose2d_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *x = node->inputs[0], *w = node->inputs[1];
    if (keel_node_needs_grad(x))
        dx[0] = conv_grad_node(g, KEEL_OP_CONV2D, node, "dx", dy, w, x->shape);
    if (keel_node_needs_grad(w))
        dx[1] = conv_grad_node(g, KEEL_OP_CONV2D_BWD_WEIGHT, node, "dw", dy, x, w->shape);
    if (node->attrs.conv.has_bias && keel_node_needs_grad(node->inputs[2]))
        dx[2] = bias_grad_node(g, node, dy);
}

/* ---- FLOPs: 2 per multiply-add; the bias adds are not counted ------------- */

static double kernel_size(const keel_node *node)
{
    return (double)node->attrs.conv.kernel_h * node->attrs.conv.kernel_w;
}

/* Every output element takes (C/groups)*kh*kw multiply-adds. */
double keel_conv2d_flops(const keel_node *node)
{
    double in_per_group = (double)node->inputs[0]->shape[1] / node->attrs.conv.groups;
    return 2.0 * (double)keel_shape_numel(node->ndim, node->shape) * in_per_group * kernel_size(node);
}

/* The same multiply-adds as the conv2d they belong to, counted from the
 * conv2d's output side (dy), which is input 0 of the data gradient and the
 * transpose, and input 1 of the weight gradient. */
double keel_conv_bwd_flops(const keel_node *node)
{
    if (node->op == KEEL_OP_CONV2D_BWD_WEIGHT) {
        const keel_node *dy = node->inputs[1];
        double per_filter = (double)node->shape[1] * node->shape[2] * node->shape[3];
        return 2.0 * (double)keel_shape_numel(dy->ndim, dy->shape) * per_filter;
    }
    const keel_node *dy = node->inputs[0];
    double out_per_group = (double)node->shape[1] / node->attrs.conv.groups;
    return 2.0 * (double)keel_shape_numel(dy->ndim, dy->shape) * out_per_group * kernel_size(node);
}
