/* The GAN trainer (finite losses, both networks learn, seeded runs repeat
 * bit for bit on the CPU), the DCGAN pair from the zoo, and the Fréchet
 * distance (analytic cases, equal sets, classes of Fashion-MNIST). */
#include "support/support.h"
#include "keel/gan.h"
#include "keel/visualize.h"
#include "graph/plan_internal.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- Fréchet distance ------------------------------------------------------------ */

static void gaussian_rows(float *rows, int64_t count, int dim, uint64_t seed, const double *mean, const double *scale)
{
    ks_fill_uniform(rows, count * dim, seed, -1.7320508f, 1.7320508f); /* unit variance */
    for (int64_t i = 0; i < count; i++)
        for (int d = 0; d < dim; d++)
            rows[i * dim + d] = (float)(mean[d] + scale[d] * rows[i * dim + d]);
}

/* Per-dimension sample mean and unbiased variance in double. */
static void moments(const float *rows, int64_t count, int dim, int d, double *mean, double *var)
{
    double m = 0, v = 0;
    for (int64_t i = 0; i < count; i++)
        m += rows[i * dim + d];
    m /= (double)count;
    for (int64_t i = 0; i < count; i++)
        v += (rows[i * dim + d] - m) * (rows[i * dim + d] - m);
    *mean = m;
    *var = v / (double)(count - 1);
}

/* One dimension: d = (m_a - m_b)^2 + (s_a - s_b)^2 with s the standard
 * deviations; independent dimensions add up only when the sample
 * covariances are diagonal, so the check uses dim 1. */
static void test_frechet_one_dimension(void **state)
{
    (void)state;
    enum { n = 4000 };
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    const double ma = 0.5, sa = 2.0, mb = -1.0, sb = 0.5;
    gaussian_rows(a, n, 1, 1, &ma, &sa);
    gaussian_rows(b, n, 1, 2, &mb, &sb);
    double mean_a, var_a, mean_b, var_b, got;
    moments(a, n, 1, 0, &mean_a, &var_a);
    moments(b, n, 1, 0, &mean_b, &var_b);
    KS_OK(keel_frechet_distance(a, n, b, n, 1, &got));
    double want = (mean_a - mean_b) * (mean_a - mean_b) + (sqrt(var_a) - sqrt(var_b)) * (sqrt(var_a) - sqrt(var_b));
    float gotf = (float)got;
    ks_check("frechet 1-d against (dm)^2 + (ds)^2", &gotf, &want, 1, 1e-9, 1e-5);
    free(a);
    free(b);
}

/* Equal sets give 0 up to rounding; a shifted copy gives exactly the
 * squared shift (the covariances are equal); distances are symmetric. */
static void test_frechet_equal_and_shifted(void **state)
{
    (void)state;
    enum { n = 1500, dim = 24 };
    double mean[dim], scale[dim];
    for (int d = 0; d < dim; d++) {
        mean[d] = 0.1 * d;
        scale[d] = 0.5 + 0.05 * d;
    }
    float *a = malloc(n * dim * sizeof *a), *b = malloc(n * dim * sizeof *b);
    gaussian_rows(a, n, dim, 3, mean, scale);
    /* correlate the dimensions so the covariance is not diagonal */
    for (int64_t i = 0; i < n; i++)
        for (int d = 1; d < dim; d++)
            a[i * dim + d] += 0.7f * a[i * dim + d - 1];
    double same;
    KS_OK(keel_frechet_distance(a, n, a, n, dim, &same));
    printf("frechet of a set with itself: %.3g\n", same);
    assert_true(same < 1e-6);
    double shift2 = 0;
    for (int64_t i = 0; i < n; i++)
        for (int d = 0; d < dim; d++)
            b[i * dim + d] = a[i * dim + d] + (d % 2 ? 0.25f : -0.5f);
    for (int d = 0; d < dim; d++)
        shift2 += d % 2 ? 0.0625 : 0.25;
    double shifted, back;
    KS_OK(keel_frechet_distance(a, n, b, n, dim, &shifted));
    KS_OK(keel_frechet_distance(b, n, a, n, dim, &back));
    float got[2] = {(float)shifted, (float)back};
    double want[2] = {shift2, shift2};
    ks_check("frechet of a shifted copy against |shift|^2 (both orders)", got, want, 2, 1e-9, 1e-4);
    assert_int_equal(keel_frechet_distance(a, 1, b, n, dim, &shifted), KEEL_ERR_INVALID_ARGUMENT);
    free(a);
    free(b);
}

static keel_dataset *fashion_test_set(void)
{
    const char *dir = getenv("KEEL_DATA_DIR");
    keel_dataset *d = NULL;
    if (!dir || keel_dataset_load_mnist_dir(&d, dir, false) != KEEL_OK) {
        printf("Fashion-MNIST not found (KEEL_DATA_DIR); skipping\n");
        return NULL;
    }
    return d;
}

/* Images of one class as 7x7 average-pooled pixels (49 features). */
static int64_t pooled_class(const keel_dataset *d, int label, int64_t want, float *rows)
{
    float image[28 * 28];
    int64_t n = 0;
    for (int64_t i = 0; i < keel_dataset_size(d) && n < want; i++) {
        int32_t y;
        KS_OK(keel_dataset_get(d, i, image, &y));
        if (y != label)
            continue;
        for (int p = 0; p < 49; p++) {
            double sum = 0;
            for (int k = 0; k < 16; k++)
                sum += image[((p / 7) * 4 + k / 4) * 28 + (p % 7) * 4 + k % 4];
            rows[n * 49 + p] = (float)(sum / 16);
        }
        n++;
    }
    return n;
}

/* T-shirts against trousers lie much further apart than two halves of the
 * T-shirts. */
static void test_frechet_classes(void **state)
{
    (void)state;
    keel_dataset *d = fashion_test_set();
    if (!d)
        skip();
    enum { per_class = 600 };
    float *shirts = malloc(per_class * 49 * sizeof *shirts), *trousers = malloc(per_class * 49 * sizeof *trousers);
    assert_int_equal(pooled_class(d, 0, per_class, shirts), per_class);
    assert_int_equal(pooled_class(d, 1, per_class, trousers), per_class);
    double halves, classes;
    KS_OK(keel_frechet_distance(shirts, per_class / 2, shirts + per_class / 2 * 49, per_class / 2, 49, &halves));
    KS_OK(keel_frechet_distance(shirts, per_class / 2, trousers, per_class / 2, 49, &classes));
    printf("frechet: two halves of class 0 %.4f, class 0 against class 1 %.4f (ratio %.1f)\n", halves, classes,
           classes / halves);
    assert_true(halves > 0);
    assert_true(classes > 10 * halves);
    free(shirts);
    free(trousers);
    keel_dataset_free(d);
}

/* The scorer end to end with an untrained cnn-small: real images scored
 * against themselves give about 0, and every probability is counted. */
static void test_fid_scorer(void **state)
{
    (void)state;
    keel_dataset *d = fashion_test_set();
    if (!d)
        skip();
    enum { count = 300 };
    keel_context *ctx = ks_context();
    keel_graph *g = keel_graph_new();
    keel_model_io io;
    keel_model_opts mo = {.batch = 100};
    KS_OK(keel_model_build(g, "cnn-small", &mo, &io));
    keel_plan *plan = ks_compile(g, ctx, 7);
    char path[256];
    snprintf(path, sizeof path, "/tmp/keel-test-gan-%ld-classifier.safetensors", (long)getpid());
    KS_OK(keel_weights_save(plan, path, NULL));
    keel_plan_destroy(plan);
    keel_graph_free(g);

    keel_fid *fid = NULL;
    keel_fid_opts fo = {.weights = path, .real = d, .real_count = count};
    KS_OK(keel_fid_create(&fid, ctx, &fo));
    assert_int_equal(keel_fid_dim(fid), 128);
    float *images = malloc(count * 784 * sizeof *images);
    int32_t label;
    for (int64_t i = 0; i < count; i++)
        KS_OK(keel_dataset_get(d, i, images + i * 784, &label));
    keel_fid_score score;
    KS_OK(keel_fid_score_images(fid, images, count, &score));
    printf("untrained cnn-small, real against real: distance %.3g, confident %.3f, %d classes\n", score.distance,
           score.confident, score.classes);
    assert_int_equal(score.samples, count);
    assert_true(score.distance < 1e-3);
    assert_true(score.confident >= 0 && score.confident <= 1);
    assert_true(score.classes >= 1);
    for (int64_t i = 0; i < count * 784; i++)
        images[i] = 1.0f - images[i];
    keel_fid_score inverted;
    KS_OK(keel_fid_score_images(fid, images, count, &inverted));
    printf("real against inverted real: distance %.3g\n", inverted.distance);
    assert_true(inverted.distance > 100 * (score.distance + 1e-6));
    free(images);
    keel_fid_destroy(fid);
    keel_context_destroy(ctx);
    keel_dataset_free(d);
    remove(path);
}

/* ---- GAN training ----------------------------------------------------------------- */

/* A small G (8-d noise -> 1x8x8) and D, the DCGAN recipe at toy size. */
static keel_status tiny_generator(keel_graph *g, const keel_model_opts *opts, keel_model_io *io, void *user)
{
    (void)user;
    const int64_t z[4] = {opts->batch, 8, 1, 1}, base[4] = {opts->batch, 16, 2, 2};
    io->images = keel_input(g, "z", 4, z);
    keel_node *x = keel_linear(g, "project", keel_flatten(g, "flatten", io->images), 64, NULL);
    x = keel_relu(g, "relu0", keel_batch_norm(g, "bn0", keel_reshape(g, "reshape", x, 4, base), NULL));
    keel_conv2d_opts up = keel_conv_opts(4, 2, 1);
    x = keel_relu(g, "relu1", keel_batch_norm(g, "bn1", keel_conv_transpose2d(g, "deconv1", x, 8, &up), NULL));
    io->logits = keel_tanh(g, "tanh", keel_conv_transpose2d(g, "deconv2", x, opts->in_channels, &up));
    return KEEL_OK;
}

static keel_status tiny_discriminator(keel_graph *g, const keel_model_opts *opts, keel_model_io *io, void *user)
{
    (void)user;
    const int64_t shape[4] = {opts->batch, opts->in_channels, opts->height, opts->width};
    io->images = keel_input(g, "images", 4, shape);
    keel_conv2d_opts down = keel_conv_opts(4, 2, 1);
    keel_node *x = keel_leaky_relu(g, "lrelu1", keel_conv2d(g, "conv1", io->images, 8, &down), 0.2f);
    x = keel_leaky_relu(g, "lrelu2", keel_batch_norm(g, "bn2", keel_conv2d(g, "conv2", x, 16, &down), NULL), 0.2f);
    io->logits = keel_linear(g, "fc", keel_flatten(g, "flatten", x), 1, NULL);
    return KEEL_OK;
}

/* 96 8x8 images: bright bars at random rows. */
static keel_dataset *bars(int size)
{
    enum { count = 96 };
    uint8_t *pixels = calloc((size_t)count * size * size, 1);
    int32_t labels[count];
    float r[count];
    ks_fill_uniform(r, count, 5, 0, (float)size);
    for (int i = 0; i < count; i++) {
        labels[i] = i % 2;
        int row = (int)r[i] % size;
        for (int x = 0; x < size; x++)
            pixels[(size_t)i * size * size + (size_t)row * size + x] = 230;
    }
    keel_dataset *d = NULL;
    KS_OK(keel_dataset_from_u8(&d, count, 1, size, size, 2, pixels, labels));
    free(pixels);
    return d;
}

static keel_gan *tiny_gan(keel_context *ctx, keel_dataset *d, uint64_t seed)
{
    keel_gan_opts o = keel_gan_default_opts();
    o.train = d;
    o.generator = tiny_generator;
    o.discriminator = tiny_discriminator;
    o.batch = 16;
    o.epochs = 1;
    o.seed = seed;
    o.grid = 2;
    keel_gan *gan = NULL;
    KS_OK(keel_gan_create(&gan, ctx, &o));
    return gan;
}

static float *params_of(keel_plan *plan, const char *name, int64_t n)
{
    float *v = malloc((size_t)n * sizeof *v);
    KS_OK(keel_plan_param_get(plan, name, v, n));
    return v;
}

static int64_t differing(const float *a, const float *b, int64_t n)
{
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++)
        count += a[i] != b[i];
    return count;
}

/* Three steps: finite losses, and both networks' weights move. */
static void test_steps_learn(void **state)
{
    (void)state;
    keel_context *ctx = ks_context();
    keel_dataset *d = bars(8);
    keel_gan *gan = tiny_gan(ctx, d, 3);
    assert_int_equal(keel_gan_latent(gan), 8);
    keel_plan *g = keel_gan_generator_plan(gan), *dp = keel_gan_discriminator_plan(gan);
    float *g_before = params_of(g, "deconv1.weight", 16 * 8 * 16), *d_before = params_of(dp, "conv2.weight", 16 * 8 * 16);
    float real[16 * 64];
    int32_t label;
    for (int i = 0; i < 16; i++)
        KS_OK(keel_dataset_get(d, i, real + i * 64, &label)); /* the GAN set the [-1, 1] normalisation */
    for (int i = 0; i < 16 * 64; i++)
        assert_true(real[i] >= -1.0f && real[i] <= 1.0f);
    for (int step = 0; step < 3; step++) {
        keel_gan_losses l;
        KS_OK(keel_gan_step(gan, real, NULL, &l));
        printf("step %d: D %.4f  G %.4f  D(x) %.3f  D(G(z)) %.3f\n", step + 1, (double)l.d_loss, (double)l.g_loss,
               (double)l.d_real, (double)l.d_fake);
        assert_true(isfinite(l.d_loss) && isfinite(l.g_loss) && l.d_loss > 0 && l.g_loss > 0);
        assert_true(l.d_real > 0 && l.d_real < 1 && l.d_fake > 0 && l.d_fake < 1);
    }
    float *g_after = params_of(g, "deconv1.weight", 16 * 8 * 16), *d_after = params_of(dp, "conv2.weight", 16 * 8 * 16);
    int64_t g_changed = differing(g_before, g_after, 16 * 8 * 16), d_changed = differing(d_before, d_after, 16 * 8 * 16);
    printf("changed weights: G deconv1 %lld of 2048, D conv2 %lld of 2048\n", (long long)g_changed,
           (long long)d_changed);
    assert_true(g_changed > 1900 && d_changed > 1900);
    free(g_before);
    free(g_after);
    free(d_before);
    free(d_after);
    keel_gan_destroy(gan);
    keel_dataset_free(d);
    keel_context_destroy(ctx);
}

/* D's update uses the sum of the gradients of its real and fake batches,
 * each run on its own: with SGD at lr 1, momentum 0, one step changes D's
 * weights by exactly minus that sum, rebuilt here from two separate passes
 * through a second GAN of the same seed. */
static keel_gan *sgd_gan(keel_context *ctx, keel_dataset *d)
{
    keel_gan_opts o = keel_gan_default_opts();
    o.train = d;
    o.generator = tiny_generator;
    o.discriminator = tiny_discriminator;
    o.batch = 16;
    o.seed = 9;
    o.grid = 0;
    o.d_optimizer = keel_optimizer_defaults(KEEL_OPTIMIZER_SGD);
    o.d_optimizer.momentum = 0;
    o.d_optimizer.lr = 1;
    keel_gan *gan = NULL;
    KS_OK(keel_gan_create(&gan, ctx, &o));
    return gan;
}

/* The gradient of D's "fc.weight" for one batch against one target. */
static void d_gradient(keel_plan *dp, const float *images, float target, float *grad)
{
    keel_graph *g = dp->graph;
    float targets[16];
    for (int i = 0; i < 16; i++)
        targets[i] = target;
    KS_OK(keel_plan_set_input(dp, keel_graph_find(g, "images"), images));
    KS_OK(keel_plan_set_input(dp, keel_graph_find(g, "gan.targets"), targets));
    KS_OK(keel_plan_forward(dp, true));
    KS_OK(keel_plan_backward(dp));
    KS_OK(keel_plan_grad_get(dp, "fc.weight", grad, 64));
}

static void test_discriminator_gradient_is_summed(void **state)
{
    (void)state;
    keel_context *ctx = ks_context();
    keel_dataset *d = bars(8);
    keel_gan *stepped = sgd_gan(ctx, d), *manual = sgd_gan(ctx, d);
    float real[16 * 64], noise[16 * 8], fake[16 * 64];
    int32_t label;
    for (int i = 0; i < 16; i++)
        KS_OK(keel_dataset_get(d, i, real + i * 64, &label));
    KS_OK(keel_gan_noise(stepped, 21, 16, noise));

    /* the same G forward (training mode) and D passes, by hand */
    keel_plan *gp = keel_gan_generator_plan(manual), *dp = keel_gan_discriminator_plan(manual);
    KS_OK(keel_plan_set_input(gp, keel_graph_find(gp->graph, "z"), noise));
    KS_OK(keel_plan_forward(gp, true));
    KS_OK(keel_plan_read(gp, keel_graph_find(gp->graph, "tanh"), fake));
    float grad_real[64], grad_fake[64], before[64], after[64];
    KS_OK(keel_plan_param_get(dp, "fc.weight", before, 64));
    d_gradient(dp, real, 1.0f, grad_real);
    d_gradient(dp, fake, 0.0f, grad_fake);

    keel_plan *stepped_d = keel_gan_discriminator_plan(stepped);
    float start[64];
    KS_OK(keel_plan_param_get(stepped_d, "fc.weight", start, 64));
    assert_memory_equal(start, before, sizeof start);
    KS_OK(keel_gan_step(stepped, real, noise, NULL));
    KS_OK(keel_plan_param_get(stepped_d, "fc.weight", after, 64));
    double want[64];
    float got[64];
    for (int i = 0; i < 64; i++) {
        want[i] = -((double)grad_real[i] + (double)grad_fake[i]);
        got[i] = after[i] - before[i];
    }
    ks_check("D step = -(grad real + grad fake) at SGD lr 1", got, want, 64, 1e-3, 1e-4);
    keel_gan_destroy(stepped);
    keel_gan_destroy(manual);
    keel_dataset_free(d);
    keel_context_destroy(ctx);
}

/* Two runs with one seed agree bit for bit; another seed differs. */
static void test_seeded_runs_repeat(void **state)
{
    (void)state;
    keel_context *ctx = ks_context();
    keel_dataset *d = bars(8);
    float *weights[3];
    keel_gan_epoch_stats stats[3];
    const uint64_t seeds[3] = {11, 11, 12};
    for (int run = 0; run < 3; run++) {
        keel_gan *gan = tiny_gan(ctx, d, seeds[run]);
        KS_OK(keel_gan_epoch(gan, &stats[run]));
        assert_int_equal(keel_gan_epochs_done(gan), 1);
        weights[run] = params_of(keel_gan_generator_plan(gan), "project.weight", 64 * 8);
        printf("seed %llu: D %.9g  G %.9g\n", (unsigned long long)seeds[run], stats[run].d_loss, stats[run].g_loss);
        keel_gan_destroy(gan);
    }
    assert_true(stats[0].d_loss == stats[1].d_loss && stats[0].g_loss == stats[1].g_loss);
    assert_int_equal(differing(weights[0], weights[1], 64 * 8), 0);
    assert_true(differing(weights[0], weights[2], 64 * 8) > 0);
    for (int run = 0; run < 3; run++)
        free(weights[run]);
    keel_dataset_free(d);
    keel_context_destroy(ctx);
}

/* An epoch with an output folder writes the grid PNG and both checkpoints,
 * which load back into the plans. */
static void test_epoch_outputs(void **state)
{
    (void)state;
    keel_context *ctx = ks_context();
    keel_dataset *d = bars(8);
    char dir[128], path[256];
    snprintf(dir, sizeof dir, "/tmp/keel-test-gan-%ld", (long)getpid());
    assert_int_equal(mkdir(dir, 0777), 0);
    keel_gan_opts o = keel_gan_default_opts();
    o.train = d;
    o.generator = tiny_generator;
    o.discriminator = tiny_discriminator;
    o.batch = 16;
    o.epochs = 1;
    o.grid = 3;
    o.out_dir = dir;
    keel_gan *gan = NULL;
    KS_OK(keel_gan_create(&gan, ctx, &o));
    keel_gan_epoch_stats s;
    keel_status st = keel_gan_epoch(gan, &s);
    if (st == KEEL_ERR_UNSUPPORTED) {
        printf("built without libpng: %s\n", keel_last_error());
        skip();
    }
    KS_OK(st);
    snprintf(path, sizeof path, "%s/samples-epoch-01.png", dir);
    assert_string_equal(s.grid_path, path);
    keel_picture pic = {0};
    KS_OK(keel_picture_load_png(&pic, path));
    assert_int_equal(pic.width, 3 * (2 * 8 + 2) + 2);   /* 3 columns of 8 pixels zoomed 2x, padding 2 */
    assert_int_equal(pic.height, 3 * (2 * 8 + 2) + 2);
    keel_picture_release(&pic);
    remove(path);
    snprintf(path, sizeof path, "%s/generator.safetensors", dir);
    KS_OK(keel_weights_load(keel_gan_generator_plan(gan), path));
    char value[64];
    KS_OK(keel_checkpoint_metadata(path, "epoch", value, sizeof value));
    assert_string_equal(value, "1");
    remove(path);
    snprintf(path, sizeof path, "%s/discriminator.safetensors", dir);
    KS_OK(keel_weights_load(keel_gan_discriminator_plan(gan), path));
    remove(path);
    rmdir(dir);
    keel_gan_destroy(gan);
    keel_dataset_free(d);
    keel_context_destroy(ctx);
}

/* dcgan-g and dcgan-d from the zoo: the shapes the paper's recipe gives on
 * 28x28 images, and one training step through the default networks. */
static void test_dcgan_zoo(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    keel_model_io io;
    keel_model_opts mo = {.batch = 4};
    KS_OK(keel_model_build(g, "dcgan-g", &mo, &io));
    int64_t shape[KEEL_MAX_DIMS];
    assert_int_equal(keel_node_shape(io.images, shape), 4);
    assert_true(shape[0] == 4 && shape[1] == KEEL_DCGAN_LATENT && shape[2] == 1 && shape[3] == 1);
    assert_int_equal(keel_node_shape(io.logits, shape), 4);
    assert_true(shape[0] == 4 && shape[1] == 1 && shape[2] == 28 && shape[3] == 28);
    assert_string_equal(keel_node_op_name(io.logits), "activation");
    keel_graph_free(g);

    g = keel_graph_new();
    KS_OK(keel_model_build(g, "dcgan-d", &mo, &io));
    assert_int_equal(keel_node_shape(io.logits, shape), 2);
    assert_true(shape[0] == 4 && shape[1] == 1);
    assert_null(io.loss);
    keel_graph_free(g);

    g = keel_graph_new();
    keel_model_opts odd = {.height = 30, .width = 28};
    assert_int_equal(keel_model_build(g, "dcgan-d", &odd, &io), KEEL_ERR_INVALID_ARGUMENT);
    printf("30x28 images: %s\n", keel_last_error());
    keel_graph_free(g);

    keel_context *ctx = ks_context();
    keel_dataset *d = bars(28);
    keel_gan_opts o = keel_gan_default_opts();
    o.train = d;
    o.batch = 8;
    o.grid = 2;
    keel_gan *gan = NULL;
    KS_OK(keel_gan_create(&gan, ctx, &o));
    float real[8 * 784];
    int32_t label;
    for (int i = 0; i < 8; i++)
        KS_OK(keel_dataset_get(d, i, real + i * 784, &label));
    keel_gan_losses l;
    KS_OK(keel_gan_step(gan, real, NULL, &l));
    printf("dcgan step: D %.4f  G %.4f\n", (double)l.d_loss, (double)l.g_loss);
    assert_true(isfinite(l.d_loss) && isfinite(l.g_loss));
    float noise[3 * KEEL_DCGAN_LATENT], images[3 * 784];
    KS_OK(keel_gan_noise(gan, 5, 3, noise));
    KS_OK(keel_gan_generate(gan, noise, 3, images));
    for (int i = 0; i < 3 * 784; i++)
        assert_true(images[i] >= -1.0f && images[i] <= 1.0f);
    keel_gan_destroy(gan);
    keel_dataset_free(d);
    keel_context_destroy(ctx);
}

static void test_bad_options(void **state)
{
    (void)state;
    keel_context *ctx = ks_context();
    keel_dataset *d = bars(8);
    keel_gan_opts o = keel_gan_default_opts();
    keel_gan *gan = NULL;
    assert_int_equal(keel_gan_create(&gan, ctx, &o), KEEL_ERR_INVALID_ARGUMENT);
    o.train = d;
    o.batch = 200;
    assert_int_equal(keel_gan_create(&gan, ctx, &o), KEEL_ERR_INVALID_ARGUMENT);
    printf("batch 200 on 96 images: %s\n", keel_last_error());
    o.batch = 16;
    o.generator = tiny_discriminator; /* ends in a logit, not an image */
    o.discriminator = tiny_discriminator;
    assert_int_equal(keel_gan_create(&gan, ctx, &o), KEEL_ERR_SHAPE);
    printf("a generator that makes logits: %s\n", keel_last_error());
    assert_null(gan);
    keel_dataset_free(d);
    keel_context_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frechet_one_dimension),
        cmocka_unit_test(test_frechet_equal_and_shifted),
        cmocka_unit_test(test_frechet_classes),
        cmocka_unit_test(test_fid_scorer),
        cmocka_unit_test(test_steps_learn),
        cmocka_unit_test(test_discriminator_gradient_is_summed),
        cmocka_unit_test(test_seeded_runs_repeat),
        cmocka_unit_test(test_epoch_outputs),
        cmocka_unit_test(test_dcgan_zoo),
        cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
