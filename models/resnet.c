/* Residual networks (He, Zhang, Ren, Sun 2015, "Deep residual learning for
 * image recognition", Table 1), named as torchvision's resnet18/34/50:
 *
 *   conv1    7x7, 64, stride 2, BN, ReLU              224 -> 112
 *   maxpool  3x3, stride 2, pad 1                      -> 56
 *   layer1   blocks of 64   (x4 out for bottlenecks)  56
 *   layer2   blocks of 128, first one stride 2        28
 *   layer3   blocks of 256, first one stride 2        14
 *   layer4   blocks of 512, first one stride 2        7
 *   avgpool  global average, fc classes
 *
 *   ResNet-18: basic [2, 2, 2, 2]   11,689,512 parameters
 *   ResNet-34: basic [3, 4, 6, 3]   21,797,672
 *   ResNet-50: bottleneck [3, 4, 6, 3]   25,557,032
 *
 * A basic block is 3x3, 3x3; a bottleneck is 1x1 (reduce), 3x3, 1x1 (expand
 * x4) with the stride on the 3x3 (torchvision's "v1.5"). Every conv is
 * followed by batch norm and has no bias. Where a block changes the size or
 * the channel count the shortcut is a projection (1x1 conv + BN, option B of
 * the paper, "downsample" in torchvision); elsewhere it is the identity.
 * Conv weights are He-normal. */
#include <stdio.h>
#include "zoo.h"

enum { basic_expansion = 1, bottleneck_expansion = 4 };

typedef struct resnet_config {
    bool bottleneck;
    int blocks[4];
} resnet_config;

static keel_node *conv_bn(keel_graph *g, const char *conv_name, const char *bn_name, keel_node *x, int channels,
                          int kernel, int stride)
{
    keel_conv2d_opts o = keel_conv_opts(kernel, stride, kernel / 2);
    o.no_bias = true;
    o.weight_init = keel_init_kaiming();
    x = keel_conv2d(g, conv_name, x, channels, &o);
    return keel_batch_norm(g, bn_name, x, NULL);
}

/* "<block>.<layer>", e.g. "layer2.0.conv1" */
static const char *sub(char *buf, size_t size, const char *block, const char *layer)
{
    snprintf(buf, size, "%s.%s", block, layer);
    return buf;
}

static keel_node *shortcut(keel_graph *g, const char *block, keel_node *x, int in_channels, int out_channels,
                           int stride)
{
    if (stride == 1 && in_channels == out_channels) return x;
    char conv[64], bn[64];
    return conv_bn(g, sub(conv, sizeof conv, block, "downsample.0"), sub(bn, sizeof bn, block, "downsample.1"), x,
                   out_channels, 1, stride);
}

static keel_node *basic_block(keel_graph *g, const char *block, keel_node *x, int in_channels, int planes,
                              int stride)
{
    char a[64], b[64];
    keel_node *y = conv_bn(g, sub(a, sizeof a, block, "conv1"), sub(b, sizeof b, block, "bn1"), x, planes, 3, stride);
    y = keel_relu(g, sub(a, sizeof a, block, "relu1"), y);
    y = conv_bn(g, sub(a, sizeof a, block, "conv2"), sub(b, sizeof b, block, "bn2"), y, planes, 3, 1);
    y = keel_add(g, sub(a, sizeof a, block, "residual"), y, shortcut(g, block, x, in_channels, planes, stride));
    return keel_relu(g, sub(a, sizeof a, block, "relu2"), y);
}

static keel_node *bottleneck_block(keel_graph *g, const char *block, keel_node *x, int in_channels, int planes,
                                   int stride)
{
    char a[64], b[64];
    int out_channels = planes * bottleneck_expansion;
    keel_node *y = conv_bn(g, sub(a, sizeof a, block, "conv1"), sub(b, sizeof b, block, "bn1"), x, planes, 1, 1);
    y = keel_relu(g, sub(a, sizeof a, block, "relu1"), y);
    y = conv_bn(g, sub(a, sizeof a, block, "conv2"), sub(b, sizeof b, block, "bn2"), y, planes, 3, stride);
    y = keel_relu(g, sub(a, sizeof a, block, "relu2"), y);
    y = conv_bn(g, sub(a, sizeof a, block, "conv3"), sub(b, sizeof b, block, "bn3"), y, out_channels, 1, 1);
    y = keel_add(g, sub(a, sizeof a, block, "residual"), y, shortcut(g, block, x, in_channels, out_channels, stride));
    return keel_relu(g, sub(a, sizeof a, block, "relu3"), y);
}

static keel_status build_resnet(keel_graph *g, const keel_model_opts *opts, keel_model_io *io,
                                const resnet_config *config)
{
    keel_zoo_inputs(g, opts, io);
    keel_node *x = conv_bn(g, "conv1", "bn1", io->images, 64, 7, 2);
    x = keel_relu(g, "relu", x);
    keel_pool2d_opts stem_pool = keel_pool_opts(3, 2, 1);
    x = keel_max_pool2d(g, "maxpool", x, &stem_pool);

    int expansion = config->bottleneck ? bottleneck_expansion : basic_expansion;
    int channels = 64;
    for (int stage = 0; stage < 4; stage++) {
        int planes = 64 << stage;
        for (int i = 0; i < config->blocks[stage]; i++) {
            char block[32];
            snprintf(block, sizeof block, "layer%d.%d", stage + 1, i);
            int stride = (stage > 0 && i == 0) ? 2 : 1;
            x = config->bottleneck ? bottleneck_block(g, block, x, channels, planes, stride)
                                   : basic_block(g, block, x, channels, planes, stride);
            channels = planes * expansion;
        }
    }
    x = keel_global_avg_pool2d(g, "avgpool", x);
    x = keel_flatten(g, "flatten", x);
    io->features = x;
    keel_zoo_classifier_loss(g, io, keel_linear(g, "fc", x, opts->classes, NULL));
    return KEEL_OK;
}

keel_status keel_zoo_resnet18(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    static const resnet_config config = {false, {2, 2, 2, 2}};
    return build_resnet(g, opts, io, &config);
}

keel_status keel_zoo_resnet34(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    static const resnet_config config = {false, {3, 4, 6, 3}};
    return build_resnet(g, opts, io, &config);
}

keel_status keel_zoo_resnet50(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    static const resnet_config config = {true, {3, 4, 6, 3}};
    return build_resnet(g, opts, io, &config);
}
