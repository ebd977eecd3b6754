/* Structure: concat along channels, channel slices, reshape and flatten,
 * copy. None of them computes anything; their gradients move dy around. */
#include "ops/ops.h"
#include <stdio.h>

/* ---- concat ------------------------------------------------------------- */

/* Every dimension but axis 1 must agree with input 0 (GoogLeNet's inception
 * outputs, DenseNet's feature stacks). */
static bool concat_shapes_ok(keel_graph *g, const char *name, int count, keel_node *const *inputs)
{
    const keel_node *first = inputs[0];
    char first_buf[96], buf[96];
    for (int i = 0; i < count; i++) {
        const keel_node *x = inputs[i];
        if (x->dtype != KEEL_F32) {
            keel_graph_fail(g, name, "input %d ('%s') is %s; concat takes float32 tensors", i, x->name,
                            keel_dtype_name(x->dtype));
            return false;
        }
        if (x->ndim < 2) {
            keel_graph_fail(g, name, "input %d ('%s') has shape %s; concat joins along axis 1 and needs at least "
                            "2 dimensions", i, x->name, keel_node_shape_str(x, buf, sizeof buf));
            return false;
        }
        bool same = x->ndim == first->ndim;
        for (int d = 0; same && d < x->ndim; d++)
            same = d == 1 || x->shape[d] == first->shape[d];
        if (!same) {
            keel_graph_fail(g, name, "input %d ('%s') has shape %s but input 0 ('%s') has %s: all dimensions "
                            "except channels (axis 1) must agree", i, x->name,
                            keel_node_shape_str(x, buf, sizeof buf), first->name,
                            keel_node_shape_str(first, first_buf, sizeof first_buf));
            return false;
        }
    }
    return true;
}

keel_node *keel_concat(keel_graph *g, const char *name, int count, keel_node *const *inputs)
{
    if (keel_graph_check(g, name, 0, NULL))
        return NULL;
    if (count < 1 || !inputs)
        return keel_graph_fail(g, keel_graph_layer_name(g, name, "concat"), "needs at least one input, got %d",
                               inputs ? count : 0);
    if (keel_graph_check(g, name, count, inputs))
        return NULL;
    name = keel_graph_layer_name(g, name, "concat");
    if (!concat_shapes_ok(g, name, count, inputs))
        return NULL;
    int64_t shape[KEEL_MAX_DIMS];
    for (int d = 0; d < inputs[0]->ndim; d++)
        shape[d] = inputs[0]->shape[d];
    shape[1] = 0;
    for (int i = 0; i < count; i++)
        shape[1] += inputs[i]->shape[1];
    return keel_node_new(g, KEEL_OP_CONCAT, name, count, inputs, inputs[0]->ndim, shape);
}

static keel_node *slice_grad_node(keel_graph *g, keel_node *of, const char *suffix, keel_node *x, int64_t offset,
                                  int64_t count)
{
    int64_t shape[KEEL_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++)
        shape[d] = x->shape[d];
    shape[1] = count;
    keel_node *y = keel_grad_node(g, KEEL_OP_SLICE, of, suffix, 1, &x, x->ndim, shape);
    if (y) {
        y->attrs.slice.offset = offset;
        y->attrs.slice.count = count;
    }
    return y;
}

/* Input i owns channels [offset_i, offset_i + C_i) of the output, so its
 * gradient is that slice of dy. The slices are gradient nodes of the concat
 * (its placement group, names "<concat>.dx<i>") whatever dy is. */
void keel_concat_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    int64_t offset = 0;
    for (int i = 0; i < node->n_inputs; i++) {
        keel_node *x = node->inputs[i];
        if (keel_node_needs_grad(x)) {
            char suffix[32];
            snprintf(suffix, sizeof suffix, "dx%d", i);
            dx[i] = slice_grad_node(g, node, suffix, dy, offset, x->shape[1]);
            if (!dx[i])
                return;
        }
        offset += x->shape[1];
    }
}

/* ---- slice ---------------------------------------------------------------- */

keel_node *keel_slice_channels(keel_graph *g, const char *name, keel_node *x, int64_t offset, int64_t count)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "slice");
    char buf[96];
    if (x->ndim < 2 || x->dtype != KEEL_F32)
        return keel_graph_fail(g, name, "slices channels (axis 1) of float32 tensors, got %s %s",
                               keel_dtype_name(x->dtype), keel_node_shape_str(x, buf, sizeof buf));
    if (offset < 0 || count < 1 || offset > x->shape[1] - count)
        return keel_graph_fail(g, name, "channels [%lld, %lld) are outside the %lld channels of input %s",
                               (long long)offset, (long long)(offset + count), (long long)x->shape[1],
                               keel_node_shape_str(x, buf, sizeof buf));
    int64_t shape[KEEL_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++)
        shape[d] = x->shape[d];
    shape[1] = count;
    /* Called from a backward rule on a gradient: the slice is a gradient node
     * too, and runs where that gradient lives (as keel_grad_node does). */
    int saved_group = g->group;
    if (x->is_backward)
        g->group = x->group;
    keel_node *y = keel_node_new(g, KEEL_OP_SLICE, name, 1, &x, x->ndim, shape);
    g->group = saved_group;
    if (!y)
        return NULL;
    y->attrs.slice.offset = offset;
    y->attrs.slice.count = count;
    if (x->is_backward) {
        y->is_backward = true;
        y->layer = NULL;
    }
    return y;
}

static keel_node *zeros_grad_node(keel_graph *g, keel_node *of, const char *suffix, const keel_node *like,
                                  int64_t channels)
{
    int64_t shape[KEEL_MAX_DIMS];
    for (int d = 0; d < like->ndim; d++)
        shape[d] = like->shape[d];
    shape[1] = channels;
    keel_node *z = keel_grad_node(g, KEEL_OP_FILL, of, suffix, 0, NULL, like->ndim, shape);
    if (z)
        z->attrs.fill.value = 0.0f;
    return z;
}

/* The gradient of a slice is dy put back at its channels with zeros
 * elsewhere: dx = concat(0 [offset channels], dy, 0 [the rest]), built from
 * the existing FILL and CONCAT kernels rather than a scatter op of its own.
 * An empty side is left out; a slice of every channel passes dy through. */
void keel_slice_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *x = node->inputs[0];
    if (!keel_node_needs_grad(x))
        return;
    int64_t before = node->attrs.slice.offset;
    int64_t after = x->shape[1] - before - node->attrs.slice.count;
    if (before == 0 && after == 0) {
        dx[0] = dy;
        return;
    }
    keel_node *pieces[3];
    int n = 0;
    if (before > 0 && !(pieces[n++] = zeros_grad_node(g, node, "zeros_before", x, before)))
        return;
    pieces[n++] = dy;
    if (after > 0 && !(pieces[n++] = zeros_grad_node(g, node, "zeros_after", x, after)))
        return;
    dx[0] = keel_grad_node(g, KEEL_OP_CONCAT, node, "dx", n, pieces, x->ndim, x->shape);
}

/* ---- reshape, flatten -------------------------------------------------- */

/* A view: the planner aliases the output to the input's buffer, so no kernel
 * runs. At most one dimension may be -1 (inferred from the element count). */
keel_node *keel_reshape(keel_graph *g, const char *name, keel_node *x, int ndim, const int64_t *shape)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "reshape");
    if (ndim < 1 || ndim > KEEL_MAX_DIMS || !shape)
        return keel_graph_fail(g, name, "target shape has %d dimensions; 1 to %d are supported", shape ? ndim : 0,
                               KEEL_MAX_DIMS);
    char in_buf[96], out_buf[96];
    int64_t out[KEEL_MAX_DIMS];
    int inferred = -1;
    int64_t known = 1;
    for (int d = 0; d < ndim; d++) {
        out[d] = shape[d];
        if (shape[d] == -1 && inferred < 0) {
            inferred = d;
            continue;
        }
        if (shape[d] < 1)
            return keel_graph_fail(g, name, "target shape %s of input %s: dimension %d is %lld (sizes are >= 1, "
                                   "and one may be -1)", keel_shape_str(out_buf, sizeof out_buf, ndim, shape),
                                   keel_node_shape_str(x, in_buf, sizeof in_buf), d, (long long)shape[d]);
        known *= shape[d];
    }
    int64_t numel = keel_node_numel(x);
    if (inferred >= 0) {
        if (numel % known != 0)
            return keel_graph_fail(g, name, "cannot reshape %s (%lld elements) to %s: %lld is not a multiple of "
                                   "%lld", keel_node_shape_str(x, in_buf, sizeof in_buf), (long long)numel,
                                   keel_shape_str(out_buf, sizeof out_buf, ndim, shape), (long long)numel,
                                   (long long)known);
        out[inferred] = numel / known;
        known *= out[inferred];
    }
    if (known != numel)
        return keel_graph_fail(g, name, "cannot reshape %s (%lld elements) to %s (%lld elements)",
                               keel_node_shape_str(x, in_buf, sizeof in_buf), (long long)numel,
                               keel_shape_str(out_buf, sizeof out_buf, ndim, out), (long long)known);
    keel_node *y = keel_node_new(g, KEEL_OP_RESHAPE, name, 1, &x, ndim, out);
    if (y)
        y->dtype = x->dtype;
    return y;
}

/* {N, ...} -> {N, product of the rest}: the bridge from convolutions to
 * linear layers. */
keel_node *keel_flatten(keel_graph *g, const char *name, keel_node *x)
{
    if (keel_graph_check(g, name, 1, &x))
        return NULL;
    name = keel_graph_layer_name(g, name, "flatten");
    int64_t shape[2] = {x->shape[0], 1};
    for (int d = 1; d < x->ndim; d++)
        shape[1] *= x->shape[d];
    return keel_reshape(g, name, x, 2, shape);
}

void keel_reshape_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    keel_node *x = node->inputs[0];
    if (!keel_node_needs_grad(x))
        return;
    dx[0] = keel_grad_node(g, KEEL_OP_RESHAPE, node, "dx", 1, &dy, x->ndim, x->shape);
}

/* ---- copy --------------------------------------------------------------- */

void keel_copy_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx)
{
    (void)g;
    if (keel_node_needs_grad(node->inputs[0]))
        dx[0] = dy;
}
