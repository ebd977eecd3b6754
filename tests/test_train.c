/* Training: optimiser updates against a float64 transcription of
 * torch.optim's algorithms, schedule values, a real Fashion-MNIST subset
 * that must learn, bit-identical resumption, evaluation padding, and the
 * errors of bad checkpoints. */
#include "support/support.h"
#include "graph/plan_internal.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ---------------------------------------------------------------- */

static char tmp_dir[256];

static int make_tmp_dir(void **state)
{
    (void)state;
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/keel_test_train_XXXXXX");
    return mkdtemp(tmp_dir) ? 0 : -1;
}


#define TREE_CLASSES 3
#define TREE_PER_CLASS 12
#define TREE_IMAGES (TREE_CLASSES * TREE_PER_CLASS)

static bool have_tree;

/* The temporary folder, with the image tree of the image tests in it. */
static int setup_group(void **state)
{
    if (make_tmp_dir(state) != 0)
        return -1;
    char path[320];
    snprintf(path, sizeof path, "%s/tree", tmp_dir);
    have_tree = ks_write_colour_tree(path, TREE_PER_CLASS, 40, 48);
    return 0;
}

static int remove_tmp_dir(void **state)
{
    (void)state;
    char cmd[320];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *tmp_path(const char *name, char *buf, size_t size)
{
    snprintf(buf, size, "%s/%s", tmp_dir, name);
    return buf;
}

/* A learnable synthetic dataset: each class brightens its own horizontal
 * band of a noisy 28x28 image. */
static keel_dataset *synthetic_dataset(int64_t count, uint64_t seed)
{
    uint8_t *pixels = malloc((size_t)count * 28 * 28);
    int32_t *labels = malloc((size_t)count * sizeof *labels);
    float *noise = malloc((size_t)count * 28 * 28 * sizeof *noise);
    assert_non_null(pixels);
    assert_non_null(labels);
    assert_non_null(noise);
    ks_fill_uniform(noise, count * 28 * 28, seed, 0.0f, 1.0f);
    for (int64_t i = 0; i < count; i++) {
        labels[i] = (int32_t)((i * 7 + (int64_t)seed) % 10);
        for (int y = 0; y < 28; y++)
            for (int x = 0; x < 28; x++) {
                int64_t k = (i * 28 + y) * 28 + x;
                float v = 100.0f * noise[k] + (y / 3 == labels[i] ? 120.0f : 0.0f);
                pixels[k] = (uint8_t)(v > 255.0f ? 255.0f : v);
            }
    }
    keel_dataset *d = NULL;
    KS_OK(keel_dataset_from_u8(&d, count, 1, 28, 28, 10, pixels, labels));
    free(pixels);
    free(labels);
    free(noise);
    return d;
}

/* Fashion-MNIST from KEEL_DATA_DIR (or the Debian location); NULL when absent. */
static keel_dataset *fashion_mnist(bool train)
{
    const char *dir = getenv("KEEL_DATA_DIR");
    keel_dataset *d = NULL;
    if (keel_dataset_load_mnist_dir(&d, dir && *dir ? dir : KEEL_FASHION_MNIST_DIR, train) != KEEL_OK)
        return NULL;
    return d;
}

static float *read_all_params(keel_plan *plan, int64_t *total)
{
    int n = keel_plan_param_count(plan);
    int64_t sum = 0;
    for (int i = 0; i < n; i++) {
        keel_param_info info;
        KS_OK(keel_plan_param_info(plan, i, &info));
        int64_t numel = 1;
        for (int d = 0; d < info.ndim; d++)
            numel *= info.shape[d];
        sum += numel;
    }
    float *all = malloc((size_t)sum * sizeof *all), *at = all;
    assert_non_null(all);
    for (int i = 0; i < n; i++) {
        keel_param_info info;
        KS_OK(keel_plan_param_info(plan, i, &info));
        int64_t numel = 1;
        for (int d = 0; d < info.ndim; d++)
            numel *= info.shape[d];
        KS_OK(keel_plan_param_get(plan, info.name, at, numel));
        at += numel;
    }
    *total = sum;
    return all;
}

/* ---- optimiser math against float64 references --------------------------
 * The references transcribe the pseudo-code of torch.optim.SGD and
 * torch.optim.Adam (PyTorch 2.x documentation) with dampening 0. */

typedef struct ref_state {
    double *w, *b, *m, *v;  /* b: SGD momentum buffer; m, v: Adam moments */
    int64_t t;
} ref_state;

static void ref_sgd(ref_state *s, const double *g, int64_t n, double lr, double momentum, double wd, bool nesterov)
{
    s->t++;
    for (int64_t i = 0; i < n; i++) {
        double gi = g[i] + wd * s->w[i];
        if (momentum != 0.0) {
            s->b[i] = s->t > 1 ? momentum * s->b[i] + gi : gi;
            gi = nesterov ? gi + momentum * s->b[i] : s->b[i];
        }
        s->w[i] -= lr * gi;
    }
}

static void ref_adam(ref_state *s, const double *g, int64_t n, double lr, double beta1, double beta2, double eps,
                     double wd)
{
    s->t++;
    for (int64_t i = 0; i < n; i++) {
        double gi = g[i] + wd * s->w[i];
        s->m[i] = beta1 * s->m[i] + (1.0 - beta1) * gi;
        s->v[i] = beta2 * s->v[i] + (1.0 - beta2) * gi * gi;
        double mhat = s->m[i] / (1.0 - pow(beta1, (double)s->t));
        double vhat = s->v[i] / (1.0 - pow(beta2, (double)s->t));
        s->w[i] -= lr * mhat / (sqrt(vhat) + eps);
    }
}

/* A plan with two trainable parameters (a linear layer's weight and bias)
 * whose gradient block the test writes directly. */
typedef struct opt_fixture {
    keel_context *ctx;
    keel_graph *g;
    keel_plan *plan;
} opt_fixture;

static void opt_fixture_make(opt_fixture *f)
{
    f->ctx = ks_context();
    f->g = keel_graph_new();
    const int64_t xs[2] = {4, 7};
    keel_node *x = keel_input(f->g, "x", 2, xs);
    keel_node *labels = keel_input_labels(f->g, "labels", 4);
    keel_node *y = keel_linear(f->g, "fc", x, 5, NULL);
    keel_node *loss = keel_softmax_cross_entropy(f->g, "loss", y, labels);
    ks_graph_ok(f->g);
    KS_OK(keel_graph_backward(f->g, loss));
    f->plan = ks_compile(f->g, f->ctx, 3);
}

static void opt_fixture_free(opt_fixture *f)
{
    keel_plan_destroy(f->plan);
    keel_graph_free(f->g);
    keel_context_destroy(f->ctx);
}

/* Runs `steps` updates with fresh random gradients and a changing learning
 * rate, comparing every parameter with the reference after each. */
static void check_optimizer(const char *what, const keel_optimizer_opts *o)
{
    opt_fixture f;
    opt_fixture_make(&f);
    keel_plan *plan = f.plan;
    int64_t n = plan->param_floats;
    float *w = malloc((size_t)n * sizeof *w), *g = malloc((size_t)n * sizeof *g);
    double *gd = malloc((size_t)n * sizeof *gd);
    ref_state s = {calloc((size_t)n, sizeof(double)), calloc((size_t)n, sizeof(double)),
                   calloc((size_t)n, sizeof(double)), calloc((size_t)n, sizeof(double)), 0};
    keel_optimizer *opt = NULL;
    KS_OK(keel_optimizer_create(&opt, plan, o));
    ks_fill_uniform(w, n, 11, -1.0f, 1.0f);
    memcpy(plan->param_blocks[0], w, (size_t)n * sizeof *w);
    ks_to_double(w, s.w, n);
    for (int step = 0; step < 5; step++) {
        ks_fill_uniform(g, n, 100 + (uint64_t)step, -2.0f, 2.0f);
        memcpy(plan->grad_blocks[0], g, (size_t)n * sizeof *g);
        ks_to_double(g, gd, n);
        float lr = o->lr * (1.0f - 0.15f * (float)step);
        KS_OK(keel_optimizer_step(opt, lr));
        if (o->kind == KEEL_OPTIMIZER_SGD)
            ref_sgd(&s, gd, n, lr, o->momentum, o->weight_decay, o->nesterov);
        else
            ref_adam(&s, gd, n, lr, o->beta1, o->beta2, o->eps, o->weight_decay);
        char label[128];
        snprintf(label, sizeof label, "%s step %d", what, step + 1);
        ks_check(label, plan->param_blocks[0], s.w, n, 1.0, 2e-6);
    }
    assert_int_equal(keel_optimizer_steps(opt), 5);
    keel_optimizer_destroy(opt);
    free(w);
    free(g);
    free(gd);
    free(s.w);
    free(s.b);
    free(s.m);
    free(s.v);
    opt_fixture_free(&f);
}

static void test_sgd_plain(void **state)
{
    (void)state;
    keel_optimizer_opts o = {.kind = KEEL_OPTIMIZER_SGD, .lr = 0.1f};
    check_optimizer("sgd (Algorithm 4-1: w -= lr * mean gradient)", &o);
}

static void test_sgd_momentum_weight_decay(void **state)
{
    (void)state;
    keel_optimizer_opts o = {.kind = KEEL_OPTIMIZER_SGD, .lr = 0.05f, .momentum = 0.9f, .weight_decay = 1e-2f};
    check_optimizer("sgd[momentum=0.9, wd=0.01]", &o);
}

static void test_sgd_nesterov(void **state)
{
    (void)state;
    keel_optimizer_opts o = {.kind = KEEL_OPTIMIZER_SGD, .lr = 0.05f, .momentum = 0.8f, .nesterov = true,
                             .weight_decay = 5e-3f};
    check_optimizer("sgd[nesterov, momentum=0.8, wd=0.005]", &o);
}

static void test_adam(void **state)
{
    (void)state;
    keel_optimizer_opts o = keel_optimizer_defaults(KEEL_OPTIMIZER_ADAM);
    o.lr = 0.01f;
    check_optimizer("adam[lr=0.01]", &o);
    o.weight_decay = 0.05f;
    o.beta1 = 0.8f;
    o.beta2 = 0.99f;
    check_optimizer("adam[wd=0.05, betas=(0.8, 0.99)]", &o);
}

static void test_optimizer_bad_opts(void **state)
{
    (void)state;
    opt_fixture f;
    opt_fixture_make(&f);
    keel_optimizer *opt = NULL;
    keel_optimizer_opts o = {.kind = KEEL_OPTIMIZER_SGD, .lr = 0.1f, .momentum = 1.5f};
    assert_int_equal(keel_optimizer_create(&opt, f.plan, &o), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "momentum"));
    o.momentum = 0;
    o.lr = -1;
    assert_int_equal(keel_optimizer_create(&opt, f.plan, &o), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "learning rate"));
    o.lr = 0.1f;
    o.nesterov = true;
    assert_int_equal(keel_optimizer_create(&opt, f.plan, &o), KEEL_ERR_INVALID_ARGUMENT);
    keel_optimizer_kind kind;
    assert_int_equal(keel_optimizer_parse("rmsprop", &kind), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "rmsprop"));
    opt_fixture_free(&f);
}

/* ---- schedules ---------------------------------------------------------------- */

static void assert_close(double got, double want)
{
    if (fabs(got - want) > 1e-6 * fmax(1.0, fabs(want)))
        fail_msg("got %.9g, want %.9g", got, want);
}

static void test_schedules(void **state)
{
    (void)state;
    const int64_t per_epoch = 100, total = 1000;
    keel_schedule constant = {.kind = KEEL_SCHEDULE_CONSTANT};
    assert_close(keel_schedule_lr(&constant, 0.1f, 0, per_epoch, total), 0.1);
    assert_close(keel_schedule_lr(&constant, 0.1f, 999, per_epoch, total), 0.1);

    keel_schedule step = {.kind = KEEL_SCHEDULE_STEP, .step_epochs = 3, .gamma = 0.5f};
    assert_close(keel_schedule_lr(&step, 0.1f, 299, per_epoch, total), 0.1);
    assert_close(keel_schedule_lr(&step, 0.1f, 300, per_epoch, total), 0.05);
    assert_close(keel_schedule_lr(&step, 0.1f, 650, per_epoch, total), 0.025);

    keel_schedule cosine = {.kind = KEEL_SCHEDULE_COSINE, .min_lr = 0.001f};
    assert_close(keel_schedule_lr(&cosine, 0.1f, 0, per_epoch, total), 0.1);
    assert_close(keel_schedule_lr(&cosine, 0.1f, 500, per_epoch, total), 0.001 + 0.099 * 0.5);
    assert_close(keel_schedule_lr(&cosine, 0.1f, 250, per_epoch, total),
                 0.001 + 0.099 * (1.0 + cos(M_PI * 0.25)) / 2.0);
    assert_close(keel_schedule_lr(&cosine, 0.1f, 1000, per_epoch, total), 0.001);

    /* Warm-up over 2 epochs (200 steps), then cosine over the other 800. */
    keel_schedule warm = {.kind = KEEL_SCHEDULE_COSINE, .warmup_epochs = 2.0f};
    assert_close(keel_schedule_lr(&warm, 0.1f, 0, per_epoch, total), 0.1 / 200.0);
    assert_close(keel_schedule_lr(&warm, 0.1f, 99, per_epoch, total), 0.1 * 100.0 / 200.0);
    assert_close(keel_schedule_lr(&warm, 0.1f, 199, per_epoch, total), 0.1);
    assert_close(keel_schedule_lr(&warm, 0.1f, 200, per_epoch, total), 0.1);
    assert_close(keel_schedule_lr(&warm, 0.1f, 600, per_epoch, total), 0.05);
    keel_schedule warm_step = {.kind = KEEL_SCHEDULE_STEP, .step_epochs = 1, .gamma = 0.1f, .warmup_epochs = 0.5f};
    assert_close(keel_schedule_lr(&warm_step, 1.0f, 24, per_epoch, total), 0.5);
    assert_close(keel_schedule_lr(&warm_step, 1.0f, 150, per_epoch, total), 0.1);

    keel_schedule parsed = {.warmup_epochs = 1.0f};
    KS_OK(keel_schedule_parse("step:2:0.5", &parsed));
    assert_int_equal(parsed.kind, KEEL_SCHEDULE_STEP);
    assert_int_equal(parsed.step_epochs, 2);
    assert_close(parsed.gamma, 0.5);
    assert_close(parsed.warmup_epochs, 1.0);
    KS_OK(keel_schedule_parse("cosine:0.01", &parsed));
    assert_int_equal(parsed.kind, KEEL_SCHEDULE_COSINE);
    assert_close(parsed.min_lr, 0.01);
    KS_OK(keel_schedule_parse("constant", &parsed));
    assert_int_equal(parsed.kind, KEEL_SCHEDULE_CONSTANT);
    assert_int_equal(keel_schedule_parse("step:0", &parsed), KEEL_ERR_INVALID_ARGUMENT);
    assert_int_equal(keel_schedule_parse("step:2:1.5", &parsed), KEEL_ERR_INVALID_ARGUMENT);
    assert_int_equal(keel_schedule_parse("exponential", &parsed), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "exponential"));

    char text[256];
    keel_schedule_describe(&warm, 0.1f, per_epoch, total, text, sizeof text);
    assert_non_null(strstr(text, "cosine"));
    assert_non_null(strstr(text, "warm-up"));
}

/* ---- the training loop ------------------------------------------------------ */

static keel_trainer *make_trainer(keel_context *ctx, const char *model, keel_dataset *train, keel_dataset *test,
                                  const keel_optimizer_opts *opt, int epochs, int64_t batch)
{
    keel_trainer_opts o = keel_trainer_default_opts();
    o.model = model;
    o.train = train;
    o.test = test;
    o.batch = batch;
    o.epochs = epochs;
    if (opt)
        o.optimizer = *opt;
    o.seed = 7;
    keel_trainer *t = NULL;
    KS_OK(keel_trainer_create(&t, ctx, &o));
    return t;
}

static void test_learns_fashion_mnist_subset(void **state)
{
    (void)state;
    keel_dataset *train = fashion_mnist(true), *test = fashion_mnist(false);
    if (!train || !test) {
        keel_dataset_free(train);
        keel_dataset_free(test);
        printf("Fashion-MNIST not found (KEEL_DATA_DIR); skipping\n");
        skip();
    }
    KS_OK(keel_dataset_truncate(train, 2000));
    KS_OK(keel_dataset_truncate(test, 1000));
    keel_context *ctx = ks_context();
    keel_trainer *t = make_trainer(ctx, "lenet5", train, test, NULL, 4, 32);
    KS_OK(keel_trainer_run(t));
    assert_int_equal(keel_trainer_epochs_done(t), 4);
    keel_epoch_stats first, last;
    KS_OK(keel_trainer_history(t, 0, &first));
    KS_OK(keel_trainer_history(t, 3, &last));
    printf("lenet5 on 2000 Fashion-MNIST images, 4 epochs: train loss %.3f -> %.3f, test top-1 %.1f%% "
           "(1000 images), %.0f img/s\n", first.train_loss, last.train_loss, 100.0 * last.eval.top1,
           last.images_per_second);
    assert_true(last.evaluated);
    assert_int_equal(last.eval.samples, 1000);
    assert_true(last.train_loss < first.train_loss);
    assert_true(last.eval.top1 > 0.60);
    keel_eval_result again;
    KS_OK(keel_trainer_evaluate(t, NULL, &again));
    assert_true(again.loss == last.eval.loss && again.top1 == last.eval.top1);
    keel_trainer_destroy(t);
    keel_context_destroy(ctx);
    keel_dataset_free(train);
    keel_dataset_free(test);
}

/* Evaluating with a batch that does not divide the set (padding) gives the
 * numbers that batch 1 gives. */
static void test_evaluate_pads_last_batch(void **state)
{
    (void)state;
    keel_context *ctx = ks_context();
    keel_dataset *d = synthetic_dataset(37, 5);
    keel_eval_result r[2];
    const int64_t batches[2] = {16, 1};
    for (int k = 0; k < 2; k++) {
        keel_graph *g = keel_graph_new();
        keel_model_opts mo = {.batch = batches[k]};
        keel_model_io io;
        KS_OK(keel_model_build(g, "lenet5", &mo, &io));
        keel_graph_keep(g, io.logits);
        keel_plan *plan = ks_compile(g, ctx, 9);
        KS_OK(keel_evaluate(plan, &io, d, &r[k]));
        keel_plan_destroy(plan);
        keel_graph_free(g);
    }
    assert_int_equal(r[0].samples, 37);
    assert_int_equal(r[1].samples, 37);
    assert_false(r[0].has_top5);
    printf("eval batch 16: loss %.9f top-1 %.4f; batch 1: loss %.9f top-1 %.4f\n", r[0].loss, r[0].top1, r[1].loss,
           r[1].top1);
    assert_true(fabs(r[0].loss - r[1].loss) < 1e-5);
    assert_true(r[0].top1 == r[1].top1);
    keel_dataset_free(d);
    keel_context_destroy(ctx);
}

/* Two epochs in one go equal one epoch, a checkpoint, a fresh process-like
 * restart and the second epoch: every parameter and batch-norm statistic
 * bit for bit. cnn-small has batch norm and dropout, so its running
 * statistics and the dropout counter must survive too; Adam's step count
 * (its bias correction) must as well. */
static void check_resume_bitwise(const char *model, const keel_optimizer_opts *opt, const char *what)
{
    keel_context *ctx = ks_context();
    keel_dataset *train = synthetic_dataset(128, 1), *test = synthetic_dataset(32, 2);
    char path[320];
    tmp_path("resume.safetensors", path, sizeof path);

    keel_trainer *whole = make_trainer(ctx, model, train, test, opt, 2, 32);
    KS_OK(keel_trainer_run(whole));
    int64_t n_whole = 0;
    float *p_whole = read_all_params(keel_trainer_plan(whole), &n_whole);
    keel_epoch_stats last_whole;
    KS_OK(keel_trainer_history(whole, 1, &last_whole));
    keel_trainer_destroy(whole);

    keel_trainer *first = make_trainer(ctx, model, train, test, opt, 2, 32);
    KS_OK(keel_trainer_epoch(first, NULL));
    KS_OK(keel_trainer_save(first, path));
    keel_trainer_destroy(first);

    keel_trainer *second = make_trainer(ctx, model, train, test, opt, 2, 32);
    KS_OK(keel_trainer_resume(second, path));
    assert_int_equal(keel_trainer_epochs_done(second), 1);
    KS_OK(keel_trainer_run(second));
    assert_int_equal(keel_trainer_epochs_done(second), 2);
    assert_int_equal(keel_trainer_history_count(second), 2);
    int64_t n_resumed = 0;
    float *p_resumed = read_all_params(keel_trainer_plan(second), &n_resumed);
    keel_epoch_stats last_resumed;
    KS_OK(keel_trainer_history(second, 1, &last_resumed));
    keel_trainer_destroy(second);

    assert_int_equal(n_whole, n_resumed);
    int64_t differ = 0;
    for (int64_t i = 0; i < n_whole; i++)
        differ += memcmp(&p_whole[i], &p_resumed[i], sizeof(float)) != 0;
    printf("%s: %lld of %lld parameter values differ after resuming; loss %.9g vs %.9g\n", what, (long long)differ,
           (long long)n_whole, last_whole.train_loss, last_resumed.train_loss);
    assert_int_equal(differ, 0);
    assert_true(last_whole.train_loss == last_resumed.train_loss);
    assert_true(last_whole.eval.loss == last_resumed.eval.loss);
    free(p_whole);
    free(p_resumed);
    keel_dataset_free(train);
    keel_dataset_free(test);
    keel_context_destroy(ctx);
}

static void test_resume_sgd_bitwise(void **state)
{
    (void)state;
    keel_optimizer_opts o = keel_optimizer_defaults(KEEL_OPTIMIZER_SGD);
    o.weight_decay = 1e-4f;
    check_resume_bitwise("cnn-small", &o, "cnn-small, sgd momentum");
}

static void test_resume_adam_bitwise(void **state)
{
    (void)state;
    keel_optimizer_opts o = keel_optimizer_defaults(KEEL_OPTIMIZER_ADAM);
    check_resume_bitwise("lenet5", &o, "lenet5, adam");
}

/* ---- bad checkpoints ------------------------------------------------------------ */

static void write_checkpoint(keel_context *ctx, keel_dataset *d, const char *path)
{
    keel_trainer *t = make_trainer(ctx, "lenet5", d, NULL, NULL, 1, 32);
    KS_OK(keel_trainer_save(t, path));
    keel_trainer_destroy(t);
}

static long file_size(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

static void expect_resume_error(keel_context *ctx, keel_dataset *d, const char *path, const char *needle)
{
    keel_trainer *t = make_trainer(ctx, "lenet5", d, NULL, NULL, 1, 32);
    keel_status st = keel_trainer_resume(t, path);
    printf("resume %s -> %s: %s\n", path, keel_status_string(st), keel_last_error());
    assert_int_not_equal(st, KEEL_OK);
    assert_non_null(strstr(keel_last_error(), path));
    if (needle)
        assert_non_null(strstr(keel_last_error(), needle));
    keel_trainer_destroy(t);
}

static void test_truncated_and_corrupt_checkpoint(void **state)
{
    (void)state;
    keel_context *ctx = ks_context();
    keel_dataset *d = synthetic_dataset(64, 3);
    char good[320], cut[320], bad[320], missing[320];
    tmp_path("good.safetensors", good, sizeof good);
    tmp_path("cut.safetensors", cut, sizeof cut);
    tmp_path("bad.safetensors", bad, sizeof bad);
    tmp_path("missing.safetensors", missing, sizeof missing);
    write_checkpoint(ctx, d, good);

    long n = file_size(good);
    assert_true(n > 64);
    char *bytes = malloc((size_t)n);
    FILE *f = fopen(good, "rb");
    assert_int_equal(fread(bytes, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    f = fopen(cut, "wb");
    fwrite(bytes, 1, (size_t)n / 2, f);
    fclose(f);
    expect_resume_error(ctx, d, cut, NULL);

    f = fopen(bad, "wb");
    fwrite(bytes, 1, (size_t)n, f);
    fclose(f);
    f = fopen(bad, "r+b"); /* the JSON header no longer parses */
    fseek(f, 8, SEEK_SET);
    fwrite("{\"oops", 1, 6, f);
    fclose(f);
    expect_resume_error(ctx, d, bad, NULL);
    free(bytes);

    expect_resume_error(ctx, d, missing, NULL);

    /* A weights file has no optimiser state: it is not a checkpoint. */
    keel_trainer *t = make_trainer(ctx, "lenet5", d, NULL, NULL, 1, 32);
    char weights[320];
    tmp_path("weights.safetensors", weights, sizeof weights);
    KS_OK(keel_weights_save(keel_trainer_plan(t), weights, NULL));
    keel_trainer_destroy(t);
    expect_resume_error(ctx, d, weights, "not a Keel training checkpoint");

    keel_dataset_free(d);
    keel_context_destroy(ctx);
}

static void test_mismatched_checkpoint(void **state)
{
    (void)state;
    keel_context *ctx = ks_context();
    keel_dataset *d = synthetic_dataset(64, 4);
    char path[320];
    tmp_path("lenet.safetensors", path, sizeof path);
    write_checkpoint(ctx, d, path);

    /* Another model: the first parameter it lacks, and what the file holds there. */
    keel_trainer *t = make_trainer(ctx, "cnn-small", d, NULL, NULL, 1, 32);
    assert_int_not_equal(keel_trainer_resume(t, path), KEEL_OK);
    printf("cnn-small from a lenet5 checkpoint: %s\n", keel_last_error());
    const char *msg = keel_last_error();
    assert_non_null(strstr(msg, "block1.conv1.weight"));
    assert_non_null(strstr(msg, "32x1x3x3"));
    assert_non_null(strstr(msg, "conv1.weight"));
    assert_non_null(strstr(msg, "6x1x5x5"));
    assert_non_null(strstr(msg, "lenet5"));
    keel_trainer_destroy(t);

    /* The same names in another shape: 12 classes instead of 10. */
    keel_trainer_opts o = keel_trainer_default_opts();
    o.train = d;
    o.batch = 32;
    o.seed = 7;
    o.model_opts.classes = 12;
    KS_OK(keel_trainer_create(&t, ctx, &o));
    assert_int_equal(keel_trainer_resume(t, path), KEEL_ERR_SHAPE);
    printf("lenet5 with 12 classes from a 10-class checkpoint: %s\n", keel_last_error());
    msg = keel_last_error();
    assert_non_null(strstr(msg, "fc2.weight"));
    assert_non_null(strstr(msg, "10x84"));
    assert_non_null(strstr(msg, "12x84"));
    /* The failed load left the parameters alone. */
    keel_trainer_destroy(t);

    /* Resuming SGD state into an Adam run names both. */
    keel_optimizer_opts adam = keel_optimizer_defaults(KEEL_OPTIMIZER_ADAM);
    t = make_trainer(ctx, "lenet5", d, NULL, &adam, 1, 32);
    assert_int_not_equal(keel_trainer_resume(t, path), KEEL_OK);
    assert_non_null(strstr(keel_last_error(), "sgd"));
    assert_non_null(strstr(keel_last_error(), "adam"));
    keel_trainer_destroy(t);

    keel_dataset_free(d);
    keel_context_destroy(ctx);
}

/* Weights round-trip through keel_weights_save / keel_weights_load and the
 * checkpoint records what evaluation needs. */
static void test_weights_round_trip(void **state)
{
    (void)state;
    keel_context *ctx = ks_context();
    keel_dataset *d = synthetic_dataset(64, 6);
    keel_trainer *t = make_trainer(ctx, "lenet5", d, NULL, NULL, 1, 32);
    KS_OK(keel_trainer_epoch(t, NULL));
    char path[320], value[128];
    tmp_path("round.safetensors", path, sizeof path);
    KS_OK(keel_trainer_save(t, path));
    int64_t n = 0;
    float *before = read_all_params(keel_trainer_plan(t), &n);
    KS_OK(keel_checkpoint_metadata(path, "model", value, sizeof value));
    assert_string_equal(value, "lenet5");
    KS_OK(keel_checkpoint_metadata(path, "epoch", value, sizeof value));
    assert_string_equal(value, "1");
    assert_int_equal(keel_checkpoint_metadata(path, "nothing", value, sizeof value), KEEL_ERR_NOT_FOUND);
    float mean, std;
    KS_OK(keel_checkpoint_normalization(path, 1, &mean, &std));
    assert_true(mean > 0.0f && std > 0.0f);

    keel_graph *g = keel_graph_new();
    keel_model_opts mo = {.batch = 8};
    keel_model_io io;
    KS_OK(keel_model_build(g, "lenet5", &mo, &io));
    keel_plan *plan = ks_compile(g, ctx, 99);
    KS_OK(keel_weights_load(plan, path));
    int64_t m = 0;
    float *after = read_all_params(plan, &m);
    assert_int_equal(n, m);
    assert_memory_equal(before, after, (size_t)n * sizeof(float));
    free(before);
    free(after);
    keel_plan_destroy(plan);
    keel_graph_free(g);
    keel_trainer_destroy(t);
    keel_dataset_free(d);
    keel_context_destroy(ctx);
}

static void test_trainer_bad_opts(void **state)
{
    (void)state;
    keel_context *ctx = ks_context();
    keel_dataset *d = synthetic_dataset(20, 8);
    keel_trainer_opts o = keel_trainer_default_opts();
    keel_trainer *t = NULL;
    assert_int_equal(keel_trainer_create(&t, ctx, &o), KEEL_ERR_INVALID_ARGUMENT); /* no data */
    o.train = d;
    assert_int_equal(keel_trainer_create(&t, ctx, &o), KEEL_ERR_INVALID_ARGUMENT); /* 20 < batch 64 */
    assert_non_null(strstr(keel_last_error(), "fewer than one batch"));
    o.batch = 4;
    o.model = "no-such-model";
    assert_int_not_equal(keel_trainer_create(&t, ctx, &o), KEEL_OK);
    assert_non_null(strstr(keel_last_error(), "no-such-model"));
    assert_null(t);
    keel_dataset_free(d);
    keel_context_destroy(ctx);
}

/* --device cuda with data parallelism reads the rank's index on its host
 * from the launcher's environment, and says which variable was wrong. */
static void test_data_parallel_local_rank(void **state)
{
    (void)state;
    keel_context *ctx = ks_context();
    keel_dataset *d = synthetic_dataset(32, 8);
    keel_trainer_opts o = keel_trainer_default_opts();
    o.train = d;
    o.batch = 8;
    o.device = "cuda";
    o.data_parallel = true;
    keel_trainer *t = NULL;
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "two", 1);
    assert_int_equal(keel_trainer_create(&t, ctx, &o), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "OMPI_COMM_WORLD_LOCAL_RANK is 'two'"));
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "-1", 1);
    assert_int_equal(keel_trainer_create(&t, ctx, &o), KEEL_ERR_INVALID_ARGUMENT);
    unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
    assert_null(t);
    keel_dataset_free(d);
    keel_context_destroy(ctx);
}

/* A progress callback may evaluate mid-epoch. When it runs, the next
 * training batch is already fed (it goes to the device while the step
 * runs); evaluating must not leave the test set's last batch in its place,
 * so every step's loss equals that of a run whose callback does nothing. */
typedef struct mid_epoch {
    keel_trainer *t;
    bool evaluate;
    float losses[8];
    int steps;
} mid_epoch;

static void on_step(const keel_progress *p, void *user)
{
    mid_epoch *m = user;
    if (p->event != KEEL_PROGRESS_STEP || m->steps >= 8)
        return;
    m->losses[m->steps++] = p->loss;
    keel_eval_result r;
    if (m->evaluate && p->step % 2 == 1)
        KS_OK(keel_trainer_evaluate(m->t, NULL, &r));
}

static void test_evaluate_inside_progress_callback(void **state)
{
    (void)state;
    keel_context *ctx = ks_context();
    keel_dataset *train = synthetic_dataset(96, 3), *test = synthetic_dataset(40, 4);
    mid_epoch runs[2] = {{.evaluate = false}, {.evaluate = true}};
    for (int k = 0; k < 2; k++) {
        keel_trainer_opts o = keel_trainer_default_opts();
        o.train = train;
        o.test = test;
        o.batch = 16;
        o.epochs = 1;
        o.seed = 5;
        o.progress = on_step;
        o.progress_user = &runs[k];
        KS_OK(keel_trainer_create(&runs[k].t, ctx, &o));
        KS_OK(keel_trainer_run(runs[k].t));
        keel_trainer_destroy(runs[k].t);
    }
    assert_int_equal(runs[0].steps, 6);
    assert_int_equal(runs[1].steps, 6);
    for (int s = 0; s < 6; s++)
        assert_true(runs[0].losses[s] == runs[1].losses[s]);
    keel_dataset_free(train);
    keel_dataset_free(test);
    keel_context_destroy(ctx);
}


/* ---- image datasets ------------------------------------------------------------
 * A tree of 3 classes x 12 PNGs of 40x48 written here, each image noise with
 * its class's colour channel raised, so a small network can learn it. */


static void need_tree(void)
{
    if (!have_tree) {
        printf("PNG writing is not built in; skipping\n");
        skip();
    }
}

static keel_image_dataset *open_images(const char *name, int short_side)
{
    char path[320];
    keel_image_open_opts o = {.short_side = short_side};
    keel_image_dataset *d = NULL;
    KS_OK(keel_image_dataset_open(&d, tmp_path(name, path, sizeof path), &o));
    return d;
}

/* A small network for 3 x crop x crop images: two strided convolutions,
 * global average pooling and a linear classifier. */
static keel_status build_two_conv(keel_graph *g, const keel_model_opts *mo, keel_model_io *io, void *user)
{
    (void)user;
    const int64_t shape[4] = {mo->batch, mo->in_channels, mo->height, mo->width};
    keel_conv2d_opts c = keel_conv_opts(3, 2, 1);
    io->images = keel_input(g, "images", 4, shape);
    io->labels = keel_input_labels(g, "labels", mo->batch);
    keel_node *x = keel_relu(g, "relu1", keel_conv2d(g, "conv1", io->images, 8, &c));
    x = keel_relu(g, "relu2", keel_conv2d(g, "conv2", x, 12, &c));
    x = keel_flatten(g, "flatten", keel_global_avg_pool2d(g, "pool", x));
    io->logits = keel_linear(g, "fc", x, mo->classes, NULL);
    io->loss = keel_softmax_cross_entropy(g, "loss", io->logits, io->labels);
    return keel_graph_status(g);
}

static keel_trainer_opts image_trainer_opts(keel_image_dataset *train, keel_image_dataset *test, int workers)
{
    keel_trainer_opts o = keel_trainer_default_opts();
    o.build = build_two_conv;
    o.model = "two-conv";
    o.train_images = train;
    o.test_images = test;
    o.train_augment = keel_augment_defaults(KEEL_CROP_RANDOM_RESIZED);
    o.train_augment.crop_size = 32;
    o.train_augment.scale_min = 0.25f;
    o.test_augment = keel_augment_defaults(KEEL_CROP_CENTER);
    o.test_augment.crop_size = 32;
    o.workers = workers;
    o.batch = 6;
    o.epochs = 2;
    o.seed = 11;
    return o;
}


/* The tree trains through keel_trainer: the loss falls and the centre-crop
 * accuracy on the tree beats chance by far. */
static void test_images_learn(void **state)
{
    (void)state;
    need_tree();
    keel_context *ctx = ks_context();
    keel_image_dataset *d = open_images("tree", 0);
    assert_int_equal(keel_image_dataset_size(d), TREE_IMAGES);
    keel_trainer_opts o = image_trainer_opts(d, d, 2);
    o.epochs = 5;
    keel_trainer *t = NULL;
    KS_OK(keel_trainer_create(&t, ctx, &o));
    char text[2048];
    printf("%s\n", keel_trainer_describe(t, text, sizeof text));
    assert_non_null(strstr(text, "random-resized crop 32"));
    assert_non_null(strstr(text, "36 validation images"));
    assert_int_equal(keel_trainer_steps_per_epoch(t), TREE_IMAGES / 6);
    KS_OK(keel_trainer_run(t));
    keel_epoch_stats first, last;
    KS_OK(keel_trainer_history(t, 0, &first));
    KS_OK(keel_trainer_history(t, 4, &last));
    printf("two-conv on %d 40x48 PNGs, 5 epochs: train loss %.3f -> %.3f, centre-crop top-1 %.1f%% top-5 %.1f%% "
           "(eval loss %.3f)\n", TREE_IMAGES, first.train_loss, last.train_loss, 100.0 * last.eval.top1,
           100.0 * last.eval.top5, last.eval.loss);
    assert_true(isfinite(last.train_loss) && isfinite(last.eval.loss));
    assert_true(last.train_loss < first.train_loss);
    assert_true(last.evaluated);
    assert_int_equal(last.eval.samples, TREE_IMAGES);
    assert_true(last.eval.has_top5);
    assert_true(last.eval.top5 == 1.0); /* three classes */
    assert_true(last.eval.top1 > 0.8);
    keel_eval_result again;
    KS_OK(keel_trainer_evaluate_images(t, d, &again));
    assert_true(again.loss == last.eval.loss && again.top1 == last.eval.top1);
    keel_trainer_destroy(t);
    keel_image_dataset_free(d);
    keel_context_destroy(ctx);
}

/* Trains one epoch and returns every parameter. */
static float *train_one_epoch(keel_context *ctx, keel_image_dataset *d, int workers, int64_t *n)
{
    keel_trainer_opts o = image_trainer_opts(d, NULL, workers);
    o.train_augment.lighting_std = 0.1f;
    keel_trainer *t = NULL;
    KS_OK(keel_trainer_create(&t, ctx, &o));
    KS_OK(keel_trainer_epoch(t, NULL));
    float *params = read_all_params(keel_trainer_plan(t), n);
    keel_trainer_destroy(t);
    return params;
}

static int64_t count_differences(const float *a, const float *b, int64_t n)
{
    int64_t differ = 0;
    for (int64_t i = 0; i < n; i++)
        differ += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return differ;
}

/* Packed shards and the folder they were packed from train to the same
 * bits, and so do 0 and 3 decoding threads. */
static void test_images_packed_equals_folder(void **state)
{
    (void)state;
    need_tree();
    keel_context *ctx = ks_context();
    keel_image_dataset *folder = open_images("tree", 40);
    char out[320];
    keel_pack_opts po = {.short_side = 40, .shards = 2, .workers = 2};
    int64_t packed_count = 0;
    KS_OK(keel_image_pack(folder, tmp_path("tree-packed", out, sizeof out), &po, &packed_count));
    assert_int_equal(packed_count, TREE_IMAGES);
    keel_image_dataset *packed = open_images("tree-packed", 0);
    assert_true(keel_image_dataset_is_packed(packed));

    int64_t n[3];
    float *from_folder = train_one_epoch(ctx, folder, 3, &n[0]);
    float *from_packed = train_one_epoch(ctx, packed, 3, &n[1]);
    float *inline_decoded = train_one_epoch(ctx, folder, 0, &n[2]);
    assert_int_equal(n[0], n[1]);
    assert_int_equal(n[0], n[2]);
    int64_t packed_differ = count_differences(from_folder, from_packed, n[0]);
    int64_t workers_differ = count_differences(from_folder, inline_decoded, n[0]);
    printf("after %d steps: %lld of %lld parameters differ between folder and shards, %lld between 3 workers and "
           "none\n", TREE_IMAGES / 6, (long long)packed_differ, (long long)n[0], (long long)workers_differ);
    assert_int_equal(packed_differ, 0);
    assert_int_equal(workers_differ, 0);
    free(from_folder);
    free(from_packed);
    free(inline_decoded);
    keel_image_dataset_free(packed);
    keel_image_dataset_free(folder);
    keel_context_destroy(ctx);
}

/* Two epochs equal one, a checkpoint, a restart and the second, on images. */
static void test_images_resume_bitwise(void **state)
{
    (void)state;
    need_tree();
    keel_context *ctx = ks_context();
    keel_image_dataset *d = open_images("tree", 40);
    keel_trainer_opts o = image_trainer_opts(d, d, 2);
    char path[320], value[256];
    tmp_path("images.safetensors", path, sizeof path);

    keel_trainer *whole = NULL;
    KS_OK(keel_trainer_create(&whole, ctx, &o));
    KS_OK(keel_trainer_run(whole));
    int64_t n_whole = 0;
    float *p_whole = read_all_params(keel_trainer_plan(whole), &n_whole);
    keel_epoch_stats last_whole;
    KS_OK(keel_trainer_history(whole, 1, &last_whole));
    keel_trainer_destroy(whole);

    keel_trainer *first = NULL;
    KS_OK(keel_trainer_create(&first, ctx, &o));
    KS_OK(keel_trainer_epoch(first, NULL));
    KS_OK(keel_trainer_save(first, path));
    keel_trainer_destroy(first);
    KS_OK(keel_checkpoint_metadata(path, "augment.train", value, sizeof value));
    printf("augment.train = %s\n", value);
    assert_non_null(strstr(value, "random-resized crop 32"));
    KS_OK(keel_checkpoint_metadata(path, "input", value, sizeof value));
    assert_string_equal(value, "3x32x32");
    float mean[3], std[3];
    KS_OK(keel_checkpoint_normalization(path, 3, mean, std));
    assert_true(mean[0] == 0.485f && std[2] == 0.225f);

    keel_trainer *second = NULL;
    KS_OK(keel_trainer_create(&second, ctx, &o));
    KS_OK(keel_trainer_resume(second, path));
    KS_OK(keel_trainer_run(second));
    int64_t n_resumed = 0;
    float *p_resumed = read_all_params(keel_trainer_plan(second), &n_resumed);
    keel_epoch_stats last_resumed;
    KS_OK(keel_trainer_history(second, 1, &last_resumed));
    keel_trainer_destroy(second);

    assert_int_equal(n_whole, n_resumed);
    int64_t differ = count_differences(p_whole, p_resumed, n_whole);
    printf("images: %lld of %lld parameters differ after resuming; loss %.9g vs %.9g, eval top-1 %.4f vs %.4f\n",
           (long long)differ, (long long)n_whole, last_whole.train_loss, last_resumed.train_loss,
           last_whole.eval.top1, last_resumed.eval.top1);
    assert_int_equal(differ, 0);
    assert_true(last_whole.train_loss == last_resumed.train_loss);
    assert_true(last_whole.eval.loss == last_resumed.eval.loss);
    assert_true(last_resumed.eval.has_top5);
    free(p_whole);
    free(p_resumed);
    keel_image_dataset_free(d);
    keel_context_destroy(ctx);
}

/* With two shards, shard s of batch k is the s-th half of batch k of an
 * unsharded loader with twice the batch: what data parallelism relies on. */
static void test_image_loader_shards(void **state)
{
    (void)state;
    need_tree();
    keel_image_dataset *d = open_images("tree", 40);
    keel_image_loader_opts whole_opts = {.batch = 8, .workers = 2, .shuffle = true, .drop_last = true, .seed = 3};
    whole_opts.augment = keel_augment_defaults(KEEL_CROP_RANDOM);
    whole_opts.augment.crop_size = 24;
    keel_image_loader *whole, *shard[2];
    KS_OK(keel_image_loader_create(&whole, d, &whole_opts));
    for (int s = 0; s < 2; s++) {
        keel_image_loader_opts o = whole_opts;
        o.batch = 4;
        o.workers = s; /* any worker count gives the same samples */
        o.shard_count = 2;
        o.shard_index = s;
        KS_OK(keel_image_loader_create(&shard[s], d, &o));
        assert_int_equal(keel_image_loader_batches(shard[s]), TREE_IMAGES / 8);
        KS_OK(keel_image_loader_start_epoch(shard[s], 1));
    }
    KS_OK(keel_image_loader_start_epoch(whole, 1));
    size_t sample = 3 * 24 * 24;
    int64_t batches = 0;
    for (;;) {
        const float *x, *xs;
        const int32_t *y, *ys;
        int64_t n, ns;
        KS_OK(keel_image_loader_next(whole, &x, &y, &n));
        if (n == 0)
            break;
        for (int s = 0; s < 2; s++) {
            KS_OK(keel_image_loader_next(shard[s], &xs, &ys, &ns));
            assert_int_equal(ns, 4);
            assert_memory_equal(xs, x + 4 * s * sample, 4 * sample * sizeof(float));
            assert_memory_equal(ys, y + 4 * s, 4 * sizeof(int32_t));
        }
        batches++;
    }
    assert_int_equal(batches, TREE_IMAGES / 8);
    keel_image_loader_opts bad = whole_opts;
    bad.shard_count = 2;
    bad.shard_index = 2;
    keel_image_loader *l = NULL;
    assert_int_equal(keel_image_loader_create(&l, d, &bad), KEEL_ERR_INVALID_ARGUMENT);
    bad.shard_index = 1;
    bad.drop_last = false;
    assert_int_equal(keel_image_loader_create(&l, d, &bad), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "drop_last"));
    keel_image_loader_destroy(whole);
    keel_image_loader_destroy(shard[0]);
    keel_image_loader_destroy(shard[1]);
    keel_image_dataset_free(d);
}

/* -log softmax(z)[label] in double. */
static double log_softmax_at(const float *z, int classes, int label)
{
    double most = z[0], sum = 0.0;
    for (int j = 1; j < classes; j++)
        most = z[j] > most ? z[j] : most;
    for (int j = 0; j < classes; j++)
        sum += exp((double)z[j] - most);
    return (double)z[label] - most - log(sum);
}

/* Cuts the ten views of image `index` into rows [10 * slot, 10 * slot + 10). */
static void cut_ten_views(keel_image_dataset *d, int index, const keel_augment_opts *ten, float *rows, int slot)
{
    size_t view = 3 * (size_t)ten->crop_size * ten->crop_size;
    keel_image img = {0};
    KS_OK(keel_image_dataset_read(d, index, &img));
    for (int v = 0; v < 10; v++) {
        keel_crop c;
        KS_OK(keel_augment_crop(ten, img.height, img.width, 0, v, &c));
        KS_OK(keel_augment_apply(ten, &img, &c, rows + (size_t)(slot * 10 + v) * view));
    }
    keel_image_release(&img);
}

/* Ten-crop evaluation against a computation by hand: each image's ten views
 * cut with keel_augment_crop / keel_augment_apply, run through the plan at
 * the rows the evaluator uses (batch 25: two images a pass, five rows of
 * padding), softmax averaged in double, ranked, and the loss taken of the
 * averaged probability. */
static void test_ten_crop_evaluation(void **state)
{
    (void)state;
    need_tree();
    const int images = 5, classes = TREE_CLASSES, batch = 25, crop = 32;
    char list[320];
    FILE *f = fopen(tmp_path("five.txt", list, sizeof list), "w");
    assert_non_null(f);
    const char *files[5] = {"tree/red/00.png", "tree/green/03.png", "tree/blue/07.png", "tree/red/11.png",
                            "tree/blue/01.png"};
    const int labels[5] = {0, 1, 2, 0, 2};
    for (int i = 0; i < images; i++)
        fprintf(f, "%s %d\n", files[i], labels[i]);
    fclose(f);
    keel_image_dataset *d = open_images("five.txt", 40);
    keel_context *ctx = ks_context();
    keel_graph *g = keel_graph_new();
    keel_model_opts mo = {.batch = batch, .classes = classes, .in_channels = 3, .height = crop, .width = crop};
    keel_model_io io;
    KS_OK(build_two_conv(g, &mo, &io, NULL));
    keel_graph_keep(g, io.logits);
    keel_plan *plan = ks_compile(g, ctx, 5);
    /* Large weights, so that the views disagree and averaging matters. */
    free(ks_param_random(plan, "conv1.weight", 8 * 3 * 3 * 3, 21, -0.5f, 0.5f));
    free(ks_param_random(plan, "conv2.weight", 12 * 8 * 3 * 3, 22, -0.3f, 0.3f));
    free(ks_param_random(plan, "fc.weight", 3 * 12, 27, -1.0f, 1.0f));

    keel_augment_opts ten = keel_augment_defaults(KEEL_CROP_TEN);
    ten.crop_size = crop;
    keel_eval_result got;
    KS_OK(keel_evaluate_images(plan, &io, d, &ten, 2, &got));

    size_t view = 3 * (size_t)crop * crop;
    float *rows = malloc((size_t)batch * view * sizeof *rows), *logits = malloc((size_t)batch * classes * sizeof *logits);
    int32_t *row_labels = calloc((size_t)batch, sizeof *row_labels);
    assert_non_null(rows);
    assert_non_null(logits);
    assert_non_null(row_labels);
    double loss = 0.0, mean_view_loss = 0.0;
    int top1_errors = 0;
    for (int first = 0; first < images; first += 2) {
        memset(rows, 0, (size_t)batch * view * sizeof *rows);
        int in_pass = first + 1 < images ? 2 : 1;
        for (int slot = 0; slot < in_pass; slot++)
            cut_ten_views(d, first + slot, &ten, rows, slot);
        KS_OK(keel_plan_set_input(plan, io.images, rows));
        KS_OK(keel_plan_set_input(plan, io.labels, row_labels));
        KS_OK(keel_plan_forward(plan, false));
        KS_OK(keel_plan_read(plan, io.logits, logits));
        for (int slot = 0; slot < in_pass; slot++) {
            int label = labels[first + slot];
            double probs[TREE_CLASSES] = {0}, view_loss = 0.0;
            for (int v = 0; v < 10; v++) {
                const float *z = logits + (size_t)(slot * 10 + v) * classes;
                for (int c = 0; c < classes; c++)
                    probs[c] += exp(log_softmax_at(z, classes, c)) / 10.0;
                view_loss -= log_softmax_at(z, classes, label) / 10.0;
            }
            int rank = 0;
            for (int c = 0; c < classes; c++)
                rank += probs[c] > probs[label] || (probs[c] == probs[label] && c < label);
            top1_errors += rank > 0;
            loss -= log(probs[label]);
            mean_view_loss += view_loss;
        }
    }
    loss /= images;
    mean_view_loss /= images;
    printf("ten-crop: loss %.12f (by hand %.12f; the mean of the views' own losses would be %.12f), top-1 %.3f "
           "(by hand %.3f)\n", got.loss, loss, mean_view_loss, got.top1, 1.0 - (double)top1_errors / images);
    assert_int_equal(got.samples, images);
    assert_true(got.has_top5);
    assert_true(fabs(got.loss - loss) <= 1e-9 * fabs(loss));
    assert_true(fabs(got.top1 - (1.0 - (double)top1_errors / images)) < 1e-12);
    assert_true(fabs(mean_view_loss - loss) > 1e-3); /* so averaging is what was checked */

    /* A batch too small for ten views is refused. */
    keel_graph *small = keel_graph_new();
    mo.batch = 8;
    keel_model_io small_io;
    KS_OK(build_two_conv(small, &mo, &small_io, NULL));
    keel_graph_keep(small, small_io.logits);
    keel_plan *small_plan = ks_compile(small, ctx, 5);
    assert_int_equal(keel_evaluate_images(small_plan, &small_io, d, &ten, 0, &got), KEEL_ERR_INVALID_ARGUMENT);
    printf("batch 8, ten crops: %s\n", keel_last_error());
    assert_non_null(strstr(keel_last_error(), "at least 10"));
    keel_plan_destroy(small_plan);
    keel_graph_free(small);

    free(rows);
    free(logits);
    free(row_labels);
    keel_plan_destroy(plan);
    keel_graph_free(g);
    keel_context_destroy(ctx);
    keel_image_dataset_free(d);
}

static void test_image_trainer_bad_opts(void **state)
{
    (void)state;
    need_tree();
    keel_context *ctx = ks_context();
    keel_image_dataset *d = open_images("tree", 40);
    keel_dataset *memory = synthetic_dataset(20, 8);
    keel_trainer *t = NULL;
    keel_trainer_opts o = image_trainer_opts(d, d, 0);
    o.train = memory;
    assert_int_equal(keel_trainer_create(&t, ctx, &o), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "exactly one training set"));
    o = image_trainer_opts(d, d, 0);
    o.test_augment.crop_size = 24;
    assert_int_equal(keel_trainer_create(&t, ctx, &o), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "test crop (24) differs from the training crop (32)"));
    o = image_trainer_opts(d, d, 0);
    o.train_augment.mode = KEEL_CROP_TEN;
    assert_int_equal(keel_trainer_create(&t, ctx, &o), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "ten-crop views are for evaluation"));
    o = image_trainer_opts(d, d, 0);
    o.test_augment.mode = KEEL_CROP_TEN; /* 10 views in a batch of 6 */
    assert_int_not_equal(keel_trainer_create(&t, ctx, &o), KEEL_OK);
    assert_non_null(strstr(keel_last_error(), "batch of at least 10"));
    assert_null(t);
    /* Zero-initialised augmentation: random-resized and centre 224 crops. */
    o = image_trainer_opts(d, NULL, 0);
    memset(&o.train_augment, 0, sizeof o.train_augment);
    memset(&o.test_augment, 0, sizeof o.test_augment);
    o.batch = 2;
    KS_OK(keel_trainer_create(&t, ctx, &o));
    char text[2048];
    keel_trainer_describe(t, text, sizeof text);
    printf("%s\n", text);
    assert_non_null(strstr(text, "input 3x224x224"));
    assert_non_null(strstr(text, "random-resized crop 224 (area 0.08-1, ratio 0.75-1.33), mirrored"));
    keel_trainer_destroy(t);
    keel_dataset_free(memory);
    keel_image_dataset_free(d);
    keel_context_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sgd_plain),
        cmocka_unit_test(test_sgd_momentum_weight_decay),
        cmocka_unit_test(test_sgd_nesterov),
        cmocka_unit_test(test_adam),
        cmocka_unit_test(test_optimizer_bad_opts),
        cmocka_unit_test(test_schedules),
        cmocka_unit_test(test_evaluate_pads_last_batch),
        cmocka_unit_test(test_learns_fashion_mnist_subset),
        cmocka_unit_test(test_resume_sgd_bitwise),
        cmocka_unit_test(test_resume_adam_bitwise),
        cmocka_unit_test(test_truncated_and_corrupt_checkpoint),
        cmocka_unit_test(test_mismatched_checkpoint),
        cmocka_unit_test(test_weights_round_trip),
        cmocka_unit_test(test_trainer_bad_opts),
        cmocka_unit_test(test_evaluate_inside_progress_callback),
        cmocka_unit_test(test_data_parallel_local_rank),
        cmocka_unit_test(test_images_learn),
        cmocka_unit_test(test_images_packed_equals_folder),
        cmocka_unit_test(test_images_resume_bitwise),
        cmocka_unit_test(test_image_loader_shards),
        cmocka_unit_test(test_ten_crop_evaluation),
        cmocka_unit_test(test_image_trainer_bad_opts),
    };
    return cmocka_run_group_tests(tests, setup_group, remove_tmp_dir);
}
