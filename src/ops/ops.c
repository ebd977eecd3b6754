/* The op table: name, backward rule and FLOP count of every node kind. */
#include "ops/ops.h"

static const keel_op_def op_table[KEEL_OP_COUNT] = {
    [KEEL_OP_INPUT] = {"input", NULL, NULL, false, false},
    [KEEL_OP_PARAM] = {"param", NULL, NULL, false, false},
    [KEEL_OP_FILL] = {"fill", NULL, NULL, false, false},
    [KEEL_OP_COPY] = {"copy", keel_copy_backward, NULL, false, false},
    [KEEL_OP_CONV2D] = {"conv2d", keel_conv2d_backward, keel_conv2d_flops, false, false},
    [KEEL_OP_CONV2D_BWD_DATA] = {"conv2d_bwd_data", NULL, keel_conv_bwd_flops, false, false},
    [KEEL_OP_CONV2D_BWD_WEIGHT] = {"conv2d_bwd_weight", NULL, keel_conv_bwd_flops, false, false},
    [KEEL_OP_CONV_TRANSPOSE2D] = {"conv_transpose2d", keel_conv_transpose2d_backward, keel_conv_bwd_flops, false,
                                  false},
    [KEEL_OP_BIAS_GRAD] = {"bias_grad", NULL, NULL, false, false},
    [KEEL_OP_MAX_POOL2D] = {"max_pool2d", keel_max_pool2d_backward, keel_pool2d_flops, false, false},
    [KEEL_OP_MAX_POOL2D_BWD] = {"max_pool2d_bwd", NULL, NULL, false, false},
    [KEEL_OP_AVG_POOL2D] = {"avg_pool2d", keel_avg_pool2d_backward, keel_pool2d_flops, false, false},
    [KEEL_OP_AVG_POOL2D_BWD] = {"avg_pool2d_bwd", NULL, NULL, false, false},
    [KEEL_OP_LINEAR] = {"linear", keel_linear_backward, keel_linear_flops, false, false},
    [KEEL_OP_LINEAR_BWD_DATA] = {"linear_bwd_data", NULL, keel_linear_bwd_flops, false, false},
    [KEEL_OP_LINEAR_BWD_WEIGHT] = {"linear_bwd_weight", NULL, keel_linear_bwd_flops, false, false},
    [KEEL_OP_ACTIVATION] = {"activation", keel_activation_backward, NULL, false, true},
    [KEEL_OP_ACTIVATION_BWD] = {"activation_bwd", NULL, NULL, false, true},
    [KEEL_OP_ADD] = {"add", keel_add_backward, NULL, false, true},
    [KEEL_OP_SCALE] = {"scale", keel_scale_backward, NULL, false, true},
    [KEEL_OP_DROPOUT] = {"dropout", keel_dropout_backward, NULL, false, true},
    [KEEL_OP_DROPOUT_BWD] = {"dropout_bwd", NULL, NULL, false, true},
    [KEEL_OP_LRN] = {"lrn", keel_lrn_backward, keel_lrn_flops, false, false},
    [KEEL_OP_LRN_BWD] = {"lrn_bwd", NULL, NULL, false, false},
    [KEEL_OP_BATCH_NORM] = {"batch_norm", keel_batch_norm_backward, NULL, false, false},
    [KEEL_OP_BATCH_NORM_BWD_GAMMA] = {"batch_norm_bwd_gamma", NULL, NULL, false, false},
    [KEEL_OP_BATCH_NORM_BWD_DATA] = {"batch_norm_bwd_data", NULL, NULL, false, false},
    [KEEL_OP_CONCAT] = {"concat", keel_concat_backward, NULL, false, false},
    [KEEL_OP_SLICE] = {"slice", keel_slice_backward, NULL, false, false},
    [KEEL_OP_RESHAPE] = {"reshape", keel_reshape_backward, NULL, true, false},
    [KEEL_OP_SOFTMAX] = {"softmax", keel_softmax_backward, NULL, false, false},
    [KEEL_OP_SOFTMAX_BWD] = {"softmax_bwd", NULL, NULL, false, false},
    [KEEL_OP_SOFTMAX_CROSS_ENTROPY] = {"softmax_cross_entropy", keel_softmax_cross_entropy_backward, NULL, false,
                                       false},
    [KEEL_OP_SOFTMAX_CROSS_ENTROPY_BWD] = {"softmax_cross_entropy_bwd", NULL, NULL, false, false},
    [KEEL_OP_MSE_LOSS] = {"mse_loss", keel_mse_loss_backward, NULL, false, false},
    [KEEL_OP_MSE_LOSS_BWD] = {"mse_loss_bwd", NULL, NULL, false, false},
    [KEEL_OP_BCE_WITH_LOGITS] = {"bce_with_logits", keel_bce_with_logits_backward, NULL, false, false},
    [KEEL_OP_BCE_WITH_LOGITS_BWD] = {"bce_with_logits_bwd", NULL, NULL, false, false},
};

const keel_op_def *keel_op_get(keel_op op)
{
    return (op >= 0 && op < KEEL_OP_COUNT) ? &op_table[op] : NULL;
}
