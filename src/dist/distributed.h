/* Data parallelism over MPI ranks: one device per rank, a disjoint shard of
 * every batch, gradients averaged across ranks after each backward pass.
 *
 * Gradients are reduced in buckets of parameters, last layer first (the
 * order the backward pass finishes them). A bucket's all-reduce starts as
 * soon as its last gradient is written, while the backward pass goes on
 * with earlier layers, as PyTorch's DistributedDataParallel and Horovod do. */
#ifndef KEEL_DISTRIBUTED_H
#define KEEL_DISTRIBUTED_H

#include "graph/plan_internal.h"

typedef struct keel_dist keel_dist;

/* True when this libkeel was built with MPI. */
bool keel_dist_available(void);
/* Joins the MPI job (initialising MPI unless the program did) and attaches
 * to a compiled single-device plan. timeout_seconds bounds every wait for
 * the other ranks (0: 300 s): a rank that died makes the others fail with a
 * message within that time, never hang. */
keel_status keel_dist_create(keel_dist **out, keel_plan *plan, double timeout_seconds);
/* Leaves the job; finalises MPI when keel_dist_create initialised it. */
void keel_dist_destroy(keel_dist *d);

int keel_dist_rank(const keel_dist *d);
int keel_dist_size(const keel_dist *d);

/* Makes every rank's parameters and running statistics equal rank 0's. */
keel_status keel_dist_broadcast_params(keel_dist *d);
/* Call before each backward pass; then after it, keel_dist_finish_grads
 * waits for every bucket and leaves the mean gradient in the plan. */
void keel_dist_begin_grads(keel_dist *d);
keel_status keel_dist_finish_grads(keel_dist *d);
/* Sums `count` doubles across ranks, in place (metrics). */
keel_status keel_dist_sum(keel_dist *d, double *values, int count);
/* Averages the running statistics (batch norm) across ranks; optional
 * before evaluating or saving, since each rank keeps its own. */
keel_status keel_dist_average_state(keel_dist *d);

#endif
