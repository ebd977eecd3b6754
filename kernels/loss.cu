/* Softmax and the losses, with the formulas of src/cpu/loss.c. A row of
 * softmax belongs to one warp; loss means are two-stage sums in float64
 * (fixed blocks, then one block over their partials), so a loss has the
 * same bits on every run. */
#include "common.cuh"

#define WARP 32
#define WARPS_PER_BLOCK (KEEL_THREADS / WARP)

__device__ __forceinline__ float warp_max(float v)
{
    for (int offset = WARP / 2; offset > 0; offset /= 2)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

__device__ __forceinline__ double warp_sum(double v)
{
    for (int offset = WARP / 2; offset > 0; offset /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

static unsigned row_blocks(int64_t rows)
{
    int64_t blocks = (rows + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK;
    return (unsigned)(blocks < KEEL_MAX_BLOCKS ? (blocks < 1 ? 1 : blocks) : KEEL_MAX_BLOCKS);
}

#define FOR_EACH_ROW(row, rows)                                                                            \
    for (int64_t row = (int64_t)blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / WARP; row < (rows);            \
         row += (int64_t)gridDim.x * WARPS_PER_BLOCK)

/* Writes exp(z - max) to p and returns the row's sum (every lane);
 * *max_out gets max z. Subtracting the maximum keeps every exponent <= 0. */
__device__ __forceinline__ double exp_row(const float *z, float *p, int64_t classes, float *max_out)
{
    const int lane = threadIdx.x % WARP;
    float max = -INFINITY;
    for (int64_t c = lane; c < classes; c += WARP)
        max = fmaxf(max, z[c]);
    max = warp_max(max);
    double sum = 0.0;
    for (int64_t c = lane; c < classes; c += WARP) {
        float e = expf(z[c] - max);
        p[c] = e;
        sum += e;
    }
    *max_out = max;
    return warp_sum(sum);
}

__device__ __forceinline__ void normalise_row(float *p, int64_t classes, double sum)
{
    const float inv = (float)(1.0 / sum);
    for (int64_t c = threadIdx.x % WARP; c < classes; c += WARP)
        p[c] *= inv;
}

__global__ void softmax_kernel(const float *x, float *y, int64_t rows, int64_t classes)
{
    FOR_EACH_ROW(row, rows)
    {
        float max;
        double sum = exp_row(x + row * classes, y + row * classes, classes, &max);
        normalise_row(y + row * classes, classes, sum);
    }
}

/* dx = y * (dy - sum_c dy_c y_c) */
__global__ void softmax_bwd_kernel(const float *dy, const float *y, float *dx, int64_t rows, int64_t classes)
{
    FOR_EACH_ROW(row, rows)
    {
        const float *dy_row = dy + row * classes, *y_row = y + row * classes;
        const int lane = threadIdx.x % WARP;
        double dot = 0.0;
        for (int64_t c = lane; c < classes; c += WARP)
            dot += (double)dy_row[c] * y_row[c];
        const float dotf = (float)warp_sum(dot);
        for (int64_t c = lane; c < classes; c += WARP)
            dx[row * classes + c] = y_row[c] * (dy_row[c] - dotf);
    }
}

extern "C" cudaError_t keel_k_softmax(cudaStream_t stream, const float *x, float *y, int64_t rows, int64_t classes)
{
    if (rows <= 0 || classes <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(softmax_kernel, row_blocks(rows), KEEL_THREADS, stream)(x, y, rows, classes);
    return keel_launch_status();
}

extern "C" cudaError_t keel_k_softmax_bwd(cudaStream_t stream, const float *dy, const float *y, float *dx,
                                          int64_t rows, int64_t classes)
{
    if (rows <= 0 || classes <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(softmax_bwd_kernel, row_blocks(rows), KEEL_THREADS, stream)(dy, y, dx, rows, classes);
    return keel_launch_status();
}

/* ---- two-stage means ----------------------------------------------------------- */

/* Stage two: one block adds the partials in a fixed tree and writes the mean. */
__global__ void finish_mean_kernel(const double *partial, int64_t count, double divisor, float *out)
{
    __shared__ double scratch[KEEL_THREADS];
    double sum = 0.0;
    for (int64_t b = threadIdx.x; b < count; b += KEEL_THREADS)
        sum += partial[b];
    sum = keel_block_sum(sum, scratch);
    if (threadIdx.x == 0)
        *out = (float)(sum / divisor);
}

struct squared_error {
    __device__ double operator()(float p, float t) const
    {
        double d = (double)p - (double)t;
        return d * d;
    }
};

struct bce_logits {
    __device__ double operator()(float x, float t) const { return keel_bce_logits_f(x, t); }
};

/* Stage one: KEEL_K_REDUCE_BLOCKS blocks, each the sum of its grid-stride share. */
template <typename F>
__global__ void partial_sum_kernel(const float *a, const float *b, int64_t n, double *partial)
{
    __shared__ double scratch[KEEL_THREADS];
    F f;
    double sum = 0.0;
    KEEL_GRID_STRIDE(i, n) sum += f(a[i], b[i]);
    sum = keel_block_sum(sum, scratch);
    if (threadIdx.x == 0)
        partial[blockIdx.x] = sum;
}

template <typename F>
static cudaError_t mean_of(cudaStream_t stream, const float *a, const float *b, float *loss, int64_t n,
                           void *workspace)
{
    if (n <= 0)
        return cudaSuccess;
    double *partial = (double *)workspace;
    KEEL_LAUNCH(partial_sum_kernel<F>, KEEL_K_REDUCE_BLOCKS, KEEL_THREADS, stream)(a, b, n, partial);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return err;
    KEEL_LAUNCH(finish_mean_kernel, 1, KEEL_THREADS, stream)(partial, KEEL_K_REDUCE_BLOCKS, (double)n, loss);
    return keel_launch_status();
}

extern "C" cudaError_t keel_k_mse_loss(cudaStream_t stream, const float *p, const float *t, float *loss, int64_t n,
                                       void *workspace)
{
    return mean_of<squared_error>(stream, p, t, loss, n, workspace);
}

extern "C" cudaError_t keel_k_bce_with_logits(cudaStream_t stream, const float *x, const float *t, float *loss,
                                              int64_t n, void *workspace)
{
    return mean_of<bce_logits>(stream, x, t, loss, n, workspace);
}

/* dp = 2 * dloss * (p - t) / n */
__global__ void mse_bwd_kernel(const float *dloss, const float *p, const float *t, float *dp, int64_t n)
{
    const float scale = (float)(2.0 * (double)dloss[0] / (double)n);
    KEEL_GRID_STRIDE(i, n) dp[i] = scale * (p[i] - t[i]);
}

/* dx = dloss * (sigmoid(x) - t) / n */
__global__ void bce_bwd_kernel(const float *dloss, const float *x, const float *t, float *dx, int64_t n)
{
    const float scale = (float)((double)dloss[0] / (double)n);
    KEEL_GRID_STRIDE(i, n) dx[i] = scale * (keel_sigmoid_f(x[i]) - t[i]);
}

extern "C" cudaError_t keel_k_mse_loss_bwd(cudaStream_t stream, const float *dloss, const float *p, const float *t,
                                           float *dp, int64_t n)
{
    if (n <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(mse_bwd_kernel, keel_blocks_for(n), KEEL_THREADS, stream)(dloss, p, t, dp, n);
    return keel_launch_status();
}

extern "C" cudaError_t keel_k_bce_with_logits_bwd(cudaStream_t stream, const float *dloss, const float *x,
                                                  const float *t, float *dx, int64_t n)
{
    if (n <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(bce_bwd_kernel, keel_blocks_for(n), KEEL_THREADS, stream)(dloss, x, t, dx, n);
    return keel_launch_status();
}

/* ---- softmax cross-entropy --------------------------------------------------------
 * The loss of a row is logsumexp(z) - z[label] = (max - z[label]) + log sum exp(z - max). */

__global__ void softmax_xent_kernel(const float *logits, const int32_t *labels, float *prob, int64_t rows,
                                    int64_t classes, double *row_loss, unsigned long long *bad_sample)
{
    FOR_EACH_ROW(row, rows)
    {
        const float *z = logits + row * classes;
        float *p = prob + row * classes;
        float max;
        double sum = exp_row(z, p, classes, &max);
        normalise_row(p, classes, sum);
        if (threadIdx.x % WARP == 0) {
            int32_t label = labels[row];
            if (label < 0 || label >= classes) {
                atomicMin(bad_sample, (unsigned long long)row);
                row_loss[row] = nan("");
            } else {
                row_loss[row] = ((double)max - z[label]) + log(sum);
            }
        }
    }
}

extern "C" cudaError_t keel_k_softmax_cross_entropy(cudaStream_t stream, const float *logits, const int32_t *labels,
                                                    float *prob, float *loss, int64_t rows, int64_t classes,
                                                    double *row_loss, unsigned long long *bad_sample)
{
    if (rows <= 0 || classes <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(softmax_xent_kernel, row_blocks(rows), KEEL_THREADS, stream)(logits, labels, prob, rows, classes,
                                                                             row_loss, bad_sample);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return err;
    KEEL_LAUNCH(finish_mean_kernel, 1, KEEL_THREADS, stream)(row_loss, rows, (double)rows, loss);
    return keel_launch_status();
}

/* dz = dloss * (p - onehot(label)) / rows */
__global__ void softmax_xent_bwd_kernel(const float *dloss, const int32_t *labels, const float *prob, float *dz,
                                        int64_t rows, int64_t classes)
{
    const float scale = (float)((double)dloss[0] / (double)rows);
    KEEL_GRID_STRIDE(e, rows * classes)
    {
        int64_t row = e / classes, c = e % classes;
        int32_t label = labels[row];
        dz[e] = label < 0 || label >= classes ? 0.0f : (c == label ? scale * (prob[e] - 1.0f) : scale * prob[e]);
    }
}

extern "C" cudaError_t keel_k_softmax_cross_entropy_bwd(cudaStream_t stream, const float *dloss,
                                                        const int32_t *labels, const float *prob, float *dz,
                                                        int64_t rows, int64_t classes)
{
    if (rows <= 0 || classes <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(softmax_xent_bwd_kernel, keel_blocks_for(rows * classes), KEEL_THREADS, stream)(dloss, labels, prob,
                                                                                                dz, rows, classes);
    return keel_launch_status();
}
