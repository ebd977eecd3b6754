/* Convolution: conv2d and conv_transpose2d forward against float64 loops,
 * every gradient (input, weight, bias) against central finite differences
 * in float64, shapes, parameter counts, default initialisers and the sticky
 * errors of impossible layers. */
#include "support/support.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Forward outputs and gradients are float32 sums of up to a few thousand
 * products of values below 1; measured against float64 they stay near 1e-5
 * relative. An element's error is relative to max(|want|, FLOOR * the
 * largest |want| of the tensor, FLOOR), so sums that cancel to nearly zero
 * are judged on the scale of their tensor. */
#define FLOOR 0.05
#define TOL 1e-4

/* ---- the float64 reference ----------------------------------------------- */

typedef struct conv_case {
    const char *label;
    bool transpose;
    int64_t batch, channels, height, width;   /* the layer's input x */
    int out_channels;
    keel_conv2d_opts opts;
    /* Big enough for the kernels' threaded loops; checked against the
     * float64 adjoint loops instead of finite differences, which would take
     * minutes here. The small cases check those loops against finite
     * differences. */
    bool large;
} conv_case;

/* A case with every option spelled out (0 -> 1 resolved), and the float64
 * tensors the finite differences perturb. */
typedef struct reference {
    const conv_case *c;
    int stride_h, stride_w, dilation_h, dilation_w, groups;
    int64_t out_h, out_w;
    int64_t x_count, w_count, b_count, y_count;
    double *x, *w, *b, *dy, *y;   /* b is NULL without bias */
} reference;

static int or_one(int v) { return v ? v : 1; }

static void reference_init(reference *r, const conv_case *c)
{
    const keel_conv2d_opts *o = &c->opts;
    *r = (reference){.c = c, .stride_h = or_one(o->stride_h), .stride_w = or_one(o->stride_w),
                     .dilation_h = or_one(o->dilation_h), .dilation_w = or_one(o->dilation_w),
                     .groups = or_one(o->groups)};
    int64_t extent_h = (int64_t)r->dilation_h * (o->kernel_h - 1) + 1;
    int64_t extent_w = (int64_t)r->dilation_w * (o->kernel_w - 1) + 1;
    if (c->transpose) {
        r->out_h = (c->height - 1) * r->stride_h - o->pad_top - o->pad_bottom + extent_h + o->output_pad_h;
        r->out_w = (c->width - 1) * r->stride_w - o->pad_left - o->pad_right + extent_w + o->output_pad_w;
        r->w_count = c->channels * (c->out_channels / r->groups) * o->kernel_h * o->kernel_w;
    } else {
        r->out_h = (c->height + o->pad_top + o->pad_bottom - extent_h) / r->stride_h + 1;
        r->out_w = (c->width + o->pad_left + o->pad_right - extent_w) / r->stride_w + 1;
        r->w_count = c->out_channels * (c->channels / r->groups) * o->kernel_h * o->kernel_w;
    }
    r->x_count = c->batch * c->channels * c->height * c->width;
    r->b_count = o->no_bias ? 0 : c->out_channels;
    r->y_count = c->batch * c->out_channels * r->out_h * r->out_w;
    r->x = calloc((size_t)r->x_count, sizeof(double));
    r->w = calloc((size_t)r->w_count, sizeof(double));
    r->b = r->b_count ? calloc((size_t)r->b_count, sizeof(double)) : NULL;
    r->dy = calloc((size_t)r->y_count, sizeof(double));
    r->y = calloc((size_t)r->y_count, sizeof(double));
    assert_true(r->x && r->w && r->dy && r->y && (r->b || !r->b_count));
}

static void reference_free(reference *r)
{
    free(r->x);
    free(r->w);
    free(r->b);
    free(r->dy);
    free(r->y);
}

/* y[n,k,p,q] = b[k] + sum over c in k's group, i, j of
 *              w[k,c,i,j] * x[n, c, p*sh - pad_top + i*dh, q*sw - pad_left + j*dw] */
static void conv2d_naive(const reference *r, double *y)
{
    const conv_case *c = r->c;
    const keel_conv2d_opts *o = &c->opts;
    const int64_t C = c->channels, H = c->height, W = c->width, K = c->out_channels;
    const int64_t in_group = C / r->groups, out_group = K / r->groups;
    for (int64_t n = 0; n < c->batch; n++)
        for (int64_t k = 0; k < K; k++)
            for (int64_t p = 0; p < r->out_h; p++)
                for (int64_t q = 0; q < r->out_w; q++) {
                    double sum = r->b ? r->b[k] : 0.0;
                    for (int64_t cl = 0; cl < in_group; cl++) {
                        int64_t ch = (k / out_group) * in_group + cl;
                        for (int i = 0; i < o->kernel_h; i++)
                            for (int j = 0; j < o->kernel_w; j++) {
                                int64_t ih = p * r->stride_h - o->pad_top + (int64_t)i * r->dilation_h;
                                int64_t iw = q * r->stride_w - o->pad_left + (int64_t)j * r->dilation_w;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W)
                                    continue;
                                sum += r->w[((k * in_group + cl) * o->kernel_h + i) * o->kernel_w + j] *
                                       r->x[((n * C + ch) * H + ih) * W + iw];
                            }
                    }
                    y[((n * K + k) * r->out_h + p) * r->out_w + q] = sum;
                }
}

/* PyTorch's definition: every input pixel scatters x[n,ci,h,w] * w[ci,co,i,j]
 * onto y[n, co, h*sh - pad_top + i*dh, w*sw - pad_left + j*dw]. */
static void conv_transpose2d_naive(const reference *r, double *y)
{
    const conv_case *c = r->c;
    const keel_conv2d_opts *o = &c->opts;
    const int64_t C = c->channels, H = c->height, W = c->width, K = c->out_channels;
    const int64_t in_group = C / r->groups, out_group = K / r->groups;
    for (int64_t n = 0; n < c->batch; n++)
        for (int64_t k = 0; k < K; k++)
            for (int64_t i = 0; i < r->out_h * r->out_w; i++)
                y[(n * K + k) * r->out_h * r->out_w + i] = r->b ? r->b[k] : 0.0;
    for (int64_t n = 0; n < c->batch; n++)
        for (int64_t ci = 0; ci < C; ci++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++) {
                    double xv = r->x[((n * C + ci) * H + h) * W + w];
                    for (int64_t kl = 0; kl < out_group; kl++) {
                        int64_t co = (ci / in_group) * out_group + kl;
                        for (int i = 0; i < o->kernel_h; i++)
                            for (int j = 0; j < o->kernel_w; j++) {
                                int64_t oh = h * r->stride_h - o->pad_top + (int64_t)i * r->dilation_h;
                                int64_t ow = w * r->stride_w - o->pad_left + (int64_t)j * r->dilation_w;
                                if (oh < 0 || oh >= r->out_h || ow < 0 || ow >= r->out_w)
                                    continue;
                                y[((n * K + co) * r->out_h + oh) * r->out_w + ow] +=
                                    xv * r->w[((ci * out_group + kl) * o->kernel_h + i) * o->kernel_w + j];
                            }
                    }
                }
}

static void naive_forward(const reference *r, double *y)
{
    if (r->c->transpose)
        conv_transpose2d_naive(r, y);
    else
        conv2d_naive(r, y);
}

/* The adjoint of conv2d_naive: every product w*x that made y[n,k,p,q]
 * sends dy[n,k,p,q] back to both factors. */
static void conv2d_naive_backward(const reference *r, double *dx, double *dw, double *db)
{
    const conv_case *c = r->c;
    const keel_conv2d_opts *o = &c->opts;
    const int64_t C = c->channels, H = c->height, W = c->width, K = c->out_channels;
    const int64_t in_group = C / r->groups, out_group = K / r->groups;
    for (int64_t n = 0; n < c->batch; n++)
        for (int64_t k = 0; k < K; k++)
            for (int64_t p = 0; p < r->out_h; p++)
                for (int64_t q = 0; q < r->out_w; q++) {
                    double g = r->dy[((n * K + k) * r->out_h + p) * r->out_w + q];
                    if (db)
                        db[k] += g;
                    for (int64_t cl = 0; cl < in_group; cl++) {
                        int64_t ch = (k / out_group) * in_group + cl;
                        for (int i = 0; i < o->kernel_h; i++)
                            for (int j = 0; j < o->kernel_w; j++) {
                                int64_t ih = p * r->stride_h - o->pad_top + (int64_t)i * r->dilation_h;
                                int64_t iw = q * r->stride_w - o->pad_left + (int64_t)j * r->dilation_w;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W)
                                    continue;
                                int64_t wi = ((k * in_group + cl) * o->kernel_h + i) * o->kernel_w + j;
                                int64_t xi = ((n * C + ch) * H + ih) * W + iw;
                                dw[wi] += g * r->x[xi];
                                dx[xi] += g * r->w[wi];
                            }
                    }
                }
}

/* The adjoint of conv_transpose2d_naive. */
static void conv_transpose2d_naive_backward(const reference *r, double *dx, double *dw, double *db)
{
    const conv_case *c = r->c;
    const keel_conv2d_opts *o = &c->opts;
    const int64_t C = c->channels, H = c->height, W = c->width, K = c->out_channels;
    const int64_t in_group = C / r->groups, out_group = K / r->groups;
    const int64_t plane = r->out_h * r->out_w;
    if (db)
        for (int64_t n = 0; n < c->batch; n++)
            for (int64_t k = 0; k < K; k++)
                for (int64_t i = 0; i < plane; i++)
                    db[k] += r->dy[(n * K + k) * plane + i];
    for (int64_t n = 0; n < c->batch; n++)
        for (int64_t ci = 0; ci < C; ci++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++) {
                    int64_t xi = ((n * C + ci) * H + h) * W + w;
                    for (int64_t kl = 0; kl < out_group; kl++) {
                        int64_t co = (ci / in_group) * out_group + kl;
                        for (int i = 0; i < o->kernel_h; i++)
                            for (int j = 0; j < o->kernel_w; j++) {
                                int64_t oh = h * r->stride_h - o->pad_top + (int64_t)i * r->dilation_h;
                                int64_t ow = w * r->stride_w - o->pad_left + (int64_t)j * r->dilation_w;
                                if (oh < 0 || oh >= r->out_h || ow < 0 || ow >= r->out_w)
                                    continue;
                                double g = r->dy[((n * K + co) * r->out_h + oh) * r->out_w + ow];
                                int64_t wi = ((ci * out_group + kl) * o->kernel_h + i) * o->kernel_w + j;
                                dx[xi] += g * r->w[wi];
                                dw[wi] += g * r->x[xi];
                            }
                    }
                }
}

/* Gradients of sum(y * dy) from the adjoint loops, into zeroed arrays. */
static void naive_backward(const reference *r, double *dx, double *dw, double *db)
{
    if (r->c->transpose)
        conv_transpose2d_naive_backward(r, dx, dw, db);
    else
        conv2d_naive_backward(r, dx, dw, db);
}

/* f = sum(y * dy): its gradient with respect to x, w or b is what the
 * backward pass computes for the output gradient dy. The perturbed array is
 * one of r->x, r->w, r->b itself. */
static double loss_of(const double *perturbed, void *user)
{
    (void)perturbed;
    reference *r = user;
    naive_forward(r, r->y);
    double sum = 0.0;
    for (int64_t i = 0; i < r->y_count; i++)
        sum += r->y[i] * r->dy[i];
    return sum;
}

static double *numeric_grad(reference *r, double *values, int64_t n)
{
    double *grad = calloc((size_t)n, sizeof *grad);
    assert_non_null(grad);
    ks_numeric_grad(loss_of, r, values, n, 1e-3, grad);
    return grad;
}

/* ---- running a case through keel ------------------------------------------ */

typedef struct conv_run {
    float *y, *dx, *dw, *db;
} conv_run;

static void conv_run_free(conv_run *run)
{
    free(run->y);
    free(run->dx);
    free(run->dw);
    free(run->db);
}

static void check_param_shape(keel_plan *plan, const char *name, int ndim, const int64_t *want)
{
    for (int i = 0; i < keel_plan_param_count(plan); i++) {
        keel_param_info info;
        KS_OK(keel_plan_param_info(plan, i, &info));
        if (strcmp(info.name, name) != 0)
            continue;
        assert_int_equal(info.ndim, ndim);
        for (int d = 0; d < ndim; d++)
            assert_int_equal(info.shape[d], want[d]);
        return;
    }
    fail_msg("no parameter %s", name);
}

static void forward_backward(keel_plan *plan, keel_graph *g, keel_node *x, keel_node *y, const reference *r,
                             conv_run *run)
{
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    run->y = malloc((size_t)r->y_count * sizeof(float));
    run->dx = malloc((size_t)r->x_count * sizeof(float));
    run->dw = malloc((size_t)r->w_count * sizeof(float));
    run->db = malloc((size_t)(r->b_count ? r->b_count : 1) * sizeof(float));
    assert_true(run->y && run->dx && run->dw && run->db);
    KS_OK(keel_plan_read(plan, y, run->y));
    keel_node *dx = keel_graph_grad(g, x);
    assert_non_null(dx);
    KS_OK(keel_plan_read(plan, dx, run->dx));
    KS_OK(keel_plan_grad_get(plan, "conv.weight", run->dw, r->w_count));
    if (r->b_count)
        KS_OK(keel_plan_grad_get(plan, "conv.bias", run->db, r->b_count));
}

/* ks_check with the floor scaled to the tensor (see FLOOR). */
static void check_scaled(const char *what, const float *got, const double *want, int64_t n)
{
    double largest = 0.0;
    for (int64_t i = 0; i < n; i++)
        largest = fmax(largest, fabs(want[i]));
    ks_check(what, got, want, n, FLOOR * fmax(largest, 1.0), TOL);
}

static void check_against(const char *label, const char *what, const float *got, const double *want, int64_t n)
{
    char text[128];
    snprintf(text, sizeof text, "%s %s", label, what);
    check_scaled(text, got, want, n);
}

static double max_difference(const double *a, const double *b, int64_t n)
{
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++)
        worst = fmax(worst, fabs(a[i] - b[i]));
    return worst;
}

static void run_case(void **state)
{
    const conv_case *c = *state;
    reference r;
    reference_init(&r, c);
    uint64_t seed = 1000 + (uint64_t)c->batch * 7 + (uint64_t)c->channels * 13 + (uint64_t)c->out_channels;

    keel_graph *g = keel_graph_new();
    assert_non_null(g);
    int64_t x_shape[4] = {c->batch, c->channels, c->height, c->width};
    keel_node *x = keel_input(g, "x", 4, x_shape);
    keel_graph_require_grad(g, x);
    keel_node *y = c->transpose ? keel_conv_transpose2d(g, "conv", x, c->out_channels, &c->opts)
                                : keel_conv2d(g, "conv", x, c->out_channels, &c->opts);
    ks_graph_ok(g);
    int64_t y_shape[KEEL_MAX_DIMS];
    assert_int_equal(keel_node_shape(y, y_shape), 4);
    int64_t want_shape[4] = {c->batch, c->out_channels, r.out_h, r.out_w};
    for (int d = 0; d < 4; d++)
        assert_int_equal(y_shape[d], want_shape[d]);
    assert_int_equal(keel_graph_param_count(g), r.w_count + r.b_count);
    keel_graph_keep(g, y);
    keel_node *dy = keel_input(g, "dy", 4, y_shape);
    KS_OK(keel_graph_backward_from(g, y, dy));

    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, seed);
    const keel_conv2d_opts *o = &c->opts;
    int64_t w_shape[4] = {c->transpose ? c->channels : c->out_channels,
                          (c->transpose ? c->out_channels : c->channels) / r.groups, o->kernel_h, o->kernel_w};
    check_param_shape(plan, "conv.weight", 4, w_shape);

    float *xf = malloc((size_t)r.x_count * sizeof *xf), *dyf = malloc((size_t)r.y_count * sizeof *dyf);
    assert_true(xf && dyf);
    ks_fill_uniform(xf, r.x_count, seed + 1, -1.0f, 1.0f);
    ks_fill_uniform(dyf, r.y_count, seed + 2, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_set_input(plan, dy, dyf));
    float *wf = ks_param_random(plan, "conv.weight", r.w_count, seed + 3, -0.5f, 0.5f);
    float *bf = r.b_count ? ks_param_random(plan, "conv.bias", r.b_count, seed + 4, -0.5f, 0.5f) : NULL;
    ks_to_double(xf, r.x, r.x_count);
    ks_to_double(dyf, r.dy, r.y_count);
    ks_to_double(wf, r.w, r.w_count);
    if (bf)
        ks_to_double(bf, r.b, r.b_count);

    conv_run first = {0}, second = {0};
    forward_backward(plan, g, x, y, &r, &first);

    double *want_y = calloc((size_t)r.y_count, sizeof *want_y);
    assert_non_null(want_y);
    naive_forward(&r, want_y);
    check_against(c->label, "y", first.y, want_y, r.y_count);
    double *want_dx = calloc((size_t)r.x_count, sizeof *want_dx);
    double *want_dw = calloc((size_t)r.w_count, sizeof *want_dw);
    double *want_db = calloc((size_t)(r.b_count ? r.b_count : 1), sizeof *want_db);
    assert_true(want_dx && want_dw && want_db);
    naive_backward(&r, want_dx, want_dw, r.b_count ? want_db : NULL);
    if (!c->large) {
        /* The adjoint loops agree with finite differences, so either may
         * serve as the reference. */
        double *fd_dx = numeric_grad(&r, r.x, r.x_count);
        double *fd_dw = numeric_grad(&r, r.w, r.w_count);
        double *fd_db = r.b_count ? numeric_grad(&r, r.b, r.b_count) : NULL;
        assert_true(max_difference(fd_dx, want_dx, r.x_count) < 1e-8);
        assert_true(max_difference(fd_dw, want_dw, r.w_count) < 1e-8);
        if (fd_db)
            assert_true(max_difference(fd_db, want_db, r.b_count) < 1e-8);
        free(want_dx);
        free(want_dw);
        free(want_db);
        want_dx = fd_dx;
        want_dw = fd_dw;
        want_db = fd_db;
    }
    check_against(c->label, "dx", first.dx, want_dx, r.x_count);
    check_against(c->label, "dw", first.dw, want_dw, r.w_count);
    if (r.b_count)
        check_against(c->label, "db", first.db, want_db, r.b_count);

    /* Same thread count, same bits. */
    forward_backward(plan, g, x, y, &r, &second);
    assert_memory_equal(first.y, second.y, (size_t)r.y_count * sizeof(float));
    assert_memory_equal(first.dx, second.dx, (size_t)r.x_count * sizeof(float));
    assert_memory_equal(first.dw, second.dw, (size_t)r.w_count * sizeof(float));
    if (r.b_count)
        assert_memory_equal(first.db, second.db, (size_t)r.b_count * sizeof(float));

    free(want_y);
    free(want_dx);
    free(want_dw);
    free(want_db);
    conv_run_free(&first);
    conv_run_free(&second);
    free(xf);
    free(dyf);
    free(wf);
    free(bf);
    reference_free(&r);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* ---- the cases: small shapes, H != W so a swapped axis shows ---------------- */

#define KERNEL(h, w) .kernel_h = (h), .kernel_w = (w)
#define STRIDE(h, w) .stride_h = (h), .stride_w = (w)
#define PAD(top, bottom, left, right) \
    .pad_top = (top), .pad_bottom = (bottom), .pad_left = (left), .pad_right = (right)
#define DILATION(h, w) .dilation_h = (h), .dilation_w = (w)
#define OUTPUT_PAD(h, w) .output_pad_h = (h), .output_pad_w = (w)

/* label, transpose, x {N, C, H, W}, out_channels, options */
static const conv_case cases[] = {
    {"conv2d[3x3 pad 1]", false, 2, 3, 7, 6, 4, {KERNEL(3, 3), PAD(1, 1, 1, 1)}},
    {"conv2d[3x3 unpadded]", false, 2, 3, 6, 7, 5, {KERNEL(3, 3)}},
    {"conv2d[1x5]", false, 2, 3, 5, 8, 4, {KERNEL(1, 5), PAD(0, 0, 2, 2)}},
    {"conv2d[5x1]", false, 2, 3, 8, 5, 4, {KERNEL(5, 1), PAD(2, 2, 0, 0)}},
    {"conv2d[1x1]", false, 2, 6, 5, 4, 3, {KERNEL(1, 1)}},
    {"conv2d[1x1 stride=2]", false, 2, 4, 7, 6, 3, {KERNEL(1, 1), STRIDE(2, 2)}},
    {"conv2d[stride=2]", false, 2, 3, 9, 8, 4, {KERNEL(3, 3), STRIDE(2, 2), PAD(1, 1, 1, 1)}},
    {"conv2d[5x5 stride=3 pad 2]", false, 1, 2, 11, 10, 3, {KERNEL(5, 5), STRIDE(3, 3), PAD(2, 2, 2, 2)}},
    {"conv2d[asym pad]", false, 2, 3, 6, 5, 4, {KERNEL(3, 3), PAD(0, 2, 2, 1)}},
    {"conv2d[asym pad stride 2x1]", false, 1, 2, 7, 6, 3, {KERNEL(3, 2), STRIDE(2, 1), PAD(2, 0, 0, 1)}},
    {"conv2d[dilation=2]", false, 2, 3, 7, 8, 4, {KERNEL(3, 3), PAD(2, 2, 2, 2), DILATION(2, 2)}},
    {"conv2d[groups=2]", false, 2, 4, 6, 5, 6, {KERNEL(3, 3), PAD(1, 1, 1, 1), .groups = 2}},
    {"conv2d[depthwise]", false, 2, 4, 6, 7, 4, {KERNEL(3, 3), PAD(1, 1, 1, 1), .groups = 4}},
    {"conv2d[depthwise x2 stride 2]", false, 1, 3, 5, 6, 6, {KERNEL(3, 3), STRIDE(2, 2), PAD(1, 1, 0, 0),
                                                             .groups = 3}},
    {"conv2d[1x1 groups=2]", false, 2, 4, 3, 5, 6, {KERNEL(1, 1), .groups = 2}},
    {"conv2d[no bias]", false, 2, 3, 6, 5, 4, {KERNEL(3, 3), PAD(1, 1, 1, 1), .no_bias = true}},
    {"conv_transpose2d[s2 p1 op1]", true, 2, 4, 4, 5, 3, {KERNEL(3, 3), STRIDE(2, 2), PAD(1, 1, 1, 1),
                                                           OUTPUT_PAD(1, 1)}},
    {"conv_transpose2d[s2 p1 op1 groups=2]", true, 2, 4, 3, 4, 6, {KERNEL(3, 3), STRIDE(2, 2), PAD(1, 1, 1, 1),
                                                                    OUTPUT_PAD(1, 1), .groups = 2}},
    {"conv_transpose2d[4x4 s2 p1]", true, 2, 3, 3, 4, 2, {KERNEL(4, 4), STRIDE(2, 2), PAD(1, 1, 1, 1)}},
    {"conv_transpose2d[3x3 s1]", true, 2, 3, 4, 5, 2, {KERNEL(3, 3)}},
    {"conv_transpose2d[1x1]", true, 2, 4, 3, 5, 3, {KERNEL(1, 1)}},
    {"conv_transpose2d[2x3 dilation asym op]", true, 1, 2, 3, 4, 3, {KERNEL(2, 3), STRIDE(2, 3), PAD(1, 0, 0, 2),
                                                                      DILATION(2, 1), OUTPUT_PAD(1, 2)}},
    {"conv_transpose2d[no bias]", true, 2, 3, 3, 4, 2, {KERNEL(3, 3), STRIDE(2, 2), .no_bias = true}},
    {"conv2d[large 3x3 threaded]", false, 4, 8, 24, 24, 16, {KERNEL(3, 3), PAD(1, 1, 1, 1)}, .large = true},
    {"conv2d[large 5x3 stride 2 groups=2 threaded]", false, 2, 16, 40, 36, 8,
     {KERNEL(5, 3), STRIDE(2, 2), PAD(2, 1, 1, 1), .groups = 2}, .large = true},
    {"conv_transpose2d[large s2 p1 op1 threaded]", true, 2, 16, 12, 12, 32,
     {KERNEL(3, 3), STRIDE(2, 2), PAD(1, 1, 1, 1), OUTPUT_PAD(1, 1)}, .large = true},
};

/* ---- two layers: a data gradient feeding the weight gradient before it ---- */

typedef struct chain {
    reference down, up;   /* down's output is up's input */
} chain;

static double chain_loss(const double *perturbed, void *user)
{
    (void)perturbed;
    chain *ch = user;
    naive_forward(&ch->down, ch->down.y);
    memcpy(ch->up.x, ch->down.y, (size_t)ch->down.y_count * sizeof(double));
    return loss_of(NULL, &ch->up);
}

static void check_chain_param(keel_plan *plan, chain *ch, const char *name, double *values, int64_t n)
{
    float *got = malloc((size_t)n * sizeof *got);
    double *want = calloc((size_t)n, sizeof *want);
    assert_true(got && want);
    KS_OK(keel_plan_grad_get(plan, name, got, n));
    ks_numeric_grad(chain_loss, ch, values, n, 1e-3, want);
    char label[96];
    snprintf(label, sizeof label, "conv2d+conv_transpose2d chain grad %s", name);
    check_scaled(label, got, want, n);
    free(got);
    free(want);
}

/* x -> conv2d stride 2 -> conv_transpose2d stride 2 -> y. x asks for no
 * gradient, so the first layer gets no data gradient node at all. */
static void test_chain(void **state)
{
    (void)state;
    static const conv_case down = {"down", false, 2, 3, 8, 7, 4, {KERNEL(3, 3), STRIDE(2, 2), PAD(1, 1, 1, 1)}};
    static const conv_case up = {"up", true, 2, 4, 4, 4, 3,
                                 {KERNEL(3, 3), STRIDE(2, 2), PAD(1, 1, 1, 1), OUTPUT_PAD(1, 1)}};
    chain ch;
    reference_init(&ch.down, &down);
    reference_init(&ch.up, &up);
    assert_int_equal(ch.down.y_count, ch.up.x_count);

    keel_graph *g = keel_graph_new();
    int64_t x_shape[4] = {2, 3, 8, 7};
    keel_node *x = keel_input(g, "x", 4, x_shape);
    keel_node *h = keel_conv2d(g, "down", x, 4, &down.opts);
    keel_node *y = keel_conv_transpose2d(g, "up", h, 3, &up.opts);
    ks_graph_ok(g);
    int64_t y_shape[KEEL_MAX_DIMS];
    keel_node_shape(y, y_shape);
    assert_int_equal(y_shape[2], 8);
    assert_int_equal(y_shape[3], 8);
    keel_graph_keep(g, y);
    keel_node *dy = keel_input(g, "dy", 4, y_shape);
    KS_OK(keel_graph_backward_from(g, y, dy));
    assert_null(keel_graph_grad(g, x));
    assert_null(keel_graph_find(g, "down.dx"));
    assert_non_null(keel_graph_find(g, "up.dx"));

    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 99);
    float *xf = malloc((size_t)ch.down.x_count * sizeof *xf), *dyf = malloc((size_t)ch.up.y_count * sizeof *dyf);
    float *yf = malloc((size_t)ch.up.y_count * sizeof *yf);
    assert_true(xf && dyf && yf);
    ks_fill_uniform(xf, ch.down.x_count, 5, -1.0f, 1.0f);
    ks_fill_uniform(dyf, ch.up.y_count, 6, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_set_input(plan, dy, dyf));
    float *params[4] = {
        ks_param_random(plan, "down.weight", ch.down.w_count, 7, -0.5f, 0.5f),
        ks_param_random(plan, "down.bias", ch.down.b_count, 8, -0.5f, 0.5f),
        ks_param_random(plan, "up.weight", ch.up.w_count, 9, -0.5f, 0.5f),
        ks_param_random(plan, "up.bias", ch.up.b_count, 10, -0.5f, 0.5f),
    };
    ks_to_double(xf, ch.down.x, ch.down.x_count);
    ks_to_double(dyf, ch.up.dy, ch.up.y_count);
    ks_to_double(params[0], ch.down.w, ch.down.w_count);
    ks_to_double(params[1], ch.down.b, ch.down.b_count);
    ks_to_double(params[2], ch.up.w, ch.up.w_count);
    ks_to_double(params[3], ch.up.b, ch.up.b_count);
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));

    KS_OK(keel_plan_read(plan, y, yf));
    chain_loss(NULL, &ch);
    check_scaled("conv2d+conv_transpose2d chain y", yf, ch.up.y, ch.up.y_count);
    check_chain_param(plan, &ch, "down.weight", ch.down.w, ch.down.w_count);
    check_chain_param(plan, &ch, "down.bias", ch.down.b, ch.down.b_count);
    check_chain_param(plan, &ch, "up.weight", ch.up.w, ch.up.w_count);
    check_chain_param(plan, &ch, "up.bias", ch.up.b, ch.up.b_count);

    for (int i = 0; i < 4; i++)
        free(params[i]);
    free(xf);
    free(dyf);
    free(yf);
    reference_free(&ch.down);
    reference_free(&ch.up);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* ---- shapes, parameter counts, FLOPs ---------------------------------------- */

static void test_alexnet_conv1_shape(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    int64_t shape[4] = {1, 3, 227, 227};
    keel_node *x = keel_input(g, "data", 4, shape);
    keel_conv2d_opts opts = keel_conv_opts(11, 4, 0);
    keel_node *y = keel_conv2d(g, "conv1", x, 96, &opts);
    ks_graph_ok(g);
    int64_t out[KEEL_MAX_DIMS];
    assert_int_equal(keel_node_shape(y, out), 4);
    assert_int_equal(out[0], 1);
    assert_int_equal(out[1], 96);
    assert_int_equal(out[2], 55);
    assert_int_equal(out[3], 55);
    assert_int_equal(keel_graph_param_count(g), 34944);

    /* 96*55*55 outputs of 3*11*11 multiply-adds each, 2 FLOPs apiece. */
    bool found = false;
    for (int i = 0; i < keel_graph_layer_count(g); i++) {
        keel_layer_info info;
        KS_OK(keel_graph_layer_info(g, i, &info));
        if (strcmp(info.name, "conv1") != 0)
            continue;
        found = true;
        assert_int_equal(info.params, 34944);
        assert_true(fabs(info.flops - 210830400.0) < 0.5);
    }
    assert_true(found);
    keel_graph_free(g);
}

static void test_transpose_shape(void **state)
{
    (void)state;
    /* DCGAN's generator: 4x4 kernels, stride 2, padding 1 double the size. */
    keel_graph *g = keel_graph_new();
    int64_t shape[4] = {8, 512, 4, 4};
    keel_node *x = keel_input(g, "z", 4, shape);
    keel_conv2d_opts opts = keel_conv_opts(4, 2, 1);
    opts.no_bias = true;
    keel_node *y = keel_conv_transpose2d(g, "up", x, 256, &opts);
    ks_graph_ok(g);
    int64_t out[KEEL_MAX_DIMS];
    assert_int_equal(keel_node_shape(y, out), 4);
    assert_int_equal(out[1], 256);
    assert_int_equal(out[2], 8);
    assert_int_equal(out[3], 8);
    assert_int_equal(keel_graph_param_count(g), 512 * 256 * 16);
    /* Every input pixel meets 256*4*4 weights: 2*8*512*4*4*256*16 FLOPs. */
    keel_layer_info info;
    KS_OK(keel_graph_layer_info(g, 0, &info));
    assert_string_equal(info.name, "up");
    assert_true(fabs(info.flops - 536870912.0) < 0.5);
    keel_graph_free(g);
}

/* Defaults as PyTorch: weight and bias in U(-1/sqrt(fan_in), 1/sqrt(fan_in));
 * for the transpose fan_in comes from weight dimension 1 (C_out/groups*kh*kw). */
static void check_uniform_bound(keel_plan *plan, const char *name, int64_t n, double bound)
{
    float *v = malloc((size_t)n * sizeof *v);
    assert_non_null(v);
    KS_OK(keel_plan_param_get(plan, name, v, n));
    double largest = 0.0;
    for (int64_t i = 0; i < n; i++) {
        assert_true(fabs(v[i]) <= bound * (1.0 + 1e-6));
        largest = fmax(largest, fabs(v[i]));
    }
    /* With hundreds of draws the largest comes close to the bound. */
    assert_true(largest > 0.8 * bound);
    free(v);
}

static void test_default_init(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    int64_t shape[4] = {1, 6, 8, 8};
    keel_node *x = keel_input(g, "x", 4, shape);
    keel_conv2d_opts opts = keel_conv_opts(3, 1, 1);
    opts.groups = 2;
    keel_node *y = keel_conv2d(g, "conv", x, 40, &opts);
    keel_conv2d_opts up = keel_conv_opts(2, 2, 0);
    keel_node *z = keel_conv_transpose2d(g, "up", y, 30, &up);
    keel_conv2d_opts fixed = keel_conv_opts(1, 1, 0);
    fixed.weight_init = keel_init_constant(0.25f);
    fixed.bias_init = keel_init_constant(-0.5f);
    keel_conv2d(g, "fixed", z, 2, &fixed);
    ks_graph_ok(g);

    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 7);
    double conv_fan_in = 3 * 3 * 3;   /* 6/2 channels * 3*3 */
    check_uniform_bound(plan, "conv.weight", 40 * 3 * 9, 1.0 / sqrt(conv_fan_in));
    check_uniform_bound(plan, "conv.bias", 40, 1.0 / sqrt(conv_fan_in));
    double up_fan_in = 30 * 2 * 2;    /* weight {40, 30, 2, 2}: dimension 1 */
    check_uniform_bound(plan, "up.weight", 40 * 30 * 4, 1.0 / sqrt(up_fan_in));
    check_uniform_bound(plan, "up.bias", 30, 1.0 / sqrt(up_fan_in));
    float w[60], b[2];
    KS_OK(keel_plan_param_get(plan, "fixed.weight", w, 60));
    KS_OK(keel_plan_param_get(plan, "fixed.bias", b, 2));
    for (int i = 0; i < 60; i++)
        assert_true(w[i] == 0.25f);
    assert_true(b[0] == -0.5f && b[1] == -0.5f);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* ---- sticky errors ---------------------------------------------------------- */

/* Builds one bad layer on a fresh graph and checks the message names the
 * layer, the input shape and each of `phrases`; later builder calls return
 * NULL and keep the first message. */
static void expect_error(bool transpose, int ndim, const int64_t *shape, int out_channels,
                         const keel_conv2d_opts *opts, const char *const *phrases)
{
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", ndim, shape);
    keel_node *y = transpose ? keel_conv_transpose2d(g, "bad_layer", x, out_channels, opts)
                             : keel_conv2d(g, "bad_layer", x, out_channels, opts);
    assert_null(y);
    assert_int_not_equal(keel_graph_status(g), KEEL_OK);
    const char *message = keel_graph_error(g);
    printf("error: %s\n", message);
    assert_non_null(strstr(message, "bad_layer"));
    for (const char *const *p = phrases; *p; p++)
        if (!strstr(message, *p))
            fail_msg("error \"%s\" does not mention \"%s\"", message, *p);

    char first[512];
    snprintf(first, sizeof first, "%s", message);
    keel_conv2d_opts fine = keel_conv_opts(1, 1, 0);
    assert_null(keel_conv2d(g, "later", x, 4, &fine));
    assert_null(keel_relu(g, "later_relu", x));
    assert_string_equal(keel_graph_error(g), first);
    keel_graph_free(g);
}

static void test_error_kernel_too_large(void **state)
{
    (void)state;
    int64_t shape[4] = {1, 2, 3, 3};
    keel_conv2d_opts opts = keel_conv_opts(5, 1, 0);
    const char *phrases[] = {"kernel 5x5 is larger than the padded input 3x3", "1x2x3x3", NULL};
    expect_error(false, 4, shape, 4, &opts, phrases);

    /* Dilation makes a 3x3 kernel span 5x5. */
    keel_conv2d_opts wide = keel_conv_opts(3, 1, 0);
    wide.dilation_h = wide.dilation_w = 2;
    const char *wide_phrases[] = {"kernel 3x3", "5x5", "larger than the padded input 4x4", NULL};
    int64_t four[4] = {1, 2, 4, 4};
    expect_error(false, 4, four, 4, &wide, wide_phrases);
}

static void test_error_groups(void **state)
{
    (void)state;
    int64_t shape[4] = {2, 3, 8, 8};
    keel_conv2d_opts opts = keel_conv_opts(3, 1, 1);
    opts.groups = 2;
    const char *phrases[] = {"groups 2", "input channels (3)", "2x3x8x8", NULL};
    expect_error(false, 4, shape, 4, &opts, phrases);

    int64_t even[4] = {2, 4, 8, 8};
    const char *out_phrases[] = {"groups 2", "output channels (5)", "2x4x8x8", NULL};
    expect_error(false, 4, even, 5, &opts, out_phrases);
    expect_error(true, 4, even, 5, &opts, out_phrases);
}

static void test_error_bad_shapes_and_options(void **state)
{
    (void)state;
    keel_conv2d_opts opts = keel_conv_opts(3, 1, 1);
    int64_t flat[2] = {2, 10};
    const char *not_4d[] = {"4-D", "2x10", NULL};
    expect_error(false, 2, flat, 4, &opts, not_4d);
    expect_error(true, 2, flat, 4, &opts, not_4d);

    int64_t shape[4] = {2, 3, 8, 8};
    const char *no_opts[] = {"options", NULL};
    expect_error(false, 4, shape, 4, NULL, no_opts);

    const char *channels[] = {"out_channels", "0", NULL};
    expect_error(false, 4, shape, 0, &opts, channels);

    keel_conv2d_opts zero_kernel = keel_conv_opts(0, 1, 0);
    const char *kernel[] = {"kernel size", "0x0", NULL};
    expect_error(false, 4, shape, 4, &zero_kernel, kernel);

    keel_conv2d_opts negative = keel_conv_opts(3, -1, 0);
    const char *negative_phrases[] = {"stride", "negative", NULL};
    expect_error(false, 4, shape, 4, &negative, negative_phrases);

    keel_conv2d_opts negative_pad = keel_conv_opts(3, 1, 0);
    negative_pad.pad_left = -1;
    const char *pad_phrases[] = {"padding", "negative", NULL};
    expect_error(false, 4, shape, 4, &negative_pad, pad_phrases);

    keel_conv2d_opts output_pad = keel_conv_opts(3, 2, 1);
    output_pad.output_pad_h = output_pad.output_pad_w = 2;
    const char *too_much[] = {"output padding 2x2", "stride 2x2", NULL};
    expect_error(true, 4, shape, 4, &output_pad, too_much);
    output_pad.output_pad_h = output_pad.output_pad_w = 1;
    const char *conv_only[] = {"conv_transpose2d only", NULL};
    expect_error(false, 4, shape, 4, &output_pad, conv_only);

    /* Padding that eats the whole output of a transpose. */
    keel_conv2d_opts eaten = keel_conv_opts(1, 1, 2);
    int64_t tiny[4] = {1, 2, 2, 2};
    const char *empty[] = {"empty output", "1x2x2x2", NULL};
    expect_error(true, 4, tiny, 4, &eaten, empty);
}

static void test_null_input(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    keel_conv2d_opts opts = keel_conv_opts(3, 1, 1);
    assert_null(keel_conv2d(g, "orphan", NULL, 4, &opts));
    assert_int_not_equal(keel_graph_status(g), KEEL_OK);
    assert_non_null(strstr(keel_graph_error(g), "orphan"));
    keel_graph_free(g);
}

/* ---- both CPU engines: oneDNN and the im2col reference ---------------------
 * (CPU-performance helper.) Every case runs three times: with the default
 * engine choice (KEEL_CPU_CONV=auto: oneDNN for the nodes it suits, where
 * the build has oneDNN), with KEEL_CPU_CONV=dnnl (oneDNN for every kernel it
 * implements) and with KEEL_CPU_CONV=im2col (the reference path), each
 * checked against the same float64 references and finite differences. The
 * variable is read when a plan is compiled; setup and teardown run even when
 * a case fails, so a failure cannot leak the engine into the next test. */
static int engine_auto(void **state)
{
    (void)state;
    return setenv("KEEL_CPU_CONV", "auto", 1);
}

static int engine_dnnl(void **state)
{
    (void)state;
    return setenv("KEEL_CPU_CONV", "dnnl", 1);
}

static int engine_im2col(void **state)
{
    (void)state;
    return setenv("KEEL_CPU_CONV", "im2col", 1);
}

static int engine_default(void **state)
{
    (void)state;
    return unsetenv("KEEL_CPU_CONV");
}

enum { ENGINES = 3 };
static const char *const engine_names[ENGINES] = {"auto", "dnnl", "im2col"};
static int (*const engine_setups[ENGINES])(void **) = {engine_auto, engine_dnnl, engine_im2col};

/* Shapes that reach the oneDNN paths the small cases above do not: filters
 * that cut into slices of 16 for the weight gradient, images with 8 or more
 * channels for the data gradient. */
static const conv_case engine_cases[] = {
    {"conv2d[32 filters: sliced weight gradient]", false, 2, 8, 9, 10, 32, {KERNEL(3, 3), PAD(1, 1, 1, 1)},
     .large = true},
    {"conv2d[48 filters stride 2 no bias: sliced]", false, 3, 16, 11, 9, 48,
     {KERNEL(3, 3), STRIDE(2, 2), PAD(1, 1, 1, 1), .no_bias = true}, .large = true},
    {"conv2d[1x1 64 filters: sliced]", false, 2, 16, 5, 6, 64, {KERNEL(1, 1)}, .large = true},
    {"conv2d[5x5 dilation 2 asym pad 32 filters: sliced]", false, 2, 8, 12, 11, 32,
     {KERNEL(5, 5), PAD(3, 1, 2, 4), DILATION(2, 2)}, .large = true},
};

/* dw of a convolution with `filters` filters and `groups` groups on x
 * {4, 16, 10, 9}, from a plan whose context has `threads` threads. */
static void weight_grad_with_threads(int filters, int groups, int threads, float *dw, int64_t dw_count)
{
    keel_graph *g = keel_graph_new();
    assert_non_null(g);
    int64_t x_shape[4] = {4, 16, 10, 9};
    keel_node *x = keel_input(g, "x", 4, x_shape);
    keel_conv2d_opts opts = {KERNEL(3, 3), PAD(1, 1, 1, 1), .groups = groups};
    keel_node *y = keel_conv2d(g, "conv", x, filters, &opts);
    ks_graph_ok(g);
    int64_t y_shape[KEEL_MAX_DIMS];
    int y_ndim = keel_node_shape(y, y_shape);
    keel_node *dy = keel_input(g, "dy", y_ndim, y_shape);
    KS_OK(keel_graph_backward_from(g, y, dy));
    keel_context_opts copts = {.threads = threads};
    keel_context *ctx = NULL;
    KS_OK(keel_context_create(&ctx, &copts));
    keel_plan *plan = ks_compile(g, ctx, 5);
    int64_t x_count = keel_node_numel(x), y_count = keel_node_numel(y);
    float *xf = malloc((size_t)x_count * sizeof *xf), *dyf = malloc((size_t)y_count * sizeof *dyf);
    assert_true(xf && dyf);
    ks_fill_uniform(xf, x_count, 11, -1.0f, 1.0f);
    ks_fill_uniform(dyf, y_count, 12, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_set_input(plan, dy, dyf));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    KS_OK(keel_plan_grad_get(plan, "conv.weight", dw, dw_count));
    free(xf);
    free(dyf);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

/* The weight gradient's sum over the batch has the same bits on one thread
 * as on two (so a plan split over CPU devices matches one device), whichever
 * engine runs it: 64 filters (oneDNN: four slices), and 8 filters in two
 * groups (oneDNN: one single-threaded slice). Runs under each engine's setup. */
static void test_weight_grad_thread_invariant(void **state)
{
    (void)state;
    enum { DW = 64 * 16 * 3 * 3, GROUPED_DW = 8 * 8 * 3 * 3 };
    static float one[DW], two[DW];
    weight_grad_with_threads(64, 1, 1, one, DW);
    weight_grad_with_threads(64, 1, 2, two, DW);
    assert_memory_equal(one, two, sizeof one);
    weight_grad_with_threads(8, 2, 1, one, GROUPED_DW);
    weight_grad_with_threads(8, 2, 2, two, GROUPED_DW);
    assert_memory_equal(one, two, GROUPED_DW * sizeof(float));
}

/* tests[engine * count + i]: case i under each engine, named "<label> [engine]". */
static void engine_tests(const conv_case *list, int count, struct CMUnitTest *tests, char (*names)[96])
{
    for (int e = 0; e < ENGINES; e++)
        for (int i = 0; i < count; i++) {
            int k = e * count + i;
            snprintf(names[k], sizeof names[k], "%s [%s]", list[i].label, engine_names[e]);
            tests[k] = (struct CMUnitTest){names[k], run_case, engine_setups[e], engine_default,
                                           (void *)&list[i]};
        }
}

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_chain),
        cmocka_unit_test(test_alexnet_conv1_shape),
        cmocka_unit_test(test_transpose_shape),
        cmocka_unit_test(test_default_init),
        cmocka_unit_test(test_error_kernel_too_large),
        cmocka_unit_test(test_error_groups),
        cmocka_unit_test(test_error_bad_shapes_and_options),
        cmocka_unit_test(test_null_input),
    };
    enum {
        CASES = sizeof cases / sizeof cases[0],
        MORE = sizeof engine_cases / sizeof engine_cases[0],
        FIXED = sizeof fixed / sizeof fixed[0],
        PER_ENGINE = ENGINES * (CASES + MORE),
    };
    /* One test per case and engine, the thread-count check per engine, then
     * the fixed ones. */
    static struct CMUnitTest tests[PER_ENGINE + ENGINES + FIXED];
    static char names[PER_ENGINE + ENGINES][96];
    engine_tests(cases, CASES, tests, names);
    engine_tests(engine_cases, MORE, tests + ENGINES * CASES, names + ENGINES * CASES);
    for (int e = 0; e < ENGINES; e++) {
        snprintf(names[PER_ENGINE + e], sizeof names[0], "weight gradient bits independent of threads [%s]",
                 engine_names[e]);
        tests[PER_ENGINE + e] = (struct CMUnitTest){names[PER_ENGINE + e], test_weight_grad_thread_invariant,
                                                    engine_setups[e], engine_default, NULL};
    }
    for (int i = 0; i < FIXED; i++)
        tests[PER_ENGINE + ENGINES + i] = fixed[i];
    return cmocka_run_group_tests(tests, NULL, NULL);
}
