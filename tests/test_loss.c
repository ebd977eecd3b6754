/* Softmax and the three losses: forward against float64 loops, gradients
 * against central finite differences of the float64 loss, stability at
 * extreme logits, and the errors for bad labels and mismatched shapes. */
#include "support/support.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Forward values are O(1) reductions in float: a 1e-5 relative bound. */
#define FWD_FLOOR 1e-3
#define FWD_TOL 1e-5
/* Gradient elements are O(1/numel) .. O(1); a floor near the smallest
 * meaningful gradient and a bound well above float rounding. */
#define GRAD_FLOOR 1e-3
#define GRAD_TOL 1e-4
#define PAIR_GRAD_FLOOR 1e-2
#define FD_STEP 1e-4
/* Above this many elements a full finite-difference sweep (O(n²)) is too
 * slow under the sanitizers. */
#define FD_MAX_ELEMENTS 4096

static double *to_doubles(const float *x, int64_t n)
{
    double *d = calloc((size_t)n, sizeof *d);
    assert_non_null(d);
    ks_to_double(x, d, n);
    return d;
}

/* logsumexp of a row, stable for any values. */
static double logsumexp(const double *z, int64_t classes)
{
    double max = z[0];
    for (int64_t c = 1; c < classes; c++)
        max = fmax(max, z[c]);
    double sum = 0.0;
    for (int64_t c = 0; c < classes; c++)
        sum += exp(z[c] - max);
    return max + log(sum);
}

static void softmax_ref(const double *x, int64_t rows, int64_t classes, double *y)
{
    for (int64_t n = 0; n < rows; n++) {
        double lse = logsumexp(x + n * classes, classes);
        for (int64_t c = 0; c < classes; c++)
            y[n * classes + c] = exp(x[n * classes + c] - lse);
    }
}

/* ---- softmax ------------------------------------------------------------------ */

enum { SM_ROWS = 5, SM_CLASSES = 7 };

typedef struct softmax_problem {
    double dy[SM_ROWS * SM_CLASSES];
} softmax_problem;

/* f = Σ softmax(x) ⊙ dy */
static double softmax_objective(const double *x, void *user)
{
    const softmax_problem *p = user;
    double y[SM_ROWS * SM_CLASSES];
    softmax_ref(x, SM_ROWS, SM_CLASSES, y);
    double f = 0.0;
    for (int i = 0; i < SM_ROWS * SM_CLASSES; i++)
        f += y[i] * p->dy[i];
    return f;
}

static void test_softmax(void **state)
{
    (void)state;
    enum { N = SM_ROWS * SM_CLASSES };
    keel_graph *g = keel_graph_new();
    int64_t shape[2] = {SM_ROWS, SM_CLASSES};
    keel_node *x = keel_input(g, "x", 2, shape);
    keel_graph_require_grad(g, x);
    keel_node *y = keel_softmax(g, "softmax", x);
    keel_node *dy = keel_input(g, "dy", 2, shape);
    ks_graph_ok(g);
    assert_string_equal(keel_node_op_name(y), "softmax");
    keel_graph_keep(g, y);
    KS_OK(keel_graph_backward_from(g, y, dy));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 1);

    float xf[N], dyf[N], y_got[N], dx_got[N];
    ks_fill_uniform(xf, N, 1, -3.0f, 3.0f);
    ks_fill_uniform(dyf, N, 2, -1.0f, 1.0f);
    xf[3] = 40.0f; /* one dominant logit: the max subtraction must keep it finite */
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_set_input(plan, dy, dyf));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    KS_OK(keel_plan_read(plan, y, y_got));
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, x), dx_got));

    double x64[N], y_want[N], dx_want[N];
    softmax_problem p;
    ks_to_double(xf, x64, N);
    ks_to_double(dyf, p.dy, N);
    softmax_ref(x64, SM_ROWS, SM_CLASSES, y_want);
    ks_check("softmax y", y_got, y_want, N, 1e-6, FWD_TOL);
    for (int n = 0; n < SM_ROWS; n++) {
        double row = 0.0;
        for (int c = 0; c < SM_CLASSES; c++)
            row += y_got[n * SM_CLASSES + c];
        assert_true(fabs(row - 1.0) < 1e-6);
    }
    ks_numeric_grad(softmax_objective, &p, x64, N, FD_STEP, dx_want);
    ks_check("softmax dx", dx_got, dx_want, N, GRAD_FLOOR, GRAD_TOL);

    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* ---- softmax cross-entropy ------------------------------------------------------ */

typedef struct ce_problem {
    int64_t rows, classes;
    const int32_t *labels;
    double scale; /* the dloss the backward pass was seeded with */
} ce_problem;

/* scale · mean over rows of logsumexp(z) − z[label] */
static double ce_objective(const double *z, void *user)
{
    const ce_problem *p = user;
    double total = 0.0;
    for (int64_t n = 0; n < p->rows; n++)
        total += logsumexp(z + n * p->classes, p->classes) - z[n * p->classes + p->labels[n]];
    return p->scale * total / (double)p->rows;
}

/* A loss from logits {rows, classes} and labels; with dloss_value > 0 the
 * backward pass starts from an input holding it (backward_from), otherwise
 * from keel_graph_backward's implicit 1. */
typedef struct ce_run {
    keel_graph *g;
    keel_context *ctx;
    keel_plan *plan;
    keel_node *logits, *labels, *loss, *dloss;
} ce_run;

static ce_run ce_build(int64_t rows, int64_t classes, bool seeded)
{
    ce_run r = {0};
    r.g = keel_graph_new();
    r.logits = keel_input(r.g, "logits", 2, (int64_t[]){rows, classes});
    keel_graph_require_grad(r.g, r.logits);
    r.labels = keel_input_labels(r.g, "labels", rows);
    r.loss = keel_softmax_cross_entropy(r.g, "xent", r.logits, r.labels);
    ks_graph_ok(r.g);
    if (seeded) {
        r.dloss = keel_input(r.g, "dloss", 1, (int64_t[]){1});
        keel_graph_keep(r.g, r.loss);
        KS_OK(keel_graph_backward_from(r.g, r.loss, r.dloss));
    } else {
        KS_OK(keel_graph_backward(r.g, r.loss));
    }
    r.ctx = ks_context();
    r.plan = ks_compile(r.g, r.ctx, 7);
    return r;
}

static void ce_free(ce_run *r)
{
    keel_plan_destroy(r->plan);
    keel_context_destroy(r->ctx);
    keel_graph_free(r->g);
}

static void check_cross_entropy(int64_t rows, int64_t classes, float dloss, uint64_t seed)
{
    int64_t n = rows * classes;
    ce_run r = ce_build(rows, classes, dloss != 1.0f);
    float *zf = malloc((size_t)n * sizeof *zf), *dz_got = malloc((size_t)n * sizeof *dz_got);
    int32_t *labels = malloc((size_t)rows * sizeof *labels);
    double *z64 = NULL, *dz_want = malloc((size_t)n * sizeof *dz_want);
    assert_true(zf && dz_got && labels && dz_want);
    ks_fill_uniform(zf, n, seed, -4.0f, 4.0f);
    for (int64_t i = 0; i < rows; i++)
        labels[i] = (int32_t)((i * 7 + seed) % (uint64_t)classes);
    KS_OK(keel_plan_set_input(r.plan, r.logits, zf));
    KS_OK(keel_plan_set_input(r.plan, r.labels, labels));
    if (r.dloss)
        KS_OK(keel_plan_set_input(r.plan, r.dloss, &dloss));
    KS_OK(keel_plan_forward(r.plan, true));
    KS_OK(keel_plan_backward(r.plan));
    float loss_got;
    KS_OK(keel_plan_read(r.plan, r.loss, &loss_got));
    KS_OK(keel_plan_read(r.plan, keel_graph_grad(r.g, r.logits), dz_got));

    z64 = to_doubles(zf, n);
    ce_problem p = {rows, classes, labels, 1.0};
    double loss_want = ce_objective(z64, &p);
    char what[96];
    snprintf(what, sizeof what, "softmax_cross_entropy[%lldx%lld] loss", (long long)rows, (long long)classes);
    ks_check(what, &loss_got, &loss_want, 1, FWD_FLOOR, FWD_TOL);
    p.scale = dloss;
    if (n <= FD_MAX_ELEMENTS) {
        ks_numeric_grad(ce_objective, &p, z64, n, FD_STEP, dz_want);
    } else {
        /* Finite differences cost O(n²) here: use the closed form instead. */
        double *prob = malloc((size_t)n * sizeof *prob);
        assert_non_null(prob);
        softmax_ref(z64, rows, classes, prob);
        for (int64_t i = 0; i < n; i++)
            dz_want[i] = dloss * (prob[i] - (i % classes == labels[i / classes] ? 1.0 : 0.0)) / (double)rows;
        free(prob);
    }
    snprintf(what, sizeof what, "softmax_cross_entropy[%lldx%lld dloss=%g] dlogits", (long long)rows,
             (long long)classes, (double)dloss);
    /* dz = (p − onehot)/N, so the smallest meaningful entries are ~1/(N·C²). */
    ks_check(what, dz_got, dz_want, n, GRAD_FLOOR / (double)rows, GRAD_TOL);

    free(zf);
    free(dz_got);
    free(labels);
    free(z64);
    free(dz_want);
    ce_free(&r);
}

static void test_cross_entropy(void **state)
{
    (void)state;
    check_cross_entropy(6, 10, 1.0f, 3);
    check_cross_entropy(1, 2, 1.0f, 4);
    /* Large enough that the kernels run their OpenMP paths. */
    check_cross_entropy(64, 600, 1.0f, 5);
}

static void test_cross_entropy_dloss(void **state)
{
    (void)state;
    check_cross_entropy(4, 5, 0.37f, 6);
}

/* Logits of ±80: exp(160) overflows float, the stable form must not. */
static void test_cross_entropy_extreme(void **state)
{
    (void)state;
    enum { ROWS = 4, CLASSES = 6, N = ROWS * CLASSES };
    ce_run r = ce_build(ROWS, CLASSES, false);
    float zf[N], dz_got[N], loss_got;
    ks_fill_uniform(zf, N, 17, -1.0f, 1.0f);
    for (int i = 0; i < N; i++)
        zf[i] = zf[i] >= 0.0f ? 80.0f - zf[i] : -80.0f - zf[i];
    /* Rows 0, 1: the label sits on +80 (loss ~0); rows 2, 3 on −80 (loss ~160). */
    int32_t labels[ROWS];
    for (int n = 0; n < ROWS; n++) {
        labels[n] = 0;
        for (int c = 0; c < CLASSES; c++)
            if ((n < 2) == (zf[n * CLASSES + c] > 0.0f)) {
                labels[n] = c;
                break;
            }
    }
    zf[2 * CLASSES + labels[2]] = -80.0f;
    zf[0 * CLASSES + labels[0]] = 80.0f;
    KS_OK(keel_plan_set_input(r.plan, r.logits, zf));
    KS_OK(keel_plan_set_input(r.plan, r.labels, labels));
    KS_OK(keel_plan_forward(r.plan, true));
    KS_OK(keel_plan_backward(r.plan));
    KS_OK(keel_plan_read(r.plan, r.loss, &loss_got));
    KS_OK(keel_plan_read(r.plan, keel_graph_grad(r.g, r.logits), dz_got));
    assert_true(isfinite(loss_got));

    double z64[N], dz_want[N], prob[N];
    ks_to_double(zf, z64, N);
    ce_problem p = {ROWS, CLASSES, labels, 1.0};
    double loss_want = ce_objective(z64, &p);
    ks_check("softmax_cross_entropy[logits ±80] loss", &loss_got, &loss_want, 1, FWD_FLOOR, FWD_TOL);
    softmax_ref(z64, ROWS, CLASSES, prob);
    for (int n = 0; n < ROWS; n++)
        for (int c = 0; c < CLASSES; c++)
            dz_want[n * CLASSES + c] = (prob[n * CLASSES + c] - (c == labels[n] ? 1.0 : 0.0)) / ROWS;
    for (int i = 0; i < N; i++)
        assert_true(isfinite(dz_got[i]));
    ks_check("softmax_cross_entropy[logits ±80] dlogits", dz_got, dz_want, N, GRAD_FLOOR, GRAD_TOL);
    ce_free(&r);
}

/* A label outside [0, C) is refused at run time with a message that names
 * the sample, the label and C; the plan stays usable. */
static void test_cross_entropy_bad_label(void **state)
{
    (void)state;
    enum { ROWS = 4, CLASSES = 10 };
    ce_run r = ce_build(ROWS, CLASSES, false);
    float zf[ROWS * CLASSES];
    ks_fill_uniform(zf, ROWS * CLASSES, 9, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(r.plan, r.logits, zf));

    int32_t too_big[ROWS] = {0, 3, 12, 1};
    KS_OK(keel_plan_set_input(r.plan, r.labels, too_big));
    assert_int_equal(keel_plan_forward(r.plan, true), KEEL_ERR_INVALID_ARGUMENT);
    const char *err = keel_last_error();
    printf("bad label: %s\n", err);
    assert_non_null(strstr(err, "sample 2"));
    assert_non_null(strstr(err, "12"));
    assert_non_null(strstr(err, "10"));

    int32_t negative[ROWS] = {0, -1, 2, 3};
    KS_OK(keel_plan_set_input(r.plan, r.labels, negative));
    assert_int_equal(keel_plan_forward(r.plan, true), KEEL_ERR_INVALID_ARGUMENT);
    printf("negative label: %s\n", keel_last_error());
    assert_non_null(strstr(keel_last_error(), "sample 1"));
    assert_non_null(strstr(keel_last_error(), "-1"));

    int32_t good[ROWS] = {0, 9, 2, 3};
    KS_OK(keel_plan_set_input(r.plan, r.labels, good));
    KS_OK(keel_plan_forward(r.plan, true));
    KS_OK(keel_plan_backward(r.plan));
    float loss;
    KS_OK(keel_plan_read(r.plan, r.loss, &loss));
    assert_true(isfinite(loss) && loss > 0.0f);
    ce_free(&r);
}

/* ---- MSE and BCE-with-logits ------------------------------------------------------ */

typedef double (*elementwise_loss)(double a, double b);

static double squared_error(double p, double t) { return (p - t) * (p - t); }

static double bce_logits(double x, double t) { return fmax(x, 0.0) - x * t + log1p(exp(-fabs(x))); }

typedef struct pair_problem {
    int64_t n;
    double *a, *b; /* prediction (or logits), target */
    elementwise_loss term;
} pair_problem;

/* mean of term(a_i, b_i); finite differences perturb a or b in place. */
static double pair_objective(const double *unused, void *user)
{
    (void)unused;
    const pair_problem *p = user;
    double total = 0.0;
    for (int64_t i = 0; i < p->n; i++)
        total += p->term(p->a[i], p->b[i]);
    return total / (double)p->n;
}

/* Central differences of the mean loss with respect to each element of x
 * (p->a or p->b). The loss is a sum of per-element terms, so for large n
 * only the perturbed term is re-evaluated: the others cancel exactly. */
static void pair_numeric_grad(pair_problem *p, double *x, double *grad)
{
    if (p->n <= FD_MAX_ELEMENTS) {
        ks_numeric_grad(pair_objective, p, x, p->n, FD_STEP, grad);
        return;
    }
    for (int64_t i = 0; i < p->n; i++) {
        double keep = x[i];
        x[i] = keep + FD_STEP;
        double up = p->term(p->a[i], p->b[i]);
        x[i] = keep - FD_STEP;
        double down = p->term(p->a[i], p->b[i]);
        x[i] = keep;
        grad[i] = (up - down) / (2.0 * FD_STEP) / (double)p->n;
    }
}

typedef keel_node *(*loss_builder)(keel_graph *, const char *, keel_node *, keel_node *);

/* Builds loss(a, b) over `shape`, runs it, and checks the loss and the
 * gradients of a (and of b when b_grad). */
static void check_pair_loss(const char *label, loss_builder build, elementwise_loss term, int ndim,
                            const int64_t *shape, float a_lo, float a_hi, float b_lo, float b_hi, bool b_grad,
                            uint64_t seed)
{
    keel_graph *g = keel_graph_new();
    keel_node *a = keel_input(g, "a", ndim, shape);
    keel_node *b = keel_input(g, "b", ndim, shape);
    keel_graph_require_grad(g, a);
    if (b_grad)
        keel_graph_require_grad(g, b);
    keel_node *loss = build(g, "loss", a, b);
    ks_graph_ok(g);
    int64_t one[1];
    assert_int_equal(keel_node_shape(loss, one), 1);
    assert_int_equal(one[0], 1);
    KS_OK(keel_graph_backward(g, loss));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 11);

    int64_t n = keel_node_numel(a);
    float *af = malloc((size_t)n * sizeof *af), *bf = malloc((size_t)n * sizeof *bf);
    float *grad_got = malloc((size_t)n * sizeof *grad_got);
    double *grad_want = malloc((size_t)n * sizeof *grad_want);
    assert_true(af && bf && grad_got && grad_want);
    ks_fill_uniform(af, n, seed, a_lo, a_hi);
    ks_fill_uniform(bf, n, seed + 1, b_lo, b_hi);
    KS_OK(keel_plan_set_input(plan, a, af));
    KS_OK(keel_plan_set_input(plan, b, bf));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));

    pair_problem p = {n, to_doubles(af, n), to_doubles(bf, n), term};
    float loss_got;
    KS_OK(keel_plan_read(plan, loss, &loss_got));
    double loss_want = pair_objective(NULL, &p);
    char what[96];
    snprintf(what, sizeof what, "%s[n=%lld] loss", label, (long long)n);
    ks_check(what, &loss_got, &loss_want, 1, FWD_FLOOR, FWD_TOL);

    /* Gradients are O(1/n) differences of O(1) floats (p − t, sigmoid(x) − t)
     * whose rounding is ~1e-7 before the 1/n scale: the floor is 1e-2/n. */
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, a), grad_got));
    pair_numeric_grad(&p, p.a, grad_want);
    snprintf(what, sizeof what, "%s[n=%lld] d%s", label, (long long)n, "input");
    ks_check(what, grad_got, grad_want, n, PAIR_GRAD_FLOOR / (double)n, GRAD_TOL);
    if (b_grad) {
        KS_OK(keel_plan_read(plan, keel_graph_grad(g, b), grad_got));
        pair_numeric_grad(&p, p.b, grad_want);
        snprintf(what, sizeof what, "%s[n=%lld] dtarget", label, (long long)n);
        ks_check(what, grad_got, grad_want, n, PAIR_GRAD_FLOOR / (double)n, GRAD_TOL);
    } else {
        assert_null(keel_graph_grad(g, b));
    }

    free(af);
    free(bf);
    free(grad_got);
    free(grad_want);
    free(p.a);
    free(p.b);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static void test_mse(void **state)
{
    (void)state;
    check_pair_loss("mse_loss", keel_mse_loss, squared_error, 3, (int64_t[]){3, 4, 2}, -2.0f, 2.0f, -2.0f, 2.0f,
                    false, 1);
    /* Target computed and differentiated (an autoencoder's): dt = −dp. */
    check_pair_loss("mse_loss[target grad]", keel_mse_loss, squared_error, 2, (int64_t[]){5, 3}, -1.0f, 1.0f,
                    -1.0f, 1.0f, true, 2);
    check_pair_loss("mse_loss", keel_mse_loss, squared_error, 2, (int64_t[]){64, 700}, -1.0f, 1.0f, -1.0f, 1.0f,
                    false, 3);
}

static void test_bce_with_logits(void **state)
{
    (void)state;
    /* Soft targets in [0, 1]; logits wide enough to cover both tails. */
    check_pair_loss("bce_with_logits", keel_bce_with_logits, bce_logits, 2, (int64_t[]){4, 6}, -8.0f, 8.0f, 0.0f,
                    1.0f, false, 4);
    check_pair_loss("bce_with_logits", keel_bce_with_logits, bce_logits, 4, (int64_t[]){2, 3, 5, 5}, -3.0f,
                    3.0f, 0.0f, 1.0f, false, 5);
    check_pair_loss("bce_with_logits", keel_bce_with_logits, bce_logits, 2, (int64_t[]){128, 300}, -4.0f, 4.0f,
                    0.0f, 1.0f, false, 6);
}

/* Logits of ±100 with hard 0/1 targets: the loss is ~0 or ~100 per
 * element and nothing overflows. */
static void test_bce_extreme(void **state)
{
    (void)state;
    enum { N = 4 };
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 1, (int64_t[]){N});
    keel_node *t = keel_input(g, "t", 1, (int64_t[]){N});
    keel_graph_require_grad(g, x);
    keel_node *loss = keel_bce_with_logits(g, "bce", x, t);
    ks_graph_ok(g);
    KS_OK(keel_graph_backward(g, loss));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 1);
    float xf[N] = {100.0f, -100.0f, 100.0f, -100.0f}, tf[N] = {1.0f, 0.0f, 0.0f, 1.0f};
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_set_input(plan, t, tf));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    float loss_got, dx_got[N];
    KS_OK(keel_plan_read(plan, loss, &loss_got));
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, x), dx_got));
    double loss_want = 0.0, dx_want[N];
    for (int i = 0; i < N; i++) {
        loss_want += bce_logits(xf[i], tf[i]) / N;
        dx_want[i] = (1.0 / (1.0 + exp(-(double)xf[i])) - tf[i]) / N;
    }
    ks_check("bce_with_logits[logits ±100] loss", &loss_got, &loss_want, 1, FWD_FLOOR, FWD_TOL);
    ks_check("bce_with_logits[logits ±100] dx", dx_got, dx_want, N, GRAD_FLOOR, GRAD_TOL);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* ---- determinism ------------------------------------------------------------------ */

/* The three losses of one batch with `threads` CPU workers. */
static void losses_with_threads(int threads, const float *z, const float *t, const int32_t *labels, float out[3])
{
    enum { ROWS = 64, CLASSES = 600 };
    keel_graph *g = keel_graph_new();
    int64_t shape[2] = {ROWS, CLASSES};
    keel_node *logits = keel_input(g, "logits", 2, shape);
    keel_node *target = keel_input(g, "target", 2, shape);
    keel_node *label_node = keel_input_labels(g, "labels", ROWS);
    keel_node *loss[3] = {
        keel_softmax_cross_entropy(g, "xent", logits, label_node),
        keel_mse_loss(g, "mse", logits, target),
        keel_bce_with_logits(g, "bce", logits, target),
    };
    ks_graph_ok(g);
    for (int i = 0; i < 3; i++)
        keel_graph_keep(g, loss[i]);
    keel_context_opts copts = {.threads = threads, .log_level = KEEL_LOG_ERROR};
    keel_context *ctx = NULL;
    KS_OK(keel_context_create(&ctx, &copts));
    keel_plan_opts popts = {.devices = "cpu", .seed = 1};
    keel_plan *plan = NULL;
    KS_OK(keel_plan_compile(&plan, g, ctx, &popts));
    KS_OK(keel_plan_set_input(plan, logits, z));
    KS_OK(keel_plan_set_input(plan, target, t));
    KS_OK(keel_plan_set_input(plan, label_node, labels));
    KS_OK(keel_plan_forward(plan, false));
    for (int i = 0; i < 3; i++)
        KS_OK(keel_plan_read(plan, loss[i], &out[i]));
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* Reductions use fixed slices added in a fixed order: the same bits with
 * one, two or three threads. */
static void test_loss_deterministic(void **state)
{
    (void)state;
    enum { ROWS = 64, CLASSES = 600, N = ROWS * CLASSES };
    float *z = malloc(N * sizeof *z), *t = malloc(N * sizeof *t);
    int32_t labels[ROWS];
    assert_true(z && t);
    ks_fill_uniform(z, N, 21, -5.0f, 5.0f);
    ks_fill_uniform(t, N, 22, 0.0f, 1.0f);
    for (int n = 0; n < ROWS; n++)
        labels[n] = (n * 37) % CLASSES;
    float one[3], other[3];
    losses_with_threads(1, z, t, labels, one);
    for (int threads = 2; threads <= 3; threads++) {
        losses_with_threads(threads, z, t, labels, other);
        for (int i = 0; i < 3; i++)
            assert_memory_equal(&one[i], &other[i], sizeof one[i]);
    }
    free(z);
    free(t);
}

/* ---- builder errors ------------------------------------------------------------- */

static void expect_error(keel_graph *g, keel_node *result, const char *part1, const char *part2)
{
    assert_null(result);
    assert_int_not_equal(keel_graph_status(g), KEEL_OK);
    const char *err = keel_graph_error(g);
    printf("error: %s\n", err);
    assert_non_null(strstr(err, part1));
    assert_non_null(strstr(err, part2));
    keel_graph_free(g);
}

static void test_builder_errors(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    keel_node *z = keel_input(g, "z", 2, (int64_t[]){4, 10});
    keel_node *float_labels = keel_input(g, "y", 1, (int64_t[]){4});
    expect_error(g, keel_softmax_cross_entropy(g, "xent", z, float_labels), "xent", "int32");

    g = keel_graph_new();
    z = keel_input(g, "z", 2, (int64_t[]){4, 10});
    keel_node *labels = keel_input_labels(g, "labels", 5);
    expect_error(g, keel_softmax_cross_entropy(g, "xent", z, labels), "4x10", "5");

    g = keel_graph_new();
    z = keel_input(g, "z", 4, (int64_t[]){4, 10, 1, 1});
    labels = keel_input_labels(g, "labels", 4);
    expect_error(g, keel_softmax_cross_entropy(g, "xent", z, labels), "4x10x1x1", "keel_flatten");

    g = keel_graph_new();
    z = keel_input(g, "z", 3, (int64_t[]){2, 3, 4});
    expect_error(g, keel_softmax(g, "sm", z), "sm", "2x3x4");

    g = keel_graph_new();
    keel_node *p = keel_input(g, "p", 2, (int64_t[]){4, 3});
    keel_node *t = keel_input(g, "t", 2, (int64_t[]){4, 5});
    expect_error(g, keel_mse_loss(g, "mse", p, t), "4x3", "4x5");

    g = keel_graph_new();
    p = keel_input(g, "p", 2, (int64_t[]){4, 3});
    t = keel_input(g, "t", 1, (int64_t[]){12});
    expect_error(g, keel_bce_with_logits(g, "bce", p, t), "bce", "same shape");

    g = keel_graph_new();
    p = keel_input(g, "p", 1, (int64_t[]){4});
    labels = keel_input_labels(g, "labels", 4);
    expect_error(g, keel_mse_loss(g, "mse", p, labels), "mse", "float32");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_cross_entropy_dloss),
        cmocka_unit_test(test_cross_entropy_extreme),
        cmocka_unit_test(test_cross_entropy_bad_label),
        cmocka_unit_test(test_mse),
        cmocka_unit_test(test_bce_with_logits),
        cmocka_unit_test(test_bce_extreme),
        cmocka_unit_test(test_loss_deterministic),
        cmocka_unit_test(test_builder_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
