/* Mini-batch loader with a prefetch thread.
 *
 * Two batch buffers alternate: batch k is assembled into buffer k % 2. The
 * caller holds the buffer of the batch it was last given until its next
 * call, so while it trains on batch k the worker fills batch k + 1 into the
 * other buffer, and may start batch k + 2 only once the caller has come back
 * for k + 1 (that is, has released buffer k % 2). Batch contents depend on
 * (seed, epoch, k) alone, so prefetching never changes what the caller sees. */
#include "data/data_internal.h"
#include "ops/math.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct keel_loader {
    const keel_dataset *dataset;
    int64_t batch;
    int64_t shard_count, shard_index;
    int64_t count;        /* samples per epoch (the dataset size at create) */
    int64_t batches;      /* per epoch */
    int64_t image_floats; /* C * H * W */
    bool shuffle, prefetch;
    uint64_t seed;
    int64_t *order;       /* this epoch's sample order */
    float *images[2];
    int32_t *labels[2];
    int64_t filled[2];    /* real samples in each buffer */

    /* Epoch progress; shared with the worker under `mutex` when prefetching. */
    bool started;
    int64_t delivered;    /* batches handed to the caller this epoch */
    int64_t released;     /* batches whose buffers the caller gave back */
    int64_t assembled;    /* batches ready this epoch */
    bool busy;            /* the worker is filling a buffer */
    bool quit;
    bool thread_started;
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t work_cv;  /* the worker waits here for room or a new epoch */
    pthread_cond_t ready_cv; /* the caller waits here for a batch or an idle worker */
};

/* Fisher-Yates from a generator seeded by a hash of (seed, epoch), so an
 * epoch's order can be recomputed when a run resumes. */
static void make_order(keel_loader *l, int64_t epoch)
{
    for (int64_t i = 0; i < l->count; i++)
        l->order[i] = i;
    if (!l->shuffle)
        return;
    keel_rng rng;
    keel_rng_init(&rng, keel_mix64(l->seed ^ keel_mix64((uint64_t)epoch)));
    for (int64_t i = l->count - 1; i > 0; i--) {
        int64_t j = (int64_t)keel_rng_below(&rng, (uint64_t)i + 1);
        int64_t t = l->order[i];
        l->order[i] = l->order[j];
        l->order[j] = t;
    }
}

static void assemble(keel_loader *l, int64_t k)
{
    int slot = (int)(k % 2);
    int64_t first = (k * l->shard_count + l->shard_index) * l->batch;
    int64_t n = l->count - first < l->batch ? l->count - first : l->batch;
    float *images = l->images[slot];
    int32_t *labels = l->labels[slot];
    for (int64_t i = 0; i < n; i++) {
        int64_t index = l->order[first + i];
        keel_dataset_decode(l->dataset, index, images + i * l->image_floats);
        labels[i] = l->dataset->labels[index];
    }
    if (n < l->batch) {
        memset(images + n * l->image_floats, 0, (size_t)((l->batch - n) * l->image_floats) * sizeof *images);
        memset(labels + n, 0, (size_t)(l->batch - n) * sizeof *labels);
    }
    l->filled[slot] = n;
}

static bool worker_has_work(const keel_loader *l)
{
    return l->started && l->assembled < l->batches && l->assembled < l->released + 2;
}

static void *worker_main(void *arg)
{
    keel_loader *l = arg;
    pthread_mutex_lock(&l->mutex);
    for (;;) {
        while (!l->quit && !worker_has_work(l))
            pthread_cond_wait(&l->work_cv, &l->mutex);
        if (l->quit)
            break;
        int64_t k = l->assembled;
        l->busy = true;
        pthread_mutex_unlock(&l->mutex);
        assemble(l, k);
        pthread_mutex_lock(&l->mutex);
        l->busy = false;
        l->assembled++;
        pthread_cond_broadcast(&l->ready_cv);
    }
    pthread_mutex_unlock(&l->mutex);
    return NULL;
}

static keel_status check_opts(const keel_dataset *d, const keel_loader_opts *opts)
{
    if (!d || !opts)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_loader_create: dataset and options must not be NULL");
    if (opts->batch <= 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the batch size must be positive, got %lld", (long long)opts->batch);
    if (opts->shard_count < 0 || (opts->shard_count > 0 && (opts->shard_index < 0 || opts->shard_index >= opts->shard_count)))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "shard %d of %d does not exist", opts->shard_index, opts->shard_count);
    if (opts->shard_count > 1 && !opts->drop_last)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "a sharded loader needs drop_last, so every shard gets full batches");
    int64_t global_batch = opts->batch * (opts->shard_count > 1 ? opts->shard_count : 1);
    if (opts->drop_last && d->count < global_batch)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT,
                         "the dataset has %lld samples, fewer than one batch of %lld, so drop_last leaves no batches",
                         (long long)d->count, (long long)global_batch);
    return KEEL_OK;
}

static keel_status allocate_buffers(keel_loader *l)
{
    size_t image_bytes = (size_t)(l->batch * l->image_floats) * sizeof(float);
    l->order = malloc((size_t)l->count * sizeof *l->order);
    bool ok = l->order != NULL;
    for (int s = 0; s < 2; s++) {
        l->images[s] = keel_aligned_alloc(image_bytes);
        l->labels[s] = keel_aligned_alloc((size_t)l->batch * sizeof(int32_t));
        ok = ok && l->images[s] && l->labels[s];
    }
    if (!ok)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate two batch buffers of %lld x %lld floats",
                         (long long)l->batch, (long long)l->image_floats);
    return KEEL_OK;
}

static keel_status start_worker(keel_loader *l)
{
    if (pthread_mutex_init(&l->mutex, NULL) != 0)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot create the loader's mutex");
    if (pthread_cond_init(&l->work_cv, NULL) != 0) {
        pthread_mutex_destroy(&l->mutex);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot create the loader's condition variable");
    }
    if (pthread_cond_init(&l->ready_cv, NULL) != 0) {
        pthread_cond_destroy(&l->work_cv);
        pthread_mutex_destroy(&l->mutex);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot create the loader's condition variable");
    }
    if (pthread_create(&l->thread, NULL, worker_main, l) != 0) {
        pthread_cond_destroy(&l->ready_cv);
        pthread_cond_destroy(&l->work_cv);
        pthread_mutex_destroy(&l->mutex);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot start the prefetch thread");
    }
    l->thread_started = true;
    return KEEL_OK;
}

keel_status keel_loader_create(keel_loader **out, const keel_dataset *d, const keel_loader_opts *opts)
{
    if (!out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_loader_create: out must not be NULL");
    *out = NULL;
    keel_status st = check_opts(d, opts);
    if (st != KEEL_OK)
        return st;
    keel_loader *l = calloc(1, sizeof *l);
    if (!l)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a loader");
    l->dataset = d;
    l->batch = opts->batch;
    l->count = d->count;
    l->shard_count = opts->shard_count > 1 ? opts->shard_count : 1;
    l->shard_index = opts->shard_count > 1 ? opts->shard_index : 0;
    int64_t global_batch = opts->batch * l->shard_count;
    l->batches = opts->drop_last ? d->count / global_batch : (d->count + opts->batch - 1) / opts->batch;
    l->image_floats = keel_dataset_image_bytes(d);
    l->shuffle = opts->shuffle;
    l->prefetch = !opts->no_prefetch;
    l->seed = opts->seed;
    st = allocate_buffers(l);
    if (st == KEEL_OK && l->prefetch)
        st = start_worker(l);
    if (st != KEEL_OK) {
        keel_loader_destroy(l);
        return st;
    }
    *out = l;
    return KEEL_OK;
}

void keel_loader_destroy(keel_loader *l)
{
    if (!l)
        return;
    if (l->thread_started) {
        pthread_mutex_lock(&l->mutex);
        l->quit = true;
        pthread_cond_broadcast(&l->work_cv);
        pthread_mutex_unlock(&l->mutex);
        pthread_join(l->thread, NULL);
        pthread_cond_destroy(&l->ready_cv);
        pthread_cond_destroy(&l->work_cv);
        pthread_mutex_destroy(&l->mutex);
    }
    for (int s = 0; s < 2; s++) {
        keel_aligned_free(l->images[s]);
        keel_aligned_free(l->labels[s]);
    }
    free(l->order);
    free(l);
}

static void reset_epoch(keel_loader *l, int64_t epoch)
{
    make_order(l, epoch);
    l->delivered = 0;
    l->released = 0;
    l->assembled = 0;
    l->started = true;
}

keel_status keel_loader_start_epoch(keel_loader *l, int64_t epoch)
{
    if (!l || epoch < 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_loader_start_epoch: need a loader and an epoch >= 0");
    if (!l->prefetch) {
        reset_epoch(l, epoch);
        return KEEL_OK;
    }
    /* The worker reads the order while it fills a buffer: wait until it is
     * idle, and rebuild the order before it may start again. */
    pthread_mutex_lock(&l->mutex);
    while (l->busy)
        pthread_cond_wait(&l->ready_cv, &l->mutex);
    reset_epoch(l, epoch);
    pthread_cond_broadcast(&l->work_cv);
    pthread_mutex_unlock(&l->mutex);
    return KEEL_OK;
}

keel_status keel_loader_next(keel_loader *l, const float **images, const int32_t **labels, int64_t *count)
{
    if (!l || !images || !labels || !count)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_loader_next: loader and outputs must not be NULL");
    *images = NULL;
    *labels = NULL;
    *count = 0;
    if (l->prefetch)
        pthread_mutex_lock(&l->mutex);
    keel_status st = KEEL_OK;
    int64_t k = -1;
    if (!l->started) {
        st = keel_fail(KEEL_ERR_STATE, "keel_loader_next: call keel_loader_start_epoch first");
    } else if (l->delivered < l->batches) {
        k = l->delivered;
        if (l->prefetch) {
            /* Coming back releases the previous batch's buffer. */
            l->released = k;
            pthread_cond_broadcast(&l->work_cv);
            while (l->assembled <= k)
                pthread_cond_wait(&l->ready_cv, &l->mutex);
        } else {
            assemble(l, k);
        }
        l->delivered++;
    } else {
        l->released = l->delivered;
    }
    if (l->prefetch)
        pthread_mutex_unlock(&l->mutex);
    if (k >= 0) {
        *images = l->images[k % 2];
        *labels = l->labels[k % 2];
        *count = l->filled[k % 2];
    }
    return st;
}

int64_t keel_loader_batches(const keel_loader *l)
{
    return l ? l->batches : 0;
}
