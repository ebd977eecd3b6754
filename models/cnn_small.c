/* A small VGG-style network for 28x28 images (Fashion-MNIST, >= 92% in a
 * few epochs on a laptop CPU):
 *
 *   block1  conv 3x3 32, BN, ReLU, conv 3x3 32, BN, ReLU, max pool 2  -> 32x14x14
 *   block2  conv 3x3 64, BN, ReLU, conv 3x3 64, BN, ReLU, max pool 2  -> 64x7x7
 *   fc1     dense 128, ReLU, dropout 0.3
 *   fc2     dense classes
 *
 * Convolutions followed by batch norm carry no bias: BN's shift replaces it. */
#include <stdio.h>
#include "zoo.h"

static keel_node *conv_bn_relu(keel_graph *g, const char *block, int index, keel_node *x, int channels)
{
    char conv[48], bn[48], relu[48];
    snprintf(conv, sizeof conv, "%s.conv%d", block, index);
    snprintf(bn, sizeof bn, "%s.bn%d", block, index);
    snprintf(relu, sizeof relu, "%s.relu%d", block, index);
    keel_conv2d_opts same = keel_conv_opts(3, 1, 1);
    same.no_bias = true;
    x = keel_conv2d(g, conv, x, channels, &same);
    x = keel_batch_norm(g, bn, x, NULL);
    return keel_relu(g, relu, x);
}

static keel_node *vgg_block(keel_graph *g, const char *block, keel_node *x, int channels)
{
    char pool[48];
    snprintf(pool, sizeof pool, "%s.pool", block);
    x = conv_bn_relu(g, block, 1, x, channels);
    x = conv_bn_relu(g, block, 2, x, channels);
    keel_pool2d_opts halve = keel_pool_opts(2, 2, 0);
    return keel_max_pool2d(g, pool, x, &halve);
}

keel_status keel_zoo_cnn_small(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    keel_zoo_inputs(g, opts, io);
    keel_node *x = vgg_block(g, "block1", io->images, 32);
    x = vgg_block(g, "block2", x, 64);
    x = keel_flatten(g, "flatten", x);
    x = keel_linear(g, "fc1", x, 128, NULL);
    x = keel_relu(g, "relu", x);
    x = keel_zoo_dropout(g, "dropout", x, keel_zoo_dropout_p(opts, 0.3f));
    io->features = x;
    keel_zoo_classifier_loss(g, io, keel_linear(g, "fc2", x, opts->classes, NULL));
    return KEEL_OK;
}
