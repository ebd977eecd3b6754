/* The GPU-free cuDNN tier: every convolution graph Keel builds, built as a
 * cuDNN operation graph, ranked by cuDNN's heuristics against the H200
 * device profile (a DEVICEPROP JSON) and finalized into execution plans,
 * with no GPU and no driver. For each convolution (fprop, dgrad, wgrad of
 * plain, strided, dilated, grouped and depthwise layers, conv_transpose2d,
 * every layer of the model zoo, and the fused conv+bias+ReLU forward) at
 * least one plan must finalize; the workspace sizes are printed ("WS ..."
 * lines in the test log) and, with KEEL_CUDNN_REPORT=path, written as CSV.
 * Last, with the toolkit's stub standing in for a driver, a runtime-compiled
 * engine that fails its plan build must give way to the next engine.
 *
 * The profile comes from KEEL_CUDNN_DEVICEPROP, else shared/docs/h200-deviceprop.json
 * found by walking up from this executable, the working directory or the
 * source file (the checkout sits beside shared/).
 * A libkeel built without CUDA skips every test. */
#include "support/support.h"
#include "cuda/cuda.h"
#include "graph/graph_internal.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROFILE_NAME "h200-deviceprop.json"

static char *profile_json;
static FILE *report_csv;

/* cuDNN's engines keep caches (a cuBLASLt handle per engine, code in
 * libraries it unloads at exit) that LeakSanitizer reports with no owner it
 * can name. Allocations made inside cuDNN calls are exempted from the leak
 * check; Keel's own allocations there are freed before the calls return.
 * The hooks exist only in sanitizer builds. */
void __lsan_disable(void) __attribute__((weak));
void __lsan_enable(void) __attribute__((weak));

static keel_status conv_check(const keel_conv_shape *shape, const keel_conv_policy *policy, const char *json,
                              int max_plans, keel_cudnn_report *report)
{
    if (__lsan_disable)
        __lsan_disable();
    keel_status st = keel_cudnn_conv_check(shape, policy, json, max_plans, report);
    if (__lsan_enable)
        __lsan_enable();
    return st;
}

/* ---- finding and reading the profile ------------------------------------------ */

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *text = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        if (size > 0 && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)size + 1))) {
            if (fread(text, 1, (size_t)size, f) != (size_t)size) {
                free(text);
                text = NULL;
            } else {
                text[size] = '\0';
            }
        }
    }
    fclose(f);
    return text;
}

/* Tries dir/shared/docs/, dir/docs/ and dir/ for the profile, for dir = `start`
 * and each of its parents. */
static char *find_upwards(char *dir, char *found_path, size_t size)
{
    static const char *const places[] = {"/shared/docs/", "/docs/", "/"};
    for (;;) {
        for (size_t i = 0; i < sizeof places / sizeof places[0]; i++) {
            snprintf(found_path, size, "%s%s%s", dir, places[i], PROFILE_NAME);
            char *text = read_text(found_path);
            if (text)
                return text;
        }
        char *slash = strrchr(dir, '/');
        if (!slash || slash == dir)
            return NULL;
        *slash = '\0';
    }
}

/* KEEL_CUDNN_DEVICEPROP, else the first profile found above this
 * executable, the working directory or this source file. */
static char *find_profile(char *found_path, size_t size)
{
    const char *env = getenv("KEEL_CUDNN_DEVICEPROP");
    if (env && *env) {
        snprintf(found_path, size, "%s", env);
        return read_text(env);
    }
    char dir[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", dir, sizeof dir - 1);
    if (n > 0) {
        dir[n] = '\0';
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        char *text = find_upwards(dir, found_path, size);
        if (text)
            return text;
    }
    if (getcwd(dir, sizeof dir)) {
        char *text = find_upwards(dir, found_path, size);
        if (text)
            return text;
    }
    /* A build folder outside the checkout: start from this source file,
     * whose path the compiler was given relative to the build folder. */
    char source[PATH_MAX];
    if (realpath(__FILE__, source)) {
        char *text = find_upwards(source, found_path, size);
        if (text)
            return text;
    }
    return NULL;
}

static int setup(void **state)
{
    (void)state;
    if (keel_cudnn_version() == 0)
        return 0; /* built without CUDA: the tests skip */
    char path[PATH_MAX + 64];
    profile_json = find_profile(path, sizeof path);
    if (!profile_json) {
        fprintf(stderr, "cannot find %s: set KEEL_CUDNN_DEVICEPROP to the cuDNN device profile JSON\n",
                PROFILE_NAME);
        return -1;
    }
    printf("cuDNN %ld, device profile %s\n", keel_cudnn_version(), path);
    const char *csv = getenv("KEEL_CUDNN_REPORT");
    if (csv && *csv && (report_csv = fopen(csv, "w")))
        fprintf(report_csv, "source,pass,shape,policy,candidates,plans,engine,workspace_bytes,max_workspace_bytes,"
                            "tensor_cores\n");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    free(profile_json);
    if (report_csv)
        fclose(report_csv);
    return 0;
}

static void skip_without_cuda(void)
{
    if (keel_cudnn_version() == 0) {
        printf("libkeel was built without CUDA: skipping the cuDNN graph tier\n");
        skip();
    }
}

/* ---- checking one convolution ----------------------------------------------------- */

typedef struct policy_case {
    const char *name;
    keel_conv_policy policy;
} policy_case;

static const policy_case policies[] = {
    {"default", {.strict_fp32 = false}},
    {"strict-fp32", {.strict_fp32 = true}},
    {"deterministic", {.deterministic = true}},
};

/* Asserts that at least one plan finalizes under each policy (`optional`
 * policies only report) and prints one WS line per policy. */
static void check_conv(const char *source, const keel_conv_shape *shape, int max_plans, int n_policies,
                       int required_policies)
{
    char desc[300];
    keel_conv_shape_str(shape, desc, sizeof desc);
    for (int p = 0; p < n_policies; p++) {
        keel_cudnn_report r = {0};
        keel_status st = conv_check(shape, &policies[p].policy, profile_json, max_plans, &r);
        if (st != KEEL_OK) {
            printf("WS %s | %s | %s: no plan: %s\n", source, desc, policies[p].name, keel_last_error());
            if (p < required_policies)
                fail_msg("%s: %s: no cuDNN plan under the %s policy: %s", source, desc, policies[p].name,
                         keel_last_error());
            continue;
        }
        assert_true(r.plans >= 1);
        printf("WS %s | %s | %s: engine %lld, workspace %lld B (max %lld B over %d plan%s of %d candidates)%s\n",
               source, desc, policies[p].name, (long long)r.engine_id, (long long)r.workspace_bytes,
               (long long)r.max_workspace_bytes, r.plans, r.plans == 1 ? "" : "s", r.candidates,
               r.tensor_cores ? ", TF32" : "");
        if (report_csv)
            fprintf(report_csv, "\"%s\",%d,\"%s\",%s,%d,%d,%lld,%lld,%lld,%d\n", source, (int)shape->pass, desc,
                    policies[p].name, r.candidates, r.plans, (long long)r.engine_id, (long long)r.workspace_bytes,
                    (long long)r.max_workspace_bytes, r.tensor_cores);
    }
}

static bool is_conv(const keel_node *x)
{
    return x->op == KEEL_OP_CONV2D || x->op == KEEL_OP_CONV2D_BWD_DATA || x->op == KEEL_OP_CONV2D_BWD_WEIGHT ||
           x->op == KEEL_OP_CONV_TRANSPOSE2D;
}

static bool same_shape(const keel_conv_shape *a, const keel_conv_shape *b)
{
    return memcmp(&a->batch, &b->batch, sizeof *a - offsetof(keel_conv_shape, batch)) == 0 && a->pass == b->pass;
}

/* Every distinct convolution of a differentiated graph (and the fused
 * forward of each biased conv2d). Returns how many were checked. */
static int check_graph(const char *source, keel_graph *g, int max_plans, int n_policies)
{
    keel_conv_shape *seen = calloc((size_t)g->n_nodes * 2 + 1, sizeof *seen);
    assert_non_null(seen);
    int n_seen = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const keel_node *x = g->nodes[i];
        if (!is_conv(x))
            continue;
        keel_conv_shape shape;
        KS_OK(keel_conv_shape_of(x, &shape));
        for (int fused = 0; fused < 2; fused++) {
            if (fused) {
                if (x->op != KEEL_OP_CONV2D || !x->attrs.conv.has_bias)
                    break;
                shape.pass = KEEL_CONV_FPROP_BIAS_RELU;
            }
            bool known = false;
            for (int k = 0; k < n_seen && !known; k++)
                known = same_shape(&seen[k], &shape);
            if (known)
                continue;
            seen[n_seen++] = shape;
            char where[200];
            snprintf(where, sizeof where, "%s %s", source, x->name);
            /* The fused graph's strict-fp32 and deterministic results are reported, not required. */
            check_conv(where, &shape, max_plans, n_policies, fused ? 1 : n_policies);
        }
    }
    free(seen);
    return n_seen;
}

/* ---- the layer cases ---------------------------------------------------------------- */

typedef struct layer_case {
    const char *label;
    bool transpose;
    int64_t batch, channels, height, width;
    int out_channels;
    keel_conv2d_opts opts;
} layer_case;

static keel_conv2d_opts opts_of(int kernel, int stride, int pad, int dilation, int groups)
{
    keel_conv2d_opts o = keel_conv_opts(kernel, stride, pad);
    o.dilation_h = o.dilation_w = dilation;
    o.groups = groups;
    return o;
}

static void test_layer_convolutions(void **state)
{
    (void)state;
    skip_without_cuda();
    keel_conv2d_opts asymmetric = keel_conv_opts(3, 1, 0);
    asymmetric.kernel_w = 5;
    asymmetric.pad_top = 1, asymmetric.pad_bottom = 0, asymmetric.pad_left = 2, asymmetric.pad_right = 1;
    keel_conv2d_opts transpose = opts_of(4, 2, 1, 1, 1);
    keel_conv2d_opts transpose_pad = opts_of(3, 2, 1, 1, 1);
    transpose_pad.output_pad_h = transpose_pad.output_pad_w = 1;
    /* Weight {in, out/groups, k, k}: conv2d's {K, C/groups} seen from the transpose. */
    keel_conv2d_opts transpose_grouped = opts_of(4, 2, 1, 1, 4);
    const layer_case cases[] = {
        {"plain 3x3", false, 8, 16, 32, 32, 32, opts_of(3, 1, 1, 1, 1)},
        {"strided 3x3/2", false, 8, 16, 32, 32, 32, opts_of(3, 2, 1, 1, 1)},
        {"dilated 3x3 d2", false, 8, 16, 32, 32, 32, opts_of(3, 1, 2, 2, 1)},
        {"grouped g4", false, 8, 32, 16, 16, 64, opts_of(3, 1, 1, 1, 4)},
        {"depthwise", false, 8, 32, 16, 16, 32, opts_of(3, 1, 1, 1, 32)},
        {"depthwise x2 strided", false, 8, 16, 16, 16, 32, opts_of(3, 2, 1, 1, 16)},
        {"pointwise 1x1", false, 8, 64, 14, 14, 128, opts_of(1, 1, 0, 1, 1)},
        {"lenet 5x5", false, 8, 1, 28, 28, 6, opts_of(5, 1, 2, 1, 1)},
        {"alexnet 11x11/4", false, 4, 3, 227, 227, 96, opts_of(11, 4, 0, 1, 1)},
        {"asymmetric 3x5", false, 4, 8, 20, 24, 8, asymmetric},
        {"transpose 4x4/2", true, 8, 64, 8, 8, 32, transpose},
        {"transpose 3x3/2 output_pad", true, 8, 16, 7, 7, 8, transpose_pad},
        {"transpose 4x4/2 groups 4", true, 8, 32, 8, 8, 16, transpose_grouped},
    };
    int checked = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const layer_case *c = &cases[i];
        keel_graph *g = keel_graph_new();
        int64_t shape[4] = {c->batch, c->channels, c->height, c->width};
        keel_node *x = keel_input(g, "x", 4, shape);
        keel_graph_require_grad(g, x);
        keel_node *y = c->transpose ? keel_conv_transpose2d(g, "conv", x, c->out_channels, &c->opts)
                                    : keel_conv2d(g, "conv", x, c->out_channels, &c->opts);
        ks_graph_ok(g);
        int64_t y_shape[KEEL_MAX_DIMS];
        int y_ndim = keel_node_shape(y, y_shape);
        keel_node *dy = keel_input(g, "dy", y_ndim, y_shape);
        KS_OK(keel_graph_backward_from(g, y, dy));
        /* fprop (or the transpose's dgrad), dgrad (or conv), wgrad, and the fused forward. */
        int n = check_graph(c->label, g, 0, 3);
        assert_true(n >= 3);
        checked += n;
        keel_graph_free(g);
    }
    printf("%d layer convolutions: every one has a cuDNN plan\n", checked);
}

/* ---- the model zoo ---------------------------------------------------------------------- */

static void test_model_zoo(void **state)
{
    (void)state;
    skip_without_cuda();
    int total = 0;
    for (int m = 0; m < keel_model_count(); m++) {
        const char *name = keel_model_name(m);
        keel_graph *g = keel_graph_new();
        keel_model_opts opts = {.batch = 8, .training = true};
        keel_model_io io;
        KS_OK(keel_model_build(g, name, &opts, &io));
        if (io.loss) {
            KS_OK(keel_graph_backward(g, io.loss));
        } else {
            /* A network without its own loss (a GAN's generator): differentiate its output. */
            assert_non_null(io.logits);
            int64_t shape[KEEL_MAX_DIMS];
            int ndim = keel_node_shape(io.logits, shape);
            KS_OK(keel_graph_backward_from(g, io.logits, keel_input(g, "dy", ndim, shape)));
        }
        /* The best ranked plan is enough here; the layer cases build them all. */
        int n = check_graph(name, g, 1, 2);
        printf("%s: %d distinct convolutions, every one has a cuDNN plan\n", name, n);
        total += n;
        keel_graph_free(g);
    }
    printf("model zoo: %d convolutions checked\n", total);
}

/* ---- what a bad problem says --------------------------------------------------------------- */

static void test_impossible_shapes(void **state)
{
    (void)state;
    skip_without_cuda();
    keel_conv_shape s = {.pass = KEEL_CONV_FPROP, .batch = 2, .channels = 6, .height = 8, .width = 8,
                         .filters = 8, .out_height = 8, .out_width = 8, .kernel_h = 3, .kernel_w = 3, .groups = 4,
                         .pad_top = 1, .pad_bottom = 1, .pad_left = 1, .pad_right = 1,
                         .stride_h = 1, .stride_w = 1, .dilation_h = 1, .dilation_w = 1};
    keel_cudnn_report r;
    assert_int_equal(conv_check(&s, NULL, profile_json, 1, &r), KEEL_ERR_SHAPE);
    assert_non_null(strstr(keel_last_error(), "groups"));
    s.groups = 2;
    s.out_height = 9; /* not what the padding and stride give */
    keel_status st = conv_check(&s, NULL, profile_json, 1, &r);
    assert_int_not_equal(st, KEEL_OK);
    printf("wrong output size: %s\n", keel_last_error());
    assert_non_null(strstr(keel_last_error(), "cudnn"));
    assert_int_not_equal(conv_check(&s, NULL, "{\"not\": \"a profile\"}", 1, &r), KEEL_OK);
    printf("bad profile: %s\n", keel_last_error());
}

/* ---- the real profile, on a machine with a GPU --------------------------------------------
 * With KEEL_CUDNN_SAVE_DEVICEPROP=path, cuDNN's profile of cuda:0 is written
 * there (to replace the hand-written one) and checked to load back. */
static void test_save_device_profile(void **state)
{
    (void)state;
    skip_without_cuda();
    const char *path = getenv("KEEL_CUDNN_SAVE_DEVICEPROP");
    if (!path || !*path)
        skip();
    size_t size = (size_t)1 << 16;
    char *json = malloc(size);
    assert_non_null(json);
    keel_status st = keel_cudnn_deviceprop_json(0, json, size);
    if (st == KEEL_ERR_NOT_FOUND) {
        printf("no GPU to describe: %s\n", keel_last_error());
        free(json);
        skip();
    }
    KS_OK(st);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(json, f) >= 0);
    assert_int_equal(fclose(f), 0);
    printf("saved cuDNN's profile of cuda:0 to %s: %s\n", path, json);
    keel_conv_shape s = {.pass = KEEL_CONV_FPROP, .batch = 8, .channels = 16, .height = 32, .width = 32,
                         .filters = 32, .out_height = 32, .out_width = 32, .kernel_h = 3, .kernel_w = 3, .groups = 1,
                         .pad_top = 1, .pad_bottom = 1, .pad_left = 1, .pad_right = 1,
                         .stride_h = 1, .stride_w = 1, .dilation_h = 1, .dilation_w = 1};
    keel_cudnn_report r;
    KS_OK(conv_check(&s, NULL, json, 1, &r));
    free(json);
}

/* ---- runtime-compiled engines ---------------------------------------------------------------
 * cuDNN fetches runtime-compiled engine configs only where libcuda.so.1
 * loads. Without a driver, the toolkit's stub stands in: the configs pass
 * the support checks and NVRTC builds them, but the plan finalize fails
 * (EXECUTION_FAILED_CUDA_DRIVER), as a failed build would on a GPU. That
 * refusal must move on to the next engine, not fail the convolution. The
 * stub stays loaded, so this test runs last. */
static void test_runtime_compiled_refused(void **state)
{
    (void)state;
    skip_without_cuda();
    bool stub = false;
    if (!dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL)) {
        const char *root = getenv("CUDA_PATH");
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/lib64/stubs/libcuda.so", root && *root ? root : "/usr/local/cuda");
        stub = dlopen(path, RTLD_NOW | RTLD_GLOBAL) != NULL;
        if (!stub) {
            printf("neither a driver nor the toolkit's stub libcuda (%s) loads: skipping\n", path);
            skip();
        }
    }
    keel_conv_shape s = {.pass = KEEL_CONV_FPROP, .batch = 8, .channels = 16, .height = 32, .width = 32,
                         .filters = 32, .out_height = 32, .out_width = 32, .kernel_h = 3, .kernel_w = 3, .groups = 1,
                         .pad_top = 1, .pad_bottom = 1, .pad_left = 1, .pad_right = 1,
                         .stride_h = 1, .stride_w = 1, .dilation_h = 1, .dilation_w = 1};
    keel_cudnn_report r = {0};
    KS_OK(conv_check(&s, NULL, profile_json, 0, &r));
    printf("%s: %d plans of %d candidates\n", stub ? "stub driver" : "driver", r.plans, r.candidates);
    assert_true(r.plans >= 1);
    if (stub)
        assert_true(r.candidates > r.plans); /* the runtime-compiled one was refused */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_device_profile),
        cmocka_unit_test(test_layer_convolutions),
        cmocka_unit_test(test_model_zoo),
        cmocka_unit_test(test_impossible_shapes),
        cmocka_unit_test(test_runtime_compiled_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
