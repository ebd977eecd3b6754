/* Optimiser updates: one launch over a whole contiguous parameter block,
 * with the per-element formulas of ops/math.h (the CPU runs the same ones). */
#include "common.cuh"

__global__ void sgd_kernel(float *w, float *v, const float *g, int64_t n, float lr, float momentum,
                           float weight_decay, int nesterov)
{
    KEEL_GRID_STRIDE(i, n) keel_sgd_update(&w[i], &v[i], g[i], lr, momentum, weight_decay, nesterov);
}

__global__ void adam_kernel(float *w, float *m, float *v, const float *g, int64_t n, float lr, float beta1,
                            float beta2, float eps, float weight_decay, float c1, float c2)
{
    KEEL_GRID_STRIDE(i, n) keel_adam_update(&w[i], &m[i], &v[i], g[i], lr, beta1, beta2, eps, weight_decay, c1, c2);
}

extern "C" cudaError_t keel_k_sgd(cudaStream_t stream, float *w, float *v, const float *g, int64_t n, float lr,
                                  float momentum, float weight_decay, bool nesterov)
{
    if (n <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(sgd_kernel, keel_blocks_for(n), KEEL_THREADS, stream)(w, v, g, n, lr, momentum, weight_decay, nesterov);
    return keel_launch_status();
}

extern "C" cudaError_t keel_k_adam(cudaStream_t stream, float *w, float *m, float *v, const float *g, int64_t n,
                                   float lr, float beta1, float beta2, float eps, float weight_decay, float c1,
                                   float c2)
{
    if (n <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(adam_kernel, keel_blocks_for(n), KEEL_THREADS, stream)(w, m, v, g, n, lr, beta1, beta2, eps,
                                                                       weight_decay, c1, c2);
    return keel_launch_status();
}
