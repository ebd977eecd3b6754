/* Pooling: max (with the argmax the backward needs) and average, forward and
 * backward; global average pooling is average pooling with the whole plane
 * as window. The window rules are the CPU's (src/cpu/pool.c): a window
 * covers input rows [lo, hi) clipped to the image, and average pooling with
 * padding divides by the window clipped only to the padded image (PyTorch).
 * The backward passes gather: one thread per input element sums the outputs
 * whose window holds it, in a fixed order, so no atomics are needed. */
#include "common.cuh"

struct span {
    int64_t lo, hi, padded;
};

__device__ __forceinline__ span span_of(int64_t o, int kernel, int stride, int pad, int64_t in)
{
    int64_t start = o * stride - pad;
    int64_t end = start + kernel;
    if (end > in + pad)
        end = in + pad;
    span s = {start < 0 ? 0 : start, end < in ? end : in, end - start};
    return s;
}

__device__ __forceinline__ float avg_divisor(span sh, span sw, bool exclude_pad)
{
    if (exclude_pad)
        return (float)((sh.hi - sh.lo) * (sw.hi - sw.lo));
    return (float)(sh.padded * sw.padded);
}

/* The outputs along one axis whose window can hold input position `at`:
 * [first, last], clipped to the output. */
__device__ __forceinline__ void reach(int64_t at, int kernel, int stride, int pad, int64_t out, int64_t *first,
                                      int64_t *last)
{
    int64_t padded = at + pad;
    int64_t lo = padded < kernel ? 0 : (padded - kernel) / stride + 1;
    int64_t hi = padded / stride;
    *first = lo;
    *last = hi < out - 1 ? hi : out - 1;
}

__global__ void max_pool_kernel(keel_k_pool_params p, const float *x, float *y, int32_t *argmax)
{
    const int64_t total = p.planes * p.out_h * p.out_w;
    KEEL_GRID_STRIDE(o, total)
    {
        int64_t ow = o % p.out_w, oh = (o / p.out_w) % p.out_h, plane = o / (p.out_w * p.out_h);
        const float *xp = x + plane * p.in_h * p.in_w;
        span sh = span_of(oh, p.kernel_h, p.stride_h, p.pad_h, p.in_h);
        span sw = span_of(ow, p.kernel_w, p.stride_w, p.pad_w, p.in_w);
        /* The first maximum wins and a NaN wins at once, as on the CPU. */
        float best = -INFINITY;
        int64_t best_at = sh.lo * p.in_w + sw.lo;
        bool found_nan = false;
        for (int64_t h = sh.lo; h < sh.hi && !found_nan; h++)
            for (int64_t w = sw.lo; w < sw.hi; w++) {
                float v = xp[h * p.in_w + w];
                if (isnan(v)) {
                    best_at = h * p.in_w + w;
                    found_nan = true;
                    break;
                }
                if (v > best) {
                    best = v;
                    best_at = h * p.in_w + w;
                }
            }
        y[o] = xp[best_at];
        argmax[o] = (int32_t)best_at;
    }
}

__global__ void max_pool_bwd_kernel(keel_k_pool_params p, const float *dy, const int32_t *argmax, float *dx)
{
    const int64_t total = p.planes * p.in_h * p.in_w;
    KEEL_GRID_STRIDE(i, total)
    {
        int64_t w = i % p.in_w, h = (i / p.in_w) % p.in_h, plane = i / (p.in_w * p.in_h);
        int64_t oh0, oh1, ow0, ow1;
        reach(h, p.kernel_h, p.stride_h, p.pad_h, p.out_h, &oh0, &oh1);
        reach(w, p.kernel_w, p.stride_w, p.pad_w, p.out_w, &ow0, &ow1);
        const int64_t base = plane * p.out_h * p.out_w;
        const int32_t here = (int32_t)(h * p.in_w + w);
        float sum = 0.0f;
        for (int64_t oh = oh0; oh <= oh1; oh++)
            for (int64_t ow = ow0; ow <= ow1; ow++) {
                int64_t o = base + oh * p.out_w + ow;
                if (argmax[o] == here)
                    sum += dy[o];
            }
        dx[i] = sum;
    }
}

__global__ void avg_pool_kernel(keel_k_pool_params p, const float *x, float *y)
{
    const int64_t total = p.planes * p.out_h * p.out_w;
    KEEL_GRID_STRIDE(o, total)
    {
        int64_t ow = o % p.out_w, oh = (o / p.out_w) % p.out_h, plane = o / (p.out_w * p.out_h);
        const float *xp = x + plane * p.in_h * p.in_w;
        span sh = span_of(oh, p.kernel_h, p.stride_h, p.pad_h, p.in_h);
        span sw = span_of(ow, p.kernel_w, p.stride_w, p.pad_w, p.in_w);
        float sum = 0.0f;
        for (int64_t h = sh.lo; h < sh.hi; h++)
            for (int64_t w = sw.lo; w < sw.hi; w++)
                sum += xp[h * p.in_w + w];
        y[o] = sum / avg_divisor(sh, sw, p.exclude_pad);
    }
}

/* Global average pooling: one block per plane, a fixed-order tree sum. */
__global__ void global_avg_pool_kernel(int64_t plane_size, const float *x, float *y)
{
    __shared__ double scratch[KEEL_THREADS];
    const float *xp = x + (int64_t)blockIdx.x * plane_size;
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < plane_size; i += KEEL_THREADS)
        sum += xp[i];
    sum = keel_block_sum(sum, scratch);
    if (threadIdx.x == 0)
        y[blockIdx.x] = (float)(sum / (double)plane_size);
}

__global__ void avg_pool_bwd_kernel(keel_k_pool_params p, const float *dy, float *dx)
{
    const int64_t total = p.planes * p.in_h * p.in_w;
    KEEL_GRID_STRIDE(i, total)
    {
        int64_t w = i % p.in_w, h = (i / p.in_w) % p.in_h, plane = i / (p.in_w * p.in_h);
        int64_t oh0, oh1, ow0, ow1;
        reach(h, p.kernel_h, p.stride_h, p.pad_h, p.out_h, &oh0, &oh1);
        reach(w, p.kernel_w, p.stride_w, p.pad_w, p.out_w, &ow0, &ow1);
        const int64_t base = plane * p.out_h * p.out_w;
        float sum = 0.0f;
        for (int64_t oh = oh0; oh <= oh1; oh++) {
            span sh = span_of(oh, p.kernel_h, p.stride_h, p.pad_h, p.in_h);
            if (h < sh.lo || h >= sh.hi)
                continue;
            for (int64_t ow = ow0; ow <= ow1; ow++) {
                span sw = span_of(ow, p.kernel_w, p.stride_w, p.pad_w, p.in_w);
                if (w < sw.lo || w >= sw.hi)
                    continue;
                sum += dy[base + oh * p.out_w + ow] / avg_divisor(sh, sw, p.exclude_pad);
            }
        }
        dx[i] = sum;
    }
}

static bool is_global(const keel_k_pool_params *p)
{
    return p->out_h == 1 && p->out_w == 1 && p->kernel_h == p->in_h && p->kernel_w == p->in_w && p->pad_h == 0 &&
           p->pad_w == 0;
}

extern "C" cudaError_t keel_k_max_pool(cudaStream_t stream, const keel_k_pool_params *p, const float *x, float *y,
                                       int32_t *argmax)
{
    int64_t total = p->planes * p->out_h * p->out_w;
    if (total <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(max_pool_kernel, keel_blocks_for(total), KEEL_THREADS, stream)(*p, x, y, argmax);
    return keel_launch_status();
}

extern "C" cudaError_t keel_k_max_pool_bwd(cudaStream_t stream, const keel_k_pool_params *p, const float *dy,
                                           const int32_t *argmax, float *dx)
{
    int64_t total = p->planes * p->in_h * p->in_w;
    if (total <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(max_pool_bwd_kernel, keel_blocks_for(total), KEEL_THREADS, stream)(*p, dy, argmax, dx);
    return keel_launch_status();
}

extern "C" cudaError_t keel_k_avg_pool(cudaStream_t stream, const keel_k_pool_params *p, const float *x, float *y)
{
    int64_t total = p->planes * p->out_h * p->out_w;
    if (total <= 0)
        return cudaSuccess;
    if (is_global(p) && p->planes <= 0x7fffffff)
        KEEL_LAUNCH(global_avg_pool_kernel, (unsigned)p->planes, KEEL_THREADS, stream)(p->in_h * p->in_w, x, y);
    else
        KEEL_LAUNCH(avg_pool_kernel, keel_blocks_for(total), KEEL_THREADS, stream)(*p, x, y);
    return keel_launch_status();
}

extern "C" cudaError_t keel_k_avg_pool_bwd(cudaStream_t stream, const keel_k_pool_params *p, const float *dy, float *dx)
{
    int64_t total = p->planes * p->in_h * p->in_w;
    if (total <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(avg_pool_bwd_kernel, keel_blocks_for(total), KEEL_THREADS, stream)(*p, dy, dx);
    return keel_launch_status();
}
