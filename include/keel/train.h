/* Training: optimisers, learning-rate schedules, the training loop,
 * evaluation and checkpoints.
 *
 * The short way, which is what `keel train` does:
 *
 *   keel_dataset *train, *test;
 *   keel_dataset_load_mnist_dir(&train, NULL, true);
 *   keel_dataset_load_mnist_dir(&test, NULL, false);
 *   keel_trainer_opts opts = keel_trainer_default_opts();  // lenet5, SGD, batch 64
 *   opts.train = train;
 *   opts.test = test;
 *   keel_trainer *t;
 *   keel_trainer_create(&t, ctx, &opts);
 *   keel_trainer_run(t);               // opts.epochs epochs, evaluating after each
 *   keel_trainer_destroy(t);
 *
 * ImageNet-style image datasets (folders, list files, `keel pack` shards)
 * go in train_images / test_images instead, decoded by worker threads:
 *
 *   keel_image_dataset *train, *val;
 *   keel_image_dataset_open(&train, "train-shards", NULL);
 *   keel_image_dataset_open(&val, "val-shards", NULL);
 *   keel_trainer_opts opts = keel_trainer_default_opts();
 *   opts.model = "resnet18";
 *   opts.train_images = train;     // random-resized 224 crops, mirrored
 *   opts.test_images = val;        // centre 224 crops; top-1 and top-5
 *   opts.workers = 8;
 *
 * The pieces (keel_optimizer, keel_schedule_lr, keel_evaluate,
 * keel_weights_load) also work on a plan a program compiled itself. */
#ifndef KEEL_TRAIN_H
#define KEEL_TRAIN_H

#include "plan.h"
#include "data.h"
#include "models.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- optimisers ------------------------------------------------------------
 * Both follow torch.optim exactly; g is a parameter's gradient, which for
 * Keel's losses (batch means) already is the average of the per-sample
 * gradients, so SGD with momentum 0 and weight decay 0 is the plain
 * mini-batch SGD of the textbook: w -= lr * mean_i grad_i.
 *
 *   SGD   g' = g + weight_decay * w
 *         v  = momentum * v + g'          (v starts at 0, so the first step
 *                                          has v = g' as PyTorch's does;
 *                                          dampening is 0)
 *         w -= lr * (nesterov ? g' + momentum * v : v)
 *   Adam  g' = g + weight_decay * w       (L2, as torch.optim.Adam; not AdamW)
 *         m  = beta1 * m + (1 - beta1) * g'
 *         v  = beta2 * v + (1 - beta2) * g'^2
 *         w -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
 *
 * Weight decay applies to every trainable parameter, biases and batch-norm
 * scales included, as with a single torch parameter group. The state lives
 * in contiguous device blocks beside the plan's parameter block, so a step
 * is one fused backend call and allocates nothing. */
typedef enum keel_optimizer_kind {
    KEEL_OPTIMIZER_SGD = 0,
    KEEL_OPTIMIZER_ADAM,
} keel_optimizer_kind;

typedef struct keel_optimizer_opts {
    keel_optimizer_kind kind;
    float lr;            /* base learning rate (> 0); a schedule scales it */
    float momentum;      /* SGD, in [0, 1) */
    bool nesterov;       /* SGD; needs momentum > 0 */
    float weight_decay;  /* >= 0 */
    float beta1, beta2;  /* Adam, in [0, 1) */
    float eps;           /* Adam, > 0 */
} keel_optimizer_opts;

/* Keel's defaults, measured on Fashion-MNIST: SGD lr 0.05 momentum 0.9;
 * Adam lr 0.001, betas (0.9, 0.999), eps 1e-8. Weight decay 0. */
keel_optimizer_opts keel_optimizer_defaults(keel_optimizer_kind kind);
/* "sgd" or "adam"; parsing returns KEEL_ERR_INVALID_ARGUMENT for other names. */
const char *keel_optimizer_name(keel_optimizer_kind kind);
keel_status keel_optimizer_parse(const char *name, keel_optimizer_kind *kind);

typedef struct keel_optimizer keel_optimizer;

/* An optimiser over every trainable parameter of `plan` (which must outlive
 * it), with zeroed state allocated on the plan's device. */
keel_status keel_optimizer_create(keel_optimizer **out, keel_plan *plan, const keel_optimizer_opts *opts);
void keel_optimizer_destroy(keel_optimizer *opt);
/* One update from the gradients of the last keel_plan_backward, with
 * learning rate `lr` (the schedule's value for this step). */
keel_status keel_optimizer_step(keel_optimizer *opt, float lr);
/* Updates taken so far (Adam's t). */
int64_t keel_optimizer_steps(const keel_optimizer *opt);
const keel_optimizer_opts *keel_optimizer_get_opts(const keel_optimizer *opt);

/* ---- learning-rate schedules -----------------------------------------------
 * The rate at optimiser step s (0-based) of a run of `total_steps` steps,
 * `steps_per_epoch` to an epoch, with W = round(warmup_epochs *
 * steps_per_epoch) warm-up steps:
 *   s <  W   lr * (s + 1) / W                     linear warm-up (any kind)
 *   CONSTANT lr
 *   STEP     lr * gamma^floor(epoch / step_epochs),  epoch = floor(s / steps_per_epoch)
 *   COSINE   min_lr + (lr - min_lr) * (1 + cos(pi * (s - W) / (total_steps - W))) / 2
 * Cosine is evaluated every step (not every epoch) and so depends on the
 * total length of the run; the others do not. */
typedef enum keel_schedule_kind {
    KEEL_SCHEDULE_CONSTANT = 0,
    KEEL_SCHEDULE_STEP,
    KEEL_SCHEDULE_COSINE,
} keel_schedule_kind;

typedef struct keel_schedule {
    keel_schedule_kind kind;
    int step_epochs;      /* STEP: decay every this many epochs (>= 1) */
    float gamma;          /* STEP: the factor, in (0, 1] */
    float min_lr;         /* COSINE: the final rate (>= 0) */
    float warmup_epochs;  /* >= 0; 0: no warm-up */
} keel_schedule;

float keel_schedule_lr(const keel_schedule *s, float base_lr, int64_t step, int64_t steps_per_epoch,
                       int64_t total_steps);
/* Parses "constant", "step[:EPOCHS[:GAMMA]]" (default 3 and 0.1) or
 * "cosine[:MIN_LR]" (default 0), keeping s->warmup_epochs. */
keel_status keel_schedule_parse(const char *text, keel_schedule *s);
/* One line for logs: "cosine from 0.05 to 0 over 9370 steps (10 epochs of
 * 937), after a linear warm-up over 937 steps (1 epoch)". Returns buf. */
const char *keel_schedule_describe(const keel_schedule *s, float base_lr, int64_t steps_per_epoch,
                                   int64_t total_steps, char *buf, size_t size);

/* ---- evaluation --------------------------------------------------------- */

typedef struct keel_eval_result {
    int64_t samples;
    double loss;          /* mean softmax cross-entropy over the samples */
    double top1;          /* fraction in [0, 1] */
    double top5;          /* only when has_top5 (more than 10 classes, or
                             an image dataset) */
    bool has_top5;
} keel_eval_result;

/* Runs `plan` in evaluation mode (dropout off, batch norm on its running
 * statistics) over every sample of `d` in order, batch by batch with the
 * plan's fixed batch: the last partial batch is padded and only its real
 * samples count. io->logits must have been kept (keel_graph_keep) before
 * compiling; the loss and accuracies are computed from the logits, so
 * padding never enters them. */
keel_status keel_evaluate(keel_plan *plan, const keel_model_io *io, const keel_dataset *d, keel_eval_result *out);

/* The same on an image dataset, in order, each image cut into the views of
 * `augment` (NULL: a centre crop of the model's input size with ImageNet's
 * mean and std) by `workers` decoding threads (0: this thread). With V views
 * per image (10 for KEEL_CROP_TEN) a forward pass of the plan's batch P holds
 * floor(P / V) images (P >= V is needed), the rows left over zero. The
 * softmax outputs of an image's views are averaged (AlexNet's ten-crop
 * ensemble) before ranking, as keel_topk_update does; `loss` is the mean
 * cross-entropy of those averaged probabilities (of the single view when
 * V = 1). top1 and top5 are accuracies, so the ILSVRC errors are 1 - top1 and
 * 1 - top5; has_top5 is always set for image datasets. The crop must match
 * the model's input size. */
keel_status keel_evaluate_images(keel_plan *plan, const keel_model_io *io, keel_image_dataset *d,
                                 const keel_augment_opts *augment, int workers, keel_eval_result *out);

/* ---- weights and checkpoints (safetensors) ------------------------------
 * Parameters are stored under their own names ("conv1.weight",
 * "bn1.running_mean"), so torch's safetensors.torch.load_file gives a
 * state_dict. A training checkpoint adds optimiser state under
 * "optimizer.<param>.momentum_buffer" (SGD) or "optimizer.<param>.exp_avg"
 * and "optimizer.<param>.exp_avg_sq" (Adam), as torch names them, and
 * metadata: model, epoch, step, seeds, the dropout counter, optimiser
 * hyper-parameters, normalisation (for image datasets the augmentation's
 * mean and std, "normalize.mean_image" when a mean image replaced the mean,
 * and "augment.train" / "augment.test" describing the crops), and the
 * per-epoch history. Every write goes to a temporary file renamed into
 * place. */

/* Every parameter and state buffer of the plan, and `metadata` pairs
 * (NULL-terminated key, value, key, value, ..., or NULL). */
keel_status keel_weights_save(keel_plan *plan, const char *path, const char *const *metadata);
/* Loads every parameter and state buffer of the plan from `path`. A tensor
 * the file lacks, or has in another shape, fails naming that tensor and both
 * shapes; a tensor the model lacks fails naming it. Optimiser entries
 * ("optimizer.*") and torch's "*.num_batches_tracked" are ignored. */
keel_status keel_weights_load(keel_plan *plan, const char *path);
/* A metadata value of a safetensors file, copied into value (KEEL_ERR_NOT_FOUND
 * when the key is absent). */
keel_status keel_checkpoint_metadata(const char *path, const char *key, char *value, size_t size);
/* The input normalisation a checkpoint was trained with: `channels` means
 * and standard deviations (KEEL_ERR_NOT_FOUND when it records none). */
keel_status keel_checkpoint_normalization(const char *path, int channels, float *mean, float *std);

/* ---- the training loop ---------------------------------------------------- */

/* Builds a custom network into g, as keel_model_build does for the zoo. */
typedef keel_status (*keel_build_fn)(keel_graph *g, const keel_model_opts *opts, keel_model_io *io, void *user);

typedef struct keel_epoch_stats {
    int epoch;                /* 1-based */
    double train_loss;        /* mean of the epoch's step losses */
    double seconds;           /* training time, evaluation excluded */
    double images_per_second;
    float lr;                 /* the rate of the epoch's last step */
    bool evaluated;           /* a test set was given */
    keel_eval_result eval;
    double eval_seconds;
} keel_epoch_stats;

typedef enum keel_progress_event {
    KEEL_PROGRESS_EPOCH_BEGIN = 0,
    KEEL_PROGRESS_STEP,       /* after every optimiser step */
    KEEL_PROGRESS_EVAL_BEGIN, /* before the end-of-epoch evaluation */
    KEEL_PROGRESS_EPOCH_END,  /* after evaluation and checkpointing */
} keel_progress_event;

typedef struct keel_progress {
    keel_progress_event event;
    int epoch, epochs;              /* epoch is 1-based */
    int64_t step, steps;            /* within the epoch; step is 1-based after a step */
    int64_t global_step;            /* optimiser steps since the run began */
    float loss;                     /* this step's loss */
    double mean_loss;               /* mean loss of the epoch so far */
    float lr;
    double images_per_second;       /* this epoch so far */
    double elapsed_seconds;         /* this epoch so far */
    double eta_seconds;             /* rest of this epoch's training */
    const keel_epoch_stats *stats;  /* EPOCH_END only */
} keel_progress;

typedef void (*keel_progress_fn)(const keel_progress *progress, void *user);

typedef struct keel_trainer_opts {
    const char *model;            /* a zoo model (keel_model_name) unless build is set */
    keel_build_fn build;          /* a custom network instead; gets build_user */
    void *build_user;
    /* Passed to the builder; batch comes from `batch`, and classes, channels
     * and input size left at 0 come from the training set. */
    keel_model_opts model_opts;

    keel_dataset *train;          /* an in-memory training set (borrowed, must
                                     outlive the trainer), or train_images */
    keel_dataset *test;           /* optional: evaluated after every epoch */
    bool no_normalize;            /* else both sets are normalised with the
                                     training set's channel mean and std */
    bool no_prefetch;             /* assemble batches on the training thread
                                     (image datasets: workers = 0) */

    /* Image datasets (folders, lists or packed shards) instead of train and
     * test: exactly one of train and train_images is set. Each image is
     * decoded, cut and normalised by the augmentation options, never by the
     * training set's channel statistics (no_normalize does not apply). A
     * zero-initialised train_augment is keel_augment_defaults(
     * KEEL_CROP_RANDOM_RESIZED) (crop 224, mirror, ImageNet mean and std) and
     * a zero test_augment keel_augment_defaults(KEEL_CROP_CENTER); an options
     * struct that is not all zero is taken as given, except that its fields
     * left at 0 (crop_size, the scale and ratio ranges, std, and mean when std
     * is 0 too) take keel_augment_defaults(mode)'s values. Both crops
     * must be equal (the model's input is 3 x crop x crop) and a training
     * crop cannot be KEEL_CROP_TEN; a TEN test_augment evaluates ten views
     * per image (keel_evaluate_images). A mean_image is copied. */
    keel_image_dataset *train_images; /* borrowed, must outlive the trainer */
    keel_image_dataset *test_images;  /* optional: evaluated after every epoch */
    keel_augment_opts train_augment, test_augment;
    int workers;                  /* image decoding threads; 0: the training thread */

    int64_t batch;                /* > 0; a final partial training batch is dropped */
    int epochs;                   /* > 0: what keel_trainer_run trains to */
    keel_optimizer_opts optimizer;
    keel_schedule schedule;
    uint64_t seed;                /* initialisation, dropout and shuffling */

    const char *device;           /* keel_plan_opts.devices; NULL: "cpu" */
    bool deterministic;
    bool strict_fp32;             /* CUDA: IEEE fp32 only; by default TF32 tensor cores are allowed */
    bool autotune;                /* CUDA: time candidate convolution plans once */

    const char *save_path;        /* a checkpoint after every epoch, or NULL */

    /* Data parallelism across the ranks of an MPI job (`mpirun -np N`):
     * every rank trains a replica on its own device ("cuda" without an
     * index picks the GPU of the rank's local index on its host) from a
     * disjoint `batch` of each global batch of N x batch samples, so `batch`
     * is per rank, as in PyTorch's DistributedDataParallel. Gradients are
     * averaged across ranks: the learning rate applies to the mean gradient
     * of the global batch, and N ranks with batch B take the steps one
     * process takes with batch N x B (scale lr by N to keep the step per
     * sample of a B-batch run, Goyal et al.'s linear scaling rule). Batch
     * norm normalises with each rank's own batch statistics; the running
     * statistics are averaged across ranks before every evaluation and
     * checkpoint. Every rank evaluates the whole test set; rank 0 alone
     * reports progress and writes checkpoints. Needs a libkeel built with
     * MPI (libopenmpi-dev). */
    bool data_parallel;
    double dist_timeout;          /* seconds to wait for another rank; 0: 300 */

    keel_progress_fn progress;    /* or NULL; data-parallel: rank 0 only */
    void *progress_user;
} keel_trainer_opts;

/* lenet5, batch 64, 10 epochs, SGD lr 0.05 momentum 0.9, cosine schedule,
 * seed 1, "cpu"; datasets unset. */
keel_trainer_opts keel_trainer_default_opts(void);

typedef struct keel_trainer keel_trainer;

/* Builds the model for the training set's images, differentiates it,
 * compiles the plan on the device, creates the optimiser and the loaders.
 * `ctx` and the datasets must outlive the trainer. */
keel_status keel_trainer_create(keel_trainer **out, keel_context *ctx, const keel_trainer_opts *opts);
void keel_trainer_destroy(keel_trainer *t);

/* Continues from a checkpoint: parameters, optimiser state, epoch, step,
 * dropout counter and history. With the same seed, batch, device and thread
 * count the rest of the run equals an uninterrupted one bit for bit (on the
 * CPU). A checkpoint of another model fails naming the first mismatching
 * tensor and both shapes. Call before training. */
keel_status keel_trainer_resume(keel_trainer *t, const char *path);
/* Writes a checkpoint of the state now (atomically). */
keel_status keel_trainer_save(keel_trainer *t, const char *path);

/* Trains one epoch, evaluates on the test set, saves the checkpoint when
 * save_path is set, and fills *stats (may be NULL). */
keel_status keel_trainer_epoch(keel_trainer *t, keel_epoch_stats *stats);
/* Epochs until opts.epochs are done (none when a resumed run already is). */
keel_status keel_trainer_run(keel_trainer *t);
/* Evaluates the current parameters on `d` (NULL: the test set, in-memory or
 * images). `d` gets the trainer's normalisation. */
keel_status keel_trainer_evaluate(keel_trainer *t, keel_dataset *d, keel_eval_result *out);
/* Evaluates the current parameters on an image dataset with the trainer's
 * test_augment and workers (keel_evaluate_images). */
keel_status keel_trainer_evaluate_images(keel_trainer *t, keel_image_dataset *d, keel_eval_result *out);

/* Epochs finished (including those of a resumed checkpoint). */
int keel_trainer_epochs_done(const keel_trainer *t);
/* Per-epoch statistics of every finished epoch, oldest first. */
int keel_trainer_history_count(const keel_trainer *t);
keel_status keel_trainer_history(const keel_trainer *t, int index, keel_epoch_stats *stats);
/* A few lines describing the run: model and parameter count, data,
 * optimiser, schedule, device. Returns buf. */
const char *keel_trainer_describe(const keel_trainer *t, char *buf, size_t size);

keel_plan *keel_trainer_plan(keel_trainer *t);
keel_graph *keel_trainer_graph(keel_trainer *t);
const keel_model_io *keel_trainer_model_io(const keel_trainer *t);
keel_optimizer *keel_trainer_optimizer(keel_trainer *t);
int64_t keel_trainer_steps_per_epoch(const keel_trainer *t);
/* Data parallelism: this process's rank and the number of ranks (0 and 1
 * when not data-parallel). */
int keel_trainer_rank(const keel_trainer *t);
int keel_trainer_ranks(const keel_trainer *t);

#ifdef __cplusplus
}
#endif
#endif
