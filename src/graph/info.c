/* Per-layer summaries for `keel info`: one row per forward op node. */
#include "graph/graph_internal.h"
#include <string.h>

static bool is_layer(const keel_node *x)
{
    return !x->is_backward && x->op != KEEL_OP_INPUT && x->op != KEEL_OP_PARAM;
}

int keel_graph_layer_count(const keel_graph *g)
{
    int n = 0;
    for (int i = 0; i < g->n_nodes; i++)
        n += is_layer(g->nodes[i]);
    return n;
}

keel_status keel_graph_layer_info(const keel_graph *g, int index, keel_layer_info *info)
{
    for (int i = 0; i < g->n_nodes; i++) {
        const keel_node *x = g->nodes[i];
        if (!is_layer(x) || index-- > 0)
            continue;
        memset(info, 0, sizeof *info);
        info->name = x->name;
        info->op = keel_op_get(x->op)->name;
        info->ndim = x->ndim;
        for (int d = 0; d < x->ndim; d++)
            info->shape[d] = x->shape[d];
        for (int j = 0; j < x->n_inputs; j++) {
            const keel_node *in = x->inputs[j];
            if (in->op == KEEL_OP_PARAM && in->trainable)
                info->params += keel_node_numel(in);
        }
        const keel_op_def *def = keel_op_get(x->op);
        info->flops = def->flops ? def->flops(x) : (double)keel_node_numel(x);
        info->activation_bytes = keel_node_numel(x) * (int64_t)keel_dtype_size(x->dtype);
        info->group = x->group;
        return KEEL_OK;
    }
    return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "layer index out of range");
}

int64_t keel_graph_param_count(const keel_graph *g)
{
    int64_t n = 0;
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i]->op == KEEL_OP_PARAM && g->nodes[i]->trainable)
            n += keel_node_numel(g->nodes[i]);
    return n;
}
