/* The part of the CUDA runtime API that kernels/ and src/cuda/kernels.h
 * use, for building the kernels against the CPU emulator (keel_emu.h) on a
 * machine without CUDA. Error numbers are CUDA's. */
#ifndef KEEL_EMU_CUDA_RUNTIME_API_H
#define KEEL_EMU_CUDA_RUNTIME_API_H

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
} cudaError_t;

typedef struct CUstream_st *cudaStream_t;

#ifdef __cplusplus
struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

/* The error of the last launch (a bad grid or block), then cudaSuccess. */
extern "C" cudaError_t cudaGetLastError(void);
#endif

#endif
