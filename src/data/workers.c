/* The image loader: a pool of worker threads that decode and augment samples
 * into a bounded ring of batch buffers.
 *
 * Work is handed out one sample at a time, in order: task t is sample
 * t % batch of batch t / batch, written into buffer (t / batch) % slots.
 * Every worker therefore helps finish the oldest unfinished batch first,
 * which keeps the latency of a batch near (batch / workers) decodes. A task
 * may be taken only while its batch is fewer than `slots` ahead of the batch
 * the caller last gave back; that bound is the queue. What a sample becomes
 * depends on (seed, epoch, sample) only, never on which thread made it, so
 * any worker count gives the same bits. With data-parallel shards, local
 * batch k is global batch k's shard_index-th slice of the epoch's order. */
#include "data/image_internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct loader_worker {
    keel_image_loader *loader;
    keel_decoder decoder;
    keel_image image;      /* the decoded sample, or a view into a shard */
    keel_image resized;    /* a random-resized crop before normalising */
    pthread_t thread;
} loader_worker;

struct keel_image_loader {
    keel_image_dataset *dataset;
    keel_augment_opts augment;
    float *mean_image;     /* the loader's copy, and the same divided by std */
    float *mean_scaled;
    int64_t batch, batches;
    int64_t tasks;         /* samples assembled per epoch */
    int64_t shard_count, shard_index;
    int views;
    size_t view_floats;    /* 3 x crop x crop */
    bool shuffle;
    uint64_t seed;
    int64_t epoch;
    int64_t *order;        /* this epoch's sample order, dataset size */

    int slots;
    float **images;
    int32_t **labels;
    int64_t *done;         /* finished samples in each slot */
    keel_host_alloc_fn host_alloc;
    keel_host_free_fn host_free;
    void *host_user;

    int worker_count;      /* threads; the caller's state is workers[0] when 0 */
    loader_worker *workers;
    int threads_started;
    pthread_mutex_t mutex;
    pthread_cond_t work_cv;   /* workers wait for a task they may take */
    pthread_cond_t ready_cv;  /* the caller waits for a batch or idle workers */

    bool started, quit;
    int64_t next_task;
    int64_t delivered;     /* batches handed out this epoch */
    int64_t released;      /* batches whose buffers came back */
    int busy;              /* workers inside a task */
    keel_status error;     /* the first failure this epoch */
    char error_message[1024];
};

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static void make_order(keel_image_loader *l)
{
    int64_t count = l->dataset->count;
    for (int64_t i = 0; i < count; i++)
        l->order[i] = i;
    if (!l->shuffle)
        return;
    keel_rng rng;
    keel_rng_init(&rng, mix(l->seed ^ mix((uint64_t)l->epoch)));
    for (int64_t i = count - 1; i > 0; i--) {
        int64_t j = (int64_t)keel_rng_below(&rng, (uint64_t)i + 1);
        int64_t t = l->order[i];
        l->order[i] = l->order[j];
        l->order[j] = t;
    }
}

/* Where task t's sample sits in the epoch's order. */
static int64_t order_position(const keel_image_loader *l, int64_t task)
{
    int64_t k = task / l->batch, i = task % l->batch;
    return (k * l->shard_count + l->shard_index) * l->batch + i;
}

static int64_t batch_size(const keel_image_loader *l, int64_t k)
{
    int64_t left = l->tasks - k * l->batch;
    return left < l->batch ? left : l->batch;
}

static void record_error(keel_image_loader *l, keel_status st)
{
    if (l->worker_count > 0)
        pthread_mutex_lock(&l->mutex);
    if (l->error == KEEL_OK) {
        l->error = st;
        snprintf(l->error_message, sizeof l->error_message, "%s", keel_last_error());
    }
    if (l->worker_count > 0)
        pthread_mutex_unlock(&l->mutex);
}

/* Reads the sample, or the next readable one in dataset order when it is
 * corrupt (each bad file is flagged once and then passed over). */
static keel_status read_sample(keel_image_loader *l, loader_worker *w, int64_t index, int64_t *used)
{
    keel_image_dataset *d = l->dataset;
    for (int64_t a = 0; a < d->count; a++) {
        int64_t candidate = (index + a) % d->count;
        if (atomic_load(&d->bad[candidate]))
            continue;
        keel_status st = keel_image_dataset_read_with(d, &w->decoder, candidate, d->short_side, &w->image);
        if (st == KEEL_OK) {
            *used = candidate;
            return KEEL_OK;
        }
        if (st == KEEL_ERR_OUT_OF_MEMORY || st == KEEL_ERR_UNSUPPORTED)
            return st;
    }
    return keel_fail(KEEL_ERR_FORMAT, "none of the %lld images of the dataset could be decoded", (long long)d->count);
}

static void run_task(keel_image_loader *l, loader_worker *w, int64_t task)
{
    int64_t k = task / l->batch, i = task % l->batch;
    int slot = (int)(k % l->slots);
    int64_t index = l->order[order_position(l, task)], used = index;
    float *out = l->images[slot] + (size_t)(i * l->views) * l->view_floats;
    keel_status st = read_sample(l, w, index, &used);
    uint64_t seed = keel_augment_seed(l->seed, l->epoch, index);
    for (int v = 0; st == KEEL_OK && v < l->views; v++) {
        keel_crop crop;
        st = keel_augment_crop(&l->augment, w->image.height, w->image.width, seed, v, &crop);
        if (st == KEEL_OK)
            st = keel_augment_apply_with(&l->augment, &w->image, &crop, l->mean_scaled, &w->resized,
                                         &w->decoder.resample, out + (size_t)v * l->view_floats);
        if (st != KEEL_OK)
            keel_fail_prefix(st, "image %lld (%dx%d): ", (long long)used, w->image.width, w->image.height);
    }
    l->labels[slot][i] = l->dataset->labels[used];
    if (st != KEEL_OK) {
        memset(out, 0, (size_t)l->views * l->view_floats * sizeof *out);
        record_error(l, st);
    }
}

static bool has_task(const keel_image_loader *l)
{
    return l->started && l->error == KEEL_OK && l->next_task < l->tasks &&
           l->next_task / l->batch < l->released + l->slots;
}

static void *worker_main(void *arg)
{
    loader_worker *w = arg;
    keel_image_loader *l = w->loader;
    pthread_mutex_lock(&l->mutex);
    for (;;) {
        while (!l->quit && !has_task(l))
            pthread_cond_wait(&l->work_cv, &l->mutex);
        if (l->quit)
            break;
        int64_t task = l->next_task++;
        l->busy++;
        pthread_mutex_unlock(&l->mutex);
        run_task(l, w, task);
        pthread_mutex_lock(&l->mutex);
        l->busy--;
        int64_t k = task / l->batch;
        if (++l->done[k % l->slots] == batch_size(l, k) || l->busy == 0 || l->error != KEEL_OK)
            pthread_cond_broadcast(&l->ready_cv);
    }
    pthread_mutex_unlock(&l->mutex);
    return NULL;
}

static keel_status check_opts(const keel_image_dataset *d, const keel_image_loader_opts *o)
{
    if (!d || !o)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_image_loader_create: dataset and options must not be NULL");
    if (o->batch <= 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the batch size must be positive, got %lld", (long long)o->batch);
    if (o->workers < 0 || o->workers > 1024 || o->queue_depth < 0 || o->queue_depth > 1024)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "workers and queue_depth must be in [0, 1024], got %d and %d",
                         o->workers, o->queue_depth);
    if ((o->host_alloc == NULL) != (o->host_free == NULL))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "host_alloc and host_free must be given together");
    if (o->shard_count < 0 || (o->shard_count > 0 && (o->shard_index < 0 || o->shard_index >= o->shard_count)))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "shard %d of %d does not exist", o->shard_index, o->shard_count);
    if (o->shard_count > 1 && !o->drop_last)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "a sharded loader needs drop_last, so every shard gets full batches");
    keel_status st = keel_augment_check(&o->augment);
    if (st != KEEL_OK)
        return st;
    if (o->augment.mode != KEEL_CROP_RANDOM_RESIZED && d->short_side > 0 && d->short_side < o->augment.crop_size)
        return keel_fail(KEEL_ERR_SHAPE, "%d-pixel crops do not fit in images with a %d-pixel short side",
                         o->augment.crop_size, d->short_side);
    int64_t global_batch = o->batch * (o->shard_count > 1 ? o->shard_count : 1);
    if (o->drop_last && d->count < global_batch)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT,
                         "the dataset has %lld images, fewer than one batch of %lld, so drop_last leaves no batches",
                         (long long)d->count, (long long)global_batch);
    return KEEL_OK;
}

static void *host_alloc(keel_image_loader *l, size_t bytes)
{
    return l->host_alloc ? l->host_alloc(bytes, l->host_user) : keel_aligned_alloc(bytes);
}

static void host_free(keel_image_loader *l, void *p)
{
    if (!p)
        return;
    if (l->host_free)
        l->host_free(p, l->host_user);
    else
        keel_aligned_free(p);
}

static keel_status copy_mean_image(keel_image_loader *l)
{
    if (!l->augment.mean_image)
        return KEEL_OK;
    size_t plane = (size_t)l->augment.crop_size * l->augment.crop_size;
    l->mean_image = malloc(3 * plane * sizeof(float));
    l->mean_scaled = malloc(3 * plane * sizeof(float));
    if (!l->mean_image || !l->mean_scaled)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot copy the mean image");
    memcpy(l->mean_image, l->augment.mean_image, 3 * plane * sizeof(float));
    for (size_t i = 0; i < 3 * plane; i++)
        l->mean_scaled[i] = l->mean_image[i] / l->augment.std[i / plane];
    l->augment.mean_image = l->mean_image;
    return KEEL_OK;
}

static keel_status allocate(keel_image_loader *l)
{
    size_t image_bytes = (size_t)l->batch * (size_t)l->views * l->view_floats * sizeof(float);
    l->order = malloc((size_t)l->dataset->count * sizeof *l->order);
    l->images = calloc((size_t)l->slots, sizeof *l->images);
    l->labels = calloc((size_t)l->slots, sizeof *l->labels);
    l->done = calloc((size_t)l->slots, sizeof *l->done);
    l->workers = calloc((size_t)(l->worker_count ? l->worker_count : 1), sizeof *l->workers);
    if (!l->order || !l->images || !l->labels || !l->done || !l->workers)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate the loader");
    for (int s = 0; s < l->slots; s++) {
        l->images[s] = host_alloc(l, image_bytes);
        l->labels[s] = host_alloc(l, (size_t)l->batch * sizeof(int32_t));
        if (!l->images[s] || !l->labels[s])
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %d batch buffers of %zu bytes", l->slots,
                             image_bytes);
    }
    return copy_mean_image(l);
}

static keel_status start_threads(keel_image_loader *l)
{
    if (pthread_mutex_init(&l->mutex, NULL) != 0 || pthread_cond_init(&l->work_cv, NULL) != 0 ||
        pthread_cond_init(&l->ready_cv, NULL) != 0)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot create the loader's locks");
    for (int t = 0; t < l->worker_count; t++) {
        l->workers[t].loader = l;
        if (pthread_create(&l->workers[t].thread, NULL, worker_main, &l->workers[t]) != 0)
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot start loader worker %d of %d", t + 1, l->worker_count);
        l->threads_started++;
    }
    return KEEL_OK;
}

keel_status keel_image_loader_create(keel_image_loader **out, keel_image_dataset *d, const keel_image_loader_opts *o)
{
    if (!out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_image_loader_create: out must not be NULL");
    *out = NULL;
    keel_status st = check_opts(d, o);
    if (st != KEEL_OK)
        return st;
    keel_image_loader *l = calloc(1, sizeof *l);
    if (!l)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a loader");
    l->dataset = d;
    l->augment = o->augment;
    l->batch = o->batch;
    l->shard_count = o->shard_count > 1 ? o->shard_count : 1;
    l->shard_index = o->shard_count > 1 ? o->shard_index : 0;
    l->batches = o->drop_last ? d->count / (o->batch * l->shard_count) : (d->count + o->batch - 1) / o->batch;
    l->tasks = o->drop_last ? l->batches * o->batch : d->count;
    l->views = keel_augment_views(&o->augment);
    l->view_floats = 3 * (size_t)o->augment.crop_size * o->augment.crop_size;
    l->shuffle = o->shuffle;
    l->seed = o->seed;
    l->slots = (o->queue_depth > 0 ? o->queue_depth : 2) + 1;
    l->host_alloc = o->host_alloc;
    l->host_free = o->host_free;
    l->host_user = o->host_user;
    l->worker_count = o->workers;
    st = allocate(l);
    if (st == KEEL_OK && l->worker_count > 0)
        st = start_threads(l);
    if (st != KEEL_OK) {
        keel_image_loader_destroy(l);
        return st;
    }
    *out = l;
    return KEEL_OK;
}

void keel_image_loader_destroy(keel_image_loader *l)
{
    if (!l)
        return;
    if (l->worker_count > 0) {
        pthread_mutex_lock(&l->mutex);
        l->quit = true;
        pthread_cond_broadcast(&l->work_cv);
        pthread_mutex_unlock(&l->mutex);
        for (int t = 0; t < l->threads_started; t++)
            pthread_join(l->workers[t].thread, NULL);
        pthread_cond_destroy(&l->ready_cv);
        pthread_cond_destroy(&l->work_cv);
        pthread_mutex_destroy(&l->mutex);
    }
    for (int t = 0; l->workers && t < (l->worker_count ? l->worker_count : 1); t++) {
        keel_decoder_release(&l->workers[t].decoder);
        keel_image_release(&l->workers[t].image);
        keel_image_release(&l->workers[t].resized);
    }
    for (int s = 0; s < l->slots && l->images; s++) {
        host_free(l, l->images[s]);
        host_free(l, l->labels[s]);
    }
    free(l->images);
    free(l->labels);
    free(l->done);
    free(l->workers);
    free(l->order);
    free(l->mean_image);
    free(l->mean_scaled);
    free(l);
}

static void reset_epoch(keel_image_loader *l, int64_t epoch)
{
    l->epoch = epoch;
    make_order(l);
    l->next_task = 0;
    l->delivered = 0;
    l->released = 0;
    l->error = KEEL_OK;
    for (int s = 0; s < l->slots; s++)
        l->done[s] = 0;
    l->started = true;
}

keel_status keel_image_loader_start_epoch(keel_image_loader *l, int64_t epoch)
{
    if (!l || epoch < 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_image_loader_start_epoch: need a loader and an epoch >= 0");
    if (l->worker_count == 0) {
        reset_epoch(l, epoch);
        return KEEL_OK;
    }
    /* Workers read the order while inside a task: let them finish first. */
    pthread_mutex_lock(&l->mutex);
    l->started = false;
    while (l->busy > 0)
        pthread_cond_wait(&l->ready_cv, &l->mutex);
    reset_epoch(l, epoch);
    pthread_cond_broadcast(&l->work_cv);
    pthread_mutex_unlock(&l->mutex);
    return KEEL_OK;
}

/* Waits for batch k (or assembles it on this thread without workers). */
static keel_status wait_batch(keel_image_loader *l, int64_t k)
{
    int slot = (int)(k % l->slots);
    int64_t n = batch_size(l, k);
    if (l->worker_count == 0) {
        l->error = KEEL_OK;
        l->workers[0].loader = l;
        for (int64_t t = k * l->batch; t < k * l->batch + n && l->error == KEEL_OK; t++)
            run_task(l, &l->workers[0], t);
        return l->error == KEEL_OK ? KEEL_OK : keel_fail(l->error, "%s", l->error_message);
    }
    pthread_mutex_lock(&l->mutex);
    /* Coming back gives the previous batch's buffer to the workers. */
    if (k > 0)
        l->done[(k - 1) % l->slots] = 0;
    l->released = k;
    pthread_cond_broadcast(&l->work_cv);
    while (l->done[slot] < n && l->error == KEEL_OK)
        pthread_cond_wait(&l->ready_cv, &l->mutex);
    keel_status st = l->error;
    pthread_mutex_unlock(&l->mutex);
    return st == KEEL_OK ? KEEL_OK : keel_fail(st, "%s", l->error_message);
}

keel_status keel_image_loader_next(keel_image_loader *l, const float **images, const int32_t **labels,
                                   int64_t *count)
{
    if (!l || !images || !labels || !count)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_image_loader_next: loader and outputs must not be NULL");
    *images = NULL;
    *labels = NULL;
    *count = 0;
    if (!l->started)
        return keel_fail(KEEL_ERR_STATE, "keel_image_loader_next: call keel_image_loader_start_epoch first");
    if (l->delivered >= l->batches)
        return KEEL_OK;
    int64_t k = l->delivered;
    keel_status st = wait_batch(l, k);
    if (st != KEEL_OK)
        return st;
    l->delivered++;
    int slot = (int)(k % l->slots);
    int64_t n = batch_size(l, k);
    if (n < l->batch) {
        size_t per_sample = (size_t)l->views * l->view_floats;
        memset(l->images[slot] + (size_t)n * per_sample, 0, (size_t)(l->batch - n) * per_sample * sizeof(float));
        memset(l->labels[slot] + n, 0, (size_t)(l->batch - n) * sizeof(int32_t));
    }
    *images = l->images[slot];
    *labels = l->labels[slot];
    *count = n;
    return KEEL_OK;
}

int64_t keel_image_loader_batches(const keel_image_loader *l)
{
    return l ? l->batches : 0;
}

int keel_image_loader_views(const keel_image_loader *l)
{
    return l ? l->views : 0;
}

keel_status keel_image_dataset_mean_image(keel_image_dataset *d, int crop_size, int workers, float *mean_image)
{
    if (!d || !mean_image)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_image_dataset_mean_image: dataset and output are required");
    keel_image_loader_opts o = {.batch = 32, .workers = workers};
    o.augment = keel_augment_defaults(KEEL_CROP_CENTER);
    o.augment.crop_size = crop_size;
    for (int c = 0; c < 3; c++) {
        o.augment.mean[c] = 0.0f;
        o.augment.std[c] = 1.0f;
    }
    keel_image_loader *l;
    keel_status st = keel_image_loader_create(&l, d, &o);
    if (st != KEEL_OK)
        return st;
    size_t floats = 3 * (size_t)crop_size * crop_size;
    double *sum = calloc(floats, sizeof *sum);
    if (!sum) {
        keel_image_loader_destroy(l);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate the mean image");
    }
    st = keel_image_loader_start_epoch(l, 0);
    int64_t total = 0;
    for (;;) {
        const float *images;
        const int32_t *labels;
        int64_t n = 0;
        if (st == KEEL_OK)
            st = keel_image_loader_next(l, &images, &labels, &n);
        if (st != KEEL_OK || n == 0)
            break;
        for (int64_t i = 0; i < n; i++)
            for (size_t j = 0; j < floats; j++)
                sum[j] += images[(size_t)i * floats + j];
        total += n;
    }
    for (size_t j = 0; st == KEEL_OK && j < floats; j++)
        mean_image[j] = (float)(sum[j] / (double)total);
    free(sum);
    keel_image_loader_destroy(l);
    return st;
}
