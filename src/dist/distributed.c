/* Data parallelism over MPI (see distributed.h). */
#include "dist/distributed.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef KEEL_HAVE_MPI
#include <mpi.h>
#include <stdio.h>
#ifdef KEEL_HAVE_NCCL
#include "cuda/cuda.h"
#endif

/* About 4 MiB of gradients per all-reduce: large enough to run at network
 * speed, small enough that the first buckets finish early in the backward. */
#define BUCKET_FLOATS (1 << 20)

typedef struct bucket {
    int64_t start, count;   /* floats in the gradient block */
    int pending;            /* gradients not yet written this step */
    int total;
    bool started;
    MPI_Request request;
} bucket;

struct keel_dist {
    keel_plan *plan;
    int rank, size;
    bool we_initialised;
    bool failed;
    double timeout;
    char error[512];        /* why failed is set */
    bool host_memory;       /* the gradient block is host memory (CPU) */
    float *staging;         /* host copy of the gradients otherwise, without NCCL */
#ifdef KEEL_HAVE_NCCL
    keel_nccl *nccl;        /* GPU plans: collectives on the device, or NULL */
#endif
    bucket *buckets;
    int n_buckets;
    MPI_Request *requests;  /* one per bucket, for the wait (no allocation in a step) */
    int *bucket_of_node;    /* by node id: the bucket a finished node completes, -1 */
};

bool keel_dist_available(void)
{
    return true;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Remembers the first failure: it may happen on an executor thread, inside
 * the backward pass, and is reported by keel_dist_finish_grads. */
static keel_status failed(keel_dist *d, keel_status st)
{
    if (!d->failed)
        snprintf(d->error, sizeof d->error, "%s", keel_last_error());
    d->failed = true;
    return st;
}

static keel_status mpi_error(keel_dist *d, int code, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(code, text, &len);
    return failed(d, keel_fail(KEEL_ERR_BACKEND, "rank %d: %s failed: %s", d->rank, what, text));
}

/* Waits for requests, polling, for at most the timeout. */
static keel_status wait_all(keel_dist *d, int count, MPI_Request *requests, const char *what)
{
    double deadline = now() + d->timeout;
    for (;;) {
        int done = 0;
        int rc = MPI_Testall(count, requests, &done, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS)
            return mpi_error(d, rc, what);
        if (done)
            return KEEL_OK;
        if (now() > deadline)
            return failed(d, keel_fail(KEEL_ERR_BACKEND,
                                       "rank %d: %s did not finish within %.0f s; another rank has probably stopped",
                                       d->rank, what, d->timeout));
        struct timespec pause = {0, 50000};
        nanosleep(&pause, NULL);
    }
}

static float *grads_at(keel_dist *d, int64_t start)
{
    return (d->host_memory ? d->plan->grad_blocks[0] : d->staging) + start;
}

static void start_bucket(keel_dist *d, bucket *b)
{
    if (b->started || d->failed)
        return;
    keel_plan *plan = d->plan;
    b->started = true;
#ifdef KEEL_HAVE_NCCL
    if (d->nccl) {
        /* Queued behind the gradients on the device; NCCL averages. */
        keel_status st = keel_nccl_all_reduce_mean(d->nccl, plan->grad_blocks[0] + b->start, b->count, d->timeout);
        if (st != KEEL_OK)
            failed(d, st);
        return;
    }
#endif
    if (!d->host_memory) {
        /* Stage through the host: the device has finished the bucket's
         * gradients once sync returns. */
        plan->backend->sync(plan->device);
        plan->backend->download(plan->device, d->staging + b->start, plan->grad_blocks[0] + b->start,
                                (size_t)b->count * sizeof(float));
    }
    int rc = MPI_Iallreduce(MPI_IN_PLACE, grads_at(d, b->start), (int)b->count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                            &b->request);
    if (rc != MPI_SUCCESS)
        mpi_error(d, rc, "starting a gradient all-reduce");
}

/* The executor calls this after every backward node. */
static void on_backward_node(keel_plan *plan, const keel_node *node, void *user)
{
    keel_dist *d = user;
    int k = d->bucket_of_node[node->id];
    if (k < 0)
        return;
    bucket *b = &d->buckets[k];
    if (--b->pending == 0)
        start_bucket(d, b);
    /* Poke MPI so started reductions progress while the backward runs. */
    for (int i = 0; i < d->n_buckets; i++)
        if (d->buckets[i].started && d->buckets[i].request != MPI_REQUEST_NULL) {
            int done = 0;
            MPI_Test(&d->buckets[i].request, &done, MPI_STATUS_IGNORE);
        }
    (void)plan;
}

/* Buckets of trainable parameters, last created first. */
static keel_status make_buckets(keel_dist *d)
{
    keel_plan *plan = d->plan;
    keel_graph *g = plan->graph;
    d->buckets = calloc((size_t)plan->n_params + 1, sizeof *d->buckets);
    d->requests = calloc((size_t)plan->n_params + 1, sizeof *d->requests);
    d->bucket_of_node = malloc(((size_t)g->n_nodes + 1) * sizeof *d->bucket_of_node);
    if (!d->buckets || !d->requests || !d->bucket_of_node)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for gradient buckets");
    for (int i = 0; i < g->n_nodes; i++)
        d->bucket_of_node[i] = -1;
    bucket *b = NULL;
    for (int k = plan->n_params - 1; k >= 0; k--) {
        const keel_plan_param *p = &plan->params[k];
        if (!p->node->trainable)
            continue;
        int64_t end = p->offset + (p->numel + 15) / 16 * 16;
        if (!b || b->count >= BUCKET_FLOATS) {
            b = &d->buckets[d->n_buckets++];
            b->start = p->offset;
            b->count = end - p->offset;
        } else {
            b->count += b->start - p->offset; /* grows downwards: blocks are laid out in creation order */
            b->start = p->offset;
        }
        keel_node *grad = p->node->grad;
        /* A gradient the executor copies in after the backward pass (or
         * none at all) holds its bucket until keel_dist_finish_grads. */
        bool bound = grad && plan->out_ptr[grad->id] == plan->grad_blocks[0] + p->offset;
        b->total += bound ? 1 : 2;
        if (bound)
            d->bucket_of_node[grad->id] = (int)(b - d->buckets);
    }
    return KEEL_OK;
}

#ifdef KEEL_HAVE_NCCL
/* Every rank agrees on NCCL or on MPI through the host: one rank without
 * libnccl must not leave the others waiting in the communicator's setup. */
static keel_status open_nccl(keel_dist *d)
{
    int usable = keel_nccl_probe() == KEEL_OK, everywhere = 0;
    char reason[256];
    snprintf(reason, sizeof reason, "%s", usable ? "" : keel_last_error());
    int rc = MPI_Allreduce(&usable, &everywhere, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        return mpi_error(d, rc, "agreeing on NCCL");
    if (!everywhere) {
        keel_context_log(d->plan->ctx, KEEL_LOG_WARN, "rank %d: gradients go through host memory and MPI, not "
                         "NCCL: %s", d->rank, usable ? "another rank cannot open libnccl" : reason);
        return KEEL_OK;
    }
    unsigned char id[KEEL_NCCL_ID_BYTES] = {0};
    int have_id = d->rank != 0 || keel_nccl_unique_id(id) == KEEL_OK;
    rc = MPI_Bcast(&have_id, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (rc == MPI_SUCCESS)
        rc = MPI_Bcast(id, KEEL_NCCL_ID_BYTES, MPI_BYTE, 0, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        return mpi_error(d, rc, "sending the NCCL id");
    if (!have_id)
        return failed(d, keel_fail(KEEL_ERR_BACKEND, "rank %d: rank 0 could not create an NCCL id", d->rank));
    keel_status st = keel_nccl_open(&d->nccl, d->plan->device, id, d->rank, d->size, d->timeout);
    return st == KEEL_OK ? st : failed(d, st);
}
#endif

keel_status keel_dist_create(keel_dist **out, keel_plan *plan, double timeout_seconds)
{
    *out = NULL;
    /* One device per rank, so its blocks [0] hold every parameter. */
    if (plan->n_devices != 1)
        return keel_fail(KEEL_ERR_UNSUPPORTED, "data parallelism runs one device per rank; the plan spans %d devices",
                         plan->n_devices);
    keel_dist *d = calloc(1, sizeof *d);
    if (!d)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    d->plan = plan;
    d->timeout = timeout_seconds > 0 ? timeout_seconds : 300.0;
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
        int provided = 0;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
            free(d);
            return keel_fail(KEEL_ERR_BACKEND, "MPI_Init failed; start the program with mpirun");
        }
        d->we_initialised = true;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    d->host_memory = plan->backend == &keel_cpu_backend;
    keel_status st = KEEL_OK;
#ifdef KEEL_HAVE_NCCL
    if (!d->host_memory)
        st = open_nccl(d);
    if (st != KEEL_OK) {
        keel_dist_destroy(d);
        return st;
    }
    if (!d->host_memory && !d->nccl) {
#else
    if (!d->host_memory) {
#endif
        d->staging = keel_aligned_alloc((size_t)(plan->param_floats + 16) * sizeof(float));
        if (!d->staging) {
            keel_dist_destroy(d);
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for gradient staging");
        }
    }
    st = make_buckets(d);
    if (st != KEEL_OK) {
        keel_dist_destroy(d);
        return st;
    }
    plan->on_backward_node = on_backward_node;
    plan->on_backward_user = d;
    *out = d;
    return KEEL_OK;
}

void keel_dist_destroy(keel_dist *d)
{
    if (!d)
        return;
    if (d->plan && d->plan->on_backward_user == d) {
        d->plan->on_backward_node = NULL;
        d->plan->on_backward_user = NULL;
    }
#ifdef KEEL_HAVE_NCCL
    keel_nccl_close(d->nccl);
#endif
    if (d->failed) {
        /* A peer is gone or broken: finalising would wait for it forever.
         * Aborting ends the whole job now, which is what mpirun reports. */
        MPI_Abort(MPI_COMM_WORLD, 1);
    } else if (d->we_initialised) {
        MPI_Finalize();
    }
    keel_aligned_free(d->staging);
    free(d->buckets);
    free(d->requests);
    free(d->bucket_of_node);
    free(d);
}

int keel_dist_rank(const keel_dist *d)
{
    return d ? d->rank : 0;
}

int keel_dist_size(const keel_dist *d)
{
    return d ? d->size : 1;
}

/* Runs one collective on a host buffer of floats or doubles. */
static keel_status host_collective(keel_dist *d, void *buf, int64_t count, MPI_Datatype type, bool broadcast,
                                   const char *what)
{
    MPI_Request request;
    int rc = broadcast ? MPI_Ibcast(buf, (int)count, type, 0, MPI_COMM_WORLD, &request)
                       : MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, type, MPI_SUM, MPI_COMM_WORLD, &request);
    if (rc != MPI_SUCCESS)
        return mpi_error(d, rc, what);
    return wait_all(d, 1, &request, what);
}

/* Applies a collective to a device block through a host copy. */
static keel_status block_collective(keel_dist *d, float *block, int64_t count, bool broadcast, float scale,
                                    const char *what)
{
    keel_plan *plan = d->plan;
    if (count == 0)
        return KEEL_OK;
    float *host = d->host_memory ? block : keel_aligned_alloc((size_t)count * sizeof(float));
    if (!host)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    keel_status st = d->host_memory ? KEEL_OK
                                    : plan->backend->download(plan->device, host, block, (size_t)count * sizeof(float));
    if (st == KEEL_OK)
        st = host_collective(d, host, count, MPI_FLOAT, broadcast, what);
    if (st == KEEL_OK && scale != 1.0f)
        for (int64_t i = 0; i < count; i++)
            host[i] *= scale;
    if (st == KEEL_OK && !d->host_memory)
        st = plan->backend->upload(plan->device, block, host, (size_t)count * sizeof(float));
    if (!d->host_memory)
        keel_aligned_free(host);
    return st;
}

keel_status keel_dist_broadcast_params(keel_dist *d)
{
#ifdef KEEL_HAVE_NCCL
    if (d->nccl) {
        keel_status st = keel_nccl_broadcast(d->nccl, d->plan->param_blocks[0], d->plan->param_floats, d->timeout);
        if (st == KEEL_OK && d->plan->state_floats)
            st = keel_nccl_broadcast(d->nccl, d->plan->state_blocks[0], d->plan->state_floats, d->timeout);
        if (st == KEEL_OK)
            st = keel_nccl_wait(d->nccl, d->timeout);
        return st == KEEL_OK ? st : failed(d, st);
    }
#endif
    keel_status st = block_collective(d, d->plan->param_blocks[0], d->plan->param_floats, true, 1.0f,
                                      "broadcasting the parameters");
    if (st == KEEL_OK)
        st = block_collective(d, d->plan->state_blocks[0], d->plan->state_floats, true, 1.0f,
                              "broadcasting the running statistics");
    return st;
}

keel_status keel_dist_average_state(keel_dist *d)
{
#ifdef KEEL_HAVE_NCCL
    if (d->nccl) {
        if (!d->plan->state_floats)
            return KEEL_OK;
        keel_status st = keel_nccl_all_reduce_mean(d->nccl, d->plan->state_blocks[0], d->plan->state_floats, d->timeout);
        if (st == KEEL_OK)
            st = keel_nccl_wait(d->nccl, d->timeout);
        return st == KEEL_OK ? st : failed(d, st);
    }
#endif
    return block_collective(d, d->plan->state_blocks[0], d->plan->state_floats, false, 1.0f / (float)d->size,
                            "averaging the running statistics");
}

void keel_dist_begin_grads(keel_dist *d)
{
    for (int i = 0; i < d->n_buckets; i++) {
        d->buckets[i].pending = d->buckets[i].total;
        d->buckets[i].started = false;
        d->buckets[i].request = MPI_REQUEST_NULL;
    }
}

keel_status keel_dist_finish_grads(keel_dist *d)
{
    for (int i = 0; i < d->n_buckets; i++)
        start_bucket(d, &d->buckets[i]); /* those held back by late gradients */
    if (d->failed)
        return keel_fail(KEEL_ERR_BACKEND, "%s", d->error);
#ifdef KEEL_HAVE_NCCL
    if (d->nccl) {
        keel_status st = keel_nccl_wait(d->nccl, d->timeout);
        return st == KEEL_OK ? st : failed(d, st);
    }
#endif
    for (int i = 0; i < d->n_buckets; i++)
        d->requests[i] = d->buckets[i].request;
    keel_status st = wait_all(d, d->n_buckets, d->requests, "the gradient all-reduce");
    if (st != KEEL_OK)
        return st;
    /* The mean over ranks: each rank's loss is already a mean over its shard. */
    float scale = 1.0f / (float)d->size;
    keel_plan *plan = d->plan;
    float *grads = d->host_memory ? plan->grad_blocks[0] : d->staging;
    for (int64_t i = 0; i < plan->param_floats; i++)
        grads[i] *= scale;
    if (!d->host_memory)
        st = plan->backend->upload(plan->device, plan->grad_blocks[0], d->staging,
                                   (size_t)plan->param_floats * sizeof(float));
    return st;
}

keel_status keel_dist_sum(keel_dist *d, double *values, int count)
{
    return host_collective(d, values, count, MPI_DOUBLE, false, "summing metrics");
}

#else /* no MPI in this build */

bool keel_dist_available(void)
{
    return false;
}

keel_status keel_dist_create(keel_dist **out, keel_plan *plan, double timeout_seconds)
{
    (void)plan;
    (void)timeout_seconds;
    *out = NULL;
    return keel_fail(KEEL_ERR_UNSUPPORTED, "data parallelism needs MPI: install libopenmpi-dev and rebuild libkeel");
}

void keel_dist_destroy(keel_dist *d)
{
    (void)d;
}

int keel_dist_rank(const keel_dist *d)
{
    (void)d;
    return 0;
}

int keel_dist_size(const keel_dist *d)
{
    (void)d;
    return 1;
}

keel_status keel_dist_broadcast_params(keel_dist *d)
{
    (void)d;
    return KEEL_OK;
}

void keel_dist_begin_grads(keel_dist *d)
{
    (void)d;
}

keel_status keel_dist_finish_grads(keel_dist *d)
{
    (void)d;
    return KEEL_OK;
}

keel_status keel_dist_sum(keel_dist *d, double *values, int count)
{
    (void)d;
    (void)values;
    (void)count;
    return KEEL_OK;
}

keel_status keel_dist_average_state(keel_dist *d)
{
    (void)d;
    return KEEL_OK;
}
#endif
