/* Element-wise layers: activations, dropout, add, scale.
 *
 * The math itself (f and f') lives in ops/math.h, shared with the CUDA
 * kernels; this file holds the builders and the backward rules. */
#include "ops/ops.h"
#include <math.h>

/* Every element-wise op here computes in float32; a label tensor reaching one
 * is a wiring mistake in the model. */
static bool float_input_ok(keel_graph *g, const char *name, const keel_node *x)
{
    if (x->dtype == KEEL_F32)
        return true;
    char buf[96];
    keel_graph_fail(g, name, "expects a float32 input, got %s %s", keel_dtype_name(x->dtype),
                    keel_node_shape_str(x, buf, sizeof buf));
    return false;
}

static keel_node *activation(keel_graph *g, const char *name, const char *op_name, keel_node *x,
                             keel_act_kind kind, float slope)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, op_name);
    if (!float_input_ok(g, name, x))
        return NULL;
    keel_node *y = keel_node_new(g, KEEL_OP_ACTIVATION, name, 1, &x, x->ndim, x->shape);
    if (!y)
        return NULL;
    y->attrs.act.kind = kind;
    y->attrs.act.slope = slope;
    return y;
}

keel_node *keel_relu(keel_graph *g, const char *name, keel_node *x)
{
    return activation(g, name, "relu", x, KEEL_ACT_RELU, 0.0f);
}

keel_node *keel_leaky_relu(keel_graph *g, const char *name, keel_node *x, float negative_slope)
{
    if (!isfinite(negative_slope) && !keel_graph_check(g, name, 1, &x))
        return keel_graph_fail(g, keel_graph_layer_name(g, name, "leaky_relu"), "negative slope %g is not finite",
                               (double)negative_slope);
    return activation(g, name, "leaky_relu", x, KEEL_ACT_LEAKY_RELU, negative_slope);
}

keel_node *keel_sigmoid(keel_graph *g, const char *name, keel_node *x)
{
    return activation(g, name, "sigmoid", x, KEEL_ACT_SIGMOID, 0.0f);
}

keel_node *keel_tanh(keel_graph *g, const char *name, keel_node *x)
{
    return activation(g, name, "tanh", x, KEEL_ACT_TANH, 0.0f);
}

/* ACTIVATION_BWD reads {dy, y}: ReLU, sigmoid and tanh have derivatives in
 * terms of y, so x may die at the forward (and the forward may run in place).
 * Leaky ReLU's derivative needs sign(x); for slope >= 0, y > 0 exactly when
 * x > 0 (slope*x <= 0 for x <= 0, even after underflow), so y serves there as
 * well and keel_leaky_relu_grad gets y in its x argument. Only a negative
 * slope flips the sign, and then the backward reads {dy, x}. */
void keel_activation_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *x = node->inputs[0];
    if (!keel_node_needs_grad(x))
        return;
    bool needs_x = node->attrs.act.kind == KEEL_ACT_LEAKY_RELU && node->attrs.act.slope < 0.0f;
    keel_node *inputs[2] = {dy, needs_x ? x : node};
    keel_node *d = keel_grad_node(g, KEEL_OP_ACTIVATION_BWD, node, "dx", 2, inputs, x->ndim, x->shape);
    if (!d)
        return;
    d->attrs.act = node->attrs.act;
    dx[0] = d;
}

/* Inverted dropout (Srivastava et al. 2014, scaled at training time so that
 * evaluation is the identity). The mask is never stored: the kernels draw it
 * from (plan seed, node id, step) with a counter-based hash, and DROPOUT_BWD
 * draws the same one from its fwd node. */
keel_node *keel_dropout(keel_graph *g, const char *name, keel_node *x, float p)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "dropout");
    if (!(p >= 0.0f && p < 1.0f))
        return keel_graph_fail(g, name, "drop probability %g is outside [0, 1)", (double)p);
    if (!float_input_ok(g, name, x))
        return NULL;
    if (p == 0.0f)
        return x; /* nothing is ever dropped: the layer is the identity */
    keel_node *y = keel_node_new(g, KEEL_OP_DROPOUT, name, 1, &x, x->ndim, x->shape);
    if (!y)
        return NULL;
    y->attrs.dropout.p = p;
    return y;
}

void keel_dropout_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *x = node->inputs[0];
    if (!keel_node_needs_grad(x))
        return;
    keel_node *d = keel_grad_node(g, KEEL_OP_DROPOUT_BWD, node, "dx", 1, &dy, x->ndim, x->shape);
    if (!d)
        return;
    d->attrs.dropout = node->attrs.dropout;
    d->fwd = node;
    dx[0] = d;
}

static bool same_shape(const keel_node *a, const keel_node *b)
{
    if (a->ndim != b->ndim)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return false;
    return true;
}

/* y = a + b, both of one shape (a residual connection). No broadcasting: a
 * bias has its own op inside conv and linear. */
keel_node *keel_add(keel_graph *g, const char *name, keel_node *a, keel_node *b)
{
    keel_node *inputs[2] = {a, b};
    if (keel_graph_check(g, name, 2, inputs))
        return NULL;
    name = keel_graph_layer_name(g, name, "add");
    if (!float_input_ok(g, name, a) || !float_input_ok(g, name, b))
        return NULL;
    if (!same_shape(a, b)) {
        char a_buf[96], b_buf[96];
        return keel_graph_fail(g, name, "cannot add %s ('%s') and %s ('%s'): the shapes must be equal",
                               keel_node_shape_str(a, a_buf, sizeof a_buf), a->name,
                               keel_node_shape_str(b, b_buf, sizeof b_buf), b->name);
    }
    return keel_node_new(g, KEEL_OP_ADD, name, 2, inputs, a->ndim, a->shape);
}

/* dy/da = dy/db = identity: both inputs receive dy itself, no node needed.
 * When a == b the driver sums the two into 2*dy. */
void keel_add_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    (void)g;
    for (int i = 0; i < 2; i++)
        if (keel_node_needs_grad(node->inputs[i]))
            dx[i] = dy;
}

keel_node *keel_scale(keel_graph *g, const char *name, keel_node *x, float s)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "scale");
    if (!float_input_ok(g, name, x))
        return NULL;
    keel_node *y = keel_node_new(g, KEEL_OP_SCALE, name, 1, &x, x->ndim, x->shape);
    if (!y)
        return NULL;
    y->attrs.scale.s = s;
    return y;
}

/* y = s*x  =>  dx = s*dy */
void keel_scale_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *x = node->inputs[0];
    if (!keel_node_needs_grad(x))
        return;
    keel_node *d = keel_grad_node(g, KEEL_OP_SCALE, node, "dx", 1, &dy, x->ndim, x->shape);
    if (!d)
        return;
    d->attrs.scale = node->attrs.scale;
    dx[0] = d;
}
