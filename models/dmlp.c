/* The deep multilayer perceptron of Ciresan, Meier, Gambardella and
 * Schmidhuber (2010, "Deep, big, simple neural nets for handwritten digit
 * recognition", Table 1, the 784-2500-2000-1500-1000-500-10 net), with ReLU
 * in place of the scaled tanh. The image is flattened; opts->hidden and
 * opts->n_hidden replace the hidden widths. Layers are fc1 .. fcN for the
 * hidden ones and "output" for the classifier. */
#include <stdio.h>
#include "zoo.h"

static const int paper_widths[] = {2500, 2000, 1500, 1000, 500};

keel_status keel_zoo_dmlp(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    const int *widths = paper_widths;
    int depth = (int)(sizeof paper_widths / sizeof paper_widths[0]);
    if (opts->hidden || opts->n_hidden) {
        if (!opts->hidden || opts->n_hidden <= 0)
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT,
                             "dmlp: hidden widths need both hidden (%s) and n_hidden >= 1 (got %d)",
                             opts->hidden ? "given" : "NULL", opts->n_hidden);
        widths = opts->hidden;
        depth = opts->n_hidden;
    }
    for (int i = 0; i < depth; i++)
        if (widths[i] <= 0)
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "dmlp: hidden layer %d has width %d; widths must be positive",
                             i + 1, widths[i]);

    keel_zoo_inputs(g, opts, io);
    float dropout = keel_zoo_dropout_p(opts, 0);
    keel_node *x = keel_flatten(g, "flatten", io->images);
    for (int i = 0; i < depth; i++) {
        char fc[32], relu[32], drop[32];
        snprintf(fc, sizeof fc, "fc%d", i + 1);
        snprintf(relu, sizeof relu, "relu%d", i + 1);
        snprintf(drop, sizeof drop, "dropout%d", i + 1);
        x = keel_linear(g, fc, x, widths[i], NULL);
        x = keel_relu(g, relu, x);
        x = keel_zoo_dropout(g, drop, x, dropout);
    }
    io->features = x;
    keel_zoo_classifier_loss(g, io, keel_linear(g, "output", x, opts->classes, NULL));
    return KEEL_OK;
}
