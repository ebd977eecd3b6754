/* CPU backend kernels, one file per op family in src/cpu/. Each runs one
 * node: it reads launch->in[], writes launch->out, and parallelises with
 * OpenMP over keel_cpu_threads(launch->device) threads. No kernel allocates:
 * scratch comes from launch->workspace, sized by the family's prepare. */
#ifndef KEEL_CPU_H
#define KEEL_CPU_H

#include "backend.h"

/* conv.c: im2col + sgemm, the reference path */
keel_status keel_cpu_conv2d_prepare(keel_device *d, const keel_node *node, int64_t *workspace, void **algo);
keel_status keel_cpu_conv2d(const keel_launch *l);
keel_status keel_cpu_conv2d_bwd_data(const keel_launch *l);   /* also CONV_TRANSPOSE2D */
keel_status keel_cpu_conv2d_bwd_weight(const keel_launch *l);
keel_status keel_cpu_bias_grad(const keel_launch *l);

/* pool.c */
keel_status keel_cpu_max_pool2d(const keel_launch *l);
keel_status keel_cpu_max_pool2d_bwd(const keel_launch *l);
keel_status keel_cpu_avg_pool2d(const keel_launch *l);
keel_status keel_cpu_avg_pool2d_bwd(const keel_launch *l);

/* linear.c */
keel_status keel_cpu_linear(const keel_launch *l);
keel_status keel_cpu_linear_bwd_data(const keel_launch *l);
keel_status keel_cpu_linear_bwd_weight(const keel_launch *l);

/* elementwise.c: activations, add, scale, dropout, fill, copy */
keel_status keel_cpu_activation(const keel_launch *l);
keel_status keel_cpu_activation_bwd(const keel_launch *l);
keel_status keel_cpu_add(const keel_launch *l);
keel_status keel_cpu_scale(const keel_launch *l);
keel_status keel_cpu_dropout(const keel_launch *l);
keel_status keel_cpu_dropout_bwd(const keel_launch *l);
keel_status keel_cpu_fill(const keel_launch *l);
keel_status keel_cpu_copy(const keel_launch *l);

/* norm.c */
keel_status keel_cpu_lrn(const keel_launch *l);
keel_status keel_cpu_lrn_bwd(const keel_launch *l);
keel_status keel_cpu_batch_norm(const keel_launch *l);
keel_status keel_cpu_batch_norm_bwd_gamma(const keel_launch *l);
keel_status keel_cpu_batch_norm_bwd_data(const keel_launch *l);

/* shape.c */
keel_status keel_cpu_concat(const keel_launch *l);
keel_status keel_cpu_slice(const keel_launch *l);

/* loss.c */
keel_status keel_cpu_softmax(const keel_launch *l);
keel_status keel_cpu_softmax_bwd(const keel_launch *l);
keel_status keel_cpu_softmax_cross_entropy(const keel_launch *l);
keel_status keel_cpu_softmax_cross_entropy_bwd(const keel_launch *l);
keel_status keel_cpu_mse_loss(const keel_launch *l);
keel_status keel_cpu_mse_loss_bwd(const keel_launch *l);
keel_status keel_cpu_bce_with_logits(const keel_launch *l);
keel_status keel_cpu_bce_with_logits_bwd(const keel_launch *l);

#endif
