/* The compiled plan, shared by the planner (plan.c), the executor
 * (execute.c) and the training code, which runs fused optimiser updates
 * over the parameter blocks. */
#ifndef KEEL_PLAN_INTERNAL_H
#define KEEL_PLAN_INTERNAL_H

#include "backend.h"
#include "keel/plan.h"

/* One parameter or state buffer and where it lives. Offsets number one
 * layout of all trainable parameters and one of all state buffers, in
 * which each device's share is a contiguous range (see keel_plan_device). */
typedef struct keel_plan_param {
    keel_node *node;
    int64_t offset;        /* in floats, into the trainable or the state layout */
    int64_t numel;
    int device;            /* index into plan->devices: where its first reader runs */
} keel_plan_param;

/* One device a plan runs on: its own arena and workspace, its share of the
 * parameters, and the schedule positions it executes, in order. */
typedef struct keel_plan_device {
    const keel_backend *backend;
    keel_device *device;
    int index;                  /* N of "cpu:N" / "cuda:N" */
    bool owned;                 /* opened by the plan (a split CPU), closed with it */
    char name[32];              /* "cpu:1" */
    void *arena;
    int64_t arena_bytes, tensor_bytes;
    void *workspace;
    int64_t workspace_bytes;
    /* Its share of the layouts: trainable floats [param_begin, param_begin
     * + param_floats) and state floats [state_begin, ...), held in
     * plan->param_blocks[d], grad_blocks[d] and state_blocks[d]. */
    int64_t param_begin, param_floats, state_begin, state_floats;
    int *positions;
    int n_positions;
    double busy_seconds;        /* time spent in kernels, when profiling */
    double copy_seconds;        /* time spent copying tensors in (copy_between_devices) */
} keel_plan_device;

/* A copy a device queues, when the plan copies between devices: another
 * device's tensor into this device's memory before a node reads it, or a
 * gradient into its parameter's block after the backward pass. A list ends
 * with bytes == 0. */
typedef struct keel_plan_copy {
    const keel_node *node;      /* whose value is copied, for messages */
    keel_device *dst_device, *src_device;
    void *dst;
    const void *src;
    int64_t bytes;
} keel_plan_copy;

/* A region to fill with NaN once its last reader has run (poison_dead). */
typedef struct keel_poison {
    float *ptr;
    int64_t count;
} keel_poison;

typedef struct keel_workers keel_workers;

/* An input that page-locked batches reach through a staging buffer on the
 * device, copied there while the previous step still runs (backend
 * copy_in) and moved into place when the next forward pass starts. */
typedef struct keel_staged_input {
    void *staging;
    void *copied, *staging_free;  /* events */
    bool pending;                 /* a copy waits to be moved in */
} keel_staged_input;

struct keel_plan {
    keel_graph *graph;
    keel_context *ctx;
    /* The first device (devices[0]): inputs live there, and it orders the
     * others (execute.c). With one device, everything lives there. */
    const keel_backend *backend;
    keel_device *device;
    int device_index;
    keel_plan_device *devices;
    int n_devices;

    int n_sched;
    keel_node **sched;            /* nodes to run, forward ones first */
    int n_forward;
    int *pos_of;                  /* by node id: schedule position, -1 unscheduled */
    int *device_of;               /* by schedule position: index into devices */
    int **cross_deps;             /* by position: positions on other devices it waits for, -1 ends */
    void **out_ptr;               /* by node id: output (NULL if not placed) */
    void **aux_ptr;               /* by node id */
    void ***in_ptrs;              /* by schedule position: input pointers */
    void **algo;                  /* by schedule position */
    keel_poison **dying;          /* by schedule position, ptr NULL ends; when poison_dead */
    bool poison_dead;
    keel_workers *workers;        /* one thread per device, when there are several */
    /* Devices that queue work (CUDA streams), when there are several: by
     * position, the event recorded after a node another device reads (NULL
     * for the rest); by device, the event that ends its part of a range, and
     * on devices[0] the one that starts a range. */
    void **node_events;
    void **end_events;
    void *start_event;
    keel_staged_input *staged;    /* by node id (inputs), when the backend copies in; else NULL */
    /* Devices that do not read each other's memory in place: by position,
     * the copies queued before the node (NULL when the plan does not copy
     * between devices). */
    bool copy_between_devices;
    keel_plan_copy **copies_before;
    /* Gradients that could not be written into the gradient block, copied
     * there on the parameter device after each backward pass. */
    keel_plan_copy *grad_copies;

    int64_t arena_bytes, tensor_bytes, workspace_bytes; /* summed over devices */

    /* Parameters live on the device that first reads them, as AlexNet's
     * towers keep their own weights: per device, its trainable parameters in
     * one block (and their gradients in a mirror block), its running
     * statistics in another; n_devices entries each. With one device, the
     * blocks [0] hold everything. */
    keel_plan_param *params;
    int n_params;
    float **param_blocks, **grad_blocks, **state_blocks;
    int64_t param_floats, state_floats;   /* the whole layouts, all devices */

    bool profiling;
    double *node_seconds;         /* by schedule position, when profiling */
    int64_t *node_runs;

    /* Called after each backward node finishes (data parallelism starts
     * gradient all-reduces while the backward pass is still running). */
    void (*on_backward_node)(keel_plan *plan, const keel_node *node, void *user);
    void *on_backward_user;

    uint64_t seed;
    uint64_t step;
    bool forward_done, forward_was_training;
};

/* Looks up a parameter or state buffer by name (NULL if absent). */
const keel_plan_param *keel_plan_find_param(const keel_plan *plan, const char *name);
/* Device pointer of a parameter's values / gradient. */
float *keel_plan_param_ptr(const keel_plan *plan, const keel_plan_param *p);
float *keel_plan_grad_ptr(const keel_plan *plan, const keel_plan_param *p);

/* Blocks laid out like the parameters' (trainable) or the statistics' (not):
 * one per device, holding that device's share (optimiser state mirrors the
 * parameter blocks this way). Host arrays hold the whole layout. */
keel_status keel_plan_blocks_alloc(keel_plan *plan, bool trainable, float ***blocks);
void keel_plan_blocks_free(keel_plan *plan, float **blocks);
keel_status keel_plan_blocks_fill(keel_plan *plan, bool trainable, float *const *blocks, float value);
keel_status keel_plan_blocks_download(keel_plan *plan, bool trainable, float *const *blocks, float *host);
keel_status keel_plan_blocks_upload(keel_plan *plan, bool trainable, float *const *blocks, const float *host);

/* The context's device for a backend and index, opened on first use. */
keel_status keel_context_device(keel_context *ctx, const keel_backend *backend, int index, keel_device **out);

/* Fills a host buffer with a parameter's initial values (init.c). */
keel_status keel_param_init(const keel_node *p, float *dst, uint64_t seed);

/* plan_devices.c: parses and opens opts->devices (connecting peers, or
 * choosing to copy between them); lists each position's dependencies on
 * other devices; creates and destroys the events that order the queues. */
keel_status keel_plan_open_devices(keel_plan *plan, const char *spec);
keel_status keel_plan_list_cross_deps(keel_plan *plan);
keel_status keel_plan_create_events(keel_plan *plan);
void keel_plan_destroy_events(keel_plan *plan);

/* execute.c: runs schedule positions [begin, end), on one thread per device
 * when there are several. */
keel_status keel_plan_run_range(keel_plan *plan, int begin, int end, bool training);
/* Starts and stops the per-device threads (several devices only). */
keel_status keel_workers_start(keel_plan *plan);
void keel_workers_stop(keel_plan *plan);

#endif
