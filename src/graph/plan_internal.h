/* The compiled plan, shared by the planner (plan.c) and the training code,
 * which runs fused optimiser updates over the parameter blocks. */
#ifndef KEEL_PLAN_INTERNAL_H
#define KEEL_PLAN_INTERNAL_H

#include "backend.h"
#include "keel/plan.h"

/* One parameter or state buffer and where it lives. */
typedef struct keel_plan_param {
    keel_node *node;
    int64_t offset;        /* in floats, into params (trainable) or state */
    int64_t numel;
} keel_plan_param;

struct keel_plan {
    keel_graph *graph;
    keel_context *ctx;
    const keel_backend *backend;
    keel_device *device;
    int device_index;

    int n_sched;
    keel_node **sched;            /* nodes to run, forward ones first */
    int n_forward;
    void **out_ptr;               /* by node id: output (NULL if not placed) */
    void **aux_ptr;               /* by node id */
    void ***in_ptrs;              /* by schedule index: input pointers */
    void **algo;                  /* by schedule index */
    int64_t **dying;              /* by schedule index: (offset, count) floats to poison after it, -1 ends */
    bool poison_dead;

    void *arena;
    int64_t arena_bytes, tensor_bytes;
    void *workspace;
    int64_t workspace_bytes;

    /* Parameters: trainable ones in one block (and their gradients in a
     * mirror block), running statistics in another. */
    keel_plan_param *params;
    int n_params;
    float *param_block, *grad_block, *state_block;
    int64_t param_floats, state_floats;

    bool profiling;
    double *node_seconds;         /* by schedule index, when profiling */
    int64_t *node_runs;

    uint64_t seed;
    uint64_t step;
    bool forward_done, forward_was_training;
};

/* Looks up a parameter or state buffer by name (NULL if absent). */
const keel_plan_param *keel_plan_find_param(const keel_plan *plan, const char *name);
/* Device pointer of a parameter's values / gradient. */
float *keel_plan_param_ptr(const keel_plan *plan, const keel_plan_param *p);

/* The context's device for a backend and index, opened on first use. */
keel_status keel_context_device(keel_context *ctx, const keel_backend *backend, int index, keel_device **out);

/* Fills a host buffer with a parameter's initial values (init.c). */
keel_status keel_param_init(const keel_node *p, float *dst, uint64_t seed);

#endif
