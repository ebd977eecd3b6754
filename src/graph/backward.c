/* Reverse-mode differentiation: gradient nodes appended to the same graph,
 * so the planner schedules and memory-plans forward and backward together. */
#include "ops/ops.h"
#include <stdio.h>
#include <stdlib.h>

keel_node *keel_grad_node(keel_graph *g, keel_op op, keel_node *of, const char *suffix, int n_inputs,
                          keel_node *const *inputs, int ndim, const int64_t *shape)
{
    char name[256];
    snprintf(name, sizeof name, "%s.%s", of->name, suffix);
    int saved_group = g->group;
    g->group = of->group; /* a gradient runs where its forward ran */
    keel_node *x = keel_node_new(g, op, name, n_inputs, inputs, ndim, shape);
    g->group = saved_group;
    if (x) {
        x->is_backward = true;
        /* Timed and reported with the layer it differentiates. */
        x->layer = of->layer ? of->layer : of->name;
    }
    return x;
}

/* Marks every node computed from a trainable parameter or a required input. */
static void mark_needs_grad(keel_graph *g, int end)
{
    for (int i = 0; i < end; i++) {
        keel_node *x = g->nodes[i];
        x->needs_grad = (x->op == KEEL_OP_PARAM && x->trainable) || (x->op == KEEL_OP_INPUT && x->requires_grad);
        if (x->dtype != KEEL_F32)
            continue;
        for (int j = 0; j < x->n_inputs && !x->needs_grad; j++)
            x->needs_grad = x->inputs[j]->needs_grad;
    }
}

/* Adds `dx` into the running gradient of x. Several consumers mean several
 * contributions, summed with ADD nodes in consumer order (deterministic). */
static void accumulate(keel_graph *g, keel_node *x, keel_node *dx)
{
    if (!dx)
        return;
    if (!x->grad) {
        x->grad = dx;
        return;
    }
    keel_node *pair[2] = {x->grad, dx};
    keel_node *sum = keel_grad_node(g, KEEL_OP_ADD, x, "grad_sum", 2, pair, x->ndim, x->shape);
    if (sum)
        x->grad = sum;
}

static keel_status run_backward(keel_graph *g, keel_node *y, keel_node *seed)
{
    int end = g->n_nodes; /* forward nodes only; gradient nodes are appended after */
    mark_needs_grad(g, end);
    if (!y->needs_grad)
        return keel_fail(KEEL_ERR_STATE,
                         "backward from '%s': it depends on no trainable parameter and no input that asked for a "
                         "gradient (keel_graph_require_grad)",
                         y->name);
    for (int i = 0; i < end; i++)
        g->nodes[i]->grad = NULL;
    y->grad = seed;

    keel_node **dx = NULL;
    int dx_cap = 0;
    for (int i = y->id; i >= 0 && g->status == KEEL_OK; i--) {
        keel_node *x = g->nodes[i];
        if (!x->grad || x->n_inputs == 0 || !x->needs_grad)
            continue;
        const keel_op_def *def = keel_op_get(x->op);
        if (!def->backward) {
            keel_graph_fail(g, x->name, "op '%s' has no gradient", def->name);
            break;
        }
        if (x->n_inputs > dx_cap) {
            keel_node **grown = realloc(dx, (size_t)x->n_inputs * sizeof *dx);
            if (!grown) {
                keel_graph_fail(g, x->name, "out of memory in backward");
                break;
            }
            dx = grown;
            dx_cap = x->n_inputs;
        }
        for (int j = 0; j < x->n_inputs; j++)
            dx[j] = NULL;
        def->backward(g, x, x->grad, dx);
        for (int j = 0; j < x->n_inputs && g->status == KEEL_OK; j++)
            if (x->inputs[j]->needs_grad)
                accumulate(g, x->inputs[j], dx[j]);
    }
    free(dx);
    if (g->status != KEEL_OK)
        return keel_fail(g->status, "%s", g->error);

    /* Every gradient the caller will read stays readable after the run. */
    for (int i = 0; i < end; i++) {
        keel_node *x = g->nodes[i];
        if (x->grad && x->op == KEEL_OP_INPUT && x->requires_grad)
            x->grad->keep = true;
    }
    g->has_backward = true;
    g->loss = y;
    return KEEL_OK;
}

keel_status keel_graph_backward(keel_graph *g, keel_node *loss)
{
    if (!g || !loss)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_graph_backward: %s is NULL", g ? "loss" : "graph");
    if (g->status != KEEL_OK)
        return keel_fail(g->status, "%s", g->error);
    if (g->has_backward)
        return keel_fail(KEEL_ERR_STATE, "the graph already has a backward pass");
    if (keel_node_numel(loss) != 1) {
        char buf[96];
        return keel_fail(KEEL_ERR_SHAPE, "backward from '%s': a loss has one element, this has shape %s",
                         loss->name, keel_node_shape_str(loss, buf, sizeof buf));
    }
    keel_node *seed = keel_grad_node(g, KEEL_OP_FILL, loss, "grad_seed", 0, NULL, loss->ndim, loss->shape);
    if (!seed)
        return keel_fail(g->status, "%s", g->error);
    seed->attrs.fill.value = 1.0f;
    loss->keep = true;
    return run_backward(g, loss, seed);
}

keel_status keel_graph_backward_from(keel_graph *g, keel_node *y, keel_node *dy)
{
    if (!g || !y || !dy)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_graph_backward_from: an argument is NULL");
    if (g->status != KEEL_OK)
        return keel_fail(g->status, "%s", g->error);
    if (g->has_backward)
        return keel_fail(KEEL_ERR_STATE, "the graph already has a backward pass");
    char ys[96], dys[96];
    if (dy->op != KEEL_OP_INPUT || dy->ndim != y->ndim ||
        keel_shape_numel(y->ndim, y->shape) != keel_shape_numel(dy->ndim, dy->shape))
        return keel_fail(KEEL_ERR_SHAPE, "backward from '%s' (shape %s): the upstream gradient '%s' must be an input "
                         "of the same shape, got %s", y->name, keel_node_shape_str(y, ys, sizeof ys), dy->name,
                         keel_node_shape_str(dy, dys, sizeof dys));
    for (int i = 0; i < y->ndim; i++)
        if (y->shape[i] != dy->shape[i])
            return keel_fail(KEEL_ERR_SHAPE, "backward from '%s' (shape %s): upstream gradient has shape %s",
                             y->name, keel_node_shape_str(y, ys, sizeof ys), keel_node_shape_str(dy, dys, sizeof dys));
    y->keep = true;
    return run_backward(g, y, dy);
}
