/* The CPU backend: host memory, OpenMP worker threads, and the kernel table.
 * It is the reference every other backend is tested against. */
#include "cpu/cpu.h"
#ifdef KEEL_HAVE_DNNL
#include "cpu/conv_dnnl.h"
/* oneDNN's primitives, with conv.c's im2col path behind them. */
#define CONV_PREPARE keel_cpu_conv_dnnl_prepare
#define CONV_FORWARD keel_cpu_conv_dnnl_forward
#define CONV_BWD_DATA keel_cpu_conv_dnnl_bwd_data
#define CONV_BWD_WEIGHT keel_cpu_conv_dnnl_bwd_weight
#define CONV_RELEASE keel_cpu_conv_dnnl_release
#else
#define CONV_PREPARE keel_cpu_conv2d_prepare
#define CONV_FORWARD keel_cpu_conv2d
#define CONV_BWD_DATA keel_cpu_conv2d_bwd_data
#define CONV_BWD_WEIGHT keel_cpu_conv2d_bwd_weight
#define CONV_RELEASE NULL
#endif
#include "ops/math.h"
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct keel_device {
    int threads;
};

/* OpenBLAS's own thread count; absent from reference CBLAS. */
extern void openblas_set_num_threads(int) __attribute__((weak));
extern int openblas_get_num_threads(void) __attribute__((weak));

int keel_cpu_threads(const keel_device *device)
{
    return device->threads;
}

static int cpu_device_count(void)
{
    return 1;
}

static keel_status cpu_device_info(int index, keel_device_info *info)
{
    if (index != 0)
        return keel_fail(KEEL_ERR_NOT_FOUND, "the CPU is device 0");
    snprintf(info->name, sizeof info->name, "cpu");
    snprintf(info->description, sizeof info->description, "host CPU, %d cores", omp_get_num_procs());
    long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    info->total_memory = pages > 0 ? (int64_t)pages * page : 0;
    info->free_memory = avail > 0 ? (int64_t)avail * page : 0;
    return KEEL_OK;
}

/* Any index opens a logical CPU device: a plan split over cpu:0,cpu:1 gives
 * each its own threads and arena on the one host. */
static keel_status cpu_open(keel_device **out, int index, int threads)
{
    (void)index;
    keel_device *d = calloc(1, sizeof *d);
    if (!d)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    d->threads = threads > 0 ? threads : omp_get_num_procs();
    /* OpenBLAS's pool is process-wide: grow it for the widest device, never
     * shrink it under another plan's feet. */
    if (openblas_set_num_threads && openblas_get_num_threads && openblas_get_num_threads() < d->threads)
        openblas_set_num_threads(d->threads);
    *out = d;
    return KEEL_OK;
}

static void cpu_close(keel_device *d)
{
    free(d);
}

static void *cpu_alloc(keel_device *d, size_t bytes)
{
    (void)d;
    return keel_aligned_alloc(bytes);
}

static void cpu_free(keel_device *d, void *p)
{
    (void)d;
    keel_aligned_free(p);
}

static keel_status cpu_copy(keel_device *d, void *dst, const void *src, size_t bytes)
{
    (void)d;
    if (bytes)
        memcpy(dst, src, bytes);
    return KEEL_OK;
}

/* Logical CPU devices share the host's memory; a plan copies between them
 * only when asked to (keel_plan_opts.copy_between_devices). */
static keel_status cpu_copy_between(keel_device *queue, keel_device *dst_device, void *dst, keel_device *src_device,
                                    const void *src, size_t bytes)
{
    (void)dst_device;
    (void)src_device;
    return cpu_copy(queue, dst, src, bytes);
}

static keel_status cpu_fill(keel_device *d, void *dst, float value, size_t count)
{
    float *p = dst;
    #pragma omp parallel for num_threads(d->threads) schedule(static) if (count > 65536)
    for (size_t i = 0; i < count; i++)
        p[i] = value;
    return KEEL_OK;
}

static keel_status cpu_sync(keel_device *d)
{
    (void)d;
    return KEEL_OK;
}

static keel_status cpu_memory_info(keel_device *d, int64_t *free_bytes, int64_t *total_bytes)
{
    (void)d;
    keel_device_info info = {0};
    cpu_device_info(0, &info);
    *free_bytes = info.free_memory;
    *total_bytes = info.total_memory;
    return KEEL_OK;
}

static keel_status cpu_sgd_update(keel_device *d, float *w, float *v, const float *g, int64_t n, float lr,
                                  float momentum, float weight_decay, bool nesterov)
{
    #pragma omp parallel for num_threads(d->threads) schedule(static)
    for (int64_t i = 0; i < n; i++)
        keel_sgd_update(&w[i], &v[i], g[i], lr, momentum, weight_decay, nesterov);
    return KEEL_OK;
}

static keel_status cpu_adam_update(keel_device *d, float *w, float *m, float *v, const float *g, int64_t n, float lr,
                                   float beta1, float beta2, float eps, float weight_decay, float c1, float c2)
{
    #pragma omp parallel for num_threads(d->threads) schedule(static)
    for (int64_t i = 0; i < n; i++)
        keel_adam_update(&w[i], &m[i], &v[i], g[i], lr, beta1, beta2, eps, weight_decay, c1, c2);
    return KEEL_OK;
}

const keel_backend keel_cpu_backend = {
    .name = "cpu",
    .device_count = cpu_device_count,
    .device_info = cpu_device_info,
    .open = cpu_open,
    .close = cpu_close,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy_between = cpu_copy_between,
    .fill = cpu_fill,
    .sync = cpu_sync,
    .memory_info = cpu_memory_info,
    .prepare = {
        [KEEL_OP_CONV2D] = CONV_PREPARE,
        [KEEL_OP_CONV2D_BWD_DATA] = CONV_PREPARE,
        [KEEL_OP_CONV2D_BWD_WEIGHT] = CONV_PREPARE,
        [KEEL_OP_CONV_TRANSPOSE2D] = CONV_PREPARE,
    },
    .release_algo = CONV_RELEASE,
    .run = {
        [KEEL_OP_FILL] = keel_cpu_fill,
        [KEEL_OP_COPY] = keel_cpu_copy,
        [KEEL_OP_CONV2D] = CONV_FORWARD,
        [KEEL_OP_CONV2D_BWD_DATA] = CONV_BWD_DATA,
        [KEEL_OP_CONV2D_BWD_WEIGHT] = CONV_BWD_WEIGHT,
        [KEEL_OP_CONV_TRANSPOSE2D] = CONV_BWD_DATA,
        [KEEL_OP_BIAS_GRAD] = keel_cpu_bias_grad,
        [KEEL_OP_MAX_POOL2D] = keel_cpu_max_pool2d,
        [KEEL_OP_MAX_POOL2D_BWD] = keel_cpu_max_pool2d_bwd,
        [KEEL_OP_AVG_POOL2D] = keel_cpu_avg_pool2d,
        [KEEL_OP_AVG_POOL2D_BWD] = keel_cpu_avg_pool2d_bwd,
        [KEEL_OP_LINEAR] = keel_cpu_linear,
        [KEEL_OP_LINEAR_BWD_DATA] = keel_cpu_linear_bwd_data,
        [KEEL_OP_LINEAR_BWD_WEIGHT] = keel_cpu_linear_bwd_weight,
        [KEEL_OP_ACTIVATION] = keel_cpu_activation,
        [KEEL_OP_ACTIVATION_BWD] = keel_cpu_activation_bwd,
        [KEEL_OP_ADD] = keel_cpu_add,
        [KEEL_OP_SCALE] = keel_cpu_scale,
        [KEEL_OP_DROPOUT] = keel_cpu_dropout,
        [KEEL_OP_DROPOUT_BWD] = keel_cpu_dropout_bwd,
        [KEEL_OP_LRN] = keel_cpu_lrn,
        [KEEL_OP_LRN_BWD] = keel_cpu_lrn_bwd,
        [KEEL_OP_BATCH_NORM] = keel_cpu_batch_norm,
        [KEEL_OP_BATCH_NORM_BWD_GAMMA] = keel_cpu_batch_norm_bwd_gamma,
        [KEEL_OP_BATCH_NORM_BWD_DATA] = keel_cpu_batch_norm_bwd_data,
        [KEEL_OP_CONCAT] = keel_cpu_concat,
        [KEEL_OP_SLICE] = keel_cpu_slice,
        [KEEL_OP_RESHAPE] = keel_cpu_copy, /* never called: the planner makes reshapes views */
        [KEEL_OP_SOFTMAX] = keel_cpu_softmax,
        [KEEL_OP_SOFTMAX_BWD] = keel_cpu_softmax_bwd,
        [KEEL_OP_SOFTMAX_CROSS_ENTROPY] = keel_cpu_softmax_cross_entropy,
        [KEEL_OP_SOFTMAX_CROSS_ENTROPY_BWD] = keel_cpu_softmax_cross_entropy_bwd,
        [KEEL_OP_MSE_LOSS] = keel_cpu_mse_loss,
        [KEEL_OP_MSE_LOSS_BWD] = keel_cpu_mse_loss_bwd,
        [KEEL_OP_BCE_WITH_LOGITS] = keel_cpu_bce_with_logits,
        [KEEL_OP_BCE_WITH_LOGITS_BWD] = keel_cpu_bce_with_logits_bwd,
    },
    .sgd_update = cpu_sgd_update,
    .adam_update = cpu_adam_update,
};
