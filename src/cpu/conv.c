/* Convolution on the CPU: im2col + sgemm, the reference path.
 *
 * For one sample and one group, im2col unrolls the image patches into a
 * matrix col {patch, pixels} (patch = channels_per_group*kh*kw rows, one
 * column per output pixel), so that
 *   forward:        y_g  {filters_g, pixels} = w_g {filters_g, patch} . col
 *   data gradient:  col = w_g^T . dy_g, folded back onto the image by col2im
 *   weight gradient: dw_g = sum over samples of dy_g . col^T
 * A 1x1 convolution with stride 1 and no padding needs no unrolling: the
 * image already is col.
 *
 * Threads. When OpenBLAS is its OpenMP build it shares our OpenMP pool, and
 * an sgemm called inside a parallel region runs on the calling thread. Then
 * the forward and the data gradient run one sample (and group) per thread,
 * each with its own col in the workspace, as oneDNN's gemm convolution does:
 * small images make small GEMMs that one thread runs best. With OpenBLAS's
 * pthread build its workers keep spinning after each call and an OpenMP
 * region squeezed between two sgemm calls fights them for the cores (on two
 * cores it made the whole layer 2-4x slower), so everything but the sgemm
 * stays on the calling thread and each sgemm runs on OpenBLAS's threads.
 *
 * The weight gradient sums over the batch. It unrolls several samples side by
 * side, col {patch, S*pixels} against dy copied to {filters_g, S*pixels}, so
 * that each sgemm has a deep inner dimension and dw is read and written once
 * per S samples rather than per sample. Its parallelism is a fixed number of
 * column tiles of dw, each a single-threaded sgemm (OpenBLAS splits a
 * threaded sgemm differently for different thread counts, and so rounds
 * differently). S and the tiles depend on the shapes only, so with OpenBLAS's
 * OpenMP build the weight gradient has the same bits for every thread count.
 * The forward and the data gradient sum nothing across samples; run one
 * sample per thread, their bits do not depend on the thread count either. */
#include <limits.h>
#include <omp.h>
#include <string.h>
#include <cblas.h>
#include "cpu/cpu.h"

/* The weight gradient unrolls at least enough samples for this many pixels
 * per sgemm, and more while col stays under WEIGHT_COL_FLOATS. */
enum { WEIGHT_GEMM_DEPTH = 1024, WEIGHT_COL_FLOATS = 2 << 20 };
/* dw splits into at most MAX_TILES column tiles of at least TILE_COLUMNS
 * columns, one per TILE_WORK multiply-adds of the whole gradient. */
enum { MAX_TILES = 8, TILE_COLUMNS = 16, TILE_WORK = 1 << 22 };
/* Below this many floats an OpenMP region costs more than it saves. */
enum { PARALLEL_MIN_FLOATS = 1 << 15 };

/* OpenBLAS's threading model (0 none, 1 pthreads, 2 OpenMP); absent from
 * reference CBLAS, whose sgemm is single-threaded. */
extern int openblas_get_parallel(void) __attribute__((weak));

/* Whether our OpenMP regions and sgemm calls can share the cores: OpenBLAS's
 * OpenMP or sequential build, or a single-threaded reference CBLAS. */
static bool blas_shares_openmp_pool(void)
{
    return !openblas_get_parallel || openblas_get_parallel() != 1;
}

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

/* Row `row` = (c*kh + i)*kw + j of col:
 * dst[p*Q + q] = image[c][p*sh - pt + i*dh][q*sw - pl + j*dw], 0 outside. */
static void im2col_row(const conv_geometry *geo, const float *image, int64_t row, float *dst)
{
    const int64_t H = geo->image_h, W = geo->image_w, P = geo->out_h, Q = geo->out_w;
    int64_t c = row / ((int64_t)geo->kernel_h * geo->kernel_w);
    int64_t i = (row / geo->kernel_w) % geo->kernel_h, j = row % geo->kernel_w;
    int64_t shift_h = i * geo->dilation_h - geo->pad_top, shift_w = j * geo->dilation_w - geo->pad_left;
    int64_t p_begin, p_end, q_begin, q_end;
    inside_range(H, P, geo->stride_h, shift_h, &p_begin, &p_end);
    inside_range(W, Q, geo->stride_w, shift_w, &q_begin, &q_end);
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

/* The whole col of one image, rows `col_stride` floats apart. Rows are
 * independent, so they spread over `threads` (1: the calling thread). */
static void im2col(const conv_geometry *geo, const float *image, float *col, int64_t col_stride, int threads)
{
    const bool parallel = threads > 1 && geo->patch * geo->pixels >= PARALLEL_MIN_FLOATS;
#pragma omp parallel for num_threads(threads) schedule(static) if (parallel)
    for (int64_t row = 0; row < geo->patch; row++)
        im2col_row(geo, image, row, col + row * col_stride);
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
static void add_bias(float *y, const float *bias, int64_t batch, int64_t channels, int64_t inner, int threads)
{
    const bool parallel = threads > 1 && batch * channels * inner >= PARALLEL_MIN_FLOATS;
#pragma omp parallel for num_threads(threads) schedule(static) if (parallel)
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

/* How a node's kernel uses the device's threads and its workspace; prepare
 * and the kernels derive it the same way. */
typedef struct conv_schedule {
    int threads;              /* OpenMP threads around the sgemm calls (1: none) */
    bool per_sample;          /* forward, data gradient: one (sample, group) per thread */
    int64_t samples_per_gemm; /* weight gradient: S samples side by side */
    int tiles;                /* weight gradient: column tiles of dw */
    int64_t col_floats;       /* one col buffer */
    int64_t workspace_floats;
} conv_schedule;

static conv_schedule schedule_of(const conv_geometry *geo, keel_op op, int device_threads)
{
    conv_schedule s = {.threads = blas_shares_openmp_pool() ? device_threads : 1, .samples_per_gemm = 1};
    if (op == KEEL_OP_CONV2D_BWD_WEIGHT) {
        int64_t deep = (WEIGHT_GEMM_DEPTH + geo->pixels - 1) / geo->pixels;
        int64_t fits = WEIGHT_COL_FLOATS / (geo->patch * geo->pixels);
        int64_t S = deep > fits ? deep : fits;
        s.samples_per_gemm = S < geo->batch ? S : geo->batch;
        int64_t work = geo->filters_per_group * geo->patch * geo->batch * geo->pixels / TILE_WORK;
        int64_t widest = geo->patch / TILE_COLUMNS;
        int64_t tiles = work < widest ? work : widest;
        s.tiles = tiles < 1 ? 1 : tiles > MAX_TILES ? MAX_TILES : (int)tiles;
        if (s.samples_per_gemm > 1) {
            s.col_floats = geo->patch * s.samples_per_gemm * geo->pixels;
            s.workspace_floats = s.col_floats + geo->filters_per_group * s.samples_per_gemm * geo->pixels;
        } else {
            s.col_floats = geo->pointwise ? 0 : geo->patch * geo->pixels;
            s.workspace_floats = s.col_floats;
        }
        return s;
    }
    s.per_sample = s.threads > 1 && geo->batch * geo->groups >= s.threads;
    s.col_floats = geo->pointwise ? 0 : geo->patch * geo->pixels;
    s.workspace_floats = s.col_floats * (s.per_sample ? s.threads : 1);
    return s;
}

keel_status keel_cpu_conv2d_prepare(keel_device *d, const keel_node *node, int64_t *workspace, void **algo)
{
    *algo = NULL;
    *workspace = 0;
    conv_geometry geo = geometry_of(node);
    conv_schedule s = schedule_of(&geo, node->op, keel_cpu_threads(d));
    /* OpenBLAS takes int sizes and leading dimensions. */
    if (geo.patch * geo.pixels > INT_MAX || geo.filters * geo.pixels > INT_MAX ||
        geo.image_channels * geo.image_h * geo.image_w > INT_MAX ||
        s.samples_per_gemm * geo.pixels > INT_MAX)
        return keel_fail(KEEL_ERR_UNSUPPORTED,
                         "%s: one sample's convolution matrices exceed 2^31 elements (patch %lld x pixels %lld); "
                         "use smaller images",
                         node->name, (long long)geo.patch, (long long)geo.pixels);
    *workspace = s.workspace_floats * (int64_t)sizeof(float);
    return KEEL_OK;
}

/* y of one (sample, group) pair: job = sample * groups + group. */
static void forward_job(const conv_geometry *geo, const float *x, const float *w, float *y, int64_t job,
                        float *col, int im2col_threads)
{
    const int64_t grp = job % geo->groups;
    const float *image = x + job * geo->channels_per_group * geo->image_h * geo->image_w;
    if (!geo->pointwise) {
        im2col(geo, image, col, geo->pixels, im2col_threads);
        image = col;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)geo->filters_per_group, (int)geo->pixels,
                (int)geo->patch, 1.0f, w + grp * geo->filters_per_group * geo->patch, (int)geo->patch, image,
                (int)geo->pixels, 0.0f, y + job * geo->filters_per_group * geo->pixels, (int)geo->pixels);
}

keel_status keel_cpu_conv2d(const keel_launch *l)
{
    const conv_geometry geo = geometry_of(l->node);
    const conv_schedule s = schedule_of(&geo, l->node->op, keel_cpu_threads(l->device));
    const float *x = l->in[0], *w = l->in[1], *bias = bias_input(l);
    float *y = l->out, *workspace = l->workspace;
    const int64_t jobs = geo.batch * geo.groups;
    if (s.per_sample) {
#pragma omp parallel for num_threads(s.threads) schedule(static)
        for (int64_t job = 0; job < jobs; job++)
            forward_job(&geo, x, w, y, job, workspace + omp_get_thread_num() * s.col_floats, 1);
    } else {
        const int caller_threads = omp_get_max_threads();
        omp_set_num_threads(keel_cpu_threads(l->device));   /* OpenBLAS's OpenMP build sizes itself by this */
        for (int64_t job = 0; job < jobs; job++)
            forward_job(&geo, x, w, y, job, workspace, s.threads);
        omp_set_num_threads(caller_threads);
    }
    if (bias)
        add_bias(y, bias, geo.batch, geo.filters, geo.pixels, s.threads);
    return KEEL_OK;
}

/* dx of one (sample, group) pair. */
static void bwd_data_job(const conv_geometry *geo, const float *dy, const float *w, float *dx, int64_t job,
                         float *col)
{
    const int64_t grp = job % geo->groups, image_group = geo->channels_per_group * geo->image_h * geo->image_w;
    float *image = dx + job * image_group;
    if (geo->pointwise)
        col = image;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)geo->patch, (int)geo->pixels,
                (int)geo->filters_per_group, 1.0f, w + grp * geo->filters_per_group * geo->patch, (int)geo->patch,
                dy + job * geo->filters_per_group * geo->pixels, (int)geo->pixels, 0.0f, col, (int)geo->pixels);
    if (!geo->pointwise) {
        memset(image, 0, (size_t)image_group * sizeof *image);
        col2im_add(geo, col, image);
    }
}

/* Also CONV_TRANSPOSE2D: input 0 is conv2d's output side, the node's output
 * its image side, and input 2 (transpose only) a bias over the image channels. */
keel_status keel_cpu_conv2d_bwd_data(const keel_launch *l)
{
    const conv_geometry geo = geometry_of(l->node);
    const conv_schedule s = schedule_of(&geo, l->node->op, keel_cpu_threads(l->device));
    const float *dy = l->in[0], *w = l->in[1], *bias = bias_input(l);
    float *dx = l->out, *workspace = l->workspace;
    const int64_t jobs = geo.batch * geo.groups;
    if (s.per_sample) {
#pragma omp parallel for num_threads(s.threads) schedule(static)
        for (int64_t job = 0; job < jobs; job++)
            bwd_data_job(&geo, dy, w, dx, job, workspace + omp_get_thread_num() * s.col_floats);
    } else {
        const int caller_threads = omp_get_max_threads();
        omp_set_num_threads(keel_cpu_threads(l->device));
        for (int64_t job = 0; job < jobs; job++)
            bwd_data_job(&geo, dy, w, dx, job, workspace);
        omp_set_num_threads(caller_threads);
    }
    if (bias)
        add_bias(dx, bias, geo.batch, geo.image_channels, geo.image_h * geo.image_w, s.threads);
    return KEEL_OK;
}

/* col {patch, count*pixels} and dy_side {filters_per_group, count*pixels},
 * rows `stride` floats apart, for group `grp` of samples [first, first+count). */
static void unroll_samples(const conv_geometry *geo, const float *x, const float *dy, int64_t grp, int64_t first,
                           int64_t count, int64_t stride, float *col, float *dy_side, int threads)
{
    const int64_t image_group = geo->channels_per_group * geo->image_h * geo->image_w;
    const int64_t output_group = geo->filters_per_group * geo->pixels;
    const int64_t rows = count * geo->patch, lines = count * geo->filters_per_group;
    const bool parallel = threads > 1 && rows * geo->pixels >= PARALLEL_MIN_FLOATS;
#pragma omp parallel num_threads(threads) if (parallel)
    {
#pragma omp for schedule(static)
        for (int64_t k = 0; k < rows; k++) {
            int64_t sample = k / geo->patch, row = k % geo->patch;
            const float *image = x + ((first + sample) * geo->groups + grp) * image_group;
            im2col_row(geo, image, row, col + row * stride + sample * geo->pixels);
        }
#pragma omp for schedule(static)
        for (int64_t k = 0; k < lines; k++) {
            int64_t sample = k / geo->filters_per_group, f = k % geo->filters_per_group;
            memcpy(dy_side + f * stride + sample * geo->pixels,
                   dy + ((first + sample) * geo->groups + grp) * output_group + f * geo->pixels,
                   (size_t)geo->pixels * sizeof *dy_side);
        }
    }
}

/* dw_g {filters_g, patch} (+)= a {filters_g, depth} . b {patch, depth}^T, as
 * s->tiles column tiles of dw, each one single-threaded sgemm. */
static void weight_gemm(const conv_geometry *geo, const conv_schedule *s, const float *a, const float *b, int ld,
                        int64_t depth, float beta, float *dw_g)
{
    const int64_t columns = geo->patch, tiles = s->tiles;
#pragma omp parallel for num_threads(s->threads) schedule(static) if (s->threads > 1 && tiles > 1)
    for (int64_t t = 0; t < tiles; t++) {
        int64_t first = columns * t / tiles, last = columns * (t + 1) / tiles;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)geo->filters_per_group, (int)(last - first),
                    (int)depth, 1.0f, a, ld, b + first * ld, ld, beta, dw_g + first, (int)columns);
    }
}

/* Input 0 is conv2d's image side, input 1 its output side; the output is
 * {filters, channels_per_group, kh, kw}. Samples are summed in order, S at
 * a time (see the top of the file). */
keel_status keel_cpu_conv2d_bwd_weight(const keel_launch *l)
{
    const conv_geometry geo = geometry_of(l->node);
    const conv_schedule s = schedule_of(&geo, l->node->op, keel_cpu_threads(l->device));
    const float *x = l->in[0], *dy = l->in[1];
    float *dw = l->out, *workspace = l->workspace;
    const int64_t image_group = geo.channels_per_group * geo.image_h * geo.image_w;
    const int64_t output_group = geo.filters_per_group * geo.pixels;
    const int64_t S = s.samples_per_gemm, stride = S * geo.pixels;
    /* Every sgemm single-threaded, whether or not it runs in a parallel
     * region: OpenBLAS's OpenMP build sizes itself by this. */
    const int caller_threads = omp_get_max_threads();
    omp_set_num_threads(1);
    for (int64_t grp = 0; grp < geo.groups; grp++) {
        for (int64_t first = 0; first < geo.batch; first += S) {
            const int64_t count = geo.batch - first < S ? geo.batch - first : S;
            const float *a, *b;
            int ld;
            if (S > 1) {
                unroll_samples(&geo, x, dy, grp, first, count, stride, workspace, workspace + s.col_floats,
                               s.threads);
                a = workspace + s.col_floats;
                b = workspace;
                ld = (int)stride;
            } else {
                const int64_t job = first * geo.groups + grp;
                a = dy + job * output_group;
                b = x + job * image_group;
                if (!geo.pointwise) {
                    im2col(&geo, b, workspace, geo.pixels, s.threads);
                    b = workspace;
                }
                ld = (int)geo.pixels;
            }
            weight_gemm(&geo, &s, a, b, ld, count * geo.pixels, first == 0 ? 0.0f : 1.0f,
                        dw + grp * geo.filters_per_group * geo.patch);
        }
    }
    omp_set_num_threads(caller_threads);
    return KEEL_OK;
}

/* The float64 sum of v[0..count) in a fixed order: LANES running sums side
 * by side (so the loop vectorises instead of waiting on one addition chain),
 * added together at the end. */
enum { LANES = 8 };
static double sum_floats(const float *v, int64_t count)
{
    double lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= count; i += LANES)
        for (int k = 0; k < LANES; k++)
            lane[k] += v[i + k];
    double sum = 0.0;
    for (; i < count; i++)
        sum += v[i];
    for (int k = 0; k < LANES; k++)
        sum += lane[k];
    return sum;
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
    const bool parallel = batch * channels * inner >= PARALLEL_MIN_FLOATS;
#pragma omp parallel for num_threads(keel_cpu_threads(l->device)) schedule(static) if (parallel)
    for (int64_t c = 0; c < channels; c++) {
        double sum = 0.0;
        for (int64_t n = 0; n < batch; n++)
            sum += sum_floats(dy + (n * channels + c) * inner, inner);
        db[c] = (float)sum;
    }
    return KEEL_OK;
}
