/* Element-wise kernels: fill, activations, add, scale, dropout, bias add and
 * bias gradient. The formulas are the ones in ops/math.h the CPU backend
 * runs. Element-wise kernels may run in place (y == x): each thread reads
 * element i before it writes element i and touches nothing else. */
#include "common.cuh"

__global__ void fill_kernel(float *y, float value, int64_t n)
{
    KEEL_GRID_STRIDE(i, n) y[i] = value;
}

extern "C" cudaError_t keel_k_fill(cudaStream_t stream, float *y, float value, int64_t n)
{
    if (n <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(fill_kernel, keel_blocks_for(n), KEEL_THREADS, stream)(y, value, n);
    return keel_launch_status();
}

/* ---- activations ----------------------------------------------------------- */

template <int ACT>
__device__ __forceinline__ float activate(float x, float slope)
{
    if (ACT == KEEL_K_RELU)
        return keel_relu_f(x);
    if (ACT == KEEL_K_LEAKY_RELU)
        return keel_leaky_relu_f(x, slope);
    if (ACT == KEEL_K_SIGMOID)
        return keel_sigmoid_f(x);
    return keel_tanh_f(x);
}

template <int ACT>
__device__ __forceinline__ float activate_grad(float dy, float saved, float slope)
{
    if (ACT == KEEL_K_RELU)
        return keel_relu_grad(dy, saved);
    if (ACT == KEEL_K_LEAKY_RELU)
        return keel_leaky_relu_grad(dy, saved, slope);
    if (ACT == KEEL_K_SIGMOID)
        return keel_sigmoid_grad(dy, saved);
    return keel_tanh_grad(dy, saved);
}

template <int ACT>
__global__ void activation_kernel(const float *x, float *y, float slope, int64_t n)
{
    KEEL_GRID_STRIDE(i, n) y[i] = activate<ACT>(x[i], slope);
}

template <int ACT>
__global__ void activation_bwd_kernel(const float *dy, const float *saved, float *dx, float slope, int64_t n)
{
    KEEL_GRID_STRIDE(i, n) dx[i] = activate_grad<ACT>(dy[i], saved[i], slope);
}

extern "C" cudaError_t keel_k_activation(cudaStream_t stream, keel_k_act act, float slope, const float *x, float *y,
                                         int64_t n)
{
    if (n <= 0)
        return cudaSuccess;
    unsigned blocks = keel_blocks_for(n);
    switch (act) {
    case KEEL_K_RELU:
        KEEL_LAUNCH(activation_kernel<KEEL_K_RELU>, blocks, KEEL_THREADS, stream)(x, y, slope, n);
        break;
    case KEEL_K_LEAKY_RELU:
        KEEL_LAUNCH(activation_kernel<KEEL_K_LEAKY_RELU>, blocks, KEEL_THREADS, stream)(x, y, slope, n);
        break;
    case KEEL_K_SIGMOID:
        KEEL_LAUNCH(activation_kernel<KEEL_K_SIGMOID>, blocks, KEEL_THREADS, stream)(x, y, slope, n);
        break;
    case KEEL_K_TANH:
        KEEL_LAUNCH(activation_kernel<KEEL_K_TANH>, blocks, KEEL_THREADS, stream)(x, y, slope, n);
        break;
    default: return cudaErrorInvalidValue;
    }
    return keel_launch_status();
}

extern "C" cudaError_t keel_k_activation_bwd(cudaStream_t stream, keel_k_act act, float slope, const float *dy,
                                             const float *saved, float *dx, int64_t n)
{
    if (n <= 0)
        return cudaSuccess;
    unsigned blocks = keel_blocks_for(n);
    switch (act) {
    case KEEL_K_RELU:
        KEEL_LAUNCH(activation_bwd_kernel<KEEL_K_RELU>, blocks, KEEL_THREADS, stream)(dy, saved, dx, slope, n);
        break;
    case KEEL_K_LEAKY_RELU:
        KEEL_LAUNCH(activation_bwd_kernel<KEEL_K_LEAKY_RELU>, blocks, KEEL_THREADS, stream)(dy, saved, dx, slope, n);
        break;
    case KEEL_K_SIGMOID:
        KEEL_LAUNCH(activation_bwd_kernel<KEEL_K_SIGMOID>, blocks, KEEL_THREADS, stream)(dy, saved, dx, slope, n);
        break;
    case KEEL_K_TANH:
        KEEL_LAUNCH(activation_bwd_kernel<KEEL_K_TANH>, blocks, KEEL_THREADS, stream)(dy, saved, dx, slope, n);
        break;
    default: return cudaErrorInvalidValue;
    }
    return keel_launch_status();
}

/* ---- add, scale -------------------------------------------------------------- */

template <bool RELU>
__global__ void add_kernel(const float *a, const float *b, float *y, int64_t n)
{
    KEEL_GRID_STRIDE(i, n)
    {
        float sum = a[i] + b[i];
        y[i] = RELU ? keel_relu_f(sum) : sum;
    }
}

extern "C" cudaError_t keel_k_add(cudaStream_t stream, const float *a, const float *b, float *y, int64_t n, bool relu)
{
    if (n <= 0)
        return cudaSuccess;
    if (relu)
        KEEL_LAUNCH(add_kernel<true>, keel_blocks_for(n), KEEL_THREADS, stream)(a, b, y, n);
    else
        KEEL_LAUNCH(add_kernel<false>, keel_blocks_for(n), KEEL_THREADS, stream)(a, b, y, n);
    return keel_launch_status();
}

__global__ void scale_kernel(const float *x, float *y, float s, int64_t n)
{
    KEEL_GRID_STRIDE(i, n) y[i] = s * x[i];
}

extern "C" cudaError_t keel_k_scale(cudaStream_t stream, const float *x, float *y, float s, int64_t n)
{
    if (n <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(scale_kernel, keel_blocks_for(n), KEEL_THREADS, stream)(x, y, s, n);
    return keel_launch_status();
}

/* ---- dropout: the mask is a pure function of (key, index), so the backward
 * draws it again instead of storing it, exactly as the CPU does. ---------- */

__global__ void dropout_kernel(const float *x, float *y, int64_t n, uint64_t key, float p, float inv_keep)
{
    KEEL_GRID_STRIDE(i, n) y[i] = keel_dropout_f(x[i], key, (uint64_t)i, p, inv_keep);
}

extern "C" cudaError_t keel_k_dropout(cudaStream_t stream, const float *x, float *y, int64_t n, uint64_t key, float p)
{
    if (n <= 0)
        return cudaSuccess;
    float inv_keep = 1.0f / (1.0f - p);
    KEEL_LAUNCH(dropout_kernel, keel_blocks_for(n), KEEL_THREADS, stream)(x, y, n, key, p, inv_keep);
    return keel_launch_status();
}

/* ---- bias ---------------------------------------------------------------------- */

__global__ void bias_add_kernel(float *y, const float *bias, int64_t channels, int64_t inner, int64_t n)
{
    KEEL_GRID_STRIDE(i, n) y[i] += bias[(i / inner) % channels];
}

extern "C" cudaError_t keel_k_bias_add(cudaStream_t stream, float *y, const float *bias, int64_t batch,
                                       int64_t channels, int64_t inner)
{
    int64_t n = batch * channels * inner;
    if (n <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(bias_add_kernel, keel_blocks_for(n), KEEL_THREADS, stream)(y, bias, channels, inner, n);
    return keel_launch_status();
}

/* One block per channel; thread t sums elements t, t + 256, ... of the
 * channel's batch*inner values, then the block adds the partials in a tree. */
__global__ void bias_grad_kernel(const float *dy, float *db, int64_t batch, int64_t channels, int64_t inner)
{
    __shared__ double scratch[KEEL_THREADS];
    const int64_t c = blockIdx.x;
    const int64_t count = batch * inner;
    double sum = 0.0;
    for (int64_t j = threadIdx.x; j < count; j += KEEL_THREADS) {
        int64_t n = j / inner, i = j % inner;
        sum += dy[(n * channels + c) * inner + i];
    }
    sum = keel_block_sum(sum, scratch);
    if (threadIdx.x == 0)
        db[c] = (float)sum;
}

extern "C" cudaError_t keel_k_bias_grad(cudaStream_t stream, const float *dy, float *db, int64_t batch,
                                        int64_t channels, int64_t inner)
{
    if (channels <= 0)
        return cudaSuccess;
    KEEL_LAUNCH(bias_grad_kernel, (unsigned)channels, KEEL_THREADS, stream)(dy, db, batch, channels, inner);
    return keel_launch_status();
}
