/* GoogLeNet / Inception v1 (Szegedy et al. 2014, "Going deeper with
 * convolutions", Table 1 and Fig. 3), as torchvision builds it: every conv
 * is a BasicConv2d (conv without bias, batch norm with eps 0.001, ReLU), and
 * the "5x5" branch uses a 3x3 kernel, the choice torchvision kept for its
 * pretrained weights. Without the auxiliary heads this is 6,624,904
 * parameters, torchvision's count.
 *
 *   conv1       7x7/2, 64                 224 -> 112
 *   maxpool1    3x3/2 (ceil)              -> 56
 *   conv2       1x1, 64
 *   conv3       3x3, 192
 *   maxpool2    3x3/2 (ceil)              -> 28
 *   inception3a, 3b                       28
 *   maxpool3    3x3/2 (ceil)              -> 14
 *   inception4a .. 4e                     14   (aux1 after 4a, aux2 after 4d)
 *   maxpool4    2x2/2 (ceil)              -> 7
 *   inception5a, 5b                       7
 *   avgpool, dropout 0.2, fc classes
 *
 * An inception module concatenates four branches: 1x1; 1x1 reduce then 3x3;
 * 1x1 reduce then "5x5"; 3x3/1 max pool then 1x1 projection.
 *
 * In training (opts->training) the two auxiliary classifiers of the paper
 * are added: average pool 5x5/3, 1x1 conv 128, dense 1024, ReLU, dropout 0.7,
 * dense classes. Their losses are weighted by 0.3 and added to the main
 * loss. (torchvision pools adaptively to 4x4; the paper's 5x5/3 gives the
 * same 4x4 map at 224x224. On maps smaller than 5 the window shrinks to the
 * map, so small inputs still build.) */
#include <stdio.h>
#include "zoo.h"

typedef struct inception_config {
    const char *name;
    int branch1;                   /* #1x1 */
    int branch2_reduce, branch2;   /* #3x3 reduce, #3x3 */
    int branch3_reduce, branch3;   /* #5x5 reduce, #5x5 */
    int branch4;                   /* pool proj */
} inception_config;

/* Table 1 of the paper. */
static const inception_config inception3[] = {
    {"inception3a", 64, 96, 128, 16, 32, 32},
    {"inception3b", 128, 128, 192, 32, 96, 64},
};
static const inception_config inception4[] = {
    {"inception4a", 192, 96, 208, 16, 48, 64},
    {"inception4b", 160, 112, 224, 24, 64, 64},
    {"inception4c", 128, 128, 256, 24, 64, 64},
    {"inception4d", 112, 144, 288, 32, 64, 64},
    {"inception4e", 256, 160, 320, 32, 128, 128},
};
static const inception_config inception5[] = {
    {"inception5a", 256, 160, 320, 32, 128, 128},
    {"inception5b", 384, 192, 384, 48, 128, 128},
};

/* torchvision's BasicConv2d "<name>.conv", "<name>.bn", then ReLU. */
static keel_node *basic_conv(keel_graph *g, const char *name, keel_node *x, int channels, int kernel, int stride,
                             int padding)
{
    char conv[64], bn[64], relu[64];
    snprintf(conv, sizeof conv, "%s.conv", name);
    snprintf(bn, sizeof bn, "%s.bn", name);
    snprintf(relu, sizeof relu, "%s.relu", name);
    keel_conv2d_opts o = keel_conv_opts(kernel, stride, padding);
    o.no_bias = true;
    o.weight_init = keel_init_gaussian(0.01f);
    keel_batch_norm_opts bn_opts = {.eps = 0.001f};
    x = keel_conv2d(g, conv, x, channels, &o);
    x = keel_batch_norm(g, bn, x, &bn_opts);
    return keel_relu(g, relu, x);
}

static keel_node *max_pool(keel_graph *g, const char *name, keel_node *x, int kernel, int stride, int padding)
{
    keel_pool2d_opts o = keel_pool_opts(kernel, stride, padding);
    o.ceil_mode = true;
    return keel_max_pool2d(g, name, x, &o);
}

static keel_node *inception(keel_graph *g, keel_node *x, const inception_config *c)
{
    char a[64], b[64];
    keel_node *branches[4];
    snprintf(a, sizeof a, "%s.branch1", c->name);
    branches[0] = basic_conv(g, a, x, c->branch1, 1, 1, 0);

    snprintf(a, sizeof a, "%s.branch2.0", c->name);
    snprintf(b, sizeof b, "%s.branch2.1", c->name);
    branches[1] = basic_conv(g, b, basic_conv(g, a, x, c->branch2_reduce, 1, 1, 0), c->branch2, 3, 1, 1);

    snprintf(a, sizeof a, "%s.branch3.0", c->name);
    snprintf(b, sizeof b, "%s.branch3.1", c->name);
    branches[2] = basic_conv(g, b, basic_conv(g, a, x, c->branch3_reduce, 1, 1, 0), c->branch3, 3, 1, 1);

    snprintf(a, sizeof a, "%s.branch4.0", c->name);
    snprintf(b, sizeof b, "%s.branch4.1", c->name);
    branches[3] = basic_conv(g, b, max_pool(g, a, x, 3, 1, 1), c->branch4, 1, 1, 0);

    snprintf(a, sizeof a, "%s.concat", c->name);
    return keel_concat(g, a, 4, branches);
}

/* An auxiliary classifier's loss on the output of inception4a or 4d. */
static keel_node *aux_loss(keel_graph *g, const char *name, keel_node *x, const keel_model_io *io, int classes,
                           float dropout)
{
    char a[64];
    int64_t shape[KEEL_MAX_DIMS] = {0};
    if (x) keel_node_shape(x, shape);
    keel_pool2d_opts pool = keel_pool_opts(5, 3, 0);
    if (x && shape[2] < pool.kernel_h) pool.kernel_h = (int)shape[2];
    if (x && shape[3] < pool.kernel_w) pool.kernel_w = (int)shape[3];

    snprintf(a, sizeof a, "%s.avgpool", name);
    x = keel_avg_pool2d(g, a, x, &pool);
    snprintf(a, sizeof a, "%s.conv", name);
    x = basic_conv(g, a, x, 128, 1, 1, 0);
    snprintf(a, sizeof a, "%s.flatten", name);
    x = keel_flatten(g, a, x);
    snprintf(a, sizeof a, "%s.fc1", name);
    x = keel_linear(g, a, x, 1024, NULL);
    snprintf(a, sizeof a, "%s.relu", name);
    x = keel_relu(g, a, x);
    snprintf(a, sizeof a, "%s.dropout", name);
    x = keel_zoo_dropout(g, a, x, dropout);
    snprintf(a, sizeof a, "%s.fc2", name);
    x = keel_linear(g, a, x, classes, NULL);
    snprintf(a, sizeof a, "%s.loss", name);
    x = keel_softmax_cross_entropy(g, a, x, io->labels);
    snprintf(a, sizeof a, "%s.weighted_loss", name);
    return keel_scale(g, a, x, 0.3f);
}

keel_status keel_zoo_googlenet(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    keel_zoo_inputs(g, opts, io);
    keel_node *x = basic_conv(g, "conv1", io->images, 64, 7, 2, 3);
    x = max_pool(g, "maxpool1", x, 3, 2, 0);
    x = basic_conv(g, "conv2", x, 64, 1, 1, 0);
    x = basic_conv(g, "conv3", x, 192, 3, 1, 1);
    x = max_pool(g, "maxpool2", x, 3, 2, 0);
    for (size_t i = 0; i < sizeof inception3 / sizeof inception3[0]; i++) x = inception(g, x, &inception3[i]);
    x = max_pool(g, "maxpool3", x, 3, 2, 0);

    keel_node *aux[2] = {NULL, NULL};
    float aux_dropout = keel_zoo_dropout_p(opts, 0.7f);
    for (size_t i = 0; i < sizeof inception4 / sizeof inception4[0]; i++) {
        x = inception(g, x, &inception4[i]);
        if (opts->training && i == 0) aux[0] = aux_loss(g, "aux1", x, io, opts->classes, aux_dropout);
        if (opts->training && i == 3) aux[1] = aux_loss(g, "aux2", x, io, opts->classes, aux_dropout);
    }
    x = max_pool(g, "maxpool4", x, 2, 2, 0);
    for (size_t i = 0; i < sizeof inception5 / sizeof inception5[0]; i++) x = inception(g, x, &inception5[i]);

    x = keel_global_avg_pool2d(g, "avgpool", x);
    x = keel_flatten(g, "flatten", x);
    x = keel_zoo_dropout(g, "dropout", x, keel_zoo_dropout_p(opts, 0.2f));
    io->features = x;
    io->logits = keel_linear(g, "fc", x, opts->classes, NULL);
    if (!opts->training) {
        keel_zoo_classifier_loss(g, io, io->logits);
        return KEEL_OK;
    }
    keel_node *main_loss = keel_softmax_cross_entropy(g, "main_loss", io->logits, io->labels);
    keel_node *with_aux1 = keel_add(g, "main_loss+aux1", main_loss, aux[0]);
    io->loss = keel_add(g, "loss", with_aux1, aux[1]);
    return KEEL_OK;
}
