/* The graph builder.
 *
 * A model is built by calling the functions below; each infers its output
 * shape at once. The first error is kept on the graph (sticky): later calls
 * return NULL and do nothing, and keel_graph_error() names the layer, its
 * input shape and what was wrong. Shapes are NCHW.
 *
 * Every name given to a builder is a layer name; the layer's parameters are
 * called "<name>.weight", "<name>.bias" (and for batch norm also
 * "<name>.running_mean" and "<name>.running_var"), as PyTorch names them.
 * A NULL name gets an automatic one ("relu_7"). Nodes belong to the graph and
 * die with it. */
#ifndef KEEL_GRAPH_H
#define KEEL_GRAPH_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_graph keel_graph;
typedef struct keel_node keel_node;

keel_graph *keel_graph_new(void);
void keel_graph_free(keel_graph *g);

keel_status keel_graph_status(const keel_graph *g);
/* "" when there is no error. */
const char *keel_graph_error(const keel_graph *g);

/* Placement: nodes created after this call belong to placement group
 * `group` (>= 0). keel_plan_compile maps groups onto physical devices
 * (round-robin when there are fewer devices than groups). Returns the
 * previous group so a scope can be restored. */
int keel_graph_on_device(keel_graph *g, int group);

/* ---- parameter initialisers ---------------------------------------------- */

typedef enum keel_init_kind {
    KEEL_INIT_DEFAULT = 0,   /* the layer's own default (see each builder) */
    KEEL_INIT_CONSTANT,      /* value */
    KEEL_INIT_GAUSSIAN,      /* N(mean, std^2); AlexNet used std 0.01 */
    KEEL_INIT_UNIFORM,       /* U(low, high) */
    KEEL_INIT_XAVIER,        /* Glorot uniform: U(-a, a), a = gain*sqrt(6/(fan_in+fan_out)) */
    KEEL_INIT_KAIMING,       /* He normal: N(0, gain^2 * 2/fan_in) (gain 1 = ReLU) */
    KEEL_INIT_KAIMING_UNIFORM, /* PyTorch's conv/linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
} keel_init_kind;

typedef struct keel_init {
    keel_init_kind kind;
    float value;     /* CONSTANT */
    float mean, std; /* GAUSSIAN */
    float low, high; /* UNIFORM */
    float gain;      /* XAVIER, KAIMING; 0 means 1 */
} keel_init;

static inline keel_init keel_init_constant(float v) { keel_init i = {KEEL_INIT_CONSTANT}; i.value = v; return i; }
static inline keel_init keel_init_gaussian(float std) { keel_init i = {KEEL_INIT_GAUSSIAN}; i.std = std; return i; }
static inline keel_init keel_init_uniform(float lo, float hi) { keel_init i = {KEEL_INIT_UNIFORM}; i.low = lo; i.high = hi; return i; }
static inline keel_init keel_init_xavier(void) { keel_init i = {KEEL_INIT_XAVIER}; return i; }
static inline keel_init keel_init_kaiming(void) { keel_init i = {KEEL_INIT_KAIMING}; return i; }

/* ---- leaves -------------------------------------------------------------- */

/* A float32 input fed with keel_plan_set_input, e.g. images {N, C, H, W}. */
keel_node *keel_input(keel_graph *g, const char *name, int ndim, const int64_t *shape);
/* An int32 input of class indices, shape {batch}. */
keel_node *keel_input_labels(keel_graph *g, const char *name, int64_t batch);
/* A trainable parameter under its full name ("embed.weight"). */
keel_node *keel_param(keel_graph *g, const char *name, int ndim, const int64_t *shape, keel_init init);

/* ---- convolution ----------------------------------------------------------- */

typedef struct keel_conv2d_opts {
    int kernel_h, kernel_w;                 /* required */
    int stride_h, stride_w;                 /* 0 means 1 */
    int pad_top, pad_bottom, pad_left, pad_right;
    int dilation_h, dilation_w;             /* 0 means 1 */
    int groups;                             /* 0 means 1 */
    int output_pad_h, output_pad_w;         /* conv_transpose2d only */
    bool no_bias;
    keel_init weight_init;                  /* default: KAIMING_UNIFORM as PyTorch */
    keel_init bias_init;                    /* default: PyTorch's U(-1/sqrt(fan_in), ..) */
} keel_conv2d_opts;

/* Symmetric options: a kernel x kernel window, one stride, one padding. */
keel_conv2d_opts keel_conv_opts(int kernel, int stride, int padding);

/* x {N, C, H, W} -> {N, out_channels, P, Q},
 * P = (H + pad_top + pad_bottom - dilation_h*(kernel_h-1) - 1)/stride_h + 1.
 * weight {out_channels, C/groups, kernel_h, kernel_w}, bias {out_channels}. */
keel_node *keel_conv2d(keel_graph *g, const char *name, keel_node *x, int out_channels,
                       const keel_conv2d_opts *opts);
/* The gradient of conv2d with respect to its input, used as a layer:
 * x {N, C, H, W} -> {N, out_channels, P, Q},
 * P = (H-1)*stride_h - pad_top - pad_bottom + dilation_h*(kernel_h-1) + output_pad_h + 1.
 * weight {C, out_channels/groups, kernel_h, kernel_w} as in PyTorch. */
keel_node *keel_conv_transpose2d(keel_graph *g, const char *name, keel_node *x, int out_channels,
                                 const keel_conv2d_opts *opts);

/* ---- pooling --------------------------------------------------------------- */

typedef struct keel_pool2d_opts {
    int kernel_h, kernel_w;           /* required */
    int stride_h, stride_w;           /* 0 means the kernel size, as in PyTorch */
    int pad_h, pad_w;                 /* symmetric; at most half the kernel */
    bool ceil_mode;                   /* ceil instead of floor in the size rule */
    bool exclude_pad;                 /* average: divide by the in-bounds count
                                         (count_include_pad = false) */
} keel_pool2d_opts;

keel_pool2d_opts keel_pool_opts(int kernel, int stride, int padding);

keel_node *keel_max_pool2d(keel_graph *g, const char *name, keel_node *x, const keel_pool2d_opts *opts);
keel_node *keel_avg_pool2d(keel_graph *g, const char *name, keel_node *x, const keel_pool2d_opts *opts);
/* {N, C, H, W} -> {N, C, 1, 1} */
keel_node *keel_global_avg_pool2d(keel_graph *g, const char *name, keel_node *x);

/* ---- dense, activations, normalisation ------------------------------------ */

typedef struct keel_linear_opts {
    int64_t in_features;   /* 0: taken from x; otherwise x must have exactly this many */
    bool no_bias;
    keel_init weight_init, bias_init; /* defaults as PyTorch's nn.Linear */
} keel_linear_opts;

/* x {N, in_features} -> {N, out_features}; weight {out, in}, bias {out}.
 * opts may be NULL. */
keel_node *keel_linear(keel_graph *g, const char *name, keel_node *x, int64_t out_features,
                       const keel_linear_opts *opts);

keel_node *keel_relu(keel_graph *g, const char *name, keel_node *x);
keel_node *keel_leaky_relu(keel_graph *g, const char *name, keel_node *x, float negative_slope);
keel_node *keel_sigmoid(keel_graph *g, const char *name, keel_node *x);
keel_node *keel_tanh(keel_graph *g, const char *name, keel_node *x);

/* Local response normalisation across channels:
 * b = a / (k + alpha/size * sum over `size` neighbouring channels of a^2)^beta.
 * AlexNet: size 5, alpha 1e-4, beta 0.75, k 2. */
keel_node *keel_lrn(keel_graph *g, const char *name, keel_node *x, int size, float alpha, float beta,
                    float k);

/* Inverted dropout: in training each element is zeroed with probability p and
 * the rest scaled by 1/(1-p); identity in evaluation. Seeded by the plan. */
keel_node *keel_dropout(keel_graph *g, const char *name, keel_node *x, float p);

typedef struct keel_batch_norm_opts {
    float eps;      /* 0 means 1e-5 */
    float momentum; /* 0 means 0.1: running = (1-momentum)*running + momentum*batch */
} keel_batch_norm_opts;

/* Over N, H, W per channel of {N, C, H, W} (or {N, C}). Training uses the
 * batch statistics and updates the running ones (unbiased variance, as
 * PyTorch); evaluation uses the running ones. opts may be NULL. */
keel_node *keel_batch_norm(keel_graph *g, const char *name, keel_node *x, const keel_batch_norm_opts *opts);

/* ---- structure ------------------------------------------------------------- */

keel_node *keel_add(keel_graph *g, const char *name, keel_node *a, keel_node *b);
/* y = s * x */
keel_node *keel_scale(keel_graph *g, const char *name, keel_node *x, float s);
/* Along the channel axis (1); all other dimensions must agree. */
keel_node *keel_concat(keel_graph *g, const char *name, int count, keel_node *const *inputs);
/* {N, ...} -> {N, product of the rest} */
keel_node *keel_flatten(keel_graph *g, const char *name, keel_node *x);
/* One dimension may be -1. */
keel_node *keel_reshape(keel_graph *g, const char *name, keel_node *x, int ndim, const int64_t *shape);
/* Softmax over axis 1 of {N, C}. */
keel_node *keel_softmax(keel_graph *g, const char *name, keel_node *x);

/* ---- losses: each returns the scalar mean over the batch, shape {1} ------- */

keel_node *keel_softmax_cross_entropy(keel_graph *g, const char *name, keel_node *logits, keel_node *labels);
keel_node *keel_mse_loss(keel_graph *g, const char *name, keel_node *prediction, keel_node *target);
keel_node *keel_bce_with_logits(keel_graph *g, const char *name, keel_node *logits, keel_node *target);

/* ---- differentiation ----------------------------------------------------- */

/* Ask for the gradient of an input node (parameters always get one). Call
 * before keel_graph_backward. */
void keel_graph_require_grad(keel_graph *g, keel_node *x);
/* Appends gradient nodes for d loss / d (every parameter and every required
 * input). `loss` must have one element. */
keel_status keel_graph_backward(keel_graph *g, keel_node *loss);
/* As PyTorch's y.backward(dy): dy is an input node of y's shape whose value
 * the caller sets before running the backward pass. */
keel_status keel_graph_backward_from(keel_graph *g, keel_node *y, keel_node *dy);
/* The gradient node of x after backward, or NULL. */
keel_node *keel_graph_grad(const keel_graph *g, const keel_node *x);
/* Keep this node's value readable after a run (losses and gradients of
 * inputs are kept already). */
void keel_graph_keep(keel_graph *g, keel_node *x);

/* ---- inspection ------------------------------------------------------------ */

const char *keel_node_name(const keel_node *x);
const char *keel_node_op_name(const keel_node *x);
/* Writes up to KEEL_MAX_DIMS sizes to shape; returns ndim. */
int keel_node_shape(const keel_node *x, int64_t *shape);
int64_t keel_node_numel(const keel_node *x);
keel_node *keel_graph_find(const keel_graph *g, const char *name);

/* One row per forward layer, for summaries (keel info). */
typedef struct keel_layer_info {
    const char *name;
    const char *op;
    int ndim;
    int64_t shape[KEEL_MAX_DIMS];
    int64_t params;          /* trainable elements owned by this layer */
    double flops;            /* forward multiply-adds count 2 FLOPs */
    int64_t activation_bytes;
    int group;               /* placement group */
} keel_layer_info;

int keel_graph_layer_count(const keel_graph *g);
keel_status keel_graph_layer_info(const keel_graph *g, int index, keel_layer_info *info);
/* Sum of trainable parameter elements. */
int64_t keel_graph_param_count(const keel_graph *g);

#ifdef __cplusplus
}
#endif
#endif
