/* Shared helpers for the CMocka tests: random data, float64 references,
 * finite differences, and comparing with a stated error bound. */
#ifndef KEEL_TEST_SUPPORT_H
#define KEEL_TEST_SUPPORT_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <cmocka.h>
#include "keel/keel.h"

/* Asserts a keel call succeeded, printing keel_last_error() if not. */
#define KS_OK(call)                                                                               \
    do {                                                                                          \
        keel_status ks_status_ = (call);                                                          \
        if (ks_status_ != KEEL_OK)                                                                \
            fail_msg("%s failed: %s: %s", #call, keel_status_string(ks_status_), keel_last_error()); \
    } while (0)

/* Uniform values in [lo, hi) from a seeded generator; never all zeros. */
void ks_fill_uniform(float *x, int64_t n, uint64_t seed, float lo, float hi);
void ks_to_double(const float *x, double *out, int64_t n);

/* Compares got against a float64 reference. The error of each element is
 * |got - want| / max(|want|, floor); the test fails when the worst exceeds
 * tol. Prints one line "ERR <what>: max_rel=... (tol ...)" that the issue
 * notes quote, and returns the worst error. */
double ks_check(const char *what, const float *got, const double *want, int64_t n, double floor, double tol);

/* Central finite differences of a scalar float64 function:
 * grad[i] = (f(x + h e_i) - f(x - h e_i)) / 2h. x is restored. */
typedef double (*ks_scalar_fn)(const double *x, void *user);
void ks_numeric_grad(ks_scalar_fn f, void *user, double *x, int64_t n, double h, double *grad);

/* A context with 2 threads and quiet logging, and a plan compiled with
 * poison_dead on (freed buffers become NaN, so aliasing shows up). The
 * device list comes from KEEL_TEST_DEVICES when set (default "cpu"). */
keel_context *ks_context(void);
keel_plan *ks_compile(keel_graph *g, keel_context *ctx, uint64_t seed);
/* Ends a test when the graph failed, printing its error. */
void ks_graph_ok(keel_graph *g);

/* Sets a parameter from a float64-friendly random vector and returns the
 * values it set (caller frees). */
float *ks_param_random(keel_plan *plan, const char *name, int64_t n, uint64_t seed, float lo, float hi);

/* An image folder in ImageNet's layout: ROOT/red, ROOT/green, ROOT/blue,
 * each with `per_class` PNGs NN.png of height x width whose class's colour
 * channel is raised over seeded noise, so a small network can learn it.
 * False when this libkeel cannot write PNGs (built without libpng). */
bool ks_write_colour_tree(const char *root, int per_class, int height, int width);

#endif
