/* A CPU emulation of the CUDA thread grid, so the tests can run the source
 * of the kernels in kernels/, compiled as C++, without a GPU.
 *
 * A launch runs its blocks one after another in the calling OS thread. The
 * threads of a block are fibers (ucontext): a thread runs until it ends or
 * waits at a barrier, and a barrier opens once every thread of its group
 * that has not ended is waiting there: the block for __syncthreads, the
 * warp (32 consecutive threads) for a shuffle. Threads that never wait run
 * one after another on one fiber, so barrier-free kernels cost little. The
 * order is fixed, so runs are deterministic. A barrier no thread can pass
 * (some threads of the group wait elsewhere) aborts with a message.
 *
 * With one block at a time in one OS thread, `static` storage is exactly
 * block-shared memory, and atomics need no locking. What this checks is
 * indexing, reductions and barriers; not timing, not the memory model. */
#ifndef KEEL_EMU_H
#define KEEL_EMU_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <tuple>
#include <utility>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

/* The running thread's coordinates, switched with the fiber. */
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

void __syncthreads(void);

namespace keel_emu {

/* Runs body(ctx) as each thread of the grid. False (and the launch error
 * set) when the configuration is one CUDA would refuse. */
bool run_grid(dim3 grid, dim3 block, void (*body)(void *), void *ctx);

/* The shuffle behind __shfl_xor_sync: every live lane of the warp offers
 * the `bytes` at `value`, and each gets those of lane (its lane ^ lane_mask)
 * into `out` (all ones where that lane has ended). */
void shuffle_xor(const void *value, void *out, unsigned bytes, unsigned lane_mask);

/* kernel<<<grid, block, 0, stream>>>(args...) is launch(kernel, grid,
 * block, stream)(args...): the arguments are converted to the parameter
 * types once, as CUDA copies them, and each thread gets its own copy. */
template <typename... P>
struct launcher {
    void (*kernel)(P...);
    dim3 grid, block;

    template <typename... A>
    void operator()(A &&...args) const
    {
        std::tuple<P...> params(std::forward<A>(args)...);
        auto thread = [&] { std::apply(kernel, params); };
        run_grid(grid, block, [](void *t) { (*static_cast<decltype(thread) *>(t))(); }, &thread);
    }
};

template <typename... P>
launcher<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t)
{
    return launcher<P...>{kernel, grid, block};
}

} // namespace keel_emu

/* Full-warp shuffles only: the kernels use no other mask. */
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask)
{
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    if (mask != 0xffffffffu)
        __builtin_trap();
    T out;
    keel_emu::shuffle_xor(&value, &out, sizeof(T), (unsigned)lane_mask);
    return out;
}

/* Fibers are never preempted, so a read-modify-write is atomic. */
template <typename T>
T atomicMin(T *address, T value)
{
    T old = *address;
    if (value < old)
        *address = value;
    return old;
}

#endif
