/* Backward rules and FLOP counts of every op family, one file each in
 * src/ops/. The table in ops.c ties them to the op kinds. */
#ifndef KEEL_OPS_H
#define KEEL_OPS_H

#include "graph/graph_internal.h"

/* conv.c: conv2d, conv_transpose2d and their gradients */
void keel_conv2d_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
void keel_conv_transpose2d_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
double keel_conv2d_flops(const keel_node *node);
double keel_conv_bwd_flops(const keel_node *node);  /* bwd data, bwd weight, transpose */
/* The spatial output size rule shared by builders and tests. */
int64_t keel_conv_out_size(int64_t in, int kernel, int stride, int pad_total, int dilation);

/* pool.c */
void keel_max_pool2d_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
void keel_avg_pool2d_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
double keel_pool2d_flops(const keel_node *node);
int64_t keel_pool_out_size(int64_t in, int kernel, int stride, int pad, bool ceil_mode);

/* linear.c */
void keel_linear_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
double keel_linear_flops(const keel_node *node);
double keel_linear_bwd_flops(const keel_node *node);

/* activation.c: activations, dropout, add, scale */
void keel_activation_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
void keel_dropout_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
void keel_add_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
void keel_scale_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);

/* norm.c: LRN and batch norm */
void keel_lrn_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
double keel_lrn_flops(const keel_node *node);
void keel_batch_norm_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);

/* shape.c: concat, slice, reshape, copy */
void keel_concat_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
void keel_slice_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
void keel_reshape_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
void keel_copy_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
/* Internal builders used by backward rules. */
keel_node *keel_slice_channels(keel_graph *g, const char *name, keel_node *x, int64_t offset, int64_t count);

/* loss.c: softmax, losses */
void keel_softmax_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
void keel_softmax_cross_entropy_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
void keel_mse_loss_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);
void keel_bce_with_logits_backward(keel_graph *g, keel_node *node, keel_node *dy, keel_node **dx);

/* Helpers for backward rules (graph.c). A gradient node is created with
 * is_backward set, in the placement group of the node it differentiates. */
keel_node *keel_grad_node(keel_graph *g, keel_op op, keel_node *of, const char *suffix, int n_inputs,
                          keel_node *const *inputs, int ndim, const int64_t *shape);

#endif
