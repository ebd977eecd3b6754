/* keel gan: DCGAN on Fashion-MNIST. Trains (or loads) the cnn-small
 * classifier that scores the samples, then alternates D and G steps with a
 * progress bar of both losses; after every epoch it writes an 8x8 sample
 * grid and both networks' checkpoints, and prints the Fréchet distance and
 * the share of confidently classified samples. */
#include "cli.h"
#include "gan.h"
#include "keel/gan.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct gan_args {
    const char *dataset, *data, *device, *out, *classifier, *classifier_model, *progress;
    int epochs, threads, classifier_epochs;
    int64_t batch, subset, fid_samples, fid_real;
    float lr, beta1;
    uint64_t seed;
    bool no_score;
} gan_args;

static const char description[] =
    "Trains a DCGAN (Radford et al. 2015) on Fashion-MNIST: a generator G (100-d noise -> dense\n"
    "projection -> two transposed convolutions with batch norm and ReLU -> tanh image) against a\n"
    "discriminator D (strided convolutions, leaky ReLU 0.2, batch norm, one logit). Each step\n"
    "updates D on a real and a fake batch, then G with the non-saturating loss (BCE with logits),\n"
    "each with Adam (lr 2e-4, betas 0.5 and 0.999).\n"
    "\n"
    "After every epoch it writes OUT/samples-epoch-NN.png (8x8 samples from one fixed noise\n"
    "batch) and OUT/generator.safetensors and OUT/discriminator.safetensors, and scores 2000\n"
    "samples with a cnn-small classifier: the Fréchet distance between the Gaussians of its\n"
    "penultimate-layer features on real test images and on samples (an FID computed with Keel's\n"
    "own classifier; lower is better), and the share of samples it assigns to one class with\n"
    "probability > 0.9. The classifier is --classifier FILE (e.g. from `keel train --model\n"
    "cnn-small --save FILE`), else OUT/classifier.safetensors when that exists, else trained\n"
    "first with keel train's recipe (--classifier-epochs, default 10) and saved there. A less\n"
    "trained classifier is less confident about real images and samples alike.";

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static keel_status make_dir(const char *path)
{
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "%s", path);
    if (n < 0 || (size_t)n >= sizeof buf)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the output folder name is too long");
    for (char *c = buf + 1; *c; c++) {
        if (*c != '/')
            continue;
        *c = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return keel_fail(KEEL_ERR_IO, "cannot create %s: %s", buf, strerror(errno));
        *c = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return keel_fail(KEEL_ERR_IO, "cannot create %s: %s", buf, strerror(errno));
    return KEEL_OK;
}

/* ---- progress ------------------------------------------------------------------ */

typedef struct gan_progress {
    cli_progress_mode mode;
    double last_draw;
    int64_t next_line;
} gan_progress;

static void draw_step(gan_progress *p, const keel_gan_progress *k)
{
    char eta[32];
    if (p->mode == CLI_PROGRESS_BAR) {
        double t = now_seconds();
        if (t - p->last_draw < 0.1 && k->step != k->steps)
            return;
        p->last_draw = t;
        char bar[32];
        int width = 24, filled = k->steps ? (int)(k->step * width / k->steps) : 0;
        for (int i = 0; i < width; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[width] = '\0';
        printf("\repoch %d/%d [%s] %lld/%lld  D %.4f  G %.4f  D(x) %.2f  D(G(z)) %.2f  %.0f img/s  ETA %s\033[K",
               k->epoch, k->epochs, bar, (long long)k->step, (long long)k->steps, k->mean_d_loss, k->mean_g_loss,
               (double)k->losses.d_real, (double)k->losses.d_fake, k->images_per_second,
               cli_duration(k->eta_seconds, eta, sizeof eta));
    } else if (p->mode == CLI_PROGRESS_LINES && k->step >= p->next_line) {
        p->next_line += k->steps >= 10 ? k->steps / 10 : 1;
        printf("epoch %d/%d step %lld/%lld  D %.4f  G %.4f (this step D %.4f G %.4f)  %.0f img/s  ETA %s\n",
               k->epoch, k->epochs, (long long)k->step, (long long)k->steps, k->mean_d_loss, k->mean_g_loss,
               (double)k->losses.d_loss, (double)k->losses.g_loss, k->images_per_second,
               cli_duration(k->eta_seconds, eta, sizeof eta));
    }
    fflush(stdout);
}

static void print_epoch(gan_progress *p, const keel_gan_progress *k)
{
    const keel_gan_epoch_stats *s = k->stats;
    if (p->mode == CLI_PROGRESS_BAR)
        fputs("\r\033[K", stdout);
    printf("epoch %d/%d  D loss %.4f  G loss %.4f  D(x) %.3f  D(G(z)) %.3f  %.1f s", s->epoch, k->epochs, s->d_loss,
           s->g_loss, s->d_real, s->d_fake, s->seconds);
    if (s->scored)
        printf("  |  FID %.2f  confident %.1f%% (%d classes)", s->score.distance, 100.0 * s->score.confident,
               s->score.classes);
    if (s->grid_path[0])
        printf("  |  %s", s->grid_path);
    printf("\n");
    fflush(stdout);
}

static void on_progress(const keel_gan_progress *k, void *user)
{
    gan_progress *p = user;
    switch (k->event) {
    case KEEL_GAN_EPOCH_BEGIN:
        p->next_line = k->steps >= 10 ? k->steps / 10 : 1;
        p->last_draw = 0;
        break;
    case KEEL_GAN_STEP:
        draw_step(p, k);
        break;
    case KEEL_GAN_SCORE_BEGIN:
        if (p->mode == CLI_PROGRESS_BAR) {
            printf("\repoch %d/%d sampling and scoring...\033[K", k->epoch, k->epochs);
            fflush(stdout);
        }
        break;
    case KEEL_GAN_EPOCH_END:
        print_epoch(p, k);
        break;
    }
}

static cli_progress_mode progress_mode(const char *text)
{
    if (strcmp(text, "bar") == 0)
        return CLI_PROGRESS_BAR;
    if (strcmp(text, "lines") == 0)
        return CLI_PROGRESS_LINES;
    if (strcmp(text, "none") == 0)
        return CLI_PROGRESS_NONE;
    return isatty(fileno(stdout)) ? CLI_PROGRESS_BAR : CLI_PROGRESS_LINES;
}

/* ---- the classifier that scores samples ---------------------------------------- */

static keel_status train_classifier(const gan_args *a, keel_context *ctx, const char *path)
{
    keel_dataset *train = NULL, *test = NULL;
    keel_trainer *t = NULL;
    keel_status st = cli_load_dataset(a->dataset, a->data, true, &train);
    if (st == KEEL_OK)
        st = cli_load_dataset(a->dataset, a->data, false, &test);
    keel_trainer_opts opts = keel_trainer_default_opts();
    opts.model = a->classifier_model;
    opts.train = train;
    opts.test = test;
    opts.epochs = a->classifier_epochs;
    opts.seed = a->seed;
    opts.device = a->device;
    opts.save_path = path;
    cli_progress progress;
    cli_progress_init(&progress, progress_mode(a->progress), stdout);
    opts.progress = cli_progress_callback;
    opts.progress_user = &progress;
    if (st == KEEL_OK) {
        printf("training the %s classifier that scores the samples (%d epochs; --classifier FILE skips this)\n",
               a->classifier_model, a->classifier_epochs);
        fflush(stdout);
        st = keel_trainer_create(&t, ctx, &opts);
    }
    if (st == KEEL_OK)
        st = keel_trainer_run(t);
    keel_trainer_destroy(t);
    keel_dataset_free(train);
    keel_dataset_free(test);
    return st;
}

/* Real training images scored the way samples are: the best a generator
 * could reach with this classifier. */
static keel_status print_reference(const gan_args *a, keel_fid *fid)
{
    keel_dataset *train = NULL;
    keel_status st = cli_load_dataset(a->dataset, a->data, true, &train);
    int channels, height, width;
    keel_fid_image_shape(fid, &channels, &height, &width);
    int64_t count = a->fid_samples, image = (int64_t)channels * height * width;
    if (st == KEEL_OK && count > keel_dataset_size(train))
        count = keel_dataset_size(train);
    float *pixels = st == KEEL_OK ? malloc((size_t)(count * image) * sizeof *pixels) : NULL;
    if (st == KEEL_OK && !pixels)
        st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for %lld reference images", (long long)count);
    int32_t label;
    for (int64_t i = 0; i < count && st == KEEL_OK; i++)
        st = keel_dataset_get(train, i, pixels + i * image, &label);
    keel_fid_score score;
    if (st == KEEL_OK)
        st = keel_fid_score_images(fid, pixels, count, &score);
    if (st == KEEL_OK)
        printf("reference %lld real training images score FID %.2f, confident %.1f%% (what samples aim for)\n",
               (long long)count, score.distance, 100.0 * score.confident);
    free(pixels);
    keel_dataset_free(train);
    return st;
}

static keel_status create_scorer(const gan_args *a, keel_context *ctx, keel_fid **fid)
{
    char path[1100];
    const char *weights = a->classifier;
    if (!weights) {
        snprintf(path, sizeof path, "%s/classifier.safetensors", a->out);
        weights = path;
        keel_status st = access(path, R_OK) == 0 ? KEEL_OK : train_classifier(a, ctx, path);
        if (st != KEEL_OK)
            return st;
    }
    keel_dataset *test = NULL;
    keel_status st = cli_load_dataset(a->dataset, a->data, false, &test);
    keel_fid_opts fo = {.model = a->classifier_model, .weights = weights, .real = test, .real_count = a->fid_real,
                        .device = a->device};
    double start = now_seconds();
    if (st == KEEL_OK)
        st = keel_fid_create(fid, ctx, &fo);
    if (st == KEEL_OK)
        printf("scoring   %lld samples per epoch against %lld real test images in %s features of %s (%d-d, "
               "%.1f s)\n", (long long)a->fid_samples,
               (long long)(a->fid_real && a->fid_real < keel_dataset_size(test) ? a->fid_real
                                                                                 : keel_dataset_size(test)),
               a->classifier_model, weights, keel_fid_dim(*fid), now_seconds() - start);
    keel_dataset_free(test);
    return st == KEEL_OK ? print_reference(a, *fid) : st;
}

/* ---- the run ------------------------------------------------------------------------ */

static int check_args(const cli_command *cmd, const gan_args *a)
{
    if (a->epochs < 1 || a->batch < 2)
        return cli_usage_error(cmd, "--epochs must be >= 1 and --batch >= 2");
    if (a->threads < 0 || a->subset < 0 || a->fid_real < 0 || a->classifier_epochs < 1)
        return cli_usage_error(cmd, "--threads, --subset and --fid-real must be >= 0, --classifier-epochs >= 1");
    if (a->fid_samples < 2)
        return cli_usage_error(cmd, "--fid-samples must be at least 2, got %lld", (long long)a->fid_samples);
    if (!(a->lr > 0) || !(a->beta1 >= 0 && a->beta1 < 1))
        return cli_usage_error(cmd, "--lr must be positive and --beta1 in [0, 1)");
    const char *modes[] = {"auto", "bar", "lines", "none"};
    for (int i = 0; i < 4; i++)
        if (strcmp(a->progress, modes[i]) == 0)
            return CLI_OK;
    return cli_usage_error(cmd, "--progress must be auto, bar, lines or none, got '%s'", a->progress);
}

static int64_t trainable_params(const keel_plan *plan)
{
    int64_t total = 0;
    for (int i = 0; i < keel_plan_param_count(plan); i++) {
        keel_param_info info;
        if (keel_plan_param_info(plan, i, &info) != KEEL_OK || !info.trainable)
            continue;
        int64_t n = 1;
        for (int d = 0; d < info.ndim; d++)
            n *= info.shape[d];
        total += n;
    }
    return total;
}

static keel_status train(const gan_args *a, keel_context *ctx, keel_fid *fid)
{
    keel_dataset *train = NULL;
    keel_gan *gan = NULL;
    keel_status st = cli_load_dataset(a->dataset, a->data, true, &train);
    if (st == KEEL_OK && a->subset > 0)
        st = keel_dataset_truncate(train, a->subset);
    gan_progress progress = {.mode = progress_mode(a->progress)};
    keel_gan_opts opts = keel_gan_default_opts();
    opts.train = train;
    opts.batch = a->batch;
    opts.epochs = a->epochs;
    opts.g_optimizer.lr = opts.d_optimizer.lr = a->lr;
    opts.g_optimizer.beta1 = opts.d_optimizer.beta1 = a->beta1;
    opts.seed = a->seed;
    opts.device = a->device;
    opts.out_dir = a->out;
    opts.fid = fid;
    opts.fid_samples = a->fid_samples;
    opts.progress = on_progress;
    opts.progress_user = &progress;
    if (st == KEEL_OK)
        st = keel_gan_create(&gan, ctx, &opts);
    if (st == KEEL_OK) {
        char g[32], d[32];
        printf("gan       dcgan-g (%s parameters) against dcgan-d (%s parameters) on %lld %s images, batch %lld,\n"
               "          Adam lr %g betas (%g, 0.999) for each, %s, seed %llu, output in %s/\n",
               cli_thousands(trainable_params(keel_gan_generator_plan(gan)), g, sizeof g),
               cli_thousands(trainable_params(keel_gan_discriminator_plan(gan)), d, sizeof d),
               (long long)keel_dataset_size(train), a->dataset, (long long)a->batch, (double)a->lr, (double)a->beta1,
               a->device, (unsigned long long)a->seed, a->out);
        fflush(stdout);
    }
    double start = now_seconds();
    if (st == KEEL_OK)
        st = keel_gan_run(gan);
    if (st == KEEL_OK) {
        char time[32];
        printf("done: %d epochs in %s; checkpoints %s/generator.safetensors and %s/discriminator.safetensors\n",
               keel_gan_epochs_done(gan), cli_duration(now_seconds() - start, time, sizeof time), a->out, a->out);
    }
    keel_gan_destroy(gan);
    keel_dataset_free(train);
    return st;
}

int keel_cli_gan(int argc, char **argv)
{
    gan_args a = {.dataset = "fashion-mnist", .device = "cpu", .out = "gan-out", .classifier_model = "cnn-small",
                  .progress = "auto", .epochs = 10, .classifier_epochs = 10, .batch = 64, .fid_samples = 2000,
                  .lr = 2e-4f, .beta1 = 0.5f, .seed = 1};
    cli_flag flags[] = {
        {"data", CLI_STRING, &a.data, "DIR", "where the dataset's files are (default " KEEL_FASHION_MNIST_DIR ")"},
        {"dataset", CLI_STRING, &a.dataset, "NAME", "fashion-mnist (default), mnist or cifar10"},
        {"epochs", CLI_INT, &a.epochs, "N", "epochs to train (default 10)"},
        {"batch", CLI_INT64, &a.batch, "N", "mini-batch size of both networks (default 64)"},
        {"lr", CLI_FLOAT, &a.lr, "X", "Adam learning rate of both networks (default 0.0002)"},
        {"beta1", CLI_FLOAT, &a.beta1, "X", "Adam beta1 of both networks (default 0.5)"},
        {"seed", CLI_UINT64, &a.seed, "S", "seed of initialisation, noise and shuffling (default 1)"},
        {"device", CLI_STRING, &a.device, "D", "cpu (default) or cuda:N; see `keel devices`"},
        {"threads", CLI_INT, &a.threads, "N", "CPU threads (default 0: every core)"},
        {"out", CLI_STRING, &a.out, "DIR", "sample grids and checkpoints go here (default gan-out; created)"},
        {"subset", CLI_INT64, &a.subset, "N", "train on the first N training images only (default: all)"},
        {"classifier", CLI_STRING, &a.classifier, "FILE", "weights of the scoring classifier (default: "
                                                          "OUT/classifier.safetensors, trained when missing)"},
        {"classifier-model", CLI_STRING, &a.classifier_model, "NAME", "the scoring classifier (default cnn-small)"},
        {"classifier-epochs", CLI_INT, &a.classifier_epochs, "N", "epochs when the classifier is trained here "
                                                                  "(default 10, as keel train)"},
        {"fid-samples", CLI_INT64, &a.fid_samples, "N", "samples scored after each epoch (default 2000)"},
        {"fid-real", CLI_INT64, &a.fid_real, "N", "real test images the samples are compared with (default: all)"},
        {"no-score", CLI_SWITCH, &a.no_score, NULL, "skip the classifier and the per-epoch score"},
        {"progress", CLI_STRING, &a.progress, "MODE", "auto (default: a bar on a terminal, lines otherwise), bar, "
                                                      "lines or none"},
    };
    cli_command cmd = {"gan", NULL, "keel gan [--data DIR] [--epochs N] [--device D] [--seed S] [--out DIR] [flags]",
                       description, flags, (int)(sizeof flags / sizeof flags[0])};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if ((rc = check_args(&cmd, &a)) != CLI_OK)
        return rc;
    keel_context_opts co = {.threads = a.threads};
    keel_context *ctx = NULL;
    keel_fid *fid = NULL;
    keel_status st = keel_context_create(&ctx, &co);
    if (st == KEEL_OK)
        st = make_dir(a.out);
    if (st == KEEL_OK && !a.no_score)
        st = create_scorer(&a, ctx, &fid);
    if (st == KEEL_OK)
        st = train(&a, ctx, fid);
    rc = st == KEEL_OK ? CLI_OK : cli_keel_error();
    keel_fid_destroy(fid);
    keel_context_destroy(ctx);
    return rc;
}
