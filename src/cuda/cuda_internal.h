/* Inside the CUDA backend: the device (stream, library handles, memory
 * pool, convolution plan cache), error helpers, and the per-family run and
 * prepare functions the backend table in backend.c points to. */
#ifndef KEEL_CUDA_INTERNAL_H
#define KEEL_CUDA_INTERNAL_H

#include <pthread.h>
#include <cuda_runtime_api.h>
#include <cublas_v2.h>
#include <cudnn_graph.h>

#include "backend.h"
#include "cuda/cuda.h"
#include "cuda/kernels.h"

/* ---- memory pool (pool.c) -------------------------------------------------------
 * Sizes are rounded to a size class; a freed block goes back to the cache of
 * its device and is handed out again for any request of its class. A device
 * queues work on two streams (compute, and the input copies), so the
 * backend's free waits for both before the block returns to the cache, as
 * cudaFree would; frees happen when plans are compiled or destroyed, never
 * inside a step. */
typedef struct keel_cuda_block {
    void *ptr;
    size_t bytes;              /* the class size actually allocated */
} keel_cuda_block;

typedef struct keel_cuda_pool {
    pthread_mutex_t lock;
    int ordinal;
    keel_cuda_block *cached;   /* free blocks, unordered */
    int n_cached, cap_cached;
    keel_cuda_block *live;     /* handed out */
    int n_live, cap_live;
    keel_cuda_pool_stats stats;
} keel_cuda_pool;

void keel_cuda_pool_init(keel_cuda_pool *pool, int ordinal);
/* NULL when the device is out of memory even after the cache was returned to it. */
void *keel_cuda_pool_alloc(keel_cuda_pool *pool, size_t bytes);
void keel_cuda_pool_free(keel_cuda_pool *pool, void *p);
/* Returns every cached block to the device. */
void keel_cuda_pool_trim(keel_cuda_pool *pool);
/* Frees everything, live blocks included (device close). */
void keel_cuda_pool_destroy(keel_cuda_pool *pool);

/* ---- the device ------------------------------------------------------------------- */
typedef struct keel_conv_cache keel_conv_cache;

struct keel_device {
    int ordinal;
    char name[32];             /* "cuda:0" */
    cudaStream_t stream;
    cudaStream_t copy_stream;  /* input copies that overlap the running step */
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    cudnnBackendDescriptor_t deviceprop; /* cuDNN's profile of this GPU, or NULL */
    char deviceprop_error[384];          /* why deviceprop is NULL */
    keel_cuda_pool pool;
    keel_conv_cache *conv_cache;
    keel_conv_policy policy;   /* from keel_cuda_configure, for the next prepare calls */
    bool autotune;
    /* Softmax cross-entropy reports a bad label here (all ones: none); it is
     * read at the next sync or download, when the host looks at results. */
    unsigned long long *bad_label;
    const keel_node *bad_label_node;
    const int32_t *bad_label_labels;
};

/* Makes the device current for this thread; every entry point calls it. */
keel_status keel_cuda_enter(keel_device *device);

/* ---- errors ------------------------------------------------------------------------
 * Each names the failed call, the library's status text and where it
 * happened (a node name or the device), and returns KEEL_ERR_BACKEND (or
 * KEEL_ERR_OUT_OF_MEMORY for allocations). */
keel_status keel_cuda_fail(cudaError_t err, const char *call, const char *where);
keel_status keel_cudnn_fail(cudnnStatus_t status, const char *call, const char *where);
keel_status keel_cublas_fail(cublasStatus_t status, const char *call, const char *where);

#define KEEL_CUDA_TRY(where, fn, args)                         \
    do {                                                       \
        cudaError_t keel_err_ = fn args;                       \
        if (keel_err_ != cudaSuccess)                          \
            return keel_cuda_fail(keel_err_, #fn, where);      \
    } while (0)

#define KEEL_CUDNN_TRY(where, fn, args)                        \
    do {                                                       \
        cudnnStatus_t keel_st_ = fn args;                      \
        if (keel_st_ != CUDNN_STATUS_SUCCESS)                  \
            return keel_cudnn_fail(keel_st_, #fn, where);      \
    } while (0)

#define KEEL_CUBLAS_TRY(where, fn, args)                       \
    do {                                                       \
        cublasStatus_t keel_st_ = fn args;                     \
        if (keel_st_ != CUBLAS_STATUS_SUCCESS)                 \
            return keel_cublas_fail(keel_st_, #fn, where);     \
    } while (0)

/* ---- helpers for the run functions ------------------------------------------------ */
static inline int64_t keel_cuda_numel(const keel_node *x) { return keel_shape_numel(x->ndim, x->shape); }

/* Product of the dimensions after the channel axis (1 for {N, C}). */
static inline int64_t keel_cuda_inner(const keel_node *x)
{
    int64_t inner = 1;
    for (int d = 2; d < x->ndim; d++)
        inner *= x->shape[d];
    return inner;
}

/* ---- per-family entry points --------------------------------------------------------- */
/* ops.c: our kernels */
keel_status keel_cuda_fill_node(const keel_launch *l);
keel_status keel_cuda_copy(const keel_launch *l);
keel_status keel_cuda_bias_grad(const keel_launch *l);
keel_status keel_cuda_max_pool2d(const keel_launch *l);
keel_status keel_cuda_max_pool2d_bwd(const keel_launch *l);
keel_status keel_cuda_avg_pool2d(const keel_launch *l);
keel_status keel_cuda_avg_pool2d_bwd(const keel_launch *l);
keel_status keel_cuda_activation(const keel_launch *l);
keel_status keel_cuda_activation_bwd(const keel_launch *l);
keel_status keel_cuda_add(const keel_launch *l);
keel_status keel_cuda_scale(const keel_launch *l);
keel_status keel_cuda_dropout(const keel_launch *l);
keel_status keel_cuda_dropout_bwd(const keel_launch *l);
keel_status keel_cuda_lrn(const keel_launch *l);
keel_status keel_cuda_lrn_bwd(const keel_launch *l);
keel_status keel_cuda_batch_norm(const keel_launch *l);
keel_status keel_cuda_batch_norm_bwd_gamma(const keel_launch *l);
keel_status keel_cuda_batch_norm_bwd_data(const keel_launch *l);
keel_status keel_cuda_concat(const keel_launch *l);
keel_status keel_cuda_slice(const keel_launch *l);
keel_status keel_cuda_softmax(const keel_launch *l);
keel_status keel_cuda_softmax_bwd(const keel_launch *l);
keel_status keel_cuda_softmax_cross_entropy(const keel_launch *l);
keel_status keel_cuda_softmax_cross_entropy_bwd(const keel_launch *l);
keel_status keel_cuda_mse_loss(const keel_launch *l);
keel_status keel_cuda_mse_loss_bwd(const keel_launch *l);
keel_status keel_cuda_bce_with_logits(const keel_launch *l);
keel_status keel_cuda_bce_with_logits_bwd(const keel_launch *l);
keel_status keel_cuda_loss_prepare(keel_device *d, const keel_node *node, int64_t *workspace, void **algo);
/* Reports (and clears) a bad label recorded since the last check. */
keel_status keel_cuda_check_labels(keel_device *device);

/* linear.c: cuBLAS */
keel_status keel_cuda_linear_prepare(keel_device *d, const keel_node *node, int64_t *workspace, void **algo);
keel_status keel_cuda_linear(const keel_launch *l);
keel_status keel_cuda_linear_bwd_data(const keel_launch *l);
keel_status keel_cuda_linear_bwd_weight(const keel_launch *l);

/* conv.c: cuDNN graph plans */
keel_status keel_cuda_conv_prepare(keel_device *d, const keel_node *node, int64_t *workspace, void **algo);
keel_status keel_cuda_conv(const keel_launch *l);   /* every convolution kind */
void keel_cuda_conv_cache_free(keel_device *d);

/* The algo blocks prepare functions return start with this tag, so one
 * release_algo can free any of them. */
typedef enum keel_cuda_algo_kind {
    KEEL_CUDA_ALGO_LINEAR = 1,
    KEEL_CUDA_ALGO_CONV,
} keel_cuda_algo_kind;

void keel_cuda_conv_algo_free(keel_device *d, void *algo);

#endif
