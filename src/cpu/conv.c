/* Convolution on the CPU: im2col + sgemm, the reference path.
 *
 * For one sample and one group, im2col unrolls the image patches into a
 * matrix col {patch, pixels} (patch = channels_per_group*kh*kw rows, one
 * column per output pixel), so that
 *   forward:        y_g  {filters_g, pixels} = w_g {filters_g, patch} . col
 *   data gradient:  col = w_g^T . dy_g, folded back onto the image by col2im
 *   weight gradient: dw_g += dy_g . col^T, summed over the samples in order.
 * A 1x1 convolution with stride 1 and no padding needs no unrolling: the
 * image already is col. Each sgemm runs on OpenBLAS's threads (the backend
 * sets their count). im2col, col2im and the bias stay on the calling thread:
 * OpenBLAS's pthread workers keep spinning after each call, and an OpenMP
 * region squeezed between two sgemm calls fights them for the cores (on two
 * cores it made the whole layer 2-4x slower). Every reduction has a fixed
 * order, so results depend only on the thread count. */
#include <limits.h>
#include <string.h>
#include <cblas.h>
#include "cpu/cpu.h"

/* The shapes of the conv2d a node belongs to, whichever kernel runs it:
 * "image" is conv2d's input x, "output" its output y (or dy). */
typedef struct conv_geometry {
    int64_t batch, groups;
    int64_t image_channels, image_h, image_w;
    int64_t filters, out_h, out_w;
    int kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;
    /* derived */
    int64_t channels_per_group, filters_per_group;
    int64_t patch;   /* rows of col: channels_per_group * kernel_h * kernel_w */
    int64_t pixels;  /* columns of col: out_h * out_w */
    bool pointwise;  /* 1x1, stride 1, no padding: col is the image itself */
} conv_geometry;

static conv_geometry geometry_of(const keel_node *node)
{
    const keel_conv_attrs *a = &node->attrs.conv;
    const int64_t *image = node->inputs[0]->shape, *output = node->shape;
    switch (node->op) {
    case KEEL_OP_CONV2D_BWD_DATA:
    case KEEL_OP_CONV_TRANSPOSE2D:
        image = node->shape;
        output = node->inputs[0]->shape;
        break;
    case KEEL_OP_CONV2D_BWD_WEIGHT:
        output = node->inputs[1]->shape;
        break;
    default:
        break;
    }
    conv_geometry geo = {
        .batch = image[0], .groups = a->groups,
        .image_channels = image[1], .image_h = image[2], .image_w = image[3],
        .filters = output[1], .out_h = output[2], .out_w = output[3],
        .kernel_h = a->kernel_h, .kernel_w = a->kernel_w, .stride_h = a->stride_h, .stride_w = a->stride_w,
        .pad_top = a->pad_top, .pad_left = a->pad_left, .dilation_h = a->dilation_h, .dilation_w = a->dilation_w,
    };
    geo.channels_per_group = geo.image_channels / geo.groups;
    geo.filters_per_group = geo.filters / geo.groups;
    geo.patch = geo.channels_per_group * geo.kernel_h * geo.kernel_w;
    geo.pixels = geo.out_h * geo.out_w;
    geo.pointwise = geo.kernel_h == 1 && geo.kernel_w == 1 && geo.stride_h == 1 && geo.stride_w == 1 &&
                    a->pad_top == 0 && a->pad_bottom == 0 && a->pad_left == 0 && a->pad_right == 0 &&
                    geo.out_h == geo.image_h && geo.out_w == geo.image_w;
    return geo;
}

/* The outputs o in [0, count) whose input o*stride + shift lies in [0, size):
 * [*begin, *end), so the loops below need no bounds test per element. */
static void inside_range(int64_t size, int64_t count, int stride, int64_t shift, int64_t *begin, int64_t *end)
{
    int64_t lo = shift >= 0 ? 0 : (-shift + stride - 1) / stride;
    int64_t hi = size - shift <= 0 ? 0 : (size - shift + stride - 1) / stride;
    *begin = lo < count ? lo : count;
    *end = hi < count ? hi : count;
    if (*end < *begin)
        *end = *begin;
}

/* col[(c*kh + i)*kw + j][p*Q + q] = image[c][p*sh - pt + i*dh][q*sw - pl + j*dw], 0 outside. */
static void im2col(const conv_geometry *geo, const float *image, float *col)
{
    const int64_t H = geo->image_h, W = geo->image_w, P = geo->out_h, Q = geo->out_w;
    for (int64_t row = 0; row < geo->patch; row++) {
        int64_t c = row / ((int64_t)geo->kernel_h * geo->kernel_w);
        int64_t i = (row / geo->kernel_w) % geo->kernel_h, j = row % geo->kernel_w;
        int64_t shift_h = i * geo->dilation_h - geo->pad_top, shift_w = j * geo->dilation_w - geo->pad_left;
        int64_t p_begin, p_end, q_begin, q_end;
        inside_range(H, P, geo->stride_h, shift_h, &p_begin, &p_end);
        inside_range(W, Q, geo->stride_w, shift_w, &q_begin, &q_end);
        float *dst = col + row * geo->pixels;
        memset(dst, 0, (size_t)(p_begin * Q) * sizeof *dst);
        for (int64_t p = p_begin; p < p_end; p++) {
            const float *src = image + (c * H + p * geo->stride_h + shift_h) * W + shift_w;
            float *line = dst + p * Q;
            memset(line, 0, (size_t)q_begin * sizeof *line);
            if (geo->stride_w == 1)
                memcpy(line + q_begin, src + q_begin, (size_t)(q_end - q_begin) * sizeof *line);
            else
                for (int64_t q = q_begin; q < q_end; q++)
                    line[q] = src[q * geo->stride_w];
            memset(line + q_end, 0, (size_t)(Q - q_end) * sizeof *line);
        }
        memset(dst + p_end * Q, 0, (size_t)((P - p_end) * Q) * sizeof *dst);
    }
}

/* The adjoint of im2col: adds every col entry onto the image pixel it came from. */
static void col2im_add(const conv_geometry *geo, const float *col, float *image)
{
    const int64_t H = geo->image_h, W = geo->image_w, Q = geo->out_w;
    for (int64_t row = 0; row < geo->patch; row++) {
        int64_t c = row / ((int64_t)geo->kernel_h * geo->kernel_w);
        int64_t i = (row / geo->kernel_w) % geo->kernel_h, j = row % geo->kernel_w;
        int64_t shift_h = i * geo->dilation_h - geo->pad_top, shift_w = j * geo->dilation_w - geo->pad_left;
        int64_t p_begin, p_end, q_begin, q_end;
        inside_range(H, geo->out_h, geo->stride_h, shift_h, &p_begin, &p_end);
        inside_range(W, Q, geo->stride_w, shift_w, &q_begin, &q_end);
        const float *src = col + row * geo->pixels;
        for (int64_t p = p_begin; p < p_end; p++) {
            float *dst = image + (c * H + p * geo->stride_h + shift_h) * W + shift_w;
            const float *line = src + p * Q;
            for (int64_t q = q_begin; q < q_end; q++)
                dst[q * geo->stride_w] += line[q];
        }
    }
}

/* y[n, c, ...] += bias[c] */
static void add_bias(float *y, const float *bias, int64_t batch, int64_t channels, int64_t inner)
{
    for (int64_t nc = 0; nc < batch * channels; nc++) {
        float b = bias[nc % channels];
        float *plane = y + nc * inner;
        for (int64_t i = 0; i < inner; i++)
            plane[i] += b;
    }
}

static const float *bias_input(const keel_launch *l)
{
    return (l->node->attrs.conv.has_bias && l->node->n_inputs > 2) ? l->in[2] : NULL;
}

keel_status keel_cpu_conv2d_prepare(keel_device *d, const keel_node *node, int64_t *workspace, void **algo)
{
    (void)d;
    *algo = NULL;
    *workspace = 0;
    conv_geometry geo = geometry_of(node);
    /* OpenBLAS takes int sizes and leading dimensions. */
    if (geo.patch * geo.pixels > INT_MAX || geo.filters * geo.pixels > INT_MAX ||
        geo.image_channels * geo.image_h * geo.image_w > INT_MAX)
        return keel_fail(KEEL_ERR_UNSUPPORTED,
                         "%s: one sample's convolution matrices exceed 2^31 elements (patch %lld x pixels %lld); "
                         "use smaller images",
                         node->name, (long long)geo.patch, (long long)geo.pixels);
    if (!geo.pointwise)
        *workspace = geo.patch * geo.pixels * (int64_t)sizeof(float);
    return KEEL_OK;
}

keel_status keel_cpu_conv2d(const keel_launch *l)
{
    const conv_geometry geo = geometry_of(l->node);
    const float *x = l->in[0], *w = l->in[1], *bias = bias_input(l);
    float *y = l->out;
    const int64_t image_group = geo.channels_per_group * geo.image_h * geo.image_w;
    const int64_t output_group = geo.filters_per_group * geo.pixels;
    for (int64_t n = 0; n < geo.batch; n++) {
        for (int64_t grp = 0; grp < geo.groups; grp++) {
            const float *image = x + (n * geo.groups + grp) * image_group;
            const float *col = image;
            if (!geo.pointwise) {
                im2col(&geo, image, l->workspace);
                col = l->workspace;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)geo.filters_per_group, (int)geo.pixels,
                        (int)geo.patch, 1.0f, w + grp * geo.filters_per_group * geo.patch, (int)geo.patch, col,
                        (int)geo.pixels, 0.0f, y + (n * geo.groups + grp) * output_group, (int)geo.pixels);
        }
    }
    if (bias)
        add_bias(y, bias, geo.batch, geo.filters, geo.pixels);
    return KEEL_OK;
}

/* Also CONV_TRANSPOSE2D: input 0 is conv2d's output side, the node's output
 * its image side, and input 2 (transpose only) a bias over the image channels. */
keel_status keel_cpu_conv2d_bwd_data(const keel_launch *l)
{
    const conv_geometry geo = geometry_of(l->node);
    const float *dy = l->in[0], *w = l->in[1], *bias = bias_input(l);
    float *dx = l->out;
    const int64_t image_group = geo.channels_per_group * geo.image_h * geo.image_w;
    const int64_t output_group = geo.filters_per_group * geo.pixels;
    for (int64_t n = 0; n < geo.batch; n++) {
        for (int64_t grp = 0; grp < geo.groups; grp++) {
            float *image = dx + (n * geo.groups + grp) * image_group;
            float *col = geo.pointwise ? image : l->workspace;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)geo.patch, (int)geo.pixels,
                        (int)geo.filters_per_group, 1.0f, w + grp * geo.filters_per_group * geo.patch,
                        (int)geo.patch, dy + (n * geo.groups + grp) * output_group, (int)geo.pixels, 0.0f, col,
                        (int)geo.pixels);
            if (!geo.pointwise) {
                memset(image, 0, (size_t)image_group * sizeof *image);
                col2im_add(&geo, col, image);
            }
        }
    }
    if (bias)
        add_bias(dx, bias, geo.batch, geo.image_channels, geo.image_h * geo.image_w);
    return KEEL_OK;
}

/* Input 0 is conv2d's image side, input 1 its output side; the output is
 * {filters, channels_per_group, kh, kw}. Samples are summed in order. */
keel_status keel_cpu_conv2d_bwd_weight(const keel_launch *l)
{
    const conv_geometry geo = geometry_of(l->node);
    const float *x = l->in[0], *dy = l->in[1];
    float *dw = l->out;
    const int64_t image_group = geo.channels_per_group * geo.image_h * geo.image_w;
    const int64_t output_group = geo.filters_per_group * geo.pixels;
    for (int64_t n = 0; n < geo.batch; n++) {
        for (int64_t grp = 0; grp < geo.groups; grp++) {
            const float *image = x + (n * geo.groups + grp) * image_group;
            const float *col = image;
            if (!geo.pointwise) {
                im2col(&geo, image, l->workspace);
                col = l->workspace;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)geo.filters_per_group, (int)geo.patch,
                        (int)geo.pixels, 1.0f, dy + (n * geo.groups + grp) * output_group, (int)geo.pixels, col,
                        (int)geo.pixels, n == 0 ? 0.0f : 1.0f, dw + grp * geo.filters_per_group * geo.patch,
                        (int)geo.patch);
        }
    }
    return KEEL_OK;
}

/* db[c] = sum of dy[n, c, ...] over every axis but 1, for any ndim >= 2;
 * summed in float64 in a fixed order. */
keel_status keel_cpu_bias_grad(const keel_launch *l)
{
    const keel_node *dy_node = l->node->inputs[0];
    const int64_t batch = dy_node->shape[0], channels = dy_node->shape[1];
    int64_t inner = 1;
    for (int d = 2; d < dy_node->ndim; d++)
        inner *= dy_node->shape[d];
    const float *dy = l->in[0];
    float *db = l->out;
    /* Below this many elements an OpenMP region costs more than it saves. */
    const bool parallel = batch * channels * inner >= (1 << 15);
#pragma omp parallel for num_threads(keel_cpu_threads(l->device)) schedule(static) if (parallel)
    for (int64_t c = 0; c < channels; c++) {
        double sum = 0.0;
        for (int64_t n = 0; n < batch; n++) {
            const float *plane = dy + (n * channels + c) * inner;
            for (int64_t i = 0; i < inner; i++)
                sum += plane[i];
        }
        db[c] = (float)sum;
    }
    return KEEL_OK;
}
