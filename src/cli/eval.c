/* keel eval: loads weights into a model and reports loss and accuracy on
 * a test set. */
#include "cli.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char description[] =
    "Loads weights (a checkpoint from `keel train --save`, or any safetensors file with the\n"
    "model's tensor names and shapes) and evaluates them on a dataset split: mean cross-entropy\n"
    "loss and top-1 accuracy (top-5 too with more than 10 classes). The pixels are normalised\n"
    "with the mean and std the checkpoint records; a file that records none gets [0, 1] pixels.";

typedef struct eval_args {
    const char *model, *weights, *dataset, *data, *split, *device, *hidden;
    int64_t batch, subset;
    int threads;
} eval_args;

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

static keel_status evaluate(const eval_args *a, keel_model_opts *mo, keel_dataset *d, keel_context *ctx)
{
    int channels, height, width;
    keel_dataset_image_shape(d, &channels, &height, &width);
    char classes[32];
    mo->batch = a->batch;
    mo->in_channels = channels;
    mo->height = height;
    mo->width = width;
    mo->classes = keel_checkpoint_metadata(a->weights, "classes", classes, sizeof classes) == KEEL_OK
                      ? atoi(classes) : keel_dataset_classes(d);
    keel_graph *g = keel_graph_new();
    if (!g)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    keel_model_io io;
    keel_plan *plan = NULL;
    keel_status st = keel_model_build(g, a->model, mo, &io);
    if (st == KEEL_OK) {
        keel_graph_keep(g, io.logits);
        keel_plan_opts po = {.devices = a->device};
        st = keel_plan_compile(&plan, g, ctx, &po);
    }
    if (st == KEEL_OK)
        st = keel_weights_load(plan, a->weights);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    keel_eval_result r;
    if (st == KEEL_OK)
        st = keel_evaluate(plan, &io, d, &r);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (st == KEEL_OK) {
        double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        printf("%s on %s (%s, %lld images): loss %.4f  top-1 %.2f%%", a->model, a->dataset, a->split,
               (long long)r.samples, r.loss, 100.0 * r.top1);
        if (r.has_top5)
            printf("  top-5 %.2f%%", 100.0 * r.top5);
        printf("  (%.1f s, %.0f img/s)\n", seconds, seconds > 0 ? (double)r.samples / seconds : 0.0);
    }
    keel_plan_destroy(plan);
    keel_graph_free(g);
    return st;
}

int cli_eval(int argc, char **argv)
{
    eval_args a = {.dataset = "fashion-mnist", .split = "test", .device = "cpu", .batch = 100};
    cli_flag flags[] = {
        {"weights", CLI_STRING, &a.weights, "FILE", "the safetensors file to evaluate (required)"},
        {"model", CLI_STRING, &a.model, "NAME", "the network (default: the model the checkpoint names, else lenet5)"},
        {"dataset", CLI_STRING, &a.dataset, "NAME", "fashion-mnist (default), mnist or cifar10"},
        {"data", CLI_STRING, &a.data, "DIR", "where the dataset's files are (default " KEEL_FASHION_MNIST_DIR
                                             " for fashion-mnist)"},
        {"split", CLI_STRING, &a.split, "NAME", "test (default) or train"},
        {"subset", CLI_INT64, &a.subset, "N", "the first N images only (default: all)"},
        {"batch", CLI_INT64, &a.batch, "N", "images per forward pass (default 100)"},
        {"hidden", CLI_STRING, &a.hidden, "W,W,...", "dmlp: hidden layer widths the weights were trained with"},
        {"threads", CLI_INT, &a.threads, "N", "CPU threads (default 0: every core)"},
        {"device", CLI_STRING, &a.device, "D", "cpu (default) or cuda:N"},
    };
    cli_command cmd = {"eval", NULL, "keel eval --weights FILE [--model NAME] [--data DIR] [flags]", description,
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
    keel_model_opts mo = {0};
    int widths[64];
    if (a.hidden) {
        mo.n_hidden = cli_parse_widths(a.hidden, widths, 64);
        if (mo.n_hidden < 1)
            return cli_usage_error(&cmd, "--hidden expects widths like 1000,500, got '%s'", a.hidden);
        mo.hidden = widths;
    }
    char saved_model[128];
    if (!a.model)
        a.model = keel_checkpoint_metadata(a.weights, "model", saved_model, sizeof saved_model) == KEEL_OK
                      ? saved_model : "lenet5";
    keel_context_opts co = {.threads = a.threads};
    keel_context *ctx = NULL;
    keel_dataset *d = NULL;
    keel_status st = keel_context_create(&ctx, &co);
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
