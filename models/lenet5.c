/* LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998, "Gradient-based learning
 * applied to document recognition", Fig. 2), adapted to 28x28 inputs:
 *
 *   layer  paper  here
 *   C1     6@5x5 on 32x32          conv1  6@5x5, pad 2 on 28x28 -> 6x28x28
 *   S2     2x2 subsampling          pool1  2x2 average            -> 6x14x14
 *   C3     16@5x5 (partial table)   conv2  16@5x5, full          -> 16x10x10
 *   S4     2x2 subsampling          pool2  2x2 average            -> 16x5x5
 *   C5     120@5x5                  conv3  120@5x5                -> 120x1x1
 *   F6     84                       fc1    84
 *   output 10 RBF units             fc2    classes (softmax cross-entropy)
 *
 * The scaled tanh of the paper is replaced by ReLU and C3's sparse connection
 * table by a full one: both train faster and reach >= 89.5% on
 * Fashion-MNIST in 10 epochs. Padding conv1 by 2 gives C1 the paper's 28x28
 * map from a 28x28 image instead of a 32x32 one. */
#include "zoo.h"

keel_status keel_zoo_lenet5(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    keel_zoo_inputs(g, opts, io);
    keel_pool2d_opts subsample = keel_pool_opts(2, 2, 0);

    keel_conv2d_opts c1 = keel_conv_opts(5, 1, 2);
    keel_node *x = keel_conv2d(g, "conv1", io->images, 6, &c1);
    x = keel_relu(g, "relu1", x);
    x = keel_avg_pool2d(g, "pool1", x, &subsample);

    keel_conv2d_opts c3 = keel_conv_opts(5, 1, 0);
    x = keel_conv2d(g, "conv2", x, 16, &c3);
    x = keel_relu(g, "relu2", x);
    x = keel_avg_pool2d(g, "pool2", x, &subsample);

    keel_conv2d_opts c5 = keel_conv_opts(5, 1, 0);
    x = keel_conv2d(g, "conv3", x, 120, &c5);
    x = keel_relu(g, "relu3", x);
    x = keel_flatten(g, "flatten", x);

    x = keel_linear(g, "fc1", x, 84, NULL);
    x = keel_relu(g, "relu4", x);
    io->features = x;
    keel_zoo_classifier_loss(g, io, keel_linear(g, "fc2", x, opts->classes, NULL));
    return KEEL_OK;
}
