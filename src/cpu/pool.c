/* Pooling kernels. Every loop runs over (n, c) planes, one plane per
 * iteration, so the backward scatters never race and sum in a fixed order. */
#include "cpu/cpu.h"

#include <math.h>
#include <string.h>

/* The sizes of one pooling: `in` is the pooled input, `out` the pooled output. */
typedef struct pool_geom {
    int64_t planes, in_h, in_w, out_h, out_w;
    keel_pool_attrs a;
} pool_geom;

static pool_geom pool_geom_of(const int64_t *in_shape, const int64_t *out_shape, keel_pool_attrs a)
{
    pool_geom p = {in_shape[0] * in_shape[1], in_shape[2], in_shape[3], out_shape[2], out_shape[3], a};
    return p;
}

/* One axis of a window: the input rows [lo, hi) it covers and the length it
 * has clipped only to the padded input, which is what average pooling divides
 * by when padding counts (PyTorch's rule, also in ceil mode). */
typedef struct pool_span {
    int64_t lo, hi, padded;
} pool_span;

static pool_span pool_span_of(int64_t o, int kernel, int stride, int pad, int64_t in)
{
    int64_t start = o * stride - pad;
    int64_t end = start + kernel;
    if (end > in + pad)
        end = in + pad;
    pool_span s = {start < 0 ? 0 : start, end < in ? end : in, end - start};
    return s;
}

static float avg_divisor(pool_span sh, pool_span sw, bool exclude_pad)
{
    if (exclude_pad)
        return (float)((sh.hi - sh.lo) * (sw.hi - sw.lo));
    return (float)(sh.padded * sw.padded);
}

/* The offset of the window's maximum in its plane. The first maximum wins
 * and a NaN wins at once, so NaNs propagate as in PyTorch. */
static int64_t window_argmax(const float *plane, int64_t in_w, pool_span sh, pool_span sw)
{
    float best = -INFINITY;
    int64_t best_at = sh.lo * in_w + sw.lo;
    for (int64_t h = sh.lo; h < sh.hi; h++)
        for (int64_t w = sw.lo; w < sw.hi; w++) {
            float v = plane[h * in_w + w];
            if (isnan(v))
                return h * in_w + w;
            if (v > best) {
                best = v;
                best_at = h * in_w + w;
            }
        }
    return best_at;
}

keel_status keel_cpu_max_pool2d(const keel_launch *l)
{
    const keel_node *node = l->node;
    pool_geom p = pool_geom_of(node->inputs[0]->shape, node->shape, node->attrs.pool);
    const float *x = l->in[0];
    float *y = l->out;
    int32_t *argmax = l->aux;
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t plane = 0; plane < p.planes; plane++) {
        const float *xp = x + plane * p.in_h * p.in_w;
        float *yp = y + plane * p.out_h * p.out_w;
        int32_t *ap = argmax + plane * p.out_h * p.out_w;
        for (int64_t oh = 0; oh < p.out_h; oh++) {
            pool_span sh = pool_span_of(oh, p.a.kernel_h, p.a.stride_h, p.a.pad_h, p.in_h);
            for (int64_t ow = 0; ow < p.out_w; ow++) {
                pool_span sw = pool_span_of(ow, p.a.kernel_w, p.a.stride_w, p.a.pad_w, p.in_w);
                int64_t at = window_argmax(xp, p.in_w, sh, sw);
                yp[oh * p.out_w + ow] = xp[at];
                ap[oh * p.out_w + ow] = (int32_t)at;
            }
        }
    }
    return KEEL_OK;
}

keel_status keel_cpu_max_pool2d_bwd(const keel_launch *l)
{
    const keel_node *node = l->node;
    pool_geom p = pool_geom_of(node->shape, node->inputs[0]->shape, node->attrs.pool);
    const float *dy = l->in[0];
    const int32_t *argmax = l->fwd_aux;
    float *dx = l->out;
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t plane = 0; plane < p.planes; plane++) {
        float *dxp = dx + plane * p.in_h * p.in_w;
        const float *dyp = dy + plane * p.out_h * p.out_w;
        const int32_t *ap = argmax + plane * p.out_h * p.out_w;
        memset(dxp, 0, (size_t)(p.in_h * p.in_w) * sizeof *dxp);
        for (int64_t o = 0; o < p.out_h * p.out_w; o++)
            dxp[ap[o]] += dyp[o];
    }
    return KEEL_OK;
}

/* Windows that tile the plane (kernel = stride, no padding), as LeNet-5's
 * 2x2 average pooling: no window is clipped and every input feeds at most
 * one output, so neither pass needs the per-window bookkeeping. */
static bool windows_tile(const pool_geom *p)
{
    return p->a.kernel_h == p->a.stride_h && p->a.kernel_w == p->a.stride_w && p->a.pad_h == 0 &&
           p->a.pad_w == 0 && p->out_h * p->a.kernel_h <= p->in_h && p->out_w * p->a.kernel_w <= p->in_w;
}

static void avg_pool_tiles(const pool_geom *p, const float *xp, float *yp)
{
    int kh = p->a.kernel_h, kw = p->a.kernel_w;
    float divisor = (float)(kh * kw);
    for (int64_t oh = 0; oh < p->out_h; oh++) {
        const float *rows = xp + oh * kh * p->in_w;
        for (int64_t ow = 0; ow < p->out_w; ow++) {
            const float *window = rows + ow * kw;
            float sum = 0.0f;
            for (int h = 0; h < kh; h++)
                for (int w = 0; w < kw; w++)
                    sum += window[h * p->in_w + w];
            yp[oh * p->out_w + ow] = sum / divisor;
        }
    }
}

static void avg_pool_tiles_bwd(const pool_geom *p, const float *dyp, float *dxp)
{
    int kh = p->a.kernel_h, kw = p->a.kernel_w;
    float divisor = (float)(kh * kw);
    if (p->out_h * kh != p->in_h || p->out_w * kw != p->in_w) /* rows or columns no window reads */
        memset(dxp, 0, (size_t)(p->in_h * p->in_w) * sizeof *dxp);
    for (int64_t oh = 0; oh < p->out_h; oh++) {
        float *rows = dxp + oh * kh * p->in_w;
        for (int64_t ow = 0; ow < p->out_w; ow++) {
            float share = dyp[oh * p->out_w + ow] / divisor;
            for (int h = 0; h < kh; h++)
                for (int w = 0; w < kw; w++)
                    rows[h * p->in_w + ow * kw + w] = share;
        }
    }
}

keel_status keel_cpu_avg_pool2d(const keel_launch *l)
{
    const keel_node *node = l->node;
    pool_geom p = pool_geom_of(node->inputs[0]->shape, node->shape, node->attrs.pool);
    const float *x = l->in[0];
    float *y = l->out;
    int threads = keel_cpu_threads(l->device);
    if (windows_tile(&p)) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t plane = 0; plane < p.planes; plane++)
            avg_pool_tiles(&p, x + plane * p.in_h * p.in_w, y + plane * p.out_h * p.out_w);
        return KEEL_OK;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t plane = 0; plane < p.planes; plane++) {
        const float *xp = x + plane * p.in_h * p.in_w;
        float *yp = y + plane * p.out_h * p.out_w;
        for (int64_t oh = 0; oh < p.out_h; oh++) {
            pool_span sh = pool_span_of(oh, p.a.kernel_h, p.a.stride_h, p.a.pad_h, p.in_h);
            for (int64_t ow = 0; ow < p.out_w; ow++) {
                pool_span sw = pool_span_of(ow, p.a.kernel_w, p.a.stride_w, p.a.pad_w, p.in_w);
                float sum = 0.0f;
                for (int64_t h = sh.lo; h < sh.hi; h++)
                    for (int64_t w = sw.lo; w < sw.hi; w++)
                        sum += xp[h * p.in_w + w];
                yp[oh * p.out_w + ow] = sum / avg_divisor(sh, sw, p.a.exclude_pad);
            }
        }
    }
    return KEEL_OK;
}

keel_status keel_cpu_avg_pool2d_bwd(const keel_launch *l)
{
    const keel_node *node = l->node;
    pool_geom p = pool_geom_of(node->shape, node->inputs[0]->shape, node->attrs.pool);
    const float *dy = l->in[0];
    float *dx = l->out;
    int threads = keel_cpu_threads(l->device);
    if (windows_tile(&p)) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t plane = 0; plane < p.planes; plane++)
            avg_pool_tiles_bwd(&p, dy + plane * p.out_h * p.out_w, dx + plane * p.in_h * p.in_w);
        return KEEL_OK;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t plane = 0; plane < p.planes; plane++) {
        float *dxp = dx + plane * p.in_h * p.in_w;
        const float *dyp = dy + plane * p.out_h * p.out_w;
        memset(dxp, 0, (size_t)(p.in_h * p.in_w) * sizeof *dxp);
        for (int64_t oh = 0; oh < p.out_h; oh++) {
            pool_span sh = pool_span_of(oh, p.a.kernel_h, p.a.stride_h, p.a.pad_h, p.in_h);
            for (int64_t ow = 0; ow < p.out_w; ow++) {
                pool_span sw = pool_span_of(ow, p.a.kernel_w, p.a.stride_w, p.a.pad_w, p.in_w);
                float share = dyp[oh * p.out_w + ow] / avg_divisor(sh, sw, p.a.exclude_pad);
                for (int64_t h = sh.lo; h < sh.hi; h++)
                    for (int64_t w = sw.lo; w < sw.hi; w++)
                        dxp[h * p.in_w + w] += share;
            }
        }
    }
    return KEEL_OK;
}
