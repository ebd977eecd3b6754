/* The model zoo: each network is one C function in models/ that builds it
 * with the public graph builder, mirroring its paper's table. Layer and
 * parameter names follow torchvision where it has the model ("conv1.weight",
 * "features.0.weight", "layer1.0.downsample.0.weight"), so checkpoints map
 * one to one.
 *
 *   name          default input   trainable parameters at the defaults
 *   lenet5        1x28x28         61,706
 *   dmlp          1x28x28         11,972,510
 *   cnn-small     1x28x28         468,010
 *   alexnet       3x227x227       60,965,224 (two towers: placement groups 0, 1)
 *   alexnet-1gpu  3x224x224       61,100,840
 *   vgg16         3x224x224       138,357,544
 *   googlenet     3x224x224       6,624,904 (13,004,888 with the auxiliary heads)
 *   resnet18      3x224x224       11,689,512
 *   resnet34      3x224x224       21,797,672
 *   resnet50      3x224x224       25,557,032
 *
 * Other input sizes work where every layer still fits; the first dense layer
 * then takes the flattened feature map at that size (torchvision's adaptive
 * pools are the identity at the default sizes and are not built). */
#ifndef KEEL_MODELS_H
#define KEEL_MODELS_H

#include "graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_model_opts {
    int64_t batch;          /* 0 means 1 */
    int classes;            /* 0: the model's default (10 for the 28x28 models, 1000 for ImageNet ones) */
    int in_channels;        /* 0: the model's default */
    int height, width;      /* 0: the model's default input size */
    bool training;          /* include training-only parts (GoogLeNet's auxiliary classifiers) */
    const int *hidden;      /* dmlp: widths of the hidden layers (NULL: the default) */
    int n_hidden;
    float dropout;          /* > 0: every dropout layer of the model uses it;
                               < 0: no dropout layers; 0: the model's defaults */
} keel_model_opts;

/* What a built model exposes. */
typedef struct keel_model_io {
    keel_node *images;      /* input {batch, C, H, W} */
    keel_node *labels;      /* int32 {batch} */
    keel_node *logits;      /* {batch, classes} */
    keel_node *loss;        /* {1}: softmax cross-entropy; GoogLeNet in training adds
                               0.3 x each auxiliary classifier's */
    keel_node *features;    /* {batch, F}: the input of the last dense layer, i.e. the
                               penultimate activations (after dropout in training) */
} keel_model_io;

/* Builds model `name` into an empty graph g (inputs "images" and "labels",
 * loss "loss"). An unknown name fails with KEEL_ERR_NOT_FOUND and a message
 * listing the known models; a bad option with KEEL_ERR_INVALID_ARGUMENT; an
 * input the architecture cannot take (too small) with the graph's sticky
 * error, which names the layer. keel_last_error() holds the message, and io
 * is all NULL after a failure. */
keel_status keel_model_build(keel_graph *g, const char *name, const keel_model_opts *opts, keel_model_io *io);

/* The models, in a stable order, for --help and listings; name and
 * description are NULL for an index out of range. */
int keel_model_count(void);
const char *keel_model_name(int index);
const char *keel_model_description(int index);

#ifdef __cplusplus
}
#endif
#endif
