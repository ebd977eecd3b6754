/* AlexNet (Krizhevsky, Sutskever, Hinton 2012, "ImageNet classification with
 * deep convolutional neural networks", Fig. 2 and Section 3), two ways.
 *
 * "alexnet" is the paper's network, split across two GPUs. Each tower is a
 * placement group (0 and 1), so the planner can put it on its own device;
 * the towers talk only at conv3, fc6, fc7 and fc8:
 *
 *   layer  per tower                         input of each tower      out (per tower)
 *   conv1  48 @ 11x11 / 4, ReLU, LRN, pool   the 3x227x227 image      48x27x27
 *   conv2  128 @ 5x5 pad 2, ReLU, LRN, pool  its own conv1            128x13x13
 *   conv3  192 @ 3x3 pad 1, ReLU             both towers' conv2       192x13x13
 *   conv4  192 @ 3x3 pad 1, ReLU             its own conv3            192x13x13
 *   conv5  128 @ 3x3 pad 1, ReLU, pool       its own conv4            128x6x6
 *   fc6    2048, ReLU, dropout 0.5           both towers' conv5       2048
 *   fc7    2048, ReLU, dropout 0.5           both towers' fc6         2048
 *   fc8    classes (one layer)               both towers' fc7         1000
 *
 * LRN: size 5, k 2, alpha 1e-4, beta 0.75; pooling 3x3 stride 2 (overlapping).
 * Initialisation (Section 5): weights N(0, 0.01); biases 1 in conv2, conv4,
 * conv5, fc6 and fc7 (so the ReLUs start with positive inputs), 0 elsewhere.
 * 60,965,224 parameters at 227x227 with 1000 classes.
 *
 * "alexnet-1gpu" is torchvision's single-tower variant (features.N and
 * classifier.N as there): 64, 192, 384, 256, 256 filters, no LRN, dropout
 * before fc6 and fc7, 61,100,840 parameters at 224x224. torchvision's
 * adaptive average pool to 6x6 is the identity at 224x224, so it is left
 * out: at other sizes the classifier takes the flattened feature map. */
#include <stdio.h>
#include "zoo.h"

enum { towers = 2 };

static keel_conv2d_opts paper_conv(int kernel, int stride, int padding, float bias)
{
    keel_conv2d_opts o = keel_conv_opts(kernel, stride, padding);
    o.weight_init = keel_init_gaussian(0.01f);
    o.bias_init = keel_init_constant(bias);
    return o;
}

static keel_linear_opts paper_fc(float bias)
{
    keel_linear_opts o = {0};
    o.weight_init = keel_init_gaussian(0.01f);
    o.bias_init = keel_init_constant(bias);
    return o;
}

/* "tower1.conv2" */
static const char *tower_name(char *buf, size_t size, int tower, const char *layer)
{
    snprintf(buf, size, "tower%d.%s", tower, layer);
    return buf;
}

/* conv, ReLU, then optionally LRN and overlapping max pool; `stage` numbers
 * the layer names (conv2, relu2, norm2, pool2). */
static keel_node *tower_conv(keel_graph *g, int tower, int stage, keel_node *x, int filters,
                             const keel_conv2d_opts *conv, bool normalise, bool pool)
{
    char layer[16], name[48];
    snprintf(layer, sizeof layer, "conv%d", stage);
    x = keel_conv2d(g, tower_name(name, sizeof name, tower, layer), x, filters, conv);
    snprintf(layer, sizeof layer, "relu%d", stage);
    x = keel_relu(g, tower_name(name, sizeof name, tower, layer), x);
    if (normalise) {
        snprintf(layer, sizeof layer, "norm%d", stage);
        x = keel_lrn(g, tower_name(name, sizeof name, tower, layer), x, 5, 1e-4f, 0.75f, 2.0f);
    }
    if (pool) {
        keel_pool2d_opts overlapping = keel_pool_opts(3, 2, 0);
        snprintf(layer, sizeof layer, "pool%d", stage);
        x = keel_max_pool2d(g, tower_name(name, sizeof name, tower, layer), x, &overlapping);
    }
    return x;
}

/* Both towers' outputs joined along channels (or features), built in the
 * current tower: the cross-GPU connections of the paper. */
static keel_node *join_towers(keel_graph *g, int tower, const char *layer, keel_node *const *outputs)
{
    char name[48];
    return keel_concat(g, tower_name(name, sizeof name, tower, layer), towers, outputs);
}

static keel_node *tower_fc(keel_graph *g, int tower, int stage, keel_node *x, float dropout)
{
    char layer[16], name[48];
    keel_linear_opts fc = paper_fc(1.0f);
    snprintf(layer, sizeof layer, "fc%d", stage);
    x = keel_linear(g, tower_name(name, sizeof name, tower, layer), x, 2048, &fc);
    snprintf(layer, sizeof layer, "relu%d", stage);
    x = keel_relu(g, tower_name(name, sizeof name, tower, layer), x);
    snprintf(layer, sizeof layer, "drop%d", stage);
    return keel_zoo_dropout(g, tower_name(name, sizeof name, tower, layer), x, dropout);
}

keel_status keel_zoo_alexnet(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    keel_zoo_inputs(g, opts, io);
    float dropout = keel_zoo_dropout_p(opts, 0.5f);
    keel_conv2d_opts conv1 = paper_conv(11, 4, 0, 0.0f), conv2 = paper_conv(5, 1, 2, 1.0f);
    keel_conv2d_opts conv3 = paper_conv(3, 1, 1, 0.0f), conv45 = paper_conv(3, 1, 1, 1.0f);
    keel_node *a[towers], *b[towers];

    for (int t = 0; t < towers; t++) {
        int outer = keel_graph_on_device(g, t);
        a[t] = tower_conv(g, t, 1, io->images, 48, &conv1, true, true);
        a[t] = tower_conv(g, t, 2, a[t], 128, &conv2, true, true);
        keel_graph_on_device(g, outer);
    }
    for (int t = 0; t < towers; t++) {
        int outer = keel_graph_on_device(g, t);
        b[t] = join_towers(g, t, "concat3", a);
        b[t] = tower_conv(g, t, 3, b[t], 192, &conv3, false, false);
        b[t] = tower_conv(g, t, 4, b[t], 192, &conv45, false, false);
        b[t] = tower_conv(g, t, 5, b[t], 128, &conv45, false, true);
        keel_graph_on_device(g, outer);
    }
    for (int t = 0; t < towers; t++) {
        char name[48];
        int outer = keel_graph_on_device(g, t);
        a[t] = join_towers(g, t, "concat6", b);
        a[t] = keel_flatten(g, tower_name(name, sizeof name, t, "flatten"), a[t]);
        a[t] = tower_fc(g, t, 6, a[t], dropout);
        keel_graph_on_device(g, outer);
    }
    for (int t = 0; t < towers; t++) {
        int outer = keel_graph_on_device(g, t);
        b[t] = join_towers(g, t, "concat7", a);
        b[t] = tower_fc(g, t, 7, b[t], dropout);
        keel_graph_on_device(g, outer);
    }
    io->features = keel_concat(g, "concat8", towers, b);
    keel_linear_opts fc8 = paper_fc(0.0f);
    keel_zoo_classifier_loss(g, io, keel_linear(g, "fc8", io->features, opts->classes, &fc8));
    return KEEL_OK;
}

keel_status keel_zoo_alexnet_1gpu(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    keel_zoo_inputs(g, opts, io);
    float dropout = keel_zoo_dropout_p(opts, 0.5f);
    keel_pool2d_opts overlapping = keel_pool_opts(3, 2, 0);
    keel_conv2d_opts conv1 = keel_conv_opts(11, 4, 2), conv2 = keel_conv_opts(5, 1, 2);
    keel_conv2d_opts conv3 = keel_conv_opts(3, 1, 1);

    keel_node *x = keel_conv2d(g, "features.0", io->images, 64, &conv1);
    x = keel_relu(g, "features.1", x);
    x = keel_max_pool2d(g, "features.2", x, &overlapping);
    x = keel_conv2d(g, "features.3", x, 192, &conv2);
    x = keel_relu(g, "features.4", x);
    x = keel_max_pool2d(g, "features.5", x, &overlapping);
    x = keel_conv2d(g, "features.6", x, 384, &conv3);
    x = keel_relu(g, "features.7", x);
    x = keel_conv2d(g, "features.8", x, 256, &conv3);
    x = keel_relu(g, "features.9", x);
    x = keel_conv2d(g, "features.10", x, 256, &conv3);
    x = keel_relu(g, "features.11", x);
    x = keel_max_pool2d(g, "features.12", x, &overlapping);

    x = keel_flatten(g, "flatten", x);
    x = keel_zoo_dropout(g, "classifier.0", x, dropout);
    x = keel_linear(g, "classifier.1", x, 4096, NULL);
    x = keel_relu(g, "classifier.2", x);
    x = keel_zoo_dropout(g, "classifier.3", x, dropout);
    x = keel_linear(g, "classifier.4", x, 4096, NULL);
    x = keel_relu(g, "classifier.5", x);
    io->features = x;
    keel_zoo_classifier_loss(g, io, keel_linear(g, "classifier.6", x, opts->classes, NULL));
    return KEEL_OK;
}
