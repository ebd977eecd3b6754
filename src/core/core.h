/* Internal helpers shared by every part of libkeel: error text, allocation,
 * the random number generator. */
#ifndef KEEL_CORE_H
#define KEEL_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include "keel/status.h"
#include "keel/tensor.h"

#if defined(__GNUC__)
#define KEEL_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KEEL_PRINTF(f, a)
#endif

/* Records a message as this thread's last error and returns `status`, so a
 * failing function can `return keel_fail(KEEL_ERR_IO, "...: %s", path);`. */
keel_status keel_fail(keel_status status, const char *fmt, ...) KEEL_PRINTF(2, 3);
/* Prefixes context to the last error ("loading model.npy: ") and returns status. */
keel_status keel_fail_prefix(keel_status status, const char *fmt, ...) KEEL_PRINTF(2, 3);

/* 64-byte aligned allocations (AVX-512 lines); NULL on failure. */
void *keel_aligned_alloc(size_t bytes);
void keel_aligned_free(void *p);

char *keel_strdup(const char *s);

/* Formats a shape as "2x3x32x32" into buf (at least 96 bytes). */
const char *keel_shape_str(char *buf, size_t size, int ndim, const int64_t *shape);
int64_t keel_shape_numel(int ndim, const int64_t *shape);

/* ---- random numbers -------------------------------------------------------
 * A counter-based generator: every draw is a pure function of (seed, stream,
 * index), so results do not depend on thread count or schedule, and the CUDA
 * kernels compute the same numbers (see ops/math.h for the hash). */
typedef struct keel_rng {
    uint64_t seed;
    uint64_t counter;
} keel_rng;

void keel_rng_init(keel_rng *rng, uint64_t seed);
uint64_t keel_rng_next_u64(keel_rng *rng);
/* Uniform in [0, 1). */
float keel_rng_uniform(keel_rng *rng);
/* Standard normal (Box-Muller). */
float keel_rng_normal(keel_rng *rng);
/* Uniform integer in [0, n). */
uint64_t keel_rng_below(keel_rng *rng, uint64_t n);

#endif
