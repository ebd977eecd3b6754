/* The training loop: build, differentiate and compile a model, then per
 * epoch feed shuffled batches through forward, backward and one fused
 * optimiser step, evaluate on the test set, and checkpoint. The batches come
 * from an in-memory dataset's loader or from an image dataset's worker
 * threads, through one batch source. */
#include "train/train_internal.h"
#include "train/trainer_internal.h"
#include "data/image_internal.h"
#include "dist/distributed.h"
#include "keel/keel.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct keel_trainer {
    keel_context *ctx;
    keel_trainer_opts opts;
    char *model_name, *device, *save_path;

    keel_graph *graph;
    keel_model_io io;
    keel_plan *plan;
    keel_optimizer *optimizer;
    keel_batch_source train_source, test_source;
    bool has_test;
    keel_dist *dist;               /* data parallelism, or NULL */

    bool images;                   /* image datasets rather than in-memory ones */
    keel_augment_opts train_augment, test_augment; /* with defaults filled in */
    float *train_mean_image, *test_mean_image;     /* the trainer's copies */

    int channels, height, width, classes;
    float *mean, *std;             /* normalisation per channel (NULL when off) */
    int64_t steps_per_epoch;
    int64_t global_step;           /* optimiser steps so far */
    int epochs_done;
    float *logits;                 /* host, batch x classes, for evaluation */
    int64_t logits_classes;

    keel_epoch_stats *history;
    int n_history, cap_history;
};

keel_trainer_opts keel_trainer_default_opts(void)
{
    keel_trainer_opts o = {0};
    o.model = "lenet5";
    o.batch = 64;
    o.epochs = 10;
    o.optimizer = keel_optimizer_defaults(KEEL_OPTIMIZER_SGD);
    o.schedule.kind = KEEL_SCHEDULE_COSINE;
    o.schedule.step_epochs = 3;
    o.schedule.gamma = 0.1f;
    o.seed = 1;
    o.device = "cpu";
    return o;
}

/* ---- creation -------------------------------------------------------------- */

static keel_status check_schedule(const keel_schedule *s)
{
    if (s->kind != KEEL_SCHEDULE_CONSTANT && s->kind != KEEL_SCHEDULE_STEP && s->kind != KEEL_SCHEDULE_COSINE)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "unknown schedule kind %d", (int)s->kind);
    if (s->kind == KEEL_SCHEDULE_STEP && (s->step_epochs < 1 || !(s->gamma > 0.0f) || s->gamma > 1.0f))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "a step schedule needs step_epochs >= 1 and gamma in (0, 1], "
                         "got %d and %g", s->step_epochs, (double)s->gamma);
    if (s->kind == KEEL_SCHEDULE_COSINE && !(s->min_lr >= 0.0f))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "a cosine schedule's final rate must be >= 0, got %g",
                         (double)s->min_lr);
    if (!(s->warmup_epochs >= 0.0f) || !isfinite(s->warmup_epochs))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "warm-up epochs must be >= 0, got %g", (double)s->warmup_epochs);
    return KEEL_OK;
}

static int64_t train_size(const keel_trainer_opts *o)
{
    return o->train ? keel_dataset_size(o->train) : keel_image_dataset_size(o->train_images);
}

static keel_status check_opts(const keel_trainer_opts *o)
{
    if (!o->train == !o->train_images)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the trainer needs exactly one training set: opts.train (in "
                         "memory) or opts.train_images (an image folder, list or packed shards)");
    if ((o->train && o->test_images) || (o->train_images && o->test))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the test set must be of the training set's kind: opts.test "
                         "with opts.train, opts.test_images with opts.train_images");
    if (!o->model && !o->build)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the trainer needs a model name or a build function");
    if (o->batch < 1)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the batch size must be at least 1, got %lld", (long long)o->batch);
    if (o->epochs < 1)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the number of epochs must be at least 1, got %d", o->epochs);
    if (o->workers < 0 || o->workers > 1024)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "workers must be in [0, 1024], got %d", o->workers);
    if (train_size(o) < o->batch)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the training set has %lld images, fewer than one batch of %lld",
                         (long long)train_size(o), (long long)o->batch);
    return check_schedule(&o->schedule);
}

/* ---- image augmentation ---------------------------------------------------- */

static bool all_zero(const float *v, int n)
{
    for (int i = 0; i < n; i++)
        if (v[i] != 0.0f)
            return false;
    return true;
}

static bool augment_unset(const keel_augment_opts *o)
{
    return o->mode == 0 && o->crop_size == 0 && !o->mirror && o->scale_min == 0.0f && o->scale_max == 0.0f &&
           o->ratio_min == 0.0f && o->ratio_max == 0.0f && all_zero(o->mean, 3) && all_zero(o->std, 3) &&
           !o->mean_image && o->lighting_std == 0.0f;
}

/* The options as documented in train.h: all zero means the mode's
 * defaults; otherwise fields left 0 take them. */
static keel_augment_opts resolve_augment(const keel_augment_opts *given, keel_crop_mode fallback)
{
    if (augment_unset(given))
        return keel_augment_defaults(fallback);
    keel_augment_opts base = keel_augment_defaults(given->mode), o = *given;
    if (o.crop_size == 0)
        o.crop_size = base.crop_size;
    if (o.scale_min == 0.0f && o.scale_max == 0.0f) {
        o.scale_min = base.scale_min;
        o.scale_max = base.scale_max;
    }
    if (o.ratio_min == 0.0f && o.ratio_max == 0.0f) {
        o.ratio_min = base.ratio_min;
        o.ratio_max = base.ratio_max;
    }
    if (all_zero(o.std, 3)) {
        if (all_zero(o.mean, 3))
            memcpy(o.mean, base.mean, sizeof o.mean);
        memcpy(o.std, base.std, sizeof o.std);
    }
    return o;
}

static keel_status copy_mean_image(keel_augment_opts *o, float **copy)
{
    if (!o->mean_image)
        return KEEL_OK;
    size_t floats = 3 * (size_t)o->crop_size * (size_t)o->crop_size;
    *copy = malloc(floats * sizeof **copy);
    if (!*copy)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory copying the mean image");
    memcpy(*copy, o->mean_image, floats * sizeof **copy);
    o->mean_image = *copy;
    return KEEL_OK;
}

static keel_status set_augment(keel_trainer *t)
{
    t->train_augment = resolve_augment(&t->opts.train_augment, KEEL_CROP_RANDOM_RESIZED);
    t->test_augment = resolve_augment(&t->opts.test_augment, KEEL_CROP_CENTER);
    if (t->train_augment.mode == KEEL_CROP_TEN)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "ten-crop views are for evaluation; train with a random, "
                         "random-resized or centre crop");
    keel_status st = keel_augment_check(&t->train_augment);
    if (st == KEEL_OK)
        st = keel_augment_check(&t->test_augment);
    if (st != KEEL_OK)
        return keel_fail_prefix(st, "image augmentation: ");
    if (t->test_augment.crop_size != t->train_augment.crop_size)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the test crop (%d) differs from the training crop (%d), but the "
                         "model takes one input size", t->test_augment.crop_size, t->train_augment.crop_size);
    st = copy_mean_image(&t->train_augment, &t->train_mean_image);
    if (st == KEEL_OK)
        st = copy_mean_image(&t->test_augment, &t->test_mean_image);
    return st;
}

static const char *crop_mode_text(keel_crop_mode mode)
{
    switch (mode) {
    case KEEL_CROP_RANDOM: return "random crop";
    case KEEL_CROP_RANDOM_RESIZED: return "random-resized crop";
    case KEEL_CROP_CENTER: return "centre crop";
    case KEEL_CROP_TEN: return "ten crops";
    }
    return "crop";
}

/* "random-resized crop 224 (area 0.08-1, ratio 0.75-1.33), mirrored, PCA
 * lighting 0.1": what a checkpoint records and describe() prints. */
static const char *augment_text(const keel_augment_opts *o, char *buf, size_t size)
{
    int used = snprintf(buf, size, "%s %d", crop_mode_text(o->mode), o->crop_size);
    if (o->mode == KEEL_CROP_RANDOM_RESIZED && used > 0 && (size_t)used < size)
        used += snprintf(buf + used, size - (size_t)used, " (area %g-%g, ratio %.3g-%.3g)", (double)o->scale_min,
                         (double)o->scale_max, (double)o->ratio_min, (double)o->ratio_max);
    bool random = o->mode == KEEL_CROP_RANDOM || o->mode == KEEL_CROP_RANDOM_RESIZED;
    if (random && o->mirror && used > 0 && (size_t)used < size)
        used += snprintf(buf + used, size - (size_t)used, ", mirrored");
    if (o->lighting_std > 0.0f && used > 0 && (size_t)used < size)
        snprintf(buf + used, size - (size_t)used, ", PCA lighting %g", (double)o->lighting_std);
    return buf;
}

static keel_status check_test_set(const keel_trainer *t, const keel_dataset *d)
{
    int channels, height, width;
    keel_dataset_image_shape(d, &channels, &height, &width);
    if (channels != t->channels || height != t->height || width != t->width)
        return keel_fail(KEEL_ERR_SHAPE, "the test images are %dx%dx%d but the training images %dx%dx%d", channels,
                         height, width, t->channels, t->height, t->width);
    if (keel_dataset_classes(d) > t->classes)
        return keel_fail(KEEL_ERR_SHAPE, "the test set has %d classes but the training set %d",
                         keel_dataset_classes(d), t->classes);
    return KEEL_OK;
}

static keel_status set_normalization(keel_trainer *t)
{
    if (t->opts.no_normalize || t->images)
        return KEEL_OK;
    t->mean = calloc((size_t)t->channels, sizeof *t->mean);
    t->std = calloc((size_t)t->channels, sizeof *t->std);
    if (!t->mean || !t->std)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    keel_status st = keel_dataset_channel_stats(t->opts.train, t->mean, t->std);
    if (st == KEEL_OK)
        st = keel_dataset_set_normalization(t->opts.train, t->mean, t->std);
    if (st == KEEL_OK && t->opts.test)
        st = keel_dataset_set_normalization(t->opts.test, t->mean, t->std);
    return st;
}

static keel_status build_model(keel_trainer *t)
{
    keel_model_opts mo = t->opts.model_opts;
    mo.batch = t->opts.batch;
    mo.training = true;
    if (!mo.classes)
        mo.classes = t->classes;
    if (!mo.in_channels)
        mo.in_channels = t->channels;
    if (!mo.height)
        mo.height = t->height;
    if (!mo.width)
        mo.width = t->width;
    t->graph = keel_graph_new();
    if (!t->graph)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory creating the graph");
    keel_status st = t->opts.build ? t->opts.build(t->graph, &mo, &t->io, t->opts.build_user)
                                   : keel_model_build(t->graph, t->model_name, &mo, &t->io);
    if (st != KEEL_OK)
        return st;
    if (keel_graph_status(t->graph) != KEEL_OK)
        return keel_fail(keel_graph_status(t->graph), "%s", keel_graph_error(t->graph));
    if (!t->io.images || !t->io.labels || !t->io.logits || !t->io.loss)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "model '%s' did not set its images, labels, logits and loss nodes",
                         t->model_name);
    int64_t batch = 0;
    st = keel_check_eval_io(&t->io, t->channels, t->height, t->width, t->classes, &batch);
    if (st != KEEL_OK)
        return keel_fail_prefix(st, "model '%s': ", t->model_name);
    keel_graph_keep(t->graph, t->io.logits);
    return keel_graph_backward(t->graph, t->io.loss);
}

static keel_status create_image_loaders(keel_trainer *t)
{
    keel_image_loader_opts train = {
        .workers = t->opts.workers,
        .shuffle = true,
        .drop_last = true,
        .seed = t->opts.seed,
        .augment = t->train_augment,
        .shard_count = keel_dist_size(t->dist),
        .shard_index = keel_dist_rank(t->dist),
    };
    keel_status st = keel_batch_source_images(&t->train_source, t->plan, t->opts.batch, t->opts.train_images, &train);
    if (st == KEEL_OK && t->opts.test_images) {
        keel_image_loader_opts test = {.workers = t->opts.workers, .augment = t->test_augment};
        st = keel_batch_source_images(&t->test_source, t->plan, t->opts.batch, t->opts.test_images, &test);
        t->has_test = true;
    }
    return st;
}

static keel_status create_loaders(keel_trainer *t)
{
    int64_t global_batch = t->opts.batch * keel_dist_size(t->dist);
    if (train_size(&t->opts) < global_batch)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the training set has %lld images, fewer than one global batch "
                         "of %d ranks x %lld", (long long)train_size(&t->opts), keel_dist_size(t->dist),
                         (long long)t->opts.batch);
    keel_status st;
    if (t->images) {
        st = create_image_loaders(t);
    } else {
        keel_loader_opts train = {
            .batch = t->opts.batch,
            .shuffle = true,
            .seed = t->opts.seed,
            .drop_last = true,
            .no_prefetch = t->opts.no_prefetch,
            .shard_count = keel_dist_size(t->dist),
            .shard_index = keel_dist_rank(t->dist),
        };
        st = keel_batch_source_dataset(&t->train_source, t->opts.train, &train);
        if (st == KEEL_OK && t->opts.test) {
            keel_loader_opts test = {.batch = t->opts.batch, .no_prefetch = t->opts.no_prefetch};
            st = keel_batch_source_dataset(&t->test_source, t->opts.test, &test);
            t->has_test = true;
        }
    }
    if (st == KEEL_OK)
        t->steps_per_epoch = keel_batch_source_batches(&t->train_source);
    return st;
}

/* Every rank starts from rank 0's parameters (they agree already when the
 * seeds do; a broadcast makes it so whatever each rank was given). */
static keel_status join_ranks(keel_trainer *t)
{
    keel_status st = keel_dist_create(&t->dist, t->plan, t->opts.dist_timeout);
    if (st == KEEL_OK)
        st = keel_dist_broadcast_params(t->dist);
    return st == KEEL_OK ? st : keel_fail_prefix(st, "data parallelism: ");
}

/* "cuda" with data parallelism: the GPU of this rank's index among the
 * ranks on its host, which the MPI launcher exports. */
static char *rank_device(const keel_trainer_opts *o)
{
    const char *device = o->device ? o->device : "cpu";
    if (!o->data_parallel || strcmp(device, "cuda") != 0)
        return keel_strdup(device);
    const char *names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"};
    int local = 0;
    for (int i = 0; i < 3; i++)
        if (getenv(names[i])) {
            local = atoi(getenv(names[i]));
            break;
        }
    char buf[32];
    snprintf(buf, sizeof buf, "cuda:%d", local);
    return keel_strdup(buf);
}

/* The model's input: the training set's images, or 3 x crop x crop. */
static keel_status set_input_shape(keel_trainer *t)
{
    if (!t->images) {
        keel_dataset_image_shape(t->opts.train, &t->channels, &t->height, &t->width);
        t->classes = keel_dataset_classes(t->opts.train);
        return t->opts.test ? check_test_set(t, t->opts.test) : KEEL_OK;
    }
    keel_status st = set_augment(t);
    t->channels = 3;
    t->height = t->width = t->train_augment.crop_size;
    t->classes = keel_image_dataset_classes(t->opts.train_images);
    if (st == KEEL_OK && t->opts.test_images && keel_image_dataset_classes(t->opts.test_images) > t->classes)
        return keel_fail(KEEL_ERR_SHAPE, "the test set has %d classes but the training set %d",
                         keel_image_dataset_classes(t->opts.test_images), t->classes);
    return st;
}

static keel_status create(keel_trainer *t)
{
    keel_status st = set_input_shape(t);
    if (st == KEEL_OK)
        st = set_normalization(t);
    if (st == KEEL_OK)
        st = build_model(t);
    if (st == KEEL_OK) {
        keel_plan_opts po = {.devices = t->device, .seed = t->opts.seed, .deterministic = t->opts.deterministic};
        st = keel_plan_compile(&t->plan, t->graph, t->ctx, &po);
    }
    if (st == KEEL_OK)
        st = keel_optimizer_create(&t->optimizer, t->plan, &t->opts.optimizer);
    if (st == KEEL_OK && t->opts.data_parallel)
        st = join_ranks(t);
    if (st == KEEL_OK)
        st = create_loaders(t);
    if (st == KEEL_OK) {
        int64_t shape[KEEL_MAX_DIMS];
        keel_node_shape(t->io.logits, shape);
        t->logits_classes = shape[1];
        t->logits = malloc((size_t)(shape[0] * shape[1]) * sizeof *t->logits);
        if (!t->logits)
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for the logits");
    }
    return st;
}

keel_status keel_trainer_create(keel_trainer **out, keel_context *ctx, const keel_trainer_opts *opts)
{
    if (!out || !ctx || !opts)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_trainer_create: out, ctx and opts are required");
    *out = NULL;
    keel_status st = check_opts(opts);
    if (st != KEEL_OK)
        return st;
    keel_trainer *t = calloc(1, sizeof *t);
    if (!t)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory creating the trainer");
    t->ctx = ctx;
    t->opts = *opts;
    t->images = opts->train_images != NULL;
    t->model_name = keel_strdup(opts->build ? (opts->model ? opts->model : "custom") : opts->model);
    t->device = rank_device(opts);
    t->save_path = opts->save_path ? keel_strdup(opts->save_path) : NULL;
    if (!t->model_name || !t->device || (opts->save_path && !t->save_path))
        st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory creating the trainer");
    t->opts.model = t->model_name;
    t->opts.device = t->device;
    t->opts.save_path = t->save_path;
    if (st == KEEL_OK)
        st = create(t);
    if (st != KEEL_OK) {
        keel_trainer_destroy(t);
        return st;
    }
    *out = t;
    return KEEL_OK;
}

void keel_trainer_destroy(keel_trainer *t)
{
    if (!t)
        return;
    keel_batch_source_release(&t->train_source);
    keel_batch_source_release(&t->test_source);
    keel_dist_destroy(t->dist);
    keel_optimizer_destroy(t->optimizer);
    keel_plan_destroy(t->plan);
    keel_graph_free(t->graph);
    free(t->logits);
    free(t->mean);
    free(t->std);
    free(t->train_mean_image);
    free(t->test_mean_image);
    free(t->history);
    free(t->model_name);
    free(t->device);
    free(t->save_path);
    free(t);
}

/* ---- training ------------------------------------------------------------ */

static int64_t total_steps(const keel_trainer *t)
{
    return (int64_t)t->opts.epochs * t->steps_per_epoch;
}

static float lr_at(const keel_trainer *t, int64_t step)
{
    return keel_schedule_lr(&t->opts.schedule, t->opts.optimizer.lr, step, t->steps_per_epoch, total_steps(t));
}

static void report(const keel_trainer *t, keel_progress *p)
{
    if (t->opts.progress && keel_dist_rank(t->dist) == 0)
        t->opts.progress(p, t->opts.progress_user);
}

static keel_status feed(keel_trainer *t, const keel_batch *b)
{
    keel_status st = keel_plan_set_input(t->plan, t->io.images, b->images);
    if (st == KEEL_OK)
        st = keel_plan_set_input(t->plan, t->io.labels, b->labels);
    return st;
}

/* Queues one step on the fed batch; on a GPU it may still be running when
 * this returns. */
static keel_status queue_step(keel_trainer *t, float lr)
{
    keel_status st = keel_plan_forward(t->plan, true);
    if (st == KEEL_OK && t->dist)
        keel_dist_begin_grads(t->dist);
    if (st == KEEL_OK)
        st = keel_plan_backward(t->plan);
    if (st == KEEL_OK && t->dist)
        st = keel_dist_finish_grads(t->dist);
    if (st == KEEL_OK)
        st = keel_optimizer_step(t->optimizer, lr);
    return st;
}

static keel_status add_history(keel_trainer *t, const keel_epoch_stats *s)
{
    if (t->n_history == t->cap_history) {
        int cap = t->cap_history ? 2 * t->cap_history : 16;
        keel_epoch_stats *grown = realloc(t->history, (size_t)cap * sizeof *grown);
        if (!grown)
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory recording the epoch");
        t->history = grown;
        t->cap_history = cap;
    }
    t->history[t->n_history++] = *s;
    return KEEL_OK;
}

static keel_status train_epoch(keel_trainer *t, keel_epoch_stats *stats)
{
    keel_progress p = {
        .event = KEEL_PROGRESS_EPOCH_BEGIN,
        .epoch = t->epochs_done + 1,
        .epochs = t->opts.epochs,
        .steps = t->steps_per_epoch,
        .global_step = t->global_step,
        .lr = lr_at(t, t->global_step),
    };
    keel_status st = keel_batch_source_start(&t->train_source, t->epochs_done);
    if (st != KEEL_OK)
        return st;
    report(t, &p);
    double start = keel_train_now(), loss_sum = 0.0;
    int64_t global_batch = t->opts.batch * keel_dist_size(t->dist);
    p.event = KEEL_PROGRESS_STEP;
    keel_batch b = {0};
    st = keel_batch_source_next(&t->train_source, &b);
    if (st == KEEL_OK && b.count > 0)
        st = feed(t, &b);
    while (st == KEEL_OK && b.count > 0) {
        p.lr = lr_at(t, t->global_step);
        st = queue_step(t, p.lr);
        /* The next batch goes to the device while this step runs there
         * (reading the loss waits for the step). */
        if (st == KEEL_OK)
            st = keel_batch_source_next(&t->train_source, &b);
        if (st == KEEL_OK && b.count > 0)
            st = feed(t, &b);
        if (st == KEEL_OK)
            st = keel_plan_read(t->plan, t->io.loss, &p.loss);
        if (st != KEEL_OK)
            return st;
        if (!isfinite(p.loss))
            return keel_fail(KEEL_ERR_STATE, "the loss became %g at epoch %d step %lld (learning rate %g); try a "
                             "lower --lr", (double)p.loss, p.epoch, (long long)p.step + 1, (double)p.lr);
        t->global_step++;
        p.step++;
        p.global_step = t->global_step;
        loss_sum += p.loss;
        p.mean_loss = loss_sum / (double)p.step;
        p.elapsed_seconds = keel_train_now() - start;
        p.images_per_second = p.elapsed_seconds > 0 ? (double)(p.step * global_batch) / p.elapsed_seconds : 0.0;
        p.eta_seconds = p.elapsed_seconds / (double)p.step * (double)(p.steps - p.step);
        report(t, &p);
    }
    if (st == KEEL_OK && t->dist) {
        /* Each rank's losses are means over its shard; the epoch's loss is
         * their mean over the ranks. */
        st = keel_dist_sum(t->dist, &loss_sum, 1);
        p.mean_loss = p.step ? loss_sum / (double)keel_dist_size(t->dist) / (double)p.step : 0.0;
    }
    if (st != KEEL_OK)
        return st;
    memset(stats, 0, sizeof *stats);
    stats->epoch = p.epoch;
    stats->train_loss = p.mean_loss;
    stats->seconds = keel_train_now() - start;
    stats->images_per_second = stats->seconds > 0 ? (double)(p.step * global_batch) / stats->seconds : 0.0;
    stats->lr = p.lr;
    return KEEL_OK;
}

keel_status keel_trainer_epoch(keel_trainer *t, keel_epoch_stats *out)
{
    if (!t)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_trainer_epoch: trainer is NULL");
    keel_epoch_stats stats;
    keel_status st = train_epoch(t, &stats);
    if (st != KEEL_OK)
        return st;
    keel_progress p = {
        .epoch = stats.epoch,
        .epochs = t->opts.epochs,
        .step = t->steps_per_epoch,
        .steps = t->steps_per_epoch,
        .global_step = t->global_step,
        .mean_loss = stats.train_loss,
        .lr = stats.lr,
        .images_per_second = stats.images_per_second,
        .elapsed_seconds = stats.seconds,
    };
    if (t->dist && (t->has_test || t->save_path)) {
        st = keel_dist_average_state(t->dist);
        if (st != KEEL_OK)
            return st;
    }
    if (t->has_test) {
        p.event = KEEL_PROGRESS_EVAL_BEGIN;
        report(t, &p);
        double start = keel_train_now();
        st = keel_eval_loop(t->plan, &t->io, &t->test_source, t->logits, &stats.eval);
        if (st != KEEL_OK)
            return keel_fail_prefix(st, "evaluating after epoch %d: ", stats.epoch);
        stats.evaluated = true;
        stats.eval_seconds = keel_train_now() - start;
    }
    t->epochs_done++;
    st = add_history(t, &stats);
    if (st == KEEL_OK && t->save_path && keel_dist_rank(t->dist) == 0)
        st = keel_trainer_save(t, t->save_path);
    if (st != KEEL_OK)
        return st;
    p.event = KEEL_PROGRESS_EPOCH_END;
    p.stats = &stats;
    report(t, &p);
    if (out)
        *out = stats;
    return KEEL_OK;
}

keel_status keel_trainer_run(keel_trainer *t)
{
    if (!t)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_trainer_run: trainer is NULL");
    while (t->epochs_done < t->opts.epochs) {
        keel_status st = keel_trainer_epoch(t, NULL);
        if (st != KEEL_OK)
            return st;
    }
    return KEEL_OK;
}

keel_status keel_trainer_evaluate(keel_trainer *t, keel_dataset *d, keel_eval_result *out)
{
    if (!t || !out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_trainer_evaluate: trainer and out are required");
    if (!d) {
        if (!t->has_test)
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the trainer has no test set; pass a dataset to evaluate");
        return keel_eval_loop(t->plan, &t->io, &t->test_source, t->logits, out);
    }
    if (t->images)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "this trainer trains on images; evaluate another image dataset "
                         "with keel_trainer_evaluate_images");
    keel_status st = check_test_set(t, d);
    if (st == KEEL_OK && t->mean)
        st = keel_dataset_set_normalization(d, t->mean, t->std);
    if (st == KEEL_OK)
        st = keel_evaluate(t->plan, &t->io, d, out);
    return st;
}

keel_status keel_trainer_evaluate_images(keel_trainer *t, keel_image_dataset *d, keel_eval_result *out)
{
    if (!t || !d || !out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_trainer_evaluate_images: trainer, dataset and out are required");
    if (!t->images)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "this trainer trains on an in-memory dataset; evaluate with "
                         "keel_trainer_evaluate");
    return keel_evaluate_images(t->plan, &t->io, d, &t->test_augment, t->opts.workers, out);
}

/* ---- checkpoints ------------------------------------------------------------ */

static keel_status set_floats(keel_st_writer *w, const char *key, const float *v, int n)
{
    char buf[1024];
    size_t used = 0;
    for (int i = 0; i < n && used < sizeof buf; i++) {
        char number[32];
        used += (size_t)snprintf(buf + used, sizeof buf - used, "%s%s", i ? "," : "",
                                 keel_float_str(v[i], number, sizeof number));
    }
    return keel_st_writer_set_metadata(w, key, buf);
}

/* "epoch,train_loss,seconds,images/s,lr,evaluated,samples,loss,top1,top5;..." */
static char *format_history(const keel_trainer *t)
{
    size_t size = (size_t)t->n_history * 256 + 1;
    char *buf = malloc(size);
    if (!buf)
        return NULL;
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < t->n_history; i++) {
        const keel_epoch_stats *s = &t->history[i];
        used += (size_t)snprintf(buf + used, size - used, "%s%d,%.9g,%.6g,%.6g,%.9g,%d,%lld,%.9g,%.9g,%.9g,%.6g",
                                 i ? ";" : "", s->epoch, s->train_loss, s->seconds, s->images_per_second,
                                 (double)s->lr, s->evaluated, (long long)s->eval.samples, s->eval.loss, s->eval.top1,
                                 s->eval.top5, s->eval_seconds);
    }
    return buf;
}

static keel_status parse_history(keel_trainer *t, const char *text, const char *path)
{
    t->n_history = 0;
    const char *c = text;
    while (c && *c) {
        keel_epoch_stats s = {0};
        int evaluated = 0, used = 0;
        long long samples = 0;
        double lr = 0;
        int n = sscanf(c, "%d,%lf,%lf,%lf,%lf,%d,%lld,%lf,%lf,%lf,%lf%n", &s.epoch, &s.train_loss, &s.seconds,
                       &s.images_per_second, &lr, &evaluated, &samples, &s.eval.loss, &s.eval.top1, &s.eval.top5,
                       &s.eval_seconds, &used);
        if (n != 11 || (c[used] != ';' && c[used] != '\0'))
            return keel_fail(KEEL_ERR_FORMAT, "%s: the history metadata is malformed near '%.40s'", path, c);
        s.lr = (float)lr;
        s.evaluated = evaluated != 0;
        s.eval.samples = samples;
        s.eval.has_top5 = t->images || t->logits_classes > 10;
        keel_status st = add_history(t, &s);
        if (st != KEEL_OK)
            return st;
        c += used;
        if (*c == ';')
            c++;
    }
    return KEEL_OK;
}

/* Image datasets: the normalisation the augmentation applied (what `keel
 * eval` needs to feed the model the same inputs) and the crops. */
static keel_status write_image_metadata(keel_trainer *t, keel_st_writer *w)
{
    const keel_augment_opts *o = &t->train_augment;
    char text[256];
    keel_status st = keel_st_writer_set_metadata(w, "data", "images");
    if (st == KEEL_OK && !o->mean_image) st = set_floats(w, "normalize.mean", o->mean, 3);
    if (st == KEEL_OK && o->mean_image)
        st = keel_st_writer_set_metadataf(w, "normalize.mean_image", "3x%dx%d", o->crop_size, o->crop_size);
    if (st == KEEL_OK) st = set_floats(w, "normalize.std", o->std, 3);
    if (st == KEEL_OK) st = keel_st_writer_set_metadata(w, "augment.train", augment_text(o, text, sizeof text));
    if (st == KEEL_OK && t->opts.test_images)
        st = keel_st_writer_set_metadata(w, "augment.test", augment_text(&t->test_augment, text, sizeof text));
    return st;
}

static keel_status write_metadata(keel_trainer *t, keel_st_writer *w)
{
    char schedule[512];
    keel_schedule_describe(&t->opts.schedule, t->opts.optimizer.lr, t->steps_per_epoch, total_steps(t), schedule,
                           sizeof schedule);
    keel_status st = keel_st_writer_set_metadata(w, "format", "pt");
    if (st == KEEL_OK) st = keel_st_writer_set_metadata(w, "keel.version", keel_version());
    if (st == KEEL_OK) st = keel_st_writer_set_metadata(w, "keel.kind", "checkpoint");
    if (st == KEEL_OK) st = keel_st_writer_set_metadata(w, "model", t->model_name);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "epoch", "%d", t->epochs_done);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "epochs", "%d", t->opts.epochs);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "global_step", "%lld", (long long)t->global_step);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "batch", "%lld", (long long)t->opts.batch);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "seed", "%llu", (unsigned long long)t->opts.seed);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "rng.plan_step", "%llu", (unsigned long long)t->plan->step);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "loader.seed", "%llu", (unsigned long long)t->opts.seed);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "loader.epoch", "%d", t->epochs_done);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "threads", "%d", keel_context_threads(t->ctx));
    if (st == KEEL_OK) st = keel_st_writer_set_metadata(w, "device", t->device);
    if (st == KEEL_OK) st = keel_st_writer_set_metadata(w, "schedule", schedule);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "input", "%dx%dx%d", t->channels, t->height, t->width);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "classes", "%lld", (long long)t->logits_classes);
    if (st == KEEL_OK && t->mean) st = set_floats(w, "normalize.mean", t->mean, t->channels);
    if (st == KEEL_OK && t->std) st = set_floats(w, "normalize.std", t->std, t->channels);
    if (st == KEEL_OK && t->images) st = write_image_metadata(t, w);
    if (st == KEEL_OK) {
        char *history = format_history(t);
        st = history ? keel_st_writer_set_metadata(w, "history", history)
                     : keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory saving the history");
        free(history);
    }
    return st;
}

keel_status keel_trainer_save(keel_trainer *t, const char *path)
{
    if (!t || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_trainer_save: trainer and path are required");
    keel_st_writer *w = NULL;
    float *params = NULL, *state = NULL;
    keel_status st = keel_st_writer_new(&w);
    if (st == KEEL_OK)
        st = keel_weights_export(t->plan, w, &params);
    if (st == KEEL_OK)
        st = keel_optimizer_export(t->optimizer, w, &state);
    if (st == KEEL_OK)
        st = write_metadata(t, w);
    if (st == KEEL_OK)
        st = keel_st_writer_write(w, path);
    keel_st_writer_free(w);
    free(params);
    free(state);
    return st == KEEL_OK ? st : keel_fail_prefix(st, "saving checkpoint %s: ", path);
}

static keel_status read_count(const keel_st_file *f, const char *key, int64_t most, int64_t *value)
{
    keel_status st = keel_st_file_metadata_i64(f, key, value);
    if (st != KEEL_OK)
        return keel_fail_prefix(st, "%s: ", keel_st_file_path(f));
    if (*value < 0 || *value > most)
        return keel_fail(KEEL_ERR_FORMAT, "%s: metadata '%s' is %lld, outside [0, %lld]", keel_st_file_path(f), key,
                         (long long)*value, (long long)most);
    return KEEL_OK;
}

/* Settings that must match for a bit-identical continuation. */
static void warn_differences(keel_trainer *t, const keel_st_file *f)
{
    int64_t v = 0;
    if (keel_st_file_metadata_i64(f, "batch", &v) == KEEL_OK && v != t->opts.batch)
        keel_context_log(t->ctx, KEEL_LOG_WARN, "%s was trained with batch %lld; continuing with %lld",
                         keel_st_file_path(f), (long long)v, (long long)t->opts.batch);
    if (keel_st_file_metadata_i64(f, "threads", &v) == KEEL_OK && v != keel_context_threads(t->ctx))
        keel_context_log(t->ctx, KEEL_LOG_WARN, "%s was trained with %lld threads, this run uses %d: results will "
                         "not be bit-identical to an uninterrupted run", keel_st_file_path(f), (long long)v,
                         keel_context_threads(t->ctx));
    uint64_t seed = 0;
    if (keel_st_file_metadata_u64(f, "seed", &seed) == KEEL_OK && seed != t->opts.seed)
        keel_context_log(t->ctx, KEEL_LOG_WARN, "%s was trained with seed %llu, this run uses %llu (shuffling "
                         "and dropout differ from an uninterrupted run)", keel_st_file_path(f),
                         (unsigned long long)seed, (unsigned long long)t->opts.seed);
    const char *augment = keel_st_file_metadata(f, "augment.train");
    char text[256];
    if (t->images && augment && strcmp(augment, augment_text(&t->train_augment, text, sizeof text)) != 0)
        keel_context_log(t->ctx, KEEL_LOG_WARN, "%s was trained with %s; continuing with %s", keel_st_file_path(f),
                         augment, text);
    const char *lr = keel_st_file_metadata(f, "optimizer.lr");
    if (lr && strtof(lr, NULL) != t->opts.optimizer.lr)
        keel_context_log(t->ctx, KEEL_LOG_WARN, "%s was trained with learning rate %s; continuing with %g",
                         keel_st_file_path(f), lr, (double)t->opts.optimizer.lr);
}

static keel_status resume(keel_trainer *t, const keel_st_file *f)
{
    const char *path = keel_st_file_path(f);
    const char *kind = keel_st_file_metadata(f, "keel.kind");
    if (!kind || strcmp(kind, "checkpoint") != 0 || !keel_st_file_metadata(f, "optimizer"))
        return keel_fail(KEEL_ERR_FORMAT, "%s is not a Keel training checkpoint (no optimizer state or epoch); "
                         "a weights file can be evaluated with `keel eval --weights`", path);
    const char *kind_saved = keel_st_file_metadata(f, "optimizer");
    if (strcmp(kind_saved, keel_optimizer_name(t->opts.optimizer.kind)) != 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s holds %s state; this run uses %s (pass --optimizer %s to "
                         "continue it)", path, kind_saved, keel_optimizer_name(t->opts.optimizer.kind), kind_saved);
    int64_t epoch = 0, step = 0, plan_step = 0;
    keel_status st = read_count(f, "epoch", 1 << 30, &epoch);
    if (st == KEEL_OK)
        st = read_count(f, "global_step", INT64_MAX / 2, &step);
    if (st == KEEL_OK)
        st = read_count(f, "rng.plan_step", INT64_MAX / 2, &plan_step);
    if (st != KEEL_OK)
        return st;
    st = keel_weights_import(t->plan, f, true);
    if (st != KEEL_OK) {
        const char *model = keel_st_file_metadata(f, "model");
        if (model && strcmp(model, t->model_name) != 0)
            return keel_fail_prefix(st, "the checkpoint was saved by model '%s', not '%s': ", model, t->model_name);
        return st;
    }
    st = keel_optimizer_import(t->optimizer, f);
    if (st != KEEL_OK)
        return st;
    const char *history = keel_st_file_metadata(f, "history");
    st = parse_history(t, history ? history : "", path);
    if (st != KEEL_OK)
        return st;
    warn_differences(t, f);
    t->epochs_done = (int)epoch;
    t->global_step = step;
    t->plan->step = (uint64_t)plan_step;
    return KEEL_OK;
}

keel_status keel_trainer_resume(keel_trainer *t, const char *path)
{
    if (!t || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_trainer_resume: trainer and path are required");
    keel_st_file *f = NULL;
    keel_status st = keel_st_file_load(&f, path);
    if (st == KEEL_OK)
        st = resume(t, f);
    keel_st_file_free(f);
    return st == KEEL_OK ? st : keel_fail_prefix(st, "resuming: ");
}

/* ---- inspection ------------------------------------------------------------ */

int keel_trainer_epochs_done(const keel_trainer *t) { return t ? t->epochs_done : 0; }
int keel_trainer_history_count(const keel_trainer *t) { return t ? t->n_history : 0; }

keel_status keel_trainer_history(const keel_trainer *t, int index, keel_epoch_stats *stats)
{
    if (!t || !stats || index < 0 || index >= t->n_history)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "history index %d out of range (%d epochs recorded)", index,
                         t ? t->n_history : 0);
    *stats = t->history[index];
    return KEEL_OK;
}

keel_plan *keel_trainer_plan(keel_trainer *t) { return t ? t->plan : NULL; }
keel_graph *keel_trainer_graph(keel_trainer *t) { return t ? t->graph : NULL; }
const keel_model_io *keel_trainer_model_io(const keel_trainer *t) { return t ? &t->io : NULL; }
keel_optimizer *keel_trainer_optimizer(keel_trainer *t) { return t ? t->optimizer : NULL; }
int64_t keel_trainer_steps_per_epoch(const keel_trainer *t) { return t ? t->steps_per_epoch : 0; }
int keel_trainer_rank(const keel_trainer *t) { return t ? keel_dist_rank(t->dist) : 0; }
int keel_trainer_ranks(const keel_trainer *t) { return t ? keel_dist_size(t->dist) : 1; }

static size_t append(char *buf, size_t size, size_t used, const char *fmt, ...) KEEL_PRINTF(4, 5);
static size_t append(char *buf, size_t size, size_t used, const char *fmt, ...)
{
    if (used >= size)
        return used;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + used, size - used, fmt, ap);
    va_end(ap);
    return n > 0 ? used + (size_t)n : used;
}

/* 61706 -> "61,706" */
static const char *grouped(int64_t n, char *buf, size_t size)
{
    char digits[32];
    snprintf(digits, sizeof digits, "%lld", (long long)n);
    size_t len = strlen(digits), used = 0;
    for (size_t i = 0; i < len && used + 1 < size; i++) {
        buf[used++] = digits[i];
        size_t left = len - i - 1;
        if (left && left % 3 == 0 && digits[i] != '-' && used + 1 < size)
            buf[used++] = ',';
    }
    buf[used] = '\0';
    return buf;
}

static size_t describe_images(const keel_trainer *t, char *buf, size_t size, size_t used)
{
    const keel_augment_opts *o = &t->train_augment;
    char text[256];
    used = append(buf, size, used, "\naugment    train: %s", augment_text(o, text, sizeof text));
    if (t->opts.test_images)
        used = append(buf, size, used, "; test: %s%s", augment_text(&t->test_augment, text, sizeof text),
                      t->test_augment.mode == KEEL_CROP_TEN ? " (softmax averaged)" : "");
    if (o->mean_image)
        used = append(buf, size, used, "\n           normalised with a %dx%d mean image, std", o->crop_size,
                      o->crop_size);
    else
        used = append(buf, size, used, "\n           normalised with mean %.4g %.4g %.4g, std", (double)o->mean[0],
                      (double)o->mean[1], (double)o->mean[2]);
    used = append(buf, size, used, " %.4g %.4g %.4g; ", (double)o->std[0], (double)o->std[1], (double)o->std[2]);
    if (t->opts.workers == 0)
        return append(buf, size, used, "decoded on the training thread");
    return append(buf, size, used, "decoded by %d worker thread%s", t->opts.workers, t->opts.workers == 1 ? "" : "s");
}

const char *keel_trainer_describe(const keel_trainer *t, char *buf, size_t size)
{
    if (!buf || size == 0)
        return buf;
    buf[0] = '\0';
    if (!t)
        return buf;
    const keel_trainer_opts *o = &t->opts;
    const keel_optimizer_opts *opt = &o->optimizer;
    int64_t train_n = train_size(o);
    int ranks = keel_dist_size(t->dist);
    int64_t dropped = train_n - t->steps_per_epoch * o->batch * ranks;
    size_t used = 0;
    char a[32], b[32];
    used = append(buf, size, used, "model      %s: %s parameters, input %dx%dx%d, %lld classes\n", t->model_name,
                  grouped(keel_graph_param_count(t->graph), a, sizeof a), t->channels, t->height, t->width,
                  (long long)t->logits_classes);
    used = append(buf, size, used, "data       %s training images%s: %lld batches of %lld", grouped(train_n, b, sizeof b),
                  !t->images ? "" : keel_image_dataset_is_packed(o->train_images) ? " (packed shards)" : " (image files)",
                  (long long)t->steps_per_epoch, (long long)(o->batch * ranks));
    if (dropped > 0)
        used = append(buf, size, used, " (the last %lld of each shuffled epoch left out)", (long long)dropped);
    if (o->test)
        used = append(buf, size, used, "; %s test images", grouped(keel_dataset_size(o->test), a, sizeof a));
    if (o->test_images)
        used = append(buf, size, used, "; %s validation images", grouped(keel_image_dataset_size(o->test_images), a,
                                                                        sizeof a));
    if (t->images)
        used = describe_images(t, buf, size, used);
    if (t->dist)
        used = append(buf, size, used, "\nparallel   data-parallel over %d ranks: batch %lld per rank, an effective batch "
                      "of %lld; gradients are averaged, so lr %g steps on the mean over %lld images (%g would keep "
                      "a %lld-batch run's step per image); batch-norm statistics per rank, averaged before evaluating",
                      ranks, (long long)o->batch, (long long)o->batch * ranks, (double)o->optimizer.lr,
                      (long long)o->batch * ranks, (double)o->optimizer.lr * ranks, (long long)o->batch);
    if (t->mean) {
        used = append(buf, size, used, "\n           normalised with mean");
        for (int c = 0; c < t->channels; c++)
            used = append(buf, size, used, " %.4f", (double)t->mean[c]);
        used = append(buf, size, used, ", std");
        for (int c = 0; c < t->channels; c++)
            used = append(buf, size, used, " %.4f", (double)t->std[c]);
    }
    used = append(buf, size, used, "\noptimizer  %s: lr %g", keel_optimizer_name(opt->kind), (double)opt->lr);
    if (opt->kind == KEEL_OPTIMIZER_SGD)
        used = append(buf, size, used, ", momentum %g%s", (double)opt->momentum, opt->nesterov ? " (Nesterov)" : "");
    else
        used = append(buf, size, used, ", betas (%g, %g), eps %g", (double)opt->beta1, (double)opt->beta2,
                      (double)opt->eps);
    used = append(buf, size, used, ", weight decay %g\n", (double)opt->weight_decay);
    char schedule[512];
    keel_schedule_describe(&o->schedule, opt->lr, t->steps_per_epoch, total_steps(t), schedule, sizeof schedule);
    used = append(buf, size, used, "schedule   %s\n", schedule);
    keel_memory_report mem = {0};
    keel_plan_memory(t->plan, &mem);
    used = append(buf, size, used, "device     %s, %d thread%s, seed %llu, %.1f MiB activations + %.1f MiB parameters",
                  t->device, keel_context_threads(t->ctx), keel_context_threads(t->ctx) == 1 ? "" : "s", (unsigned long long)o->seed,
                  (double)mem.arena_bytes / 1048576.0, (double)(mem.param_bytes + mem.grad_bytes) / 1048576.0);
    return buf;
}
