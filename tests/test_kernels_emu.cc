/* Every launcher of src/cuda/kernels.h, its kernels' own source compiled as
 * C++ and run on the CPU emulation of the CUDA grid (tests/kernel_emu/),
 * against the CPU backend on the same inputs. This finds indexing,
 * reduction and boundary bugs without a GPU; it says nothing of timing or
 * of the GPU's memory model.
 *
 * Buffers end at an inaccessible page, so reading or writing past the end
 * faults, and start after a pattern that must survive; outputs start as
 * NaN, so an element a kernel forgets to write shows.
 *
 * Error bounds as in test_cuda_ops.c: an element's error is
 * |emulated - cpu| / max(|cpu|, the largest |cpu| of its tensor), at most
 * 1e-5 in fp32; the same bits where the math is exact (fill, ReLU, add,
 * scale, dropout, max pooling and its argmax). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <initializer_list>
#include <vector>

extern "C" {
#include "support/support.h"
#include "backend.h"
#include "ops/math.h"
}
#include "cuda/kernels.h"
#include "../kernels/common.cuh" /* KEEL_THREADS, KEEL_MAX_BLOCKS */

#define TOL 1e-5
#define EXACT 0.0
#define SEED 20240607u

/* A grid-stride loop goes round more than once past this many elements. */
static const int64_t GRID_STRIDE_N = (int64_t)KEEL_MAX_BLOCKS * KEEL_THREADS + 1000;

static keel_device *cpu;

static int setup(void **state)
{
    (void)state;
    return keel_cpu_backend.open(&cpu, 0, 1) == KEEL_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    keel_cpu_backend.close(cpu);
    return 0;
}

/* ---- guarded buffers ---------------------------------------------------------------- */

struct region {
    char *base, *data;
    size_t span; /* mapped bytes before the guard page */
};
static std::vector<region> regions;

enum { FRONT_PATTERN = 0xa5 };

template <typename T>
static T *guarded(int64_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(T);
    size_t span = (bytes + page - 1) / page * page;
    char *base = (char *)mmap(nullptr, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(base != MAP_FAILED);
    assert_int_equal(mprotect(base + span, page, PROT_NONE), 0);
    char *data = base + span - bytes;
    memset(base, FRONT_PATTERN, span - bytes);
    memset(data, 0xff, bytes); /* NaN as float, -1 as int32 */
    regions.push_back(region{base, data, span});
    return (T *)data;
}

static float *random_floats(int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f)
{
    float *x = guarded<float>(n);
    ks_fill_uniform(x, n, seed, lo, hi);
    return x;
}

static float *copy_of(const float *x, int64_t n)
{
    float *y = guarded<float>(n);
    memcpy(y, x, (size_t)n * sizeof *y);
    return y;
}

/* Checks that nothing wrote before a buffer, then unmaps them all: every
 * test's teardown. */
static int release_buffers(void **state)
{
    (void)state;
    bool clean = true;
    for (const region &r : regions) {
        for (char *p = r.base; p < r.data; p++)
            clean = clean && (unsigned char)*p == FRONT_PATTERN;
        munmap(r.base, r.span + (size_t)sysconf(_SC_PAGESIZE));
    }
    regions.clear();
    if (!clean)
        fail_msg("a kernel wrote before the start of a buffer");
    return 0;
}

/* ---- comparing ---------------------------------------------------------------------- */

static void expect_close(const char *what, const float *got, const float *want, int64_t n, double tol)
{
    double scale = 0.0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(want[i]) && fabs(want[i]) > scale)
            scale = fabs(want[i]);
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        bool same = memcmp(&got[i], &want[i], sizeof(float)) == 0 || (isnan(got[i]) && isnan(want[i]));
        if (same)
            continue;
        double err = INFINITY;
        if (tol > 0.0 && !isnan(got[i]) && !isnan(want[i]))
            err = fabs((double)got[i] - want[i]) / fmax(fabs(want[i]), scale);
        if (!(err <= tol))
            fail_msg("%s: element %lld of %lld is %.9g, the CPU has %.9g", what, (long long)i, (long long)n,
                     (double)got[i], (double)want[i]);
        worst = fmax(worst, err);
    }
    printf("ERR %s: max_rel=%.3g (tol %.0e)\n", what, worst, tol);
}

static void expect_equal_ints(const char *what, const int32_t *got, const int32_t *want, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (got[i] != want[i])
            fail_msg("%s: element %lld is %d, the CPU has %d", what, (long long)i, got[i], want[i]);
}

#define EMU_OK(call) assert_int_equal((call), cudaSuccess)

/* ---- one node of the CPU backend -------------------------------------------------- */

/* The node carries the shapes and attributes the CPU kernel reads. */
struct cpu_node {
    keel_node node = {}, inputs[5] = {}, fwd = {};
    keel_node *input_list[5] = {};
    void *data[5] = {};
    uint64_t seed = 0, step = 0;

    static void set_shape(keel_node *x, std::initializer_list<int64_t> shape)
    {
        x->ndim = 0;
        for (int64_t d : shape)
            x->shape[x->ndim++] = d;
    }

    cpu_node(keel_op op, std::initializer_list<int64_t> shape)
    {
        node.op = op;
        node.name = (char *)"emu";
        node.inputs = input_list;
        node.fwd = &fwd;
        set_shape(&node, shape);
    }

    cpu_node &in(int i, std::initializer_list<int64_t> shape, const void *values)
    {
        set_shape(&inputs[i], shape);
        input_list[i] = &inputs[i];
        data[i] = (void *)values;
        if (node.n_inputs < i + 1)
            node.n_inputs = i + 1;
        return *this;
    }

    void run(void *out, void *aux = nullptr, void *fwd_aux = nullptr, bool training = true)
    {
        keel_launch l = {};
        l.node = &node;
        l.out = out;
        l.in = data;
        l.aux = aux;
        l.fwd_aux = fwd_aux;
        l.device = cpu;
        l.training = training;
        l.seed = seed;
        l.step = step;
        KS_OK(keel_cpu_backend.run[node.op](&l));
    }
};

/* ---- element-wise ------------------------------------------------------------------- */

static const int64_t sizes[] = {1, 255, 256, 257, 1000, 70001};

static void test_fill(void **state)
{
    (void)state;
    const int64_t fill_sizes[] = {1, 255, 257, 70001, GRID_STRIDE_N};
    for (int64_t n : fill_sizes) {
        float *got = guarded<float>(n), *want = guarded<float>(n);
        EMU_OK(keel_k_fill(nullptr, got, -2.5f, n));
        cpu_node f(KEEL_OP_FILL, {n});
        f.node.attrs.fill.value = -2.5f;
        f.run(want);
        expect_close("fill", got, want, n, EXACT);
    }
}

static void test_activation(void **state)
{
    (void)state;
    const keel_k_act kinds[] = {KEEL_K_RELU, KEEL_K_LEAKY_RELU, KEEL_K_SIGMOID, KEEL_K_TANH};
    const keel_act_kind cpu_kinds[] = {KEEL_ACT_RELU, KEEL_ACT_LEAKY_RELU, KEEL_ACT_SIGMOID, KEEL_ACT_TANH};
    const char *names[] = {"relu", "leaky_relu", "sigmoid", "tanh"};
    const float slope = 0.1f;
    for (int64_t n : sizes)
        for (int k = 0; k < 4; k++) {
            double tol = k < 2 ? EXACT : TOL;
            char what[64];
            float *x = random_floats(n, SEED + (uint64_t)n, -3.0f, 3.0f);
            float *y = guarded<float>(n), *want_y = guarded<float>(n);
            EMU_OK(keel_k_activation(nullptr, kinds[k], slope, x, y, n));
            cpu_node fwd(KEEL_OP_ACTIVATION, {n});
            fwd.node.attrs.act = keel_act_attrs{cpu_kinds[k], slope};
            fwd.in(0, {n}, x).run(want_y);
            snprintf(what, sizeof what, "%s n=%lld", names[k], (long long)n);
            expect_close(what, y, want_y, n, tol);

            /* The leaky ReLU's backward reads x, the others y. */
            const float *saved = kinds[k] == KEEL_K_LEAKY_RELU ? x : want_y;
            float *dy = random_floats(n, SEED + 7u), *dx = guarded<float>(n), *want_dx = guarded<float>(n);
            EMU_OK(keel_k_activation_bwd(nullptr, kinds[k], slope, dy, saved, dx, n));
            cpu_node bwd(KEEL_OP_ACTIVATION_BWD, {n});
            bwd.node.attrs.act = fwd.node.attrs.act;
            bwd.in(0, {n}, dy).in(1, {n}, saved).run(want_dx);
            snprintf(what, sizeof what, "%s_bwd n=%lld", names[k], (long long)n);
            expect_close(what, dx, want_dx, n, tol);

            /* In place, as the planner may run it. */
            float *inplace = copy_of(x, n);
            EMU_OK(keel_k_activation(nullptr, kinds[k], slope, inplace, inplace, n));
            expect_close("activation in place", inplace, want_y, n, tol);
        }
    assert_int_equal(keel_k_activation(nullptr, (keel_k_act)9, 0.0f, nullptr, nullptr, 1), cudaErrorInvalidValue);
}

static void test_add_scale(void **state)
{
    (void)state;
    for (int64_t n : sizes) {
        float *a = random_floats(n, SEED + 1), *b = random_floats(n, SEED + 2);
        float *sum = guarded<float>(n), *relu = guarded<float>(n), *got = guarded<float>(n);
        cpu_node add(KEEL_OP_ADD, {n});
        add.in(0, {n}, a).in(1, {n}, b).run(sum);
        EMU_OK(keel_k_add(nullptr, a, b, got, n, false));
        expect_close("add", got, sum, n, EXACT);
        cpu_node act(KEEL_OP_ACTIVATION, {n});
        act.node.attrs.act = keel_act_attrs{KEEL_ACT_RELU, 0.0f};
        act.in(0, {n}, sum).run(relu);
        EMU_OK(keel_k_add(nullptr, a, b, got, n, true));
        expect_close("add+relu", got, relu, n, EXACT);

        float *scaled = guarded<float>(n);
        cpu_node scale(KEEL_OP_SCALE, {n});
        scale.node.attrs.scale.s = -1.7f;
        scale.in(0, {n}, a).run(scaled);
        EMU_OK(keel_k_scale(nullptr, a, got, -1.7f, n));
        expect_close("scale", got, scaled, n, EXACT);
    }
}

/* The CPU keys the mask by (plan seed, node id, step); the launcher takes
 * the key, so both must draw the same mask from it. */
static void test_dropout(void **state)
{
    (void)state;
    const int64_t dropout_sizes[] = {1, 257, 70001, GRID_STRIDE_N};
    for (int64_t n : dropout_sizes) {
        float *x = random_floats(n, SEED + 3), *y = guarded<float>(n), *want = guarded<float>(n);
        cpu_node drop(KEEL_OP_DROPOUT, {n});
        drop.node.id = 7;
        drop.node.attrs.dropout.p = 0.3f;
        drop.seed = 99;
        drop.step = 3;
        drop.in(0, {n}, x).run(want);
        EMU_OK(keel_k_dropout(nullptr, x, y, n, keel_dropout_key(99, 7, 3), 0.3f));
        expect_close("dropout", y, want, n, EXACT);
    }
}

static void test_bias(void **state)
{
    (void)state;
    const int64_t shapes[][3] = {{3, 5, 77}, {2, 3, 1}, {1, 300, 1}, {4, 2, 300}, {2, 1, 1000}};
    for (const auto &s : shapes) {
        int64_t batch = s[0], channels = s[1], inner = s[2], n = batch * channels * inner;
        /* The CPU backend adds bias inside its convolutions; the rule is one line. */
        float *bias = random_floats(channels, SEED + 4), *y = random_floats(n, SEED + 5);
        float *want = copy_of(y, n);
        for (int64_t i = 0; i < n; i++)
            want[i] += bias[i / inner % channels];
        EMU_OK(keel_k_bias_add(nullptr, y, bias, batch, channels, inner));
        expect_close("bias_add", y, want, n, EXACT);

        float *dy = random_floats(n, SEED + 6), *db = guarded<float>(channels), *want_db = guarded<float>(channels);
        cpu_node grad(KEEL_OP_BIAS_GRAD, {channels});
        grad.in(0, {batch, channels, inner}, dy).run(want_db);
        EMU_OK(keel_k_bias_grad(nullptr, dy, db, batch, channels, inner));
        expect_close("bias_grad", db, want_db, channels, TOL);
    }
}

/* ---- pooling ------------------------------------------------------------------------- */

struct pool_case {
    int64_t n, c, h, w;
    int kh, kw, sh, sw, ph, pw;
    bool ceil_mode;
};

static int64_t pool_out(int64_t in, int kernel, int stride, int pad, bool ceil_mode)
{
    int64_t span = in + 2 * pad - kernel;
    int64_t out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
    /* PyTorch's rule: the last window must start inside the input or its left padding. */
    if (ceil_mode && (out - 1) * stride >= in + pad)
        out--;
    return out;
}

static void test_pool(void **state)
{
    (void)state;
    const pool_case cases[] = {
        {2, 3, 8, 8, 2, 2, 2, 2, 0, 0, false},     /* windows tile the plane */
        {2, 3, 9, 7, 3, 3, 2, 2, 1, 1, false},     /* overlapping, padded */
        {1, 2, 6, 6, 3, 3, 2, 2, 0, 0, true},      /* ceil mode: the last window clipped */
        {2, 3, 7, 6, 3, 3, 2, 2, 1, 1, true},      /* ceil mode with padding */
        {3, 4, 5, 7, 3, 2, 1, 2, 1, 0, false},     /* rectangular */
        {1, 2, 6, 5, 5, 5, 1, 1, 2, 2, false},     /* kernel much larger than stride */
        {1, 2, 8, 8, 2, 2, 3, 3, 0, 0, false},     /* stride larger than kernel: inputs no window reads */
        {4, 70, 6, 6, 2, 2, 2, 2, 0, 0, false},    /* many blocks */
        {2, 5, 7, 9, 7, 9, 7, 9, 0, 0, false},     /* global */
        {1, 300, 17, 19, 17, 19, 1, 1, 0, 0, false}, /* global: planes larger than a block */
    };
    int index = 0;
    for (const pool_case &pc : cases) {
        index++;
        int64_t oh = pool_out(pc.h, pc.kh, pc.sh, pc.ph, pc.ceil_mode);
        int64_t ow = pool_out(pc.w, pc.kw, pc.sw, pc.pw, pc.ceil_mode);
        int64_t in_n = pc.n * pc.c * pc.h * pc.w, out_n = pc.n * pc.c * oh * ow;
        keel_pool_attrs attrs = {pc.kh, pc.kw, pc.sh, pc.sw, pc.ph, pc.pw, pc.ceil_mode, false};
        keel_k_pool_params p = {pc.n * pc.c, pc.h, pc.w, oh, ow, pc.kh, pc.kw, pc.sh, pc.sw, pc.ph, pc.pw, false};
        char what[96];

        float *x = random_floats(in_n, SEED + (uint64_t)index);
        if (index == 2) { /* ties: the first maximum wins */
            for (int64_t i = 0; i < in_n; i++)
                x[i] = roundf(x[i] * 2.0f);
        }
        if (index == 5)
            x[17] = NAN;
        float *dy = random_floats(out_n, SEED + 100u + (uint64_t)index);

        float *y = guarded<float>(out_n), *want_y = guarded<float>(out_n);
        int32_t *argmax = guarded<int32_t>(out_n), *want_argmax = guarded<int32_t>(out_n);
        cpu_node max(KEEL_OP_MAX_POOL2D, {pc.n, pc.c, oh, ow});
        max.node.attrs.pool = attrs;
        max.in(0, {pc.n, pc.c, pc.h, pc.w}, x).run(want_y, want_argmax);
        EMU_OK(keel_k_max_pool(nullptr, &p, x, y, argmax));
        snprintf(what, sizeof what, "max_pool case %d", index);
        expect_close(what, y, want_y, out_n, EXACT);
        expect_equal_ints(what, argmax, want_argmax, out_n);

        float *dx = guarded<float>(in_n), *want_dx = guarded<float>(in_n);
        cpu_node max_bwd(KEEL_OP_MAX_POOL2D_BWD, {pc.n, pc.c, pc.h, pc.w});
        max_bwd.node.attrs.pool = attrs;
        max_bwd.in(0, {pc.n, pc.c, oh, ow}, dy).run(want_dx, nullptr, want_argmax);
        EMU_OK(keel_k_max_pool_bwd(nullptr, &p, dy, want_argmax, dx));
        snprintf(what, sizeof what, "max_pool_bwd case %d", index);
        expect_close(what, dx, want_dx, in_n, EXACT);

        for (bool exclude : {false, true}) {
            attrs.exclude_pad = p.exclude_pad = exclude;
            cpu_node avg(KEEL_OP_AVG_POOL2D, {pc.n, pc.c, oh, ow});
            avg.node.attrs.pool = attrs;
            avg.in(0, {pc.n, pc.c, pc.h, pc.w}, x).run(want_y);
            EMU_OK(keel_k_avg_pool(nullptr, &p, x, y));
            snprintf(what, sizeof what, "avg_pool case %d exclude_pad=%d", index, exclude);
            expect_close(what, y, want_y, out_n, TOL);

            cpu_node avg_bwd(KEEL_OP_AVG_POOL2D_BWD, {pc.n, pc.c, pc.h, pc.w});
            avg_bwd.node.attrs.pool = attrs;
            avg_bwd.in(0, {pc.n, pc.c, oh, ow}, dy).run(want_dx);
            EMU_OK(keel_k_avg_pool_bwd(nullptr, &p, dy, dx));
            snprintf(what, sizeof what, "avg_pool_bwd case %d exclude_pad=%d", index, exclude);
            expect_close(what, dx, want_dx, in_n, TOL);
        }
    }
}

/* ---- normalisation -------------------------------------------------------------------- */

static void test_lrn(void **state)
{
    (void)state;
    /* {batch, channels, inner, size}: odd and even windows, windows wider
     * than the channels, and enough elements for several blocks. */
    const int64_t cases[][4] = {{2, 7, 5, 5}, {2, 7, 5, 4}, {1, 3, 10, 5}, {2, 6, 3, 2},
                                {1, 5, 300, 3}, {2, 4, 3, 1}, {1, 8, 2, 6}};
    for (const auto &lc : cases) {
        int64_t b = lc[0], c = lc[1], inner = lc[2], n = b * c * inner;
        /* alpha large enough that a wrong window shows over the tolerance */
        keel_lrn_attrs attrs = {(int)lc[3], 2.0f, 0.75f, 1.5f};
        keel_k_lrn_params p = {b, c, inner, attrs.size, attrs.alpha, attrs.beta, attrs.k};
        char what[64];
        float *x = random_floats(n, SEED + (uint64_t)n), *dy = random_floats(n, SEED + 9);
        float *y = guarded<float>(n), *scale = guarded<float>(n), *dx = guarded<float>(n);
        float *want_y = guarded<float>(n), *want_scale = guarded<float>(n), *want_dx = guarded<float>(n);

        cpu_node fwd(KEEL_OP_LRN, {b, c, inner});
        fwd.node.attrs.lrn = attrs;
        fwd.in(0, {b, c, inner}, x).run(want_y, want_scale);
        EMU_OK(keel_k_lrn(nullptr, &p, x, y, scale));
        snprintf(what, sizeof what, "lrn size=%d channels=%lld", attrs.size, (long long)c);
        expect_close(what, y, want_y, n, TOL);
        expect_close(what, scale, want_scale, n, TOL);

        cpu_node bwd(KEEL_OP_LRN_BWD, {b, c, inner});
        bwd.node.attrs.lrn = attrs;
        bwd.in(0, {b, c, inner}, dy).in(1, {b, c, inner}, x).in(2, {b, c, inner}, want_y).run(want_dx, nullptr,
                                                                                             want_scale);
        EMU_OK(keel_k_lrn_bwd(nullptr, &p, dy, x, want_y, want_scale, dx));
        snprintf(what, sizeof what, "lrn_bwd size=%d channels=%lld", attrs.size, (long long)c);
        expect_close(what, dx, want_dx, n, TOL);
    }
}

static void test_batch_norm(void **state)
{
    (void)state;
    /* {batch, channels, inner}: fewer values per channel than a block has
     * threads, more, the fewest training allows, and many channels. */
    const int64_t shapes[][3] = {{4, 3, 35}, {5, 6, 221}, {2, 2, 1}, {8, 300, 1}, {1, 2, 1000}};
    for (const auto &s : shapes) {
        int64_t b = s[0], c = s[1], inner = s[2], n = b * c * inner;
        keel_bn_attrs attrs = {1e-5f, 0.1f};
        keel_k_bn_params p = {b, c, inner, attrs.eps, attrs.momentum};
        float *x = random_floats(n, SEED + 11, -2.0f, 3.0f);
        float *gamma = random_floats(c, SEED + 12, 0.5f, 1.5f), *beta = random_floats(c, SEED + 13);
        float *mean0 = random_floats(c, SEED + 14), *var0 = random_floats(c, SEED + 15, 0.5f, 1.5f);

        for (bool training : {true, false}) {
            const char *mode = training ? "train" : "eval";
            char what[96];
            float *mean = copy_of(mean0, c), *var = copy_of(var0, c);
            float *want_mean = copy_of(mean0, c), *want_var = copy_of(var0, c);
            float *y = guarded<float>(n), *saved = guarded<float>(2 * c);
            float *want_y = guarded<float>(n), *want_saved = guarded<float>(2 * c);
            cpu_node fwd(KEEL_OP_BATCH_NORM, {b, c, inner});
            fwd.node.attrs.bn = attrs;
            fwd.in(0, {b, c, inner}, x).in(1, {c}, gamma).in(2, {c}, beta).in(3, {c}, want_mean).in(4, {c}, want_var);
            fwd.run(want_y, want_saved, nullptr, training);
            EMU_OK(keel_k_batch_norm(nullptr, &p, training, x, gamma, beta, mean, var, y, saved));
            snprintf(what, sizeof what, "batch_norm %s %lldx%lldx%lld", mode, (long long)b, (long long)c,
                     (long long)inner);
            expect_close(what, y, want_y, n, TOL);
            expect_close(what, saved, want_saved, 2 * c, TOL);
            expect_close(what, mean, want_mean, c, TOL);
            expect_close(what, var, want_var, c, TOL);
        }

        /* The backward of the training forward, from the CPU's saved moments. */
        float *saved = guarded<float>(2 * c), *y = guarded<float>(n);
        float *mean = copy_of(mean0, c), *var = copy_of(var0, c);
        cpu_node fwd(KEEL_OP_BATCH_NORM, {b, c, inner});
        fwd.node.attrs.bn = attrs;
        fwd.in(0, {b, c, inner}, x).in(1, {c}, gamma).in(2, {c}, beta).in(3, {c}, mean).in(4, {c}, var);
        fwd.run(y, saved);
        float *dy = random_floats(n, SEED + 16);
        float *dgamma = guarded<float>(c), *want_dgamma = guarded<float>(c), *dbeta = guarded<float>(c);
        cpu_node bwd_gamma(KEEL_OP_BATCH_NORM_BWD_GAMMA, {c});
        bwd_gamma.in(0, {b, c, inner}, dy).in(1, {b, c, inner}, x).run(want_dgamma, nullptr, saved);
        EMU_OK(keel_k_batch_norm_bwd_gamma(nullptr, &p, dy, x, saved, dgamma));
        expect_close("batch_norm_bwd_gamma", dgamma, want_dgamma, c, TOL);

        cpu_node bias_grad(KEEL_OP_BIAS_GRAD, {c});
        bias_grad.in(0, {b, c, inner}, dy).run(dbeta);
        float *dx = guarded<float>(n), *want_dx = guarded<float>(n);
        cpu_node bwd_data(KEEL_OP_BATCH_NORM_BWD_DATA, {b, c, inner});
        bwd_data.in(0, {b, c, inner}, dy).in(1, {b, c, inner}, x).in(2, {c}, gamma).in(3, {c}, want_dgamma);
        bwd_data.in(4, {c}, dbeta).run(want_dx, nullptr, saved);
        EMU_OK(keel_k_batch_norm_bwd_data(nullptr, &p, dy, x, gamma, want_dgamma, dbeta, saved, dx));
        expect_close("batch_norm_bwd_data", dx, want_dx, n, TOL);
    }
}

/* ---- softmax and losses ------------------------------------------------------------- */

/* {rows, classes}: classes below, at and above the warp size; rows for one
 * warp, several warps and several blocks. */
static const int64_t softmax_shapes[][2] = {{1, 1}, {7, 10}, {37, 32}, {9, 100}, {20, 33}, {3, 1000}};

static void test_softmax(void **state)
{
    (void)state;
    for (const auto &s : softmax_shapes) {
        int64_t rows = s[0], classes = s[1], n = rows * classes;
        char what[64];
        float *x = random_floats(n, SEED + 21, -4.0f, 4.0f), *dy = random_floats(n, SEED + 22);
        float *y = guarded<float>(n), *want_y = guarded<float>(n);
        cpu_node fwd(KEEL_OP_SOFTMAX, {rows, classes});
        fwd.in(0, {rows, classes}, x).run(want_y);
        EMU_OK(keel_k_softmax(nullptr, x, y, rows, classes));
        snprintf(what, sizeof what, "softmax %lldx%lld", (long long)rows, (long long)classes);
        expect_close(what, y, want_y, n, TOL);

        float *dx = guarded<float>(n), *want_dx = guarded<float>(n);
        cpu_node bwd(KEEL_OP_SOFTMAX_BWD, {rows, classes});
        bwd.in(0, {rows, classes}, dy).in(1, {rows, classes}, want_y).run(want_dx);
        EMU_OK(keel_k_softmax_bwd(nullptr, dy, want_y, dx, rows, classes));
        snprintf(what, sizeof what, "softmax_bwd %lldx%lld", (long long)rows, (long long)classes);
        expect_close(what, dx, want_dx, n, TOL);
    }
}

static void test_softmax_cross_entropy(void **state)
{
    (void)state;
    for (const auto &s : softmax_shapes) {
        int64_t rows = s[0], classes = s[1], n = rows * classes;
        char what[64];
        float *z = random_floats(n, SEED + 23, -4.0f, 4.0f);
        int32_t *labels = guarded<int32_t>(rows);
        for (int64_t r = 0; r < rows; r++)
            labels[r] = (int32_t)((r * 7 + 3) % classes);
        float *prob = guarded<float>(n), *loss = guarded<float>(1), *want_prob = guarded<float>(n);
        float want_loss;
        double *row_loss = guarded<double>(rows);
        unsigned long long *bad = guarded<unsigned long long>(1); /* all ones: none yet */
        cpu_node fwd(KEEL_OP_SOFTMAX_CROSS_ENTROPY, {1});
        fwd.in(0, {rows, classes}, z).in(1, {rows}, labels).run(&want_loss, want_prob);
        EMU_OK(keel_k_softmax_cross_entropy(nullptr, z, labels, prob, loss, rows, classes, row_loss, bad));
        snprintf(what, sizeof what, "softmax_xent %lldx%lld", (long long)rows, (long long)classes);
        expect_close(what, prob, want_prob, n, TOL);
        expect_close(what, loss, &want_loss, 1, TOL);
        assert_true(*bad == ~0ull);

        float *dloss = guarded<float>(1);
        *dloss = 1.7f;
        float *dz = guarded<float>(n), *want_dz = guarded<float>(n);
        cpu_node bwd(KEEL_OP_SOFTMAX_CROSS_ENTROPY_BWD, {rows, classes});
        bwd.in(0, {1}, dloss).in(1, {rows}, labels).run(want_dz, nullptr, want_prob);
        EMU_OK(keel_k_softmax_cross_entropy_bwd(nullptr, dloss, labels, want_prob, dz, rows, classes));
        snprintf(what, sizeof what, "softmax_xent_bwd %lldx%lld", (long long)rows, (long long)classes);
        expect_close(what, dz, want_dz, n, TOL);
    }
}

/* Labels outside [0, classes): the loss is NaN, the device word falls to
 * the first bad sample and stays at the lowest seen, the probabilities
 * are still right, and the bad rows get no gradient. */
static void test_softmax_cross_entropy_bad_label(void **state)
{
    (void)state;
    const int64_t rows = 37, classes = 40, n = rows * classes; /* 8 rows per block: 5 blocks */
    float *z = random_floats(n, SEED + 24, -4.0f, 4.0f);
    int32_t *good = guarded<int32_t>(rows);
    for (int64_t r = 0; r < rows; r++)
        good[r] = (int32_t)((r * 7 + 3) % classes);
    float *want_prob = guarded<float>(n), *dloss = guarded<float>(1), *want_dz = guarded<float>(n);
    float want_loss;
    *dloss = 0.9f;
    cpu_node fwd(KEEL_OP_SOFTMAX_CROSS_ENTROPY, {1});
    fwd.in(0, {rows, classes}, z).in(1, {rows}, good).run(&want_loss, want_prob);
    cpu_node bwd(KEEL_OP_SOFTMAX_CROSS_ENTROPY_BWD, {rows, classes});
    bwd.in(0, {1}, dloss).in(1, {rows}, good).run(want_dz, nullptr, want_prob);

    unsigned long long *bad = guarded<unsigned long long>(1);
    const struct {
        int count;
        int64_t rows[3];
        unsigned long long expect;
    } batches[] = {{2, {30, 35}, 30}, {3, {36, 17, 3}, 3}, {1, {25}, 3}};
    for (const auto &batch : batches) {
        int32_t *labels = guarded<int32_t>(rows);
        memcpy(labels, good, (size_t)rows * sizeof *labels);
        for (int k = 0; k < batch.count; k++) /* below and above the range */
            labels[batch.rows[k]] = k % 2 ? -1 : (int32_t)classes + k;
        float *prob = guarded<float>(n), *loss = guarded<float>(1), *dz = guarded<float>(n);
        double *row_loss = guarded<double>(rows);
        EMU_OK(keel_k_softmax_cross_entropy(nullptr, z, labels, prob, loss, rows, classes, row_loss, bad));
        assert_true(isnan(*loss));
        assert_int_equal(*bad, batch.expect);
        expect_close("softmax_xent bad label: prob", prob, want_prob, n, TOL);

        EMU_OK(keel_k_softmax_cross_entropy_bwd(nullptr, dloss, labels, want_prob, dz, rows, classes));
        float *expect_dz = copy_of(want_dz, n);
        for (int k = 0; k < batch.count; k++)
            for (int64_t c = 0; c < classes; c++)
                expect_dz[batch.rows[k] * classes + c] = 0.0f;
        expect_close("softmax_xent_bwd bad label", dz, expect_dz, n, TOL);
    }
}

static void test_elementwise_losses(void **state)
{
    (void)state;
    for (int64_t n : {1, 1000, 100003}) {
        for (bool bce : {false, true}) {
            const char *name = bce ? "bce_with_logits" : "mse";
            char what[64];
            float *x = random_floats(n, SEED + 31, -4.0f, 4.0f);
            float *t = bce ? random_floats(n, SEED + 32, 0.0f, 1.0f) : random_floats(n, SEED + 32);
            float *loss = guarded<float>(1), *dloss = guarded<float>(1), *dx = guarded<float>(n);
            float *want_dx = guarded<float>(n);
            float want_loss;
            void *workspace = guarded<double>(KEEL_K_REDUCE_BLOCKS);
            *dloss = 0.75f;

            cpu_node fwd(bce ? KEEL_OP_BCE_WITH_LOGITS : KEEL_OP_MSE_LOSS, {1});
            fwd.in(0, {n}, x).in(1, {n}, t).run(&want_loss);
            EMU_OK(bce ? keel_k_bce_with_logits(nullptr, x, t, loss, n, workspace)
                       : keel_k_mse_loss(nullptr, x, t, loss, n, workspace));
            snprintf(what, sizeof what, "%s n=%lld", name, (long long)n);
            expect_close(what, loss, &want_loss, 1, TOL);

            cpu_node bwd(bce ? KEEL_OP_BCE_WITH_LOGITS_BWD : KEEL_OP_MSE_LOSS_BWD, {n});
            bwd.in(0, {1}, dloss).in(1, {n}, x).in(2, {n}, t).run(want_dx);
            EMU_OK(bce ? keel_k_bce_with_logits_bwd(nullptr, dloss, x, t, dx, n)
                       : keel_k_mse_loss_bwd(nullptr, dloss, x, t, dx, n));
            snprintf(what, sizeof what, "%s_bwd n=%lld", name, (long long)n);
            expect_close(what, dx, want_dx, n, TOL);
        }
    }
}

/* ---- optimisers ------------------------------------------------------------------------ */

static void test_sgd(void **state)
{
    (void)state;
    const int64_t n = 3001;
    const struct {
        float momentum, weight_decay;
        bool nesterov;
    } configs[] = {{0.9f, 0.0f, false}, {0.9f, 5e-4f, true}, {0.0f, 1e-3f, false}, {0.5f, 0.0f, true}};
    for (const auto &cfg : configs) {
        float *w = random_floats(n, SEED + 41), *v = guarded<float>(n);
        memset(v, 0, (size_t)n * sizeof *v);
        float *want_w = copy_of(w, n), *want_v = copy_of(v, n);
        for (int step = 0; step < 3; step++) {
            float *g = random_floats(n, SEED + 42 + (uint64_t)step);
            KS_OK(keel_cpu_backend.sgd_update(cpu, want_w, want_v, g, n, 0.05f, cfg.momentum, cfg.weight_decay,
                                              cfg.nesterov));
            EMU_OK(keel_k_sgd(nullptr, w, v, g, n, 0.05f, cfg.momentum, cfg.weight_decay, cfg.nesterov));
        }
        expect_close("sgd w", w, want_w, n, TOL);
        expect_close("sgd v", v, want_v, n, TOL);
    }
}

static void test_adam(void **state)
{
    (void)state;
    const int64_t n = 3001;
    const float beta1 = 0.9f, beta2 = 0.999f;
    for (float weight_decay : {0.0f, 1e-2f}) {
        float *w = random_floats(n, SEED + 51), *m = guarded<float>(n), *v = guarded<float>(n);
        memset(m, 0, (size_t)n * sizeof *m);
        memset(v, 0, (size_t)n * sizeof *v);
        float *want_w = copy_of(w, n), *want_m = copy_of(m, n), *want_v = copy_of(v, n);
        for (int step = 1; step <= 3; step++) {
            float *g = random_floats(n, SEED + 52 + (uint64_t)step);
            float c1 = 1.0f - powf(beta1, (float)step), c2 = 1.0f - powf(beta2, (float)step);
            KS_OK(keel_cpu_backend.adam_update(cpu, want_w, want_m, want_v, g, n, 1e-3f, beta1, beta2, 1e-8f,
                                               weight_decay, c1, c2));
            EMU_OK(keel_k_adam(nullptr, w, m, v, g, n, 1e-3f, beta1, beta2, 1e-8f, weight_decay, c1, c2));
        }
        expect_close("adam w", w, want_w, n, TOL);
        expect_close("adam m", m, want_m, n, TOL);
        expect_close("adam v", v, want_v, n, TOL);
    }
}

/* test_kernels_emu [NAME]: only the tests whose names match NAME. */
int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
#define T(f) cmocka_unit_test_teardown(f, release_buffers)
    const struct CMUnitTest tests[] = {
        T(test_fill),
        T(test_activation),
        T(test_add_scale),
        T(test_dropout),
        T(test_bias),
        T(test_pool),
        T(test_lrn),
        T(test_batch_norm),
        T(test_softmax),
        T(test_softmax_cross_entropy),
        T(test_softmax_cross_entropy_bad_label),
        T(test_elementwise_losses),
        T(test_sgd),
        T(test_adam),
    };
#undef T
    return cmocka_run_group_tests(tests, setup, teardown);
}
