/* Shared by evaluate.c and the trainer's files: trainer.c (creation, the
 * training loop, evaluation, inspection), trainer_augment.c (the image
 * augmentation options) and trainer_checkpoint.c (save and resume). */
#ifndef KEEL_TRAINER_INTERNAL_H
#define KEEL_TRAINER_INTERNAL_H

#include "dist/distributed.h"
#include "keel/train.h"

/* Batches for a plan of a fixed batch (`rows` images a pass) from either kind
 * of loader: an in-memory dataset's keel_loader or an image dataset's
 * keel_image_loader, whose views (ten crops) each take a row. The loader's
 * batch is rows / views samples; when that leaves rows over, batches are
 * copied into a buffer of `rows` rows whose tail stays zero. */
typedef struct keel_batch_source {
    keel_loader *loader;            /* an in-memory dataset, or */
    keel_image_loader *images;      /* an image dataset */
    int views;                      /* rows per sample */
    int64_t rows;                   /* the plan's batch */
    int64_t samples;                /* samples per batch */
    size_t row_floats;
    float *padded;                  /* rows x row_floats, or NULL */
    int32_t *row_labels;            /* rows labels (views > 1), or NULL */
    keel_plan *plan;                /* owns padded and row_labels */
} keel_batch_source;

typedef struct keel_batch {
    const float *images;            /* rows x row_floats */
    const int32_t *labels;          /* rows labels: a sample's, once per view */
    const int32_t *sample_labels;   /* count labels, one per sample */
    int64_t count;                  /* real samples; 0 at the end of the epoch */
} keel_batch;

keel_status keel_batch_source_dataset(keel_batch_source *s, const keel_dataset *d, const keel_loader_opts *opts);
/* opts->batch is ignored: it becomes rows / views. Batch buffers come from
 * keel_plan_host_alloc of `plan`. */
keel_status keel_batch_source_images(keel_batch_source *s, keel_plan *plan, int64_t rows, keel_image_dataset *d,
                                     const keel_image_loader_opts *opts);
void keel_batch_source_release(keel_batch_source *s);
keel_status keel_batch_source_start(keel_batch_source *s, int64_t epoch);
keel_status keel_batch_source_next(keel_batch_source *s, keel_batch *b);
int64_t keel_batch_source_batches(const keel_batch_source *s);

/* Evaluates over every batch `source` yields; logits is a host buffer of
 * rows x classes floats. */
keel_status keel_eval_loop(keel_plan *plan, const keel_model_io *io, keel_batch_source *source, float *logits,
                           keel_eval_result *out);
/* Checks that the model takes channels x height x width images and has at
 * least `classes` outputs, and returns its batch. */
keel_status keel_check_eval_io(const keel_model_io *io, int channels, int height, int width, int classes,
                               int64_t *batch);
/* The host-memory hooks of keel_image_loader_opts, backed by the plan passed
 * as `user`. */
void *keel_plan_host_alloc_hook(size_t bytes, void *user);
void keel_plan_host_free_hook(void *ptr, void *user);

/* ---- the trainer ----------------------------------------------------------- */

struct keel_trainer {
    /* What the caller asked for; opts' strings point at the trainer's own
     * copies below, so the caller's may go away. */
    keel_context *ctx;
    keel_trainer_opts opts;
    char *model_name, *device, *save_path;

    /* The compiled model, its optimiser and the batches that feed it. */
    keel_graph *graph;
    keel_model_io io;
    keel_plan *plan;
    keel_optimizer *optimizer;
    keel_batch_source train_source, test_source;
    /* Inside an epoch: the batch fed for the next step (count 0: none). An
     * evaluation from the progress callback feeds it again afterwards. */
    const keel_batch *staged;
    bool has_test;
    keel_dist *dist;               /* data parallelism, or NULL */

    /* Image datasets: the augmentation each loader applies. */
    bool images;                   /* image datasets rather than in-memory ones */
    keel_augment_opts train_augment, test_augment; /* with defaults filled in */
    float *train_mean_image, *test_mean_image;     /* the trainer's copies */

    /* The model's input and output, and how far training has gone. */
    int channels, height, width, classes;
    float *mean, *std;             /* normalisation per channel (NULL when off) */
    int64_t steps_per_epoch;
    int64_t global_step;           /* optimiser steps so far */
    int epochs_done;
    float *logits;                 /* host, batch x classes, for evaluation */
    int64_t logits_classes;

    /* One entry per finished epoch, restored on resume. */
    keel_epoch_stats *history;
    int n_history, cap_history;
};

/* trainer.c: optimiser steps over all the epochs asked for, and appending
 * an epoch to the history. */
int64_t keel_trainer_total_steps(const keel_trainer *t);
keel_status keel_trainer_add_history(keel_trainer *t, const keel_epoch_stats *s);

/* trainer_augment.c: resolves opts' augmentation (defaults filled in, the
 * mean images copied) into t->train_augment and t->test_augment. */
keel_status keel_trainer_set_augment(keel_trainer *t);
/* "random-resized crop 224 (area 0.08-1, ratio 0.75-1.33), mirrored, PCA
 * lighting 0.1": what a checkpoint records and describe() prints. Returns
 * buf. */
const char *keel_trainer_augment_text(const keel_augment_opts *o, char *buf, size_t size);

#endif
