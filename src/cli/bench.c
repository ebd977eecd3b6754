/* keel bench: synthetic-data throughput of a model, forward-only and full
 * training steps, with peak memory, and (--per-layer) each layer's forward
 * and backward time, as convnet-benchmarks and `caffe time` print them. */
#include "cli.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static const char description[] =
    "Builds a model, fills its input with random images and labels, runs --warmup untimed\n"
    "steps, then times --iters forward-only passes and --iters training steps (forward,\n"
    "backward and an SGD update) and prints the median of each as images/s, with the plan's\n"
    "memory and the process's peak resident memory. --per-layer times every layer's forward\n"
    "and backward (the device is synchronised around each node, so those steps run slower).\n"
    "With several devices (--device cpu:0,cpu:1) it also reports each device's compute time.";

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, by_value);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int64_t peak_rss_bytes(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (int64_t)ru.ru_maxrss * 1024;
}

typedef struct layer_time {
    const char *layer;
    double forward, backward;
} layer_time;

/* Sums the profile per layer, in order of first appearance. */
static int collect_layers(keel_plan *plan, layer_time *rows, int most, int iters)
{
    int n = 0;
    for (int i = 0; i < keel_plan_profile_count(plan); i++) {
        keel_node_time t;
        if (keel_plan_profile_get(plan, i, &t) != KEEL_OK)
            continue;
        int r = 0;
        while (r < n && strcmp(rows[r].layer, t.layer) != 0)
            r++;
        if (r == n) {
            if (n == most)
                continue;
            rows[n++] = (layer_time){t.layer, 0.0, 0.0};
        }
        double per_step = t.seconds / iters;
        if (t.backward)
            rows[r].backward += per_step;
        else
            rows[r].forward += per_step;
    }
    return n;
}

typedef struct bench_setup {
    const char *model, *device, *input;
    int64_t batch;
    int classes, iters, warmup, threads;
    bool per_layer, json, strict_fp32, autotune, device_copies;
} bench_setup;

static int run_bench(const bench_setup *b, keel_model_opts *mo)
{
    keel_context_opts copts = {.threads = b->threads};
    keel_context *ctx = NULL;
    keel_graph *g = keel_graph_new();
    keel_plan *plan = NULL;
    keel_optimizer *opt = NULL;
    float *images = NULL;
    int32_t *labels = NULL;
    double *fwd = NULL, *step = NULL;
    layer_time *rows = NULL;
    keel_model_io io;
    keel_status st = keel_context_create(&ctx, &copts);
    if (st == KEEL_OK)
        st = keel_model_build(g, b->model, mo, &io);
    if (st == KEEL_OK)
        st = keel_graph_backward(g, io.loss);
    keel_plan_opts popts = {.devices = b->device, .seed = 1, .strict_fp32 = b->strict_fp32, .autotune = b->autotune,
                            .copy_between_devices = b->device_copies};
    if (st == KEEL_OK)
        st = keel_plan_compile(&plan, g, ctx, &popts);
    keel_optimizer_opts oopts = keel_optimizer_defaults(KEEL_OPTIMIZER_SGD);
    if (st == KEEL_OK)
        st = keel_optimizer_create(&opt, plan, &oopts);
    int64_t in_shape[KEEL_MAX_DIMS];
    int64_t image_count = 0;
    if (st == KEEL_OK) {
        int nd = keel_node_shape(io.images, in_shape);
        image_count = 1;
        for (int d = 0; d < nd; d++)
            image_count *= in_shape[d];
        int64_t out_shape[KEEL_MAX_DIMS];
        keel_node_shape(io.logits, out_shape);
        images = malloc((size_t)image_count * sizeof *images);
        labels = malloc((size_t)b->batch * sizeof *labels);
        fwd = malloc((size_t)b->iters * sizeof *fwd);
        step = malloc((size_t)b->iters * sizeof *step);
        if (!images || !labels || !fwd || !step)
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
        uint64_t s = 88172645463325252ull;
        for (int64_t i = 0; st == KEEL_OK && i < image_count; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            images[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
        }
        for (int64_t i = 0; st == KEEL_OK && i < b->batch; i++)
            labels[i] = (int32_t)(i % out_shape[1]);
    }
    if (st == KEEL_OK)
        st = keel_plan_set_input(plan, io.images, images);
    if (st == KEEL_OK)
        st = keel_plan_set_input(plan, io.labels, labels);
    /* Warm-up, then forward-only passes, then training steps. */
    for (int i = 0; st == KEEL_OK && i < b->warmup; i++) {
        st = keel_plan_forward(plan, true);
        if (st == KEEL_OK)
            st = keel_plan_backward(plan);
        if (st == KEEL_OK)
            st = keel_optimizer_step(opt, 1e-6f);
    }
    float loss = NAN;
    for (int i = 0; st == KEEL_OK && i < b->iters; i++) {
        double t0 = now();
        st = keel_plan_forward(plan, false);
        if (st == KEEL_OK)
            st = keel_plan_read(plan, io.loss, &loss); /* waits for the device */
        fwd[i] = now() - t0;
    }
    for (int i = 0; st == KEEL_OK && i < b->iters; i++) {
        double t0 = now();
        st = keel_plan_forward(plan, true);
        if (st == KEEL_OK)
            st = keel_plan_backward(plan);
        if (st == KEEL_OK)
            st = keel_optimizer_step(opt, 1e-6f);
        if (st == KEEL_OK)
            st = keel_plan_read(plan, io.loss, &loss);
        step[i] = now() - t0;
    }
    int n_rows = 0;
    int n_devices = st == KEEL_OK ? keel_plan_device_count(plan) : 0;
    double profiled_wall = 0;
    if (st == KEEL_OK && (b->per_layer || n_devices > 1)) {
        rows = calloc((size_t)keel_plan_profile_count(plan) + 1, sizeof *rows);
        st = rows ? keel_plan_profile(plan, true) : keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
        double t0 = now();
        for (int i = 0; st == KEEL_OK && i < b->iters; i++) {
            st = keel_plan_forward(plan, true);
            if (st == KEEL_OK)
                st = keel_plan_backward(plan);
        }
        profiled_wall = (now() - t0) / b->iters;
        if (st == KEEL_OK)
            n_rows = collect_layers(plan, rows, keel_plan_profile_count(plan), b->iters);
    }
    keel_memory_report mem = {0};
    if (st == KEEL_OK)
        st = keel_plan_memory(plan, &mem);

    int rc = CLI_OK;
    if (st != KEEL_OK) {
        rc = cli_keel_error();
    } else {
        double fwd_s = median(fwd, b->iters), step_s = median(step, b->iters);
        int64_t plan_bytes = mem.arena_bytes + mem.param_bytes + mem.grad_bytes + mem.workspace_bytes;
        if (b->json) {
            printf("{\"model\": \"%s\", \"device\": \"%s\", \"batch\": %lld, \"iters\": %d, "
                   "\"forward_seconds\": %.6f, \"forward_images_per_second\": %.2f, "
                   "\"train_step_seconds\": %.6f, \"train_images_per_second\": %.2f, "
                   "\"plan_bytes\": %lld, \"arena_bytes\": %lld, \"peak_rss_bytes\": %lld, \"loss\": %.6f",
                   b->model, b->device, (long long)b->batch, b->iters, fwd_s, (double)b->batch / fwd_s, step_s,
                   (double)b->batch / step_s, (long long)plan_bytes, (long long)mem.arena_bytes,
                   (long long)peak_rss_bytes(), (double)loss);
            printf(", \"pool_reserved_bytes\": %lld, \"pool_peak_bytes\": %lld, \"pool_driver_allocs\": %lld",
                   (long long)mem.pool_reserved_bytes, (long long)mem.pool_peak_bytes,
                   (long long)mem.pool_driver_allocs);
            if (n_rows) {
                printf(", \"layers\": [");
                for (int r = 0; r < n_rows; r++)
                    printf("%s{\"layer\": \"%s\", \"forward_seconds\": %.7f, \"backward_seconds\": %.7f}",
                           r ? ", " : "", rows[r].layer, rows[r].forward, rows[r].backward);
                printf("]");
            }
            if (n_devices > 1) {
                printf(", \"devices\": [");
                for (int d = 0; d < n_devices; d++) {
                    keel_device_time t;
                    keel_plan_device_time(plan, d, &t);
                    printf("%s{\"device\": \"%s\", \"compute_seconds\": %.6f, \"copy_seconds\": %.6f, "
                           "\"param_bytes\": %lld, \"arena_bytes\": %lld}", d ? ", " : "", t.device,
                           t.compute_seconds / b->iters, t.copy_seconds / b->iters, (long long)t.param_bytes,
                           (long long)t.arena_bytes);
                }
                printf("], \"profiled_step_seconds\": %.6f", profiled_wall);
            }
            printf("}\n");
        } else {
            char a[32], c[32], rss[32];
            printf("%s on %s, batch %lld, %d iterations after %d warm-up (medians)\n", b->model, b->device,
                   (long long)b->batch, b->iters, b->warmup);
            if (strncmp(b->device, "cuda", 4) == 0)
                printf("  precision       %s\n", b->strict_fp32 ? "IEEE fp32 (--strict-fp32)"
                                                             : "TF32 tensor cores allowed (--strict-fp32: IEEE fp32)");
            printf("  forward only    %9.2f ms   %10.1f images/s\n", 1e3 * fwd_s, (double)b->batch / fwd_s);
            printf("  training step   %9.2f ms   %10.1f images/s   (forward + backward + SGD update)\n",
                   1e3 * step_s, (double)b->batch / step_s);
            printf("  memory          plan %s (arena %s), peak resident %s\n",
                   cli_scaled((double)plan_bytes, true, "B", a, sizeof a),
                   cli_scaled((double)mem.arena_bytes, true, "B", c, sizeof c),
                   cli_scaled((double)peak_rss_bytes(), true, "B", rss, sizeof rss));
            if (mem.pool_reserved_bytes > 0) {
                char r[32], u[32], p[32];
                printf("  device pool     reserved %s, in use %s, peak %s; %lld driver allocations, %lld from "
                       "the cache\n", cli_scaled((double)mem.pool_reserved_bytes, true, "B", r, sizeof r),
                       cli_scaled((double)mem.pool_in_use_bytes, true, "B", u, sizeof u),
                       cli_scaled((double)mem.pool_peak_bytes, true, "B", p, sizeof p),
                       (long long)mem.pool_driver_allocs, (long long)mem.pool_reuses);
            }
            if (n_rows) {
                printf("\n  %-28s %12s %12s\n", "layer", "forward ms", "backward ms");
                double tf = 0, tb = 0;
                for (int r = 0; r < n_rows; r++) {
                    printf("  %-28.28s %12.3f %12.3f\n", rows[r].layer, 1e3 * rows[r].forward,
                           1e3 * rows[r].backward);
                    tf += rows[r].forward;
                    tb += rows[r].backward;
                }
                printf("  %-28s %12.3f %12.3f\n", "total (profiled)", 1e3 * tf, 1e3 * tb);
            }
            if (n_devices > 1) {
                printf("\n  %-10s %14s %14s %14s %14s\n", "device", "compute ms", "copy ms", "parameters", "arena");
                double busy = 0, copying = 0;
                for (int d = 0; d < n_devices; d++) {
                    keel_device_time t;
                    keel_plan_device_time(plan, d, &t);
                    char pb[32], ab[32];
                    printf("  %-10s %14.3f %14.3f %14s %14s\n", t.device, 1e3 * t.compute_seconds / b->iters,
                           1e3 * t.copy_seconds / b->iters, cli_scaled((double)t.param_bytes, true, "B", pb, sizeof pb),
                           cli_scaled((double)t.arena_bytes, true, "B", ab, sizeof ab));
                    busy += (t.compute_seconds + t.copy_seconds) / b->iters;
                    copying += t.copy_seconds / b->iters;
                }
                bool gpus = strncmp(b->device, "cuda", 4) == 0;
                printf("  step %.3f ms; devices busy %.0f%% of it together, copies included (100%% = nothing ran "
                       "concurrently)\n",
                       1e3 * profiled_wall, profiled_wall > 0 ? 100.0 * busy / profiled_wall : 0.0);
                /* A device copies and computes in one queue, so its copies can overlap only the other
                 * devices' work: at most the part of the busy time beyond the step's. */
                double concurrent = busy > profiled_wall ? busy - profiled_wall : 0.0;
                if (copying > 0)
                    printf("  copies between devices %.3f ms per step; at most %.3f ms of it overlapped other "
                           "devices' work\n", 1e3 * copying, 1e3 * (concurrent < copying ? concurrent : copying));
                else
                    printf("  no copies: %s\n", gpus ? "the GPUs read each other's memory peer to peer (one GPU: "
                                                        "shared memory)"
                                                      : "logical CPU devices share host memory");
            }
        }
    }
    free(rows);
    free(images);
    free(labels);
    free(fwd);
    free(step);
    keel_optimizer_destroy(opt);
    keel_plan_destroy(plan);
    keel_graph_free(g);
    keel_context_destroy(ctx);
    return rc;
}

int cli_bench(int argc, char **argv)
{
    bench_setup b = {.model = "lenet5", .device = "cpu", .batch = 64, .iters = 10, .warmup = 2};
    cli_flag flags[] = {
        {"model", CLI_STRING, &b.model, "NAME", "the network (default lenet5; `keel --help` lists them)"},
        {"batch", CLI_INT64, &b.batch, "N", "images per step (default 64)"},
        {"device", CLI_STRING, &b.device, "D", "cpu, cuda, cuda:N, or a list such as cpu:0,cpu:1 (default cpu)"},
        {"devices", CLI_STRING, &b.device, "LIST", "the same as --device"},
        {"iters", CLI_INT, &b.iters, "K", "timed iterations; the median is reported (default 10)"},
        {"warmup", CLI_INT, &b.warmup, "N", "untimed steps first (default 2)"},
        {"input", CLI_STRING, &b.input, "CxHxW", "input size (default: the model's own)"},
        {"classes", CLI_INT, &b.classes, "N", "number of classes (default: the model's own)"},
        {"threads", CLI_INT, &b.threads, "N", "CPU threads (default: all cores)"},
        {"per-layer", CLI_SWITCH, &b.per_layer, NULL, "time each layer's forward and backward"},
        {"json", CLI_SWITCH, &b.json, NULL, "print one JSON object instead of the table"},
        {"strict-fp32", CLI_SWITCH, &b.strict_fp32, NULL, "CUDA: no TF32 tensor-core convolutions"},
        {"autotune", CLI_SWITCH, &b.autotune, NULL, "CUDA: time candidate convolution algorithms once"},
        {"device-copies", CLI_SWITCH, &b.device_copies, NULL,
         "several devices: copy what another device produced into each device's memory before use, instead of "
         "reading it in place (GPUs without a peer-to-peer path always do)"},
    };
    cli_command cmd = {"bench", NULL, "keel bench --model NAME [--batch N] [--device D] [--per-layer] [--iters K] [--json]",
                       description, flags, (int)(sizeof flags / sizeof flags[0])};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    if (b.batch < 1)
        return cli_usage_error(&cmd, "--batch must be at least 1, got %lld", (long long)b.batch);
    if (b.iters < 1 || b.warmup < 0)
        return cli_usage_error(&cmd, "--iters must be at least 1 and --warmup at least 0");
    if (b.threads < 0)
        return cli_usage_error(&cmd, "--threads must be at least 0 (0: all cores), got %d", b.threads);
    keel_model_opts mo = {.batch = b.batch, .classes = b.classes, .training = true};
    if (b.input && cli_parse_input_shape(b.input, &mo.in_channels, &mo.height, &mo.width) != 0)
        return cli_usage_error(&cmd, "--input expects CxHxW such as 3x224x224, got '%s'", b.input);
    return run_bench(&b, &mo);
}
