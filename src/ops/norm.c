/* Normalisation layers.
 *
 * LRN (Krizhevsky et al. 2012, section 3.3), across channels:
 *   scale_c = k + alpha/size * sum_{c' in window(c)} a_{c'}^2,   b_c = a_c * scale_c^-beta
 * with the window of src/ops/math.h. The forward saves scale for the backward.
 *
 * Batch normalisation (Ioffe & Szegedy 2015), per channel over N, H, W:
 *   xhat = (x - mean) / sqrt(var + eps),   y = gamma * xhat + beta
 * Training normalises with the batch mean and biased variance and moves the
 * running statistics towards the batch ones (unbiased variance, as PyTorch);
 * evaluation normalises with the running statistics. */
#include "ops/ops.h"

#include <math.h>

keel_node *keel_lrn(keel_graph *g, const char *name, keel_node *x, int size, float alpha, float beta, float k)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "lrn");
    char buf[96];
    keel_node_shape_str(x, buf, sizeof buf);
    if (x->ndim < 2)
        return keel_graph_fail(g, name, "LRN needs an input with a channel axis {N, C, ...}, got %s", buf);
    if (size < 1)
        return keel_graph_fail(g, name, "LRN size %d must be at least 1 (input %s)", size, buf);
    if (!(alpha >= 0.0f) || !isfinite(alpha))
        return keel_graph_fail(g, name, "LRN alpha %g must be finite and not negative (input %s)", alpha, buf);
    if (!(beta > 0.0f) || !isfinite(beta))
        return keel_graph_fail(g, name, "LRN beta %g must be finite and positive (input %s)", beta, buf);
    if (!(k > 0.0f) || !isfinite(k))
        return keel_graph_fail(g, name, "LRN k %g must be finite and positive (input %s)", k, buf);
    keel_node *y = keel_node_new(g, KEEL_OP_LRN, name, 1, &x, x->ndim, x->shape);
    if (!y)
        return NULL;
    y->attrs.lrn = (keel_lrn_attrs){.size = size, .alpha = alpha, .beta = beta, .k = k};
    y->aux_bytes = keel_shape_numel(x->ndim, x->shape) * (int64_t)sizeof(float);
    return y;
}

/* Per element: `size` multiply-adds for the sum of squares, then the power
 * and the product. */
double keel_lrn_flops(const keel_node *node)
{
    return (double)keel_shape_numel(node->ndim, node->shape) * (2.0 * node->attrs.lrn.size + 3.0);
}

/* dx = dy*scale^-beta - (2*alpha*beta/size) * a * sum_{j: c in window(j)} dy_j*b_j/scale_j,
 * computed by one node from dy, the input a and the output b. */
void keel_lrn_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *x = node->inputs[0];
    if (!keel_node_needs_grad(x))
        return;
    keel_node *inputs[3] = {dy, x, node};
    keel_node *d = keel_grad_node(g, KEEL_OP_LRN_BWD, node, "dx", 3, inputs, x->ndim, x->shape);
    if (!d)
        return;
    d->attrs = node->attrs;
    d->fwd = node;
    dx[0] = d;
}

keel_node *keel_batch_norm(keel_graph *g, const char *name, keel_node *x, const keel_batch_norm_opts *opts)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "batch_norm");
    char buf[96];
    keel_node_shape_str(x, buf, sizeof buf);
    if (x->ndim != 2 && x->ndim != 4)
        return keel_graph_fail(g, name, "batch norm needs a {N, C} or {N, C, H, W} input, got %s", buf);
    keel_bn_attrs a = {.eps = 1e-5f, .momentum = 0.1f};
    if (opts && opts->eps != 0.0f)
        a.eps = opts->eps;
    if (opts && opts->momentum != 0.0f)
        a.momentum = opts->momentum;
    if (!(a.eps > 0.0f) || !isfinite(a.eps))
        return keel_graph_fail(g, name, "batch norm eps %g must be finite and positive (input %s)", a.eps, buf);
    if (!(a.momentum > 0.0f && a.momentum <= 1.0f))
        return keel_graph_fail(g, name, "batch norm momentum %g must be in (0, 1] (input %s)", a.momentum, buf);

    int64_t channels[1] = {x->shape[1]};
    keel_node *gamma = keel_param_new(g, name, "weight", 1, channels, keel_init_constant(1.0f), true);
    keel_node *beta = keel_param_new(g, name, "bias", 1, channels, keel_init_constant(0.0f), true);
    keel_node *running_mean = keel_param_new(g, name, "running_mean", 1, channels, keel_init_constant(0.0f), false);
    keel_node *running_var = keel_param_new(g, name, "running_var", 1, channels, keel_init_constant(1.0f), false);
    if (!gamma || !beta || !running_mean || !running_var)
        return NULL;
    keel_node *inputs[5] = {x, gamma, beta, running_mean, running_var};
    keel_node *y = keel_node_new(g, KEEL_OP_BATCH_NORM, name, 5, inputs, x->ndim, x->shape);
    if (!y)
        return NULL;
    y->attrs.bn = a;
    /* The batch mean and 1/sqrt(var + eps) of each channel. */
    y->aux_bytes = 2 * x->shape[1] * (int64_t)sizeof(float);
    return y;
}

/* With M = N*H*W values per channel:
 *   dbeta = sum dy,   dgamma = sum dy * xhat,
 *   dx = gamma/(M*sqrt(var + eps)) * (M*dy - dbeta - xhat*dgamma).
 * dx needs both sums, so they are built whenever any gradient is wanted. */
void keel_batch_norm_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *x = node->inputs[0], *gamma = node->inputs[1], *beta = node->inputs[2];
    bool need_x = keel_node_needs_grad(x);
    bool build_dgamma = keel_node_needs_grad(gamma) || need_x;
    bool build_dbeta = keel_node_needs_grad(beta) || need_x;
    int64_t channels[1] = {x->shape[1]};

    keel_node *dbeta = NULL, *dgamma = NULL;
    if (build_dbeta) {
        dbeta = keel_grad_node(g, KEEL_OP_BIAS_GRAD, node, "dbeta", 1, &dy, 1, channels);
        if (!dbeta)
            return;
    }
    if (build_dgamma) {
        keel_node *inputs[2] = {dy, x};
        dgamma = keel_grad_node(g, KEEL_OP_BATCH_NORM_BWD_GAMMA, node, "dgamma", 2, inputs, 1, channels);
        if (!dgamma)
            return;
        dgamma->attrs = node->attrs;
        dgamma->fwd = node;
    }
    if (need_x) {
        keel_node *inputs[5] = {dy, x, gamma, dgamma, dbeta};
        keel_node *d = keel_grad_node(g, KEEL_OP_BATCH_NORM_BWD_DATA, node, "dx", 5, inputs, x->ndim, x->shape);
        if (!d)
            return;
        d->attrs = node->attrs;
        d->fwd = node;
        dx[0] = d;
    }
    if (keel_node_needs_grad(gamma))
        dx[1] = dgamma;
    if (keel_node_needs_grad(beta))
        dx[2] = dbeta;
}
