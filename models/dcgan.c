/* DCGAN (Radford, Metz, Chintala 2015, "Unsupervised representation
 * learning with deep convolutional generative adversarial networks") sized
 * for 28x28 images such as Fashion-MNIST, following the paper's rules:
 * strided convolutions instead of pooling, batch norm in both networks
 * except the generator's output and the discriminator's input layer, ReLU
 * in the generator with tanh at its output, leaky ReLU (slope 0.2) in the
 * discriminator, weights drawn from N(0, 0.02).
 *
 *   generator (dcgan-g)                      for 1x28x28
 *     z        noise                          100x1x1
 *     project  dense, no bias                 6272 = 128x7x7
 *     reshape, bn0, relu0                     128x7x7
 *     deconv1  transposed conv 4x4 /2, pad 1  64x14x14, bn1, relu1
 *     deconv2  transposed conv 4x4 /2, pad 1  1x28x28, tanh
 *
 *   discriminator (dcgan-d)
 *     images   in [-1, 1]                     1x28x28
 *     conv1    conv 4x4 /2, pad 1             64x14x14, lrelu1
 *     conv2    conv 4x4 /2, pad 1, no bias    128x7x7, bn2, lrelu2
 *     fc       dense                          1 logit ("real" when > 0)
 *
 * The paper's generator projects to 4x4 and doubles four times to 64x64;
 * two doublings from H/4 x W/4 fit 28x28. Any height and width that are
 * multiples of 4 work, with `in_channels` image channels. */
#include "dcgan.h"
#include "keel/gan.h"

enum { generator_base = 128, generator_mid = 64, discriminator_first = 64, discriminator_second = 128 };

static const float dcgan_init_std = 0.02f;
static const float leaky_slope = 0.2f;

/* 4x4 kernels, stride 2, padding 1: halves the size as a convolution,
 * doubles it as a transposed one. */
static keel_conv2d_opts stride_2_conv(bool bias)
{
    keel_conv2d_opts o = keel_conv_opts(4, 2, 1);
    o.no_bias = !bias;
    o.weight_init = keel_init_gaussian(dcgan_init_std);
    return o;
}

static keel_status check_size(const char *model, const keel_model_opts *opts)
{
    if (opts->height % 4 || opts->width % 4)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s: image height and width must be multiples of 4 (two "
                         "stride-2 layers), got %dx%d", model, opts->height, opts->width);
    return KEEL_OK;
}

keel_status keel_zoo_dcgan_generator(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    keel_status st = check_size("dcgan-g", opts);
    if (st != KEEL_OK)
        return st;
    const int64_t z_shape[4] = {opts->batch, KEEL_DCGAN_LATENT, 1, 1};
    io->images = keel_input(g, "z", 4, z_shape);
    keel_node *x = keel_flatten(g, "flatten", io->images);

    const int64_t base_h = opts->height / 4, base_w = opts->width / 4;
    keel_linear_opts project = {.no_bias = true, .weight_init = keel_init_gaussian(dcgan_init_std)};
    x = keel_linear(g, "project", x, generator_base * base_h * base_w, &project);
    const int64_t base_shape[4] = {opts->batch, generator_base, base_h, base_w};
    x = keel_reshape(g, "reshape", x, 4, base_shape);
    x = keel_relu(g, "relu0", keel_batch_norm(g, "bn0", x, NULL));

    keel_conv2d_opts hidden = stride_2_conv(false);
    x = keel_conv_transpose2d(g, "deconv1", x, generator_mid, &hidden);
    x = keel_relu(g, "relu1", keel_batch_norm(g, "bn1", x, NULL));

    keel_conv2d_opts output = stride_2_conv(true);
    x = keel_conv_transpose2d(g, "deconv2", x, opts->in_channels, &output);
    io->logits = keel_tanh(g, "tanh", x);
    return KEEL_OK;
}

keel_status keel_zoo_dcgan_discriminator(keel_graph *g, const keel_model_opts *opts, keel_model_io *io)
{
    keel_status st = check_size("dcgan-d", opts);
    if (st != KEEL_OK)
        return st;
    const int64_t shape[4] = {opts->batch, opts->in_channels, opts->height, opts->width};
    io->images = keel_input(g, "images", 4, shape);

    keel_conv2d_opts first = stride_2_conv(true);
    keel_node *x = keel_conv2d(g, "conv1", io->images, discriminator_first, &first);
    x = keel_leaky_relu(g, "lrelu1", x, leaky_slope);

    keel_conv2d_opts second = stride_2_conv(false);
    x = keel_conv2d(g, "conv2", x, discriminator_second, &second);
    x = keel_leaky_relu(g, "lrelu2", keel_batch_norm(g, "bn2", x, NULL), leaky_slope);

    io->features = keel_flatten(g, "flatten", x);
    keel_linear_opts fc = {.weight_init = keel_init_gaussian(dcgan_init_std)};
    io->logits = keel_linear(g, "fc", io->features, 1, &fc);
    return KEEL_OK;
}
