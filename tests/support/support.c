#include "support.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void ks_fill_uniform(float *x, int64_t n, uint64_t seed, float lo, float hi)
{
    uint64_t s = seed * 7919 + 17;
    for (int64_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * (float)((splitmix(&s) >> 40) * (1.0 / 16777216.0));
}

void ks_to_double(const float *x, double *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i];
}

double ks_check(const char *what, const float *got, const double *want, int64_t n, double floor, double tol)
{
    double worst = 0.0;
    int64_t worst_i = 0;
    for (int64_t i = 0; i < n; i++) {
        double scale = fabs(want[i]) > floor ? fabs(want[i]) : floor;
        double err = fabs((double)got[i] - want[i]) / scale;
        if (!(err <= worst)) { /* catches NaN too */
            worst = isnan(err) ? INFINITY : err;
            worst_i = i;
        }
    }
    printf("ERR %s: max_rel=%.3g (tol %.1g, n=%lld)\n", what, worst, tol, (long long)n);
    if (!(worst <= tol))
        fail_msg("%s: element %lld is %.9g, want %.9g (error %.3g > %.1g)", what, (long long)worst_i,
                 (double)got[worst_i], want[worst_i], worst, tol);
    return worst;
}

void ks_numeric_grad(ks_scalar_fn f, void *user, double *x, int64_t n, double h, double *grad)
{
    for (int64_t i = 0; i < n; i++) {
        double keep = x[i];
        x[i] = keep + h;
        double up = f(x, user);
        x[i] = keep - h;
        double down = f(x, user);
        x[i] = keep;
        grad[i] = (up - down) / (2.0 * h);
    }
}

static void quiet_log(keel_log_level level, const char *message, void *user)
{
    (void)user;
    if (level <= KEEL_LOG_WARN)
        fprintf(stderr, "%s\n", message);
}

keel_context *ks_context(void)
{
    keel_context_opts opts = {.threads = 2, .log = quiet_log, .log_level = KEEL_LOG_WARN};
    keel_context *ctx = NULL;
    KS_OK(keel_context_create(&ctx, &opts));
    return ctx;
}

void ks_graph_ok(keel_graph *g)
{
    if (keel_graph_status(g) != KEEL_OK)
        fail_msg("graph failed: %s", keel_graph_error(g));
}

keel_plan *ks_compile(keel_graph *g, keel_context *ctx, uint64_t seed)
{
    ks_graph_ok(g);
    const char *devices = getenv("KEEL_TEST_DEVICES");
    keel_plan_opts opts = {.devices = devices ? devices : "cpu", .seed = seed, .poison_dead = true,
                           .strict_fp32 = true};
    keel_plan *plan = NULL;
    KS_OK(keel_plan_compile(&plan, g, ctx, &opts));
    return plan;
}

float *ks_param_random(keel_plan *plan, const char *name, int64_t n, uint64_t seed, float lo, float hi)
{
    float *v = malloc((size_t)n * sizeof *v);
    assert_non_null(v);
    ks_fill_uniform(v, n, seed, lo, hi);
    KS_OK(keel_plan_param_set(plan, name, v, n));
    return v;
}

bool ks_write_colour_tree(const char *root, int per_class, int height, int width)
{
    static const char *const names[3] = {"red", "green", "blue"};
    size_t values = (size_t)height * width * 3;
    uint8_t *pixels = malloc(values);
    float *noise = malloc(values * sizeof *noise);
    char path[4096];
    assert_non_null(pixels);
    assert_non_null(noise);
    assert_int_equal(mkdir(root, 0777), 0);
    bool written = true;
    for (int c = 0; c < 3 && written; c++) {
        snprintf(path, sizeof path, "%s/%s", root, names[c]);
        assert_int_equal(mkdir(path, 0777), 0);
        for (int i = 0; i < per_class; i++) {
            ks_fill_uniform(noise, (int64_t)values, (uint64_t)(100 * c + i + 1), 0.0f, 1.0f);
            for (size_t k = 0; k < values; k++)
                pixels[k] = (uint8_t)((int)(k % 3) == c ? 130.0f + 125.0f * noise[k] : 110.0f * noise[k]);
            keel_image img = {.height = height, .width = width, .channels = 3, .pixels = pixels};
            snprintf(path, sizeof path, "%s/%s/%02d.png", root, names[c], i);
            keel_status st = keel_image_save(&img, path, 95);
            if (st == KEEL_ERR_UNSUPPORTED) {
                written = false;
                break;
            }
            KS_OK(st);
        }
    }
    free(pixels);
    free(noise);
    return written;
}
