/* Generative adversarial networks: the DCGAN pair, the alternating training
 * of a generator G and a discriminator D, and a quality figure for the
 * samples that needs no outside model (a Fréchet distance in the feature
 * space of Keel's own classifier).
 *
 * The short way, which is what `keel gan` does:
 *
 *   keel_dataset *train;
 *   keel_dataset_load_mnist_dir(&train, NULL, true);
 *   keel_gan_opts opts = keel_gan_default_opts();   // DCGAN, batch 64, Adam 2e-4 (0.5, 0.999)
 *   opts.train = train;
 *   opts.out_dir = "gan-run";                       // grids and checkpoints
 *   keel_gan *gan;
 *   keel_gan_create(&gan, ctx, &opts);
 *   keel_gan_run(gan);                              // opts.epochs epochs
 *   keel_gan_destroy(gan);
 *
 * The pieces work alone too: keel_gan_step trains on batches a program
 * brings, keel_gan_generate draws samples, and the two plans are ordinary
 * keel_plan objects (keel_weights_save, keel_plan_param_get). */
#ifndef KEEL_GAN_H
#define KEEL_GAN_H

#include "train.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the DCGAN networks ------------------------------------------------------
 * In the zoo as "dcgan-g" and "dcgan-d" (keel_model_build; models/dcgan.c
 * has the layer tables). in_channels, height and width are the images'
 * (default 1x28x28); height and width must be multiples of 4.
 *
 * dcgan-g: io->images is the noise input "z" {batch, 100, 1, 1} (standard
 * normal); io->logits is the image it makes, {batch, C, H, W} in [-1, 1]
 * (tanh).
 * dcgan-d: io->images {batch, C, H, W} in [-1, 1]; io->logits {batch, 1},
 * the logit of "real"; io->features the flattened last convolution.
 * Neither sets labels or loss: the GAN trainer adds the losses. */
#define KEEL_DCGAN_LATENT 100

/* ---- Fréchet distance ----------------------------------------------------------
 * Between the Gaussians fitted to two sets of feature vectors (rows of `dim`
 * floats), as FID (Heusel et al. 2017) defines it:
 *   d = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))
 * with sample means and unbiased covariances (each set needs at least 2
 * rows). Tr (S_a S_b)^(1/2) is the sum of the square roots of the
 * eigenvalues of S_a^(1/2) S_b S_a^(1/2), a symmetric matrix, so the result
 * is real; eigenvalues from LAPACK's dsyevd in double precision. */
keel_status keel_frechet_distance(const float *a, int64_t count_a, const float *b, int64_t count_b, int dim,
                                  double *distance);

/* ---- scoring samples with a classifier ---------------------------------------
 * A trained classifier of the zoo (cnn-small by default) embeds images in
 * its penultimate layer (keel_model_io.features). keel_fid_create embeds the
 * real images once; each score then embeds generated ones and reports the
 * Fréchet distance between the two feature Gaussians ("FID" with our own
 * classifier instead of Inception; comparable between runs that use the
 * same classifier weights and real set) and the share of samples the
 * classifier puts in one class with probability above `confidence`. */
typedef struct keel_fid keel_fid;

typedef struct keel_fid_opts {
    const char *model;        /* a zoo classifier with features (NULL: "cnn-small") */
    const char *weights;      /* its trained weights, e.g. from `keel train --model
                                 cnn-small --save F` (required); the normalisation
                                 the file records is applied to every image */
    keel_dataset *real;       /* the real images, read during keel_fid_create only
                                 (its normalisation is reset to raw [0, 1] pixels) */
    int64_t real_count;       /* the first N of them (0: all) */
    int64_t batch;            /* images per forward pass (0: 100) */
    const char *device;       /* NULL: "cpu" */
    float confidence;         /* 0: 0.9 */
} keel_fid_opts;

typedef struct keel_fid_score {
    int64_t samples;
    double distance;          /* Fréchet distance to the real features */
    double confident;         /* share of samples with max probability > confidence */
    int classes;              /* distinct classes the samples were assigned to */
} keel_fid_score;

keel_status keel_fid_create(keel_fid **out, keel_context *ctx, const keel_fid_opts *opts);
void keel_fid_destroy(keel_fid *fid);
/* Feature length and image shape the classifier takes. */
int keel_fid_dim(const keel_fid *fid);
void keel_fid_image_shape(const keel_fid *fid, int *channels, int *height, int *width);
/* Embeds `count` images (C x H x W floats each, pixels in [0, 1]): features
 * {count, dim} and, when max_prob is not NULL, each image's highest class
 * probability and (when label is not NULL) that class. */
keel_status keel_fid_embed(keel_fid *fid, const float *images, int64_t count, float *features, float *max_prob,
                           int32_t *label);
/* Scores `count` (>= 2) images, pixels in [0, 1], against the real set. */
keel_status keel_fid_score_images(keel_fid *fid, const float *images, int64_t count, keel_fid_score *out);

/* ---- training ------------------------------------------------------------------
 * One step, as the PyTorch DCGAN example takes it:
 *   z ~ N(0, 1);  fake = G(z)
 *   D step  the gradients of BCE(D(real), 1) and BCE(D(fake), 0), each on its
 *           own batch (so batch norm never mixes real and fake), summed,
 *           then one Adam update of D
 *   G step  the non-saturating loss BCE(D(fake), 1) through the updated D;
 *           its gradient at D's input flows into G (keel_graph_backward_from),
 *           then one Adam update of G
 * D's loss is the sum of its two terms. */
typedef struct keel_gan keel_gan;

typedef struct keel_gan_losses {
    float d_loss;             /* BCE(D(real), 1) + BCE(D(fake), 0) */
    float g_loss;             /* BCE(D(G(z)), 1) after D's update */
    float d_real;             /* mean sigmoid(D(real)) */
    float d_fake;             /* mean sigmoid(D(fake)) before D's update */
} keel_gan_losses;

typedef struct keel_gan_epoch_stats {
    int epoch;                /* 1-based */
    double d_loss, g_loss;    /* means over the epoch's steps */
    double d_real, d_fake;
    double seconds;           /* training only */
    double images_per_second;
    bool scored;              /* a keel_fid was given */
    keel_fid_score score;
    double score_seconds;
    char grid_path[512];      /* the sample grid written, or "" */
} keel_gan_epoch_stats;

typedef enum keel_gan_event {
    KEEL_GAN_EPOCH_BEGIN = 0,
    KEEL_GAN_STEP,            /* after every step */
    KEEL_GAN_SCORE_BEGIN,     /* before the end-of-epoch samples and score */
    KEEL_GAN_EPOCH_END,       /* after the grid, the score and the checkpoints */
} keel_gan_event;

typedef struct keel_gan_progress {
    keel_gan_event event;
    int epoch, epochs;        /* epoch is 1-based */
    int64_t step, steps;      /* within the epoch */
    keel_gan_losses losses;   /* this step's */
    double mean_d_loss, mean_g_loss; /* this epoch so far */
    double images_per_second;
    double elapsed_seconds, eta_seconds;
    const keel_gan_epoch_stats *stats; /* EPOCH_END only */
} keel_gan_progress;

typedef void (*keel_gan_progress_fn)(const keel_gan_progress *progress, void *user);

typedef struct keel_gan_opts {
    /* Required; borrowed, must outlive the GAN. Its normalisation is set to
     * (x - 0.5) / 0.5 in every channel, so real images lie in [-1, 1] as
     * the generator's tanh does. */
    keel_dataset *train;
    /* Custom networks (NULL: the zoo's dcgan-g and dcgan-d).
     * The generator's io->images is its noise input and io->logits its image;
     * the discriminator's io->logits is {batch, 1}. */
    keel_build_fn generator, discriminator;
    void *build_user;

    int64_t batch;            /* > 0; a final partial batch is dropped */
    int epochs;               /* > 0: what keel_gan_run trains to */
    keel_optimizer_opts g_optimizer, d_optimizer;
    uint64_t seed;            /* initialisation, noise and shuffling */
    const char *device;       /* keel_plan_opts.devices; NULL: "cpu" */
    bool deterministic;

    /* After every epoch, when set: OUT/samples-epoch-NNN.png (a grid x grid
     * sheet of samples from one fixed noise batch, so epochs compare), and
     * OUT/generator.safetensors and OUT/discriminator.safetensors (weights,
     * Adam state and metadata; keel_weights_load reads them). The folder
     * must exist. */
    const char *out_dir;
    int grid;                 /* 0: 8 */

    keel_fid *fid;            /* optional: score fid_samples samples after every epoch */
    int64_t fid_samples;      /* 0: 2000 */

    keel_gan_progress_fn progress;
    void *progress_user;
} keel_gan_opts;

/* DCGAN, batch 64, 10 epochs, Adam lr 2e-4 betas (0.5, 0.999) for both
 * networks, seed 1, "cpu", an 8x8 grid. */
keel_gan_opts keel_gan_default_opts(void);

keel_status keel_gan_create(keel_gan **out, keel_context *ctx, const keel_gan_opts *opts);
void keel_gan_destroy(keel_gan *gan);

/* One D step and one G step on `real` ({batch, C, H, W}, pixels in [-1, 1])
 * with `noise` ({batch, latent}; NULL: fresh noise from the GAN's seeded
 * stream). losses may be NULL. */
keel_status keel_gan_step(keel_gan *gan, const float *real, const float *noise, keel_gan_losses *losses);
/* One pass over the training set, then the grid, the score and the
 * checkpoints (as opts ask); stats may be NULL. */
keel_status keel_gan_epoch(keel_gan *gan, keel_gan_epoch_stats *stats);
/* Epochs until opts.epochs are done. */
keel_status keel_gan_run(keel_gan *gan);

/* Standard normal noise for `count` samples ({count, latent}), a function of
 * the seed alone. */
int keel_gan_latent(const keel_gan *gan);
keel_status keel_gan_noise(const keel_gan *gan, uint64_t seed, int64_t count, float *noise);
/* G's images ({count, C, H, W}, in [-1, 1]) for `count` noise vectors, in
 * evaluation mode (batch norm on its running statistics), batch by batch. */
keel_status keel_gan_generate(keel_gan *gan, const float *noise, int64_t count, float *images);
/* The grid of samples from the fixed noise batch, as a PNG. */
keel_status keel_gan_write_grid(keel_gan *gan, const char *path);
/* Both networks with their Adam state, atomically. */
keel_status keel_gan_save(keel_gan *gan, const char *generator_path, const char *discriminator_path);

int keel_gan_epochs_done(const keel_gan *gan);
keel_plan *keel_gan_generator_plan(keel_gan *gan);
keel_plan *keel_gan_discriminator_plan(keel_gan *gan);
void keel_gan_image_shape(const keel_gan *gan, int *channels, int *height, int *width);

#ifdef __cplusplus
}
#endif
#endif
