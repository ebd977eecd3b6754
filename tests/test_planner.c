/* The planner: memory reuse packs a deep network's tensors into an arena
 * well below their sum, and never lets two live tensors share bytes (freed
 * regions are poisoned with NaN, so a reader of a dead buffer would change
 * the results). */
#include "support/support.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct net {
    keel_graph *g;
    keel_node *x, *labels, *logits, *loss;
} net;

/* A deep convolutional network with residual adds, a concat, pooling, batch
 * norm and dropout: every planner path (in-place ops, views, aux buffers,
 * gradient sums) appears. */
static net build_net(int64_t batch, int depth)
{
    net n = {keel_graph_new()};
    keel_graph *g = n.g;
    int64_t shape[4] = {batch, 3, 16, 16};
    n.x = keel_input(g, "x", 4, shape);
    n.labels = keel_input_labels(g, "labels", batch);
    keel_conv2d_opts c3 = keel_conv_opts(3, 1, 1);
    keel_node *h = keel_relu(g, "stem.relu", keel_conv2d(g, "stem", n.x, 8, &c3));
    char name[64];
    for (int i = 0; i < depth; i++) {
        snprintf(name, sizeof name, "block%d.conv", i);
        keel_node *r = keel_conv2d(g, name, h, 8, &c3);
        snprintf(name, sizeof name, "block%d.bn", i);
        r = keel_batch_norm(g, name, r, NULL);
        snprintf(name, sizeof name, "block%d.add", i);
        h = keel_add(g, name, h, r);
        snprintf(name, sizeof name, "block%d.relu", i);
        h = keel_relu(g, name, h);
    }
    keel_pool2d_opts p2 = keel_pool_opts(2, 2, 0);
    keel_node *a = keel_max_pool2d(g, "pool_a", h, &p2);
    keel_node *b = keel_avg_pool2d(g, "pool_b", h, &p2);
    keel_node *ab[2] = {a, b};
    h = keel_concat(g, "cat", 2, ab);
    h = keel_dropout(g, "drop", keel_flatten(g, "flat", h), 0.25f);
    n.logits = keel_linear(g, "fc", h, 10, NULL);
    n.loss = keel_softmax_cross_entropy(g, "loss", n.logits, n.labels);
    keel_graph_keep(g, n.logits);
    return n;
}

static void run_net(net *n, bool poison, float *loss, float *logits, float *grad, int64_t grad_count)
{
    keel_context *ctx = ks_context();
    keel_plan_opts opts = {.devices = "cpu", .seed = 5, .poison_dead = poison};
    keel_plan *plan = NULL;
    KS_OK(keel_plan_compile(&plan, n->g, ctx, &opts));
    int64_t count = keel_node_numel(n->x);
    float *x = malloc((size_t)count * sizeof *x);
    ks_fill_uniform(x, count, 11, -1, 1);
    int32_t labels[4] = {1, 7, 3, 3};
    KS_OK(keel_plan_set_input(plan, n->x, x));
    KS_OK(keel_plan_set_input(plan, n->labels, labels));
    for (int step = 0; step < 2; step++) { /* twice: the second step reuses poisoned memory */
        KS_OK(keel_plan_forward(plan, true));
        KS_OK(keel_plan_backward(plan));
    }
    KS_OK(keel_plan_read(plan, n->loss, loss));
    KS_OK(keel_plan_read(plan, n->logits, logits));
    KS_OK(keel_plan_grad_get(plan, "stem.weight", grad, grad_count));
    free(x);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
}

static void test_poisoned_dead_buffers_change_nothing(void **state)
{
    (void)state;
    net n = build_net(4, 6);
    ks_graph_ok(n.g);
    KS_OK(keel_graph_backward(n.g, n.loss));
    float loss_a, loss_b, logits_a[40], logits_b[40], grad_a[216], grad_b[216];
    run_net(&n, false, &loss_a, logits_a, grad_a, 216);
    run_net(&n, true, &loss_b, logits_b, grad_b, 216);
    assert_true(isfinite(loss_a));
    assert_memory_equal(&loss_a, &loss_b, sizeof loss_a);
    assert_memory_equal(logits_a, logits_b, sizeof logits_a);
    assert_memory_equal(grad_a, grad_b, sizeof grad_a);
    for (int i = 0; i < 216; i++)
        assert_true(isfinite(grad_a[i]));
    keel_graph_free(n.g);
}

static void test_arena_is_well_below_the_sum(void **state)
{
    (void)state;
    net n = build_net(4, 24);
    KS_OK(keel_graph_backward(n.g, n.loss));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(n.g, ctx, 1);
    keel_memory_report mem;
    KS_OK(keel_plan_memory(plan, &mem));
    printf("planner: arena %lld bytes, tensors %lld bytes (%.1f%%)\n", (long long)mem.arena_bytes,
           (long long)mem.tensor_bytes, 100.0 * (double)mem.arena_bytes / (double)mem.tensor_bytes);
    assert_true(mem.arena_bytes > 0);
    assert_true(mem.arena_bytes <= mem.tensor_bytes);
    /* Training keeps the forward activations for the backward pass, yet
     * gradients and temporaries die quickly: well under half. */
    assert_true(mem.arena_bytes < mem.tensor_bytes / 2);
    assert_true(mem.grad_bytes > 0 && mem.param_bytes > mem.grad_bytes); /* + running stats */
    keel_plan_destroy(plan);

    /* Inference alone (no backward) reuses far more. */
    keel_graph_free(n.g);
    n = build_net(4, 24);
    keel_context_destroy(ctx);
    ctx = ks_context();
    plan = ks_compile(n.g, ctx, 1);
    keel_memory_report fwd;
    KS_OK(keel_plan_memory(plan, &fwd));
    printf("planner (forward only): arena %lld bytes, tensors %lld bytes\n", (long long)fwd.arena_bytes,
           (long long)fwd.tensor_bytes);
    assert_true(fwd.arena_bytes < fwd.tensor_bytes / 5);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(n.g);
}

static void test_eval_forward_is_deterministic(void **state)
{
    (void)state;
    net n = build_net(4, 2);
    KS_OK(keel_graph_backward(n.g, n.loss));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(n.g, ctx, 3);
    int64_t count = keel_node_numel(n.x);
    float *x = malloc((size_t)count * sizeof *x);
    ks_fill_uniform(x, count, 2, -1, 1);
    int32_t labels[4] = {0, 1, 2, 3};
    KS_OK(keel_plan_set_input(plan, n.x, x));
    KS_OK(keel_plan_set_input(plan, n.labels, labels));
    float a[40], b[40];
    KS_OK(keel_plan_forward(plan, false));
    KS_OK(keel_plan_read(plan, n.logits, a));
    KS_OK(keel_plan_forward(plan, false));
    KS_OK(keel_plan_read(plan, n.logits, b));
    assert_memory_equal(a, b, sizeof a);
    assert_int_equal(keel_plan_backward(plan), KEEL_ERR_STATE); /* eval forward saves nothing to train on */
    free(x);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(n.g);
}

static void test_device_errors(void **state)
{
    (void)state;
    net n = build_net(4, 1);
    keel_context *ctx = ks_context();
    keel_plan *plan = NULL;
    keel_plan_opts opts = {.devices = "tpu:0"};
    assert_int_equal(keel_plan_compile(&plan, n.g, ctx, &opts), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "tpu:0"));
    opts.devices = "cpu:x";
    assert_int_equal(keel_plan_compile(&plan, n.g, ctx, &opts), KEEL_ERR_INVALID_ARGUMENT);
    assert_null(plan);
    assert_true(keel_device_count(ctx) >= 1);
    keel_device_info info;
    KS_OK(keel_device_get(ctx, 0, &info));
    assert_string_equal(info.name, "cpu");
    keel_context_destroy(ctx);
    keel_graph_free(n.g);
}

static void test_profiling_attributes_time_to_layers(void **state)
{
    (void)state;
    net n = build_net(4, 2);
    KS_OK(keel_graph_backward(n.g, n.loss));
    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(n.g, ctx, 3);
    int64_t count = keel_node_numel(n.x);
    float *x = calloc((size_t)count, sizeof *x);
    int32_t labels[4] = {0, 1, 2, 3};
    KS_OK(keel_plan_set_input(plan, n.x, x));
    KS_OK(keel_plan_set_input(plan, n.labels, labels));
    KS_OK(keel_plan_profile(plan, true));
    for (int i = 0; i < 3; i++) {
        KS_OK(keel_plan_forward(plan, true));
        KS_OK(keel_plan_backward(plan));
    }
    int entries = keel_plan_profile_count(plan);
    assert_true(entries > 10);
    bool saw_forward = false, saw_backward = false;
    for (int i = 0; i < entries; i++) {
        keel_node_time t;
        KS_OK(keel_plan_profile_get(plan, i, &t));
        if (strcmp(t.layer, "stem") != 0 || strcmp(t.op, "reshape") == 0)
            continue;
        assert_int_equal(t.runs, 3);
        assert_true(t.seconds > 0.0);
        saw_forward |= !t.backward;
        saw_backward |= t.backward; /* stem's weight gradient belongs to stem */
    }
    assert_true(saw_forward && saw_backward);
    keel_plan_profile_reset(plan);
    keel_node_time t;
    KS_OK(keel_plan_profile_get(plan, 0, &t));
    assert_int_equal(t.runs, 0);
    free(x);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(n.g);
}

/* Two towers in two placement groups, joined by a concat, as AlexNet's. */
static net build_towers(int64_t batch)
{
    net n = {keel_graph_new()};
    keel_graph *g = n.g;
    int64_t shape[4] = {batch, 3, 12, 12};
    n.x = keel_input(g, "x", 4, shape);
    n.labels = keel_input_labels(g, "labels", batch);
    keel_conv2d_opts c3 = keel_conv_opts(3, 1, 1);
    keel_node *towers[2];
    for (int t = 0; t < 2; t++) {
        int previous = keel_graph_on_device(g, t);
        char name[32];
        snprintf(name, sizeof name, "tower%d.conv", t);
        keel_node *h = keel_relu(g, NULL, keel_conv2d(g, name, n.x, 4, &c3));
        snprintf(name, sizeof name, "tower%d.bn", t);
        h = keel_batch_norm(g, name, h, NULL);
        snprintf(name, sizeof name, "tower%d.pool", t);
        keel_pool2d_opts p2 = keel_pool_opts(2, 2, 0);
        towers[t] = keel_max_pool2d(g, name, h, &p2);
        keel_graph_on_device(g, previous);
    }
    keel_node *h = keel_concat(g, "join", 2, towers);
    h = keel_relu(g, NULL, keel_conv2d(g, "across", h, 6, &c3));
    n.logits = keel_linear(g, "fc", keel_flatten(g, "flat", h), 10, NULL);
    n.loss = keel_softmax_cross_entropy(g, "loss", n.logits, n.labels);
    keel_graph_keep(g, n.logits);
    return n;
}

/* Plain SGD through the public API, so the steps train something. */
static void sgd_step(keel_plan *plan, float lr)
{
    for (int k = 0; k < keel_plan_param_count(plan); k++) {
        keel_param_info info;
        KS_OK(keel_plan_param_info(plan, k, &info));
        if (!info.trainable)
            continue;
        int64_t count = 1;
        for (int d = 0; d < info.ndim; d++)
            count *= info.shape[d];
        float *w = malloc((size_t)count * sizeof *w), *g = malloc((size_t)count * sizeof *g);
        KS_OK(keel_plan_param_get(plan, info.name, w, count));
        KS_OK(keel_plan_grad_get(plan, info.name, g, count));
        for (int64_t i = 0; i < count; i++)
            w[i] -= lr * g[i];
        KS_OK(keel_plan_param_set(plan, info.name, w, count));
        free(w);
        free(g);
    }
}

/* The towers of batch 4, differentiated, compiled and fed one batch. */
static keel_plan *towers_plan(net *n, keel_context *ctx, const keel_plan_opts *opts)
{
    *n = build_towers(4);
    KS_OK(keel_graph_backward(n->g, n->loss));
    keel_plan *plan = NULL;
    KS_OK(keel_plan_compile(&plan, n->g, ctx, opts));
    float x[4 * 3 * 12 * 12];
    ks_fill_uniform(x, 4 * 3 * 12 * 12, 21, -1, 1);
    int32_t labels[4] = {3, 1, 4, 1};
    KS_OK(keel_plan_set_input(plan, n->x, x));
    KS_OK(keel_plan_set_input(plan, n->labels, labels));
    return plan;
}

/* loss: 3 steps; grads: 108 + 432; stats: tower1's running mean and
 * variance (4 + 4), which its device updates. */
static void run_towers(const char *devices, bool poison, bool copy, float *loss, float *grads, float *stats)
{
    net n;
    keel_context *ctx = ks_context();
    keel_plan_opts opts = {.devices = devices, .seed = 7, .poison_dead = poison, .copy_between_devices = copy};
    keel_plan *plan = towers_plan(&n, ctx, &opts);
    for (int step = 0; step < 3; step++) {
        KS_OK(keel_plan_forward(plan, true));
        KS_OK(keel_plan_backward(plan));
        KS_OK(keel_plan_read(plan, n.loss, &loss[step]));
        sgd_step(plan, 0.1f);
    }
    KS_OK(keel_plan_grad_get(plan, "tower1.conv.weight", grads, 108));
    KS_OK(keel_plan_grad_get(plan, "across.weight", grads + 108, 6 * 8 * 9));
    KS_OK(keel_plan_param_get(plan, "tower1.bn.running_mean", stats, 4));
    KS_OK(keel_plan_param_get(plan, "tower1.bn.running_var", stats + 4, 4));
    /* A failing node on one device stops the other without a hang. */
    int32_t bad[4] = {3, 1, 99, 1};
    KS_OK(keel_plan_set_input(plan, n.labels, bad));
    assert_int_equal(keel_plan_forward(plan, true), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "loss"));
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(n.g);
}

static void test_two_cpu_devices_match_one(void **state)
{
    (void)state;
    float loss_one[3], loss_two[3], grads_one[108 + 432], grads_two[108 + 432], stats_one[8], stats_two[8];
    run_towers("cpu", false, false, loss_one, grads_one, stats_one);
    double want_loss[3], want_grads[108 + 432], want_stats[8];
    ks_to_double(loss_one, want_loss, 3);
    ks_to_double(grads_one, want_grads, 108 + 432);
    ks_to_double(stats_one, want_stats, 8);
    assert_true(loss_one[2] < loss_one[0]);
    /* In place, and copying what each device reads into its own arena (as
     * GPUs without a peer-to-peer path do). */
    for (int copy = 0; copy < 2; copy++) {
        run_towers("cpu:0,cpu:1", true, copy, loss_two, grads_two, stats_two);
        ks_check(copy ? "towers copying between cpu:0,cpu:1 vs cpu: loss" : "towers on cpu:0,cpu:1 vs cpu: loss",
                 loss_two, want_loss, 3, 1e-3, 1e-6);
        ks_check("towers on two devices vs one: grads", grads_two, want_grads, 108 + 432, 1e-3, 1e-5);
        ks_check("towers on two devices vs one: tower1 running statistics", stats_two, want_stats, 8, 1e-6, 1e-6);
    }
}

/* Each device keeps the parameters its nodes read first (a tower's own
 * weights); copies between devices are real, timed, and live in the reading
 * device's arena. */
static void test_devices_hold_their_parameters_and_copies(void **state)
{
    (void)state;
    int64_t arenas[2][2], params[2][2];
    double copy_seconds[2];
    for (int copy = 0; copy < 2; copy++) {
        net n;
        keel_context *ctx = ks_context();
        keel_plan_opts opts = {.devices = "cpu:0,cpu:1", .seed = 7, .copy_between_devices = copy};
        keel_plan *plan = towers_plan(&n, ctx, &opts);
        KS_OK(keel_plan_profile(plan, true));
        KS_OK(keel_plan_forward(plan, true));
        KS_OK(keel_plan_backward(plan));
        copy_seconds[copy] = 0;
        for (int d = 0; d < 2; d++) {
            keel_device_time t;
            KS_OK(keel_plan_device_time(plan, d, &t));
            arenas[copy][d] = t.arena_bytes;
            params[copy][d] = t.param_bytes;
            copy_seconds[copy] += t.copy_seconds;
        }
        keel_plan_destroy(plan);
        keel_context_destroy(ctx);
        keel_graph_free(n.g);
    }
    /* tower1's convolution and batch norm live on cpu:1: weight 4x3x3x3 and
     * bias 4, gamma and beta 4 each (with gradients, 16-float aligned), and
     * the running mean and variance (4 + 4, aligned). */
    int64_t tower = (2 * (112 + 16 + 16 + 16) + 2 * 16) * (int64_t)sizeof(float);
    assert_int_equal(params[0][1], tower);
    assert_int_equal(params[1][1], tower);
    assert_true(params[0][0] > tower);
    assert_true(copy_seconds[0] == 0.0);
    assert_true(copy_seconds[1] > 0.0);
    /* cpu:1 holds copies of the input, its tower's parameters and the
     * gradient it receives. */
    assert_true(arenas[1][1] > arenas[0][1]);
}

/* Every parameter of a plan, in plan order, into one array. */
static float *all_params(keel_plan *plan, int64_t *count)
{
    float *values = NULL;
    *count = 0;
    for (int k = 0; k < keel_plan_param_count(plan); k++) {
        keel_param_info info;
        KS_OK(keel_plan_param_info(plan, k, &info));
        int64_t n = 1;
        for (int d = 0; d < info.ndim; d++)
            n *= info.shape[d];
        values = realloc(values, (size_t)(*count + n) * sizeof *values);
        assert_non_null(values);
        KS_OK(keel_plan_param_get(plan, info.name, values + *count, n));
        *count += n;
    }
    return values;
}

/* A weights file is the same whichever devices hold the parameters: saved
 * from towers split over two devices it loads into one, and back. */
static void test_weights_move_between_device_layouts(void **state)
{
    (void)state;
    net n = build_towers(4);
    KS_OK(keel_graph_backward(n.g, n.loss));
    keel_context *ctx = ks_context();
    keel_plan *split = NULL, *one = NULL;
    keel_plan_opts split_opts = {.devices = "cpu:0,cpu:1", .seed = 7};
    keel_plan_opts one_opts = {.devices = "cpu", .seed = 99};
    KS_OK(keel_plan_compile(&split, n.g, ctx, &split_opts));
    KS_OK(keel_plan_compile(&one, n.g, ctx, &one_opts));
    char path[] = "/tmp/keel_planner_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    keel_plan *order[2][2] = {{split, one}, {one, split}};
    for (int way = 0; way < 2; way++) {
        keel_plan *from = order[way][0], *to = order[way][1];
        if (way == 1) { /* new values on the one device first */
            float x[4 * 3 * 12 * 12];
            ks_fill_uniform(x, 4 * 3 * 12 * 12, 5, -1, 1);
            int32_t labels[4] = {0, 1, 2, 3};
            KS_OK(keel_plan_set_input(from, n.x, x));
            KS_OK(keel_plan_set_input(from, n.labels, labels));
            KS_OK(keel_plan_forward(from, true));
            KS_OK(keel_plan_backward(from));
            sgd_step(from, 0.5f);
        }
        KS_OK(keel_weights_save(from, path, NULL));
        KS_OK(keel_weights_load(to, path));
        int64_t count_from, count_to;
        float *want = all_params(from, &count_from), *got = all_params(to, &count_to);
        assert_int_equal(count_from, count_to);
        assert_memory_equal(want, got, (size_t)count_from * sizeof *want);
        free(want);
        free(got);
    }
    unlink(path);
    keel_plan_destroy(split);
    keel_plan_destroy(one);
    keel_context_destroy(ctx);
    keel_graph_free(n.g);
}

static void test_device_list_errors(void **state)
{
    (void)state;
    net n = build_towers(2);
    keel_context *ctx = ks_context();
    keel_plan *plan = NULL;
    keel_plan_opts opts = {.devices = "cpu:0,cpu:0"};
    assert_int_equal(keel_plan_compile(&plan, n.g, ctx, &opts), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "twice"));
    opts.devices = "cpu:0,";
    assert_int_equal(keel_plan_compile(&plan, n.g, ctx, &opts), KEEL_ERR_INVALID_ARGUMENT);
    keel_context_destroy(ctx);
    keel_graph_free(n.g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_poisoned_dead_buffers_change_nothing),
        cmocka_unit_test(test_devices_hold_their_parameters_and_copies),
        cmocka_unit_test(test_weights_move_between_device_layouts),
        cmocka_unit_test(test_arena_is_well_below_the_sum),
        cmocka_unit_test(test_eval_forward_is_deterministic),
        cmocka_unit_test(test_device_errors),
        cmocka_unit_test(test_profiling_attributes_time_to_layers),
        cmocka_unit_test(test_two_cpu_devices_match_one),
        cmocka_unit_test(test_device_list_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
