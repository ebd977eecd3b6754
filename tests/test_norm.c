/* LRN and batch normalisation: forward against float64 loops, gradients
 * against central finite differences, batch-norm running statistics after
 * one and two training steps, evaluation on set running statistics, and the
 * errors of impossible settings. */
#include "support/support.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double *to_double_new(const float *x, int64_t n)
{
    double *d = malloc((size_t)n * sizeof *d);
    assert_non_null(d);
    ks_to_double(x, d, n);
    return d;
}

static float *floats_new(int64_t n)
{
    float *f = malloc((size_t)n * sizeof *f);
    assert_non_null(f);
    return f;
}

static double *doubles_new(int64_t n)
{
    double *d = malloc((size_t)n * sizeof *d);
    assert_non_null(d);
    return d;
}

/* ---- LRN -------------------------------------------------------------------- */

typedef struct lrn_case {
    const char *what;
    int64_t shape[4];
    int size;
    float alpha, beta, k;
    float x_range;           /* x uniform in [-x_range, x_range] */
    bool cross_term_matters; /* the check must see the sum-of-squares term */
} lrn_case;

typedef struct lrn_ref {
    const lrn_case *lc;
    const double *dy;
    double *y, *scale;
} lrn_ref;

/* b = a * (k + alpha/size * sum over channels [c - (size-1)/2, c + size/2] of a^2)^-beta */
static void ref_lrn(const lrn_case *lc, const double *x, double *y, double *scale)
{
    int64_t batch = lc->shape[0], channels = lc->shape[1], plane = lc->shape[2] * lc->shape[3];
    for (int64_t n = 0; n < batch; n++)
        for (int64_t c = 0; c < channels; c++)
            for (int64_t i = 0; i < plane; i++) {
                double sum = 0.0;
                for (int64_t j = c - (lc->size - 1) / 2; j <= c + lc->size / 2; j++)
                    if (j >= 0 && j < channels) {
                        double v = x[(n * channels + j) * plane + i];
                        sum += v * v;
                    }
                int64_t at = (n * channels + c) * plane + i;
                scale[at] = lc->k + (double)lc->alpha / lc->size * sum;
                y[at] = x[at] * pow(scale[at], -(double)lc->beta);
            }
}

static double lrn_dot_dy(const double *x, void *user)
{
    lrn_ref *r = user;
    ref_lrn(r->lc, x, r->y, r->scale);
    const int64_t *shape = r->lc->shape;
    double f = 0.0;
    for (int64_t i = 0; i < shape[0] * shape[1] * shape[2] * shape[3]; i++)
        f += r->y[i] * r->dy[i];
    return f;
}

static void run_lrn_case(const lrn_case *lc)
{
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 4, lc->shape);
    keel_graph_require_grad(g, x);
    keel_node *y = keel_lrn(g, "norm1", x, lc->size, lc->alpha, lc->beta, lc->k);
    keel_node *dy = keel_input(g, "dy", 4, lc->shape);
    ks_graph_ok(g);
    KS_OK(keel_graph_backward_from(g, y, dy));
    keel_graph_keep(g, y);
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 1);

    int64_t n = keel_node_numel(x);
    float *xf = floats_new(n), *dyf = floats_new(n), *yf = floats_new(n), *dxf = floats_new(n);
    ks_fill_uniform(xf, n, 21, -lc->x_range, lc->x_range);
    ks_fill_uniform(dyf, n, 22, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_set_input(plan, dy, dyf));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    KS_OK(keel_plan_read(plan, y, yf));
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, x), dxf));

    double *xd = to_double_new(xf, n), *dyd = to_double_new(dyf, n);
    double *yd = doubles_new(n), *scale = doubles_new(n), *dxd = doubles_new(n);
    ref_lrn(lc, xd, yd, scale);
    lrn_ref r = {lc, dyd, doubles_new(n), doubles_new(n)};
    ks_numeric_grad(lrn_dot_dy, &r, xd, n, 1e-4, dxd);

    if (lc->cross_term_matters) {
        /* Without the sum-of-squares term dx would be dy*scale^-beta; make
         * sure that guess is visibly wrong, so the check tests the term. */
        double worst = 0.0;
        for (int64_t i = 0; i < n; i++) {
            double diag_only = dyd[i] * pow(scale[i], -(double)lc->beta);
            double err = fabs(diag_only - dxd[i]) / fmax(fabs(dxd[i]), 0.1);
            worst = fmax(worst, err);
        }
        printf("%s: the cross term moves dx by up to %.3g relative\n", lc->what, worst);
        assert_true(worst > 1e-2);
    }

    char label[160];
    snprintf(label, sizeof label, "%s y", lc->what);
    ks_check(label, yf, yd, n, 0.1, 2e-6);
    snprintf(label, sizeof label, "%s dx", lc->what);
    ks_check(label, dxf, dxd, n, 0.1, 1e-5);

    free(xf), free(dyf), free(yf), free(dxf), free(xd), free(dyd), free(yd), free(scale), free(dxd);
    free(r.y), free(r.scale);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* Krizhevsky et al. 2012, section 3.3: n = 5, k = 2, alpha = 1e-4, beta = 0.75. */
static void test_lrn_alexnet(void **state)
{
    (void)state;
    lrn_case lc = {"lrn[alexnet n=5 k=2 alpha=1e-4 beta=0.75]", {2, 7, 3, 4}, 5, 1e-4f, 0.75f, 2.0f, 2.0f, false};
    run_lrn_case(&lc);
}

static void test_lrn_strong(void **state)
{
    (void)state;
    lrn_case lc = {"lrn[n=5 k=1 alpha=0.1 beta=0.75]", {2, 7, 3, 4}, 5, 0.1f, 0.75f, 1.0f, 3.0f, true};
    run_lrn_case(&lc);
}

/* An even size has an asymmetric window: [c - 1, c + 2] for size 4. */
static void test_lrn_even_size(void **state)
{
    (void)state;
    lrn_case lc = {"lrn[n=4 k=1.5 alpha=0.2 beta=0.6]", {2, 6, 2, 3}, 4, 0.2f, 0.6f, 1.5f, 2.5f, true};
    run_lrn_case(&lc);
    lrn_case wide = {"lrn[n=9 > channels k=1 alpha=0.3 beta=1]", {1, 5, 3, 2}, 9, 0.3f, 1.0f, 1.0f, 2.0f, true};
    run_lrn_case(&wide);
}

/* ---- batch norm: float64 reference ------------------------------------------ */

typedef struct bn_shape {
    int64_t batch, channels, plane; /* plane = H*W, 1 for {N, C} */
} bn_shape;

static int64_t bn_numel(bn_shape s) { return s.batch * s.channels * s.plane; }

static void ref_moments(bn_shape s, const double *x, int64_t c, double *mean, double *var)
{
    double m = (double)(s.batch * s.plane), sum = 0.0, squares = 0.0;
    for (int64_t n = 0; n < s.batch; n++)
        for (int64_t i = 0; i < s.plane; i++)
            sum += x[(n * s.channels + c) * s.plane + i];
    *mean = sum / m;
    for (int64_t n = 0; n < s.batch; n++)
        for (int64_t i = 0; i < s.plane; i++) {
            double d = x[(n * s.channels + c) * s.plane + i] - *mean;
            squares += d * d;
        }
    *var = squares / m;
}

/* y = gamma * (x - mean)/sqrt(var + eps) + beta with the given statistics per
 * channel, or the batch ones when mean is NULL. */
static void ref_bn(bn_shape s, const double *x, const double *gamma, const double *beta, const double *mean,
                   const double *var, double eps, double *y)
{
    for (int64_t c = 0; c < s.channels; c++) {
        double mu, sigma2;
        if (mean) {
            mu = mean[c], sigma2 = var[c];
        } else {
            ref_moments(s, x, c, &mu, &sigma2);
        }
        double inv_std = 1.0 / sqrt(sigma2 + eps);
        for (int64_t n = 0; n < s.batch; n++)
            for (int64_t i = 0; i < s.plane; i++) {
                int64_t at = (n * s.channels + c) * s.plane + i;
                y[at] = gamma[c] * (x[at] - mu) * inv_std + beta[c];
            }
    }
}

/* f(x, gamma, beta) = sum(bn_train(x) * dy) over the packed vector
 * [x | gamma | beta]. */
typedef struct bn_ref {
    bn_shape s;
    double eps;
    const double *dy;
    double *y;
} bn_ref;

static double bn_dot_dy(const double *packed, void *user)
{
    bn_ref *r = user;
    int64_t n = bn_numel(r->s);
    const double *gamma = packed + n, *beta = gamma + r->s.channels;
    ref_bn(r->s, packed, gamma, beta, NULL, NULL, r->eps, r->y);
    double f = 0.0;
    for (int64_t i = 0; i < n; i++)
        f += r->y[i] * r->dy[i];
    return f;
}

/* running = (1 - m)*running + m*batch, with the unbiased variance. */
static void ref_running_update(bn_shape s, const double *x, double momentum, double *running_mean,
                               double *running_var)
{
    double m = (double)(s.batch * s.plane);
    for (int64_t c = 0; c < s.channels; c++) {
        double mean, var;
        ref_moments(s, x, c, &mean, &var);
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean;
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * var * m / (m - 1.0);
    }
}

/* ---- batch norm: training ---------------------------------------------------- */

typedef struct bn_case {
    const char *what;
    int ndim;
    int64_t shape[4];
    keel_batch_norm_opts opts; /* zeros: defaults eps 1e-5, momentum 0.1 */
    bool x_needs_grad;
} bn_case;

static bn_shape bn_shape_of(const bn_case *bc)
{
    bn_shape s = {bc->shape[0], bc->shape[1], bc->ndim == 4 ? bc->shape[2] * bc->shape[3] : 1};
    return s;
}

static void check_running_stats(keel_plan *plan, const bn_case *bc, const double *want_mean,
                                const double *want_var, const char *when)
{
    int64_t channels = bc->shape[1];
    float *got = floats_new(channels);
    char label[160];
    KS_OK(keel_plan_param_get(plan, "bn1.running_mean", got, channels));
    snprintf(label, sizeof label, "%s running_mean %s", bc->what, when);
    ks_check(label, got, want_mean, channels, 1e-2, 1e-6);
    KS_OK(keel_plan_param_get(plan, "bn1.running_var", got, channels));
    snprintf(label, sizeof label, "%s running_var %s", bc->what, when);
    ks_check(label, got, want_var, channels, 1e-2, 1e-6);
    free(got);
}

static void run_bn_training(const bn_case *bc)
{
    bn_shape s = bn_shape_of(bc);
    int64_t n = bn_numel(s), channels = s.channels;
    double eps = bc->opts.eps != 0.0f ? bc->opts.eps : 1e-5f;
    double momentum = bc->opts.momentum != 0.0f ? bc->opts.momentum : 0.1f;

    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", bc->ndim, bc->shape);
    if (bc->x_needs_grad)
        keel_graph_require_grad(g, x);
    keel_node *y = keel_batch_norm(g, "bn1", x, &bc->opts);
    keel_node *dy = keel_input(g, "dy", bc->ndim, bc->shape);
    ks_graph_ok(g);
    KS_OK(keel_graph_backward_from(g, y, dy));
    keel_graph_keep(g, y);
    if (!bc->x_needs_grad)
        assert_null(keel_graph_grad(g, x));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 1);

    /* A channel offset well away from zero checks that the mean is removed
     * before the variance is taken. */
    float *xf = floats_new(n), *dyf = floats_new(n), *yf = floats_new(n), *dxf = floats_new(n);
    ks_fill_uniform(xf, n, 31, -2.0f, 2.0f);
    for (int64_t i = 0; i < n; i++)
        xf[i] += 3.0f * (float)((i / s.plane) % channels);
    ks_fill_uniform(dyf, n, 32, -1.0f, 1.0f);
    float *gamma_f = ks_param_random(plan, "bn1.weight", channels, 33, 0.5f, 1.5f);
    float *beta_f = ks_param_random(plan, "bn1.bias", channels, 34, -0.5f, 0.5f);
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_set_input(plan, dy, dyf));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    KS_OK(keel_plan_read(plan, y, yf));
    if (bc->x_needs_grad)
        KS_OK(keel_plan_read(plan, keel_graph_grad(g, x), dxf));
    float *dgamma_f = floats_new(channels), *dbeta_f = floats_new(channels);
    KS_OK(keel_plan_grad_get(plan, "bn1.weight", dgamma_f, channels));
    KS_OK(keel_plan_grad_get(plan, "bn1.bias", dbeta_f, channels));

    /* Reference on the packed vector [x | gamma | beta]. */
    double *packed = doubles_new(n + 2 * channels), *grad = doubles_new(n + 2 * channels);
    ks_to_double(xf, packed, n);
    ks_to_double(gamma_f, packed + n, channels);
    ks_to_double(beta_f, packed + n + channels, channels);
    double *dyd = to_double_new(dyf, n), *yd = doubles_new(n);
    ref_bn(s, packed, packed + n, packed + n + channels, NULL, NULL, eps, yd);
    bn_ref r = {s, eps, dyd, doubles_new(n)};
    ks_numeric_grad(bn_dot_dy, &r, packed, n + 2 * channels, 1e-4, grad);

    char label[160];
    snprintf(label, sizeof label, "%s y", bc->what);
    ks_check(label, yf, yd, n, 0.1, 1e-5);
    if (bc->x_needs_grad) {
        snprintf(label, sizeof label, "%s dx", bc->what);
        ks_check(label, dxf, grad, n, 0.1, 5e-5);
    }
    snprintf(label, sizeof label, "%s dgamma", bc->what);
    ks_check(label, dgamma_f, grad + n, channels, 0.1, 1e-5);
    snprintf(label, sizeof label, "%s dbeta", bc->what);
    ks_check(label, dbeta_f, grad + n + channels, channels, 0.1, 1e-5);

    /* Running statistics start at mean 0, variance 1 and move once per
     * training forward. */
    double *running_mean = doubles_new(channels), *running_var = doubles_new(channels);
    for (int64_t c = 0; c < channels; c++)
        running_mean[c] = 0.0, running_var[c] = 1.0;
    ref_running_update(s, packed, momentum, running_mean, running_var);
    check_running_stats(plan, bc, running_mean, running_var, "after step 1");

    float *x2 = floats_new(n);
    ks_fill_uniform(x2, n, 35, -1.0f, 3.0f);
    KS_OK(keel_plan_set_input(plan, x, x2));
    KS_OK(keel_plan_forward(plan, true));
    double *x2d = to_double_new(x2, n);
    ref_running_update(s, x2d, momentum, running_mean, running_var);
    check_running_stats(plan, bc, running_mean, running_var, "after step 2");

    /* An evaluation forward leaves them alone. */
    KS_OK(keel_plan_forward(plan, false));
    check_running_stats(plan, bc, running_mean, running_var, "after an eval forward");

    free(xf), free(dyf), free(yf), free(dxf), free(gamma_f), free(beta_f), free(dgamma_f), free(dbeta_f);
    free(packed), free(grad), free(dyd), free(yd), free(r.y), free(running_mean), free(running_var);
    free(x2), free(x2d);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static void test_bn_training_4d(void **state)
{
    (void)state;
    bn_case bc = {"batch_norm[4-D 3x4x3x5 momentum=0.3]", 4, {3, 4, 3, 5}, {.momentum = 0.3f}, true};
    run_bn_training(&bc);
}

static void test_bn_training_2d(void **state)
{
    (void)state;
    bn_case bc = {"batch_norm[2-D 6x5 defaults]", 2, {6, 5}, {0}, true};
    run_bn_training(&bc);
}

static void test_bn_training_small_batch(void **state)
{
    (void)state;
    bn_case bc = {"batch_norm[4-D 2x3x1x2 eps=1e-3]", 4, {2, 3, 1, 2}, {.eps = 1e-3f}, true};
    run_bn_training(&bc);
}

/* Only gamma and beta want gradients: dgamma and dbeta still right. */
static void test_bn_param_grads_only(void **state)
{
    (void)state;
    bn_case bc = {"batch_norm[4-D 2x3x2x2 no dx]", 4, {2, 3, 2, 2}, {0}, false};
    run_bn_training(&bc);
}

/* ---- batch norm: evaluation -------------------------------------------------- */

static void run_bn_eval(const char *what, int ndim, const int64_t *shape, float eps)
{
    bn_shape s = {shape[0], shape[1], ndim == 4 ? shape[2] * shape[3] : 1};
    int64_t n = bn_numel(s), channels = s.channels;
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", ndim, shape);
    keel_batch_norm_opts opts = {.eps = eps};
    keel_node *y = keel_batch_norm(g, "bn1", x, &opts);
    keel_graph_keep(g, y);
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 1);

    float *xf = floats_new(n), *yf = floats_new(n);
    ks_fill_uniform(xf, n, 41, -2.0f, 2.0f);
    float *gamma_f = ks_param_random(plan, "bn1.weight", channels, 42, 0.5f, 1.5f);
    float *beta_f = ks_param_random(plan, "bn1.bias", channels, 43, -0.5f, 0.5f);
    float *mean_f = ks_param_random(plan, "bn1.running_mean", channels, 44, -1.0f, 1.0f);
    float *var_f = ks_param_random(plan, "bn1.running_var", channels, 45, 0.25f, 2.0f);
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_forward(plan, false));
    KS_OK(keel_plan_read(plan, y, yf));

    double *xd = to_double_new(xf, n), *yd = doubles_new(n);
    double *gamma = to_double_new(gamma_f, channels), *beta = to_double_new(beta_f, channels);
    double *mean = to_double_new(mean_f, channels), *var = to_double_new(var_f, channels);
    ref_bn(s, xd, gamma, beta, mean, var, eps, yd);
    char label[160];
    snprintf(label, sizeof label, "%s y", what);
    ks_check(label, yf, yd, n, 0.1, 1e-5);

    /* Evaluation reads the running statistics and never writes them. */
    float *after = floats_new(channels);
    KS_OK(keel_plan_param_get(plan, "bn1.running_mean", after, channels));
    assert_memory_equal(after, mean_f, (size_t)channels * sizeof *after);
    KS_OK(keel_plan_param_get(plan, "bn1.running_var", after, channels));
    assert_memory_equal(after, var_f, (size_t)channels * sizeof *after);

    free(xf), free(yf), free(gamma_f), free(beta_f), free(mean_f), free(var_f), free(after);
    free(xd), free(yd), free(gamma), free(beta), free(mean), free(var);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static void test_bn_eval(void **state)
{
    (void)state;
    int64_t image[4] = {2, 3, 4, 5};
    run_bn_eval("batch_norm[eval 4-D eps=1e-3]", 4, image, 1e-3f);
    int64_t flat[2] = {1, 7};
    run_bn_eval("batch_norm[eval 2-D batch 1]", 2, flat, 1e-5f);
}

/* The parameters and state a batch-norm layer declares. */
static void test_bn_params(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    int64_t shape[4] = {2, 3, 4, 4};
    keel_node *x = keel_input(g, "x", 4, shape);
    keel_batch_norm(g, "bn1", x, NULL);
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 1);
    static const struct {
        const char *name;
        bool trainable;
        float init;
    } want[] = {{"bn1.weight", true, 1.0f}, {"bn1.bias", true, 0.0f}, {"bn1.running_mean", false, 0.0f},
                {"bn1.running_var", false, 1.0f}};
    int found = 0;
    for (int i = 0; i < keel_plan_param_count(plan); i++) {
        keel_param_info info;
        KS_OK(keel_plan_param_info(plan, i, &info));
        for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
            if (strcmp(info.name, want[w].name) != 0)
                continue;
            found++;
            assert_int_equal(info.ndim, 1);
            assert_int_equal(info.shape[0], 3);
            assert_int_equal(info.trainable, want[w].trainable);
            float v[3];
            KS_OK(keel_plan_param_get(plan, info.name, v, 3));
            for (int c = 0; c < 3; c++)
                assert_true(v[c] == want[w].init);
        }
    }
    assert_int_equal(found, 4);
    assert_int_equal(keel_graph_param_count(g), 6); /* running statistics are not trainable */
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* Training needs two or more values per channel (PyTorch's rule). */
static void test_bn_training_single_value(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    int64_t shape[2] = {1, 4};
    keel_node *x = keel_input(g, "x", 2, shape);
    keel_graph_keep(g, keel_batch_norm(g, "bn1", x, NULL));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 1);
    float xf[4] = {0.5f, -1.0f, 2.0f, 0.25f};
    KS_OK(keel_plan_set_input(plan, x, xf));
    assert_int_equal(keel_plan_forward(plan, true), KEEL_ERR_SHAPE);
    printf("expected error: %s\n", keel_last_error());
    assert_non_null(strstr(keel_last_error(), "bn1"));
    assert_non_null(strstr(keel_last_error(), "more than one value"));
    KS_OK(keel_plan_forward(plan, false));
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* ---- impossible settings -------------------------------------------------------- */

static void expect_error(keel_graph *g, keel_node *y, const char *const *want, int n_want)
{
    assert_null(y);
    assert_int_not_equal(keel_graph_status(g), KEEL_OK);
    const char *err = keel_graph_error(g);
    printf("expected error: %s\n", err);
    for (int i = 0; i < n_want; i++)
        if (!strstr(err, want[i]))
            fail_msg("error \"%s\" does not mention \"%s\"", err, want[i]);
    keel_graph_free(g);
}

static keel_node *lrn_on_image(keel_graph *g, int size, float alpha, float beta, float k)
{
    int64_t shape[4] = {2, 8, 5, 5};
    return keel_lrn(g, "norm1", keel_input(g, "x", 4, shape), size, alpha, beta, k);
}

static void test_norm_errors(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    expect_error(g, lrn_on_image(g, 0, 1e-4f, 0.75f, 2.0f), (const char *[]){"norm1", "2x8x5x5", "size"}, 3);
    g = keel_graph_new();
    expect_error(g, lrn_on_image(g, 5, 1e-4f, 0.75f, 0.0f), (const char *[]){"norm1", "k"}, 2);
    g = keel_graph_new();
    expect_error(g, lrn_on_image(g, 5, 1e-4f, -0.5f, 2.0f), (const char *[]){"norm1", "beta"}, 2);
    g = keel_graph_new();
    expect_error(g, lrn_on_image(g, 5, -1.0f, 0.75f, 2.0f), (const char *[]){"norm1", "alpha"}, 2);

    g = keel_graph_new();
    int64_t three_d[3] = {2, 3, 4};
    keel_node *x = keel_input(g, "x", 3, three_d);
    expect_error(g, keel_batch_norm(g, "bn1", x, NULL), (const char *[]){"bn1", "2x3x4"}, 2);
    g = keel_graph_new();
    int64_t flat[2] = {4, 3};
    x = keel_input(g, "x", 2, flat);
    keel_batch_norm_opts bad_momentum = {.momentum = 1.5f};
    expect_error(g, keel_batch_norm(g, "bn1", x, &bad_momentum), (const char *[]){"bn1", "momentum"}, 2);
    g = keel_graph_new();
    x = keel_input(g, "x", 2, flat);
    keel_batch_norm_opts bad_eps = {.eps = -1.0f};
    expect_error(g, keel_batch_norm(g, "bn1", x, &bad_eps), (const char *[]){"bn1", "eps"}, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lrn_alexnet),
        cmocka_unit_test(test_lrn_strong),
        cmocka_unit_test(test_lrn_even_size),
        cmocka_unit_test(test_bn_training_4d),
        cmocka_unit_test(test_bn_training_2d),
        cmocka_unit_test(test_bn_training_small_batch),
        cmocka_unit_test(test_bn_param_grads_only),
        cmocka_unit_test(test_bn_eval),
        cmocka_unit_test(test_bn_params),
        cmocka_unit_test(test_bn_training_single_value),
        cmocka_unit_test(test_norm_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
