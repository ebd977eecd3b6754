/* keel eval: loads weights into a model and reports loss and accuracy on
 * a test set, or the ILSVRC top-1 and top-5 error on an image dataset. */
#include "cli.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char description[] =
    "Loads weights (a checkpoint from `keel train --save`, or any safetensors file with the\n"
    "model's tensor names and shapes) and evaluates them on a dataset split: mean cross-entropy\n"
    "loss and top-1 accuracy (top-5 too with more than 10 classes). The pixels are normalised\n"
    "with the mean and std the checkpoint records; a file that records none gets [0, 1] pixels.\n"
    "\n"
    "Image datasets (ImageNet style: --data names a class folder tree, a list file of 'path label'\n"
    "lines or shards written by `keel pack`): each image is decoded to a 256-pixel short side by\n"
    "--workers threads and its centre crop evaluated, or with --ten-crop AlexNet's ten views with\n"
    "their softmax averaged; the report is the top-1 and top-5 error, as ILSVRC gives them. The\n"
    "crop is the checkpoint's input size unless --crop says otherwise, and the normalisation the\n"
    "one it was trained with (ImageNet's mean and std when it records none; a Caffe mean image\n"
    "from FILE.mean.npy beside the weights when it was trained with --mean-image).";

typedef struct eval_args {
    const char *model, *weights, *dataset, *data, *split, *device, *hidden;
    int64_t batch, subset;
    int threads, workers, crop, short_side;
    bool ten_crop, images, short_side_given, strict_fp32;
} eval_args;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static keel_status set_normalization(const char *weights, keel_dataset *d)
{
    int channels, height, width;
    keel_dataset_image_shape(d, &channels, &height, &width);
    float *mean = calloc((size_t)channels, sizeof *mean), *std = calloc((size_t)channels, sizeof *std);
    if (!mean || !std) {
        free(mean);
        free(std);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    keel_status st = keel_checkpoint_normalization(weights, channels, mean, std);
    if (st == KEEL_OK)
        st = keel_dataset_set_normalization(d, mean, std);
    else if (st == KEEL_ERR_NOT_FOUND)
        st = KEEL_OK;
    free(mean);
    free(std);
    return st;
}

/* The model for channels x height x width inputs with the checkpoint's
 * weights loaded. */
typedef struct loaded_model {
    keel_graph *graph;
    keel_model_io io;
    keel_plan *plan;
} loaded_model;

static keel_status load_model(const eval_args *a, keel_model_opts *mo, int channels, int height, int width,
                              int classes, keel_context *ctx, loaded_model *m)
{
    char saved[32];
    mo->batch = a->batch;
    mo->in_channels = channels;
    mo->height = height;
    mo->width = width;
    mo->classes = keel_checkpoint_metadata(a->weights, "classes", saved, sizeof saved) == KEEL_OK ? atoi(saved)
                                                                                               : classes;
    m->graph = keel_graph_new();
    if (!m->graph)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    keel_status st = keel_model_build(m->graph, a->model, mo, &m->io);
    if (st == KEEL_OK) {
        keel_graph_keep(m->graph, m->io.logits);
        keel_plan_opts po = {.devices = a->device, .strict_fp32 = a->strict_fp32};
        st = keel_plan_compile(&m->plan, m->graph, ctx, &po);
    }
    if (st == KEEL_OK)
        st = keel_weights_load(m->plan, a->weights);
    return st;
}

static void unload_model(loaded_model *m)
{
    keel_plan_destroy(m->plan);
    keel_graph_free(m->graph);
}

static keel_status evaluate(const eval_args *a, keel_model_opts *mo, keel_dataset *d, keel_context *ctx)
{
    int channels, height, width;
    keel_dataset_image_shape(d, &channels, &height, &width);
    loaded_model m = {0};
    keel_status st = load_model(a, mo, channels, height, width, keel_dataset_classes(d), ctx, &m);
    double start = now_seconds();
    keel_eval_result r;
    if (st == KEEL_OK)
        st = keel_evaluate(m.plan, &m.io, d, &r);
    if (st == KEEL_OK) {
        double seconds = now_seconds() - start;
        printf("%s on %s (%s, %lld images): loss %.4f  top-1 %.2f%%", a->model, a->dataset, a->split,
               (long long)r.samples, r.loss, 100.0 * r.top1);
        if (r.has_top5)
            printf("  top-5 %.2f%%", 100.0 * r.top5);
        printf("  (%.1f s, %.0f img/s)\n", seconds, seconds > 0 ? (double)r.samples / seconds : 0.0);
    }
    unload_model(&m);
    return st;
}

/* ---- image datasets ------------------------------------------------------------ */

/* "0.485,0.456,0.406" -> three floats. */
static bool parse_three(const char *text, float *out)
{
    char *end = NULL;
    for (int c = 0; c < 3; c++) {
        out[c] = strtof(text, &end);
        if (end == text || (c < 2 && *end != ','))
            return false;
        text = end + (c < 2);
    }
    return *end == '\0';
}

static keel_status read_three(const char *weights, const char *key, float *out, bool *found)
{
    char text[256];
    keel_status st = keel_checkpoint_metadata(weights, key, text, sizeof text);
    *found = st == KEEL_OK;
    if (st == KEEL_ERR_NOT_FOUND)
        return KEEL_OK;
    if (st == KEEL_OK && !parse_three(text, out))
        return keel_fail(KEEL_ERR_FORMAT, "%s: metadata %s is '%s', not three numbers", weights, key, text);
    return st;
}

static keel_status load_mean_image(const eval_args *a, float **mean_image)
{
    char path[4096];
    cli_mean_image_path(a->weights, path, sizeof path);
    keel_tensor *t = NULL;
    keel_status st = keel_tensor_load_npy(&t, path);
    if (st != KEEL_OK) {
        keel_tensor_free(t);
        return keel_fail(st, "%s was trained with a mean image, which should be in %s (written by `keel train "
                         "--mean-image --save`): %s", a->weights, path, keel_last_error());
    }
    bool fits = t->dtype == KEEL_F32 && t->ndim == 3 && t->shape[0] == 3 && t->shape[1] == a->crop &&
                t->shape[2] == a->crop;
    *mean_image = fits ? malloc((size_t)keel_tensor_numel(t) * sizeof **mean_image) : NULL;
    if (*mean_image)
        memcpy(*mean_image, t->data, (size_t)keel_tensor_numel(t) * sizeof **mean_image);
    keel_tensor_free(t);
    if (!fits)
        return keel_fail(KEEL_ERR_SHAPE, "%s is not a 3x%dx%d float32 mean image", path, a->crop, a->crop);
    return *mean_image ? KEEL_OK : keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for the mean image");
}

/* The views and the normalisation the checkpoint was trained with. */
static keel_status image_augment(const eval_args *a, keel_augment_opts *o, float **mean_image)
{
    *o = keel_augment_defaults(a->ten_crop ? KEEL_CROP_TEN : KEEL_CROP_CENTER);
    o->crop_size = a->crop;
    bool found = false;
    char text[64];
    keel_status st = read_three(a->weights, "normalize.mean", o->mean, &found);
    if (st == KEEL_OK)
        st = read_three(a->weights, "normalize.std", o->std, &found);
    if (st == KEEL_OK && keel_checkpoint_metadata(a->weights, "normalize.mean_image", text, sizeof text) == KEEL_OK) {
        st = load_mean_image(a, mean_image);
        o->mean_image = *mean_image;
    }
    return st;
}

/* The crop: --crop, else the input size the checkpoint records, else the
 * model's usual one. */
static int default_crop(const eval_args *a)
{
    char text[64];
    int channels, height, width, used = 0;
    if (keel_checkpoint_metadata(a->weights, "input", text, sizeof text) == KEEL_OK &&
        sscanf(text, "%dx%dx%d%n", &channels, &height, &width, &used) == 3 && !text[used] && channels == 3 &&
        height == width && height > 0)
        return height;
    return strcmp(a->model, "alexnet") == 0 ? 227 : 224;
}

static keel_status evaluate_images(const eval_args *a, keel_model_opts *mo, keel_context *ctx)
{
    keel_image_open_opts oo = {.short_side = a->short_side_given ? a->short_side : cli_default_short_side(a->crop),
                               .warn = cli_warn_image};
    keel_image_dataset *d = NULL;
    float *mean_image = NULL;
    keel_augment_opts views;
    loaded_model m = {0};
    keel_status st = image_augment(a, &views, &mean_image);
    if (st == KEEL_OK)
        st = keel_image_dataset_open(&d, a->data, &oo);
    if (st == KEEL_OK)
        st = load_model(a, mo, 3, a->crop, a->crop, keel_image_dataset_classes(d), ctx, &m);
    double start = now_seconds();
    keel_eval_result r;
    if (st == KEEL_OK)
        st = keel_evaluate_images(m.plan, &m.io, d, &views, a->workers, &r);
    if (st == KEEL_OK) {
        double seconds = now_seconds() - start;
        printf("%s on %s (%lld images, %s %d): loss %.4f  top-1 error %.2f%%  top-5 error %.2f%%  (%.1f s, %.0f "
               "img/s)\n", a->model, a->data, (long long)r.samples, a->ten_crop ? "ten crops" : "centre crop",
               a->crop, r.loss, 100.0 * (1.0 - r.top1), 100.0 * (1.0 - r.top5), seconds,
               seconds > 0 ? (double)r.samples / seconds : 0.0);
        if (keel_image_dataset_corrupt(d) > 0)
            printf("%lld unreadable images were replaced by the next readable ones\n",
                   (long long)keel_image_dataset_corrupt(d));
    }
    unload_model(&m);
    keel_image_dataset_free(d);
    free(mean_image);
    return st;
}

/* Whether --data is an image dataset, and the flags that only such take. */
static int resolve_images(const cli_command *cmd, eval_args *a)
{
    static const char *const image_flags[] = {"workers", "crop", "ten-crop", "short-side", NULL};
    int rc = cli_resolve_images(cmd, a->dataset, a->data, image_flags, &a->images);
    if (rc != CLI_OK || !a->images)
        return rc;
    if (!a->data)
        return cli_usage_error(cmd, "--dataset images needs --data PATH (an image folder, a list file or packed "
                               "shards)");
    if (cli_find(cmd, "split")->given || cli_find(cmd, "subset")->given)
        return cli_usage_error(cmd, "--split and --subset apply to fashion-mnist, mnist and cifar10; --data names "
                               "the image set itself");
    if (a->ten_crop && a->batch < 10)
        return cli_usage_error(cmd, "--ten-crop needs --batch >= 10 (ten views of each image), got %lld",
                               (long long)a->batch);
    if (a->workers < 0 || a->short_side < 0)
        return cli_usage_error(cmd, "--workers and --short-side must be >= 0");
    if (!cli_find(cmd, "workers")->given)
        a->workers = cli_cpu_count();
    if (!cli_find(cmd, "crop")->given)
        a->crop = default_crop(a);
    if (a->crop < 1 || a->crop > 8192)
        return cli_usage_error(cmd, "--crop must be in [1, 8192], got %d", a->crop);
    a->short_side_given = cli_find(cmd, "short-side")->given;
    a->dataset = "images";
    return CLI_OK;
}

int cli_eval(int argc, char **argv)
{
    eval_args a = {.dataset = "fashion-mnist", .split = "test", .device = "cpu", .batch = 100};
    cli_flag flags[] = {
        {"weights", CLI_STRING, &a.weights, "FILE", "the safetensors file to evaluate (required)"},
        {"model", CLI_STRING, &a.model, "NAME", "the network (default: the model the checkpoint names, else lenet5)"},
        {"dataset", CLI_STRING, &a.dataset, "NAME", "fashion-mnist (default), mnist, cifar10, or images (found "
                                                    "from --data when not given)"},
        {"data", CLI_STRING, &a.data, "PATH", "where the dataset's files are (default " KEEL_FASHION_MNIST_DIR
                                              " for fashion-mnist); images: a class folder tree, a list file or "
                                              "packed shards"},
        {"split", CLI_STRING, &a.split, "NAME", "test (default) or train"},
        {"subset", CLI_INT64, &a.subset, "N", "the first N images only (default: all)"},
        {"batch", CLI_INT64, &a.batch, "N", "images per forward pass (default 100)"},
        {"hidden", CLI_STRING, &a.hidden, "W,W,...", "dmlp: hidden layer widths the weights were trained with"},
        {"threads", CLI_INT, &a.threads, "N", "CPU threads (default 0: every core)"},
        {"device", CLI_STRING, &a.device, "D", "cpu (default), cuda:N, or a list such as cuda:0,cuda:1"},
        {"devices", CLI_STRING, &a.device, "LIST", "the same as --device"},
        {"strict-fp32", CLI_SWITCH, &a.strict_fp32, NULL, "CUDA: IEEE fp32 only (default: TF32 tensor cores allowed)"},
        {"ten-crop", CLI_SWITCH, &a.ten_crop, NULL, "images: average the softmax over AlexNet's ten crops (needs "
                                                    "--batch >= 10)"},
        {"crop", CLI_INT, &a.crop, "N", "images: the square crop (default: the checkpoint's input size, else 224; "
                                        "227 for alexnet)"},
        {"workers", CLI_INT, &a.workers, "N", "images: decoding threads (default: every core; 0: this thread)"},
        {"short-side", CLI_INT, &a.short_side, "N", "images: decode folders and lists to this shorter side "
                                                    "(default 256, or 8/7 of a larger crop; 0: each file's size)"},
    };
    cli_command cmd = {"eval", NULL, "keel eval --weights FILE [--model NAME] [--data PATH] [--ten-crop] [flags]",
                       description,
                       flags, (int)(sizeof flags / sizeof flags[0])};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (!a.weights)
        return cli_usage_error(&cmd, "--weights FILE is required");
    if (a.batch < 1 || a.subset < 0 || a.threads < 0)
        return cli_usage_error(&cmd, "--batch must be >= 1, --subset and --threads >= 0");
    if (strcmp(a.split, "test") != 0 && strcmp(a.split, "train") != 0)
        return cli_usage_error(&cmd, "--split must be test or train, got '%s'", a.split);
    char saved_model[128];
    if (!a.model)
        a.model = keel_checkpoint_metadata(a.weights, "model", saved_model, sizeof saved_model) == KEEL_OK
                      ? saved_model : "lenet5";
    if ((rc = resolve_images(&cmd, &a)) != CLI_OK)
        return rc;
    keel_model_opts mo = {0};
    int widths[64];
    if (a.hidden) {
        mo.n_hidden = cli_parse_widths(a.hidden, widths, 64);
        if (mo.n_hidden < 1)
            return cli_usage_error(&cmd, "--hidden expects widths like 1000,500, got '%s'", a.hidden);
        mo.hidden = widths;
    }
    keel_context_opts co = {.threads = a.threads};
    keel_context *ctx = NULL;
    keel_dataset *d = NULL;
    keel_status st = keel_context_create(&ctx, &co);
    if (st == KEEL_OK && a.images) {
        st = evaluate_images(&a, &mo, ctx);
        rc = st == KEEL_OK ? CLI_OK : cli_keel_error();
        keel_context_destroy(ctx);
        return rc;
    }
    if (st == KEEL_OK)
        st = cli_load_dataset(a.dataset, a.data, strcmp(a.split, "train") == 0, &d);
    if (st == KEEL_OK && a.subset > 0)
        st = keel_dataset_truncate(d, a.subset);
    if (st == KEEL_OK)
        st = set_normalization(a.weights, d);
    if (st == KEEL_OK)
        st = evaluate(&a, &mo, d, ctx);
    rc = st == KEEL_OK ? CLI_OK : cli_keel_error();
    keel_dataset_free(d);
    keel_context_destroy(ctx);
    return rc;
}
