/* Evaluation: loss and top-k accuracy from the logits, over a dataset cut
 * into the plan's fixed batch (the last batch padded, its padding ignored). */
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

/* How many classes outrank the true one; ties go to the lower index, as
 * argmax does. 0 means a top-1 hit. */
static int rank_of_label(const float *z, int classes, int label)
{
    int rank = 0;
    for (int j = 0; j < classes; j++)
        rank += z[j] > z[label] || (z[j] == z[label] && j < label);
    return rank;
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

keel_status keel_eval_loop(keel_plan *plan, const keel_model_io *io, keel_loader *loader, float *logits,
                           keel_eval_result *out)
{
    int64_t shape[KEEL_MAX_DIMS];
    keel_node_shape(io->logits, shape);
    int classes = (int)shape[1];
    double loss = 0.0;
    int64_t samples = 0, top1 = 0, top5 = 0;
    keel_status st = keel_loader_start_epoch(loader, 0);
    while (st == KEEL_OK) {
        const float *images;
        const int32_t *labels;
        int64_t count = 0;
        st = keel_loader_next(loader, &images, &labels, &count);
        if (st != KEEL_OK || count == 0)
            break;
        st = keel_plan_set_input(plan, io->images, images);
        if (st == KEEL_OK && io->labels)
            st = keel_plan_set_input(plan, io->labels, labels);
        if (st == KEEL_OK)
            st = keel_plan_forward(plan, false);
        if (st == KEEL_OK)
            st = keel_plan_read(plan, io->logits, logits);
        for (int64_t i = 0; i < count && st == KEEL_OK; i++) {
            const float *z = logits + i * classes;
            int rank = rank_of_label(z, classes, labels[i]);
            top1 += rank == 0;
            top5 += rank < 5;
            loss += cross_entropy(z, classes, labels[i]);
        }
        samples += count;
    }
    if (st != KEEL_OK)
        return st;
    out->samples = samples;
    out->loss = samples ? loss / (double)samples : 0.0;
    out->top1 = samples ? (double)top1 / (double)samples : 0.0;
    out->has_top5 = classes > 10;
    out->top5 = samples && out->has_top5 ? (double)top5 / (double)samples : 0.0;
    return KEEL_OK;
}

keel_status keel_check_eval_io(const keel_model_io *io, const keel_dataset *d, int64_t *batch)
{
    if (!io || !io->images || !io->logits)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "evaluation needs the model's images and logits nodes");
    int64_t shape[KEEL_MAX_DIMS];
    int ndim = keel_node_shape(io->logits, shape);
    if (ndim != 2)
        return keel_fail(KEEL_ERR_SHAPE, "evaluation needs logits of shape {batch, classes}, not %d dimensions", ndim);
    int classes = keel_dataset_classes(d);
    if (classes > shape[1])
        return keel_fail(KEEL_ERR_SHAPE, "the dataset has %d classes but the model only %lld outputs", classes,
                         (long long)shape[1]);
    int64_t image[KEEL_MAX_DIMS];
    keel_node_shape(io->images, image);
    int channels, height, width;
    keel_dataset_image_shape(d, &channels, &height, &width);
    if (image[1] != channels || image[2] != height || image[3] != width)
        return keel_fail(KEEL_ERR_SHAPE, "the model takes %lldx%lldx%lld images but the dataset holds %dx%dx%d",
                         (long long)image[1], (long long)image[2], (long long)image[3], channels, height, width);
    *batch = image[0];
    return KEEL_OK;
}

keel_status keel_evaluate(keel_plan *plan, const keel_model_io *io, const keel_dataset *d, keel_eval_result *out)
{
    if (!plan || !d || !out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_evaluate: plan, io, dataset and out are required");
    int64_t batch = 0;
    keel_status st = keel_check_eval_io(io, d, &batch);
    if (st != KEEL_OK)
        return st;
    int64_t shape[KEEL_MAX_DIMS];
    keel_node_shape(io->logits, shape);
    float *logits = malloc((size_t)(shape[0] * shape[1]) * sizeof *logits);
    if (!logits)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for the logits");
    keel_loader *loader = NULL;
    keel_loader_opts lo = {.batch = batch};
    st = keel_loader_create(&loader, d, &lo);
    if (st == KEEL_OK)
        st = keel_eval_loop(plan, io, loader, logits, out);
    keel_loader_destroy(loader);
    free(logits);
    return st;
}
