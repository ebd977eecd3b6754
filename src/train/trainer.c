/* The training loop: build, differentiate and compile a model, then per
 * epoch feed shuffled batches through forward, backward and one fused
 * optimiser step, evaluate on the test set, and checkpoint. The batches come
 * from an in-memory dataset's loader or from an image dataset's worker
 * threads, through one batch source. Saving and resuming are in
 * trainer_checkpoint.c, the image augmentation options in
 * trainer_augment.c. */
#include "train/train_internal.h"
#include "train/trainer_internal.h"
#include "keel/keel.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* The variables in which launchers export a rank's index among the ranks
 * on its host: Open MPI, MPICH and Intel MPI, MVAPICH2, Slurm's srun. */
static const char *const local_rank_vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                                              "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"};

static int cuda_devices(void)
{
#ifdef KEEL_HAVE_CUDA
    return keel_cuda_backend.device_count();
#else
    return 0;
#endif
}

/* This rank's index on its host (0 when no launcher says). */
static keel_status local_rank(long *local, const char **var)
{
    *local = 0;
    *var = NULL;
    for (size_t i = 0; i < sizeof local_rank_vars / sizeof *local_rank_vars && !*var; i++)
        if (getenv(local_rank_vars[i]))
            *var = local_rank_vars[i];
    if (!*var)
        return KEEL_OK;
    const char *text = getenv(*var);
    char *end = NULL;
    *local = strtol(text, &end, 10);
    if (end == text || *end || *local < 0 || *local > 1 << 20)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "data parallelism: %s is '%s', not a rank index", *var, text);
    return KEEL_OK;
}

/* "cuda" with data parallelism: the GPU of this rank's index among the
 * ranks on its host. A host with fewer GPUs than ranks is refused here, in
 * those words: the compiler would only say that cuda:3 does not exist, not
 * why this rank asked for it. Without CUDA devices at all, the compiler's
 * message (no driver, or a build without CUDA) is the better one. */
static keel_status choose_device(keel_trainer *t, const keel_trainer_opts *o)
{
    const char *device = o->device ? o->device : "cpu";
    if (!o->data_parallel || strcmp(device, "cuda") != 0) {
        t->device = keel_strdup(device);
        return KEEL_OK;
    }
    long local = 0;
    const char *var = NULL;
    keel_status st = local_rank(&local, &var);
    if (st != KEEL_OK)
        return st;
    int count = cuda_devices();
    /* Several ranks on one host would then share a GPU (and NCCL refuses
     * two ranks on one device), so say so rather than guess. */
    if (!var && count > 1)
        keel_context_log(t->ctx, KEEL_LOG_WARN, "data parallelism: no launcher variable (%s, %s, %s or %s) gives "
                         "this rank's index on its host, so it takes cuda:0; start it with mpirun, srun or mpiexec, "
                         "or name the GPU with --device cuda:N", local_rank_vars[0], local_rank_vars[1],
                         local_rank_vars[2], local_rank_vars[3]);
    if (count > 0 && local >= count)
        return keel_fail(KEEL_ERR_NOT_FOUND, "data parallelism: --device cuda takes the GPU of the rank's index on "
                         "its host, %ld (%s), but this host has %d CUDA device%s: start at most %d rank%s per host, "
                         "or, where the launcher gives each rank its own GPUs (CUDA_VISIBLE_DEVICES), name one with "
                         "--device cuda:N", local, var, count, count == 1 ? "" : "s", count, count == 1 ? "" : "s");
    char buf[32];
    snprintf(buf, sizeof buf, "cuda:%ld", local);
    t->device = keel_strdup(buf);
    return KEEL_OK;
}

/* The model's input: the training set's images, or 3 x crop x crop. */
static keel_status set_input_shape(keel_trainer *t)
{
    if (!t->images) {
        keel_dataset_image_shape(t->opts.train, &t->channels, &t->height, &t->width);
        t->classes = keel_dataset_classes(t->opts.train);
        return t->opts.test ? check_test_set(t, t->opts.test) : KEEL_OK;
    }
    keel_status st = keel_trainer_set_augment(t);
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
        keel_plan_opts po = {.devices = t->device, .seed = t->opts.seed, .deterministic = t->opts.deterministic,
                             .strict_fp32 = t->opts.strict_fp32, .autotune = t->opts.autotune};
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
    st = choose_device(t, opts);
    t->save_path = opts->save_path ? keel_strdup(opts->save_path) : NULL;
    if (st == KEEL_OK && (!t->model_name || !t->device || (opts->save_path && !t->save_path)))
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

int64_t keel_trainer_total_steps(const keel_trainer *t)
{
    return (int64_t)t->opts.epochs * t->steps_per_epoch;
}

static float lr_at(const keel_trainer *t, int64_t step)
{
    return keel_schedule_lr(&t->opts.schedule, t->opts.optimizer.lr, step, t->steps_per_epoch,
                            keel_trainer_total_steps(t));
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

keel_status keel_trainer_add_history(keel_trainer *t, const keel_epoch_stats *s)
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

/* The progress callback runs while the next batch is already fed; an
 * evaluation it starts feeds test batches into the same inputs, so the
 * staged batch goes in again (its buffer is the loader's until the next
 * batch is asked for). */
static keel_status restore_staged(keel_trainer *t, keel_status st)
{
    if (st != KEEL_OK || !t->staged || t->staged->count == 0)
        return st;
    return feed(t, t->staged);
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
    t->staged = &b;
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
            break;
        if (!isfinite(p.loss)) {
            st = keel_fail(KEEL_ERR_STATE, "the loss became %g at epoch %d step %lld (learning rate %g); try a "
                           "lower --lr", (double)p.loss, p.epoch, (long long)p.step + 1, (double)p.lr);
            break;
        }
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
    t->staged = NULL;
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
    st = keel_trainer_add_history(t, &stats);
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

/* ---- evaluation ---------------------------------------------------------- */

keel_status keel_trainer_evaluate(keel_trainer *t, keel_dataset *d, keel_eval_result *out)
{
    if (!t || !out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_trainer_evaluate: trainer and out are required");
    if (!d) {
        if (!t->has_test)
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the trainer has no test set; pass a dataset to evaluate");
        return restore_staged(t, keel_eval_loop(t->plan, &t->io, &t->test_source, t->logits, out));
    }
    if (t->images)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "this trainer trains on images; evaluate another image dataset "
                         "with keel_trainer_evaluate_images");
    keel_status st = check_test_set(t, d);
    if (st == KEEL_OK && t->mean)
        st = keel_dataset_set_normalization(d, t->mean, t->std);
    if (st == KEEL_OK)
        st = keel_evaluate(t->plan, &t->io, d, out);
    return restore_staged(t, st);
}

keel_status keel_trainer_evaluate_images(keel_trainer *t, keel_image_dataset *d, keel_eval_result *out)
{
    if (!t || !d || !out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_trainer_evaluate_images: trainer, dataset and out are required");
    if (!t->images)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "this trainer trains on an in-memory dataset; evaluate with "
                         "keel_trainer_evaluate");
    return restore_staged(t, keel_evaluate_images(t->plan, &t->io, d, &t->test_augment, t->opts.workers, out));
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
    used = append(buf, size, used, "\naugment    train: %s", keel_trainer_augment_text(o, text, sizeof text));
    if (t->opts.test_images)
        used = append(buf, size, used, "; test: %s%s", keel_trainer_augment_text(&t->test_augment, text, sizeof text),
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
    keel_schedule_describe(&o->schedule, opt->lr, t->steps_per_epoch, keel_trainer_total_steps(t), schedule,
                           sizeof schedule);
    used = append(buf, size, used, "schedule   %s\n", schedule);
    keel_memory_report mem = {0};
    keel_plan_memory(t->plan, &mem);
    used = append(buf, size, used, "device     %s, %d thread%s, seed %llu, %.1f MiB activations + %.1f MiB parameters",
                  t->device, keel_context_threads(t->ctx), keel_context_threads(t->ctx) == 1 ? "" : "s", (unsigned long long)o->seed,
                  (double)mem.arena_bytes / 1048576.0, (double)(mem.param_bytes + mem.grad_bytes) / 1048576.0);
    /* TF32 rounds convolution and GEMM inputs to 10 mantissa bits: a user
     * comparing with another framework's fp32 must know. */
    if (strncmp(t->device, "cuda", 4) == 0)
        used = append(buf, size, used, "\nprecision  %s",
                      o->strict_fp32 ? "IEEE fp32 (--strict-fp32)"
                                     : "fp32 with TF32 tensor cores allowed in convolutions and matrix products "
                                       "(--strict-fp32: IEEE fp32 only)");
    return buf;
}
