/* Element-wise and structure ops: activations, dropout, add, scale, concat,
 * slice, flatten/reshape. Forward against float64 loops, gradients against
 * central finite differences in float64 (or, for the ops that only move
 * data, against the exact rearrangement of dy). */
#include "support/support.h"
#include "ops/ops.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_ELEMENTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

static float *alloc_floats(int64_t n)
{
    float *p = calloc((size_t)n, sizeof *p);
    assert_non_null(p);
    return p;
}

static double *alloc_doubles(int64_t n)
{
    double *p = calloc((size_t)n, sizeof *p);
    assert_non_null(p);
    return p;
}

/* Moves values away from 0 so a finite difference never straddles a kink. */
static void push_from_zero(float *x, int64_t n, float min_abs)
{
    for (int64_t i = 0; i < n; i++)
        if (fabsf(x[i]) < min_abs)
            x[i] = x[i] < 0.0f ? x[i] - 2.0f * min_abs : x[i] + 2.0f * min_abs;
}

static void assert_error_mentions(const keel_graph *g, const char *what)
{
    const char *error = keel_graph_error(g);
    if (!strstr(error, what))
        fail_msg("graph error \"%s\" does not mention \"%s\"", error, what);
}

/* ---- activations ------------------------------------------------------------ */

typedef struct act_case {
    const char *label;
    keel_act_kind kind;
    float slope;
} act_case;

static double act_ref(const act_case *c, double x)
{
    switch (c->kind) {
    case KEEL_ACT_RELU: return x > 0.0 ? x : 0.0;
    case KEEL_ACT_LEAKY_RELU: return x > 0.0 ? x : c->slope * x;
    case KEEL_ACT_SIGMOID: return 1.0 / (1.0 + exp(-x));
    case KEEL_ACT_TANH: return tanh(x);
    }
    return NAN;
}

static keel_node *act_build(keel_graph *g, const act_case *c, keel_node *x)
{
    switch (c->kind) {
    case KEEL_ACT_RELU: return keel_relu(g, "act", x);
    case KEEL_ACT_LEAKY_RELU: return keel_leaky_relu(g, "act", x, c->slope);
    case KEEL_ACT_SIGMOID: return keel_sigmoid(g, "act", x);
    case KEEL_ACT_TANH: return keel_tanh(g, "act", x);
    }
    return NULL;
}

typedef struct act_objective {
    const act_case *c;
    const double *dy;
    int64_t n;
} act_objective;

/* f(x) = sum act(x) * dy, whose gradient is what the backward computes. */
static double act_sum(const double *x, void *user)
{
    const act_objective *o = user;
    double sum = 0.0;
    for (int64_t i = 0; i < o->n; i++)
        sum += act_ref(o->c, x[i]) * o->dy[i];
    return sum;
}

static void check_activation(const act_case *c)
{
    const int64_t shape[4] = {2, 3, 4, 5};
    const int64_t n = 2 * 3 * 4 * 5;
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 4, shape);
    keel_graph_require_grad(g, x);
    keel_node *y = act_build(g, c, x);
    keel_node *dy = keel_input(g, "dy", 4, shape);
    keel_graph_keep(g, y);
    ks_graph_ok(g);
    KS_OK(keel_graph_backward_from(g, y, dy));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 1);

    float *x_val = alloc_floats(n), *dy_val = alloc_floats(n), *y_val = alloc_floats(n), *dx_val = alloc_floats(n);
    ks_fill_uniform(x_val, n, 11, -2.5f, 2.5f);
    push_from_zero(x_val, n, 1e-2f);
    ks_fill_uniform(dy_val, n, 12, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, x, x_val));
    KS_OK(keel_plan_set_input(plan, dy, dy_val));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    KS_OK(keel_plan_read(plan, y, y_val));
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, x), dx_val));

    double *x64 = alloc_doubles(n), *dy64 = alloc_doubles(n), *want = alloc_doubles(n);
    ks_to_double(x_val, x64, n);
    ks_to_double(dy_val, dy64, n);
    for (int64_t i = 0; i < n; i++)
        want[i] = act_ref(c, x64[i]);
    char what[96];
    snprintf(what, sizeof what, "%s y", c->label);
    ks_check(what, y_val, want, n, 1e-3, 2e-6);

    act_objective objective = {c, dy64, n};
    ks_numeric_grad(act_sum, &objective, x64, n, 1e-5, want);
    snprintf(what, sizeof what, "%s dx", c->label);
    ks_check(what, dx_val, want, n, 1e-2, 1e-4);

    free(x64), free(dy64), free(want);
    free(x_val), free(dy_val), free(y_val), free(dx_val);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static void test_activations(void **state)
{
    (void)state;
    static const act_case cases[] = {
        {"relu", KEEL_ACT_RELU, 0.0f},
        {"leaky_relu[slope=0.2]", KEEL_ACT_LEAKY_RELU, 0.2f},
        {"leaky_relu[slope=0]", KEEL_ACT_LEAKY_RELU, 0.0f},
        {"leaky_relu[slope=-0.5]", KEEL_ACT_LEAKY_RELU, -0.5f}, /* the backward reads x, not y */
        {"sigmoid", KEEL_ACT_SIGMOID, 0.0f},
        {"tanh", KEEL_ACT_TANH, 0.0f},
    };
    for (int i = 0; i < N_ELEMENTS(cases); i++)
        check_activation(&cases[i]);
}

/* A chain whose intermediates die where they are consumed, so the planner may
 * run each element-wise op in place: y = leaky(sigmoid(tanh(1.5x)) + 1.5x). */
static double chain_ref(double x)
{
    double a = 1.5 * x;
    double d = 1.0 / (1.0 + exp(-tanh(a))) + a;
    return d > 0.0 ? d : 0.1 * d;
}

typedef struct chain_objective {
    const double *dy;
    int64_t n;
} chain_objective;

static double chain_sum(const double *x, void *user)
{
    const chain_objective *o = user;
    double sum = 0.0;
    for (int64_t i = 0; i < o->n; i++)
        sum += chain_ref(x[i]) * o->dy[i];
    return sum;
}

static void test_inplace_chain(void **state)
{
    (void)state;
    const int64_t shape[2] = {6, 50};
    const int64_t n = 300;
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 2, shape);
    keel_graph_require_grad(g, x);
    keel_node *a = keel_scale(g, "a", x, 1.5f);
    keel_node *c = keel_sigmoid(g, "c", keel_tanh(g, "b", a));
    keel_node *y = keel_leaky_relu(g, "y", keel_add(g, "d", c, a), 0.1f);
    keel_node *dy = keel_input(g, "dy", 2, shape);
    ks_graph_ok(g);
    KS_OK(keel_graph_backward_from(g, y, dy));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 2);

    float *x_val = alloc_floats(n), *dy_val = alloc_floats(n), *y_val = alloc_floats(n), *dx_val = alloc_floats(n);
    ks_fill_uniform(x_val, n, 21, -2.0f, 2.0f);
    for (int64_t i = 0; i < n; i++) /* keep the leaky kink (d = 0, near x = -0.3) out of reach of h */
        while (fabs(chain_ref(x_val[i])) < 2e-2)
            x_val[i] += 0.05f;
    ks_fill_uniform(dy_val, n, 22, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, x, x_val));
    KS_OK(keel_plan_set_input(plan, dy, dy_val));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    KS_OK(keel_plan_read(plan, y, y_val));
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, x), dx_val));

    double *x64 = alloc_doubles(n), *dy64 = alloc_doubles(n), *want = alloc_doubles(n);
    ks_to_double(x_val, x64, n);
    ks_to_double(dy_val, dy64, n);
    for (int64_t i = 0; i < n; i++)
        want[i] = chain_ref(x64[i]);
    ks_check("chain scale>tanh>sigmoid>add>leaky y", y_val, want, n, 1e-3, 1e-5);
    chain_objective objective = {dy64, n};
    ks_numeric_grad(chain_sum, &objective, x64, n, 1e-5, want);
    ks_check("chain scale>tanh>sigmoid>add>leaky dx", dx_val, want, n, 1e-2, 1e-4);

    free(x64), free(dy64), free(want);
    free(x_val), free(dy_val), free(y_val), free(dx_val);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* ---- dropout -------------------------------------------------------------------- */

enum { DROP_ROWS = 10, DROP_COLS = 10000, DROP_N = DROP_ROWS * DROP_COLS };
static const float drop_p = 0.3f;

typedef struct dropout_net {
    keel_graph *g;
    keel_node *x, *y, *dy;
    keel_plan *plan;
} dropout_net;

/* Built the same way every time, so node ids (and so masks) agree. */
static void dropout_net_build(dropout_net *net, keel_context *ctx, uint64_t seed, const float *x_val,
                              const float *dy_val)
{
    const int64_t shape[2] = {DROP_ROWS, DROP_COLS};
    net->g = keel_graph_new();
    net->x = keel_input(net->g, "x", 2, shape);
    keel_graph_require_grad(net->g, net->x);
    net->y = keel_dropout(net->g, "drop", net->x, drop_p);
    net->dy = keel_input(net->g, "dy", 2, shape);
    keel_graph_keep(net->g, net->y);
    ks_graph_ok(net->g);
    KS_OK(keel_graph_backward_from(net->g, net->y, net->dy));
    net->plan = ks_compile(net->g, ctx, seed);
    KS_OK(keel_plan_set_input(net->plan, net->x, x_val));
    KS_OK(keel_plan_set_input(net->plan, net->dy, dy_val));
}

static void dropout_net_free(dropout_net *net)
{
    keel_plan_destroy(net->plan);
    keel_graph_free(net->g);
}

static int64_t count_differences(const float *a, const float *b, int64_t n)
{
    int64_t differ = 0;
    for (int64_t i = 0; i < n; i++)
        differ += (a[i] == 0.0f) != (b[i] == 0.0f);
    return differ;
}

/* Survivors are x/(1-p) (the float expression the kernel uses), the rest 0. */
static void check_dropout_values(const char *what, const float *x, const float *y, int64_t n)
{
    const float inv_keep = 1.0f / (1.0f - drop_p);
    double *want = alloc_doubles(n);
    for (int64_t i = 0; i < n; i++)
        want[i] = y[i] == 0.0f ? 0.0 : (double)(x[i] * inv_keep);
    ks_check(what, y, want, n, 1e-6, 1e-6);
    free(want);
}

static void test_dropout(void **state)
{
    (void)state;
    const int64_t n = DROP_N;
    float *x_val = alloc_floats(n), *dy_val = alloc_floats(n);
    float *y1 = alloc_floats(n), *y2 = alloc_floats(n), *y_same = alloc_floats(n), *y_other = alloc_floats(n);
    float *dx = alloc_floats(n);
    ks_fill_uniform(x_val, n, 31, 0.5f, 1.5f); /* never 0, so y == 0 means dropped */
    ks_fill_uniform(dy_val, n, 32, -1.0f, 1.0f);
    keel_context *ctx = ks_context();

    dropout_net net;
    dropout_net_build(&net, ctx, 7, x_val, dy_val);
    KS_OK(keel_plan_forward(net.plan, true));
    KS_OK(keel_plan_read(net.plan, net.y, y1));

    int64_t zeros = 0;
    for (int64_t i = 0; i < n; i++)
        zeros += y1[i] == 0.0f;
    double fraction = (double)zeros / (double)n;
    double sigma = sqrt(drop_p * (1.0 - drop_p) / (double)n);
    printf("ERR dropout[p=0.3] zeroed fraction: %.5f, |error|/sigma=%.2f (tol 3)\n", fraction,
           fabs(fraction - drop_p) / sigma);
    assert_true(fabs(fraction - drop_p) <= 3.0 * sigma);
    check_dropout_values("dropout[p=0.3] survivors scaled 1/(1-p)", x_val, y1, n);

    /* The same seed and graph draw the same mask; another seed another one. */
    dropout_net same, other;
    dropout_net_build(&same, ctx, 7, x_val, dy_val);
    dropout_net_build(&other, ctx, 8, x_val, dy_val);
    KS_OK(keel_plan_forward(same.plan, true));
    KS_OK(keel_plan_forward(other.plan, true));
    KS_OK(keel_plan_read(same.plan, same.y, y_same));
    KS_OK(keel_plan_read(other.plan, other.y, y_other));
    assert_int_equal(count_differences(y1, y_same, n), 0);
    assert_memory_equal(y1, y_same, (size_t)n * sizeof(float));
    /* Two independent masks disagree on 2p(1-p) = 42% of the elements. */
    assert_true(count_differences(y1, y_other, n) > n / 3);

    /* The next step draws a new mask, and the backward uses that one. */
    KS_OK(keel_plan_forward(net.plan, true));
    KS_OK(keel_plan_read(net.plan, net.y, y2));
    assert_true(count_differences(y1, y2, n) > n / 3);
    check_dropout_values("dropout[p=0.3] step 2 y", x_val, y2, n);
    KS_OK(keel_plan_backward(net.plan));
    KS_OK(keel_plan_read(net.plan, keel_graph_grad(net.g, net.x), dx));
    double *want = alloc_doubles(n);
    const float inv_keep = 1.0f / (1.0f - drop_p);
    for (int64_t i = 0; i < n; i++)
        want[i] = y2[i] == 0.0f ? 0.0 : (double)(dy_val[i] * inv_keep);
    ks_check("dropout[p=0.3] dx (mask of the forward's step)", dx, want, n, 1e-6, 1e-6);

    /* Evaluation: the identity. */
    KS_OK(keel_plan_forward(net.plan, false));
    KS_OK(keel_plan_read(net.plan, net.y, y2));
    assert_memory_equal(x_val, y2, (size_t)n * sizeof(float));

    free(want);
    dropout_net_free(&net);
    dropout_net_free(&same);
    dropout_net_free(&other);
    keel_context_destroy(ctx);
    free(x_val), free(dy_val), free(y1), free(y2), free(y_same), free(y_other), free(dx);
}

static void test_dropout_probability(void **state)
{
    (void)state;
    const int64_t shape[2] = {4, 8};
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 2, shape);
    assert_ptr_equal(keel_dropout(g, "drop0", x, 0.0f), x); /* nothing to drop */
    ks_graph_ok(g);
    keel_graph_free(g);

    const float bad[] = {1.0f, -0.1f, 1.5f, NAN};
    for (int i = 0; i < N_ELEMENTS(bad); i++) {
        g = keel_graph_new();
        x = keel_input(g, "x", 2, shape);
        assert_null(keel_dropout(g, "drop_bad", x, bad[i]));
        assert_int_not_equal(keel_graph_status(g), KEEL_OK);
        assert_error_mentions(g, "drop_bad");
        assert_error_mentions(g, "[0, 1)");
        keel_graph_free(g);
    }
}

/* ---- add, scale ------------------------------------------------------------- */

static void test_add_scale(void **state)
{
    (void)state;
    const int64_t shape[3] = {3, 4, 5};
    const int64_t n = 60;
    const float s = -1.5f;
    keel_graph *g = keel_graph_new();
    keel_node *a = keel_input(g, "a", 3, shape);
    keel_node *b = keel_input(g, "b", 3, shape);
    keel_graph_require_grad(g, a);
    keel_graph_require_grad(g, b);
    /* y = a + s*b + (a + a): a reaches y three times, so its gradient is a sum */
    keel_node *twice = keel_add(g, "twice", a, a);
    keel_node *y = keel_add(g, "y", keel_add(g, "sum", a, keel_scale(g, "scaled", b, s)), twice);
    keel_node *dy = keel_input(g, "dy", 3, shape);
    keel_graph_keep(g, y);
    ks_graph_ok(g);
    KS_OK(keel_graph_backward_from(g, y, dy));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 3);

    float *a_val = alloc_floats(n), *b_val = alloc_floats(n), *dy_val = alloc_floats(n), *got = alloc_floats(n);
    ks_fill_uniform(a_val, n, 41, -1.0f, 1.0f);
    ks_fill_uniform(b_val, n, 42, -1.0f, 1.0f);
    ks_fill_uniform(dy_val, n, 43, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, a, a_val));
    KS_OK(keel_plan_set_input(plan, b, b_val));
    KS_OK(keel_plan_set_input(plan, dy, dy_val));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));

    double *want = alloc_doubles(n);
    KS_OK(keel_plan_read(plan, y, got));
    for (int64_t i = 0; i < n; i++)
        want[i] = 3.0 * a_val[i] + (double)s * b_val[i];
    ks_check("add+scale y = 3a + s*b", got, want, n, 1e-3, 1e-6);
    /* y is linear, so the finite difference equals these exactly. */
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, a), got));
    for (int64_t i = 0; i < n; i++)
        want[i] = 3.0 * dy_val[i];
    ks_check("add (three paths) da", got, want, n, 1e-3, 1e-6);
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, b), got));
    for (int64_t i = 0; i < n; i++)
        want[i] = (double)s * dy_val[i];
    ks_check("scale[s=-1.5] db", got, want, n, 1e-3, 1e-6);

    free(want);
    free(a_val), free(b_val), free(dy_val), free(got);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* ---- concat and slice ------------------------------------------------------------- */

static void test_concat(void **state)
{
    (void)state;
    enum { BATCH = 2, INNER = 3 * 4, COUNT = 3 };
    const int64_t channels[COUNT] = {1, 3, 2};
    const int64_t total = 6;
    keel_graph *g = keel_graph_new();
    keel_node *inputs[COUNT];
    float *values[COUNT];
    const char *names[COUNT] = {"a", "b", "c"};
    for (int i = 0; i < COUNT; i++) {
        const int64_t shape[4] = {BATCH, channels[i], 3, 4};
        inputs[i] = keel_input(g, names[i], 4, shape);
        values[i] = alloc_floats(BATCH * channels[i] * INNER);
        ks_fill_uniform(values[i], BATCH * channels[i] * INNER, 50 + (uint64_t)i, -1.0f, 1.0f);
    }
    keel_graph_require_grad(g, inputs[0]); /* b needs no gradient: its slice is never built */
    keel_graph_require_grad(g, inputs[2]);
    keel_node *y = keel_concat(g, "cat", COUNT, inputs);
    const int64_t out_shape[4] = {BATCH, total, 3, 4};
    keel_node *dy = keel_input(g, "dy", 4, out_shape);
    keel_graph_keep(g, y);
    ks_graph_ok(g);
    int64_t got_shape[KEEL_MAX_DIMS];
    assert_int_equal(keel_node_shape(y, got_shape), 4);
    assert_int_equal(got_shape[1], total);
    KS_OK(keel_graph_backward_from(g, y, dy));
    assert_null(keel_graph_grad(g, inputs[1]));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 4);

    const int64_t n = BATCH * total * INNER;
    float *dy_val = alloc_floats(n), *got = alloc_floats(n);
    double *want = alloc_doubles(n);
    ks_fill_uniform(dy_val, n, 59, -1.0f, 1.0f);
    for (int i = 0; i < COUNT; i++)
        KS_OK(keel_plan_set_input(plan, inputs[i], values[i]));
    KS_OK(keel_plan_set_input(plan, dy, dy_val));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));

    KS_OK(keel_plan_read(plan, y, got));
    for (int64_t b = 0; b < BATCH; b++) {
        int64_t offset = 0;
        for (int i = 0; i < COUNT; i++) {
            for (int64_t k = 0; k < channels[i] * INNER; k++)
                want[(b * total + offset) * INNER + k] = values[i][b * channels[i] * INNER + k];
            offset += channels[i];
        }
    }
    ks_check("concat[1+3+2 channels] y", got, want, n, 1e-3, 0.0);

    /* dx_i is dy's channels [offset_i, offset_i + C_i): a copy, exact. */
    const int64_t offsets[COUNT] = {0, 1, 4};
    for (int i = 0; i < COUNT; i += 2) {
        int64_t numel = BATCH * channels[i] * INNER;
        KS_OK(keel_plan_read(plan, keel_graph_grad(g, inputs[i]), got));
        for (int64_t b = 0; b < BATCH; b++)
            for (int64_t k = 0; k < channels[i] * INNER; k++)
                want[b * channels[i] * INNER + k] = dy_val[(b * total + offsets[i]) * INNER + k];
        char what[64];
        snprintf(what, sizeof what, "concat[1+3+2 channels] d%s", names[i]);
        ks_check(what, got, want, numel, 1e-3, 0.0);
    }

    free(want), free(dy_val), free(got);
    for (int i = 0; i < COUNT; i++)
        free(values[i]);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* keel_slice_channels is internal (concat's gradient), but a slice of a
 * forward tensor must differentiate too: dy placed among zeros. */
static void check_slice(int64_t offset, int64_t count)
{
    enum { BATCH = 2, CHANNELS = 5, INNER = 9 };
    const int64_t shape[4] = {BATCH, CHANNELS, 3, 3};
    const int64_t out_shape[4] = {BATCH, count, 3, 3};
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 4, shape);
    keel_graph_require_grad(g, x);
    keel_node *y = keel_slice_channels(g, "part", x, offset, count);
    keel_node *dy = keel_input(g, "dy", 4, out_shape);
    keel_graph_keep(g, y);
    ks_graph_ok(g);
    KS_OK(keel_graph_backward_from(g, y, dy));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 5);

    const int64_t n_in = BATCH * CHANNELS * INNER, n_out = BATCH * count * INNER;
    float *x_val = alloc_floats(n_in), *dy_val = alloc_floats(n_out), *got = alloc_floats(n_in);
    double *want = alloc_doubles(n_in);
    ks_fill_uniform(x_val, n_in, 61, -1.0f, 1.0f);
    ks_fill_uniform(dy_val, n_out, 62, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, x, x_val));
    KS_OK(keel_plan_set_input(plan, dy, dy_val));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));

    char what[64];
    KS_OK(keel_plan_read(plan, y, got));
    for (int64_t b = 0; b < BATCH; b++)
        for (int64_t k = 0; k < count * INNER; k++)
            want[b * count * INNER + k] = x_val[(b * CHANNELS + offset) * INNER + k];
    snprintf(what, sizeof what, "slice[%lld:%lld of 5] y", (long long)offset, (long long)(offset + count));
    ks_check(what, got, want, n_out, 1e-3, 0.0);

    KS_OK(keel_plan_read(plan, keel_graph_grad(g, x), got));
    for (int64_t b = 0; b < BATCH; b++)
        for (int64_t c = 0; c < CHANNELS; c++)
            for (int64_t k = 0; k < INNER; k++) {
                bool inside = c >= offset && c < offset + count;
                want[(b * CHANNELS + c) * INNER + k] =
                    inside ? dy_val[(b * count + c - offset) * INNER + k] : 0.0;
            }
    snprintf(what, sizeof what, "slice[%lld:%lld of 5] dx", (long long)offset, (long long)(offset + count));
    ks_check(what, got, want, n_in, 1e-3, 0.0);

    free(x_val), free(dy_val), free(got), free(want);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static void test_slice(void **state)
{
    (void)state;
    check_slice(1, 3); /* zeros on both sides */
    check_slice(0, 2); /* zeros after only */
    check_slice(3, 2); /* zeros before only */
    check_slice(0, 5); /* everything: dy itself */
}

/* ---- flatten and reshape ------------------------------------------------------- */

static void test_flatten_reshape(void **state)
{
    (void)state;
    const int64_t shape[4] = {2, 3, 4, 5};
    const int64_t n = 120;
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 4, shape);
    keel_graph_require_grad(g, x);
    keel_node *flat = keel_flatten(g, "flat", x);
    const int64_t target[3] = {4, -1, 5};
    keel_node *r = keel_reshape(g, "r", flat, 3, target);
    keel_node *y = keel_tanh(g, "y", r);
    ks_graph_ok(g);

    int64_t got_shape[KEEL_MAX_DIMS];
    assert_int_equal(keel_node_shape(flat, got_shape), 2);
    assert_int_equal(got_shape[0], 2);
    assert_int_equal(got_shape[1], 60);
    assert_int_equal(keel_node_shape(r, got_shape), 3);
    assert_int_equal(got_shape[0], 4);
    assert_int_equal(got_shape[1], 6);
    assert_int_equal(got_shape[2], 5);

    const int64_t y_shape[3] = {4, 6, 5};
    keel_node *dy = keel_input(g, "dy", 3, y_shape);
    keel_graph_keep(g, flat);
    keel_graph_keep(g, r);
    keel_graph_keep(g, y);
    KS_OK(keel_graph_backward_from(g, y, dy));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 6);

    float *x_val = alloc_floats(n), *dy_val = alloc_floats(n), *got = alloc_floats(n);
    double *want = alloc_doubles(n);
    ks_fill_uniform(x_val, n, 71, -2.0f, 2.0f);
    ks_fill_uniform(dy_val, n, 72, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, x, x_val));
    KS_OK(keel_plan_set_input(plan, dy, dy_val));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));

    /* Row-major order is unchanged by a reshape. */
    for (int64_t i = 0; i < n; i++)
        want[i] = x_val[i];
    KS_OK(keel_plan_read(plan, flat, got));
    ks_check("flatten {2,3,4,5}->{2,60} y", got, want, n, 1e-3, 0.0);
    KS_OK(keel_plan_read(plan, r, got));
    ks_check("reshape {2,60}->{4,-1,5} y", got, want, n, 1e-3, 0.0);
    KS_OK(keel_plan_read(plan, y, got));
    for (int64_t i = 0; i < n; i++)
        want[i] = tanh((double)x_val[i]);
    ks_check("tanh(reshape(flatten x)) y", got, want, n, 1e-3, 2e-6);

    double *x64 = alloc_doubles(n), *dy64 = alloc_doubles(n);
    ks_to_double(x_val, x64, n);
    ks_to_double(dy_val, dy64, n);
    const act_case tanh_case = {"tanh", KEEL_ACT_TANH, 0.0f};
    act_objective objective = {&tanh_case, dy64, n};
    ks_numeric_grad(act_sum, &objective, x64, n, 1e-5, want);
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, x), got));
    ks_check("flatten+reshape (through tanh) dx", got, want, n, 1e-2, 1e-4);

    free(x64), free(dy64);
    free(x_val), free(dy_val), free(got), free(want);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* ---- errors: a clear sticky message, no crash ----------------------------------- */

static void test_errors(void **state)
{
    (void)state;
    {
        const int64_t a_shape[4] = {2, 3, 4, 4}, b_shape[4] = {2, 2, 5, 5};
        keel_graph *g = keel_graph_new();
        keel_node *parts[2] = {keel_input(g, "a", 4, a_shape), keel_input(g, "b", 4, b_shape)};
        assert_null(keel_concat(g, "mixed", 2, parts));
        assert_int_equal(keel_graph_status(g), KEEL_ERR_SHAPE);
        assert_error_mentions(g, "mixed: ");
        assert_error_mentions(g, "2x3x4x4");
        assert_error_mentions(g, "2x2x5x5");
        printf("concat error: %s\n", keel_graph_error(g));
        /* sticky: later builders do nothing */
        assert_null(keel_relu(g, "after", parts[0]));
        assert_error_mentions(g, "mixed: ");
        keel_graph_free(g);
    }
    {
        const int64_t shape[3] = {2, 3, 4};
        keel_graph *g = keel_graph_new();
        keel_node *x = keel_input(g, "x", 3, shape);
        const int64_t target[2] = {5, 5};
        assert_null(keel_reshape(g, "bad_reshape", x, 2, target));
        assert_int_equal(keel_graph_status(g), KEEL_ERR_SHAPE);
        assert_error_mentions(g, "bad_reshape: ");
        assert_error_mentions(g, "2x3x4");
        assert_error_mentions(g, "5x5");
        printf("reshape error: %s\n", keel_graph_error(g));
        keel_graph_free(g);
    }
    {
        const int64_t shape[3] = {2, 3, 4};
        keel_graph *g = keel_graph_new();
        keel_node *x = keel_input(g, "x", 3, shape);
        const int64_t target[2] = {5, -1};
        assert_null(keel_reshape(g, "bad_infer", x, 2, target));
        assert_error_mentions(g, "2x3x4");
        keel_graph_free(g);
    }
    {
        const int64_t shape[3] = {2, 3, 4};
        keel_graph *g = keel_graph_new();
        keel_node *x = keel_input(g, "x", 3, shape);
        const int64_t target[3] = {-1, -1, 4};
        assert_null(keel_reshape(g, "two_unknowns", x, 3, target));
        assert_int_equal(keel_graph_status(g), KEEL_ERR_SHAPE);
        keel_graph_free(g);
    }
    {
        const int64_t a_shape[2] = {2, 3}, b_shape[2] = {3, 2};
        keel_graph *g = keel_graph_new();
        keel_node *a = keel_input(g, "a", 2, a_shape), *b = keel_input(g, "b", 2, b_shape);
        assert_null(keel_add(g, "residual", a, b));
        assert_int_equal(keel_graph_status(g), KEEL_ERR_SHAPE);
        assert_error_mentions(g, "residual: ");
        assert_error_mentions(g, "2x3");
        assert_error_mentions(g, "3x2");
        printf("add error: %s\n", keel_graph_error(g));
        keel_graph_free(g);
    }
    {
        const int64_t shape[4] = {2, 3, 4, 4};
        keel_graph *g = keel_graph_new();
        keel_node *parts[2] = {keel_input(g, "a", 4, shape), NULL};
        assert_null(keel_concat(g, "holes", 2, parts));
        assert_int_not_equal(keel_graph_status(g), KEEL_OK);
        keel_graph_free(g);
        g = keel_graph_new();
        assert_null(keel_concat(g, "empty", 0, NULL));
        assert_error_mentions(g, "empty: ");
        keel_graph_free(g);
        g = keel_graph_new();
        keel_node *x = keel_input(g, "x", 4, shape);
        assert_null(keel_slice_channels(g, "outside", x, 2, 2));
        assert_error_mentions(g, "outside: ");
        assert_error_mentions(g, "2x3x4x4");
        keel_graph_free(g);
    }
    {
        keel_graph *g = keel_graph_new();
        keel_node *labels = keel_input_labels(g, "labels", 8);
        assert_null(keel_sigmoid(g, "on_labels", labels));
        assert_error_mentions(g, "float32");
        keel_graph_free(g);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_activations),
        cmocka_unit_test(test_inplace_chain),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_dropout_probability),
        cmocka_unit_test(test_add_scale),
        cmocka_unit_test(test_concat),
        cmocka_unit_test(test_slice),
        cmocka_unit_test(test_flatten_reshape),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
