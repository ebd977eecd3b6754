/* What the model files share: the builder signature, the standard inputs and
 * loss, and small helpers. Models see only the public API (keel/keel.h). */
#ifndef KEEL_ZOO_H
#define KEEL_ZOO_H

#include "keel/keel.h"

/* Every model builds into g from resolved options: batch, classes,
 * in_channels, height and width are filled in (never 0). It fills io and
 * returns KEEL_OK, or an option error recorded with keel_fail; shape errors
 * are left on the graph's sticky error for keel_model_build to report. */
typedef keel_status (*keel_zoo_build_fn)(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);

keel_status keel_zoo_lenet5(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);
keel_status keel_zoo_dmlp(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);
keel_status keel_zoo_cnn_small(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);
keel_status keel_zoo_alexnet(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);
keel_status keel_zoo_alexnet_1gpu(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);
keel_status keel_zoo_vgg16(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);
keel_status keel_zoo_googlenet(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);
keel_status keel_zoo_resnet18(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);
keel_status keel_zoo_resnet34(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);
keel_status keel_zoo_resnet50(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);

/* "images" {batch, in_channels, height, width} and "labels" {batch}. */
void keel_zoo_inputs(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);

/* Sets io->logits and io->loss = softmax cross-entropy named "loss". */
void keel_zoo_classifier_loss(keel_graph *g, keel_model_io *io, keel_node *logits);

/* The dropout probability a model uses: the caller's opts->dropout when it is
 * positive, none when negative, otherwise the model's own value. */
float keel_zoo_dropout_p(const keel_model_opts *opts, float model_default);

/* keel_dropout when p > 0, x itself otherwise. */
keel_node *keel_zoo_dropout(keel_graph *g, const char *name, keel_node *x, float p);

#endif
