/* Convolution nodes in conv2d's terms, for the cuDNN graphs. Plain C: built
 * with or without CUDA, so the GPU-free tests can map the graphs Keel builds.
 *
 * Every convolution kind is conv2d seen from one side: its "image" is
 * conv2d's input and its "output" conv2d's output, which is
 *   CONV2D            image = input 0,  filter = input 1,  output = the node
 *   CONV2D_BWD_DATA   image = the node, filter = input 1,  output = input 0 (dy)
 *   CONV_TRANSPOSE2D  the same as CONV2D_BWD_DATA (it is that gradient as a layer)
 *   CONV2D_BWD_WEIGHT image = input 0,  filter = the node, output = input 1 (dy)
 * (the CPU kernels in src/cpu/conv.c read the nodes the same way). */
#include "cuda/cuda.h"

#include <stdio.h>

keel_status keel_conv_shape_of(const keel_node *node, keel_conv_shape *shape)
{
    const keel_node *image, *output, *filter;
    keel_conv_pass pass;
    switch (node->op) {
    case KEEL_OP_CONV2D:
        image = node->inputs[0], filter = node->inputs[1], output = node, pass = KEEL_CONV_FPROP;
        break;
    case KEEL_OP_CONV2D_BWD_DATA:
    case KEEL_OP_CONV_TRANSPOSE2D:
        image = node, filter = node->inputs[1], output = node->inputs[0], pass = KEEL_CONV_DGRAD;
        break;
    case KEEL_OP_CONV2D_BWD_WEIGHT:
        image = node->inputs[0], filter = node, output = node->inputs[1], pass = KEEL_CONV_WGRAD;
        break;
    default:
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s: not a convolution node", node->name);
    }
    if (image->ndim != 4 || output->ndim != 4 || filter->ndim != 4)
        return keel_fail(KEEL_ERR_SHAPE, "%s: convolutions take 4-D NCHW tensors", node->name);
    const keel_conv_attrs *a = &node->attrs.conv;
    *shape = (keel_conv_shape){
        .pass = pass,
        .batch = image->shape[0], .channels = image->shape[1], .height = image->shape[2], .width = image->shape[3],
        .filters = output->shape[1], .out_height = output->shape[2], .out_width = output->shape[3],
        .kernel_h = a->kernel_h, .kernel_w = a->kernel_w, .groups = a->groups > 0 ? a->groups : 1,
        .pad_top = a->pad_top, .pad_bottom = a->pad_bottom, .pad_left = a->pad_left, .pad_right = a->pad_right,
        .stride_h = a->stride_h > 0 ? a->stride_h : 1, .stride_w = a->stride_w > 0 ? a->stride_w : 1,
        .dilation_h = a->dilation_h > 0 ? a->dilation_h : 1, .dilation_w = a->dilation_w > 0 ? a->dilation_w : 1,
    };
    /* The output size rule cuDNN checks. conv_transpose2d's output_pad rows
     * (fewer than the stride) are absorbed by its floor division. */
    int64_t span_h = shape->height + shape->pad_top + shape->pad_bottom - shape->dilation_h * (shape->kernel_h - 1) - 1;
    int64_t span_w = shape->width + shape->pad_left + shape->pad_right - shape->dilation_w * (shape->kernel_w - 1) - 1;
    if (span_h < 0 || span_w < 0 || span_h / shape->stride_h + 1 != shape->out_height ||
        span_w / shape->stride_w + 1 != shape->out_width) {
        char buf[256];
        return keel_fail(KEEL_ERR_SHAPE, "%s: the sizes of %s do not fit together", node->name,
                         keel_conv_shape_str(shape, buf, sizeof buf));
    }
    return KEEL_OK;
}

const char *keel_conv_shape_str(const keel_conv_shape *s, char *buf, size_t size)
{
    static const char *const pass_names[] = {"fprop", "dgrad", "wgrad", "fprop+bias+relu"};
    const char *pass = (unsigned)s->pass < 4 ? pass_names[s->pass] : "?";
    snprintf(buf, size,
             "%s x %lldx%lldx%lldx%lld w %lldx%lldx%lldx%lld (stride %lldx%lld, pad %lld,%lld,%lld,%lld, dilation "
             "%lldx%lld, groups %lld) y %lldx%lldx%lldx%lld",
             pass, (long long)s->batch, (long long)s->channels, (long long)s->height, (long long)s->width,
             (long long)s->filters, (long long)(s->groups > 0 ? s->channels / s->groups : s->channels),
             (long long)s->kernel_h, (long long)s->kernel_w, (long long)s->stride_h, (long long)s->stride_w,
             (long long)s->pad_top, (long long)s->pad_bottom, (long long)s->pad_left, (long long)s->pad_right,
             (long long)s->dilation_h, (long long)s->dilation_w, (long long)s->groups, (long long)s->batch,
             (long long)s->filters, (long long)s->out_height, (long long)s->out_width);
    return buf;
}
