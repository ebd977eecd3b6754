/* Contexts, compiled plans and running them. */
#ifndef KEEL_PLAN_H
#define KEEL_PLAN_H

#include "graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_context keel_context;
typedef struct keel_plan keel_plan;

typedef struct keel_context_opts {
    int threads;          /* CPU worker threads; 0 means all cores */
    keel_log_fn log;      /* NULL: warnings and errors to stderr */
    void *log_user;
    keel_log_level log_level; /* lines above this level are dropped; 0 = ERROR.. use KEEL_LOG_INFO for progress */
} keel_context_opts;

/* opts may be NULL. The context owns the devices it opens. */
keel_status keel_context_create(keel_context **out, const keel_context_opts *opts);
void keel_context_destroy(keel_context *ctx);
void keel_context_log(keel_context *ctx, keel_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
int keel_context_threads(const keel_context *ctx);

/* Devices present: "cpu" always; "cuda:N" when the CUDA backend is built and
 * a GPU is found. */
typedef struct keel_device_info {
    char name[64];          /* "cpu", "cuda:0" */
    char description[128];  /* "NVIDIA H200", "x86_64, 2 threads" */
    int64_t total_memory;   /* bytes */
    int64_t free_memory;
    int compute_major, compute_minor; /* CUDA only */
} keel_device_info;

int keel_device_count(keel_context *ctx);
keel_status keel_device_get(keel_context *ctx, int index, keel_device_info *info);

typedef struct keel_plan_opts {
    /* Comma-separated devices, e.g. "cpu", "cuda:0", "cuda:0,cuda:1".
     * NULL means "cpu". Placement groups map onto them round-robin. */
    const char *devices;
    uint64_t seed;         /* parameter initialisation and dropout */
    bool deterministic;    /* deterministic algorithms only */
    bool strict_fp32;      /* CUDA: no TF32 tensor-core convolution */
    bool autotune;         /* CUDA: time candidate algorithms once */
    bool poison_dead;      /* testing: fill every buffer with NaN once its
                              last reader has run */
    bool copy_between_devices; /* several devices: copy what another device
                              produced into a device's own memory before its
                              nodes read it, instead of reading it in place.
                              Chosen by itself for GPUs without a peer-to-peer
                              path; on CPU devices it measures the copies. */
} keel_plan_opts;

/* Turns a built (and usually differentiated) graph into an executable plan:
 * schedule, memory plan, parameter storage and per-node algorithm choice.
 * Parameters are initialised from opts->seed. The graph must outlive the
 * plan. opts may be NULL. */
keel_status keel_plan_compile(keel_plan **out, keel_graph *g, keel_context *ctx, const keel_plan_opts *opts);
void keel_plan_destroy(keel_plan *plan);

/* Copies host data (float32, or int32 for labels) into an input node. */
keel_status keel_plan_set_input(keel_plan *plan, const keel_node *input, const void *data);
/* Runs the forward nodes. training = false uses evaluation semantics
 * (dropout off, batch norm on running statistics) and skips nothing else. */
keel_status keel_plan_forward(keel_plan *plan, bool training);
/* Runs the gradient nodes; needs a training forward first. */
keel_status keel_plan_backward(keel_plan *plan);
/* Copies a kept node's value (loss, outputs, gradients) to host memory. */
keel_status keel_plan_read(keel_plan *plan, const keel_node *x, void *dst);

/* Host memory for the batches a program feeds the plan (pass them as
 * keel_image_loader_opts.host_alloc / host_free): 64-byte aligned, and
 * page-locked where the plan's device copies from such memory faster (CUDA
 * pinned memory), so input uploads can run asynchronously. NULL when out of
 * memory. Free every block with keel_plan_host_free of the same plan, before
 * destroying the plan. */
void *keel_plan_host_alloc(keel_plan *plan, size_t bytes);
void keel_plan_host_free(keel_plan *plan, void *ptr);

/* Parameters by name ("conv1.weight"); count is in elements and must match. */
keel_status keel_plan_param_get(keel_plan *plan, const char *name, float *dst, int64_t count);
keel_status keel_plan_param_set(keel_plan *plan, const char *name, const float *src, int64_t count);
keel_status keel_plan_grad_get(keel_plan *plan, const char *name, float *dst, int64_t count);

/* Every parameter and state buffer, in graph order. */
typedef struct keel_param_info {
    const char *name;
    int ndim;
    int64_t shape[KEEL_MAX_DIMS];
    bool trainable;        /* false for batch-norm running statistics */
} keel_param_info;

int keel_plan_param_count(const keel_plan *plan);
keel_status keel_plan_param_info(const keel_plan *plan, int index, keel_param_info *info);

typedef struct keel_memory_report {
    int64_t arena_bytes;      /* activations, gradients, workspaces, as packed */
    int64_t tensor_bytes;     /* the sum of every tensor the arena holds */
    int64_t param_bytes;      /* parameters + state buffers */
    int64_t grad_bytes;
    int64_t workspace_bytes;
    /* The caching allocators of the plan's devices (CUDA; zero on the CPU),
     * shared by every plan on a device: bytes held from the driver (in use
     * or cached for reuse), in use now, the most in use at once, and how many
     * allocations reached the driver or came from the cache. A training
     * step adds to neither count. */
    int64_t pool_reserved_bytes, pool_in_use_bytes, pool_peak_bytes;
    int64_t pool_driver_allocs, pool_reuses;
} keel_memory_report;

keel_status keel_plan_memory(const keel_plan *plan, keel_memory_report *report);

/* ---- profiling, for benchmarks (keel bench --per-layer) -------------------
 * When on, every node's run is timed on the host with the device
 * synchronised before and after it, so a profiled step is slower than a
 * plain one; times accumulate until keel_plan_profile_reset. */
keel_status keel_plan_profile(keel_plan *plan, bool on);
void keel_plan_profile_reset(keel_plan *plan);

typedef struct keel_node_time {
    const char *node;      /* "conv1", "conv1.dx" */
    const char *op;        /* "conv2d", "conv2d_bwd_data" */
    const char *layer;     /* the forward layer it belongs to: "conv1" for both */
    bool backward;
    double seconds;        /* summed over runs */
    int64_t runs;
} keel_node_time;

/* One entry per scheduled node, in schedule order. */
int keel_plan_profile_count(const keel_plan *plan);
keel_status keel_plan_profile_get(const keel_plan *plan, int index, keel_node_time *out);

/* Per device of the plan, while profiling: time spent running its nodes
 * and time spent copying other devices' tensors into its memory (0 where
 * devices read each other's memory in place: logical CPU devices, and GPUs
 * with a peer-to-peer path, unless copy_between_devices). */
typedef struct keel_device_time {
    const char *device;    /* "cpu:1" */
    double compute_seconds;
    double copy_seconds;
    int64_t arena_bytes;
    int64_t param_bytes;   /* the parameters that live there (with their
                              gradients) and its running statistics */
} keel_device_time;

int keel_plan_device_count(const keel_plan *plan);
keel_status keel_plan_device_time(const keel_plan *plan, int index, keel_device_time *out);

#ifdef __cplusplus
}
#endif
#endif
