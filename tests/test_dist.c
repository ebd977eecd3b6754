/* Data parallelism: `mpirun -np 2` training of lenet5 equals one process
 * with the doubled batch, through the library and through `keel train
 * --data-parallel`, and a rank that dies stops the job with an error in
 * bounded time. The library test starts mpirun on itself; each rank runs
 * rank_main. */
#include "support/support.h"
#include "core/safetensors.h"
#include "dist/distributed.h"
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BATCH 8          /* per rank */
#define STEPS 4
#define SAMPLES 256

static keel_dataset *synthetic_dataset(void)
{
    uint8_t *pixels = malloc((size_t)SAMPLES * 28 * 28);
    int32_t labels[SAMPLES];
    uint64_t s = 12345;
    for (int64_t i = 0; i < (int64_t)SAMPLES * 28 * 28; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        pixels[i] = (uint8_t)(s >> 56);
    }
    for (int i = 0; i < SAMPLES; i++)
        labels[i] = i % 10;
    keel_dataset *d = NULL;
    KS_OK(keel_dataset_from_u8(&d, SAMPLES, 1, 28, 28, 10, pixels, labels));
    free(pixels);
    return d;
}

typedef struct run {
    keel_graph *g;
    keel_model_io io;
    keel_context *ctx;
    keel_plan *plan;
    keel_optimizer *opt;
} run;

static void run_open(run *r, int64_t batch)
{
    r->g = keel_graph_new();
    keel_model_opts mopts = {.batch = batch};
    KS_OK(keel_model_build(r->g, "lenet5", &mopts, &r->io));
    KS_OK(keel_graph_backward(r->g, r->io.loss));
    r->ctx = ks_context();
    keel_plan_opts popts = {.devices = "cpu", .seed = 77};
    KS_OK(keel_plan_compile(&r->plan, r->g, r->ctx, &popts));
    keel_optimizer_opts oopts = keel_optimizer_defaults(KEEL_OPTIMIZER_SGD);
    KS_OK(keel_optimizer_create(&r->opt, r->plan, &oopts));
}

static void run_close(run *r)
{
    keel_optimizer_destroy(r->opt);
    keel_plan_destroy(r->plan);
    keel_context_destroy(r->ctx);
    keel_graph_free(r->g);
}

/* Trains STEPS steps; a sharded loader when shards > 1. Returns the losses. */
static void train(run *r, keel_dist *dist, int shards, int shard, int64_t batch, float *losses, int die_at)
{
    keel_dataset *d = synthetic_dataset();
    keel_loader_opts lopts = {.batch = batch, .shuffle = true, .seed = 5, .drop_last = true,
                              .shard_count = shards, .shard_index = shard};
    keel_loader *l = NULL;
    KS_OK(keel_loader_create(&l, d, &lopts));
    KS_OK(keel_loader_start_epoch(l, 0));
    for (int step = 0; step < STEPS; step++) {
        const float *images;
        const int32_t *labels;
        int64_t count;
        KS_OK(keel_loader_next(l, &images, &labels, &count));
        assert_int_equal(count, batch);
        KS_OK(keel_plan_set_input(r->plan, r->io.images, images));
        KS_OK(keel_plan_set_input(r->plan, r->io.labels, labels));
        KS_OK(keel_plan_forward(r->plan, true));
        if (dist)
            keel_dist_begin_grads(dist);
        KS_OK(keel_plan_backward(r->plan));
        if (dist) {
            if (step == die_at && keel_dist_rank(dist) == 1)
                _exit(3); /* a rank that dies mid-training */
            KS_OK(keel_dist_finish_grads(dist));
        }
        KS_OK(keel_optimizer_step(r->opt, 0.05f));
        KS_OK(keel_plan_read(r->plan, r->io.loss, &losses[step]));
    }
    keel_loader_destroy(l);
    keel_dataset_free(d);
}

static const char *conv1 = "conv1.weight";

/* One rank of the job: trains its shard and rank 0 writes the result. */
static int rank_main(const char *out_path, int die_at)
{
    run r;
    run_open(&r, BATCH);
    keel_dist *dist = NULL;
    KS_OK(keel_dist_create(&dist, r.plan, 20.0));
    KS_OK(keel_dist_broadcast_params(dist));
    float losses[STEPS];
    train(&r, dist, keel_dist_size(dist), keel_dist_rank(dist), BATCH, losses, die_at);
    /* Losses are per shard; their mean is the global batch's loss. */
    double mean[STEPS];
    for (int i = 0; i < STEPS; i++)
        mean[i] = losses[i] / keel_dist_size(dist);
    KS_OK(keel_dist_sum(dist, mean, STEPS));
    if (keel_dist_rank(dist) == 0) {
        float w[150];
        KS_OK(keel_plan_param_get(r.plan, conv1, w, 150));
        FILE *f = fopen(out_path, "wb");
        assert_non_null(f);
        for (int i = 0; i < STEPS; i++) {
            float m = (float)mean[i];
            fwrite(&m, sizeof m, 1, f);
        }
        fwrite(w, sizeof w, 1, f);
        fclose(f);
    }
    keel_dist_destroy(dist);
    run_close(&r);
    return 0;
}

static char self_path[4096];

/* Runs `argv` (with mpirun -np 2 in front when `ranks` is 2), its output
 * going to `log` (NULL: ours); returns its exit status, or -1 when it had to
 * be killed after `limit` seconds. */
static int run_ranks(int ranks, char **argv, const char *log, int limit, double *seconds)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (log && (!freopen(log, "w", stdout) || dup2(fileno(stdout), 2) < 0))
            _exit(126);
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
        setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
        /* Batch 32 and batch 64 may get different oneDNN convolution
         * algorithms, whose fp32 sums over 50,000 terms differ by ~1e-5
         * relative per step; one engine for both compares what data
         * parallelism computes, not two summation orders. */
        setenv("KEEL_CPU_CONV", "im2col", 1);
        char *args[64] = {"mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none"};
        int n = ranks > 1 ? 6 : 0;
        for (int i = 0; argv[i] && n < 63; i++)
            args[n++] = argv[i];
        args[n] = NULL;
        execvp(args[0], args);
        _exit(127);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int status = 0;
    for (;;) {
        pid_t done = waitpid(pid, &status, WNOHANG);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        *seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (done == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
        if (*seconds > limit) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        usleep(20000);
    }
}

static int run_mpirun(const char *mode, const char *out_path, int limit, double *seconds)
{
    char *argv[] = {self_path, (char *)mode, (char *)out_path, NULL};
    return run_ranks(2, argv, NULL, limit, seconds);
}

static bool have_mpirun(void)
{
    return keel_dist_available() && system("command -v mpirun >/dev/null 2>&1") == 0;
}

static void test_two_ranks_equal_doubled_batch(void **state)
{
    (void)state;
    if (!have_mpirun())
        skip();
    char out_path[] = "/tmp/keel_dist_XXXXXX";
    int fd = mkstemp(out_path);
    assert_true(fd >= 0);
    close(fd);
    double seconds = 0;
    int status = run_mpirun("--rank", out_path, 240, &seconds);
    assert_int_equal(status, 0);
    float got[STEPS + 150];
    FILE *f = fopen(out_path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(got, sizeof got, 1, f), 1);
    fclose(f);
    unlink(out_path);

    run r;
    run_open(&r, 2 * BATCH);
    float losses[STEPS], w[150];
    train(&r, NULL, 1, 0, 2 * BATCH, losses, -1);
    KS_OK(keel_plan_param_get(r.plan, conv1, w, 150));
    run_close(&r);
    double want[STEPS + 150];
    ks_to_double(losses, want, STEPS);
    ks_to_double(w, want + STEPS, 150);
    printf("mpirun -np 2 took %.1f s\n", seconds);
    ks_check("data parallel (2 ranks) vs doubled batch: losses", got, want, STEPS, 1e-3, 1e-5);
    ks_check("data parallel (2 ranks) vs doubled batch: conv1.weight", got + STEPS, want + STEPS, 150, 1e-2, 1e-5);
}

static void test_dead_rank_fails_in_bounded_time(void **state)
{
    (void)state;
    if (!have_mpirun())
        skip();
    double seconds = 0;
    int status = run_mpirun("--die", "/dev/null", 90, &seconds);
    printf("a dead rank ended the job with status %d after %.1f s\n", status, seconds);
    assert_true(status != 0 && status != -1); /* failed, and by itself */
    assert_true(seconds < 60.0);
}

/* build/tests/test_dist -> build/src/cli/keel */
static void keel_program(char *path, size_t size)
{
    char self[PATH_MAX];
    snprintf(self, sizeof self, "%s", self_path);
    snprintf(path, size, "%s/../src/cli/keel", dirname(self));
}

static bool file_contains(const char *path, const char *text)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, text) != NULL;
}

/* Trains with `mpirun -np 2 keel train --data-parallel --batch B` and with
 * `keel train --batch 2B` (both with `common` flags) and checks that the two
 * checkpoints agree in every float tensor (parameters, running statistics,
 * momenta) to 1e-5; returns how many tensors were compared. */
static int data_parallel_equals_doubled_batch(const char *label, char **common, int n_common, int batch)
{
    char keel[PATH_MAX], dir[] = "/tmp/keel_dp_XXXXXX";
    keel_program(keel, sizeof keel);
    assert_non_null(mkdtemp(dir));
    char two[PATH_MAX + 32], one[PATH_MAX + 32], log[PATH_MAX + 32], per_rank[32], doubled[32], expect[128];
    snprintf(two, sizeof two, "%s/two.safetensors", dir);
    snprintf(one, sizeof one, "%s/one.safetensors", dir);
    snprintf(log, sizeof log, "%s/log", dir);
    snprintf(per_rank, sizeof per_rank, "%d", batch);
    snprintf(doubled, sizeof doubled, "%d", 2 * batch);
    snprintf(expect, sizeof expect, "data-parallel over 2 ranks: batch %d per rank, an effective batch of %d", batch,
             2 * batch);
    char *argv[64];
    assert_true(n_common < 50);
    int n = 0;
    argv[n++] = keel;
    argv[n++] = "train";
    for (int i = 0; i < n_common; i++)
        argv[n++] = common[i];
    int fixed = n;
    double seconds = 0, seconds_one = 0;

    argv[n++] = "--data-parallel";
    argv[n++] = "--batch";
    argv[n++] = per_rank;
    argv[n++] = "--save";
    argv[n++] = two;
    argv[n] = NULL;
    int status = run_ranks(2, argv, log, 240, &seconds);
    if (status != 0 || !file_contains(log, expect)) {
        char cat[PATH_MAX + 64];
        snprintf(cat, sizeof cat, "cat '%s'", log);
        if (system(cat) != 0)
            printf("(no log)\n");
    }
    assert_int_equal(status, 0);
    assert_true(file_contains(log, expect));

    n = fixed;
    argv[n++] = "--batch";
    argv[n++] = doubled;
    argv[n++] = "--save";
    argv[n++] = one;
    argv[n] = NULL;
    assert_int_equal(run_ranks(1, argv, log, 240, &seconds_one), 0);
    printf("keel train %s: 2 ranks x batch %d took %.1f s, 1 process x batch %d %.1f s\n", label, batch, seconds,
           2 * batch, seconds_one);

    keel_st_file *a = NULL, *b = NULL;
    KS_OK(keel_st_file_load(&a, two));
    KS_OK(keel_st_file_load(&b, one));
    assert_int_equal(keel_st_file_count(a), keel_st_file_count(b));
    int compared = 0;
    for (size_t i = 0; i < keel_st_file_count(b); i++) {
        const keel_st_tensor *want = keel_st_file_at(b, i), *got = keel_st_file_find(a, want->name);
        assert_non_null(got);
        assert_int_equal(got->numel, want->numel);
        if (want->dtype != KEEL_ST_F32)
            continue;
        double *w = malloc((size_t)want->numel * sizeof *w);
        ks_to_double(want->data, w, want->numel);
        char what[256];
        snprintf(what, sizeof what, "keel train --data-parallel %s (2 x %d) vs batch %d: %s", label, batch,
                 2 * batch, want->name);
        ks_check(what, got->data, w, want->numel, 1e-2, 1e-5);
        free(w);
        compared++;
    }
    keel_st_file_free(a);
    keel_st_file_free(b);
    unlink(two);
    unlink(one);
    unlink(log);
    rmdir(dir);
    return compared;
}

/* Fashion-MNIST, 5 steps of lenet5. */
static void test_keel_train_data_parallel(void **state)
{
    (void)state;
    const char *data = getenv("KEEL_DATA_DIR");
    if (!have_mpirun() || !data)
        skip();
    char *common[] = {"--data", (char *)data, "--model", "lenet5", "--subset", "320", "--epochs", "1", "--no-test",
                      "--schedule", "constant", "--threads", "1", "--progress", "lines", "--seed", "3"};
    int compared = data_parallel_equals_doubled_batch("fashion-mnist", common, sizeof common / sizeof common[0], 32);
    assert_true(compared >= 20); /* lenet5's five weight-bias pairs and their momenta */
}

/* An image folder decoded by worker threads: each rank's image loader takes
 * its shard of every global batch, with the same random crops. */
static void test_keel_train_data_parallel_images(void **state)
{
    (void)state;
    if (!have_mpirun())
        skip();
    char dir[] = "/tmp/keel_dp_tree_XXXXXX", tree[64];
    assert_non_null(mkdtemp(dir));
    snprintf(tree, sizeof tree, "%s/tree", dir);
    if (!ks_write_colour_tree(tree, 16, 40, 48)) {
        printf("PNG writing is not built in; skipping\n");
        skip();
    }
    char *common[] = {"--data", tree, "--model", "lenet5", "--crop", "32", "--short-side", "40", "--epochs", "2",
                      "--no-test", "--workers", "2", "--schedule", "constant", "--threads", "1", "--progress",
                      "lines", "--seed", "5"};
    int compared = data_parallel_equals_doubled_batch("images", common, sizeof common / sizeof common[0], 6);
    assert_true(compared >= 20);
    char cleanup[128];
    snprintf(cleanup, sizeof cleanup, "rm -rf '%s'", dir);
    assert_int_equal(system(cleanup), 0);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--rank") == 0)
        return rank_main(argv[2], -1);
    if (argc == 3 && strcmp(argv[1], "--die") == 0)
        return rank_main(argv[2], 1);
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
    if (n > 0)
        self_path[n] = '\0';
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_ranks_equal_doubled_batch),
        cmocka_unit_test(test_dead_rank_fails_in_bounded_time),
        cmocka_unit_test(test_keel_train_data_parallel),
        cmocka_unit_test(test_keel_train_data_parallel_images),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
