/* Launch geometry and block reductions shared by the kernels in kernels/.
 * Reductions combine per-thread partial sums in a fixed tree, so a result
 * depends only on the launch shape, never on timing: no float atomics. */
#ifndef KEEL_KERNELS_COMMON_CUH
#define KEEL_KERNELS_COMMON_CUH

#include <cstdint>
#include <cuda_runtime.h>
#include "cuda/kernels.h"
#include "ops/math.h"

#define KEEL_THREADS 256
/* Grid-stride loops cap the grid; 132 SMs x 16 blocks of 256 fill an H200. */
#define KEEL_MAX_BLOCKS 8192

static inline unsigned keel_blocks_for(int64_t n)
{
    int64_t blocks = (n + KEEL_THREADS - 1) / KEEL_THREADS;
    if (blocks < 1)
        blocks = 1;
    return (unsigned)(blocks < KEEL_MAX_BLOCKS ? blocks : KEEL_MAX_BLOCKS);
}

/* Launch with KEEL_LAUNCH(kernel, grid, block, stream)(args...) rather than
 * kernel<<<grid, block, 0, stream>>>(args...): one source then runs on the
 * GPU and, compiled as C++ in the tests, on the CPU emulator of the thread
 * grid (tests/kernel_emu/), which only nvcc's launch syntax would stop. */
#ifdef __CUDACC__
#define KEEL_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#else
#define KEEL_LAUNCH(kernel, grid, block, stream) keel_emu::launch(kernel, grid, block, stream)
#endif

#define KEEL_GRID_STRIDE(i, n)                                                                            \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)blockDim.x * gridDim.x)

/* The sum of v over the block (blockDim.x == KEEL_THREADS), valid in
 * thread 0. `scratch` holds KEEL_THREADS doubles. */
__device__ __forceinline__ double keel_block_sum(double v, double *scratch)
{
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int half = KEEL_THREADS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half)
            scratch[threadIdx.x] += scratch[threadIdx.x + half];
        __syncthreads();
    }
    double total = scratch[0];
    __syncthreads();
    return total;
}

/* Every launcher ends with this: the launch error, if any. */
static inline cudaError_t keel_launch_status(void)
{
    return cudaGetLastError();
}

#endif
