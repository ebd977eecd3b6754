/* Fully connected layer, as PyTorch's nn.Linear:
 *   y = x · Wᵀ + b,   x {N, in}, W {out, in}, b {out}, y {N, out}.
 * Gradients, with dy {N, out}:
 *   dx = dy · W      {N, in}     (LINEAR_BWD_DATA)
 *   dW = dyᵀ · x     {out, in}   (LINEAR_BWD_WEIGHT)
 *   db = Σ_n dy[n]   {out}       (BIAS_GRAD, shared with convolution) */
#include <limits.h>
#include <math.h>
#include "ops/ops.h"

/* The CPU kernels hand each dimension to cblas_sgemm as an int. */
static bool fits_blas(int64_t n) { return n > 0 && n <= INT_MAX; }

static keel_init weight_init_of(const keel_linear_opts *opts)
{
    if (opts && opts->weight_init.kind != KEEL_INIT_DEFAULT)
        return opts->weight_init;
    keel_init init = {KEEL_INIT_KAIMING_UNIFORM};
    return init;
}

/* PyTorch draws the bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the
 * weight's fan_in, which a bias shape alone does not tell the initialiser. */
static keel_init bias_init_of(const keel_linear_opts *opts, int64_t in_features)
{
    if (opts && opts->bias_init.kind != KEEL_INIT_DEFAULT)
        return opts->bias_init;
    float bound = (float)(1.0 / sqrt((double)in_features));
    return keel_init_uniform(-bound, bound);
}

keel_node *keel_linear(keel_graph *g, const char *name, keel_node *x, int64_t out_features,
                       const keel_linear_opts *opts)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "linear");
    char buf[96];
    if (x->dtype != KEEL_F32)
        return keel_graph_fail(g, name, "input %s is %s, linear needs float32 features",
                               keel_node_shape_str(x, buf, sizeof buf), keel_dtype_name(x->dtype));
    if (x->ndim != 2)
        return keel_graph_fail(g, name,
                               "input %s has %d dimensions, linear needs {batch, in_features}; "
                               "put keel_flatten before it",
                               keel_node_shape_str(x, buf, sizeof buf), x->ndim);
    int64_t batch = x->shape[0], in_features = x->shape[1];
    if (batch <= 0 || in_features <= 0)
        return keel_graph_fail(g, name, "input %s is empty", keel_node_shape_str(x, buf, sizeof buf));
    if (out_features <= 0)
        return keel_graph_fail(g, name, "out_features is %lld, it must be at least 1 (input %s)",
                               (long long)out_features, keel_node_shape_str(x, buf, sizeof buf));
    if (opts && opts->in_features > 0 && opts->in_features != in_features)
        return keel_graph_fail(g, name, "expects %lld in_features but its input %s has %lld",
                               (long long)opts->in_features, keel_node_shape_str(x, buf, sizeof buf),
                               (long long)in_features);
    if (!fits_blas(batch) || !fits_blas(in_features) || !fits_blas(out_features))
        return keel_graph_fail(g, name, "input %s with %lld outputs has a dimension above %d, the BLAS limit",
                               keel_node_shape_str(x, buf, sizeof buf), (long long)out_features, INT_MAX);

    bool has_bias = !(opts && opts->no_bias);
    int64_t weight_shape[2] = {out_features, in_features};
    keel_node *inputs[3] = {x, NULL, NULL};
    inputs[1] = keel_param_new(g, name, "weight", 2, weight_shape, weight_init_of(opts), true);
    if (!inputs[1])
        return NULL;
    if (has_bias) {
        inputs[2] = keel_param_new(g, name, "bias", 1, &out_features, bias_init_of(opts, in_features), true);
        if (!inputs[2])
            return NULL;
    }
    int64_t shape[2] = {batch, out_features};
    keel_node *y = keel_node_new(g, KEEL_OP_LINEAR, name, has_bias ? 3 : 2, inputs, 2, shape);
    if (!y)
        return NULL;
    y->attrs.linear.has_bias = has_bias;
    return y;
}

void keel_linear_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *x = node->inputs[0], *w = node->inputs[1];
    if (keel_node_needs_grad(x)) {
        keel_node *in[2] = {dy, w};
        dx[0] = keel_grad_node(g, KEEL_OP_LINEAR_BWD_DATA, node, "grad_input", 2, in, x->ndim, x->shape);
    }
    if (keel_node_needs_grad(w)) {
        keel_node *in[2] = {x, dy};
        dx[1] = keel_grad_node(g, KEEL_OP_LINEAR_BWD_WEIGHT, node, "grad_weight", 2, in, w->ndim, w->shape);
    }
    if (node->attrs.linear.has_bias && keel_node_needs_grad(node->inputs[2])) {
        keel_node *b = node->inputs[2];
        dx[2] = keel_grad_node(g, KEEL_OP_BIAS_GRAD, node, "grad_bias", 1, &dy, b->ndim, b->shape);
    }
}

/* 2·N·in·out: one multiply-add per weight per sample; the bias is noise. */
double keel_linear_flops(const keel_node *node)
{
    const keel_node *x = node->inputs[0];
    return 2.0 * (double)x->shape[0] * (double)x->shape[1] * (double)node->shape[1];
}

/* Both gradients are one GEMM of the forward's size. BWD_DATA: dy {N, out}
 * -> {N, in}; BWD_WEIGHT: x {N, in}, dy {N, out} -> {out, in}. */
double keel_linear_bwd_flops(const keel_node *node)
{
    if (node->op == KEEL_OP_LINEAR_BWD_DATA) {
        const keel_node *dy = node->inputs[0];
        return 2.0 * (double)dy->shape[0] * (double)dy->shape[1] * (double)node->shape[1];
    }
    const keel_node *x = node->inputs[0];
    return 2.0 * (double)x->shape[0] * (double)x->shape[1] * (double)node->shape[0];
}
