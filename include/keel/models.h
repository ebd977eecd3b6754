/* The model zoo: each network is one C function in models/ that builds it
 * with the public graph builder, mirroring its paper's table. */
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
    float dropout;          /* < 0: no dropout; 0: the model's default */
} keel_model_opts;

/* What a built model exposes. */
typedef struct keel_model_io {
    keel_node *images;      /* input {batch, C, H, W} */
    keel_node *labels;      /* int32 {batch} */
    keel_node *logits;      /* {batch, classes} */
    keel_node *loss;        /* scalar: softmax cross-entropy (+ weighted auxiliary losses) */
    keel_node *features;    /* the penultimate layer's activations (embedding), or NULL */
} keel_model_io;

/* Builds model `name` into g. An unknown name or impossible options fail
 * with a message that lists the known models or names the bad option. */
keel_status keel_model_build(keel_graph *g, const char *name, const keel_model_opts *opts, keel_model_io *io);

/* The models, in a stable order, for --help and listings. */
int keel_model_count(void);
const char *keel_model_name(int index);
const char *keel_model_description(int index);

#ifdef __cplusplus
}
#endif
#endif
