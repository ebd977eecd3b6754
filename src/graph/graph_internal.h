/* The graph's insides: nodes, op kinds and their attributes, and the
 * internal builder calls the op files use. */
#ifndef KEEL_GRAPH_INTERNAL_H
#define KEEL_GRAPH_INTERNAL_H

#include "keel/graph.h"
#include "core/core.h"

/* Every node kind. Forward ops first, then the kinds that only appear as
 * gradient nodes. The CPU and CUDA backends each have one kernel per kind. */
typedef enum keel_op {
    KEEL_OP_INPUT = 0,
    KEEL_OP_PARAM,
    KEEL_OP_FILL,              /* attrs.fill.value; the seed of a backward pass */
    KEEL_OP_COPY,
    /* convolution: inputs x, w, [bias] */
    KEEL_OP_CONV2D,
    KEEL_OP_CONV2D_BWD_DATA,   /* inputs dy, w -> dx (shape of the forward x) */
    KEEL_OP_CONV2D_BWD_WEIGHT, /* inputs x, dy -> dw */
    KEEL_OP_CONV_TRANSPOSE2D,  /* inputs x, w, [bias]: conv2d's data gradient as a layer */
    KEEL_OP_BIAS_GRAD,         /* input dy {N, C, ...} -> {C}: sum over all but axis 1 */
    /* pooling */
    KEEL_OP_MAX_POOL2D,        /* aux: int32 argmax per output (offset in the input plane) */
    KEEL_OP_MAX_POOL2D_BWD,    /* input dy; fwd = the pool node (uses its aux) */
    KEEL_OP_AVG_POOL2D,
    KEEL_OP_AVG_POOL2D_BWD,    /* input dy; fwd = the pool node */
    /* dense: inputs x {N, in}, w {out, in}, [bias] */
    KEEL_OP_LINEAR,
    KEEL_OP_LINEAR_BWD_DATA,   /* inputs dy, w -> dx */
    KEEL_OP_LINEAR_BWD_WEIGHT, /* inputs x, dy -> dw */
    /* element-wise */
    KEEL_OP_ACTIVATION,        /* attrs.act */
    KEEL_OP_ACTIVATION_BWD,    /* inputs dy, y (x for leaky ReLU); attrs.act */
    KEEL_OP_ADD,               /* inputs a, b of one shape */
    KEEL_OP_SCALE,             /* attrs.scale */
    KEEL_OP_DROPOUT,           /* attrs.dropout; mask drawn from (plan seed, node id, step) */
    KEEL_OP_DROPOUT_BWD,       /* input dy; fwd = the dropout node */
    /* normalisation */
    KEEL_OP_LRN,               /* aux: the scale k + alpha/n*sum a^2, one per element */
    KEEL_OP_LRN_BWD,           /* inputs dy, x, y; fwd = the LRN node */
    KEEL_OP_BATCH_NORM,        /* inputs x, gamma, beta, running_mean, running_var;
                                  aux: batch mean and 1/sqrt(var+eps) per channel */
    KEEL_OP_BATCH_NORM_BWD_GAMMA, /* inputs dy, x; fwd = bn -> {C}: sum dy*xhat */
    KEEL_OP_BATCH_NORM_BWD_DATA,  /* inputs dy, x, gamma, dgamma, dbeta; fwd = bn */
    /* structure */
    KEEL_OP_CONCAT,            /* n inputs along axis 1 */
    KEEL_OP_SLICE,             /* input x; attrs.slice: channels [offset, offset+count) */
    KEEL_OP_RESHAPE,           /* a view of its input */
    KEEL_OP_SOFTMAX,           /* {N, C} over axis 1 */
    KEEL_OP_SOFTMAX_BWD,       /* inputs dy, y */
    /* losses: scalar {1} means over the batch */
    KEEL_OP_SOFTMAX_CROSS_ENTROPY, /* inputs logits, labels; aux: probabilities {N, C} */
    KEEL_OP_SOFTMAX_CROSS_ENTROPY_BWD, /* inputs dloss, labels; fwd = the loss node */
    KEEL_OP_MSE_LOSS,          /* inputs prediction, target */
    KEEL_OP_MSE_LOSS_BWD,      /* inputs dloss, prediction, target -> dprediction */
    KEEL_OP_BCE_WITH_LOGITS,   /* inputs logits, target */
    KEEL_OP_BCE_WITH_LOGITS_BWD, /* inputs dloss, logits, target -> dlogits */
    KEEL_OP_COUNT
} keel_op;

typedef enum keel_act_kind {
    KEEL_ACT_RELU = 0,
    KEEL_ACT_LEAKY_RELU,
    KEEL_ACT_SIGMOID,
    KEEL_ACT_TANH,
} keel_act_kind;

typedef struct keel_conv_attrs {
    int kernel_h, kernel_w, stride_h, stride_w;
    int pad_top, pad_bottom, pad_left, pad_right;
    int dilation_h, dilation_w, groups;
    int output_pad_h, output_pad_w;
    bool has_bias;
} keel_conv_attrs;

typedef struct keel_pool_attrs {
    int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
    bool ceil_mode, exclude_pad;
} keel_pool_attrs;

typedef struct keel_act_attrs {
    keel_act_kind kind;
    float slope;
} keel_act_attrs;

typedef struct keel_lrn_attrs {
    int size;
    float alpha, beta, k;
} keel_lrn_attrs;

typedef struct keel_bn_attrs {
    float eps, momentum;
} keel_bn_attrs;

typedef union keel_attrs {
    keel_conv_attrs conv;     /* CONV2D and its gradients, CONV_TRANSPOSE2D */
    keel_pool_attrs pool;
    keel_act_attrs act;
    keel_lrn_attrs lrn;
    keel_bn_attrs bn;
    struct { float p; } dropout;
    struct { float value; } fill;
    struct { float s; } scale;
    struct { int64_t offset, count; } slice;
    struct { bool has_bias; } linear;
} keel_attrs;

struct keel_node {
    int id;                    /* index in the graph, also its schedule order */
    keel_op op;
    char *name;
    keel_dtype dtype;
    int ndim;
    int64_t shape[KEEL_MAX_DIMS];
    int n_inputs;
    keel_node **inputs;
    keel_attrs attrs;
    keel_node *fwd;            /* gradient nodes: the forward node whose aux they read */
    int64_t aux_bytes;         /* scratch saved by the forward pass for the backward */
    int group;                 /* placement group */
    bool is_backward;          /* created by keel_graph_backward */
    bool keep;                 /* value readable after the run */
    bool trainable;            /* PARAM: gets a gradient (false: running stats) */
    bool requires_grad;        /* INPUT: the user asked for its gradient */
    bool needs_grad;           /* set by backward: on a path from a parameter or required input */
    keel_init init;            /* PARAM */
    keel_node *grad;           /* after backward: d loss / d this */
    const char *layer;         /* the user's layer name this node belongs to */
};

struct keel_graph {
    keel_node **nodes;
    int n_nodes, cap_nodes;
    keel_status status;
    char error[512];
    int group;
    int auto_name_counter;
    char auto_name[64];        /* the last automatic layer name */
    bool has_backward;
    keel_node *loss;           /* the node backward started from */
};

/* ---- internal builder calls, for src/ops ------------------------------- */

/* True when the graph already failed or any input is NULL; records an error
 * naming the layer in the second case. Every builder starts with it. */
bool keel_graph_check(keel_graph *g, const char *layer, int n, keel_node *const *inputs);

/* Records the sticky error "<layer>: <message>" (first one wins) and returns
 * NULL so a builder can `return keel_graph_fail(g, name, "...")`. */
keel_node *keel_graph_fail(keel_graph *g, const char *layer, const char *fmt, ...) KEEL_PRINTF(3, 4);

/* Appends a node. `name` may be NULL (an automatic name is made from the op).
 * Inputs are copied. Returns NULL (and sets the sticky error) on OOM. */
keel_node *keel_node_new(keel_graph *g, keel_op op, const char *name, int n_inputs, keel_node *const *inputs,
                         int ndim, const int64_t *shape);

/* A parameter "<layer>.<suffix>" with the given init. */
keel_node *keel_param_new(keel_graph *g, const char *layer, const char *suffix, int ndim, const int64_t *shape,
                          keel_init init, bool trainable);

/* The automatic name for a layer when the caller passed NULL. */
const char *keel_graph_layer_name(keel_graph *g, const char *name, const char *op_name);

/* Formats the shape of x for error messages. */
const char *keel_node_shape_str(const keel_node *x, char *buf, size_t size);

/* ---- the op table -----------------------------------------------------------
 * Each op file (src/ops/<family>.c) fills in the entries of its kinds. */

/* Builds the gradient nodes of `node` given dy, the gradient of its output:
 * sets dx[i] for each input i that needs one (a NULL entry needs none).
 * Errors go to the graph's sticky error. */
typedef void (*keel_backward_fn)(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
/* Forward FLOPs (a multiply-add counts 2). */
typedef double (*keel_flops_fn)(const keel_node *node);

typedef struct keel_op_def {
    const char *name;
    keel_backward_fn backward;   /* NULL: not differentiable (gradient nodes) */
    keel_flops_fn flops;         /* NULL: counted as one per output element */
    bool view;                   /* output aliases input 0 (RESHAPE) */
    bool inplace_ok;             /* may overwrite input 0 when it dies here */
} keel_op_def;

const keel_op_def *keel_op_get(keel_op op);

/* Whether node `x` needs a gradient (valid inside backward rules): a
 * trainable parameter, an input that asked for one, or anything computed
 * from those. Backward rules skip the gradients nobody needs. */
static inline bool keel_node_needs_grad(const keel_node *x) { return x && x->needs_grad; }

#endif
