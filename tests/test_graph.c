/* The graph builder: sticky errors, placement groups, autodiff plumbing,
 * parameters by name, initialisers. */
#include "support/support.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static keel_node *image_input(keel_graph *g, int64_t n, int64_t c, int64_t h, int64_t w)
{
    int64_t shape[4] = {n, c, h, w};
    return keel_input(g, "x", 4, shape);
}

static void test_sticky_error_names_layer_and_shape(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    keel_node *x = image_input(g, 1, 3, 3, 3);
    keel_conv2d_opts conv = keel_conv_opts(5, 1, 0);
    keel_node *y = keel_conv2d(g, "conv1", x, 8, &conv);
    assert_null(y);
    assert_int_not_equal(keel_graph_status(g), KEEL_OK);
    const char *err = keel_graph_error(g);
    assert_non_null(strstr(err, "conv1"));
    assert_non_null(strstr(err, "5x5"));
    assert_non_null(strstr(err, "3x3"));
    /* Later calls do nothing, return NULL and keep the first error. */
    char first[512];
    snprintf(first, sizeof first, "%s", err);
    assert_null(keel_relu(g, "relu1", y));
    assert_null(keel_linear(g, "fc", x, 10, NULL));
    assert_string_equal(keel_graph_error(g), first);
    assert_int_not_equal(keel_graph_backward(g, y), KEEL_OK);
    keel_context *ctx = ks_context();
    keel_plan *plan = NULL;
    assert_int_not_equal(keel_plan_compile(&plan, g, ctx, NULL), KEEL_OK);
    assert_null(plan);
    assert_non_null(strstr(keel_last_error(), "conv1"));
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static void test_linear_with_wrong_in_features(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    int64_t shape[2] = {4, 100};
    keel_node *x = keel_input(g, "x", 2, shape);
    keel_linear_opts opts = {.in_features = 120};
    assert_null(keel_linear(g, "fc1", x, 10, &opts));
    assert_non_null(strstr(keel_graph_error(g), "fc1"));
    assert_non_null(strstr(keel_graph_error(g), "120"));
    assert_non_null(strstr(keel_graph_error(g), "100"));
    keel_graph_free(g);

    g = keel_graph_new();
    x = image_input(g, 2, 3, 8, 8);
    assert_null(keel_linear(g, "fc2", x, 10, NULL)); /* 4-D input needs a flatten */
    assert_non_null(strstr(keel_graph_error(g), "fc2"));
    keel_graph_free(g);
}

static void test_duplicate_names_and_null_inputs(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    keel_node *x = image_input(g, 1, 1, 4, 4);
    keel_conv2d_opts conv = keel_conv_opts(3, 1, 1);
    assert_non_null(keel_conv2d(g, "conv", x, 2, &conv));
    assert_null(keel_conv2d(g, "conv", x, 2, &conv));
    assert_non_null(strstr(keel_graph_error(g), "conv.weight"));
    keel_graph_free(g);

    g = keel_graph_new();
    assert_null(keel_relu(g, "r", NULL));
    assert_non_null(strstr(keel_graph_error(g), "r: input 0 is NULL"));
    keel_graph_free(g);
}

static void test_placement_groups_are_recorded(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    keel_node *x = image_input(g, 1, 2, 6, 6);
    keel_conv2d_opts conv = keel_conv_opts(3, 1, 1);
    int previous = keel_graph_on_device(g, 1);
    assert_int_equal(previous, 0);
    keel_node *a = keel_conv2d(g, "tower1", x, 2, &conv);
    keel_graph_on_device(g, previous);
    keel_node *b = keel_conv2d(g, "tower0", x, 2, &conv);
    keel_node *both[2] = {a, b};
    keel_node *joined = keel_concat(g, "join", 2, both);
    ks_graph_ok(g);
    assert_non_null(joined);
    int found = 0;
    for (int i = 0; i < keel_graph_layer_count(g); i++) {
        keel_layer_info info;
        KS_OK(keel_graph_layer_info(g, i, &info));
        if (strcmp(info.name, "tower1") == 0) {
            assert_int_equal(info.group, 1);
            found++;
        }
        if (strcmp(info.name, "tower0") == 0 || strcmp(info.name, "join") == 0) {
            assert_int_equal(info.group, 0);
            found++;
        }
    }
    assert_int_equal(found, 3);
    keel_graph_free(g);
}

/* y = relu(W x + b) used twice: loss = mse(y + y*0.5 ... ) checks that
 * gradients from several consumers are summed. */
static void test_gradients_accumulate_over_consumers(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    int64_t shape[2] = {3, 4};
    keel_node *x = keel_input(g, "x", 2, shape);
    keel_graph_require_grad(g, x);
    keel_node *h = keel_linear(g, "fc", x, 4, NULL);
    keel_node *twice = keel_add(g, "twice", h, keel_scale(g, "half", h, 0.5f)); /* 1.5 h */
    keel_node *target = keel_input(g, "target", 2, shape);
    keel_node *loss = keel_mse_loss(g, "loss", twice, target);
    KS_OK(keel_graph_backward(g, loss));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 3);
    float xv[12], tv[12], w[16], b[4];
    ks_fill_uniform(xv, 12, 1, -1, 1);
    ks_fill_uniform(tv, 12, 2, -1, 1);
    KS_OK(keel_plan_param_get(plan, "fc.weight", w, 16));
    KS_OK(keel_plan_param_get(plan, "fc.bias", b, 4));
    KS_OK(keel_plan_set_input(plan, x, xv));
    KS_OK(keel_plan_set_input(plan, target, tv));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    float got_dx[12], got_db[4];
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, x), got_dx));
    KS_OK(keel_plan_grad_get(plan, "fc.bias", got_db, 4));
    /* loss = mean((1.5 (W x + b) - t)^2) over 12 elements. */
    double want_dx[12] = {0}, want_db[4] = {0};
    for (int n = 0; n < 3; n++)
        for (int o = 0; o < 4; o++) {
            double hv = b[o];
            for (int i = 0; i < 4; i++)
                hv += (double)w[o * 4 + i] * xv[n * 4 + i];
            double dh = 2.0 * (1.5 * hv - tv[n * 4 + o]) / 12.0 * 1.5;
            want_db[o] += dh;
            for (int i = 0; i < 4; i++)
                want_dx[n * 4 + i] += dh * w[o * 4 + i];
        }
    ks_check("graph accumulate dx", got_dx, want_dx, 12, 1e-3, 1e-5);
    ks_check("graph accumulate db", got_db, want_db, 4, 1e-3, 1e-5);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* A parameter whose gradient is a view (reshape of dy) cannot write into the
 * gradient block; the executor copies it there after the backward pass. */
static void test_gradient_through_a_view_reaches_the_block(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    int64_t shape[2] = {2, 3}, flat = 6;
    keel_node *p = keel_param(g, "p", 2, shape, keel_init_uniform(-1, 1));
    keel_node *target = keel_input(g, "target", 1, &flat);
    keel_node *loss = keel_mse_loss(g, "loss", keel_reshape(g, "flat", p, 1, &flat), target);
    KS_OK(keel_graph_backward(g, loss));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 4);
    float pv[6], tv[6], got[6];
    double want[6];
    ks_fill_uniform(tv, 6, 3, -1, 1);
    KS_OK(keel_plan_param_get(plan, "p", pv, 6));
    KS_OK(keel_plan_set_input(plan, target, tv));
    for (int step = 0; step < 2; step++) { /* twice: the staging buffer is reused */
        KS_OK(keel_plan_forward(plan, true));
        KS_OK(keel_plan_backward(plan));
    }
    KS_OK(keel_plan_grad_get(plan, "p", got, 6));
    for (int i = 0; i < 6; i++)
        want[i] = 2.0 * ((double)pv[i] - tv[i]) / 6.0;
    ks_check("graph gradient through a view", got, want, 6, 1e-3, 1e-6);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static void test_backward_errors(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    int64_t shape[2] = {2, 3};
    keel_node *x = keel_input(g, "x", 2, shape);
    keel_node *y = keel_relu(g, "relu", x);
    /* Nothing to differentiate: no parameters, no input asked for a gradient. */
    assert_int_equal(keel_graph_backward_from(g, y, keel_input(g, "dy", 2, shape)), KEEL_ERR_STATE);
    assert_non_null(strstr(keel_last_error(), "keel_graph_require_grad"));
    keel_graph_free(g);

    g = keel_graph_new();
    x = keel_input(g, "x", 2, shape);
    keel_graph_require_grad(g, x);
    y = keel_relu(g, "relu", x);
    int64_t wrong[2] = {3, 2};
    assert_int_equal(keel_graph_backward_from(g, y, keel_input(g, "dy", 2, wrong)), KEEL_ERR_SHAPE);
    assert_int_equal(keel_graph_backward(g, y), KEEL_ERR_SHAPE); /* not a scalar */
    keel_graph_free(g);
}

static void test_params_by_name(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    int64_t shape[2] = {2, 5};
    keel_node *x = keel_input(g, "x", 2, shape);
    keel_node *y = keel_linear(g, "fc1", x, 3, NULL);
    keel_node *labels = keel_input_labels(g, "labels", 2);
    KS_OK(keel_graph_backward(g, keel_softmax_cross_entropy(g, "loss", y, labels)));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 9);
    assert_int_equal(keel_plan_param_count(plan), 2);
    keel_param_info info;
    KS_OK(keel_plan_param_info(plan, 0, &info));
    assert_string_equal(info.name, "fc1.weight");
    assert_int_equal(info.ndim, 2);
    assert_int_equal(info.shape[0], 3);
    assert_int_equal(info.shape[1], 5);
    assert_true(info.trainable);
    float w[15], back[15];
    ks_fill_uniform(w, 15, 5, -1, 1);
    KS_OK(keel_plan_param_set(plan, "fc1.weight", w, 15));
    KS_OK(keel_plan_param_get(plan, "fc1.weight", back, 15));
    assert_memory_equal(w, back, sizeof w);
    assert_int_equal(keel_plan_param_get(plan, "fc2.weight", back, 15), KEEL_ERR_NOT_FOUND);
    assert_non_null(strstr(keel_last_error(), "fc2.weight"));
    assert_int_equal(keel_plan_param_get(plan, "fc1.weight", back, 14), KEEL_ERR_SHAPE);
    assert_non_null(strstr(keel_last_error(), "3x5"));
    /* Reading an intermediate that was not kept is a clear error. */
    assert_int_equal(keel_plan_read(plan, y, back), KEEL_ERR_STATE);
    assert_int_equal(keel_plan_backward(plan), KEEL_ERR_STATE); /* no forward yet */
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static double sample_std(const float *v, int64_t n, double *mean_out)
{
    double mean = 0, sq = 0;
    for (int64_t i = 0; i < n; i++)
        mean += v[i];
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++)
        sq += (v[i] - mean) * (v[i] - mean);
    *mean_out = mean;
    return sqrt(sq / (double)n);
}

static void test_initialisers(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    int64_t shape[2] = {1, 400};
    keel_node *x = keel_input(g, "x", 2, shape);
    keel_linear_opts gauss = {.weight_init = keel_init_gaussian(0.01f), .bias_init = keel_init_constant(1.0f)};
    keel_linear_opts xavier = {.weight_init = keel_init_xavier()};
    keel_linear_opts kaiming = {.weight_init = keel_init_kaiming()};
    keel_linear_opts uniform = {.weight_init = keel_init_uniform(-0.5f, 0.25f)};
    keel_node *a = keel_linear(g, "gauss", x, 300, &gauss);
    keel_node *b = keel_linear(g, "xavier", a, 200, &xavier);
    keel_node *c = keel_linear(g, "kaiming", b, 100, &kaiming);
    keel_node *d = keel_linear(g, "default", c, 50, NULL);
    keel_node *e = keel_linear(g, "uniform", d, 50, &uniform);
    keel_graph_keep(g, e);
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 1234);
    float *w = malloc(400 * 300 * sizeof *w);
    double mean;
    KS_OK(keel_plan_param_get(plan, "gauss.weight", w, 300 * 400));
    assert_true(fabs(sample_std(w, 120000, &mean) - 0.01) < 0.0003);
    assert_true(fabs(mean) < 0.0002);
    KS_OK(keel_plan_param_get(plan, "gauss.bias", w, 300));
    for (int i = 0; i < 300; i++)
        assert_true(w[i] == 1.0f);
    double bound = sqrt(6.0 / (300 + 200)); /* Xavier uniform */
    KS_OK(keel_plan_param_get(plan, "xavier.weight", w, 200 * 300));
    double lo = 1, hi = -1;
    for (int i = 0; i < 60000; i++) {
        lo = fmin(lo, w[i]);
        hi = fmax(hi, w[i]);
    }
    assert_true(lo >= -bound && hi <= bound && hi > 0.98 * bound && lo < -0.98 * bound);
    KS_OK(keel_plan_param_get(plan, "kaiming.weight", w, 100 * 200));
    assert_true(fabs(sample_std(w, 20000, &mean) - sqrt(2.0 / 200)) < 0.03 * sqrt(2.0 / 200));
    KS_OK(keel_plan_param_get(plan, "default.weight", w, 50 * 100)); /* PyTorch's U(+-1/sqrt(fan_in)) */
    for (int i = 0; i < 5000; i++)
        assert_true(fabs(w[i]) <= 0.1f);
    KS_OK(keel_plan_param_get(plan, "uniform.weight", w, 50 * 50));
    for (int i = 0; i < 2500; i++)
        assert_true(w[i] >= -0.5f && w[i] < 0.25f);

    /* Same seed, same values; a value depends on the seed and its name only. */
    float first[2500], again[2500];
    memcpy(first, w, sizeof first);
    keel_plan *same = ks_compile(g, ctx, 1234);
    KS_OK(keel_plan_param_get(same, "uniform.weight", again, 2500));
    assert_memory_equal(first, again, sizeof first);
    keel_plan *other = ks_compile(g, ctx, 99);
    KS_OK(keel_plan_param_get(other, "uniform.weight", again, 2500));
    assert_memory_not_equal(first, again, sizeof first);
    keel_plan_destroy(same);
    keel_plan_destroy(other);
    free(w);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sticky_error_names_layer_and_shape),
        cmocka_unit_test(test_linear_with_wrong_in_features),
        cmocka_unit_test(test_duplicate_names_and_null_inputs),
        cmocka_unit_test(test_placement_groups_are_recorded),
        cmocka_unit_test(test_gradients_accumulate_over_consumers),
        cmocka_unit_test(test_gradient_through_a_view_reaches_the_block),
        cmocka_unit_test(test_backward_errors),
        cmocka_unit_test(test_params_by_name),
        cmocka_unit_test(test_initialisers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
