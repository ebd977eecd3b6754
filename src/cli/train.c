/* keel train: the training loop of libkeel behind flags, with a progress
 * bar, per-epoch evaluation, checkpoints and a chart, on the small in-memory
 * datasets or on ImageNet-style image datasets decoded by worker threads. */
#include "cli.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct train_args {
    const char *model, *dataset, *data, *optimizer, *schedule, *device;
    const char *save, *resume, *plot, *progress, *hidden;
    const char *val, *augment;
    int epochs, threads, workers, crop, short_side;
    float dist_timeout;
    int64_t batch, subset, test_subset;
    float lr, momentum, weight_decay, warmup, dropout, lighting;
    uint64_t seed;
    bool nesterov, deterministic, strict_fp32, autotune, no_normalize, no_test, data_parallel, mean_image, ten_crop;
    bool images;            /* resolved: an image dataset */
    bool short_side_given;
} train_args;

static const char description[] =
    "Trains a model of the zoo on a dataset and evaluates it on the test set after every epoch\n"
    "(loss and top-1 accuracy; top-5 too with more than 10 classes). With no flags: LeNet-5 on\n"
    "Fashion-MNIST from " KEEL_FASHION_MNIST_DIR ", SGD with momentum and a cosine\n"
    "schedule, 10 epochs on the CPU. --save writes a safetensors checkpoint after every epoch;\n"
    "--resume continues one bit for bit (same seed, batch and --threads) up to --epochs in total.\n"
    "SGD follows torch.optim.SGD (L2 weight decay added to the gradient, dampening 0) and Adam\n"
    "follows torch.optim.Adam.\n"
    "\n"
    "Data parallelism: `mpirun -np N keel train --data-parallel ...` trains on N ranks (one\n"
    "device each; --device cuda takes the GPU of the rank's local index). --batch is per rank:\n"
    "each step sees N x batch images, a disjoint shard per rank, and the averaged gradient, so\n"
    "it equals a one-process step with batch N x batch at the same --lr (multiply --lr by N to\n"
    "keep the step per image of a one-process run with --batch). Batch-norm statistics are per\n"
    "rank and averaged before each evaluation; rank 0 prints and writes --save and --plot.\n"
    "\n"
    "Image datasets (ImageNet style): --data names an image folder (one sub-folder per class),\n"
    "a list file of 'path label' lines, or shards written by `keel pack` (found by what the path\n"
    "is; --dataset images insists), and --val the validation set in any of those forms (a list\n"
    "file's paths are relative to its own folder). --workers threads decode and augment the next\n"
    "batches while a step runs. --augment resnet (the default; alexnet for the AlexNet models) is\n"
    "torchvision's random-resized crop with mirroring on the images as stored; alexnet is a\n"
    "random --crop square with mirroring of images decoded to a 256-pixel short side, plus PCA\n"
    "colour noise with --lighting 0.1; none is the centre crop. Inputs are normalised with\n"
    "ImageNet's mean and std, or with --mean-image by Caffe's mean image of the training set\n"
    "(written beside --save as FILE.mean.npy for `keel eval`). Validation takes the centre crop\n"
    "of images decoded to a 256-pixel short side, or with --ten-crop AlexNet's ten views with\n"
    "their softmax averaged, and reports the top-1 and top-5 error, as ILSVRC does.";

static int resolve_optimizer(const cli_command *cmd, const train_args *a, keel_optimizer_opts *out)
{
    keel_optimizer_kind kind;
    if (keel_optimizer_parse(a->optimizer, &kind) != KEEL_OK)
        return cli_usage_error(cmd, "%s", keel_last_error());
    keel_optimizer_opts o = keel_optimizer_defaults(kind);
    if (cli_find(cmd, "lr")->given)
        o.lr = a->lr;
    if (cli_find(cmd, "momentum")->given) {
        if (kind != KEEL_OPTIMIZER_SGD)
            return cli_usage_error(cmd, "--momentum applies to --optimizer sgd only");
        o.momentum = a->momentum;
    }
    if (a->nesterov && kind != KEEL_OPTIMIZER_SGD)
        return cli_usage_error(cmd, "--nesterov applies to --optimizer sgd only");
    o.nesterov = a->nesterov;
    o.weight_decay = a->weight_decay;
    *out = o;
    return CLI_OK;
}

static int check_args(const cli_command *cmd, const train_args *a)
{
    if (a->epochs < 1)
        return cli_usage_error(cmd, "--epochs must be at least 1, got %d", a->epochs);
    if (a->batch < 1)
        return cli_usage_error(cmd, "--batch must be at least 1, got %lld", (long long)a->batch);
    if (a->threads < 0)
        return cli_usage_error(cmd, "--threads must be >= 0 (0: all cores), got %d", a->threads);
    if (a->subset < 0 || a->test_subset < 0)
        return cli_usage_error(cmd, "--subset and --test-subset must be >= 0 (0: everything)");
    if (a->dist_timeout < 0)
        return cli_usage_error(cmd, "--dist-timeout must be >= 0 seconds, got %g", (double)a->dist_timeout);
    if (a->warmup < 0)
        return cli_usage_error(cmd, "--warmup must be >= 0 epochs, got %g", (double)a->warmup);
    const char *modes[] = {"auto", "bar", "lines", "none"};
    for (int i = 0; i < 4; i++)
        if (strcmp(a->progress, modes[i]) == 0)
            return CLI_OK;
    return cli_usage_error(cmd, "--progress must be auto, bar, lines or none, got '%s'", a->progress);
}

static bool is_alexnet(const char *model)
{
    return strncmp(model, "alexnet", 7) == 0;
}

static int check_image_args(const cli_command *cmd, train_args *a)
{
    if (!a->data)
        return cli_usage_error(cmd, "--dataset images needs --data PATH (an image folder, a list file or packed "
                               "shards)");
    if (cli_find(cmd, "subset")->given || cli_find(cmd, "test-subset")->given)
        return cli_usage_error(cmd, "--subset and --test-subset apply to fashion-mnist, mnist and cifar10; for "
                               "images, list or pack fewer files");
    if (a->mean_image && a->no_normalize)
        return cli_usage_error(cmd, "--mean-image and --no-normalize exclude each other");
    if (a->ten_crop && !a->val)
        return cli_usage_error(cmd, "--ten-crop evaluates the validation set: give it with --val PATH");
    if (!a->augment)
        a->augment = is_alexnet(a->model) ? "alexnet" : "resnet";
    if (strcmp(a->augment, "alexnet") != 0 && strcmp(a->augment, "resnet") != 0 && strcmp(a->augment, "none") != 0)
        return cli_usage_error(cmd, "--augment must be alexnet, resnet or none, got '%s'", a->augment);
    if (!cli_find(cmd, "crop")->given)
        a->crop = strcmp(a->model, "alexnet") == 0 ? 227 : 224;
    if (a->crop < 1 || a->crop > 8192)
        return cli_usage_error(cmd, "--crop must be in [1, 8192], got %d", a->crop);
    if (a->lighting < 0)
        return cli_usage_error(cmd, "--lighting must be >= 0, got %g", (double)a->lighting);
    if (a->short_side < 0)
        return cli_usage_error(cmd, "--short-side must be >= 0 (0: each file's own size), got %d", a->short_side);
    if (a->workers < 0)
        return cli_usage_error(cmd, "--workers must be >= 0 (0: the training thread decodes), got %d", a->workers);
    if (!cli_find(cmd, "workers")->given)
        a->workers = cli_cpu_count();
    a->short_side_given = cli_find(cmd, "short-side")->given;
    a->dataset = "images";
    return CLI_OK;
}

/* Whether --data is an image dataset, and the flags that only such take. */
static int resolve_images(const cli_command *cmd, train_args *a)
{
    static const char *const image_flags[] = {"val", "workers", "crop", "augment", "lighting", "mean-image",
                                              "ten-crop", "short-side", NULL};
    int rc = cli_resolve_images(cmd, a->dataset, a->data, image_flags, &a->images);
    return rc == CLI_OK && a->images ? check_image_args(cmd, a) : rc;
}

static cli_progress_mode progress_mode(const char *text)
{
    if (strcmp(text, "bar") == 0) return CLI_PROGRESS_BAR;
    if (strcmp(text, "lines") == 0) return CLI_PROGRESS_LINES;
    if (strcmp(text, "none") == 0) return CLI_PROGRESS_NONE;
    return CLI_PROGRESS_AUTO;
}

static keel_status load_data(const train_args *a, keel_dataset **train, keel_dataset **test)
{
    keel_status st = cli_load_dataset(a->dataset, a->data, true, train);
    if (st == KEEL_OK && !a->no_test)
        st = cli_load_dataset(a->dataset, a->data, false, test);
    if (st == KEEL_OK && a->subset > 0)
        st = keel_dataset_truncate(*train, a->subset);
    if (st == KEEL_OK && a->test_subset > 0 && *test)
        st = keel_dataset_truncate(*test, a->test_subset);
    return st;
}

/* Folders and lists are decoded to a short side (torchvision's Resize)
 * except for random-resized crops, which take the images as stored. */
static int short_side(const train_args *a, bool training)
{
    if (a->short_side_given)
        return a->short_side;
    return training && strcmp(a->augment, "resnet") == 0 ? 0 : cli_default_short_side(a->crop);
}

static keel_status load_images(const train_args *a, keel_image_dataset **train, keel_image_dataset **val)
{
    keel_image_open_opts o = {.short_side = short_side(a, true), .warn = cli_warn_image};
    keel_status st = keel_image_dataset_open(train, a->data, &o);
    if (st == KEEL_OK && a->val && !a->no_test) {
        o.short_side = short_side(a, false);
        st = keel_image_dataset_open(val, a->val, &o);
    }
    return st;
}

static keel_crop_mode train_crop_mode(const char *augment)
{
    if (strcmp(augment, "alexnet") == 0)
        return KEEL_CROP_RANDOM;
    return strcmp(augment, "resnet") == 0 ? KEEL_CROP_RANDOM_RESIZED : KEEL_CROP_CENTER;
}

/* The augmentation of both sets; *mean_image receives Caffe's mean image
 * of the training set with --mean-image (the caller frees it). */
static keel_status set_augment(const train_args *a, keel_image_dataset *train, keel_trainer_opts *o,
                               float **mean_image)
{
    o->train_augment = keel_augment_defaults(train_crop_mode(a->augment));
    o->train_augment.crop_size = a->crop;
    o->train_augment.lighting_std = a->lighting;
    o->test_augment = keel_augment_defaults(a->ten_crop ? KEEL_CROP_TEN : KEEL_CROP_CENTER);
    o->test_augment.crop_size = a->crop;
    o->workers = a->workers;
    for (int c = 0; c < 3 && a->no_normalize; c++) {
        o->train_augment.mean[c] = o->test_augment.mean[c] = 0.0f;
        o->train_augment.std[c] = o->test_augment.std[c] = 1.0f;
    }
    if (!a->mean_image)
        return KEEL_OK;
    *mean_image = malloc(3 * (size_t)a->crop * (size_t)a->crop * sizeof **mean_image);
    if (!*mean_image)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for the mean image");
    keel_status st = keel_image_dataset_mean_image(train, a->crop, a->workers, *mean_image);
    o->train_augment.mean_image = o->test_augment.mean_image = *mean_image;
    return st;
}

static keel_status save_mean_image(const train_args *a, float *mean_image)
{
    char path[4096];
    keel_tensor *t = NULL;
    const int64_t shape[3] = {3, a->crop, a->crop};
    keel_status st = keel_tensor_wrap(&t, KEEL_F32, 3, shape, mean_image);
    if (st == KEEL_OK)
        st = keel_tensor_save_npy(t, cli_mean_image_path(a->save, path, sizeof path));
    keel_tensor_free(t);
    if (st == KEEL_OK)
        printf("mean image %s\n", path);
    return st;
}

static void print_summary(keel_trainer *t, double seconds, bool errors)
{
    int n = keel_trainer_history_count(t);
    int best = -1;
    keel_epoch_stats s, top = {0};
    for (int i = 0; i < n; i++)
        if (keel_trainer_history(t, i, &s) == KEEL_OK && s.evaluated && (best < 0 || s.eval.top1 > top.eval.top1)) {
            best = i;
            top = s;
        }
    char time[32];
    printf("done: %d epoch%s in %s", keel_trainer_epochs_done(t), keel_trainer_epochs_done(t) == 1 ? "" : "s",
           cli_duration(seconds, time, sizeof time));
    if (n > 0 && keel_trainer_history(t, n - 1, &s) == KEEL_OK && s.evaluated) {
        if (errors)
            printf("; final top-1 error %.2f%%, top-5 error %.2f%%; best top-1 error %.2f%% (epoch %d)",
                   100.0 * (1.0 - s.eval.top1), 100.0 * (1.0 - s.eval.top5), 100.0 * (1.0 - top.eval.top1), top.epoch);
        else
            printf("; final test top-1 %.2f%%, best %.2f%% (epoch %d)", 100.0 * s.eval.top1, 100.0 * top.eval.top1,
                   top.epoch);
    }
    printf("\n");
}

static keel_status write_plot(keel_trainer *t, const char *path, const char *title)
{
    int n = keel_trainer_history_count(t);
    keel_epoch_stats *epochs = calloc((size_t)(n ? n : 1), sizeof *epochs);
    if (!epochs)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory drawing the chart");
    for (int i = 0; i < n; i++)
        keel_trainer_history(t, i, &epochs[i]);
    keel_status st = cli_plot_svg(path, title, epochs, n);
    free(epochs);
    return st;
}

static int train(const train_args *a, keel_trainer_opts *opts)
{
    keel_context_opts co = {.threads = a->threads};
    keel_context *ctx = NULL;
    keel_dataset *train_set = NULL, *test_set = NULL;
    keel_image_dataset *train_images = NULL, *val_images = NULL;
    float *mean_image = NULL;
    keel_trainer *t = NULL;
    keel_status st = keel_context_create(&ctx, &co);
    if (st == KEEL_OK && a->images) {
        st = load_images(a, &train_images, &val_images);
        if (st == KEEL_OK)
            st = set_augment(a, train_images, opts, &mean_image);
    } else if (st == KEEL_OK) {
        st = load_data(a, &train_set, &test_set);
    }
    opts->train = train_set;
    opts->test = test_set;
    opts->train_images = train_images;
    opts->test_images = val_images;
    if (st == KEEL_OK)
        st = keel_trainer_create(&t, ctx, opts);
    if (st == KEEL_OK && a->resume)
        st = keel_trainer_resume(t, a->resume);
    bool lead = keel_trainer_rank(t) == 0; /* prints and writes files */
    if (st == KEEL_OK && lead) {
        char text[2048];
        printf("%s\n", keel_trainer_describe(t, text, sizeof text));
        if (a->resume)
            printf("resumed   from %s after epoch %d of %d\n", a->resume, keel_trainer_epochs_done(t), a->epochs);
        if (a->images && !val_images && !a->no_test)
            printf("           no --val set: nothing is evaluated\n");
        fflush(stdout);
    }
    if (st == KEEL_OK && lead && mean_image && a->save)
        st = save_mean_image(a, mean_image);
    char title[4200];
    snprintf(title, sizeof title, "%s on %s", opts->model, a->images ? a->data : a->dataset);
    double start = now_seconds();
    while (st == KEEL_OK && keel_trainer_epochs_done(t) < a->epochs) {
        st = keel_trainer_epoch(t, NULL);
        if (st == KEEL_OK && a->plot && lead)
            st = write_plot(t, a->plot, title);
    }
    if (st == KEEL_OK && a->plot && lead) /* also when a resumed run had nothing left to train */
        st = write_plot(t, a->plot, title);
    if (st == KEEL_OK && lead) {
        print_summary(t, now_seconds() - start, a->images);
        if (a->save)
            printf("checkpoint %s\n", a->save);
        if (a->plot)
            printf("chart      %s\n", a->plot);
    }
    int rc = st == KEEL_OK ? CLI_OK : cli_keel_error();
    keel_trainer_destroy(t);
    keel_dataset_free(train_set);
    keel_dataset_free(test_set);
    keel_image_dataset_free(train_images);
    keel_image_dataset_free(val_images);
    free(mean_image);
    keel_context_destroy(ctx);
    return rc;
}

int cli_train(int argc, char **argv)
{
    train_args a = {
        .model = "lenet5", .dataset = "fashion-mnist", .optimizer = "sgd", .schedule = "cosine",
        .device = "cpu", .progress = "auto", .epochs = 10, .batch = 64, .seed = 1,
    };
    cli_flag flags[] = {
        {"model", CLI_STRING, &a.model, "NAME", "the network (default lenet5; `keel --help` lists them)"},
        {"dataset", CLI_STRING, &a.dataset, "NAME", "fashion-mnist (default), mnist, cifar10, or images (found "
                                                    "from --data when not given)"},
        {"data", CLI_STRING, &a.data, "PATH", "where the dataset's files are (default " KEEL_FASHION_MNIST_DIR
                                              " for fashion-mnist); images: a class folder tree, a list file or "
                                              "packed shards"},
        {"epochs", CLI_INT, &a.epochs, "N", "total epochs to train (default 10; with --resume, including "
                                            "those already done)"},
        {"batch", CLI_INT64, &a.batch, "N", "mini-batch size (default 64)"},
        {"optimizer", CLI_STRING, &a.optimizer, "NAME", "sgd (default) or adam"},
        {"lr", CLI_FLOAT, &a.lr, "X", "base learning rate (default 0.05 for sgd, 0.001 for adam)"},
        {"momentum", CLI_FLOAT, &a.momentum, "X", "SGD momentum (default 0.9; 0 is plain mini-batch SGD)"},
        {"nesterov", CLI_SWITCH, &a.nesterov, NULL, "SGD with Nesterov momentum"},
        {"weight-decay", CLI_FLOAT, &a.weight_decay, "X", "L2 weight decay added to the gradient (default 0)"},
        {"schedule", CLI_STRING, &a.schedule, "S", "learning-rate schedule: constant, step[:EPOCHS[:GAMMA]] "
                                                   "(default 3:0.1) or cosine[:MIN_LR] (default)"},
        {"warmup", CLI_FLOAT, &a.warmup, "EPOCHS", "linear warm-up before the schedule (default 0)"},
        {"seed", CLI_UINT64, &a.seed, "N", "seed of initialisation, shuffling and dropout (default 1)"},
        {"threads", CLI_INT, &a.threads, "N", "CPU threads (default 0: every core)"},
        {"device", CLI_STRING, &a.device, "D", "cpu (default), cuda:N, or a list such as cuda:0,cuda:1 that the "
                                               "model's placement groups are split over; see `keel devices`"},
        {"devices", CLI_STRING, &a.device, "LIST", "the same as --device"},
        {"data-parallel", CLI_SWITCH, &a.data_parallel, NULL, "train on every rank of an MPI job (mpirun -np N); "
                                                              "--batch is per rank"},
        {"dist-timeout", CLI_FLOAT, &a.dist_timeout, "SECONDS", "data-parallel: how long a rank waits for the "
                                                                 "others before failing (default 300)"},
        {"deterministic", CLI_SWITCH, &a.deterministic, NULL, "deterministic GPU algorithms (the CPU always is)"},
        {"strict-fp32", CLI_SWITCH, &a.strict_fp32, NULL, "CUDA: IEEE fp32 only (default: TF32 tensor cores allowed "
                                                        "in convolutions and matrix products)"},
        {"autotune", CLI_SWITCH, &a.autotune, NULL, "CUDA: time candidate convolution algorithms once"},
        {"subset", CLI_INT64, &a.subset, "N", "train on the first N training images only (default: all)"},
        {"test-subset", CLI_INT64, &a.test_subset, "N", "evaluate on the first N test images only (default: all)"},
        {"no-test", CLI_SWITCH, &a.no_test, NULL, "skip the evaluation after each epoch"},
        {"no-normalize", CLI_SWITCH, &a.no_normalize, NULL, "feed [0, 1] pixels instead of standardising them "
                                                            "with the training set's mean and std (images: "
                                                            "ImageNet's)"},
        {"val", CLI_STRING, &a.val, "PATH", "images: the validation set, evaluated after every epoch (a class "
                                            "folder tree, a list file or packed shards)"},
        {"workers", CLI_INT, &a.workers, "N", "images: decoding threads (default: every core; 0: the training "
                                              "thread)"},
        {"crop", CLI_INT, &a.crop, "N", "images: the square crop the model takes (default 224; 227 for alexnet)"},
        {"augment", CLI_STRING, &a.augment, "KIND", "images: resnet (random-resized crop + mirror; the default), "
                                                    "alexnet (random crop + mirror; the default for AlexNet) or none "
                                                    "(centre crop)"},
        {"lighting", CLI_FLOAT, &a.lighting, "X", "images: std of AlexNet's PCA colour noise (default 0: off; 0.1 "
                                                  "in AlexNet)"},
        {"mean-image", CLI_SWITCH, &a.mean_image, NULL, "images: subtract Caffe's mean image of the training set "
                                                        "instead of the per-channel mean"},
        {"ten-crop", CLI_SWITCH, &a.ten_crop, NULL, "images: evaluate --val on AlexNet's ten crops, softmax "
                                                    "averaged (needs --batch >= 10)"},
        {"short-side", CLI_INT, &a.short_side, "N", "images: decode folders and lists to this shorter side (default "
                                                    "256, or 8/7 of a larger crop; resnet training: each file's "
                                                    "size; 0: each file's size)"},
        {"hidden", CLI_STRING, &a.hidden, "W,W,...", "dmlp: hidden layer widths (default 2500,2000,1500,1000,500)"},
        {"dropout", CLI_FLOAT, &a.dropout, "P", "dropout probability of models that have it (negative: none)"},
        {"save", CLI_STRING, &a.save, "FILE", "write a safetensors checkpoint to FILE after every epoch"},
        {"resume", CLI_STRING, &a.resume, "FILE", "continue from a checkpoint written by --save"},
        {"plot", CLI_STRING, &a.plot, "FILE.svg", "draw train loss and test accuracy per epoch as an SVG chart"},
        {"progress", CLI_STRING, &a.progress, "MODE", "auto (default: a bar on a terminal, lines otherwise), bar, "
                                                      "lines or none"},
    };
    cli_command cmd = {"train", NULL, "keel train [--model NAME] [--data PATH [--val PATH]] [--epochs N] [--batch N] "
                                      "[--lr X] [flags]",
                       description, flags, (int)(sizeof flags / sizeof flags[0])};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if ((rc = check_args(&cmd, &a)) != CLI_OK || (rc = resolve_images(&cmd, &a)) != CLI_OK)
        return rc;
    keel_trainer_opts opts = keel_trainer_default_opts();
    if ((rc = resolve_optimizer(&cmd, &a, &opts.optimizer)) != CLI_OK)
        return rc;
    if (keel_schedule_parse(a.schedule, &opts.schedule) != KEEL_OK)
        return cli_usage_error(&cmd, "%s", keel_last_error());
    opts.schedule.warmup_epochs = a.warmup;
    int widths[64];
    if (a.hidden) {
        int n = cli_parse_widths(a.hidden, widths, 64);
        if (n < 1)
            return cli_usage_error(&cmd, "--hidden expects widths like 1000,500, got '%s'", a.hidden);
        opts.model_opts.hidden = widths;
        opts.model_opts.n_hidden = n;
    }
    opts.model_opts.dropout = a.dropout;
    opts.model = a.model;
    opts.batch = a.batch;
    opts.epochs = a.epochs;
    opts.seed = a.seed;
    opts.device = a.device;
    opts.deterministic = a.deterministic;
    opts.strict_fp32 = a.strict_fp32;
    opts.autotune = a.autotune;
    opts.data_parallel = a.data_parallel;
    opts.dist_timeout = a.dist_timeout;
    opts.no_normalize = a.no_normalize;
    opts.save_path = a.save;
    cli_progress progress;
    cli_progress_init(&progress, progress_mode(a.progress), stdout);
    progress.errors = a.images;
    opts.progress = cli_progress_callback;
    opts.progress_user = &progress;
    return train(&a, &opts);
}
