/* VGG-16 (Simonyan and Zisserman 2014, "Very deep convolutional networks for
 * large-scale image recognition", Table 1, configuration D), named as
 * torchvision's vgg16 (features.N, classifier.N), 138,357,544 parameters:
 *
 *   conv3-64  conv3-64                      maxpool   224 -> 112
 *   conv3-128 conv3-128                     maxpool   -> 56
 *   conv3-256 conv3-256 conv3-256           maxpool   -> 28
 *   conv3-512 conv3-512 conv3-512           maxpool   -> 14
 *   conv3-512 conv3-512 conv3-512           maxpool   -> 7
 *   FC-4096, dropout, FC-4096, dropout, FC-classes
 *
 * Every conv is 3x3, stride 1, pad 1, followed by ReLU; pools are 2x2
 * stride 2. Initialised as torchvision does: He-normal conv weights, N(0, 0.01)
 * dense weights, zero biases (a 16-layer plain net does not train from
 * PyTorch's default uniform init). torchvision's adaptive average pool to 7x7
 * is the identity at 224x224 and is left out: at other input sizes the first
 * dense layer takes the flattened feature map. */
#include <stdio.h>
#include "zoo.h"

enum { pool = 0 };

/* Output channels per conv layer, `pool` for a max pool (Table 1, column D). */
static const int config_d[] = {64,  64,  pool, 128, 128, pool, 256, 256, 256, pool,
                               512, 512, 512, pool, 512, 512, 512, pool};

static keel_node *dense(keel_graph *g, const char *name, keel_node *x, int64_t out_features)
{
    keel_linear_opts o = {0};
    o.weight_init = keel_init_gaussian(0.01f);
    o.bias_init = keel_init_constant(0.0f);
    return keel_linear(g, name, x, out_features, &o);
}

keel_status keel_zoo_vgg16(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    keel_zoo_inputs(g, opts, io);
    float dropout = keel_zoo_dropout_p(opts, 0.5f);
    keel_conv2d_opts conv = keel_conv_opts(3, 1, 1);
    conv.weight_init = keel_init_kaiming();
    conv.bias_init = keel_init_constant(0.0f);
    keel_pool2d_opts halve = keel_pool_opts(2, 2, 0);

    /* torchvision's Sequential numbering: a conv and its ReLU take two
     * indices, a pool one. */
    keel_node *x = io->images;
    int index = 0;
    for (size_t i = 0; i < sizeof config_d / sizeof config_d[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "features.%d", index++);
        if (config_d[i] == pool) {
            x = keel_max_pool2d(g, name, x, &halve);
            continue;
        }
        x = keel_conv2d(g, name, x, config_d[i], &conv);
        snprintf(name, sizeof name, "features.%d", index++);
        x = keel_relu(g, name, x);
    }

    x = keel_flatten(g, "flatten", x);
    x = dense(g, "classifier.0", x, 4096);
    x = keel_relu(g, "classifier.1", x);
    x = keel_zoo_dropout(g, "classifier.2", x, dropout);
    x = dense(g, "classifier.3", x, 4096);
    x = keel_relu(g, "classifier.4", x);
    x = keel_zoo_dropout(g, "classifier.5", x, dropout);
    io->features = x;
    keel_zoo_classifier_loss(g, io, dense(g, "classifier.6", x, opts->classes));
    return KEEL_OK;
}
