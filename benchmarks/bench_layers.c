/* bench_layers: times Keel training steps on the CPU, whole model or one
 * convolution, for benchmarks/conv_vs_pytorch.py.
 *
 *   bench_layers --model resnet50 --batch 8 [--iters 10] [--warmup 3] [--threads 2]
 *                [--input CxHxW] [--per-layer | --per-node] [--json]
 *   bench_layers --conv N,C,H,W,F,KH,KW,SH,SW,PH,PW[,GROUPS[,BIAS]] [--iters K] [--json]
 *
 * A model step is forward (training) + backward + one SGD-momentum update on
 * synthetic data; a conv step is forward + data gradient + weight gradient.
 * Times are medians over --iters steps after --warmup steps. Peak memory is
 * the process's maximum resident set; minor page faults are counted over the
 * timed steps, so a plan that allocates or first-touches memory inside a step
 * shows up as faults_per_step > 0. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include "keel/keel.h"

typedef struct bench_opts {
    const char *model;
    const char *conv;          /* "N,C,H,W,F,KH,KW,SH,SW,PH,PW[,G[,BIAS]]" */
    int64_t batch;
    int height, width, channels;
    int iters, warmup, threads;
    bool per_layer, per_node, json;
} bench_opts;

/* What one run measured. */
typedef struct bench_result {
    double step_seconds;       /* median training step */
    double forward_seconds;    /* median forward (training mode) */
    double faults_per_step;
    double cpu_seconds_per_step;  /* user + system time of every thread */
    long peak_rss_kib;
    keel_memory_report memory;
} bench_result;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double timeval_seconds(struct timeval t)
{
    return (double)t.tv_sec + 1e-6 * (double)t.tv_usec;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values, int count)
{
    qsort(values, (size_t)count, sizeof *values, compare_doubles);
    return count % 2 ? values[count / 2] : 0.5 * (values[count / 2 - 1] + values[count / 2]);
}

static int usage(void)
{
    fprintf(stderr,
            "usage: bench_layers --model NAME --batch N [--input CxHxW] [--iters K] [--warmup W]\n"
            "                    [--threads T] [--per-layer | --per-node] [--json]\n"
            "       bench_layers --conv N,C,H,W,F,KH,KW,SH,SW,PH,PW[,GROUPS[,BIAS]] [--iters K] [--json]\n");
    return 2;
}

static int parse_args(int argc, char **argv, bench_opts *o)
{
    *o = (bench_opts){.batch = 1, .iters = 10, .warmup = 3, .threads = 0};
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(arg, "--per-layer")) {
            o->per_layer = true;
        } else if (!strcmp(arg, "--per-node")) {
            o->per_layer = o->per_node = true;
        } else if (!strcmp(arg, "--json")) {
            o->json = true;
        } else if (!value) {
            return usage();
        } else {
            i++;
            if (!strcmp(arg, "--model"))
                o->model = value;
            else if (!strcmp(arg, "--conv"))
                o->conv = value;
            else if (!strcmp(arg, "--batch"))
                o->batch = atoll(value);
            else if (!strcmp(arg, "--iters"))
                o->iters = atoi(value);
            else if (!strcmp(arg, "--warmup"))
                o->warmup = atoi(value);
            else if (!strcmp(arg, "--threads"))
                o->threads = atoi(value);
            else if (!strcmp(arg, "--input")) {
                if (sscanf(value, "%dx%dx%d", &o->channels, &o->height, &o->width) != 3)
                    return usage();
            } else
                return usage();
        }
    }
    if ((!o->model) == (!o->conv) || o->batch < 1 || o->iters < 1 || o->warmup < 0)
        return usage();
    return 0;
}

static void fill_uniform(float *data, int64_t count, uint32_t seed)
{
    uint32_t state = seed * 2654435761u + 1;
    for (int64_t i = 0; i < count; i++) {
        state = state * 1664525u + 1013904223u;
        data[i] = (float)(state >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
    }
}

/* Sets a float input to uniform noise in [-1, 1). */
static keel_status set_random_input(keel_plan *plan, const keel_node *input, uint32_t seed)
{
    int64_t count = keel_node_numel(input);
    float *data = malloc((size_t)count * sizeof *data);
    if (!data)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for %lld inputs", (long long)count);
    fill_uniform(data, count, seed);
    keel_status st = keel_plan_set_input(plan, input, data);
    free(data);
    return st;
}

static keel_status set_labels(keel_plan *plan, const keel_node *labels, int classes)
{
    int64_t count = keel_node_numel(labels);
    int32_t *data = malloc((size_t)count * sizeof *data);
    if (!data)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int64_t i = 0; i < count; i++)
        data[i] = (int32_t)((i * 7 + 3) % classes);
    keel_status st = keel_plan_set_input(plan, labels, data);
    free(data);
    return st;
}

/* One training step: forward, backward and (when opt) an SGD update. */
static keel_status train_step(keel_plan *plan, keel_optimizer *opt, double *forward_seconds)
{
    double start = now_seconds();
    keel_status st = keel_plan_forward(plan, true);
    *forward_seconds = now_seconds() - start;
    if (st == KEEL_OK)
        st = keel_plan_backward(plan);
    if (st == KEEL_OK && opt)
        st = keel_optimizer_step(opt, 0.001f);
    return st;
}

static keel_status time_steps(keel_plan *plan, keel_optimizer *opt, const bench_opts *o, bench_result *r)
{
    double forward = 0;
    for (int i = 0; i < o->warmup; i++) {
        keel_status st = train_step(plan, opt, &forward);
        if (st != KEEL_OK)
            return st;
    }
    double *steps = calloc((size_t)o->iters, sizeof *steps), *forwards = calloc((size_t)o->iters, sizeof *forwards);
    if (!steps || !forwards) {
        free(steps);
        free(forwards);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    keel_status st = KEEL_OK;
    for (int i = 0; i < o->iters && st == KEEL_OK; i++) {
        double start = now_seconds();
        st = train_step(plan, opt, &forwards[i]);
        steps[i] = now_seconds() - start;
    }
    getrusage(RUSAGE_SELF, &after);
    r->step_seconds = median(steps, o->iters);
    r->forward_seconds = median(forwards, o->iters);
    r->faults_per_step = (double)(after.ru_minflt - before.ru_minflt) / o->iters;
    r->cpu_seconds_per_step = (timeval_seconds(after.ru_utime) + timeval_seconds(after.ru_stime) -
                               timeval_seconds(before.ru_utime) - timeval_seconds(before.ru_stime)) /
                              o->iters;
    r->peak_rss_kib = after.ru_maxrss;
    free(steps);
    free(forwards);
    if (st == KEEL_OK)
        st = keel_plan_memory(plan, &r->memory);
    return st;
}

/* Per-layer forward and backward milliseconds per step, one profiled pass of
 * --iters steps after the timed ones; layers print in schedule order. */
static keel_status print_layers(keel_plan *plan, keel_optimizer *opt, const bench_opts *o, FILE *out)
{
    keel_status st = keel_plan_profile(plan, true);
    keel_plan_profile_reset(plan);
    double unused = 0;
    for (int i = 0; i < o->iters && st == KEEL_OK; i++)
        st = train_step(plan, opt, &unused);
    if (st != KEEL_OK)
        return st;
    int count = keel_plan_profile_count(plan);
    keel_node_time *times = calloc((size_t)count + 1, sizeof *times);
    bool *done = calloc((size_t)count + 1, sizeof *done);
    if (!times || !done) {
        free(times);
        free(done);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (int i = 0; i < count && st == KEEL_OK; i++)
        st = keel_plan_profile_get(plan, i, &times[i]);
    bool first = true;
    for (int i = 0; i < count && o->per_node; i++) {
        double ms = 1e3 * times[i].seconds / o->iters;
        if (o->json)
            fprintf(out, "%s{\"name\": \"%s\", \"op\": \"%s\", \"layer\": \"%s\", \"ms\": %.4f}",
                    first ? "" : ", ", times[i].node, times[i].op, times[i].layer ? times[i].layer : "", ms);
        else
            fprintf(out, "  %-32s %-24s %9.3f ms\n", times[i].node, times[i].op, ms);
        first = false;
    }
    for (int i = 0; i < count && st == KEEL_OK && !o->per_node; i++) {
        if (done[i] || !times[i].layer)
            continue;
        double fwd = 0, bwd = 0;
        const char *op = times[i].op;
        for (int j = i; j < count; j++) {
            if (done[j] || !times[j].layer || strcmp(times[j].layer, times[i].layer))
                continue;
            done[j] = true;
            double ms = 1e3 * times[j].seconds / o->iters;
            if (times[j].backward)
                bwd += ms;
            else {
                fwd += ms;
                op = times[j].op;
            }
        }
        if (o->json)
            fprintf(out, "%s{\"name\": \"%s\", \"op\": \"%s\", \"fwd_ms\": %.4f, \"bwd_ms\": %.4f}",
                    first ? "" : ", ", times[i].layer, op, fwd, bwd);
        else
            fprintf(out, "  %-28s %-20s fwd %9.3f ms  bwd %9.3f ms\n", times[i].layer, op, fwd, bwd);
        first = false;
    }
    free(times);
    free(done);
    keel_plan_profile(plan, false);
    return st;
}

static void print_result(const bench_opts *o, const char *what, const bench_result *r, int threads)
{
    double batch = (double)o->batch;
    if (o->json) {
        printf("{\"what\": \"%s\", \"batch\": %lld, \"threads\": %d, \"step_ms\": %.4f, \"fwd_ms\": %.4f, "
               "\"images_per_s\": %.2f, \"fwd_images_per_s\": %.2f, \"peak_rss_mib\": %.1f, "
               "\"arena_mib\": %.1f, \"workspace_mib\": %.1f, \"faults_per_step\": %.1f, \"cpu_ms\": %.3f",
               what, (long long)o->batch, threads, 1e3 * r->step_seconds, 1e3 * r->forward_seconds,
               batch / r->step_seconds, batch / r->forward_seconds, r->peak_rss_kib / 1024.0,
               r->memory.arena_bytes / 1048576.0, r->memory.workspace_bytes / 1048576.0, r->faults_per_step,
               1e3 * r->cpu_seconds_per_step);
    } else {
        printf("%s batch %lld, %d threads: step %.3f ms (%.1f images/s), forward %.3f ms (%.1f images/s)\n", what,
               (long long)o->batch, threads, 1e3 * r->step_seconds, batch / r->step_seconds,
               1e3 * r->forward_seconds, batch / r->forward_seconds);
        printf("peak RSS %.1f MiB, arena %.1f MiB, workspace %.1f MiB, %.1f minor faults and %.3f ms of CPU per "
               "step\n",
               r->peak_rss_kib / 1024.0, r->memory.arena_bytes / 1048576.0, r->memory.workspace_bytes / 1048576.0,
               r->faults_per_step, 1e3 * r->cpu_seconds_per_step);
    }
}

/* Compiles g, fills its inputs, times it and prints the result. */
static keel_status run_graph(keel_context *ctx, keel_graph *g, const bench_opts *o, const char *what,
                             keel_node *const *inputs, int n_inputs, const keel_node *labels, int classes,
                             bool update)
{
    keel_plan *plan = NULL;
    keel_optimizer *opt = NULL;
    keel_plan_opts po = {.devices = "cpu", .seed = 1};
    keel_status st = keel_plan_compile(&plan, g, ctx, &po);
    for (int i = 0; i < n_inputs && st == KEEL_OK; i++)
        st = set_random_input(plan, inputs[i], (uint32_t)i + 1);
    if (st == KEEL_OK && labels)
        st = set_labels(plan, labels, classes);
    if (st == KEEL_OK && update) {
        keel_optimizer_opts oo = keel_optimizer_defaults(KEEL_OPTIMIZER_SGD);
        st = keel_optimizer_create(&opt, plan, &oo);
    }
    bench_result r = {0};
    if (st == KEEL_OK)
        st = time_steps(plan, opt, o, &r);
    if (st == KEEL_OK) {
        print_result(o, what, &r, keel_context_threads(ctx));
        if (o->per_layer) {
            if (o->json)
                printf(", \"layers\": [");
            st = print_layers(plan, opt, o, stdout);
            if (o->json)
                printf("]");
        }
        if (o->json)
            printf("}\n");
    }
    keel_optimizer_destroy(opt);
    keel_plan_destroy(plan);
    return st;
}

static keel_status bench_model(keel_context *ctx, const bench_opts *o)
{
    keel_graph *g = keel_graph_new();
    if (!g)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    keel_model_opts mo = {.batch = o->batch, .training = true, .in_channels = o->channels, .height = o->height,
                          .width = o->width};
    keel_model_io io = {0};
    keel_status st = keel_model_build(g, o->model, &mo, &io);
    if (st == KEEL_OK)
        st = keel_graph_backward(g, io.loss);
    if (st == KEEL_OK) {
        int64_t logits_shape[KEEL_MAX_DIMS];
        keel_node_shape(io.logits, logits_shape);
        st = run_graph(ctx, g, o, o->model, &io.images, 1, io.labels, (int)logits_shape[1], true);
    }
    keel_graph_free(g);
    return st;
}

/* One convolution with x requiring a gradient: forward, dx, dw (and db). */
static keel_status bench_conv(keel_context *ctx, bench_opts *o)
{
    long long v[13] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0};
    int n = sscanf(o->conv, "%lld,%lld,%lld,%lld,%lld,%lld,%lld,%lld,%lld,%lld,%lld,%lld,%lld", &v[0], &v[1],
                   &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10], &v[11], &v[12]);
    if (n < 11)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "--conv wants N,C,H,W,F,KH,KW,SH,SW,PH,PW[,GROUPS[,BIAS]]");
    o->batch = v[0];
    keel_graph *g = keel_graph_new();
    if (!g)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    int64_t x_shape[4] = {v[0], v[1], v[2], v[3]};
    keel_node *x = keel_input(g, "x", 4, x_shape);
    keel_graph_require_grad(g, x);
    keel_conv2d_opts co = {.kernel_h = (int)v[5], .kernel_w = (int)v[6], .stride_h = (int)v[7],
                           .stride_w = (int)v[8], .pad_top = (int)v[9], .pad_bottom = (int)v[9],
                           .pad_left = (int)v[10], .pad_right = (int)v[10], .groups = (int)v[11],
                           .no_bias = !v[12]};
    keel_node *y = keel_conv2d(g, "conv", x, (int)v[4], &co);
    int64_t y_shape[KEEL_MAX_DIMS];
    int y_ndim = y ? keel_node_shape(y, y_shape) : 0;
    keel_node *dy = y ? keel_input(g, "dy", y_ndim, y_shape) : NULL;
    keel_status st = keel_graph_status(g);
    if (st == KEEL_OK)
        st = keel_graph_backward_from(g, y, dy);
    if (st == KEEL_OK) {
        keel_node *inputs[2] = {x, dy};
        st = run_graph(ctx, g, o, "conv", inputs, 2, NULL, 0, false);
    }
    if (st != KEEL_OK && keel_graph_status(g) != KEEL_OK)
        st = keel_fail(keel_graph_status(g), "%s", keel_graph_error(g));
    keel_graph_free(g);
    return st;
}

int main(int argc, char **argv)
{
    bench_opts o;
    if (parse_args(argc, argv, &o))
        return 2;
    keel_context *ctx = NULL;
    keel_context_opts co = {.threads = o.threads};
    keel_status st = keel_context_create(&ctx, &co);
    if (st == KEEL_OK)
        st = o.conv ? bench_conv(ctx, &o) : bench_model(ctx, &o);
    if (st != KEEL_OK)
        fprintf(stderr, "bench_layers: %s\n", keel_last_error());
    keel_context_destroy(ctx);
    return st == KEEL_OK ? 0 : 1;
}
