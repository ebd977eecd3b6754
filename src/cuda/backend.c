/* The CUDA backend: device discovery, one context per device (a stream with
 * the cuDNN and cuBLAS handles bound to it, a caching memory pool, the
 * convolution plan cache), copies, and the kernel table. Every CUDA, cuDNN
 * and cuBLAS call is checked; a failure names the call, the library's text
 * and the node or device it happened on. */
#include "cuda/cuda_internal.h"
#include "cuda/conv_graph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* cuBLAS's own workspace, handed over from the pool so that cuBLAS never
 * allocates inside a step (NVIDIA recommends 32 MiB on Hopper). */
#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)

/* ---- errors ------------------------------------------------------------------------- */

keel_status keel_cuda_fail(cudaError_t err, const char *call, const char *where)
{
    keel_status status = err == cudaErrorMemoryAllocation ? KEEL_ERR_OUT_OF_MEMORY : KEEL_ERR_BACKEND;
    return keel_fail(status, "%s: %s failed: %s (%s)", where, call, cudaGetErrorName(err), cudaGetErrorString(err));
}

keel_status keel_cudnn_fail(cudnnStatus_t status, const char *call, const char *where)
{
    char detail[512] = "";
    cudnnGetLastErrorString(detail, sizeof detail);
    return keel_fail(KEEL_ERR_BACKEND, "%s: %s failed: %s%s%s", where, call, cudnnGetErrorString(status),
                     detail[0] ? ": " : "", detail);
}

keel_status keel_cublas_fail(cublasStatus_t status, const char *call, const char *where)
{
    keel_status result = status == CUBLAS_STATUS_ALLOC_FAILED ? KEEL_ERR_OUT_OF_MEMORY : KEEL_ERR_BACKEND;
    return keel_fail(result, "%s: %s failed: %s (%s)", where, call, cublasGetStatusName(status),
                     cublasGetStatusString(status));
}

keel_status keel_cuda_enter(keel_device *device)
{
    KEEL_CUDA_TRY(device->name, cudaSetDevice, (device->ordinal));
    return KEEL_OK;
}

/* ---- discovery --------------------------------------------------------------------- */

/* 0 when there is no driver or no GPU: a CPU-only machine is not an error. */
static int cuda_device_count(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return count;
}

static keel_status cuda_device_info(int index, keel_device_info *info)
{
    int count = cuda_device_count();
    if (index < 0 || index >= count)
        return keel_fail(KEEL_ERR_NOT_FOUND, "cuda:%d: %d CUDA device%s found", index, count, count == 1 ? "" : "s");
    char where[32];
    snprintf(where, sizeof where, "cuda:%d", index);
    struct cudaDeviceProp prop;
    KEEL_CUDA_TRY(where, cudaGetDeviceProperties, (&prop, index));
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "cuda:%d", index);
    snprintf(info->description, sizeof info->description, "%.100s", prop.name);
    info->total_memory = (int64_t)prop.totalGlobalMem;
    info->compute_major = prop.major;
    info->compute_minor = prop.minor;
    /* Free memory needs a context on the device; creating one is the price of asking. */
    size_t free_bytes = 0, total_bytes = 0;
    KEEL_CUDA_TRY(where, cudaSetDevice, (index));
    KEEL_CUDA_TRY(where, cudaMemGetInfo, (&free_bytes, &total_bytes));
    info->free_memory = (int64_t)free_bytes;
    return KEEL_OK;
}

/* ---- open and close ------------------------------------------------------------------ */

static void cuda_close(keel_device *d)
{
    if (!d)
        return;
    cudaSetDevice(d->ordinal);
    if (d->stream)
        cudaStreamSynchronize(d->stream);
    /* Plans go before the handle and the context (cuDNN 9.10+ crashes at exit otherwise). */
    keel_cuda_conv_cache_free(d);
    keel_cudnn_deviceprop_free(d->deviceprop);
    if (d->cublas)
        cublasDestroy(d->cublas);
    if (d->cudnn)
        cudnnDestroy(d->cudnn);
    if (d->copy_stream) {
        cudaStreamSynchronize(d->copy_stream);
        cudaStreamDestroy(d->copy_stream);
    }
    if (d->stream)
        cudaStreamDestroy(d->stream);
    keel_cuda_pool_destroy(&d->pool);
    cudaGetLastError();
    free(d);
}

static keel_status open_handles(keel_device *d)
{
    KEEL_CUDA_TRY(d->name, cudaSetDevice, (d->ordinal));
    KEEL_CUDA_TRY(d->name, cudaStreamCreateWithFlags, (&d->stream, cudaStreamNonBlocking));
    KEEL_CUDA_TRY(d->name, cudaStreamCreateWithFlags, (&d->copy_stream, cudaStreamNonBlocking));
    cudnnStatus_t cst = cudnnCreate(&d->cudnn);
    if (cst != CUDNN_STATUS_SUCCESS) {
        d->cudnn = NULL;
        keel_cudnn_fail(cst, "cudnnCreate", d->name);
        return keel_fail_prefix(KEEL_ERR_BACKEND,
                                "cuDNN cannot start on %s (cuDNN %ld; check that it matches the driver): ", d->name,
                                keel_cudnn_version());
    }
    KEEL_CUDNN_TRY(d->name, cudnnSetStream, (d->cudnn, d->stream));
    /* Without a profile only convolutions are impossible: keep the reason
     * for them and let every other op run. */
    if (keel_cudnn_deviceprop_from_handle(d->cudnn, d->ordinal, &d->deviceprop) != KEEL_OK) {
        d->deviceprop = NULL;
        snprintf(d->deviceprop_error, sizeof d->deviceprop_error, "%s", keel_last_error());
    }
    KEEL_CUBLAS_TRY(d->name, cublasCreate, (&d->cublas));
    KEEL_CUBLAS_TRY(d->name, cublasSetStream, (d->cublas, d->stream));
    void *cublas_workspace = keel_cuda_pool_alloc(&d->pool, CUBLAS_WORKSPACE_BYTES);
    if (!cublas_workspace)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: no memory for cuBLAS's 32 MiB workspace", d->name);
    KEEL_CUBLAS_TRY(d->name, cublasSetWorkspace, (d->cublas, cublas_workspace, CUBLAS_WORKSPACE_BYTES));
    d->bad_label = keel_cuda_pool_alloc(&d->pool, sizeof *d->bad_label);
    if (!d->bad_label)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: out of device memory", d->name);
    KEEL_CUDA_TRY(d->name, cudaMemsetAsync, (d->bad_label, 0xff, sizeof *d->bad_label, d->stream));
    KEEL_CUDA_TRY(d->name, cudaStreamSynchronize, (d->stream));
    return KEEL_OK;
}

static keel_status cuda_open(keel_device **out, int index, int threads)
{
    (void)threads;
    *out = NULL;
    int count = cuda_device_count();
    if (index < 0 || index >= count)
        return keel_fail(KEEL_ERR_NOT_FOUND, "cuda:%d: %d CUDA device%s found%s", index, count, count == 1 ? "" : "s",
                         count == 0 ? " (is the NVIDIA driver loaded?)" : "");
    keel_device *d = calloc(1, sizeof *d);
    if (!d)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory opening cuda:%d", index);
    d->ordinal = index;
    snprintf(d->name, sizeof d->name, "cuda:%d", index);
    keel_cuda_pool_init(&d->pool, index);
    keel_status st = open_handles(d);
    if (st != KEEL_OK) {
        cuda_close(d);
        return st;
    }
    *out = d;
    return KEEL_OK;
}

keel_status keel_cuda_configure(keel_device *d, const keel_plan_opts *opts)
{
    d->policy.strict_fp32 = opts && opts->strict_fp32;
    d->policy.deterministic = opts && opts->deterministic;
    d->autotune = opts && opts->autotune;
    /* An engine may take up to an eighth of the free memory as workspace. */
    size_t free_bytes = 0, total_bytes = 0;
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    KEEL_CUDA_TRY(d->name, cudaMemGetInfo, (&free_bytes, &total_bytes));
    d->policy.workspace_limit = (int64_t)(free_bytes / 8);
    return KEEL_OK;
}

/* ---- memory ---------------------------------------------------------------------------- */

static void *cuda_alloc(keel_device *d, size_t bytes)
{
    if (keel_cuda_enter(d) != KEEL_OK)
        return NULL;
    return keel_cuda_pool_alloc(&d->pool, bytes);
}

/* A block may go to a new owner at once, so the streams that may still read
 * or write it finish first: an input copy in flight on the copy stream, or
 * the compute stream's last step. */
static void cuda_free(keel_device *d, void *p)
{
    if (!p)
        return;
    if (keel_cuda_enter(d) == KEEL_OK) {
        cudaStreamSynchronize(d->stream);
        cudaStreamSynchronize(d->copy_stream);
        cudaGetLastError(); /* a sticky error is reported by the next checked call */
    }
    keel_cuda_pool_free(&d->pool, p);
}

/* Copies follow the stream: an upload lands after the work already queued
 * (the previous step may still read the input it replaces). A copy from
 * pinned memory returns before the data is read, so it waits. */
static keel_status cuda_upload(keel_device *d, void *dst, const void *src, size_t bytes)
{
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK || bytes == 0)
        return st;
    KEEL_CUDA_TRY(d->name, cudaMemcpyAsync, (dst, src, bytes, cudaMemcpyDefault, d->stream));
    struct cudaPointerAttributes attrs;
    KEEL_CUDA_TRY(d->name, cudaPointerGetAttributes, (&attrs, src));
    if (attrs.type == cudaMemoryTypeHost)
        KEEL_CUDA_TRY(d->name, cudaStreamSynchronize, (d->stream));
    return KEEL_OK;
}

static keel_status cuda_sync(keel_device *d)
{
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    KEEL_CUDA_TRY(d->name, cudaStreamSynchronize, (d->stream));
    return keel_cuda_check_labels(d);
}

static keel_status cuda_download(keel_device *d, void *dst, const void *src, size_t bytes)
{
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    if (bytes)
        KEEL_CUDA_TRY(d->name, cudaMemcpyAsync, (dst, src, bytes, cudaMemcpyDefault, d->stream));
    return cuda_sync(d);
}

static keel_status cuda_fill(keel_device *d, void *dst, float value, size_t count)
{
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    KEEL_CUDA_TRY(d->name, keel_k_fill, (d->stream, dst, value, (int64_t)count));
    return KEEL_OK;
}

static keel_status cuda_memory_info(keel_device *d, int64_t *free_bytes, int64_t *total_bytes)
{
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    size_t free_now = 0, total = 0;
    KEEL_CUDA_TRY(d->name, cudaMemGetInfo, (&free_now, &total));
    /* The pool's cached blocks are free for this process to use. */
    keel_cuda_pool_stats stats;
    keel_cuda_pool_stats_get(d, &stats);
    *free_bytes = (int64_t)free_now + (stats.reserved_bytes - stats.in_use_bytes);
    *total_bytes = (int64_t)total;
    return KEEL_OK;
}

static void cuda_pool_report(keel_device *d, keel_memory_report *report)
{
    keel_cuda_pool_stats stats;
    keel_cuda_pool_stats_get(d, &stats);
    report->pool_reserved_bytes += stats.reserved_bytes;
    report->pool_in_use_bytes += stats.in_use_bytes;
    report->pool_peak_bytes += stats.peak_in_use_bytes;
    report->pool_driver_allocs += stats.device_mallocs;
    report->pool_reuses += stats.reuses;
}

/* ---- optimisers: one launch over the whole block ------------------------------------------ */

static keel_status cuda_sgd_update(keel_device *d, float *w, float *v, const float *g, int64_t n, float lr,
                                   float momentum, float weight_decay, bool nesterov)
{
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    KEEL_CUDA_TRY(d->name, keel_k_sgd, (d->stream, w, v, g, n, lr, momentum, weight_decay, nesterov));
    return KEEL_OK;
}

static keel_status cuda_adam_update(keel_device *d, float *w, float *m, float *v, const float *g, int64_t n, float lr,
                                    float beta1, float beta2, float eps, float weight_decay, float c1, float c2)
{
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    KEEL_CUDA_TRY(d->name, keel_k_adam, (d->stream, w, m, v, g, n, lr, beta1, beta2, eps, weight_decay, c1, c2));
    return KEEL_OK;
}

static void cuda_release_algo(keel_device *d, void *algo)
{
    if (!algo)
        return;
    if (*(const keel_cuda_algo_kind *)algo == KEEL_CUDA_ALGO_CONV)
        keel_cuda_conv_algo_free(d, algo);
    else
        free(algo);
}

/* ---- the cuDNN profile of a real GPU, to replace the hand-written one ------------------------ */

keel_status keel_cudnn_deviceprop_json(int index, char *buf, size_t size)
{
    keel_device *d = NULL;
    keel_status st = cuda_open(&d, index, 0);
    if (st != KEEL_OK)
        return st;
    int64_t length = 0;
    cudnnStatus_t cst = cudnnBackendGetAttribute(d->deviceprop, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION,
                                                 CUDNN_TYPE_CHAR, (int64_t)size, &length, buf);
    if (cst != CUDNN_STATUS_SUCCESS)
        st = keel_cudnn_fail(cst, "cudnnBackendGetAttribute(CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION)", d->name);
    else if (length >= (int64_t)size)
        st = keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s: the device profile needs %lld bytes, the buffer has %zu",
                       d->name, (long long)length + 1, size);
    else
        buf[length > 0 && buf[length - 1] == '\0' ? length - 1 : length] = '\0';
    cuda_close(d);
    return st;
}

/* ---- host memory and input copies ------------------------------------------------------------- */

static void *cuda_host_alloc(keel_device *d, size_t bytes)
{
    if (keel_cuda_enter(d) != KEEL_OK)
        return NULL;
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    return p;
}

/* An input copy may still read the buffer (a run that stopped with the
 * next batch staged): it finishes first. */
static void cuda_host_free(keel_device *d, void *p)
{
    if (p && keel_cuda_enter(d) == KEEL_OK) {
        cudaStreamSynchronize(d->copy_stream);
        cudaFreeHost(p);
    }
}

static bool page_locked(const void *p)
{
    struct cudaPointerAttributes attrs;
    if (cudaPointerGetAttributes(&attrs, p) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return attrs.type == cudaMemoryTypeHost;
}

/* The batch goes up on the copy stream while the compute stream still runs
 * the previous step; it waits only for the last step's move out of staging. */
static keel_status cuda_copy_in(keel_device *d, void *staging, const void *src, size_t bytes, void *copied,
                                void *staging_free, bool *started)
{
    *started = false;
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK || !page_locked(src))
        return st;
    KEEL_CUDA_TRY(d->name, cudaStreamWaitEvent, (d->copy_stream, (cudaEvent_t)staging_free, 0));
    KEEL_CUDA_TRY(d->name, cudaMemcpyAsync, (staging, src, bytes, cudaMemcpyHostToDevice, d->copy_stream));
    KEEL_CUDA_TRY(d->name, cudaEventRecord, ((cudaEvent_t)copied, d->copy_stream));
    *started = true;
    return KEEL_OK;
}

static keel_status cuda_copy_in_finish(keel_device *d, void *dst, const void *staging, size_t bytes, void *copied,
                                       void *staging_free)
{
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    KEEL_CUDA_TRY(d->name, cudaEventSynchronize, ((cudaEvent_t)copied));
    KEEL_CUDA_TRY(d->name, cudaStreamWaitEvent, (d->stream, (cudaEvent_t)copied, 0));
    KEEL_CUDA_TRY(d->name, cudaMemcpyAsync, (dst, staging, bytes, cudaMemcpyDeviceToDevice, d->stream));
    KEEL_CUDA_TRY(d->name, cudaEventRecord, ((cudaEvent_t)staging_free, d->stream));
    return KEEL_OK;
}

/* ---- several streams and GPUs in one plan ---------------------------------------------------- */

static keel_status cuda_event_create(keel_device *d, void **event)
{
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    cudaEvent_t e = NULL;
    KEEL_CUDA_TRY(d->name, cudaEventCreateWithFlags, (&e, cudaEventDisableTiming));
    *event = e;
    return KEEL_OK;
}

static void cuda_event_destroy(keel_device *d, void *event)
{
    if (event && keel_cuda_enter(d) == KEEL_OK)
        cudaEventDestroy((cudaEvent_t)event);
}

static keel_status cuda_event_record(keel_device *d, void *event)
{
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    KEEL_CUDA_TRY(d->name, cudaEventRecord, ((cudaEvent_t)event, d->stream));
    return KEEL_OK;
}

static keel_status cuda_event_wait(keel_device *d, void *event)
{
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    KEEL_CUDA_TRY(d->name, cudaStreamWaitEvent, (d->stream, (cudaEvent_t)event, 0));
    return KEEL_OK;
}

/* Kernels on d read their inputs where the other GPU wrote them, over
 * NVLink or PCIe: no staging copies, and the planner already keeps a buffer
 * another device reads alive until the end of the step. Without such a
 * path the plan copies tensors across instead (cuda_copy_between). */
static keel_status cuda_connect_peer(keel_device *d, keel_device *peer, bool *direct)
{
    *direct = true;
    if (d->ordinal == peer->ordinal)
        return KEEL_OK;
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    int can = 0;
    KEEL_CUDA_TRY(d->name, cudaDeviceCanAccessPeer, (&can, d->ordinal, peer->ordinal));
    if (!can) {
        *direct = false;
        return KEEL_OK;
    }
    cudaError_t err = cudaDeviceEnablePeerAccess(peer->ordinal, 0);
    if (err == cudaErrorPeerAccessAlreadyEnabled) {
        cudaGetLastError(); /* not an error here; clear it */
        return KEEL_OK;
    }
    if (err != cudaSuccess)
        return keel_cuda_fail(err, "cudaDeviceEnablePeerAccess", d->name);
    return KEEL_OK;
}

/* A tensor copied between two streams or GPUs, on the queue's stream.
 * Between GPUs without a peer-to-peer path the driver stages the copy
 * through pinned host memory; with one, it is a direct DMA. */
static keel_status cuda_copy_between(keel_device *queue, keel_device *dst_device, void *dst, keel_device *src_device,
                                     const void *src, size_t bytes)
{
    keel_status st = keel_cuda_enter(queue);
    if (st != KEEL_OK || bytes == 0)
        return st;
    if (src_device->ordinal == dst_device->ordinal)
        KEEL_CUDA_TRY(queue->name, cudaMemcpyAsync, (dst, src, bytes, cudaMemcpyDeviceToDevice, queue->stream));
    else
        KEEL_CUDA_TRY(queue->name, cudaMemcpyPeerAsync,
                      (dst, dst_device->ordinal, src, src_device->ordinal, bytes, queue->stream));
    return KEEL_OK;
}

/* ---- the table ------------------------------------------------------------------------------- */

const keel_backend keel_cuda_backend = {
    .name = "cuda",
    .device_count = cuda_device_count,
    .device_info = cuda_device_info,
    .open = cuda_open,
    .close = cuda_close,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .fill = cuda_fill,
    .sync = cuda_sync,
    .memory_info = cuda_memory_info,
    .pool_report = cuda_pool_report,
    .configure = keel_cuda_configure,
    .event_create = cuda_event_create,
    .event_destroy = cuda_event_destroy,
    .event_record = cuda_event_record,
    .event_wait = cuda_event_wait,
    .connect_peer = cuda_connect_peer,
    .copy_between = cuda_copy_between,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .copy_in = cuda_copy_in,
    .copy_in_finish = cuda_copy_in_finish,
    .prepare = {
        [KEEL_OP_CONV2D] = keel_cuda_conv_prepare,
        [KEEL_OP_CONV2D_BWD_DATA] = keel_cuda_conv_prepare,
        [KEEL_OP_CONV2D_BWD_WEIGHT] = keel_cuda_conv_prepare,
        [KEEL_OP_CONV_TRANSPOSE2D] = keel_cuda_conv_prepare,
        [KEEL_OP_LINEAR] = keel_cuda_linear_prepare,
        [KEEL_OP_LINEAR_BWD_DATA] = keel_cuda_linear_prepare,
        [KEEL_OP_LINEAR_BWD_WEIGHT] = keel_cuda_linear_prepare,
        [KEEL_OP_SOFTMAX_CROSS_ENTROPY] = keel_cuda_loss_prepare,
        [KEEL_OP_MSE_LOSS] = keel_cuda_loss_prepare,
        [KEEL_OP_BCE_WITH_LOGITS] = keel_cuda_loss_prepare,
    },
    .release_algo = cuda_release_algo,
    .run = {
        [KEEL_OP_FILL] = keel_cuda_fill_node,
        [KEEL_OP_COPY] = keel_cuda_copy,
        [KEEL_OP_CONV2D] = keel_cuda_conv,
        [KEEL_OP_CONV2D_BWD_DATA] = keel_cuda_conv,
        [KEEL_OP_CONV2D_BWD_WEIGHT] = keel_cuda_conv,
        [KEEL_OP_CONV_TRANSPOSE2D] = keel_cuda_conv,
        [KEEL_OP_BIAS_GRAD] = keel_cuda_bias_grad,
        [KEEL_OP_MAX_POOL2D] = keel_cuda_max_pool2d,
        [KEEL_OP_MAX_POOL2D_BWD] = keel_cuda_max_pool2d_bwd,
        [KEEL_OP_AVG_POOL2D] = keel_cuda_avg_pool2d,
        [KEEL_OP_AVG_POOL2D_BWD] = keel_cuda_avg_pool2d_bwd,
        [KEEL_OP_LINEAR] = keel_cuda_linear,
        [KEEL_OP_LINEAR_BWD_DATA] = keel_cuda_linear_bwd_data,
        [KEEL_OP_LINEAR_BWD_WEIGHT] = keel_cuda_linear_bwd_weight,
        [KEEL_OP_ACTIVATION] = keel_cuda_activation,
        [KEEL_OP_ACTIVATION_BWD] = keel_cuda_activation_bwd,
        [KEEL_OP_ADD] = keel_cuda_add,
        [KEEL_OP_SCALE] = keel_cuda_scale,
        [KEEL_OP_DROPOUT] = keel_cuda_dropout,
        [KEEL_OP_DROPOUT_BWD] = keel_cuda_dropout_bwd,
        [KEEL_OP_LRN] = keel_cuda_lrn,
        [KEEL_OP_LRN_BWD] = keel_cuda_lrn_bwd,
        [KEEL_OP_BATCH_NORM] = keel_cuda_batch_norm,
        [KEEL_OP_BATCH_NORM_BWD_GAMMA] = keel_cuda_batch_norm_bwd_gamma,
        [KEEL_OP_BATCH_NORM_BWD_DATA] = keel_cuda_batch_norm_bwd_data,
        [KEEL_OP_CONCAT] = keel_cuda_concat,
        [KEEL_OP_SLICE] = keel_cuda_slice,
        [KEEL_OP_RESHAPE] = keel_cuda_copy, /* never called: the planner makes reshapes views */
        [KEEL_OP_SOFTMAX] = keel_cuda_softmax,
        [KEEL_OP_SOFTMAX_BWD] = keel_cuda_softmax_bwd,
        [KEEL_OP_SOFTMAX_CROSS_ENTROPY] = keel_cuda_softmax_cross_entropy,
        [KEEL_OP_SOFTMAX_CROSS_ENTROPY_BWD] = keel_cuda_softmax_cross_entropy_bwd,
        [KEEL_OP_MSE_LOSS] = keel_cuda_mse_loss,
        [KEEL_OP_MSE_LOSS_BWD] = keel_cuda_mse_loss_bwd,
        [KEEL_OP_BCE_WITH_LOGITS] = keel_cuda_bce_with_logits,
        [KEEL_OP_BCE_WITH_LOGITS_BWD] = keel_cuda_bce_with_logits_bwd,
    },
    .sgd_update = cuda_sgd_update,
    .adam_update = cuda_adam_update,
};
