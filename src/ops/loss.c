/* Softmax and the losses. Every loss is the mean over the batch, a {1}
 * scalar, as PyTorch's default reduction='mean'.
 *
 *   softmax:       y_c = exp(x_c - max x) / Σ_k exp(x_k - max x)
 *                  dx  = y ⊙ (dy − Σ_c dy_c y_c)
 *   cross-entropy: L = 1/N Σ_n (logsumexp(z_n) − z_n[label_n])
 *                  dz = dL · (softmax(z) − onehot(label)) / N
 *   MSE:           L = 1/M Σ (p − t)²,   dp = 2 dL (p − t) / M,   dt = −dp
 *   BCE logits:    L = 1/M Σ max(x,0) − x t + log(1 + exp(−|x|))
 *                  dx = dL (sigmoid(x) − t) / M
 * with N the batch and M the element count. */
#include "ops/ops.h"

static const int64_t scalar_shape[1] = {1};

static bool same_shape(const keel_node *a, const keel_node *b)
{
    if (a->ndim != b->ndim)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return false;
    return true;
}

/* Checks that x is a non-empty float32 {N, C}; `what` names x in the message. */
static bool check_rows(keel_graph *g, const char *name, const keel_node *x, const char *what)
{
    char buf[96];
    if (x->dtype != KEEL_F32) {
        keel_graph_fail(g, name, "%s %s is %s, it must be float32", what, keel_node_shape_str(x, buf, sizeof buf),
                        keel_dtype_name(x->dtype));
        return false;
    }
    if (x->ndim != 2) {
        keel_graph_fail(g, name, "%s %s has %d dimensions, it must be {batch, classes}; put keel_flatten before it",
                        what, keel_node_shape_str(x, buf, sizeof buf), x->ndim);
        return false;
    }
    if (x->shape[0] <= 0 || x->shape[1] <= 0) {
        keel_graph_fail(g, name, "%s %s is empty", what, keel_node_shape_str(x, buf, sizeof buf));
        return false;
    }
    return true;
}

/* Element-wise losses: two float32 tensors of one non-empty shape. */
static bool check_pair(keel_graph *g, const char *name, const keel_node *a, const char *a_what,
                       const keel_node *b, const char *b_what)
{
    char abuf[96], bbuf[96];
    keel_node_shape_str(a, abuf, sizeof abuf);
    keel_node_shape_str(b, bbuf, sizeof bbuf);
    if (a->dtype != KEEL_F32 || b->dtype != KEEL_F32) {
        keel_graph_fail(g, name, "%s %s is %s and %s %s is %s, both must be float32", a_what, abuf,
                        keel_dtype_name(a->dtype), b_what, bbuf, keel_dtype_name(b->dtype));
        return false;
    }
    if (!same_shape(a, b)) {
        keel_graph_fail(g, name, "%s %s and %s %s must have the same shape", a_what, abuf, b_what, bbuf);
        return false;
    }
    if (keel_node_numel(a) <= 0) {
        keel_graph_fail(g, name, "%s %s is empty", a_what, abuf);
        return false;
    }
    return true;
}

keel_node *keel_softmax(keel_graph *g, const char *name, keel_node *x)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "softmax");
    if (!check_rows(g, name, x, "input"))
        return NULL;
    return keel_node_new(g, KEEL_OP_SOFTMAX, name, 1, &x, x->ndim, x->shape);
}

keel_node *keel_softmax_cross_entropy(keel_graph *g, const char *name, keel_node *logits, keel_node *labels)
{
    keel_node *inputs[2] = {logits, labels};
    if (keel_graph_check(g, name, 2, inputs))
        return NULL;
    name = keel_graph_layer_name(g, name, "softmax_cross_entropy");
    if (!check_rows(g, name, logits, "logits"))
        return NULL;
    char lbuf[96], ybuf[96];
    keel_node_shape_str(logits, lbuf, sizeof lbuf);
    keel_node_shape_str(labels, ybuf, sizeof ybuf);
    if (labels->dtype != KEEL_I32)
        return keel_graph_fail(g, name, "labels %s are %s; they must be int32 class indices (keel_input_labels)",
                               ybuf, keel_dtype_name(labels->dtype));
    if (keel_node_numel(labels) != logits->shape[0])
        return keel_graph_fail(g, name, "labels %s must hold one class index per row of logits %s", ybuf, lbuf);
    keel_node *loss = keel_node_new(g, KEEL_OP_SOFTMAX_CROSS_ENTROPY, name, 2, inputs, 1, scalar_shape);
    if (!loss)
        return NULL;
    /* The probabilities, which the backward pass turns into the gradient. */
    loss->aux_bytes = keel_node_numel(logits) * (int64_t)sizeof(float);
    return loss;
}

keel_node *keel_mse_loss(keel_graph *g, const char *name, keel_node *prediction, keel_node *target)
{
    keel_node *inputs[2] = {prediction, target};
    if (keel_graph_check(g, name, 2, inputs))
        return NULL;
    name = keel_graph_layer_name(g, name, "mse_loss");
    if (!check_pair(g, name, prediction, "prediction", target, "target"))
        return NULL;
    return keel_node_new(g, KEEL_OP_MSE_LOSS, name, 2, inputs, 1, scalar_shape);
}

keel_node *keel_bce_with_logits(keel_graph *g, const char *name, keel_node *logits, keel_node *target)
{
    keel_node *inputs[2] = {logits, target};
    if (keel_graph_check(g, name, 2, inputs))
        return NULL;
    name = keel_graph_layer_name(g, name, "bce_with_logits");
    if (!check_pair(g, name, logits, "logits", target, "target"))
        return NULL;
    return keel_node_new(g, KEEL_OP_BCE_WITH_LOGITS, name, 2, inputs, 1, scalar_shape);
}

void keel_softmax_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *x = node->inputs[0];
    if (!keel_node_needs_grad(x))
        return;
    keel_node *in[2] = {dy, node};
    dx[0] = keel_grad_node(g, KEEL_OP_SOFTMAX_BWD, node, "grad_input", 2, in, x->ndim, x->shape);
}

/* Labels are class indices: they have no gradient. */
void keel_softmax_cross_entropy_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *logits = node->inputs[0];
    if (!keel_node_needs_grad(logits))
        return;
    keel_node *in[2] = {dy, node->inputs[1]};
    keel_node *dlogits = keel_grad_node(g, KEEL_OP_SOFTMAX_CROSS_ENTROPY_BWD, node, "grad_logits", 2, in,
                                        logits->ndim, logits->shape);
    if (!dlogits)
        return;
    dlogits->fwd = node;
    dx[0] = dlogits;
}

/* The loss is symmetric in p and t up to sign, so the target's gradient (an
 * autoencoder's or a regression target's, when it is itself computed) is
 * the prediction's negated. */
void keel_mse_loss_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *prediction = node->inputs[0], *target = node->inputs[1];
    if (!keel_node_needs_grad(prediction) && !keel_node_needs_grad(target))
        return;
    keel_node *in[3] = {dy, prediction, target};
    keel_node *dprediction = keel_grad_node(g, KEEL_OP_MSE_LOSS_BWD, node, "grad_prediction", 3, in,
                                            prediction->ndim, prediction->shape);
    if (!dprediction)
        return;
    if (keel_node_needs_grad(prediction))
        dx[0] = dprediction;
    if (keel_node_needs_grad(target)) {
        /* A scale node made as a gradient node (not through the keel_scale
         * builder) so it runs in the backward pass, in the loss's group. */
        keel_node *dtarget = keel_grad_node(g, KEEL_OP_SCALE, node, "grad_target", 1, &dprediction,
                                            target->ndim, target->shape);
        if (!dtarget)
            return;
        dtarget->attrs.scale.s = -1.0f;
        dx[1] = dtarget;
    }
}

/* Only the logits get a gradient: BCE targets are labels or soft labels fed
 * as data (DCGAN's real/fake targets), never a computed quantity we train. */
void keel_bce_with_logits_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *logits = node->inputs[0], *target = node->inputs[1];
    if (!keel_node_needs_grad(logits))
        return;
    keel_node *in[3] = {dy, logits, target};
    dx[0] = keel_grad_node(g, KEEL_OP_BCE_WITH_LOGITS_BWD, node, "grad_logits", 3, in, logits->ndim,
                           logits->shape);
}
