/* The fully connected layer: forward against a float64 loop, every gradient
 * against central finite differences of a float64 re-implementation, its
 * initialisers, FLOP count and shape errors; and a small MLP end to end
 * (linear-relu-linear-softmax_cross_entropy). */
#include "support/support.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every output and gradient is a sum of K products of O(1) values (K = in
 * for y, out for dx, batch for dW and db), so its typical size and its
 * float rounding both grow like sqrt(K): errors are measured against a
 * floor of FLOOR·sqrt(K). Gradients are checked against float64 finite
 * differences (step 1e-4, exact up to rounding for the bilinear layer). */
#define FLOOR 1e-2
#define TOL 1e-4
#define FD_STEP 1e-4
#define FD_MAX_WEIGHTS 512

static double *alloc_doubles(int64_t n)
{
    double *p = calloc((size_t)n, sizeof *p);
    assert_non_null(p);
    return p;
}

static float *alloc_floats(int64_t n)
{
    float *p = calloc((size_t)n, sizeof *p);
    assert_non_null(p);
    return p;
}

static double *to_doubles(const float *x, int64_t n)
{
    double *d = alloc_doubles(n);
    ks_to_double(x, d, n);
    return d;
}

/* y = x · Wᵀ + b in float64; b may be NULL. */
static void linear_ref(const double *x, const double *w, const double *b, int64_t batch, int64_t in,
                       int64_t out, double *y)
{
    for (int64_t n = 0; n < batch; n++)
        for (int64_t o = 0; o < out; o++) {
            double acc = b ? b[o] : 0.0;
            for (int64_t i = 0; i < in; i++)
                acc += x[n * in + i] * w[o * in + i];
            y[n * out + o] = acc;
        }
}

/* ---- single layer ---------------------------------------------------------- */

typedef struct linear_problem {
    int64_t batch, in, out;
    double *x, *w, *b, *dy; /* b NULL without bias */
    double *y;              /* scratch */
} linear_problem;

/* f = Σ linear(x; W, b) ⊙ dy, whose gradient is what backward_from(y, dy)
 * computes. Finite differences perturb the arrays of the problem in place. */
static double linear_objective(const double *unused, void *user)
{
    (void)unused;
    linear_problem *p = user;
    linear_ref(p->x, p->w, p->b, p->batch, p->in, p->out, p->y);
    double f = 0.0;
    for (int64_t i = 0; i < p->batch * p->out; i++)
        f += p->y[i] * p->dy[i];
    return f;
}

/* dx = dy · W */
static void linear_grad_input(const linear_problem *p, double *dx)
{
    for (int64_t n = 0; n < p->batch; n++)
        for (int64_t i = 0; i < p->in; i++) {
            double acc = 0.0;
            for (int64_t o = 0; o < p->out; o++)
                acc += p->dy[n * p->out + o] * p->w[o * p->in + i];
            dx[n * p->in + i] = acc;
        }
}

/* dW = dyᵀ · x */
static void linear_grad_weight(const linear_problem *p, double *dw)
{
    for (int64_t o = 0; o < p->out; o++)
        for (int64_t i = 0; i < p->in; i++) {
            double acc = 0.0;
            for (int64_t n = 0; n < p->batch; n++)
                acc += p->dy[n * p->out + o] * p->x[n * p->in + i];
            dw[o * p->in + i] = acc;
        }
}

static void check_linear(int64_t batch, int64_t in, int64_t out, bool has_bias, uint64_t seed)
{
    char what[96];
    const char *tag = has_bias ? "bias" : "no_bias";
    keel_graph *g = keel_graph_new();
    assert_non_null(g);
    int64_t x_shape[2] = {batch, in}, y_shape[2] = {batch, out};
    keel_node *x = keel_input(g, "x", 2, x_shape);
    keel_graph_require_grad(g, x);
    keel_linear_opts opts = {.no_bias = !has_bias};
    keel_node *y = keel_linear(g, "fc", x, out, &opts);
    keel_node *dy = keel_input(g, "dy", 2, y_shape);
    ks_graph_ok(g);
    keel_graph_keep(g, y);
    KS_OK(keel_graph_backward_from(g, y, dy));
    assert_non_null(keel_graph_grad(g, x));

    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, seed);
    float *xf = alloc_floats(batch * in), *dyf = alloc_floats(batch * out);
    ks_fill_uniform(xf, batch * in, seed + 1, -1.0f, 1.0f);
    ks_fill_uniform(dyf, batch * out, seed + 2, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_set_input(plan, dy, dyf));
    float *wf = ks_param_random(plan, "fc.weight", out * in, seed + 3, -0.5f, 0.5f);
    float *bf = has_bias ? ks_param_random(plan, "fc.bias", out, seed + 4, -0.5f, 0.5f) : NULL;
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));

    float *y_got = alloc_floats(batch * out), *dx_got = alloc_floats(batch * in);
    float *dw_got = alloc_floats(out * in), *db_got = alloc_floats(out);
    KS_OK(keel_plan_read(plan, y, y_got));
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, x), dx_got));
    KS_OK(keel_plan_grad_get(plan, "fc.weight", dw_got, out * in));
    if (has_bias)
        KS_OK(keel_plan_grad_get(plan, "fc.bias", db_got, out));

    linear_problem p = {batch, in, out, to_doubles(xf, batch * in), to_doubles(wf, out * in),
                        has_bias ? to_doubles(bf, out) : NULL, to_doubles(dyf, batch * out),
                        alloc_doubles(batch * out)};
    double *y_want = alloc_doubles(batch * out);
    linear_ref(p.x, p.w, p.b, batch, in, out, y_want);
    snprintf(what, sizeof what, "linear[%s %lldx%lld->%lld] y", tag, (long long)batch, (long long)in,
             (long long)out);
    ks_check(what, y_got, y_want, batch * out, FLOOR * sqrt((double)in), TOL);

    /* Finite differences cost O(batch·in·out) per element: beyond a few
     * hundred parameters the closed forms dx = dy·W, dW = dyᵀ·x,
     * db = Σ_n dy (float64 loops) stand in for them. */
    bool use_fd = out * in <= FD_MAX_WEIGHTS;
    const char *how = use_fd ? "fd" : "closed form";
    double *want = alloc_doubles(batch * in > out * in ? batch * in : out * in);
    if (use_fd)
        ks_numeric_grad(linear_objective, &p, p.x, batch * in, FD_STEP, want);
    else
        linear_grad_input(&p, want);
    snprintf(what, sizeof what, "linear[%s %lldx%lld->%lld] dx (%s)", tag, (long long)batch, (long long)in,
             (long long)out, how);
    ks_check(what, dx_got, want, batch * in, FLOOR * sqrt((double)out), TOL);
    if (use_fd)
        ks_numeric_grad(linear_objective, &p, p.w, out * in, FD_STEP, want);
    else
        linear_grad_weight(&p, want);
    snprintf(what, sizeof what, "linear[%s %lldx%lld->%lld] dw (%s)", tag, (long long)batch, (long long)in,
             (long long)out, how);
    ks_check(what, dw_got, want, out * in, FLOOR * sqrt((double)batch), TOL);
    if (has_bias) {
        if (use_fd) {
            ks_numeric_grad(linear_objective, &p, p.b, out, FD_STEP, want);
        } else {
            for (int64_t o = 0; o < out; o++) {
                want[o] = 0.0;
                for (int64_t n = 0; n < batch; n++)
                    want[o] += p.dy[n * out + o];
            }
        }
        snprintf(what, sizeof what, "linear[%s %lldx%lld->%lld] db (%s)", tag, (long long)batch, (long long)in,
                 (long long)out, how);
        ks_check(what, db_got, want, out, FLOOR * sqrt((double)batch), TOL);
    }

    free(want);
    free(y_want);
    free(p.x);
    free(p.w);
    free(p.b);
    free(p.dy);
    free(p.y);
    free(y_got);
    free(dx_got);
    free(dw_got);
    free(db_got);
    free(xf);
    free(dyf);
    free(wf);
    free(bf);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static void test_linear_bias(void **state)
{
    (void)state;
    check_linear(4, 7, 5, true, 11);
    check_linear(1, 3, 1, true, 12);
    /* Big enough for OpenBLAS's blocked and threaded paths. */
    check_linear(33, 300, 130, true, 13);
}

static void test_linear_no_bias(void **state)
{
    (void)state;
    check_linear(3, 6, 9, false, 21);
}

/* A weight only: the input's gradient is not asked for, so no data
 * gradient node may be made, yet the weight still gets its gradient. */
static void test_linear_frozen_input(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    int64_t x_shape[2] = {2, 3};
    keel_node *x = keel_input(g, "x", 2, x_shape);
    keel_node *y = keel_linear(g, "fc", x, 4, NULL);
    keel_node *target = keel_input(g, "t", 2, (int64_t[]){2, 4});
    keel_node *loss = keel_mse_loss(g, "loss", y, target);
    ks_graph_ok(g);
    KS_OK(keel_graph_backward(g, loss));
    assert_null(keel_graph_grad(g, x));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 5);
    float xf[6], tf[8], dw[12];
    ks_fill_uniform(xf, 6, 1, -1, 1);
    ks_fill_uniform(tf, 8, 2, -1, 1);
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_set_input(plan, target, tf));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    KS_OK(keel_plan_grad_get(plan, "fc.weight", dw, 12));
    for (int i = 0; i < 12; i++)
        assert_true(isfinite(dw[i]));
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* PyTorch's nn.Linear defaults: weight and bias both U(±1/sqrt(in)); a
 * user initialiser replaces either. */
static void test_linear_init(void **state)
{
    (void)state;
    enum { IN = 16, OUT = 32 };
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 2, (int64_t[]){2, IN});
    keel_linear(g, "fc", x, OUT, NULL);
    keel_linear_opts custom = {.weight_init = keel_init_constant(0.5f), .bias_init = keel_init_constant(-1.0f)};
    keel_linear(g, "fc_custom", x, 3, &custom);
    ks_graph_ok(g);
    assert_int_equal(keel_graph_param_count(g), OUT * IN + OUT + 3 * IN + 3);
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 9);
    float w[OUT * IN], b[OUT];
    KS_OK(keel_plan_param_get(plan, "fc.weight", w, OUT * IN));
    KS_OK(keel_plan_param_get(plan, "fc.bias", b, OUT));
    const double bound = 1.0 / sqrt((double)IN);
    double w_max = 0.0, b_max = 0.0;
    for (int i = 0; i < OUT * IN; i++) {
        assert_true(fabs(w[i]) <= bound + 1e-7);
        w_max = fmax(w_max, fabs(w[i]));
    }
    for (int i = 0; i < OUT; i++) {
        assert_true(fabs(b[i]) <= bound + 1e-7);
        b_max = fmax(b_max, fabs(b[i]));
    }
    /* 512 and 32 uniform draws: their largest magnitudes come near the bound. */
    printf("linear init: bound %.4f, largest |w| %.4f, largest |b| %.4f\n", bound, w_max, b_max);
    assert_true(w_max > 0.9 * bound);
    assert_true(b_max > 0.5 * bound);
    float cw[3 * IN], cb[3];
    KS_OK(keel_plan_param_get(plan, "fc_custom.weight", cw, 3 * IN));
    KS_OK(keel_plan_param_get(plan, "fc_custom.bias", cb, 3));
    for (int i = 0; i < 3 * IN; i++)
        assert_true(cw[i] == 0.5f);
    for (int i = 0; i < 3; i++)
        assert_true(cb[i] == -1.0f);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static void test_linear_info(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 2, (int64_t[]){8, 10});
    keel_node *y = keel_linear(g, "fc", x, 6, NULL);
    ks_graph_ok(g);
    int64_t shape[KEEL_MAX_DIMS];
    assert_int_equal(keel_node_shape(y, shape), 2);
    assert_int_equal(shape[0], 8);
    assert_int_equal(shape[1], 6);
    assert_string_equal(keel_node_op_name(y), "linear");
    bool found = false;
    for (int i = 0; i < keel_graph_layer_count(g); i++) {
        keel_layer_info info;
        KS_OK(keel_graph_layer_info(g, i, &info));
        if (strcmp(info.name, "fc") != 0)
            continue;
        found = true;
        assert_true(info.flops == 2.0 * 8 * 10 * 6);
        assert_int_equal(info.params, 6 * 10 + 6);
    }
    assert_true(found);
    keel_graph_free(g);
}

/* Shape errors name the layer and the input, and suggest the fix. */
static void test_linear_errors(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "images", 4, (int64_t[]){2, 3, 4, 4});
    assert_null(keel_linear(g, "fc1", x, 10, NULL));
    assert_int_not_equal(keel_graph_status(g), KEEL_OK);
    const char *err = keel_graph_error(g);
    printf("wrong rank: %s\n", err);
    assert_non_null(strstr(err, "fc1"));
    assert_non_null(strstr(err, "2x3x4x4"));
    assert_non_null(strstr(err, "keel_flatten"));
    /* Sticky: a later valid call does nothing and keeps the first message. */
    keel_node *flat = keel_input(g, "flat", 2, (int64_t[]){2, 48});
    assert_null(keel_linear(g, "fc2", flat, 10, NULL));
    assert_non_null(strstr(keel_graph_error(g), "fc1"));
    keel_graph_free(g);

    g = keel_graph_new();
    x = keel_input(g, "x", 2, (int64_t[]){2, 5});
    assert_null(keel_linear(g, "fc", x, 0, NULL));
    printf("no outputs: %s\n", keel_graph_error(g));
    assert_non_null(strstr(keel_graph_error(g), "out_features"));
    keel_graph_free(g);

    g = keel_graph_new();
    keel_node *labels = keel_input_labels(g, "labels", 4);
    assert_null(keel_linear(g, "fc", labels, 3, NULL));
    printf("int input: %s\n", keel_graph_error(g));
    assert_non_null(strstr(keel_graph_error(g), "float32"));
    keel_graph_free(g);

    g = keel_graph_new();
    assert_null(keel_linear(g, "fc", NULL, 3, NULL));
    assert_int_not_equal(keel_graph_status(g), KEEL_OK);
    keel_graph_free(g);
}

/* ---- a 2-layer MLP against a float64 re-implementation ------------------- */

enum { MLP_BATCH = 5, MLP_IN = 6, MLP_HIDDEN = 8, MLP_CLASSES = 4 };

typedef struct mlp {
    double x[MLP_BATCH * MLP_IN];
    double w1[MLP_HIDDEN * MLP_IN], b1[MLP_HIDDEN];
    double w2[MLP_CLASSES * MLP_HIDDEN], b2[MLP_CLASSES];
    int32_t labels[MLP_BATCH];
} mlp;

/* mean over the batch of logsumexp(z) − z[label], z = fc2(relu(fc1(x))) */
static double mlp_loss(const double *unused, void *user)
{
    (void)unused;
    const mlp *m = user;
    double h[MLP_BATCH * MLP_HIDDEN], z[MLP_BATCH * MLP_CLASSES];
    linear_ref(m->x, m->w1, m->b1, MLP_BATCH, MLP_IN, MLP_HIDDEN, h);
    for (int i = 0; i < MLP_BATCH * MLP_HIDDEN; i++)
        h[i] = h[i] > 0.0 ? h[i] : 0.0;
    linear_ref(h, m->w2, m->b2, MLP_BATCH, MLP_HIDDEN, MLP_CLASSES, z);
    double total = 0.0;
    for (int n = 0; n < MLP_BATCH; n++) {
        const double *row = z + n * MLP_CLASSES;
        double max = row[0];
        for (int c = 1; c < MLP_CLASSES; c++)
            max = fmax(max, row[c]);
        double sum = 0.0;
        for (int c = 0; c < MLP_CLASSES; c++)
            sum += exp(row[c] - max);
        total += max + log(sum) - row[m->labels[n]];
    }
    return total / MLP_BATCH;
}

static void check_mlp_grad(keel_plan *plan, const char *param, mlp *m, double *values, int64_t n)
{
    float got[MLP_HIDDEN * MLP_IN];
    double want[MLP_HIDDEN * MLP_IN];
    KS_OK(keel_plan_grad_get(plan, param, got, n));
    ks_numeric_grad(mlp_loss, m, values, n, 1e-5, want);
    char what[64];
    snprintf(what, sizeof what, "mlp d%s", param);
    /* Gradients are O(0.1): a floor of 1e-3 with 1e-3 tolerance leaves room
     * for float rounding through two layers and a ReLU. */
    ks_check(what, got, want, n, 1e-3, 1e-3);
}

static void test_mlp(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 2, (int64_t[]){MLP_BATCH, MLP_IN});
    keel_node *labels = keel_input_labels(g, "labels", MLP_BATCH);
    keel_node *h = keel_linear(g, "fc1", x, MLP_HIDDEN, NULL);
    h = keel_relu(g, "relu1", h);
    keel_node *z = keel_linear(g, "fc2", h, MLP_CLASSES, NULL);
    keel_node *loss = keel_softmax_cross_entropy(g, "loss", z, labels);
    ks_graph_ok(g);
    KS_OK(keel_graph_backward(g, loss));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 3);

    mlp m;
    float xf[MLP_BATCH * MLP_IN];
    ks_fill_uniform(xf, MLP_BATCH * MLP_IN, 31, -1.0f, 1.0f);
    ks_to_double(xf, m.x, MLP_BATCH * MLP_IN);
    for (int n = 0; n < MLP_BATCH; n++)
        m.labels[n] = (n * 3 + 1) % MLP_CLASSES;
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_set_input(plan, labels, m.labels));
    struct {
        const char *name;
        double *values;
        int64_t n;
    } params[] = {
        {"fc1.weight", m.w1, MLP_HIDDEN * MLP_IN},
        {"fc1.bias", m.b1, MLP_HIDDEN},
        {"fc2.weight", m.w2, MLP_CLASSES * MLP_HIDDEN},
        {"fc2.bias", m.b2, MLP_CLASSES},
    };
    for (int i = 0; i < 4; i++) {
        float *v = ks_param_random(plan, params[i].name, params[i].n, 40 + i, -0.8f, 0.8f);
        ks_to_double(v, params[i].values, params[i].n);
        free(v);
    }
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));

    float loss_got;
    KS_OK(keel_plan_read(plan, loss, &loss_got));
    double loss_want = mlp_loss(NULL, &m);
    ks_check("mlp loss", &loss_got, &loss_want, 1, 1e-3, 1e-5);
    for (int i = 0; i < 4; i++)
        check_mlp_grad(plan, params[i].name, &m, params[i].values, params[i].n);

    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_bias),
        cmocka_unit_test(test_linear_no_bias),
        cmocka_unit_test(test_linear_frozen_input),
        cmocka_unit_test(test_linear_init),
        cmocka_unit_test(test_linear_info),
        cmocka_unit_test(test_linear_errors),
        cmocka_unit_test(test_mlp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
