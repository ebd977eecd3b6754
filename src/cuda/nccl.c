/* NCCL collectives for data parallelism on GPUs.
 *
 * libnccl is opened at run time, not linked: a libkeel built with NCCL's
 * header still loads and trains on machines without the library, and data
 * parallelism then falls back to MPI through host memory.
 *
 * Collectives run on a stream of their own. Each waits for an event
 * recorded on the compute stream when it is queued, so a gradient bucket is
 * reduced while the backward pass goes on computing earlier layers; the
 * compute stream waits for the collectives before the optimiser step.
 *
 * The communicator is non-blocking (ncclConfig_t.blocking = 0): no call can
 * wait forever for a rank that died. Every wait polls NCCL's asynchronous
 * error with a deadline and aborts the communicator when it passes. */
#include "cuda/cuda_internal.h"
#include <dlfcn.h>
#include <nccl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

_Static_assert(sizeof(ncclUniqueId) == KEEL_NCCL_ID_BYTES, "ncclUniqueId changed size");

/* The entry points we use, resolved from libnccl.so.2. The library is
 * loaded once and never closed: ncclGetUniqueId starts NCCL's bootstrap
 * root thread in this process (it serves the other ranks until the
 * communicator is up), and unloading the library under that thread, as a
 * dlclose right after making the id did, kills the process with SIGSEGV. */
typedef struct nccl_api {
    void *library;
    const char *(*get_error_string)(ncclResult_t result);
    ncclResult_t (*get_unique_id)(ncclUniqueId *id);
    ncclResult_t (*comm_init_rank_config)(ncclComm_t *comm, int ranks, ncclUniqueId id, int rank,
                                          ncclConfig_t *config);
    ncclResult_t (*comm_get_async_error)(ncclComm_t comm, ncclResult_t *error);
    ncclResult_t (*comm_abort)(ncclComm_t comm);
    ncclResult_t (*comm_destroy)(ncclComm_t comm);
    ncclResult_t (*all_reduce)(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream);
    ncclResult_t (*broadcast)(const void *send, void *recv, size_t count, ncclDataType_t type, int root,
                              ncclComm_t comm, cudaStream_t stream);
} nccl_api;

struct keel_nccl {
    nccl_api api;
    keel_device *device;
    ncclComm_t comm;
    cudaStream_t stream;       /* collectives */
    cudaEvent_t ready;         /* compute stream: the data is written */
    cudaEvent_t done;          /* collective stream: the results are in */
    int rank;
    bool broken;               /* aborted: no further call may touch comm */
};

static nccl_api loaded;
static keel_status loaded_status;
static char loaded_error[512];
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

static keel_status open_library(nccl_api *api)
{
    memset(api, 0, sizeof *api);
    api->library = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!api->library)
        api->library = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
    if (!api->library)
        return keel_fail(KEEL_ERR_UNSUPPORTED, "NCCL is not installed (%s); install libnccl2 or put NCCL's lib "
                         "folder on LD_LIBRARY_PATH", dlerror());
    struct { void **slot; const char *name; } symbols[] = {
        {(void **)&api->get_error_string, "ncclGetErrorString"},
        {(void **)&api->get_unique_id, "ncclGetUniqueId"},
        {(void **)&api->comm_init_rank_config, "ncclCommInitRankConfig"},
        {(void **)&api->comm_get_async_error, "ncclCommGetAsyncError"},
        {(void **)&api->comm_abort, "ncclCommAbort"},
        {(void **)&api->comm_destroy, "ncclCommDestroy"},
        {(void **)&api->all_reduce, "ncclAllReduce"},
        {(void **)&api->broadcast, "ncclBroadcast"},
    };
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        *symbols[i].slot = dlsym(api->library, symbols[i].name);
        if (!*symbols[i].slot) {
            dlclose(api->library); /* nothing of it has run yet */
            api->library = NULL;
            return keel_fail(KEEL_ERR_UNSUPPORTED, "the NCCL library found has no %s (NCCL 2.14 or newer is needed)",
                             symbols[i].name);
        }
    }
    return KEEL_OK;
}

static void open_library_once(void)
{
    loaded_status = open_library(&loaded);
    if (loaded_status != KEEL_OK)
        snprintf(loaded_error, sizeof loaded_error, "%s", keel_last_error());
}

static keel_status load_api(nccl_api *api)
{
    pthread_once(&load_once, open_library_once);
    if (loaded_status != KEEL_OK)
        return keel_fail(loaded_status, "%s", loaded_error);
    *api = loaded;
    return KEEL_OK;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static keel_status nccl_fail(keel_nccl *c, ncclResult_t result, const char *what)
{
    return keel_fail(KEEL_ERR_BACKEND, "rank %d on %s: %s failed: %s", c->rank, c->device->name, what,
                     c->api.get_error_string(result));
}

/* Aborting is the one way out of a collective a dead peer never joins. */
static void abort_comm(keel_nccl *c)
{
    if (c->comm && !c->broken)
        c->api.comm_abort(c->comm);
    c->broken = true;
}

/* A non-blocking communicator may answer ncclInProgress: wait until the
 * call has been taken, or fails, or the deadline passes. */
static keel_status settle(keel_nccl *c, ncclResult_t result, double deadline, const char *what)
{
    while (result == ncclInProgress) {
        if (now() > deadline) {
            abort_comm(c);
            return keel_fail(KEEL_ERR_BACKEND, "rank %d: %s did not complete in time; another rank has probably "
                             "stopped", c->rank, what);
        }
        struct timespec pause = {0, 100000};
        nanosleep(&pause, NULL);
        c->api.comm_get_async_error(c->comm, &result);
    }
    if (result != ncclSuccess) {
        abort_comm(c);
        return nccl_fail(c, result, what);
    }
    return KEEL_OK;
}

keel_status keel_nccl_probe(void)
{
    nccl_api api = {0};
    return load_api(&api);
}

keel_status keel_nccl_unique_id(unsigned char id[KEEL_NCCL_ID_BYTES])
{
    nccl_api api = {0};
    keel_status st = load_api(&api);
    if (st != KEEL_OK)
        return st;
    ncclUniqueId unique;
    ncclResult_t result = api.get_unique_id(&unique);
    if (result != ncclSuccess)
        st = keel_fail(KEEL_ERR_BACKEND, "ncclGetUniqueId failed: %s", api.get_error_string(result));
    else
        memcpy(id, &unique, sizeof unique);
    return st;
}

keel_status keel_nccl_open(keel_nccl **out, keel_device *device, const unsigned char id[KEEL_NCCL_ID_BYTES], int rank,
                           int ranks, double timeout_seconds)
{
    *out = NULL;
    keel_status st = keel_cuda_enter(device);
    if (st != KEEL_OK)
        return st;
    keel_nccl *c = calloc(1, sizeof *c);
    if (!c)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    c->device = device;
    c->rank = rank;
    st = load_api(&c->api);
    if (st != KEEL_OK) {
        free(c);
        return st;
    }
    cudaError_t err = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (err == cudaSuccess)
        err = cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming);
    if (err == cudaSuccess)
        err = cudaEventCreateWithFlags(&c->done, cudaEventDisableTiming);
    if (err != cudaSuccess) {
        keel_nccl_close(c);
        return keel_cuda_fail(err, "creating the NCCL stream and events", device->name);
    }
    ncclUniqueId unique;
    memcpy(&unique, id, sizeof unique);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t result = c->api.comm_init_rank_config(&c->comm, ranks, unique, rank, &config);
    st = settle(c, result, now() + timeout_seconds, "joining the NCCL communicator");
    if (st != KEEL_OK) {
        keel_nccl_close(c);
        return st;
    }
    *out = c;
    return KEEL_OK;
}

void keel_nccl_close(keel_nccl *c)
{
    if (!c)
        return;
    if (keel_cuda_enter(c->device) == KEEL_OK && c->stream && !c->broken)
        cudaStreamSynchronize(c->stream);
    if (c->comm && !c->broken)
        c->api.comm_destroy(c->comm);
    if (c->done)
        cudaEventDestroy(c->done);
    if (c->ready)
        cudaEventDestroy(c->ready);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
}

/* The collective stream waits for what the compute stream has queued. */
static keel_status follow_compute(keel_nccl *c)
{
    keel_status st = keel_cuda_enter(c->device);
    if (st != KEEL_OK)
        return st;
    KEEL_CUDA_TRY(c->device->name, cudaEventRecord, (c->ready, c->device->stream));
    KEEL_CUDA_TRY(c->device->name, cudaStreamWaitEvent, (c->stream, c->ready, 0));
    return KEEL_OK;
}

keel_status keel_nccl_all_reduce_mean(keel_nccl *c, float *data, int64_t count, double timeout_seconds)
{
    if (c->broken)
        return keel_fail(KEEL_ERR_BACKEND, "rank %d: the NCCL communicator was aborted after an error", c->rank);
    keel_status st = follow_compute(c);
    if (st != KEEL_OK)
        return st;
    ncclResult_t result = c->api.all_reduce(data, data, (size_t)count, ncclFloat, ncclAvg, c->comm, c->stream);
    return settle(c, result, now() + timeout_seconds, "queueing a gradient all-reduce");
}

keel_status keel_nccl_broadcast(keel_nccl *c, float *data, int64_t count, double timeout_seconds)
{
    if (c->broken)
        return keel_fail(KEEL_ERR_BACKEND, "rank %d: the NCCL communicator was aborted after an error", c->rank);
    keel_status st = follow_compute(c);
    if (st != KEEL_OK)
        return st;
    ncclResult_t result = c->api.broadcast(data, data, (size_t)count, ncclFloat, 0, c->comm, c->stream);
    return settle(c, result, now() + timeout_seconds, "queueing a broadcast");
}

keel_status keel_nccl_wait(keel_nccl *c, double timeout_seconds)
{
    if (c->broken)
        return keel_fail(KEEL_ERR_BACKEND, "rank %d: the NCCL communicator was aborted after an error", c->rank);
    keel_status st = keel_cuda_enter(c->device);
    if (st != KEEL_OK)
        return st;
    KEEL_CUDA_TRY(c->device->name, cudaEventRecord, (c->done, c->stream));
    double deadline = now() + timeout_seconds;
    for (;;) {
        cudaError_t err = cudaEventQuery(c->done);
        if (err == cudaSuccess)
            break;
        if (err != cudaErrorNotReady) {
            abort_comm(c);
            return keel_cuda_fail(err, "waiting for the NCCL collectives", c->device->name);
        }
        ncclResult_t async = ncclSuccess;
        c->api.comm_get_async_error(c->comm, &async);
        if (async != ncclSuccess && async != ncclInProgress) {
            abort_comm(c);
            return nccl_fail(c, async, "a collective");
        }
        if (now() > deadline) {
            abort_comm(c);
            return keel_fail(KEEL_ERR_BACKEND, "rank %d: the gradient all-reduce did not finish within %.0f s; "
                             "another rank has probably stopped", c->rank, timeout_seconds);
        }
        struct timespec pause = {0, 50000};
        nanosleep(&pause, NULL);
    }
    /* The optimiser step, queued next on the compute stream, reads the results. */
    KEEL_CUDA_TRY(c->device->name, cudaStreamWaitEvent, (c->device->stream, c->done, 0));
    return KEEL_OK;
}
