/* The backend contract: a table of function pointers per device kind.
 * `prepare` runs at compile time (algorithm choice, workspace size); `run`
 * executes one node. An op without a kernel is reported by keel_plan_compile
 * as "op 'lrn' is not supported on backend 'cuda'". */
#ifndef KEEL_BACKEND_H
#define KEEL_BACKEND_H

#include "graph/graph_internal.h"
#include "keel/plan.h"

typedef struct keel_device keel_device;

/* Everything a kernel needs to run one node. Pointers are device memory of
 * the node's device; for the CPU backend, host memory. */
typedef struct keel_launch {
    const keel_node *node;
    void *out;                 /* the node's output */
    void *const *in;           /* in[i]: the output of node->inputs[i] */
    void *aux;                 /* the node's own aux buffer (node->aux_bytes) */
    void *fwd_aux;             /* gradient nodes: the aux buffer of node->fwd */
    void *workspace;           /* at least the bytes prepare asked for */
    int64_t workspace_bytes;
    void *algo;                /* what prepare chose for this node, or NULL */
    keel_device *device;
    bool training;
    uint64_t seed;             /* plan seed, for dropout */
    uint64_t step;             /* forward count: dropout's forward and backward agree */
} keel_launch;

typedef keel_status (*keel_kernel_fn)(const keel_launch *launch);
/* Chooses an algorithm for `node` and reports its workspace. *algo is owned by
 * the backend and released with release_algo. */
typedef keel_status (*keel_prepare_fn)(keel_device *device, const keel_node *node, int64_t *workspace_bytes,
                                       void **algo);

typedef struct keel_backend {
    const char *name;          /* "cpu", "cuda" */
    /* Devices of this kind present now (0 when none) and their description. */
    int (*device_count)(void);
    keel_status (*device_info)(int index, keel_device_info *info);
    keel_status (*open)(keel_device **out, int index, int threads);
    void (*close)(keel_device *device);
    void *(*alloc)(keel_device *device, size_t bytes);  /* NULL on failure */
    void (*free)(keel_device *device, void *p);
    keel_status (*upload)(keel_device *device, void *dst, const void *src, size_t bytes);
    keel_status (*download)(keel_device *device, void *dst, const void *src, size_t bytes);
    keel_status (*fill)(keel_device *device, void *dst, float value, size_t count);
    keel_status (*sync)(keel_device *device);
    /* Adds the device's caching allocator statistics to the pool_ fields
     * of a memory report. NULL: no caching allocator (CPU). */
    void (*pool_report)(keel_device *device, keel_memory_report *report);
    /* Free and total memory of the device in bytes. */
    keel_status (*memory_info)(keel_device *device, int64_t *free_bytes, int64_t *total_bytes);
    /* The plan's choices that shape algorithm selection (deterministic,
     * strict_fp32, autotune); called before the plan's prepare calls. NULL:
     * the backend has nothing to choose. */
    keel_status (*configure)(keel_device *device, const keel_plan_opts *opts);
    /* Devices of one plan that queue their work (CUDA streams): an event
     * is a marker that event_record puts in the device's queue behind the
     * work queued so far, and event_wait makes the device's later work wait
     * until the marker has passed, whichever device queued it. NULL where a
     * device's work is done when the call returns (CPU). */
    keel_status (*event_create)(keel_device *device, void **event);
    void (*event_destroy)(keel_device *device, void *event);
    keel_status (*event_record)(keel_device *device, void *event);
    keel_status (*event_wait)(keel_device *device, void *event);
    /* Lets kernels on `device` read and write `peer`'s memory (two GPUs of
     * one plan); nothing to do for two queues on one GPU. *direct is false
     * (and nothing fails) where there is no such path: the plan then copies
     * tensors between the two with copy_between. NULL: devices share memory. */
    keel_status (*connect_peer)(keel_device *device, keel_device *peer, bool *direct);
    /* Copies bytes from `src`, memory of `src_device`, to `dst`, memory of
     * `dst_device`, queued on `queue` (one of the two) behind its earlier
     * work. */
    keel_status (*copy_between)(keel_device *queue, keel_device *dst_device, void *dst, keel_device *src_device,
                                const void *src, size_t bytes);
    /* Page-locked host memory, which the device reads without a bounce
     * buffer (CUDA pinned memory); NULL: plain host memory serves. */
    void *(*host_alloc)(keel_device *device, size_t bytes);
    void (*host_free)(keel_device *device, void *ptr);
    /* Input copies that overlap the step running on the device. copy_in
     * starts copying from page-locked host memory into device memory
     * `staging` on a queue of its own, after `staging_free` has passed, and
     * records `copied` there; *started is false (and nothing happens) for
     * other host memory. copy_in_finish, queued when the next forward pass
     * starts, waits on the host until the copy is done (the caller may then
     * reuse its buffer), moves the batch from staging to `dst` in the
     * device's queue, and records `staging_free` behind that. The events come
     * from event_create. NULL: inputs are plain uploads. */
    keel_status (*copy_in)(keel_device *device, void *staging, const void *src, size_t bytes, void *copied,
                           void *staging_free, bool *started);
    keel_status (*copy_in_finish)(keel_device *device, void *dst, const void *staging, size_t bytes, void *copied,
                                  void *staging_free);
    keel_prepare_fn prepare[KEEL_OP_COUNT];   /* NULL: no workspace, no algorithm */
    void (*release_algo)(keel_device *device, void *algo);
    keel_kernel_fn run[KEEL_OP_COUNT];         /* NULL: op unsupported */
    /* Fused optimiser updates over contiguous blocks of n floats. */
    keel_status (*sgd_update)(keel_device *device, float *w, float *v, const float *g, int64_t n, float lr,
                              float momentum, float weight_decay, bool nesterov);
    keel_status (*adam_update)(keel_device *device, float *w, float *m, float *v, const float *g, int64_t n,
                               float lr, float beta1, float beta2, float eps, float weight_decay, float c1,
                               float c2);
} keel_backend;

extern const keel_backend keel_cpu_backend;
#ifdef KEEL_HAVE_CUDA
extern const keel_backend keel_cuda_backend;
#endif

/* The CPU device: worker count for OpenMP regions. */
int keel_cpu_threads(const keel_device *device);

#endif
