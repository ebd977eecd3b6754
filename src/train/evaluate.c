/* Evaluation: loss and top-k accuracy from the logits, over a dataset cut
 * into the plan's fixed batch (the last batch padded, its padding ignored),
 * and the batch source that feeds the plan from either kind of loader. */
#include "train/train_internal.h"
#include "train/trainer_internal.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double keel_train_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *keel_float_str(float v, char *buf, size_t size)
{
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(buf, size, "%.*g", digits, (double)v);
        if (strtof(buf, NULL) == v)
            break;
    }
    return buf;
}

/* -log softmax(z)[label], computed stably in double. */
static double cross_entropy(const float *z, int classes, int label)
{
    double most = z[0];
    for (int j = 1; j < classes; j++)
        if (z[j] > most)
            most = z[j];
    double sum = 0.0;
    for (int j = 0; j < classes; j++)
        sum += exp((double)z[j] - most);
    return log(sum) + most - (double)z[label];
}

/* -log of the mean over the views of softmax(z_v)[label]: the loss of
 * the probabilities the ten-crop ensemble ranks, through log-sum-exp. */
static double views_cross_entropy(const float *z, int views, int classes, int label)
{
    if (views == 1)
        return cross_entropy(z, classes, label);
    double most = -cross_entropy(z, classes, label);
    for (int v = 1; v < views; v++) {
        double log_p = -cross_entropy(z + (size_t)v * classes, classes, label);
        if (log_p > most)
            most = log_p;
    }
    double sum = 0.0;
    for (int v = 0; v < views; v++)
        sum += exp(-cross_entropy(z + (size_t)v * classes, classes, label) - most);
    return -(most + log(sum / views));
}

/* ---- batch sources ------------------------------------------------------------ */

void *keel_plan_host_alloc_hook(size_t bytes, void *user)
{
    return keel_plan_host_alloc(user, bytes);
}

void keel_plan_host_free_hook(void *ptr, void *user)
{
    keel_plan_host_free(user, ptr);
}

keel_status keel_batch_source_dataset(keel_batch_source *s, const keel_dataset *d, const keel_loader_opts *opts)
{
    memset(s, 0, sizeof *s);
    s->views = 1;
    s->rows = opts->batch;
    s->samples = opts->batch;
    return keel_loader_create(&s->loader, d, opts);
}

keel_status keel_batch_source_images(keel_batch_source *s, keel_plan *plan, int64_t rows, keel_image_dataset *d,
                                     const keel_image_loader_opts *opts)
{
    memset(s, 0, sizeof *s);
    s->plan = plan;
    s->views = keel_augment_views(&opts->augment);
    s->rows = rows;
    s->samples = rows / s->views;
    if (s->samples < 1)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%d views of each image do not fit in a batch of %lld; use a batch "
                         "of at least %d", s->views, (long long)rows, s->views);
    s->row_floats = 3 * (size_t)opts->augment.crop_size * (size_t)opts->augment.crop_size;
    keel_image_loader_opts o = *opts;
    o.batch = s->samples;
    o.host_alloc = keel_plan_host_alloc_hook;
    o.host_free = keel_plan_host_free_hook;
    o.host_user = plan;
    keel_status st = keel_image_loader_create(&s->images, d, &o);
    if (st != KEEL_OK)
        return st;
    if (s->views > 1) {
        size_t bytes = (size_t)rows * s->row_floats * sizeof(float);
        if (s->samples * s->views < rows) {
            s->padded = keel_plan_host_alloc(plan, bytes);
            if (s->padded)
                memset(s->padded, 0, bytes);
        }
        s->row_labels = calloc((size_t)rows, sizeof *s->row_labels);
        if ((s->samples * s->views < rows && !s->padded) || !s->row_labels)
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for a batch of %lld rows", (long long)rows);
    }
    return KEEL_OK;
}

void keel_batch_source_release(keel_batch_source *s)
{
    if (!s)
        return;
    keel_loader_destroy(s->loader);
    keel_image_loader_destroy(s->images);
    if (s->padded)
        keel_plan_host_free(s->plan, s->padded);
    free(s->row_labels);
    memset(s, 0, sizeof *s);
}

keel_status keel_batch_source_start(keel_batch_source *s, int64_t epoch)
{
    return s->loader ? keel_loader_start_epoch(s->loader, epoch) : keel_image_loader_start_epoch(s->images, epoch);
}

int64_t keel_batch_source_batches(const keel_batch_source *s)
{
    return s->loader ? keel_loader_batches(s->loader) : keel_image_loader_batches(s->images);
}

keel_status keel_batch_source_next(keel_batch_source *s, keel_batch *b)
{
    const float *images = NULL;
    const int32_t *labels = NULL;
    memset(b, 0, sizeof *b);
    keel_status st = s->loader ? keel_loader_next(s->loader, &images, &labels, &b->count)
                               : keel_image_loader_next(s->images, &images, &labels, &b->count);
    if (st != KEEL_OK || b->count == 0)
        return st;
    b->images = images;
    b->labels = labels;
    b->sample_labels = labels;
    if (s->padded) {
        memcpy(s->padded, images, (size_t)(s->samples * s->views) * s->row_floats * sizeof(float));
        b->images = s->padded;
    }
    if (s->row_labels) {
        for (int64_t i = 0; i < s->samples; i++)
            for (int v = 0; v < s->views; v++)
                s->row_labels[i * s->views + v] = labels[i];
        b->labels = s->row_labels;
    }
    return KEEL_OK;
}

/* ---- evaluation ----------------------------------------------------------------- */

keel_status keel_eval_loop(keel_plan *plan, const keel_model_io *io, keel_batch_source *source, float *logits,
                           keel_eval_result *out)
{
    int64_t shape[KEEL_MAX_DIMS];
    keel_node_shape(io->logits, shape);
    int classes = (int)shape[1], views = source->views;
    double loss = 0.0;
    keel_topk ranks = {0};
    keel_status st = keel_batch_source_start(source, 0);
    while (st == KEEL_OK) {
        keel_batch b;
        st = keel_batch_source_next(source, &b);
        if (st != KEEL_OK || b.count == 0)
            break;
        st = keel_plan_set_input(plan, io->images, b.images);
        if (st == KEEL_OK && io->labels)
            st = keel_plan_set_input(plan, io->labels, b.labels);
        if (st == KEEL_OK)
            st = keel_plan_forward(plan, false);
        if (st == KEEL_OK)
            st = keel_plan_read(plan, io->logits, logits);
        if (st == KEEL_OK)
            st = keel_topk_update(&ranks, logits, b.count, views, classes, b.sample_labels);
        for (int64_t i = 0; i < b.count && st == KEEL_OK; i++)
            loss += views_cross_entropy(logits + (size_t)(i * views) * classes, views, classes, b.sample_labels[i]);
    }
    if (st != KEEL_OK)
        return st;
    int64_t n = ranks.samples;
    out->samples = n;
    out->loss = n ? loss / (double)n : 0.0;
    out->top1 = n ? (double)(n - ranks.top1_errors) / (double)n : 0.0;
    out->has_top5 = source->images != NULL || classes > 10;
    out->top5 = n && out->has_top5 ? (double)(n - ranks.top5_errors) / (double)n : 0.0;
    return KEEL_OK;
}

keel_status keel_check_eval_io(const keel_model_io *io, int channels, int height, int width, int classes,
                               int64_t *batch)
{
    if (!io || !io->images || !io->logits)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "evaluation needs the model's images and logits nodes");
    int64_t shape[KEEL_MAX_DIMS];
    int ndim = keel_node_shape(io->logits, shape);
    if (ndim != 2)
        return keel_fail(KEEL_ERR_SHAPE, "evaluation needs logits of shape {batch, classes}, not %d dimensions", ndim);
    if (classes > shape[1])
        return keel_fail(KEEL_ERR_SHAPE, "the dataset has %d classes but the model only %lld outputs", classes,
                         (long long)shape[1]);
    int64_t image[KEEL_MAX_DIMS];
    if (keel_node_shape(io->images, image) != 4)
        return keel_fail(KEEL_ERR_SHAPE, "evaluation needs images of shape {batch, channels, height, width}");
    if (image[1] != channels || image[2] != height || image[3] != width)
        return keel_fail(KEEL_ERR_SHAPE, "the model takes %lldx%lldx%lld images but the dataset holds %dx%dx%d",
                         (long long)image[1], (long long)image[2], (long long)image[3], channels, height, width);
    *batch = image[0];
    return KEEL_OK;
}

static float *logits_buffer(const keel_model_io *io)
{
    int64_t shape[KEEL_MAX_DIMS];
    keel_node_shape(io->logits, shape);
    float *logits = malloc((size_t)(shape[0] * shape[1]) * sizeof *logits);
    if (!logits)
        keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for the logits");
    return logits;
}

keel_status keel_evaluate(keel_plan *plan, const keel_model_io *io, const keel_dataset *d, keel_eval_result *out)
{
    if (!plan || !d || !out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_evaluate: plan, io, dataset and out are required");
    int64_t batch = 0;
    int channels, height, width;
    keel_dataset_image_shape(d, &channels, &height, &width);
    keel_status st = keel_check_eval_io(io, channels, height, width, keel_dataset_classes(d), &batch);
    if (st != KEEL_OK)
        return st;
    float *logits = logits_buffer(io);
    if (!logits)
        return KEEL_ERR_OUT_OF_MEMORY;
    keel_batch_source source;
    keel_loader_opts lo = {.batch = batch};
    st = keel_batch_source_dataset(&source, d, &lo);
    if (st == KEEL_OK)
        st = keel_eval_loop(plan, io, &source, logits, out);
    keel_batch_source_release(&source);
    free(logits);
    return st;
}

keel_status keel_evaluate_images(keel_plan *plan, const keel_model_io *io, keel_image_dataset *d,
                                 const keel_augment_opts *augment, int workers, keel_eval_result *out)
{
    if (!plan || !io || !io->images || !d || !out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_evaluate_images: plan, io, dataset and out are required");
    int64_t image[KEEL_MAX_DIMS];
    keel_node_shape(io->images, image);
    keel_augment_opts views = keel_augment_defaults(KEEL_CROP_CENTER);
    views.crop_size = (int)image[2];
    if (augment)
        views = *augment;
    int64_t batch = 0;
    keel_status st = keel_check_eval_io(io, 3, views.crop_size, views.crop_size, keel_image_dataset_classes(d), &batch);
    if (st != KEEL_OK)
        return st;
    float *logits = logits_buffer(io);
    if (!logits)
        return KEEL_ERR_OUT_OF_MEMORY;
    keel_batch_source source;
    keel_image_loader_opts lo = {.workers = workers, .augment = views};
    st = keel_batch_source_images(&source, plan, batch, d, &lo);
    if (st == KEEL_OK)
        st = keel_eval_loop(plan, io, &source, logits, out);
    keel_batch_source_release(&source);
    free(logits);
    return st;
}
