/* Every op on the CUDA backend against the CPU backend: the same graph is
 * compiled for "cpu" and for "cuda:0" with the same seed and the same
 * inputs, run forward (training) and backward, and every forward output,
 * input gradient, parameter gradient and parameter or state value (batch
 * norm's running statistics move in the forward) is compared. Then LeNet-5
 * trains a few steps on each and the GPU must learn as the CPU does.
 *
 * Error bounds: an element's error is |gpu - cpu| / max(|cpu|, the largest
 * |cpu| of its tensor), so sums that cancel are judged on their tensor's
 * scale. IEEE fp32 (strict_fp32) must agree to 1e-5; convolutions and linear
 * layers with TF32 allowed, to 2e-3 (TF32 keeps 10 mantissa bits).
 *
 * Every test skips itself where no CUDA device is present (or libkeel was
 * built without CUDA). */
#include "support/support.h"
#include "backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STRICT_TOL 1e-5
#define TF32_TOL 2e-3
#define SEED 20240607u

static keel_context *ctx;
static bool have_gpu;

static void quiet(keel_log_level level, const char *message, void *user)
{
    (void)user;
    if (level <= KEEL_LOG_WARN)
        fprintf(stderr, "%s\n", message);
}

static int setup(void **state)
{
    (void)state;
    keel_context_opts opts = {.threads = 2, .log = quiet, .log_level = KEEL_LOG_WARN};
    if (keel_context_create(&ctx, &opts) != KEEL_OK)
        return -1;
    int n = keel_device_count(ctx);
    for (int i = 0; i < n; i++) {
        keel_device_info info;
        if (keel_device_get(ctx, i, &info) == KEEL_OK && strncmp(info.name, "cuda", 4) == 0) {
            have_gpu = true;
            printf("%s: %s, %.1f GiB, compute %d.%d\n", info.name, info.description,
                   (double)info.total_memory / (1 << 30), info.compute_major, info.compute_minor);
        }
    }
    if (!have_gpu)
        printf("no CUDA device: the CUDA op tests skip themselves\n");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    keel_context_destroy(ctx);
    return 0;
}

static void need_gpu(void)
{
    if (!have_gpu)
        skip();
}

/* ---- one graph, built once per device ------------------------------------------- */

#define MAX_IO 8

typedef struct built {
    keel_graph *g;
    keel_node *inputs[MAX_IO];   /* fed with random data (labels: random classes) */
    int label_classes[MAX_IO];   /* > 0 for a label input */
    int n_inputs;
    keel_node *outputs[MAX_IO];  /* compared after the run */
    int n_outputs;
} built;

typedef void (*build_fn)(built *b);

static keel_node *add_input(built *b, const char *name, int ndim, const int64_t *shape, bool needs_grad)
{
    keel_node *x = keel_input(b->g, name, ndim, shape);
    if (x && needs_grad)
        keel_graph_require_grad(b->g, x);
    b->inputs[b->n_inputs++] = x;
    return x;
}

static keel_node *add_labels(built *b, int64_t batch, int classes)
{
    keel_node *y = keel_input_labels(b->g, "labels", batch);
    b->label_classes[b->n_inputs] = classes;
    b->inputs[b->n_inputs++] = y;
    return y;
}

static void add_output(built *b, keel_node *y)
{
    if (!y)
        return;
    keel_graph_keep(b->g, y);
    b->outputs[b->n_outputs++] = y;
}

/* Keeps y, seeds the backward pass with a random dy and keeps the gradient
 * of every input that asked for one. */
static void finish_from(built *b, keel_node *y)
{
    ks_graph_ok(b->g);
    add_output(b, y);
    int64_t shape[KEEL_MAX_DIMS];
    int ndim = keel_node_shape(y, shape);
    int first_grad_input = b->n_inputs;
    keel_node *dy = add_input(b, "dy", ndim, shape, false);
    KS_OK(keel_graph_backward_from(b->g, y, dy));
    for (int i = 0; i < first_grad_input; i++) {
        keel_node *grad = b->inputs[i] ? keel_graph_grad(b->g, b->inputs[i]) : NULL;
        if (grad)
            add_output(b, grad);
    }
}

static void finish_loss(built *b, keel_node *loss)
{
    ks_graph_ok(b->g);
    add_output(b, loss);
    KS_OK(keel_graph_backward(b->g, loss));
    for (int i = 0; i < b->n_inputs; i++) {
        keel_node *grad = b->inputs[i] ? keel_graph_grad(b->g, b->inputs[i]) : NULL;
        if (grad)
            add_output(b, grad);
    }
}

/* ---- running and comparing ---------------------------------------------------------- */

typedef struct result {
    int n;
    char names[64][96];
    float *values[64];
    int64_t counts[64];
} result;

static void result_add(result *r, const char *name, float *values, int64_t count)
{
    assert_true(r->n < 64);
    snprintf(r->names[r->n], sizeof r->names[r->n], "%s", name);
    r->values[r->n] = values;
    r->counts[r->n] = count;
    r->n++;
}

static void result_free(result *r)
{
    for (int i = 0; i < r->n; i++)
        free(r->values[i]);
}

static float *read_node(keel_plan *plan, keel_node *x)
{
    int64_t n = keel_node_numel(x);
    float *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    assert_non_null(v);
    KS_OK(keel_plan_read(plan, x, v));
    return v;
}

/* Builds, compiles for `devices`, feeds the seeded inputs, runs forward in
 * training mode and backward, and collects everything worth comparing. */
static void run_plan(build_fn build, const keel_plan_opts *opts, result *r)
{
    built b = {.g = keel_graph_new()};
    assert_non_null(b.g);
    build(&b);
    ks_graph_ok(b.g);
    keel_plan *plan = NULL;
    KS_OK(keel_plan_compile(&plan, b.g, ctx, opts));
    for (int i = 0; i < b.n_inputs; i++) {
        int64_t n = keel_node_numel(b.inputs[i]);
        if (b.label_classes[i] > 0) {
            int32_t *labels = malloc((size_t)n * sizeof *labels);
            assert_non_null(labels);
            for (int64_t k = 0; k < n; k++)
                labels[k] = (int32_t)((k * 7 + 3 + i) % b.label_classes[i]);
            KS_OK(keel_plan_set_input(plan, b.inputs[i], labels));
            free(labels);
        } else {
            float *x = malloc((size_t)n * sizeof *x);
            assert_non_null(x);
            ks_fill_uniform(x, n, SEED + 31u * (uint64_t)i, -1.0f, 1.0f);
            KS_OK(keel_plan_set_input(plan, b.inputs[i], x));
            free(x);
        }
    }
    KS_OK(keel_plan_forward(plan, true));
    KS_OK(keel_plan_backward(plan));
    for (int i = 0; i < b.n_outputs; i++)
        result_add(r, keel_node_name(b.outputs[i]), read_node(plan, b.outputs[i]), keel_node_numel(b.outputs[i]));
    for (int p = 0; p < keel_plan_param_count(plan); p++) {
        keel_param_info info;
        KS_OK(keel_plan_param_info(plan, p, &info));
        int64_t n = 1;
        for (int dim = 0; dim < info.ndim; dim++)
            n *= info.shape[dim];
        float *v = malloc((size_t)n * sizeof *v);
        assert_non_null(v);
        KS_OK(keel_plan_param_get(plan, info.name, v, n));
        char name[96];
        snprintf(name, sizeof name, "%s (value)", info.name);
        result_add(r, name, v, n);
        if (info.trainable) {
            float *g = malloc((size_t)n * sizeof *g);
            assert_non_null(g);
            KS_OK(keel_plan_grad_get(plan, info.name, g, n));
            snprintf(name, sizeof name, "%s (gradient)", info.name);
            result_add(r, name, g, n);
        }
    }
    keel_plan_destroy(plan);
    keel_graph_free(b.g);
}

static void run_on(build_fn build, const char *devices, bool strict, result *r)
{
    keel_plan_opts opts = {.devices = devices, .seed = SEED, .strict_fp32 = strict, .poison_dead = true};
    run_plan(build, &opts, r);
}

static void compare(const char *label, const result *cpu, const result *gpu, double tol)
{
    assert_int_equal(cpu->n, gpu->n);
    for (int i = 0; i < cpu->n; i++) {
        assert_string_equal(cpu->names[i], gpu->names[i]);
        assert_int_equal(cpu->counts[i], gpu->counts[i]);
        int64_t n = cpu->counts[i];
        double *want = malloc((size_t)(n ? n : 1) * sizeof *want);
        assert_non_null(want);
        double scale = 0.0;
        for (int64_t k = 0; k < n; k++) {
            want[k] = cpu->values[i][k];
            scale = fabs(want[k]) > scale ? fabs(want[k]) : scale;
        }
        char what[200];
        snprintf(what, sizeof what, "cuda vs cpu %s %s", label, cpu->names[i]);
        ks_check(what, gpu->values[i], want, n, scale > 0.0 ? scale : 1e-30, tol);
        free(want);
    }
}

/* Compares the case in IEEE fp32 and, when it uses tensor-core math
 * (convolution, linear), also with TF32 allowed. */
static void check_case(const char *label, build_fn build, bool tensor_math)
{
    need_gpu();
    for (int strict = 1; strict >= (tensor_math ? 0 : 1); strict--) {
        result cpu = {0}, gpu = {0};
        run_on(build, "cpu", true, &cpu);
        run_on(build, "cuda:0", strict, &gpu);
        char what[128];
        snprintf(what, sizeof what, "%s%s", label, strict ? "" : " [TF32]");
        compare(what, &cpu, &gpu, strict ? STRICT_TOL : TF32_TOL);
        result_free(&cpu);
        result_free(&gpu);
    }
}

/* ---- convolution ---------------------------------------------------------------------- */

static void conv_case(built *b, const int64_t *x_shape, int out_channels, keel_conv2d_opts o, bool transpose)
{
    keel_node *x = add_input(b, "x", 4, x_shape, true);
    keel_node *y = transpose ? keel_conv_transpose2d(b->g, "conv", x, out_channels, &o)
                             : keel_conv2d(b->g, "conv", x, out_channels, &o);
    finish_from(b, y);
}

static keel_conv2d_opts conv_opts(int kernel, int stride, int pad, int dilation, int groups)
{
    keel_conv2d_opts o = keel_conv_opts(kernel, stride, pad);
    o.dilation_h = o.dilation_w = dilation;
    o.groups = groups;
    return o;
}

static void build_conv_plain(built *b) { conv_case(b, (int64_t[]){2, 3, 9, 9}, 4, conv_opts(3, 1, 1, 1, 1), false); }
static void build_conv_strided_dilated(built *b)
{
    conv_case(b, (int64_t[]){2, 4, 11, 11}, 6, conv_opts(3, 2, 2, 2, 1), false);
}
static void build_conv_grouped(built *b) { conv_case(b, (int64_t[]){2, 8, 7, 7}, 8, conv_opts(3, 1, 1, 1, 4), false); }
static void build_conv_depthwise(built *b)
{
    conv_case(b, (int64_t[]){2, 6, 8, 8}, 12, conv_opts(3, 1, 1, 1, 6), false);
}
static void build_conv_transpose(built *b)
{
    keel_conv2d_opts o = conv_opts(3, 2, 1, 1, 1);
    o.output_pad_h = o.output_pad_w = 1;
    conv_case(b, (int64_t[]){2, 4, 5, 5}, 3, o, true);
}

static void test_conv2d(void **state)
{
    (void)state;
    check_case("conv2d 3x3", build_conv_plain, true);
    check_case("conv2d stride 2 dilation 2", build_conv_strided_dilated, true);
    check_case("conv2d groups 4", build_conv_grouped, true);
    check_case("conv2d depthwise x2", build_conv_depthwise, true);
    check_case("conv_transpose2d stride 2 output_pad 1", build_conv_transpose, true);
}

/* ---- dense ---------------------------------------------------------------------------------- */

static void build_linear(built *b)
{
    keel_node *x = add_input(b, "x", 2, (int64_t[]){4, 20}, true);
    finish_from(b, keel_linear(b->g, "fc", x, 7, NULL));
}

static void build_flatten_linear(built *b)
{
    keel_node *x = add_input(b, "x", 4, (int64_t[]){3, 3, 4, 4}, true);
    finish_from(b, keel_linear(b->g, "fc", keel_flatten(b->g, "flat", x), 5, NULL));
}

static void test_linear(void **state)
{
    (void)state;
    check_case("linear", build_linear, true);
    check_case("flatten + linear", build_flatten_linear, true);
}

/* ---- pooling ---------------------------------------------------------------------------------- */

static keel_pool2d_opts pool_opts(int kernel, int stride, int pad, bool ceil_mode, bool exclude_pad)
{
    keel_pool2d_opts o = keel_pool_opts(kernel, stride, pad);
    o.ceil_mode = ceil_mode;
    o.exclude_pad = exclude_pad;
    return o;
}

static void pool_case(built *b, bool max, keel_pool2d_opts o)
{
    keel_node *x = add_input(b, "x", 4, (int64_t[]){2, 3, 9, 9}, true);
    finish_from(b, max ? keel_max_pool2d(b->g, "pool", x, &o) : keel_avg_pool2d(b->g, "pool", x, &o));
}

static void build_max_overlap(built *b) { pool_case(b, true, pool_opts(3, 2, 1, false, false)); }
static void build_max_ceil(built *b) { pool_case(b, true, pool_opts(2, 2, 0, true, false)); }
static void build_avg_include(built *b) { pool_case(b, false, pool_opts(3, 2, 1, true, false)); }
static void build_avg_exclude(built *b) { pool_case(b, false, pool_opts(3, 2, 1, true, true)); }
static void build_global_avg(built *b)
{
    keel_node *x = add_input(b, "x", 4, (int64_t[]){2, 5, 7, 6}, true);
    finish_from(b, keel_global_avg_pool2d(b->g, "gap", x));
}

static void test_pooling(void **state)
{
    (void)state;
    check_case("max_pool2d 3x3/2 pad 1", build_max_overlap, false);
    check_case("max_pool2d 2x2/2 ceil", build_max_ceil, false);
    check_case("avg_pool2d 3x3/2 pad 1 ceil, padding counted", build_avg_include, false);
    check_case("avg_pool2d 3x3/2 pad 1 ceil, padding excluded", build_avg_exclude, false);
    check_case("global_avg_pool2d", build_global_avg, false);
}

/* ---- element-wise ---------------------------------------------------------------------------------- */

static keel_node *act_input(built *b) { return add_input(b, "x", 4, (int64_t[]){3, 5, 4, 4}, true); }
static void build_relu(built *b) { finish_from(b, keel_relu(b->g, "act", act_input(b))); }
static void build_leaky(built *b) { finish_from(b, keel_leaky_relu(b->g, "act", act_input(b), 0.1f)); }
static void build_sigmoid(built *b) { finish_from(b, keel_sigmoid(b->g, "act", act_input(b))); }
static void build_tanh(built *b) { finish_from(b, keel_tanh(b->g, "act", act_input(b))); }
static void build_add_scale(built *b)
{
    keel_node *x = act_input(b);
    keel_node *y = add_input(b, "y", 4, (int64_t[]){3, 5, 4, 4}, true);
    finish_from(b, keel_scale(b->g, "scale", keel_add(b->g, "add", x, y), -1.5f));
}
static void build_dropout(built *b)
{
    keel_node *x = add_input(b, "x", 2, (int64_t[]){8, 50}, true);
    finish_from(b, keel_dropout(b->g, "drop", x, 0.3f));
}

static void test_elementwise(void **state)
{
    (void)state;
    check_case("relu", build_relu, false);
    check_case("leaky_relu 0.1", build_leaky, false);
    check_case("sigmoid", build_sigmoid, false);
    check_case("tanh", build_tanh, false);
    check_case("add + scale", build_add_scale, false);
    check_case("dropout p=0.3 (same mask)", build_dropout, false);
}

/* ---- normalisation, structure ------------------------------------------------------------------ */

static void build_lrn(built *b)
{
    keel_node *x = add_input(b, "x", 4, (int64_t[]){2, 7, 5, 5}, true);
    finish_from(b, keel_lrn(b->g, "lrn", x, 5, 0.1f, 0.75f, 2.0f));
}

static void build_batch_norm(built *b)
{
    keel_node *x = add_input(b, "x", 4, (int64_t[]){4, 3, 5, 5}, true);
    finish_from(b, keel_batch_norm(b->g, "bn", x, NULL));
}

static void build_batch_norm_2d(built *b)
{
    keel_node *x = add_input(b, "x", 2, (int64_t[]){6, 10}, true);
    finish_from(b, keel_batch_norm(b->g, "bn", x, NULL));
}

static void build_concat(built *b)
{
    keel_node *parts[3] = {
        add_input(b, "a", 4, (int64_t[]){2, 2, 3, 3}, true),
        add_input(b, "b", 4, (int64_t[]){2, 3, 3, 3}, true),
        add_input(b, "c", 4, (int64_t[]){2, 1, 3, 3}, true),
    };
    finish_from(b, keel_concat(b->g, "cat", 3, parts));
}

static void test_norm_and_structure(void **state)
{
    (void)state;
    check_case("lrn size 5", build_lrn, false);
    check_case("batch_norm 4-D", build_batch_norm, false);
    check_case("batch_norm 2-D", build_batch_norm_2d, false);
    check_case("concat (backward: slices)", build_concat, false);
}

/* ---- softmax and losses ------------------------------------------------------------------------------ */

static void build_softmax(built *b)
{
    keel_node *x = add_input(b, "x", 2, (int64_t[]){4, 10}, true);
    finish_from(b, keel_softmax(b->g, "softmax", x));
}

static void build_cross_entropy(built *b)
{
    keel_node *logits = add_input(b, "logits", 2, (int64_t[]){8, 10}, true);
    keel_node *labels = add_labels(b, 8, 10);
    finish_loss(b, keel_softmax_cross_entropy(b->g, "loss", logits, labels));
}

static void build_mse(built *b)
{
    keel_node *p = add_input(b, "p", 2, (int64_t[]){4, 6}, true);
    keel_node *t = add_input(b, "t", 2, (int64_t[]){4, 6}, false);
    finish_loss(b, keel_mse_loss(b->g, "loss", p, t));
}

static void build_bce(built *b)
{
    keel_node *x = add_input(b, "x", 2, (int64_t[]){4, 6}, true);
    keel_node *t = add_input(b, "t", 2, (int64_t[]){4, 6}, false);
    finish_loss(b, keel_bce_with_logits(b->g, "loss", x, t));
}

static void test_losses(void **state)
{
    (void)state;
    check_case("softmax", build_softmax, false);
    check_case("softmax cross-entropy", build_cross_entropy, false);
    check_case("mse", build_mse, false);
    check_case("bce with logits", build_bce, false);
}

/* A label outside the classes is an error at the next synchronisation, as
 * on the CPU, not a silent read out of bounds. */
static void test_bad_label(void **state)
{
    (void)state;
    need_gpu();
    keel_graph *g = keel_graph_new();
    keel_node *logits = keel_input(g, "logits", 2, (int64_t[]){4, 3});
    keel_node *labels = keel_input_labels(g, "labels", 4);
    keel_node *loss = keel_softmax_cross_entropy(g, "loss", logits, labels);
    ks_graph_ok(g);
    keel_graph_keep(g, loss);
    keel_plan_opts opts = {.devices = "cuda:0", .seed = SEED};
    keel_plan *plan = NULL;
    KS_OK(keel_plan_compile(&plan, g, ctx, &opts));
    float x[12];
    ks_fill_uniform(x, 12, 5, -1.0f, 1.0f);
    int32_t bad[4] = {0, 1, 7, 2};
    KS_OK(keel_plan_set_input(plan, logits, x));
    KS_OK(keel_plan_set_input(plan, labels, bad));
    keel_status st = keel_plan_forward(plan, false);
    float value = 0.0f;
    if (st == KEEL_OK)
        st = keel_plan_read(plan, loss, &value);
    assert_int_equal(st, KEEL_ERR_INVALID_ARGUMENT);
    printf("bad label: %s\n", keel_last_error());
    assert_non_null(strstr(keel_last_error(), "label 7 of sample 2"));
    keel_plan_destroy(plan);
    keel_graph_free(g);
}

/* ---- LeNet-5 learns on the GPU as on the CPU ------------------------------------------------------------ */

#define TRAIN_BATCH 32
#define TRAIN_STEPS 30

/* Fashion-MNIST's first samples when KEEL_DATA_DIR has them; otherwise a
 * learnable synthetic set (each class a bright block in its own place). */
static void training_batch(keel_dataset *d, int64_t step, float *images, int32_t *labels)
{
    const int64_t pixels = 28 * 28;
    for (int64_t i = 0; i < TRAIN_BATCH; i++) {
        int64_t index = step * TRAIN_BATCH + i;
        if (d) {
            KS_OK(keel_dataset_get(d, index % keel_dataset_size(d), images + i * pixels, &labels[i]));
            continue;
        }
        int32_t label = (int32_t)((index * 7919) % 10);
        ks_fill_uniform(images + i * pixels, pixels, (uint64_t)index, 0.0f, 0.3f);
        for (int r = 0; r < 8; r++)
            for (int c = 0; c < 8; c++)
                images[i * pixels + (2 + (label / 5) * 12 + r) * 28 + 2 + (label % 5) * 5 + c % 5] += 1.0f;
        labels[i] = label;
    }
}

/* lenet5 with SGD on a device, fed training_batch's batches. */
typedef struct lenet_run {
    keel_graph *g;
    keel_model_io io;
    keel_plan *plan;
    keel_optimizer *opt;
    keel_optimizer_opts oopts;
    float *images;
    int32_t *labels;
} lenet_run;

static void lenet_start(lenet_run *r, const char *devices, bool strict)
{
    r->g = keel_graph_new();
    keel_model_opts mopts = {.batch = TRAIN_BATCH};
    KS_OK(keel_model_build(r->g, "lenet5", &mopts, &r->io));
    keel_graph_keep(r->g, r->io.loss);
    KS_OK(keel_graph_backward(r->g, r->io.loss));
    keel_plan_opts popts = {.devices = devices, .seed = SEED, .strict_fp32 = strict};
    KS_OK(keel_plan_compile(&r->plan, r->g, ctx, &popts));
    r->oopts = keel_optimizer_defaults(KEEL_OPTIMIZER_SGD);
    KS_OK(keel_optimizer_create(&r->opt, r->plan, &r->oopts));
    r->images = malloc((size_t)TRAIN_BATCH * 28 * 28 * sizeof *r->images);
    r->labels = malloc((size_t)TRAIN_BATCH * sizeof *r->labels);
    assert_true(r->images && r->labels);
}

/* One training step; its loss. */
static float lenet_step(lenet_run *r, keel_dataset *d, int step)
{
    training_batch(d, step, r->images, r->labels);
    KS_OK(keel_plan_set_input(r->plan, r->io.images, r->images));
    KS_OK(keel_plan_set_input(r->plan, r->io.labels, r->labels));
    KS_OK(keel_plan_forward(r->plan, true));
    KS_OK(keel_plan_backward(r->plan));
    KS_OK(keel_optimizer_step(r->opt, r->oopts.lr));
    float loss;
    KS_OK(keel_plan_read(r->plan, r->io.loss, &loss));
    return loss;
}

static void lenet_stop(lenet_run *r)
{
    free(r->images);
    free(r->labels);
    keel_optimizer_destroy(r->opt);
    keel_plan_destroy(r->plan);
    keel_graph_free(r->g);
}

static void train_on(const char *devices, keel_dataset *d, float *losses)
{
    lenet_run r;
    lenet_start(&r, devices, true);
    for (int step = 0; step < TRAIN_STEPS; step++)
        losses[step] = lenet_step(&r, d, step);
    lenet_stop(&r);
}

/* Nothing allocates inside a training step: after a warm-up step, further
 * steps (inputs, forward, backward, update, loss read) neither reach the
 * driver nor take a block from the device pool's cache. */
static void test_steps_allocate_nothing(void **state)
{
    (void)state;
    need_gpu();
    lenet_run r;
    lenet_start(&r, "cuda:0", false);
    keel_memory_report before = {0}, after = {0};
    assert_true(isfinite(lenet_step(&r, NULL, 0)));
    KS_OK(keel_plan_memory(r.plan, &before));
    for (int step = 1; step < 4; step++)
        assert_true(isfinite(lenet_step(&r, NULL, step)));
    KS_OK(keel_plan_memory(r.plan, &after));
    printf("device pool: reserved %lld, peak %lld bytes; %lld driver allocations, %lld reuses\n",
           (long long)after.pool_reserved_bytes, (long long)after.pool_peak_bytes,
           (long long)after.pool_driver_allocs, (long long)after.pool_reuses);
    assert_true(before.pool_reserved_bytes > 0);
    assert_int_equal(after.pool_driver_allocs, before.pool_driver_allocs);
    assert_int_equal(after.pool_reuses, before.pool_reuses);
    assert_int_equal(after.pool_in_use_bytes, before.pool_in_use_bytes);
    lenet_stop(&r);
}

static double mean(const float *v, int from, int to)
{
    double sum = 0.0;
    for (int i = from; i < to; i++)
        sum += v[i];
    return sum / (to - from);
}

static void test_lenet5_learns(void **state)
{
    (void)state;
    need_gpu();
    keel_dataset *d = NULL;
    const char *dir = getenv("KEEL_DATA_DIR");
    if (!dir || keel_dataset_load_mnist_dir(&d, dir, true) != KEEL_OK)
        d = NULL;
    printf("lenet5 on %s\n", d ? "Fashion-MNIST" : "synthetic blocks (no KEEL_DATA_DIR)");
    float cpu[TRAIN_STEPS], gpu[TRAIN_STEPS];
    train_on("cpu", d, cpu);
    train_on("cuda:0", d, gpu);
    keel_dataset_free(d);
    for (int s = 0; s < TRAIN_STEPS; s++)
        printf("step %2d  loss cpu %.6f  cuda %.6f\n", s, cpu[s], gpu[s]);
    /* The first step sees the same weights and data: IEEE fp32 agreement. */
    double want0 = cpu[0];
    ks_check("lenet5 first loss, cuda vs cpu", &gpu[0], &want0, 1, 1e-30, 1e-4);
    /* Later steps drift apart by rounding only, slowly. */
    for (int s = 1; s < 5; s++) {
        double want = cpu[s];
        char what[64];
        snprintf(what, sizeof what, "lenet5 loss at step %d, cuda vs cpu", s);
        ks_check(what, &gpu[s], &want, 1, 1e-30, 1e-2);
    }
    double first = mean(gpu, 0, 3), last = mean(gpu, TRAIN_STEPS - 5, TRAIN_STEPS);
    double cpu_last = mean(cpu, TRAIN_STEPS - 5, TRAIN_STEPS);
    printf("mean loss: first 3 steps %.4f, last 5 steps %.4f on cuda (%.4f on cpu)\n", first, last, cpu_last);
    assert_true(last < 0.8 * first);
    assert_true(fabs(last - cpu_last) < 0.15 * cpu_last + 0.05);
}

/* Defined by libkeel only when it was built with CUDA. */
extern const keel_backend keel_cuda_backend __attribute__((weak));

/* ---- model parallelism: placement groups on streams and GPUs ---------------------------------------------
 * AlexNet's two towers in miniature: each tower on its own placement group,
 * joined by a concat and a convolution that reads both. On "cuda:0,cuda:0"
 * the towers run on two streams of one GPU, on "cuda:0,cuda:1" on two GPUs
 * reading each other's memory; either must compute what one stream does. */
static void build_towers(built *b)
{
    keel_node *x = add_input(b, "x", 4, (int64_t[]){4, 3, 12, 12}, true);
    keel_node *labels = add_labels(b, 4, 10);
    keel_conv2d_opts c3 = conv_opts(3, 1, 1, 1, 1);
    keel_node *towers[2];
    for (int t = 0; t < 2; t++) {
        int previous = keel_graph_on_device(b->g, t);
        char name[32];
        snprintf(name, sizeof name, "tower%d.conv", t);
        keel_node *h = keel_relu(b->g, NULL, keel_conv2d(b->g, name, x, 4, &c3));
        snprintf(name, sizeof name, "tower%d.bn", t);
        h = keel_batch_norm(b->g, name, h, NULL);
        snprintf(name, sizeof name, "tower%d.pool", t);
        keel_pool2d_opts p2 = pool_opts(2, 2, 0, false, false);
        towers[t] = keel_max_pool2d(b->g, name, h, &p2);
        keel_graph_on_device(b->g, previous);
    }
    keel_node *h = keel_relu(b->g, NULL, keel_conv2d(b->g, "across", keel_concat(b->g, "join", 2, towers), 6, &c3));
    keel_node *logits = keel_linear(b->g, "fc", keel_flatten(b->g, "flat", h), 10, NULL);
    add_output(b, logits);
    finish_loss(b, keel_softmax_cross_entropy(b->g, "loss", logits, labels));
}

static void test_towers_on_streams_and_gpus(void **state)
{
    (void)state;
    need_gpu();
    const char *splits[] = {"cuda:0,cuda:0", "cuda:0,cuda:1"};
    int gpus = keel_cuda_backend.device_count();
    for (int k = 0; k < (gpus >= 2 ? 2 : 1); k++) {
        result one = {0}, split = {0};
        run_on(build_towers, "cuda:0", true, &one);
        run_on(build_towers, splits[k], true, &split);
        char what[64];
        snprintf(what, sizeof what, "towers on %s vs cuda:0:", splits[k]);
        compare(what, &one, &split, 1e-5);
        result_free(&one);
        result_free(&split);
    }
    if (gpus < 2)
        printf("one GPU: cuda:0,cuda:1 not run\n");
    /* Copying what each stream reads into its own memory, as GPUs without a
     * peer-to-peer path do, computes the same too. */
    result one = {0}, copied = {0};
    run_on(build_towers, "cuda:0", true, &one);
    keel_plan_opts opts = {.devices = gpus >= 2 ? "cuda:0,cuda:1" : "cuda:0,cuda:0", .seed = SEED,
                           .strict_fp32 = true, .poison_dead = true, .copy_between_devices = true};
    run_plan(build_towers, &opts, &copied);
    compare("towers copying between devices vs cuda:0:", &one, &copied, 1e-5);
    result_free(&one);
    result_free(&copied);
}

/* ---- inputs copied while a step runs -------------------------------------------------------------------
 * Batches in page-locked memory (keel_plan_host_alloc) go up on the copy
 * stream while the previous step runs, as the trainer feeds them: step k's
 * loss is read after batch k + 1 was set. Each loss must still be its own
 * batch's, as with pageable memory and a plain upload after each read. */
static void run_fed_steps(bool page_locked, float *losses)
{
    enum { BATCH = 8, STEPS = 3 };
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 4, (int64_t[]){BATCH, 3, 12, 12});
    keel_node *labels = keel_input_labels(g, "labels", BATCH);
    keel_conv2d_opts c3 = conv_opts(3, 1, 1, 1, 1);
    keel_node *h = keel_relu(g, NULL, keel_conv2d(g, "conv", x, 4, &c3));
    keel_node *loss = keel_softmax_cross_entropy(g, "loss", keel_linear(g, "fc", keel_flatten(g, NULL, h), 10, NULL),
                                                 labels);
    keel_graph_keep(g, loss);
    KS_OK(keel_graph_backward(g, loss));
    keel_plan_opts opts = {.devices = "cuda:0", .seed = SEED, .strict_fp32 = true};
    keel_plan *plan = NULL;
    KS_OK(keel_plan_compile(&plan, g, ctx, &opts));
    size_t floats = (size_t)BATCH * 3 * 12 * 12;
    float *host[2];
    int32_t label_values[BATCH];
    for (int i = 0; i < 2; i++) {
        host[i] = page_locked ? keel_plan_host_alloc(plan, floats * sizeof(float)) : malloc(floats * sizeof(float));
        assert_non_null(host[i]);
    }
    for (int i = 0; i < BATCH; i++)
        label_values[i] = i % 10;
    KS_OK(keel_plan_set_input(plan, labels, label_values));
    ks_fill_uniform(host[0], (int64_t)floats, 100, -1.0f, 1.0f);
    KS_OK(keel_plan_set_input(plan, x, host[0]));
    for (int k = 0; k < STEPS; k++) {
        KS_OK(keel_plan_forward(plan, true));
        KS_OK(keel_plan_backward(plan));
        float *next = host[(k + 1) % 2];
        ks_fill_uniform(next, (int64_t)floats, 101 + (uint64_t)k, -1.0f, 1.0f);
        if (page_locked)
            KS_OK(keel_plan_set_input(plan, x, next)); /* before the read: overlaps step k */
        KS_OK(keel_plan_read(plan, loss, &losses[k]));
        if (!page_locked)
            KS_OK(keel_plan_set_input(plan, x, next));
    }
    for (int i = 0; i < 2; i++) {
        if (page_locked)
            keel_plan_host_free(plan, host[i]);
        else
            free(host[i]);
    }
    keel_plan_destroy(plan);
    keel_graph_free(g);
}

static void test_inputs_copied_during_step(void **state)
{
    (void)state;
    need_gpu();
    float overlapped[3], plain[3];
    run_fed_steps(true, overlapped);
    run_fed_steps(false, plain);
    for (int k = 0; k < 3; k++) {
        printf("step %d: loss %.7f (page-locked, copied during the step) %.7f (plain upload)\n", k,
               (double)overlapped[k], (double)plain[k]);
        assert_true(overlapped[k] == plain[k]);
    }
    assert_true(plain[0] != plain[1] && plain[1] != plain[2]); /* three different batches */
}

/* ---- without a GPU ----------------------------------------------------------------------------------------
 * The table is complete (every op the CPU runs has a CUDA kernel), and a
 * plan for cuda:0 on a machine without one fails at compile time, saying so. */


static void test_cuda_table_complete(void **state)
{
    (void)state;
    if (!&keel_cuda_backend) {
        printf("libkeel was built without CUDA\n");
        skip();
    }
    assert_string_equal(keel_cuda_backend.name, "cuda");
    for (int op = 0; op < KEEL_OP_COUNT; op++)
        if (keel_cpu_backend.run[op] && !keel_cuda_backend.run[op])
            fail_msg("op %d runs on the CPU but has no CUDA kernel", op);
    assert_non_null(keel_cuda_backend.sgd_update);
    assert_non_null(keel_cuda_backend.adam_update);
    /* Several streams and GPUs in one plan. */
    assert_non_null(keel_cuda_backend.event_create);
    assert_non_null(keel_cuda_backend.event_record);
    assert_non_null(keel_cuda_backend.event_wait);
    assert_non_null(keel_cuda_backend.connect_peer);
    assert_true(keel_cuda_backend.device_count() >= 0);
}

static void test_without_gpu(void **state)
{
    (void)state;
    if (have_gpu)
        skip();
    keel_graph *g = keel_graph_new();
    keel_node *x = keel_input(g, "x", 2, (int64_t[]){2, 3});
    keel_graph_keep(g, keel_relu(g, "relu", x));
    ks_graph_ok(g);
    keel_plan_opts opts = {.devices = "cuda:0"};
    keel_plan *plan = NULL;
    keel_status st = keel_plan_compile(&plan, g, ctx, &opts);
    printf("cuda:0 without a GPU: %s: %s\n", keel_status_string(st), keel_last_error());
    assert_null(plan);
    assert_true(st == KEEL_ERR_NOT_FOUND || st == KEEL_ERR_UNSUPPORTED);
    assert_non_null(strstr(keel_last_error(), "cuda"));
    keel_graph_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cuda_table_complete),
        cmocka_unit_test(test_without_gpu),
        cmocka_unit_test(test_conv2d),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_pooling),
        cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_norm_and_structure),
        cmocka_unit_test(test_losses),
        cmocka_unit_test(test_bad_label),
        cmocka_unit_test(test_lenet5_learns),
        cmocka_unit_test(test_steps_allocate_nothing),
        cmocka_unit_test(test_towers_on_streams_and_gpus),
        cmocka_unit_test(test_inputs_copied_during_step),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
