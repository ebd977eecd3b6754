/* keel show: pictures of what a trained network holds. `filters` draws a
 * convolution's kernels as a grid (AlexNet's famous 96 conv1 filters);
 * `activations` draws the feature maps one image produces at a layer, so
 * edges at low layers and parts at higher ones can be seen side by side. */
#include "cli.h"
#include "show.h"
#include "keel/visualize.h"
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

typedef struct show_args {
    const char *model, *weights, *layer, *output, *image, *input, *dataset, *data, *device;
    int classes, zoom, threads;
} show_args;

static const char description[] =
    "Draws what a network has learned as a PNG.\n"
    "\n"
    "  keel show filters --model M --weights F --layer conv1 -o F.png\n"
    "      the kernels \"<layer>.weight\" of a convolution: one RGB tile per filter for RGB input\n"
    "      (AlexNet's conv1), one grey tile per filter for grey input, otherwise a row of grey\n"
    "      tiles (one per input channel) per filter; each tile stretched to its own range.\n"
    "  keel show activations --model M --weights F --image IMG --layer L -o F.png\n"
    "      the feature maps one image produces at layer L, one grey tile per channel, each\n"
    "      stretched to its own range (a dense layer: one mosaic cell per unit).\n"
    "\n"
    "IMG is a whole number (that image of the --dataset test split, default Fashion-MNIST) or a\n"
    "PNG/JPEG file, resized so its shorter side fits the model's input, centre-cropped, and made\n"
    "grey (mean of R, G, B) for 1-channel models. Pixels are normalised with the mean and std\n"
    "the weights file records, as `keel eval` does. Layers are named as `keel info` lists them;\n"
    "convN is the N-th convolution when no layer has that name (conv1 is block1.conv1 in\n"
    "cnn-small and features.0 in alexnet-1gpu). Without --weights the initial weights are drawn.";

/* Lets the spelling `-o FILE` through the shared --flag parser. */
static char **translate_short_flags(int argc, char **argv)
{
    char **out = calloc((size_t)argc + 1, sizeof *out);
    if (!out)
        return NULL;
    for (int i = 0; i < argc; i++)
        out[i] = strcmp(argv[i], "-o") == 0 ? "--output" : argv[i];
    return out;
}

static keel_status set_model_opts(const show_args *a, keel_model_opts *mo)
{
    memset(mo, 0, sizeof *mo);
    mo->batch = 1;
    mo->dropout = -1;
    mo->classes = a->classes;
    char classes[32];
    if (!mo->classes && a->weights && keel_checkpoint_metadata(a->weights, "classes", classes, sizeof classes) == KEEL_OK)
        mo->classes = atoi(classes);
    if (a->input && cli_parse_input_shape(a->input, &mo->in_channels, &mo->height, &mo->width) != 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "--input expects CxHxW such as 3x224x224, got '%s'", a->input);
    return KEEL_OK;
}

/* The model built with batch 1, `keep` kept, compiled and loaded. */
static keel_status load_model(const show_args *a, keel_context *ctx, keel_graph *g, keel_model_io *io,
                              keel_node **layer, bool keep, keel_plan **plan)
{
    keel_model_opts mo;
    keel_status st = set_model_opts(a, &mo);
    if (st == KEEL_OK)
        st = keel_model_build(g, a->model, &mo, io);
    if (st == KEEL_OK)
        st = keel_find_layer(g, a->layer, layer);
    if (st == KEEL_OK && keep)
        keel_graph_keep(g, *layer);
    keel_plan_opts po = {.devices = a->device, .seed = 1};
    if (st == KEEL_OK)
        st = keel_plan_compile(plan, g, ctx, &po);
    if (st == KEEL_OK && a->weights)
        st = keel_weights_load(*plan, a->weights);
    return st;
}

static bool is_index(const char *text)
{
    if (!*text)
        return false;
    for (const char *c = text; *c; c++)
        if (!isdigit((unsigned char)*c))
            return false;
    return true;
}

/* Sample `index` of the test split, as raw [0, 1] pixels. */
static keel_status dataset_image(const show_args *a, int64_t index, int channels, int height, int width, float *out)
{
    keel_dataset *d = NULL;
    keel_status st = cli_load_dataset(a->dataset, a->data, false, &d);
    int c = 0, h = 0, w = 0;
    if (st == KEEL_OK)
        keel_dataset_image_shape(d, &c, &h, &w);
    if (st == KEEL_OK && (c != channels || h != height || w != width))
        st = keel_fail(KEEL_ERR_SHAPE, "%s images are %dx%dx%d but %s takes %dx%dx%d; pass an image file instead",
                       a->dataset, c, h, w, a->model, channels, height, width);
    if (st == KEEL_OK && index >= keel_dataset_size(d))
        st = keel_fail(KEEL_ERR_INVALID_ARGUMENT, "--image %lld: the %s test split has %lld images", (long long)index,
                       a->dataset, (long long)keel_dataset_size(d));
    int32_t label;
    if (st == KEEL_OK)
        st = keel_dataset_get(d, index, out, &label);
    if (st == KEEL_OK)
        printf("image     %s test image %lld (class %d)\n", a->dataset, (long long)index, (int)label);
    keel_dataset_free(d);
    return st;
}

/* An image file: shorter side resized to the input, centre crop, grey when
 * the model takes one channel; raw [0, 1] pixels. */
static keel_status file_image(const char *path, int channels, int height, int width, float *out)
{
    keel_image img = {0};
    keel_status st = keel_image_load(&img, path, height > width ? height : width);
    if (st == KEEL_OK && (img.height < height || img.width < width))
        st = keel_fail(KEEL_ERR_SHAPE, "%s decodes to %dx%d, smaller than the %dx%d input", path, img.height,
                       img.width, height, width);
    if (st == KEEL_OK) {
        int top = (img.height - height) / 2, left = (img.width - width) / 2;
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++) {
                const uint8_t *px = img.pixels + ((size_t)(top + y) * (size_t)img.width + (size_t)(left + x)) * 3;
                for (int c = 0; c < channels; c++) {
                    float v = channels == 3 ? px[c] : (px[0] + px[1] + px[2]) / 3.0f;
                    out[((size_t)c * (size_t)height + (size_t)y) * (size_t)width + (size_t)x] = v / 255.0f;
                }
            }
        printf("image     %s (resized to %dx%d, centre %dx%d)\n", path, img.width, img.height, width, height);
    }
    keel_image_release(&img);
    return st;
}

static keel_status normalise(const char *weights, int channels, int plane, float *image)
{
    if (!weights)
        return KEEL_OK;
    float *mean = malloc((size_t)channels * sizeof *mean), *std = malloc((size_t)channels * sizeof *std);
    keel_status st = mean && std ? keel_checkpoint_normalization(weights, channels, mean, std)
                                 : keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int c = 0; c < channels && st == KEEL_OK; c++)
        for (int p = 0; p < plane; p++)
            image[c * plane + p] = (image[c * plane + p] - mean[c]) / std[c];
    free(mean);
    free(std);
    return st == KEEL_ERR_NOT_FOUND ? KEEL_OK : st;
}

static keel_status feed_image(const show_args *a, keel_plan *plan, const keel_model_io *io)
{
    int64_t shape[KEEL_MAX_DIMS];
    if (keel_node_shape(io->images, shape) != 4)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s does not take images", a->model);
    int channels = (int)shape[1], height = (int)shape[2], width = (int)shape[3];
    float *image = malloc((size_t)channels * (size_t)height * (size_t)width * sizeof *image);
    if (!image)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for the image");
    keel_status st = is_index(a->image) ? dataset_image(a, atoll(a->image), channels, height, width, image)
                                        : file_image(a->image, channels, height, width, image);
    if (st == KEEL_OK)
        st = normalise(a->weights, channels, height * width, image);
    if (st == KEEL_OK)
        st = keel_plan_set_input(plan, io->images, image);
    if (st == KEEL_OK && io->labels) {
        int32_t label = 0;
        st = keel_plan_set_input(plan, io->labels, &label);
    }
    if (st == KEEL_OK)
        st = keel_plan_forward(plan, false);
    free(image);
    return st;
}

static keel_status draw(const show_args *a, bool filters, keel_context *ctx)
{
    keel_graph *g = keel_graph_new();
    if (!g)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    keel_model_io io;
    keel_node *layer = NULL;
    keel_plan *plan = NULL;
    keel_picture picture = {0};
    keel_status st = load_model(a, ctx, g, &io, &layer, !filters, &plan);
    if (st == KEEL_OK && filters)
        st = keel_filter_picture(plan, layer, a->zoom, &picture);
    if (st == KEEL_OK && !filters) {
        st = feed_image(a, plan, &io);
        if (st == KEEL_OK)
            st = keel_activation_picture(plan, layer, a->zoom, &picture);
    }
    if (st == KEEL_OK)
        st = keel_picture_save_png(&picture, a->output);
    if (st == KEEL_OK)
        printf("wrote     %s: %s of layer %s (%s), %dx%d pixels\n", a->output, filters ? "filters" : "feature maps",
               keel_node_name(layer), keel_node_op_name(layer), picture.width, picture.height);
    keel_picture_release(&picture);
    keel_plan_destroy(plan);
    keel_graph_free(g);
    return st;
}

int keel_cli_show(int argc, char **argv)
{
    show_args a = {.layer = "conv1", .dataset = "fashion-mnist", .device = "cpu"};
    cli_flag flags[] = {
        {"model", CLI_STRING, &a.model, "NAME", "the network (default: the model the weights name, else cnn-small)"},
        {"weights", CLI_STRING, &a.weights, "FILE", "trained weights (safetensors, e.g. from keel train --save)"},
        {"layer", CLI_STRING, &a.layer, "NAME", "the layer (default conv1: the first convolution)"},
        {"output", CLI_STRING, &a.output, "FILE.png", "the picture to write (also -o FILE.png); required"},
        {"image", CLI_STRING, &a.image, "IMG", "activations: a test-set index or a PNG/JPEG file; required"},
        {"dataset", CLI_STRING, &a.dataset, "NAME", "activations: the test split an index refers to "
                                                    "(default fashion-mnist)"},
        {"data", CLI_STRING, &a.data, "DIR", "where the dataset's files are"},
        {"input", CLI_STRING, &a.input, "CxHxW", "model input size (default: the model's own)"},
        {"classes", CLI_INT, &a.classes, "N", "classes (default: what the weights record, else the model's own)"},
        {"zoom", CLI_INT, &a.zoom, "N", "magnify each pixel N times (default: tiles at least 24-28 pixels wide)"},
        {"threads", CLI_INT, &a.threads, "N", "CPU threads (default 0: every core)"},
        {"device", CLI_STRING, &a.device, "D", "cpu (default) or cuda:N"},
    };
    cli_command cmd = {"show", NULL,
                       "keel show filters --model M --weights F --layer conv1 -o F.png\n"
                       "       keel show activations --model M --weights F --image IMG --layer L -o F.png",
                       description, flags, (int)(sizeof flags / sizeof flags[0])};
    if (argc < 1 || (strcmp(argv[0], "filters") != 0 && strcmp(argv[0], "activations") != 0)) {
        if (argc >= 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0)) {
            cli_print_help(&cmd, stdout);
            return CLI_OK;
        }
        return cli_usage_error(&cmd, "the first argument must be 'filters' or 'activations'%s%s%s",
                               argc ? ", got '" : "", argc ? argv[0] : "", argc ? "'" : "");
    }
    bool filters = strcmp(argv[0], "filters") == 0;
    char **args = translate_short_flags(argc - 1, argv + 1);
    if (!args)
        return cli_error("out of memory");
    int rc = cli_parse(&cmd, argc - 1, args);
    free(args);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (!a.output)
        return cli_usage_error(&cmd, "-o FILE.png (or --output) is required");
    if (!filters && !a.image)
        return cli_usage_error(&cmd, "activations need --image IMG (a test-set index or an image file)");
    if (a.zoom < 0 || a.threads < 0 || a.classes < 0)
        return cli_usage_error(&cmd, "--zoom, --threads and --classes must be >= 0");
    char saved_model[128];
    if (!a.model)
        a.model = a.weights && keel_checkpoint_metadata(a.weights, "model", saved_model, sizeof saved_model) == KEEL_OK
                      ? saved_model : "cnn-small";
    keel_context_opts co = {.threads = a.threads};
    keel_context *ctx = NULL;
    keel_status st = keel_context_create(&ctx, &co);
    if (st == KEEL_OK)
        st = draw(&a, filters, ctx);
    rc = st == KEEL_OK ? CLI_OK : cli_keel_error();
    keel_context_destroy(ctx);
    return rc;
}
