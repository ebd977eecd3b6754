/* The model registry: names, defaults, option checks, and the pieces every
 * model shares (inputs, loss, optional dropout). */
#include <stdio.h>
#include <string.h>
#include "zoo.h"
#include "dcgan.h"

typedef struct zoo_entry {
    const char *name;
    const char *description;
    keel_zoo_build_fn build;
    int classes, in_channels, height, width; /* defaults */
} zoo_entry;

static const zoo_entry zoo[] = {
    {"lenet5", "LeNet-5 (LeCun et al. 1998) for 28x28 images: conv-pool-conv-pool-conv, ReLU, average pooling, MLP 84",
     keel_zoo_lenet5, 10, 1, 28, 28},
    {"dmlp", "deep MLP (Ciresan et al. 2010): 784-2500-2000-1500-1000-500-10, ReLU",
     keel_zoo_dmlp, 10, 1, 28, 28},
    {"cnn-small", "two VGG-style blocks (conv-BN-ReLU x2, max pool) with 32 and 64 channels, dense 128",
     keel_zoo_cnn_small, 10, 1, 28, 28},
    {"alexnet", "AlexNet (Krizhevsky et al. 2012) as in the paper: two towers (placement groups 0 and 1), LRN, 227x227",
     keel_zoo_alexnet, 1000, 3, 227, 227},
    {"alexnet-1gpu", "AlexNet as torchvision (one tower, no LRN, 64-192-384-256-256), 224x224",
     keel_zoo_alexnet_1gpu, 1000, 3, 224, 224},
    {"vgg16", "VGG-16 (Simonyan & Zisserman 2014, configuration D): 13 conv 3x3 + 3 dense",
     keel_zoo_vgg16, 1000, 3, 224, 224},
    {"googlenet", "GoogLeNet / Inception v1 (Szegedy et al. 2014) as torchvision, with batch norm; auxiliary heads in training",
     keel_zoo_googlenet, 1000, 3, 224, 224},
    {"resnet18", "ResNet-18 (He et al. 2015): basic blocks [2, 2, 2, 2], batch norm, projection shortcuts",
     keel_zoo_resnet18, 1000, 3, 224, 224},
    {"resnet34", "ResNet-34 (He et al. 2015): basic blocks [3, 4, 6, 3], batch norm, projection shortcuts",
     keel_zoo_resnet34, 1000, 3, 224, 224},
    {"resnet50", "ResNet-50 v1.5 (He et al. 2015, torchvision): bottleneck blocks [3, 4, 6, 3], stride on the 3x3",
     keel_zoo_resnet50, 1000, 3, 224, 224},
    {"dcgan-g", "DCGAN generator (Radford et al. 2015) for 28x28: 100-d noise, dense projection, two transposed convs, tanh",
     keel_zoo_dcgan_generator, 1, 1, 28, 28},
    {"dcgan-d", "DCGAN discriminator for 28x28: strided convs, leaky ReLU 0.2, batch norm, one logit",
     keel_zoo_dcgan_discriminator, 1, 1, 28, 28},
};

enum { zoo_size = (int)(sizeof zoo / sizeof zoo[0]) };

int keel_model_count(void) { return zoo_size; }

const char *keel_model_name(int index)
{
    return index >= 0 && index < zoo_size ? zoo[index].name : NULL;
}

const char *keel_model_description(int index)
{
    return index >= 0 && index < zoo_size ? zoo[index].description : NULL;
}

static const zoo_entry *zoo_find(const char *name)
{
    for (int i = 0; i < zoo_size; i++)
        if (strcmp(zoo[i].name, name) == 0) return &zoo[i];
    return NULL;
}

static keel_status unknown_model(const char *name)
{
    char known[512] = "";
    size_t used = 0;
    for (int i = 0; i < zoo_size && used < sizeof known; i++)
        used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", i ? ", " : "", zoo[i].name);
    return keel_fail(KEEL_ERR_NOT_FOUND, "unknown model '%s'; the known models are: %s", name, known);
}

/* Copies the caller's options with every 0 replaced by the model's default. */
static keel_status resolve_opts(const zoo_entry *model, const keel_model_opts *given, keel_model_opts *out)
{
    keel_model_opts none = {0};
    if (!given) given = &none;
    if (given->batch < 0 || given->classes < 0 || given->in_channels < 0 || given->height < 0 || given->width < 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT,
                         "%s: batch, classes, in_channels, height and width must not be negative "
                         "(got batch %lld, classes %d, in_channels %d, %dx%d)",
                         model->name, (long long)given->batch, given->classes, given->in_channels,
                         given->height, given->width);
    if (!(given->dropout < 1.0f))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s: dropout %g must be below 1 (negative: no dropout)",
                         model->name, (double)given->dropout);
    *out = *given;
    if (out->batch == 0) out->batch = 1;
    if (out->classes == 0) out->classes = model->classes;
    if (out->in_channels == 0) out->in_channels = model->in_channels;
    if (out->height == 0) out->height = model->height;
    if (out->width == 0) out->width = model->width;
    return KEEL_OK;
}

keel_status keel_model_build(keel_graph *g, const char *name, const keel_model_opts *opts, keel_model_io *io)
{
    if (!g || !name || !io)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_model_build: graph, name and io must not be NULL");
    memset(io, 0, sizeof *io);
    if (keel_graph_status(g) != KEEL_OK)
        return keel_fail(keel_graph_status(g), "keel_model_build: the graph already failed: %s", keel_graph_error(g));
    const zoo_entry *model = zoo_find(name);
    if (!model) return unknown_model(name);

    keel_model_opts resolved;
    keel_status status = resolve_opts(model, opts, &resolved);
    if (status != KEEL_OK) return status;
    status = model->build(g, &resolved, io);
    if (status == KEEL_OK && keel_graph_status(g) != KEEL_OK)
        status = keel_fail(keel_graph_status(g), "%s with %dx%dx%d input: %s", name, resolved.in_channels,
                           resolved.height, resolved.width, keel_graph_error(g));
    if (status != KEEL_OK) memset(io, 0, sizeof *io); /* no half-built model */
    return status;
}

void keel_zoo_inputs(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    const int64_t shape[4] = {opts->batch, opts->in_channels, opts->height, opts->width};
    io->images = keel_input(g, "images", 4, shape);
    io->labels = keel_input_labels(g, "labels", opts->batch);
}

void keel_zoo_classifier_loss(keel_graph *g, keel_model_io *io, keel_node *logits)
{
    io->logits = logits;
    io->loss = keel_softmax_cross_entropy(g, "loss", logits, io->labels);
}

float keel_zoo_dropout_p(const keel_model_opts *opts, float model_default)
{
    if (opts->dropout < 0) return 0;
    return opts->dropout > 0 ? opts->dropout : model_default;
}

keel_node *keel_zoo_dropout(keel_graph *g, const char *name, keel_node *x, float p)
{
    return p > 0 ? keel_dropout(g, name, x, p) : x;
}
