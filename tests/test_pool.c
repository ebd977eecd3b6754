/* Max, average and global average pooling: output sizes (floor and ceil
 * mode), forward against float64 loops, gradients against central finite
 * differences, and the errors of impossible shapes. */
#include "support/support.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum pool_kind { POOL_MAX, POOL_AVG, POOL_GLOBAL_AVG } pool_kind;

typedef struct pool_case {
    const char *what;          /* label of the ERR lines */
    pool_kind kind;
    int64_t shape[4];          /* input {N, C, H, W} */
    keel_pool2d_opts opts;     /* ignored for global pooling */
    int64_t out_h, out_w;      /* worked out by hand */
} pool_case;

/* ---- float64 reference ------------------------------------------------------ */

/* The geometry the reference uses: stride 0 means the kernel. */
typedef struct ref_geom {
    int64_t planes, in_h, in_w, out_h, out_w;
    int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
    bool ceil_mode, exclude_pad, is_max;
} ref_geom;

/* Output length by counting windows: window i starts at i*stride - pad. In
 * floor mode it must end inside the padded input; in ceil mode a new window
 * opens while the previous one has not reached the padded end, as long as it
 * starts inside the input or its left padding. */
static int64_t ref_out_size(int64_t in, int kernel, int stride, int pad, bool ceil_mode)
{
    int64_t count = 0;
    for (int64_t i = 0;; i++) {
        int64_t start = i * stride - pad;
        bool fits = start + kernel <= in + pad;
        bool opens = i == 0 || ((i - 1) * stride - pad + kernel < in + pad && start < in);
        if (ceil_mode ? !opens : !fits)
            break;
        count++;
    }
    return count;
}

static ref_geom ref_geom_of(const pool_case *pc)
{
    ref_geom r = {.planes = pc->shape[0] * pc->shape[1], .in_h = pc->shape[2], .in_w = pc->shape[3]};
    if (pc->kind == POOL_GLOBAL_AVG) {
        r.kernel_h = r.stride_h = (int)r.in_h;
        r.kernel_w = r.stride_w = (int)r.in_w;
    } else {
        r.kernel_h = pc->opts.kernel_h;
        r.kernel_w = pc->opts.kernel_w;
        r.stride_h = pc->opts.stride_h ? pc->opts.stride_h : r.kernel_h;
        r.stride_w = pc->opts.stride_w ? pc->opts.stride_w : r.kernel_w;
        r.pad_h = pc->opts.pad_h;
        r.pad_w = pc->opts.pad_w;
        r.ceil_mode = pc->opts.ceil_mode;
        r.exclude_pad = pc->opts.exclude_pad;
    }
    r.is_max = pc->kind == POOL_MAX;
    r.out_h = ref_out_size(r.in_h, r.kernel_h, r.stride_h, r.pad_h, r.ceil_mode);
    r.out_w = ref_out_size(r.in_w, r.kernel_w, r.stride_w, r.pad_w, r.ceil_mode);
    return r;
}

/* Average pooling divides by the window positions inside the padded input
 * (count_include_pad) or inside the input itself (exclude_pad). */
static void ref_pool(const ref_geom *r, const double *x, double *y)
{
    for (int64_t p = 0; p < r->planes; p++)
        for (int64_t oh = 0; oh < r->out_h; oh++)
            for (int64_t ow = 0; ow < r->out_w; ow++) {
                double best = -INFINITY, sum = 0.0;
                int64_t inside = 0, inside_padded = 0;
                for (int kh = 0; kh < r->kernel_h; kh++)
                    for (int kw = 0; kw < r->kernel_w; kw++) {
                        int64_t h = oh * r->stride_h - r->pad_h + kh, w = ow * r->stride_w - r->pad_w + kw;
                        if (h >= -r->pad_h && h < r->in_h + r->pad_h && w >= -r->pad_w && w < r->in_w + r->pad_w)
                            inside_padded++;
                        if (h < 0 || h >= r->in_h || w < 0 || w >= r->in_w)
                            continue;
                        double v = x[(p * r->in_h + h) * r->in_w + w];
                        inside++;
                        sum += v;
                        best = v > best ? v : best;
                    }
                double *out = &y[(p * r->out_h + oh) * r->out_w + ow];
                *out = r->is_max ? best : sum / (double)(r->exclude_pad ? inside : inside_padded);
            }
}

typedef struct pool_fn_ctx {
    const ref_geom *r;
    const double *dy;
    double *y;
} pool_fn_ctx;

/* f(x) = sum(pool(x) * dy), whose gradient is dx. */
static double pool_dot_dy(const double *x, void *user)
{
    pool_fn_ctx *c = user;
    ref_pool(c->r, x, c->y);
    double f = 0.0;
    for (int64_t i = 0; i < c->r->planes * c->r->out_h * c->r->out_w; i++)
        f += c->y[i] * c->dy[i];
    return f;
}

/* Distinct values spaced `gap` apart in random order, so no window ties and
 * finite differences smaller than gap/2 never move a maximum. */
static void fill_distinct(float *x, int64_t n, uint64_t seed, float gap)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(i - n / 2) * gap;
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = n - 1; i > 0; i--) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        int64_t j = (int64_t)(s % (uint64_t)(i + 1));
        float t = x[i];
        x[i] = x[j];
        x[j] = t;
    }
}

/* ---- running a case through the library -------------------------------------- */

static keel_node *build_pool(keel_graph *g, const pool_case *pc, keel_node *x)
{
    switch (pc->kind) {
    case POOL_MAX: return keel_max_pool2d(g, "pool", x, &pc->opts);
    case POOL_AVG: return keel_avg_pool2d(g, "pool", x, &pc->opts);
    default: return keel_global_avg_pool2d(g, "pool", x);
    }
}

static void run_pool_case(const pool_case *pc)
{
    ref_geom r = ref_geom_of(pc);
    assert_int_equal(r.out_h, pc->out_h);
    assert_int_equal(r.out_w, pc->out_w);

    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 4, pc->shape);
    keel_graph_require_grad(g, x);
    keel_node *y = build_pool(g, pc, x);
    ks_graph_ok(g);
    int64_t y_shape[KEEL_MAX_DIMS];
    assert_int_equal(keel_node_shape(y, y_shape), 4);
    int64_t want_shape[4] = {pc->shape[0], pc->shape[1], pc->out_h, pc->out_w};
    assert_memory_equal(y_shape, want_shape, sizeof want_shape);
    keel_node *dy = keel_input(g, "dy", 4, y_shape);
    KS_OK(keel_graph_backward_from(g, y, dy));
    keel_graph_keep(g, y);
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 1);

    int64_t nx = keel_node_numel(x), ny = keel_node_numel(y);
    float *xf = malloc((size_t)nx * sizeof *xf), *dyf = malloc((size_t)ny * sizeof *dyf);
    float *yf = malloc((size_t)ny * sizeof *yf), *dxf = malloc((size_t)nx * sizeof *dxf);
    double *xd = malloc((size_t)nx * sizeof *xd), *dyd = malloc((size_t)ny * sizeof *dyd);
    double *yd = malloc((size_t)ny * sizeof *yd), *dxd = malloc((size_t)nx * sizeof *dxd);
    double *scratch = malloc((size_t)ny * sizeof *scratch);
    const double step = 1e-3;
    fill_distinct(xf, nx, 11, (float)(8 * step)); /* gap 8h: a maximum never moves */
    ks_fill_uniform(dyf, ny, 12, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_set_input(plan, dy, dyf));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    KS_OK(keel_plan_read(plan, y, yf));
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, x), dxf));

    ks_to_double(xf, xd, nx);
    ks_to_double(dyf, dyd, ny);
    ref_pool(&r, xd, yd);
    pool_fn_ctx fc = {&r, dyd, scratch};
    ks_numeric_grad(pool_dot_dy, &fc, xd, nx, step, dxd);

    /* x lies in about [-2, 2] and dy in [-1, 1]: errors are relative to the
     * value, or to 0.1 for values nearer zero, where float32 sums of a few
     * terms of size 1 can no longer keep relative precision. */
    char label[160];
    snprintf(label, sizeof label, "%s y", pc->what);
    ks_check(label, yf, yd, ny, 0.1, 2e-6);
    snprintf(label, sizeof label, "%s dx", pc->what);
    ks_check(label, dxf, dxd, nx, 0.1, 2e-6);

    free(xf), free(dyf), free(yf), free(dxf), free(xd), free(dyd), free(yd), free(dxd), free(scratch);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

static keel_pool2d_opts opts_ceil(int kernel, int stride, int padding)
{
    keel_pool2d_opts o = keel_pool_opts(kernel, stride, padding);
    o.ceil_mode = true;
    return o;
}

static keel_pool2d_opts opts_exclude(keel_pool2d_opts o)
{
    o.exclude_pad = true;
    return o;
}

/* ---- cases -------------------------------------------------------------------- */

static void test_max_pool_2x2_stride2(void **state)
{
    (void)state;
    pool_case pc = {"max_pool2d[2x2/2]", POOL_MAX, {2, 3, 8, 10}, keel_pool_opts(2, 2, 0), 4, 5};
    run_pool_case(&pc);
}

static void test_max_pool_stride0_means_kernel(void **state)
{
    (void)state;
    pool_case pc = {"max_pool2d[3x3/stride 0]", POOL_MAX, {1, 2, 9, 7}, keel_pool_opts(3, 0, 0), 3, 2};
    run_pool_case(&pc);
}

/* AlexNet's overlapping pooling (Krizhevsky et al. 2012, section 3.4): 13 -> 6. */
static void test_max_pool_overlapping_alexnet(void **state)
{
    (void)state;
    pool_case pc = {"max_pool2d[3x3/2 overlapping]", POOL_MAX, {2, 2, 13, 13}, keel_pool_opts(3, 2, 0), 6, 6};
    run_pool_case(&pc);
}

static void test_max_pool_padding(void **state)
{
    (void)state;
    pool_case same = {"max_pool2d[3x3/1 pad 1]", POOL_MAX, {1, 3, 6, 7}, keel_pool_opts(3, 1, 1), 6, 7};
    run_pool_case(&same);
    pool_case strided = {"max_pool2d[3x3/2 pad 1]", POOL_MAX, {2, 2, 7, 8}, keel_pool_opts(3, 2, 1), 4, 4};
    run_pool_case(&strided);
}

static void test_max_pool_rectangular(void **state)
{
    (void)state;
    keel_pool2d_opts o = {.kernel_h = 3, .kernel_w = 2, .stride_h = 2, .stride_w = 1, .pad_h = 1, .pad_w = 0};
    pool_case pc = {"max_pool2d[3x2/2x1 pad 1x0]", POOL_MAX, {2, 2, 6, 5}, o, 3, 4};
    run_pool_case(&pc);
}

static void test_max_pool_ceil_mode(void **state)
{
    (void)state;
    pool_case plain = {"max_pool2d[2x2/2 ceil]", POOL_MAX, {2, 2, 5, 7}, opts_ceil(2, 2, 0), 3, 4};
    run_pool_case(&plain);
    pool_case padded = {"max_pool2d[3x3/2 pad 1 ceil]", POOL_MAX, {1, 2, 6, 8}, opts_ceil(3, 2, 1), 4, 5};
    run_pool_case(&padded);
}

static void test_avg_pool_padding(void **state)
{
    (void)state;
    pool_case plain = {"avg_pool2d[2x2/2]", POOL_AVG, {2, 3, 6, 8}, keel_pool_opts(2, 2, 0), 3, 4};
    run_pool_case(&plain);
    /* Tiling windows that leave the last row and column unread (dx 0 there). */
    pool_case remainder = {"avg_pool2d[2x2/2 on 7x9]", POOL_AVG, {2, 3, 7, 9}, keel_pool_opts(2, 2, 0), 3, 4};
    run_pool_case(&remainder);
    pool_case tiles3 = {"avg_pool2d[3x3/3]", POOL_AVG, {1, 2, 9, 6}, keel_pool_opts(3, 3, 0), 3, 2};
    run_pool_case(&tiles3);
    pool_case include = {"avg_pool2d[3x3/2 pad 1 include_pad]", POOL_AVG, {2, 3, 7, 6}, keel_pool_opts(3, 2, 1),
                         4, 3};
    run_pool_case(&include);
    pool_case exclude = {"avg_pool2d[3x3/2 pad 1 exclude_pad]", POOL_AVG, {2, 3, 7, 6},
                         opts_exclude(keel_pool_opts(3, 2, 1)), 4, 3};
    run_pool_case(&exclude);
}

/* The last windows run past the padded edge: PyTorch divides by the count
 * clipped to the padded input (include) or to the input (exclude). */
static void test_avg_pool_ceil_mode(void **state)
{
    (void)state;
    pool_case include = {"avg_pool2d[3x3/2 pad 1 ceil include_pad]", POOL_AVG, {1, 2, 6, 8}, opts_ceil(3, 2, 1),
                         4, 5};
    run_pool_case(&include);
    pool_case exclude = {"avg_pool2d[3x3/2 pad 1 ceil exclude_pad]", POOL_AVG, {1, 2, 6, 8},
                         opts_exclude(opts_ceil(3, 2, 1)), 4, 5};
    run_pool_case(&exclude);
    pool_case unpadded = {"avg_pool2d[2x2/2 ceil]", POOL_AVG, {2, 2, 5, 5}, opts_ceil(2, 2, 0), 3, 3};
    run_pool_case(&unpadded);
}

static void test_global_avg_pool(void **state)
{
    (void)state;
    pool_case pc = {"global_avg_pool2d", POOL_GLOBAL_AVG, {2, 3, 5, 7}, {0}, 1, 1};
    run_pool_case(&pc);
}

/* ---- output sizes and FLOPs ---------------------------------------------------- */

typedef struct size_case {
    int64_t in;
    int kernel, stride, pad;
    bool ceil_mode;
    int64_t out;
} size_case;

static void test_pool_output_sizes(void **state)
{
    (void)state;
    static const size_case cases[] = {
        {55, 3, 2, 0, false, 27}, {27, 3, 2, 0, false, 13}, {13, 3, 2, 0, false, 6}, /* AlexNet */
        {224, 2, 2, 0, false, 112}, {112, 3, 2, 1, false, 56},                      /* VGG, ResNet */
        {5, 2, 2, 0, false, 2}, {5, 2, 2, 0, true, 3},
        {6, 3, 2, 1, false, 3}, {6, 3, 2, 1, true, 4},
        /* ceil mode would open a window inside the right padding only: dropped */
        {7, 2, 2, 1, true, 4}, {5, 3, 3, 1, true, 2},
        {3, 3, 1, 0, true, 1}, {1, 2, 2, 1, true, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const size_case *c = &cases[i];
        assert_int_equal(ref_out_size(c->in, c->kernel, c->stride, c->pad, c->ceil_mode), c->out);
        keel_graph *g = keel_graph_new();
        int64_t shape[4] = {1, 1, c->in, c->in};
        keel_node *x = keel_input(g, "x", 4, shape);
        keel_pool2d_opts o = keel_pool_opts(c->kernel, c->stride, c->pad);
        o.ceil_mode = c->ceil_mode;
        keel_node *y = keel_max_pool2d(g, "pool", x, &o);
        ks_graph_ok(g);
        int64_t got[KEEL_MAX_DIMS];
        keel_node_shape(y, got);
        if (got[2] != c->out || got[3] != c->out)
            fail_msg("in %lld kernel %d stride %d pad %d ceil %d: got %lld, want %lld", (long long)c->in, c->kernel,
                     c->stride, c->pad, c->ceil_mode, (long long)got[2], (long long)c->out);
        keel_graph_free(g);
    }
}

static void test_pool_flops(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    int64_t shape[4] = {2, 3, 13, 13};
    keel_node *x = keel_input(g, "x", 4, shape);
    keel_pool2d_opts o = keel_pool_opts(3, 2, 0);
    keel_max_pool2d(g, "pool1", x, &o);
    ks_graph_ok(g);
    bool found = false;
    for (int i = 0; i < keel_graph_layer_count(g); i++) {
        keel_layer_info info;
        KS_OK(keel_graph_layer_info(g, i, &info));
        if (strcmp(info.name, "pool1") != 0)
            continue;
        found = true;
        assert_true(fabs(info.flops - 2.0 * 3 * 6 * 6 * 9) < 0.5);
        assert_int_equal(info.params, 0);
    }
    assert_true(found);
    keel_graph_free(g);
}

/* ---- determinism ------------------------------------------------------------------ */

/* Runs one pooling forward and backward with `threads` workers and returns
 * y followed by dx. */
static float *pool_run_with_threads(const pool_case *pc, int threads)
{
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 4, pc->shape);
    keel_graph_require_grad(g, x);
    keel_node *y = build_pool(g, pc, x);
    ks_graph_ok(g);
    int64_t y_shape[KEEL_MAX_DIMS];
    keel_node_shape(y, y_shape);
    keel_node *dy = keel_input(g, "dy", 4, y_shape);
    KS_OK(keel_graph_backward_from(g, y, dy));
    keel_graph_keep(g, y);
    keel_context_opts copts = {.threads = threads, .log_level = KEEL_LOG_ERROR};
    keel_context *ctx = NULL;
    KS_OK(keel_context_create(&ctx, &copts));
    keel_plan *plan = ks_compile(g, ctx, 1);
    int64_t nx = keel_node_numel(x), ny = keel_node_numel(y);
    float *xf = malloc((size_t)nx * sizeof *xf), *dyf = malloc((size_t)ny * sizeof *dyf);
    float *result = malloc((size_t)(ny + nx) * sizeof *result);
    ks_fill_uniform(xf, nx, 51, -2.0f, 2.0f);
    ks_fill_uniform(dyf, ny, 52, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, x, xf));
    KS_OK(keel_plan_set_input(plan, dy, dyf));
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    KS_OK(keel_plan_read(plan, y, result));
    KS_OK(keel_plan_read(plan, keel_graph_grad(g, x), result + ny));
    free(xf), free(dyf);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
    return result;
}

/* Overlapping windows scatter into shared dx elements: the result must be
 * the same bits whatever the thread count. */
static void test_pool_deterministic(void **state)
{
    (void)state;
    pool_case cases[] = {
        {"max_pool2d[3x3/1 pad 1]", POOL_MAX, {2, 5, 9, 9}, keel_pool_opts(3, 1, 1), 9, 9},
        {"avg_pool2d[3x3/2 pad 1 ceil]", POOL_AVG, {2, 5, 9, 8}, opts_ceil(3, 2, 1), 5, 5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const pool_case *pc = &cases[i];
        int64_t n = pc->shape[0] * pc->shape[1] * (pc->shape[2] * pc->shape[3] + pc->out_h * pc->out_w);
        float *one = pool_run_with_threads(pc, 1);
        float *three = pool_run_with_threads(pc, 3);
        if (memcmp(one, three, (size_t)n * sizeof *one) != 0)
            fail_msg("%s: 1 and 3 threads give different bits", pc->what);
        free(one), free(three);
    }
}

/* ---- impossible shapes ---------------------------------------------------------- */

/* Builds one pooling layer and expects a sticky error mentioning every
 * string in `want`. */
static void expect_pool_error(pool_kind kind, int ndim, const int64_t *shape, const keel_pool2d_opts *opts,
                              const char *const *want, int n_want)
{
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", ndim, shape);
    keel_node *y = kind == POOL_MAX   ? keel_max_pool2d(g, "pool1", x, opts)
                   : kind == POOL_AVG ? keel_avg_pool2d(g, "pool1", x, opts)
                                      : keel_global_avg_pool2d(g, "pool1", x);
    assert_null(y);
    assert_int_not_equal(keel_graph_status(g), KEEL_OK);
    const char *err = keel_graph_error(g);
    printf("expected error: %s\n", err);
    for (int i = 0; i < n_want; i++)
        if (!strstr(err, want[i]))
            fail_msg("error \"%s\" does not mention \"%s\"", err, want[i]);
    /* Sticky: a valid layer after the error is a no-op and the first message stays. */
    keel_pool2d_opts fine = keel_pool_opts(1, 1, 0);
    assert_null(keel_max_pool2d(g, "pool2", x, &fine));
    assert_string_equal(keel_graph_error(g), err);
    keel_graph_free(g);
}

static void test_pool_errors(void **state)
{
    (void)state;
    int64_t small[4] = {1, 1, 3, 3};
    keel_pool2d_opts k5 = keel_pool_opts(5, 1, 0);
    expect_pool_error(POOL_MAX, 4, small, &k5, (const char *[]){"pool1", "1x1x3x3", "5x5", "larger"}, 4);
    keel_pool2d_opts k4p1 = keel_pool_opts(4, 2, 1);
    int64_t tiny[4] = {2, 3, 1, 1};
    expect_pool_error(POOL_AVG, 4, tiny, &k4p1, (const char *[]){"pool1", "2x3x1x1", "larger"}, 3);
    keel_pool2d_opts too_much_pad = keel_pool_opts(3, 2, 2);
    int64_t big[4] = {1, 2, 8, 8};
    expect_pool_error(POOL_MAX, 4, big, &too_much_pad, (const char *[]){"pool1", "1x2x8x8", "padding"}, 3);
    keel_pool2d_opts negative_pad = keel_pool_opts(3, 2, -1);
    expect_pool_error(POOL_AVG, 4, big, &negative_pad, (const char *[]){"pool1", "padding"}, 2);
    keel_pool2d_opts no_kernel = keel_pool_opts(0, 1, 0);
    expect_pool_error(POOL_MAX, 4, big, &no_kernel, (const char *[]){"pool1", "kernel"}, 2);
    keel_pool2d_opts negative_stride = keel_pool_opts(2, -1, 0);
    expect_pool_error(POOL_MAX, 4, big, &negative_stride, (const char *[]){"pool1", "stride"}, 2);
    expect_pool_error(POOL_MAX, 4, big, NULL, (const char *[]){"pool1"}, 1);
    int64_t flat[2] = {4, 10};
    keel_pool2d_opts k2 = keel_pool_opts(2, 2, 0);
    expect_pool_error(POOL_MAX, 2, flat, &k2, (const char *[]){"pool1", "4x10", "4-D"}, 3);
    expect_pool_error(POOL_GLOBAL_AVG, 2, flat, NULL, (const char *[]){"pool1", "4x10", "4-D"}, 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_max_pool_2x2_stride2),
        cmocka_unit_test(test_max_pool_stride0_means_kernel),
        cmocka_unit_test(test_max_pool_overlapping_alexnet),
        cmocka_unit_test(test_max_pool_padding),
        cmocka_unit_test(test_max_pool_rectangular),
        cmocka_unit_test(test_max_pool_ceil_mode),
        cmocka_unit_test(test_avg_pool_padding),
        cmocka_unit_test(test_avg_pool_ceil_mode),
        cmocka_unit_test(test_global_avg_pool),
        cmocka_unit_test(test_pool_output_sizes),
        cmocka_unit_test(test_pool_flops),
        cmocka_unit_test(test_pool_deterministic),
        cmocka_unit_test(test_pool_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
