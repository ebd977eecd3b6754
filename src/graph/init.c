/* Parameter initialisers. A parameter's values depend only on the plan seed
 * and the parameter's name, so adding a layer never changes the others. */
#include "graph/plan_internal.h"
#include <math.h>

/* fan_in and fan_out as PyTorch computes them: {out, in, kh, kw} gives
 * in*kh*kw and out*kh*kw; {out, in} gives in and out; a vector its length. */
static void fans(const keel_node *p, double *fan_in, double *fan_out)
{
    if (p->ndim < 2) {
        *fan_in = *fan_out = (double)(p->ndim ? p->shape[0] : 1);
        return;
    }
    double receptive = 1.0;
    for (int i = 2; i < p->ndim; i++)
        receptive *= (double)p->shape[i];
    *fan_in = (double)p->shape[1] * receptive;
    *fan_out = (double)p->shape[0] * receptive;
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

keel_status keel_param_init(const keel_node *p, float *dst, uint64_t seed)
{
    keel_rng rng;
    keel_rng_init(&rng, seed ^ name_hash(p->name));
    int64_t n = keel_node_numel(p);
    keel_init init = p->init;
    double fan_in, fan_out;
    fans(p, &fan_in, &fan_out);
    double gain = init.gain > 0.0f ? init.gain : 1.0;
    switch (init.kind) {
    case KEEL_INIT_CONSTANT:
        for (int64_t i = 0; i < n; i++)
            dst[i] = init.value;
        break;
    case KEEL_INIT_GAUSSIAN:
        for (int64_t i = 0; i < n; i++)
            dst[i] = init.mean + init.std * keel_rng_normal(&rng);
        break;
    case KEEL_INIT_UNIFORM:
        for (int64_t i = 0; i < n; i++)
            dst[i] = init.low + (init.high - init.low) * keel_rng_uniform(&rng);
        break;
    case KEEL_INIT_XAVIER: {
        float a = (float)(gain * sqrt(6.0 / (fan_in + fan_out)));
        for (int64_t i = 0; i < n; i++)
            dst[i] = -a + 2.0f * a * keel_rng_uniform(&rng);
        break;
    }
    case KEEL_INIT_KAIMING: {
        float std = (float)(gain * sqrt(2.0 / fan_in));
        for (int64_t i = 0; i < n; i++)
            dst[i] = std * keel_rng_normal(&rng);
        break;
    }
    case KEEL_INIT_DEFAULT:
    case KEEL_INIT_KAIMING_UNIFORM: {
        float a = (float)(1.0 / sqrt(fan_in));
        for (int64_t i = 0; i < n; i++)
            dst[i] = -a + 2.0f * a * keel_rng_uniform(&rng);
        break;
    }
    default:
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "parameter '%s': unknown initialiser %d", p->name, (int)init.kind);
    }
    return KEEL_OK;
}
