/* The graph builder core: nodes, names, sticky errors, leaves. */
#include "graph/graph_internal.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

keel_graph *keel_graph_new(void)
{
    return calloc(1, sizeof(keel_graph));
}

void keel_graph_free(keel_graph *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->n_nodes; i++) {
        keel_node *x = g->nodes[i];
        free(x->name);
        free(x->inputs);
        free(x);
    }
    free(g->nodes);
    free(g);
}

keel_status keel_graph_status(const keel_graph *g)
{
    return g ? g->status : KEEL_ERR_INVALID_ARGUMENT;
}

const char *keel_graph_error(const keel_graph *g)
{
    return g ? g->error : "no graph (keel_graph_new failed)";
}

int keel_graph_on_device(keel_graph *g, int group)
{
    int previous = g->group;
    if (group < 0) {
        keel_graph_fail(g, "keel_graph_on_device", "placement group %d is negative", group);
        return previous;
    }
    g->group = group;
    return previous;
}

static void set_error(keel_graph *g, keel_status status, const char *layer, const char *fmt, va_list ap)
{
    if (g->status != KEEL_OK)
        return; /* the first error is the one that explains the rest */
    int n = snprintf(g->error, sizeof g->error, "%s: ", layer ? layer : "graph");
    if (n < 0 || (size_t)n >= sizeof g->error)
        n = 0;
    vsnprintf(g->error + n, sizeof g->error - (size_t)n, fmt, ap);
    g->status = status;
}

keel_node *keel_graph_fail(keel_graph *g, const char *layer, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_error(g, KEEL_ERR_SHAPE, layer, fmt, ap);
    va_end(ap);
    keel_fail(g->status, "%s", g->error);
    return NULL;
}

bool keel_graph_check(keel_graph *g, const char *layer, int n, keel_node *const *inputs)
{
    if (!g)
        return true;
    if (g->status != KEEL_OK)
        return true;
    for (int i = 0; i < n; i++) {
        if (!inputs || !inputs[i]) {
            keel_graph_fail(g, layer ? layer : "graph", "input %d is NULL", i);
            return true;
        }
    }
    return false;
}

const char *keel_node_shape_str(const keel_node *x, char *buf, size_t size)
{
    return keel_shape_str(buf, size, x->ndim, x->shape);
}

const char *keel_graph_layer_name(keel_graph *g, const char *name, const char *op_name)
{
    if (name)
        return name;
    /* keel_node_new copies names, so one buffer in the graph is enough. */
    snprintf(g->auto_name, sizeof g->auto_name, "%s_%d", op_name, ++g->auto_name_counter);
    return g->auto_name;
}

keel_node *keel_node_new(keel_graph *g, keel_op op, const char *name, int n_inputs, keel_node *const *inputs,
                         int ndim, const int64_t *shape)
{
    if (g->status != KEEL_OK)
        return NULL;
    if (ndim < 0 || ndim > KEEL_MAX_DIMS)
        return keel_graph_fail(g, name, "%d dimensions; at most %d are supported", ndim, KEEL_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] <= 0) {
            char buf[96];
            return keel_graph_fail(g, name, "output shape %s has an empty dimension",
                                   keel_shape_str(buf, sizeof buf, ndim, shape));
        }
    if (g->n_nodes == g->cap_nodes) {
        int cap = g->cap_nodes ? g->cap_nodes * 2 : 64;
        keel_node **grown = realloc(g->nodes, (size_t)cap * sizeof *grown);
        if (!grown)
            return keel_graph_fail(g, name, "out of memory growing the graph to %d nodes", cap);
        g->nodes = grown;
        g->cap_nodes = cap;
    }
    keel_node *x = calloc(1, sizeof *x);
    char auto_name[64];
    if (!name) {
        snprintf(auto_name, sizeof auto_name, "%s_%d", keel_op_get(op)->name, ++g->auto_name_counter);
        name = auto_name;
    }
    if (x) {
        x->name = keel_strdup(name);
        x->inputs = n_inputs ? calloc((size_t)n_inputs, sizeof *x->inputs) : NULL;
    }
    if (!x || !x->name || (n_inputs && !x->inputs)) {
        if (x) {
            free(x->name);
            free(x->inputs);
        }
        free(x);
        return keel_graph_fail(g, name, "out of memory");
    }
    x->id = g->n_nodes;
    x->op = op;
    x->dtype = KEEL_F32;
    x->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        x->shape[i] = shape[i];
    x->n_inputs = n_inputs;
    for (int i = 0; i < n_inputs; i++)
        x->inputs[i] = inputs[i];
    x->group = g->group;
    x->layer = x->name;
    g->nodes[g->n_nodes++] = x;
    return x;
}

keel_node *keel_input(keel_graph *g, const char *name, int ndim, const int64_t *shape)
{
    if (keel_graph_check(g, name, 0, NULL))
        return NULL;
    if (!name)
        return keel_graph_fail(g, "input", "an input needs a name");
    if (keel_graph_find(g, name))
        return keel_graph_fail(g, name, "a node of this name already exists");
    return keel_node_new(g, KEEL_OP_INPUT, name, 0, NULL, ndim, shape);
}

keel_node *keel_input_labels(keel_graph *g, const char *name, int64_t batch)
{
    keel_node *x = keel_input(g, name, 1, &batch);
    if (x)
        x->dtype = KEEL_I32;
    return x;
}

keel_node *keel_param_new(keel_graph *g, const char *layer, const char *suffix, int ndim, const int64_t *shape,
                          keel_init init, bool trainable)
{
    char full[256];
    snprintf(full, sizeof full, "%s.%s", layer, suffix);
    if (keel_graph_find(g, full))
        return keel_graph_fail(g, layer, "parameter '%s' already exists; give each layer its own name", full);
    keel_node *p = keel_node_new(g, KEEL_OP_PARAM, full, 0, NULL, ndim, shape);
    if (!p)
        return NULL;
    p->init = init;
    p->trainable = trainable;
    p->layer = NULL;
    return p;
}

keel_node *keel_param(keel_graph *g, const char *name, int ndim, const int64_t *shape, keel_init init)
{
    if (keel_graph_check(g, name, 0, NULL))
        return NULL;
    if (!name)
        return keel_graph_fail(g, "param", "a parameter needs a name");
    if (keel_graph_find(g, name))
        return keel_graph_fail(g, name, "a node of this name already exists");
    keel_node *p = keel_node_new(g, KEEL_OP_PARAM, name, 0, NULL, ndim, shape);
    if (p) {
        p->init = init;
        p->trainable = true;
    }
    return p;
}

void keel_graph_keep(keel_graph *g, keel_node *x)
{
    (void)g;
    if (x)
        x->keep = true;
}

void keel_graph_require_grad(keel_graph *g, keel_node *x)
{
    if (!x)
        return;
    if (x->op != KEEL_OP_INPUT || x->dtype != KEEL_F32) {
        keel_graph_fail(g, x->name, "only float inputs can ask for a gradient");
        return;
    }
    x->requires_grad = true;
}

keel_node *keel_graph_grad(const keel_graph *g, const keel_node *x)
{
    (void)g;
    return x ? x->grad : NULL;
}

const char *keel_node_name(const keel_node *x)
{
    return x ? x->name : "";
}

const char *keel_node_op_name(const keel_node *x)
{
    return x ? keel_op_get(x->op)->name : "";
}

int keel_node_shape(const keel_node *x, int64_t *shape)
{
    for (int i = 0; i < x->ndim; i++)
        shape[i] = x->shape[i];
    return x->ndim;
}

int64_t keel_node_numel(const keel_node *x)
{
    return keel_shape_numel(x->ndim, x->shape);
}

keel_node *keel_graph_find(const keel_graph *g, const char *name)
{
    for (int i = 0; i < g->n_nodes; i++)
        if (strcmp(g->nodes[i]->name, name) == 0)
            return g->nodes[i];
    return NULL;
}
