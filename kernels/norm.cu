/* LRN across channels and batch normalisation, forward and backward, with
 * the formulas and summation orders of src/cpu/norm.c. Per-channel
 * statistics run one block per channel and sum in float64 through a fixed
 * tree; everything else is one thread per element. */
#include "common.cuh"

/* ---- LRN ----------------------------------------------------------------------
 * scale_c = k + alpha/size * sum_{j in window(c)} a_j^2,  b_c = a_c * scale_c^-beta */

__global__ void lrn_kernel(keel_k_lrn_params p, const float *x, float *y, float *scale)
{
    const int64_t total = p.batch * p.channels * p.inner;
    const float alpha_over_size = p.alpha / (float)p.size;
    KEEL_GRID_STRIDE(e, total)
    {
        int64_t i = e % p.inner, nc = e / p.inner;
        int c = (int)(nc % p.channels);
        int64_t n = nc / p.channels;
        float sum = 0.0f;
        int hi = keel_lrn_hi(c, p.size, (int)p.channels);
        for (int j = keel_lrn_lo(c, p.size); j <= hi; j++) {
            float v = x[(n * p.channels + j) * p.inner + i];
            sum += v * v;
        }
        float s = p.k + alpha_over_size * sum;
        scale[e] = s;
        y[e] = x[e] * powf(s, -p.beta);
    }
}

/* dx_c = dy_c*scale_c^-beta - (2*alpha*beta/size) * a_c * sum_{j whose window holds c} dy_j*b_j/scale_j.
 * The channels whose window holds c are the window mirrored. */
__global__ void lrn_bwd_kernel(keel_k_lrn_params p, const float *dy, const float *x, const float *y, const float *scale,
                               float *dx)
{
    const int64_t total = p.batch * p.channels * p.inner;
    const float coef = 2.0f * p.alpha * p.beta / (float)p.size;
    KEEL_GRID_STRIDE(e, total)
    {
        int64_t i = e % p.inner, nc = e / p.inner;
        int c = (int)(nc % p.channels);
        int64_t n = nc / p.channels;
        int lo = c - p.size / 2, hi = c + (p.size - 1) / 2;
        lo = lo < 0 ? 0 : lo;
        hi = hi >= (int)p.channels ? (int)p.channels - 1 : hi;
        float reach = 0.0f;
        for (int j = lo; j <= hi; j++) {
            int64_t at = (n * p.channels + j) * p.inner + i;
            reach += dy[at] * y[at] / scale[at];
        }
        dx[e] = dy[e] * powf(scale[e], -p.beta) - coef * x[e] * reach;
    }
}

extern "C" cudaError_t keel_k_lrn(cudaStream_t stream, const keel_k_lrn_params *p, const float *x, float *y,
                                  float *scale)
{
    int64_t total = p->batch * p->channels * p->inner;
    if (total <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(lrn_kernel, keel_blocks_for(total), KEEL_THREADS, stream)(*p, x, y, scale);
    return keel_launch_status();
}

extern "C" cudaError_t keel_k_lrn_bwd(cudaStream_t stream, const keel_k_lrn_params *p, const float *dy, const float *x,
                                      const float *y, const float *scale, float *dx)
{
    int64_t total = p->batch * p->channels * p->inner;
    if (total <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(lrn_bwd_kernel, keel_blocks_for(total), KEEL_THREADS, stream)(*p, dy, x, y, scale, dx);
    return keel_launch_status();
}

/* ---- batch norm ----------------------------------------------------------------- */

/* The value at position j of channel c, j running over (n, i). */
__device__ __forceinline__ int64_t channel_at(const keel_k_bn_params &p, int64_t c, int64_t j)
{
    return ((j / p.inner) * p.channels + c) * p.inner + j % p.inner;
}

/* One block per channel: the batch mean and biased variance in float64, two
 * passes; moves the running statistics in training. */
__global__ void bn_stats_kernel(keel_k_bn_params p, bool training, const float *x, float *running_mean,
                                float *running_var, float *saved)
{
    __shared__ double scratch[KEEL_THREADS];
    const int64_t c = blockIdx.x;
    const int64_t count = p.batch * p.inner;
    double mean, var;
    if (training) {
        double sum = 0.0;
        for (int64_t j = threadIdx.x; j < count; j += KEEL_THREADS)
            sum += x[channel_at(p, c, j)];
        mean = keel_block_sum(sum, scratch) / (double)count;
        double squares = 0.0;
        for (int64_t j = threadIdx.x; j < count; j += KEEL_THREADS) {
            double d = x[channel_at(p, c, j)] - mean;
            squares += d * d;
        }
        var = keel_block_sum(squares, scratch) / (double)count;
    } else {
        mean = running_mean[c];
        var = running_var[c];
    }
    if (threadIdx.x == 0) {
        if (training) {
            double momentum = p.momentum;
            double unbiased = var * (double)count / (double)(count - 1);
            running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mean);
            running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * unbiased);
        }
        saved[c] = (float)mean;
        saved[p.channels + c] = (float)(1.0 / sqrt(var + (double)p.eps));
    }
}

__global__ void bn_normalize_kernel(keel_k_bn_params p, const float *x, const float *gamma, const float *beta,
                                    const float *saved, float *y)
{
    const int64_t total = p.batch * p.channels * p.inner;
    KEEL_GRID_STRIDE(e, total)
    {
        int64_t c = (e / p.inner) % p.channels;
        float mean = saved[c], inv_std = saved[p.channels + c];
        float scale = gamma[c] * inv_std;
        y[e] = (x[e] - mean) * scale + beta[c];
    }
}

__global__ void bn_bwd_gamma_kernel(keel_k_bn_params p, const float *dy, const float *x, const float *saved,
                                    float *dgamma)
{
    __shared__ double scratch[KEEL_THREADS];
    const int64_t c = blockIdx.x;
    const int64_t count = p.batch * p.inner;
    const double mean = saved[c];
    double sum = 0.0;
    for (int64_t j = threadIdx.x; j < count; j += KEEL_THREADS) {
        int64_t at = channel_at(p, c, j);
        sum += (double)dy[at] * ((double)x[at] - mean);
    }
    sum = keel_block_sum(sum, scratch);
    if (threadIdx.x == 0)
        dgamma[c] = (float)(sum * saved[p.channels + c]);
}

__global__ void bn_bwd_data_kernel(keel_k_bn_params p, const float *dy, const float *x, const float *gamma,
                                   const float *dgamma, const float *dbeta, const float *saved, float *dx)
{
    const int64_t total = p.batch * p.channels * p.inner;
    const double count = (double)(p.batch * p.inner);
    KEEL_GRID_STRIDE(e, total)
    {
        int64_t c = (e / p.inner) % p.channels;
        float mean = saved[c], inv_std = saved[p.channels + c];
        float scale = gamma[c] * inv_std;
        float mean_dy = (float)(dbeta[c] / count), mean_dy_xhat = (float)(dgamma[c] / count);
        float xhat = (x[e] - mean) * inv_std;
        dx[e] = scale * (dy[e] - mean_dy - xhat * mean_dy_xhat);
    }
}

extern "C" cudaError_t keel_k_batch_norm(cudaStream_t stream, const keel_k_bn_params *p, bool training, const float *x,
                                         const float *gamma, const float *beta, float *running_mean,
                                         float *running_var, float *y, float *saved)
{
    int64_t total = p->batch * p->channels * p->inner;
    if (total <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(bn_stats_kernel, (unsigned)p->channels, KEEL_THREADS, stream)(*p, training, x, running_mean,
                                                                              running_var, saved);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return err;
    KEEL_LAUNCH(bn_normalize_kernel, keel_blocks_for(total), KEEL_THREADS, stream)(*p, x, gamma, beta, saved, y);
    return keel_launch_status();
}

extern "C" cudaError_t keel_k_batch_norm_bwd_gamma(cudaStream_t stream, const keel_k_bn_params *p, const float *dy,
                                                   const float *x, const float *saved, float *dgamma)
{
    if (p->channels <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(bn_bwd_gamma_kernel, (unsigned)p->channels, KEEL_THREADS, stream)(*p, dy, x, saved, dgamma);
    return keel_launch_status();
}

extern "C" cudaError_t keel_k_batch_norm_bwd_data(cudaStream_t stream, const keel_k_bn_params *p, const float *dy,
                                                  const float *x, const float *gamma, const float *dgamma,
                                                  const float *dbeta, const float *saved, float *dx)
{
    int64_t total = p->batch * p->channels * p->inner;
    if (total <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(bn_bwd_data_kernel, keel_blocks_for(total), KEEL_THREADS, stream)(*p, dy, x, gamma, dgamma, dbeta,
                                                                                  saved, dx);
    return keel_launch_status();
}
