/* The model zoo: parameter counts against the published (torchvision)
 * numbers, forward FLOPs, parameter names, AlexNet's two placement groups
 * and its paper initialisation, option errors, and a few plain-SGD steps of
 * every model on the CPU that must lower the loss on a fixed batch. */
#include "support/support.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Builds a model into a fresh graph, failing the test on any error. */
static keel_graph *build(const char *name, const keel_model_opts *opts, keel_model_io *io)
{
    keel_graph *g = keel_graph_new();
    assert_non_null(g);
    keel_status status = keel_model_build(g, name, opts, io);
    if (status != KEEL_OK)
        fail_msg("building %s: %s: %s", name, keel_status_string(status), keel_last_error());
    ks_graph_ok(g);
    return g;
}

static int64_t param_count(const char *name, const keel_model_opts *opts)
{
    keel_model_io io;
    keel_graph *g = build(name, opts, &io);
    int64_t count = keel_graph_param_count(g);
    keel_graph_free(g);
    return count;
}

static void expect_params(const char *name, bool training, int64_t want)
{
    keel_model_opts opts = {.batch = 1, .training = training};
    int64_t got = param_count(name, &opts);
    printf("PARAMS %s%s: %lld (want %lld)\n", name, training ? " (training)" : "", (long long)got, (long long)want);
    assert_int_equal(got, want);
}

static void test_param_counts(void **state)
{
    (void)state;
    expect_params("lenet5", false, 61706);
    expect_params("dmlp", false, 11972510);
    expect_params("cnn-small", false, 468010);
    expect_params("alexnet", false, 60965224);     /* Caffe's two-group bvlc_alexnet */
    expect_params("alexnet-1gpu", false, 61100840); /* torchvision alexnet */
    expect_params("vgg16", false, 138357544);
    expect_params("googlenet", false, 6624904);     /* torchvision, aux_logits=False */
    expect_params("googlenet", true, 13004888);     /* with both auxiliary heads */
    expect_params("resnet18", false, 11689512);
    expect_params("resnet34", false, 21797672);
    expect_params("resnet50", false, 25557032);
}

static void test_dmlp_hidden_widths(void **state)
{
    (void)state;
    const int widths[] = {100, 50};
    keel_model_opts opts = {.batch = 3, .hidden = widths, .n_hidden = 2};
    keel_model_io io;
    keel_graph *g = build("dmlp", &opts, &io);
    assert_int_equal(keel_graph_param_count(g), 784 * 100 + 100 + 100 * 50 + 50 + 50 * 10 + 10);
    int64_t shape[KEEL_MAX_DIMS];
    assert_int_equal(keel_node_shape(io.features, shape), 2);
    assert_int_equal(shape[0], 3);
    assert_int_equal(shape[1], 50);
    keel_graph_free(g);
}

/* Forward FLOPs of every layer, as `keel info` sums them. */
static double forward_flops(const keel_graph *g)
{
    double total = 0;
    for (int i = 0; i < keel_graph_layer_count(g); i++) {
        keel_layer_info info;
        KS_OK(keel_graph_layer_info(g, i, &info));
        total += info.flops;
    }
    return total;
}

static void expect_macs(const char *name, double want)
{
    keel_model_opts opts = {.batch = 1};
    keel_model_io io;
    keel_graph *g = build(name, &opts, &io);
    double macs = forward_flops(g) / 2;
    double rel = fabs(macs - want) / want;
    printf("MACS %s at 224x224: %.4g (want %.4g, off by %.2f%%)\n", name, macs, want, 100 * rel);
    if (!(rel <= 0.02)) fail_msg("%s: %.4g MACs, want %.4g within 2%%", name, macs, want);
    keel_graph_free(g);
}

static void test_forward_flops(void **state)
{
    (void)state;
    expect_macs("resnet50", 4.09e9);
    expect_macs("vgg16", 15.5e9);
}

static void expect_param_shape(keel_graph *g, const char *param, int ndim, const int64_t *want)
{
    keel_node *p = keel_graph_find(g, param);
    if (!p) fail_msg("no parameter '%s'", param);
    int64_t shape[KEEL_MAX_DIMS];
    assert_int_equal(keel_node_shape(p, shape), ndim);
    for (int i = 0; i < ndim; i++)
        if (shape[i] != want[i])
            fail_msg("%s: dimension %d is %lld, want %lld", param, i, (long long)shape[i], (long long)want[i]);
}

/* Parameter names follow torchvision, so checkpoints map one to one. */
static void test_param_names(void **state)
{
    (void)state;
    keel_model_opts opts = {.batch = 1};
    keel_model_io io;
    keel_graph *g = build("vgg16", &opts, &io);
    expect_param_shape(g, "features.0.weight", 4, (const int64_t[]){64, 3, 3, 3});
    expect_param_shape(g, "features.28.weight", 4, (const int64_t[]){512, 512, 3, 3});
    expect_param_shape(g, "classifier.0.weight", 2, (const int64_t[]){4096, 25088});
    expect_param_shape(g, "classifier.6.bias", 1, (const int64_t[]){1000});
    keel_graph_free(g);

    g = build("resnet50", &opts, &io);
    expect_param_shape(g, "conv1.weight", 4, (const int64_t[]){64, 3, 7, 7});
    expect_param_shape(g, "layer1.0.downsample.0.weight", 4, (const int64_t[]){256, 64, 1, 1});
    expect_param_shape(g, "layer1.0.downsample.1.running_var", 1, (const int64_t[]){256});
    expect_param_shape(g, "layer2.0.conv2.weight", 4, (const int64_t[]){128, 128, 3, 3});
    expect_param_shape(g, "layer4.2.conv3.weight", 4, (const int64_t[]){2048, 512, 1, 1});
    expect_param_shape(g, "fc.weight", 2, (const int64_t[]){1000, 2048});
    keel_graph_free(g);

    keel_model_opts training = {.batch = 1, .training = true};
    g = build("googlenet", &training, &io);
    expect_param_shape(g, "conv1.conv.weight", 4, (const int64_t[]){64, 3, 7, 7});
    expect_param_shape(g, "inception5b.branch3.1.conv.weight", 4, (const int64_t[]){128, 48, 3, 3});
    expect_param_shape(g, "inception4e.branch4.1.bn.weight", 1, (const int64_t[]){128});
    expect_param_shape(g, "aux1.fc1.weight", 2, (const int64_t[]){1024, 2048});
    expect_param_shape(g, "aux2.conv.conv.weight", 4, (const int64_t[]){128, 528, 1, 1});
    keel_graph_free(g);

    g = build("alexnet-1gpu", &opts, &io);
    expect_param_shape(g, "features.10.weight", 4, (const int64_t[]){256, 256, 3, 3});
    expect_param_shape(g, "classifier.1.weight", 2, (const int64_t[]){4096, 9216});
    keel_graph_free(g);

    g = build("alexnet", &opts, &io);
    expect_param_shape(g, "tower0.conv1.weight", 4, (const int64_t[]){48, 3, 11, 11});
    expect_param_shape(g, "tower1.conv2.weight", 4, (const int64_t[]){128, 48, 5, 5});
    expect_param_shape(g, "tower1.conv3.weight", 4, (const int64_t[]){192, 256, 3, 3});
    expect_param_shape(g, "tower0.fc6.weight", 2, (const int64_t[]){2048, 9216});
    expect_param_shape(g, "fc8.weight", 2, (const int64_t[]){1000, 4096});
    keel_graph_free(g);
}

/* Every layer of tower k sits in placement group k; the shared classifier
 * in the caller's group 0. */
static void test_alexnet_towers(void **state)
{
    (void)state;
    keel_model_opts opts = {.batch = 1};
    keel_model_io io;
    keel_graph *g = build("alexnet", &opts, &io);
    int tower_layers[2] = {0, 0};
    for (int i = 0; i < keel_graph_layer_count(g); i++) {
        keel_layer_info info;
        KS_OK(keel_graph_layer_info(g, i, &info));
        for (int t = 0; t < 2; t++) {
            char prefix[16];
            snprintf(prefix, sizeof prefix, "tower%d.", t);
            if (strncmp(info.name, prefix, strlen(prefix)) != 0) continue;
            if (info.group != t) fail_msg("%s is in group %d, want %d", info.name, info.group, t);
            tower_layers[t]++;
        }
        if (strcmp(info.name, "fc8") == 0) assert_int_equal(info.group, 0);
    }
    printf("alexnet: %d layers in tower 0, %d in tower 1\n", tower_layers[0], tower_layers[1]);
    assert_true(tower_layers[0] >= 20);
    assert_int_equal(tower_layers[0], tower_layers[1]);
    assert_int_equal(keel_graph_on_device(g, 0), 0); /* the build restored the group */
    keel_graph_free(g);
}

static void expect_all_equal(keel_plan *plan, const char *param, float want)
{
    for (int i = 0; i < keel_plan_param_count(plan); i++) {
        keel_param_info info;
        KS_OK(keel_plan_param_info(plan, i, &info));
        if (strcmp(info.name, param) != 0) continue;
        int64_t n = info.shape[0];
        float *v = malloc((size_t)n * sizeof *v);
        assert_non_null(v);
        KS_OK(keel_plan_param_get(plan, param, v, n));
        for (int64_t j = 0; j < n; j++)
            if (v[j] != want) fail_msg("%s[%lld] = %g, want %g", param, (long long)j, (double)v[j], (double)want);
        free(v);
        return;
    }
    fail_msg("no parameter '%s' in the plan", param);
}

/* Section 5 of the paper: weights N(0, 0.01); biases 1 in conv2, conv4,
 * conv5, fc6, fc7 and 0 elsewhere. */
static void test_alexnet_init(void **state)
{
    (void)state;
    keel_model_opts opts = {.batch = 1, .height = 67, .width = 67, .classes = 10};
    keel_model_io io;
    keel_graph *g = build("alexnet", &opts, &io);
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 7);
    for (int t = 0; t < 2; t++) {
        const char *ones[] = {"conv2", "conv4", "conv5", "fc6", "fc7"}, *zeros[] = {"conv1", "conv3"};
        char name[48];
        for (size_t i = 0; i < sizeof ones / sizeof ones[0]; i++) {
            snprintf(name, sizeof name, "tower%d.%s.bias", t, ones[i]);
            expect_all_equal(plan, name, 1.0f);
        }
        for (size_t i = 0; i < sizeof zeros / sizeof zeros[0]; i++) {
            snprintf(name, sizeof name, "tower%d.%s.bias", t, zeros[i]);
            expect_all_equal(plan, name, 0.0f);
        }
    }
    expect_all_equal(plan, "fc8.bias", 0.0f);

    int64_t n = 2048 * 4096;
    float *w = malloc((size_t)n * sizeof *w);
    assert_non_null(w);
    KS_OK(keel_plan_param_get(plan, "tower1.fc7.weight", w, n));
    double sum = 0, sum_sq = 0;
    for (int64_t i = 0; i < n; i++) {
        sum += w[i];
        sum_sq += (double)w[i] * w[i];
    }
    double mean = sum / n, std = sqrt(sum_sq / n - mean * mean);
    printf("alexnet tower1.fc7.weight: mean %.3g std %.4g (want 0, 0.01)\n", mean, std);
    assert_true(fabs(mean) < 1e-4);
    assert_true(fabs(std - 0.01) < 2e-4);
    free(w);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static void test_listing(void **state)
{
    (void)state;
    const char *expected[] = {"lenet5",  "dmlp",      "cnn-small", "alexnet",  "alexnet-1gpu",
                              "vgg16",   "googlenet", "resnet18",  "resnet34", "resnet50", "dcgan-g",   "dcgan-d"};
    assert_int_equal(keel_model_count(), (int)(sizeof expected / sizeof expected[0]));
    for (int i = 0; i < keel_model_count(); i++) {
        assert_string_equal(keel_model_name(i), expected[i]);
        assert_non_null(keel_model_description(i));
        assert_true(strlen(keel_model_description(i)) > 10);
    }
    assert_null(keel_model_name(-1));
    assert_null(keel_model_name(keel_model_count()));
    assert_null(keel_model_description(keel_model_count()));
}

static void test_unknown_model(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    keel_model_io io;
    assert_int_equal(keel_model_build(g, "resnet152", NULL, &io), KEEL_ERR_NOT_FOUND);
    const char *message = keel_last_error();
    printf("unknown model: %s\n", message);
    assert_non_null(strstr(message, "resnet152"));
    for (int i = 0; i < keel_model_count(); i++) assert_non_null(strstr(message, keel_model_name(i)));
    keel_graph_free(g);
}

/* An input too small for the architecture is the graph's sticky error,
 * naming the layer that cannot be built. */
static void expect_shape_error(const char *name, int size, const char *layer)
{
    keel_graph *g = keel_graph_new();
    keel_model_opts opts = {.batch = 1, .height = size, .width = size};
    keel_model_io io;
    keel_status status = keel_model_build(g, name, &opts, &io);
    printf("%s at %dx%d: %s / %s\n", name, size, size, keel_graph_error(g), keel_last_error());
    assert_int_not_equal(status, KEEL_OK);
    assert_int_equal(status, keel_graph_status(g));
    assert_non_null(strstr(keel_graph_error(g), layer));
    assert_non_null(strstr(keel_last_error(), keel_graph_error(g)));
    assert_null(io.images);
    assert_null(io.loss);
    keel_graph_free(g);
}

static void test_bad_options(void **state)
{
    (void)state;
    expect_shape_error("lenet5", 8, "conv2");
    expect_shape_error("alexnet", 66, "pool5");
    expect_shape_error("alexnet-1gpu", 62, "features.12");
    expect_shape_error("vgg16", 16, "features.30");

    keel_graph *g = keel_graph_new();
    keel_model_io io;
    keel_model_opts negative = {.batch = -2};
    assert_int_equal(keel_model_build(g, "resnet18", &negative, &io), KEEL_ERR_INVALID_ARGUMENT);
    printf("negative batch: %s\n", keel_last_error());
    assert_non_null(strstr(keel_last_error(), "batch"));
    keel_model_opts widths_missing = {.n_hidden = 3};
    assert_int_equal(keel_model_build(g, "dmlp", &widths_missing, &io), KEEL_ERR_INVALID_ARGUMENT);
    printf("dmlp without widths: %s\n", keel_last_error());
    const int bad_widths[] = {100, 0};
    keel_model_opts zero_width = {.hidden = bad_widths, .n_hidden = 2};
    assert_int_equal(keel_model_build(g, "dmlp", &zero_width, &io), KEEL_ERR_INVALID_ARGUMENT);
    keel_model_opts certain_dropout = {.dropout = 1.0f};
    assert_int_equal(keel_model_build(g, "cnn-small", &certain_dropout, &io), KEEL_ERR_INVALID_ARGUMENT);
    assert_int_equal(keel_graph_status(g), KEEL_OK); /* option errors leave the graph untouched */
    keel_graph_free(g);
}

/* ---- a few steps of plain SGD on a fixed batch ---------------------------- */

static void sgd_step(keel_plan *plan, float lr, float *param, float *grad)
{
    for (int i = 0; i < keel_plan_param_count(plan); i++) {
        keel_param_info info;
        KS_OK(keel_plan_param_info(plan, i, &info));
        if (!info.trainable) continue;
        int64_t n = 1;
        for (int d = 0; d < info.ndim; d++) n *= info.shape[d];
        KS_OK(keel_plan_param_get(plan, info.name, param, n));
        KS_OK(keel_plan_grad_get(plan, info.name, grad, n));
        for (int64_t j = 0; j < n; j++) param[j] -= lr * grad[j];
        KS_OK(keel_plan_param_set(plan, info.name, param, n));
    }
}

static int64_t largest_param(const keel_plan *plan)
{
    int64_t largest = 0;
    for (int i = 0; i < keel_plan_param_count(plan); i++) {
        keel_param_info info;
        KS_OK(keel_plan_param_info(plan, i, &info));
        int64_t n = 1;
        for (int d = 0; d < info.ndim; d++) n *= info.shape[d];
        if (n > largest) largest = n;
    }
    return largest;
}

static void check_io_shapes(const keel_model_io *io, const keel_model_opts *opts)
{
    int64_t shape[KEEL_MAX_DIMS];
    assert_int_equal(keel_node_shape(io->images, shape), 4);
    assert_int_equal(shape[0], opts->batch);
    assert_int_equal(shape[2], opts->height);
    assert_int_equal(shape[3], opts->width);
    assert_int_equal(keel_node_shape(io->labels, shape), 1);
    assert_int_equal(shape[0], opts->batch);
    assert_int_equal(keel_node_shape(io->logits, shape), 2);
    assert_int_equal(shape[0], opts->batch);
    assert_int_equal(shape[1], opts->classes);
    assert_int_equal(keel_node_numel(io->loss), 1);
    assert_non_null(io->features);
    assert_int_equal(keel_node_shape(io->features, shape), 2);
    assert_int_equal(shape[0], opts->batch);
}

/* Trains `steps` SGD steps on one synthetic batch (dropout off, so the
 * objective is fixed) and expects a finite loss that ends lower than it
 * started. */
static void train_fixed_batch(const char *name, keel_model_opts opts, int steps, float lr)
{
    opts.dropout = -1;
    keel_model_io io;
    keel_graph *g = build(name, &opts, &io);
    check_io_shapes(&io, &opts);
    KS_OK(keel_graph_backward(g, io.loss));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 42);

    int64_t image_count = keel_node_numel(io.images);
    float *images = malloc((size_t)image_count * sizeof *images);
    int32_t *labels = malloc((size_t)opts.batch * sizeof *labels);
    assert_non_null(images);
    assert_non_null(labels);
    ks_fill_uniform(images, image_count, 3, -1.0f, 1.0f);
    for (int64_t i = 0; i < opts.batch; i++) labels[i] = (int32_t)((i * 3 + 1) % opts.classes);
    KS_OK(keel_plan_set_input(plan, io.images, images));
    KS_OK(keel_plan_set_input(plan, io.labels, labels));

    int64_t largest = largest_param(plan);
    float *param = malloc((size_t)largest * sizeof *param), *grad = malloc((size_t)largest * sizeof *grad);
    assert_non_null(param);
    assert_non_null(grad);
    float first = 0, last = 0;
    printf("%s (batch %lld, %dx%d) loss:", name, (long long)opts.batch, opts.height, opts.width);
    for (int step = 0; step <= steps; step++) {
        KS_OK(keel_plan_forward(plan, true));
        KS_OK(keel_plan_read(plan, io.loss, &last));
        printf(" %.4f", (double)last);
        if (!isfinite(last)) fail_msg("%s: loss is %g at step %d", name, (double)last, step);
        if (step == 0) first = last;
        if (step == steps) break;
        KS_OK(keel_plan_backward(plan));
        sgd_step(plan, lr, param, grad);
    }
    printf("\n");
    if (!(last < first)) fail_msg("%s: loss went from %g to %g in %d steps", name, (double)first, (double)last, steps);

    free(param);
    free(grad);
    free(images);
    free(labels);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* AlexNet's towers on two logical CPU devices: 3 steps give the losses and
 * gradients of one device (dropout on: its masks follow seed, step and
 * node, not the device). */
static void run_alexnet(const char *devices, float *losses, float **grads, int64_t *grad_count)
{
    keel_model_opts opts = {.batch = 2, .classes = 10, .height = 67, .width = 67};
    keel_model_io io;
    keel_graph *g = build("alexnet", &opts, &io);
    KS_OK(keel_graph_backward(g, io.loss));
    keel_context *ctx = ks_context();
    keel_plan_opts popts = {.devices = devices, .seed = 42, .poison_dead = true};
    keel_plan *plan = NULL;
    KS_OK(keel_plan_compile(&plan, g, ctx, &popts));
    int64_t image_count = keel_node_numel(io.images);
    float *images = malloc((size_t)image_count * sizeof *images);
    assert_non_null(images);
    ks_fill_uniform(images, image_count, 3, -1.0f, 1.0f);
    int32_t labels[2] = {3, 7};
    KS_OK(keel_plan_set_input(plan, io.images, images));
    KS_OK(keel_plan_set_input(plan, io.labels, labels));
    int64_t largest = largest_param(plan);
    float *param = malloc((size_t)largest * sizeof *param), *grad = malloc((size_t)largest * sizeof *grad);
    assert_non_null(param);
    assert_non_null(grad);
    for (int step = 0; step < 3; step++) {
        KS_OK(keel_plan_forward(plan, true));
        KS_OK(keel_plan_backward(plan));
        KS_OK(keel_plan_read(plan, io.loss, &losses[step]));
        if (step < 2)
            sgd_step(plan, 0.001f, param, grad);
    }
    int64_t total = 0;
    for (int i = 0; i < keel_plan_param_count(plan); i++) {
        keel_param_info info;
        KS_OK(keel_plan_param_info(plan, i, &info));
        if (!info.trainable) continue;
        int64_t n = 1;
        for (int d = 0; d < info.ndim; d++) n *= info.shape[d];
        *grads = realloc(*grads, (size_t)(total + n) * sizeof **grads);
        assert_non_null(*grads);
        KS_OK(keel_plan_grad_get(plan, info.name, *grads + total, n));
        total += n;
    }
    *grad_count = total;
    free(param);
    free(grad);
    free(images);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static void test_alexnet_towers_on_two_devices(void **state)
{
    (void)state;
    float one_losses[3], two_losses[3];
    float *one = NULL, *two = NULL;
    int64_t one_count = 0, two_count = 0;
    run_alexnet("cpu", one_losses, &one, &one_count);
    run_alexnet("cpu:0,cpu:1", two_losses, &two, &two_count);
    assert_int_equal(one_count, two_count);
    double want_losses[3];
    ks_to_double(one_losses, want_losses, 3);
    double *want = malloc((size_t)one_count * sizeof *want);
    assert_non_null(want);
    ks_to_double(one, want, one_count);
    ks_check("alexnet towers on cpu:0,cpu:1 vs cpu: losses (3 steps)", two_losses, want_losses, 3, 1e-3, 1e-6);
    ks_check("alexnet towers on cpu:0,cpu:1 vs cpu: gradients after 3 steps", two, want, one_count, 1e-2, 1e-6);
    free(want);
    free(one);
    free(two);
}

static void test_train_lenet5(void **state)
{
    (void)state;
    train_fixed_batch("lenet5", (keel_model_opts){.batch = 8, .classes = 10, .height = 28, .width = 28}, 5, 0.05f);
}

static void test_train_dmlp(void **state)
{
    (void)state;
    train_fixed_batch("dmlp", (keel_model_opts){.batch = 8, .classes = 10, .height = 28, .width = 28}, 5, 0.05f);
}

static void test_train_cnn_small(void **state)
{
    (void)state;
    train_fixed_batch("cnn-small", (keel_model_opts){.batch = 8, .classes = 10, .height = 28, .width = 28}, 5,
                      0.02f);
}

/* 67x67 is the smallest input the paper's layer sizes accept. */
static void test_train_alexnet(void **state)
{
    (void)state;
    train_fixed_batch("alexnet", (keel_model_opts){.batch = 2, .classes = 10, .height = 67, .width = 67}, 4, 0.0002f);
}

static void test_train_alexnet_1gpu(void **state)
{
    (void)state;
    train_fixed_batch("alexnet-1gpu", (keel_model_opts){.batch = 2, .classes = 10, .height = 63, .width = 63}, 4,
                      0.01f);
}

static void test_train_vgg16(void **state)
{
    (void)state;
    train_fixed_batch("vgg16", (keel_model_opts){.batch = 2, .classes = 10, .height = 32, .width = 32}, 4, 0.01f);
}

/* With the auxiliary classifiers (training), whose losses join the main one. */
static void test_train_googlenet(void **state)
{
    (void)state;
    train_fixed_batch("googlenet",
                      (keel_model_opts){.batch = 2, .classes = 10, .height = 96, .width = 96, .training = true}, 4,
                      0.01f);
}

static void test_train_resnet18(void **state)
{
    (void)state;
    train_fixed_batch("resnet18", (keel_model_opts){.batch = 2, .classes = 10, .height = 64, .width = 64}, 4, 0.01f);
}

static void test_train_resnet34(void **state)
{
    (void)state;
    train_fixed_batch("resnet34", (keel_model_opts){.batch = 2, .classes = 10, .height = 64, .width = 64}, 4, 0.01f);
}

static void test_train_resnet50(void **state)
{
    (void)state;
    train_fixed_batch("resnet50", (keel_model_opts){.batch = 2, .classes = 10, .height = 64, .width = 64}, 4, 0.001f);
}

/* Each test prints its wall time, to keep the suite within its budget. */
static double start_seconds;

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int start_clock(void **state)
{
    (void)state;
    start_seconds = now_seconds();
    return 0;
}

static int print_clock(void **state)
{
    (void)state;
    printf("time: %.2f s\n", now_seconds() - start_seconds);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_listing, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_param_counts, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_dmlp_hidden_widths, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_forward_flops, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_param_names, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_alexnet_towers, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_alexnet_towers_on_two_devices, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_unknown_model, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_bad_options, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_alexnet_init, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_train_lenet5, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_train_dmlp, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_train_cnn_small, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_train_alexnet, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_train_alexnet_1gpu, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_train_vgg16, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_train_googlenet, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_train_resnet18, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_train_resnet34, start_clock, print_clock),
        cmocka_unit_test_setup_teardown(test_train_resnet50, start_clock, print_clock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
