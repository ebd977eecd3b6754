/* The context: thread count, logging, and the devices it has opened. */
#include "graph/plan_internal.h"
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct open_device {
    const keel_backend *backend;
    int index;
    keel_device *device;
} open_device;

struct keel_context {
    int threads;
    keel_log_fn log;
    void *log_user;
    keel_log_level log_level;
    open_device *devices;
    int n_devices;
};

static void stderr_log(keel_log_level level, const char *message, void *user)
{
    (void)user;
    static const char *prefix[] = {"error: ", "warning: ", "", ""};
    fprintf(stderr, "%s%s\n", prefix[level], message);
}

keel_status keel_context_create(keel_context **out, const keel_context_opts *opts)
{
    if (!out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_context_create: out is NULL");
    *out = NULL;
    keel_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory creating a context");
    ctx->threads = opts && opts->threads > 0 ? opts->threads : omp_get_num_procs();
    ctx->log = opts && opts->log ? opts->log : stderr_log;
    ctx->log_user = opts ? opts->log_user : NULL;
    ctx->log_level = opts && opts->log ? opts->log_level : KEEL_LOG_WARN;
    if (opts && opts->threads < 0) {
        free(ctx);
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "threads must be >= 0 (0 means all cores), got %d",
                         opts->threads);
    }
    *out = ctx;
    return KEEL_OK;
}

void keel_context_destroy(keel_context *ctx)
{
    if (!ctx)
        return;
    for (int i = 0; i < ctx->n_devices; i++)
        ctx->devices[i].backend->close(ctx->devices[i].device);
    free(ctx->devices);
    free(ctx);
}

void keel_context_log(keel_context *ctx, keel_log_level level, const char *fmt, ...)
{
    if (!ctx || level > ctx->log_level)
        return;
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    ctx->log(level, message, ctx->log_user);
}

int keel_context_threads(const keel_context *ctx)
{
    return ctx ? ctx->threads : 1;
}

keel_status keel_context_device(keel_context *ctx, const keel_backend *backend, int index, keel_device **out)
{
    for (int i = 0; i < ctx->n_devices; i++)
        if (ctx->devices[i].backend == backend && ctx->devices[i].index == index) {
            *out = ctx->devices[i].device;
            return KEEL_OK;
        }
    open_device *grown = realloc(ctx->devices, ((size_t)ctx->n_devices + 1) * sizeof *grown);
    if (!grown)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory opening a device");
    ctx->devices = grown;
    keel_device *device = NULL;
    keel_status st = backend->open(&device, index, ctx->threads);
    if (st != KEEL_OK)
        return keel_fail_prefix(st, "opening %s:%d: ", backend->name, index);
    ctx->devices[ctx->n_devices++] = (open_device){backend, index, device};
    *out = device;
    return KEEL_OK;
}

/* The backends built into this library, in listing order. */
static const keel_backend *const backends[] = {
    &keel_cpu_backend,
#ifdef KEEL_HAVE_CUDA
    &keel_cuda_backend,
#endif
};

int keel_device_count(keel_context *ctx)
{
    (void)ctx;
    int n = 0;
    for (size_t b = 0; b < sizeof backends / sizeof *backends; b++)
        n += backends[b]->device_count();
    return n;
}

keel_status keel_device_get(keel_context *ctx, int index, keel_device_info *info)
{
    (void)ctx;
    for (size_t b = 0; b < sizeof backends / sizeof *backends; b++) {
        int n = backends[b]->device_count();
        if (index < n) {
            memset(info, 0, sizeof *info);
            return backends[b]->device_info(index, info);
        }
        index -= n;
    }
    return keel_fail(KEEL_ERR_NOT_FOUND, "no device number %d", index);
}

const char *keel_version(void)
{
#ifdef KEEL_HAVE_CUDA
    return "0.1.0 (cpu, cuda)";
#else
    return "0.1.0 (cpu)";
#endif
}
