/* The host random number generator: a counter hashed by splitmix64, the same
 * hash the kernels use (ops/math.h). */
#include "core/core.h"
#include "ops/math.h"
#include <math.h>

void keel_rng_init(keel_rng *rng, uint64_t seed)
{
    rng->seed = keel_mix64(seed);
    rng->counter = 0;
}

uint64_t keel_rng_next_u64(keel_rng *rng)
{
    return keel_hash64(rng->seed, rng->counter++);
}

float keel_rng_uniform(keel_rng *rng)
{
    return (float)(keel_rng_next_u64(rng) >> 40) * (1.0f / 16777216.0f);
}

float keel_rng_normal(keel_rng *rng)
{
    /* Box-Muller on (0, 1] so the logarithm stays finite. */
    double u1 = ((double)(keel_rng_next_u64(rng) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(keel_rng_next_u64(rng) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t keel_rng_below(keel_rng *rng, uint64_t n)
{
    /* Rejection keeps the draw unbiased for any n. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t r;
    do
        r = keel_rng_next_u64(rng);
    while (r >= limit);
    return r % n;
}
