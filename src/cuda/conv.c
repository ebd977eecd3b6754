/* Convolution nodes on the GPU: prepare picks a cuDNN execution plan per
 * node (from a per-device cache keyed by the full problem and the policy),
 * run executes it. With --autotune every candidate plan is timed once with
 * CUDA events on scratch buffers and the fastest kept; otherwise the best
 * ranked plan that finalizes and runs is used: the first few are tried once
 * in rank order, since a plan can finalize and still fail to execute (an
 * engine compiled at run time, say), and that is better found at compile
 * time, with another plan to fall back on, than in the middle of training. The plan's workspace goes to the
 * planner, which sizes one workspace per device to the largest. Bias adds
 * (conv2d and conv_transpose2d with a bias) are our own kernel after the
 * plan; the bias gradient is its own node. */
#include "cuda/cuda_internal.h"
#include "cuda/conv_graph.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Autotuning: runs timed per candidate after one warm-up run. */
#define TUNE_RUNS 3
/* Plans built without --autotune, in case the best ranked fails to run. */
#define TRIAL_PLANS 4

typedef struct conv_key {
    keel_conv_shape shape;
    bool strict_fp32, deterministic, autotune;
} conv_key;

typedef struct conv_entry {
    conv_key key;
    keel_cudnn_plan plan;
} conv_entry;

struct keel_conv_cache {
    conv_entry **entries;
    int n, cap;
};

/* What one node runs: a cached plan (owned by the cache) and the variant
 * pack of the pointers it last ran with. */
typedef struct conv_algo {
    keel_cuda_algo_kind kind;   /* KEEL_CUDA_ALGO_CONV */
    const conv_entry *entry;
    cudnnBackendDescriptor_t pack;
    void *pointers[KEEL_CONV_TENSORS];
    void *workspace;
} conv_algo;

static conv_key key_of(const keel_conv_shape *shape, const keel_device *d)
{
    conv_key key = {.shape = *shape,
                    .strict_fp32 = d->policy.strict_fp32,
                    .deterministic = d->policy.deterministic,
                    .autotune = d->autotune};
    return key;
}

/* Field by field: struct padding holds whatever was there. */
static bool same_key(const conv_key *a, const conv_key *b)
{
    const size_t sizes = sizeof(keel_conv_shape) - offsetof(keel_conv_shape, batch); /* int64 fields only */
    return a->shape.pass == b->shape.pass && memcmp(&a->shape.batch, &b->shape.batch, sizes) == 0 &&
           a->strict_fp32 == b->strict_fp32 && a->deterministic == b->deterministic && a->autotune == b->autotune;
}

/* The workspace limit is not in the key: it is an eighth of the memory free
 * when the plan was configured, so it differs from plan to plan on a shared
 * device. A cached plan serves only while its workspace fits the current
 * limit; otherwise a plan within the limit is built and cached beside it. */
static const conv_entry *cache_find(const keel_device *d, const conv_key *key)
{
    const keel_conv_cache *cache = d->conv_cache;
    const int64_t limit = d->policy.workspace_limit;
    for (int i = 0; cache && i < cache->n; i++)
        if (same_key(&cache->entries[i]->key, key) &&
            (limit <= 0 || cache->entries[i]->plan.workspace_bytes <= limit))
            return cache->entries[i];
    return NULL;
}

static keel_status cache_add(keel_device *d, const conv_key *key, const keel_cudnn_plan *plan,
                             const conv_entry **out)
{
    if (!d->conv_cache && !(d->conv_cache = calloc(1, sizeof *d->conv_cache)))
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory for the convolution plan cache", d->name);
    keel_conv_cache *cache = d->conv_cache;
    if (cache->n == cache->cap) {
        int cap = cache->cap ? cache->cap * 2 : 32;
        conv_entry **grown = realloc(cache->entries, (size_t)cap * sizeof *grown);
        if (!grown)
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory for the convolution plan cache", d->name);
        cache->entries = grown;
        cache->cap = cap;
    }
    conv_entry *entry = malloc(sizeof *entry);
    if (!entry)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory for the convolution plan cache", d->name);
    entry->key = *key;
    entry->plan = *plan;
    cache->entries[cache->n++] = entry;
    *out = entry;
    return KEEL_OK;
}

void keel_cuda_conv_cache_free(keel_device *d)
{
    keel_conv_cache *cache = d->conv_cache;
    if (!cache)
        return;
    for (int i = 0; i < cache->n; i++) {
        keel_cudnn_plan_release(&cache->entries[i]->plan);
        free(cache->entries[i]);
    }
    free(cache->entries);
    free(cache);
    d->conv_cache = NULL;
}

/* ---- trying and timing plans ----------------------------------------------------------- */

static int64_t tensor_bytes(int64_t a, int64_t b, int64_t c, int64_t e)
{
    return a * b * c * e * (int64_t)sizeof(float);
}

/* Runs one plan: one warm-up run, then the fastest of `timed_runs` in
 * *best_ms (-1 when none is timed). */
static keel_status time_plan(keel_device *d, const keel_cudnn_plan *plan, void *const pointers[KEEL_CONV_TENSORS],
                             void *workspace, const char *where, cudaEvent_t start, cudaEvent_t stop, int timed_runs,
                             float *best_ms)
{
    cudnnBackendDescriptor_t pack = NULL;
    keel_status st = keel_cudnn_pack_make(plan, pointers, workspace, where, &pack);
    if (st != KEEL_OK)
        return st;
    *best_ms = -1.0f;
    for (int run = 0; st == KEEL_OK && run <= timed_runs; run++) {
        cudaError_t err = cudaEventRecord(start, d->stream);
        if (err == cudaSuccess)
            st = keel_cudnn_execute(d->cudnn, plan, pack, where);
        if (st == KEEL_OK && err == cudaSuccess)
            err = cudaEventRecord(stop, d->stream);
        if (st == KEEL_OK && err == cudaSuccess)
            err = cudaEventSynchronize(stop);
        float ms = 0.0f;
        if (st == KEEL_OK && err == cudaSuccess)
            err = cudaEventElapsedTime(&ms, start, stop);
        if (st == KEEL_OK && err != cudaSuccess)
            st = keel_cuda_fail(err, "cudaEvent* (trying convolution plans)", where);
        if (st == KEEL_OK && run > 0 && (*best_ms < 0.0f || ms < *best_ms))
            *best_ms = ms;
    }
    keel_cudnn_pack_free(pack);
    return st;
}

/* Runs the plans on scratch buffers (the node's own buffers do not exist
 * yet at compile time) and picks one: with `tune`, the fastest; otherwise
 * the first that runs. Returns its index. */
static keel_status choose_plan(keel_device *d, const keel_conv_shape *s, const keel_cudnn_plan *plans, int n_plans,
                               bool tune, const char *where, int *best)
{
    *best = 0;
    if (tune && n_plans < 2)
        return KEEL_OK;
    int64_t sizes[KEEL_CONV_TENSORS] = {
        tensor_bytes(s->batch, s->channels, s->height, s->width),
        tensor_bytes(s->filters, s->channels / s->groups, s->kernel_h, s->kernel_w),
        tensor_bytes(s->batch, s->filters, s->out_height, s->out_width),
        tensor_bytes(1, s->filters, 1, 1),
    };
    int64_t most_workspace = 0;
    for (int i = 0; i < n_plans; i++)
        if (plans[i].workspace_bytes > most_workspace)
            most_workspace = plans[i].workspace_bytes;
    void *pointers[KEEL_CONV_TENSORS] = {0}, *workspace = NULL;
    cudaEvent_t start = NULL, stop = NULL;
    keel_status st = KEEL_OK;
    for (int i = 0; i < KEEL_CONV_TENSORS && st == KEEL_OK; i++) {
        pointers[i] = keel_cuda_pool_alloc(&d->pool, (size_t)sizes[i]);
        if (!pointers[i])
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: no memory for scratch buffers to try convolution plans on", where);
        else if (keel_k_fill(d->stream, pointers[i], 0.5f, sizes[i] / (int64_t)sizeof(float)) != cudaSuccess)
            st = keel_cuda_fail(cudaGetLastError(), "keel_k_fill (scratch for trying plans)", where);
    }
    if (st == KEEL_OK && most_workspace > 0 && !(workspace = keel_cuda_pool_alloc(&d->pool, (size_t)most_workspace)))
        st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: no memory for a %lld-byte workspace to try convolution plans with", where,
                       (long long)most_workspace);
    /* Without --autotune the trial is a precaution: a layer too big for
     * scratch copies beside the plan keeps the best ranked plan, untried. */
    bool skip = !tune && st == KEEL_ERR_OUT_OF_MEMORY;
    cudaError_t err = cudaSuccess;
    if (st == KEEL_OK &&
        ((err = cudaEventCreate(&start)) != cudaSuccess || (err = cudaEventCreate(&stop)) != cudaSuccess))
        st = keel_cuda_fail(err, "cudaEventCreate", where);
    /* A plan that finalized may still fail to run (a runtime-compiled
     * engine, say): like a refused finalize, that drops the candidate, as
     * long as the stream is still healthy; a CUDA error that poisons the
     * context ends the trial. */
    float best_ms = -1.0f;
    keel_status failure = KEEL_OK;
    bool found = false;
    for (int i = 0; i < n_plans && st == KEEL_OK && !(found && !tune); i++) {
        float ms = 0.0f;
        keel_status pst = time_plan(d, &plans[i], pointers, workspace, where, start, stop, tune ? TUNE_RUNS : 0, &ms);
        if (pst != KEEL_OK) {
            failure = pst;
            if (cudaStreamSynchronize(d->stream) != cudaSuccess || cudaGetLastError() != cudaSuccess)
                st = pst;
            continue;
        }
        if (!found || (ms >= 0.0f && ms < best_ms)) {
            best_ms = ms;
            *best = i;
        }
        found = true;
    }
    if (st == KEEL_OK && !found && failure != KEEL_OK)
        st = failure; /* every candidate failed: keel_last_error says why the last did */
    if (skip) {
        st = KEEL_OK;
        *best = 0;
    }
    if (start)
        cudaEventDestroy(start);
    if (stop)
        cudaEventDestroy(stop);
    cudaStreamSynchronize(d->stream);
    for (int i = 0; i < KEEL_CONV_TENSORS; i++)
        keel_cuda_pool_free(&d->pool, pointers[i]);
    keel_cuda_pool_free(&d->pool, workspace);
    return st;
}

/* ---- prepare and run ---------------------------------------------------------------------- */

static keel_status find_plan(keel_device *d, const keel_node *node, const keel_conv_shape *shape,
                             const conv_entry **out)
{
    conv_key key = key_of(shape, d);
    if ((*out = cache_find(d, &key)) != NULL)
        return KEEL_OK;
    if (!d->deviceprop)
        return keel_fail(KEEL_ERR_BACKEND, "%s: cuDNN has no profile of %s to choose a convolution engine with (%s)",
                         node->name, d->name, d->deviceprop_error);
    keel_cudnn_plan *plans = NULL;
    int n_plans = 0, best = 0;
    keel_status st = keel_cudnn_conv_plans(shape, &d->policy, d->deviceprop, d->autotune ? 0 : TRIAL_PLANS,
                                           node->name, &plans, &n_plans, NULL);
    if (st == KEEL_OK)
        st = choose_plan(d, shape, plans, n_plans, d->autotune, node->name, &best);
    if (st == KEEL_OK) {
        st = cache_add(d, &key, &plans[best], out);
        if (st == KEEL_OK)
            plans[best].plan = NULL; /* the cache owns it now */
    }
    keel_cudnn_plans_free(plans, n_plans);
    return st;
}

keel_status keel_cuda_conv_prepare(keel_device *d, const keel_node *node, int64_t *workspace, void **algo)
{
    *workspace = 0;
    *algo = NULL;
    keel_status st = keel_cuda_enter(d);
    if (st != KEEL_OK)
        return st;
    keel_conv_shape shape;
    if ((st = keel_conv_shape_of(node, &shape)) != KEEL_OK)
        return st;
    const conv_entry *entry = NULL;
    if ((st = find_plan(d, node, &shape, &entry)) != KEEL_OK)
        return st;
    conv_algo *a = calloc(1, sizeof *a);
    if (!a)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory", node->name);
    a->kind = KEEL_CUDA_ALGO_CONV;
    a->entry = entry;
    *workspace = entry->plan.workspace_bytes;
    *algo = a;
    return KEEL_OK;
}

void keel_cuda_conv_algo_free(keel_device *d, void *algo)
{
    (void)d;
    conv_algo *a = algo;
    keel_cudnn_pack_free(a->pack);
    free(a);
}

/* The node's buffers in conv2d's roles (see conv_shape.c). */
static void roles(const keel_launch *l, void *pointers[KEEL_CONV_TENSORS])
{
    memset(pointers, 0, KEEL_CONV_TENSORS * sizeof pointers[0]);
    switch (l->node->op) {
    case KEEL_OP_CONV2D_BWD_DATA:
    case KEEL_OP_CONV_TRANSPOSE2D:
        pointers[KEEL_CONV_X] = l->out, pointers[KEEL_CONV_W] = l->in[1], pointers[KEEL_CONV_Y] = l->in[0];
        break;
    case KEEL_OP_CONV2D_BWD_WEIGHT:
        pointers[KEEL_CONV_X] = l->in[0], pointers[KEEL_CONV_W] = l->out, pointers[KEEL_CONV_Y] = l->in[1];
        break;
    default:
        pointers[KEEL_CONV_X] = l->in[0], pointers[KEEL_CONV_W] = l->in[1], pointers[KEEL_CONV_Y] = l->out;
        break;
    }
}

keel_status keel_cuda_conv(const keel_launch *l)
{
    const keel_node *node = l->node;
    conv_algo *a = l->algo;
    if (!a || a->kind != KEEL_CUDA_ALGO_CONV)
        return keel_fail(KEEL_ERR_STATE, "%s: convolution run without a prepared plan", node->name);
    keel_status st = keel_cuda_enter(l->device);
    if (st != KEEL_OK)
        return st;
    const keel_cudnn_plan *plan = &a->entry->plan;
    if (l->workspace_bytes < plan->workspace_bytes)
        return keel_fail(KEEL_ERR_STATE, "%s: the plan needs %lld bytes of workspace, %lld given", node->name,
                         (long long)plan->workspace_bytes, (long long)l->workspace_bytes);
    void *pointers[KEEL_CONV_TENSORS];
    roles(l, pointers);
    void *workspace = plan->workspace_bytes ? l->workspace : NULL;
    /* The planner binds buffers once, so the pack is built on the first run. */
    if (!a->pack || memcmp(pointers, a->pointers, sizeof pointers) != 0 || workspace != a->workspace) {
        keel_cudnn_pack_free(a->pack);
        a->pack = NULL;
        if ((st = keel_cudnn_pack_make(plan, pointers, workspace, node->name, &a->pack)) != KEEL_OK)
            return st;
        memcpy(a->pointers, pointers, sizeof pointers);
        a->workspace = workspace;
    }
    if ((st = keel_cudnn_execute(l->device->cudnn, plan, a->pack, node->name)) != KEEL_OK)
        return st;
    if (!node->attrs.conv.has_bias || node->n_inputs < 3)
        return KEEL_OK;
    /* Over the node's output channels: conv2d's filters, conv_transpose2d's image channels. */
    KEEL_CUDA_TRY(node->name, keel_k_bias_add,
                  (l->device->stream, l->out, l->in[2], node->shape[0], node->shape[1], keel_cuda_inner(node)));
    return KEEL_OK;
}
