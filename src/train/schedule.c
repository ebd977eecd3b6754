/* Learning-rate schedules: constant, step decay and cosine annealing, each
 * with an optional linear warm-up (the formulas are in keel/train.h). */
#include "train/train_internal.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int64_t warmup_steps(const keel_schedule *s, int64_t steps_per_epoch)
{
    if (!(s->warmup_epochs > 0.0f))
        return 0;
    int64_t w = (int64_t)llround((double)s->warmup_epochs * (double)steps_per_epoch);
    return w > 0 ? w : 1;
}

float keel_schedule_lr(const keel_schedule *s, float base_lr, int64_t step, int64_t steps_per_epoch,
                       int64_t total_steps)
{
    if (steps_per_epoch < 1)
        steps_per_epoch = 1;
    if (step < 0)
        step = 0;
    int64_t warm = warmup_steps(s, steps_per_epoch);
    if (step < warm)
        return (float)((double)base_lr * (double)(step + 1) / (double)warm);
    switch (s->kind) {
    case KEEL_SCHEDULE_STEP: {
        int every = s->step_epochs > 0 ? s->step_epochs : 1;
        int64_t decays = step / steps_per_epoch / every;
        return (float)((double)base_lr * pow((double)s->gamma, (double)decays));
    }
    case KEEL_SCHEDULE_COSINE: {
        int64_t span = total_steps - warm;
        double progress = span > 0 ? (double)(step - warm) / (double)span : 1.0;
        if (progress > 1.0)
            progress = 1.0;
        double lo = s->min_lr;
        return (float)(lo + ((double)base_lr - lo) * (1.0 + cos(M_PI * progress)) / 2.0);
    }
    case KEEL_SCHEDULE_CONSTANT:
    default:
        return base_lr;
    }
}

/* Parses a whole decimal number or fails naming `what`. */
static bool parse_double(const char *text, double *out)
{
    char *end = NULL;
    *out = strtod(text, &end);
    return end != text && *end == '\0' && isfinite(*out);
}

keel_status keel_schedule_parse(const char *text, keel_schedule *s)
{
    if (!text || !s)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_schedule_parse: text and schedule are required");
    keel_schedule parsed = {.warmup_epochs = s->warmup_epochs, .gamma = 0.1f, .step_epochs = 3};
    char buf[128];
    snprintf(buf, sizeof buf, "%s", text);
    char *fields[4] = {buf};
    int n = 1;
    for (char *c = buf; *c && n < 4; c++)
        if (*c == ':') {
            *c = '\0';
            fields[n++] = c + 1;
        }
    const char *usage = "use constant, step[:EPOCHS[:GAMMA]] or cosine[:MIN_LR]";
    double v;
    if (strcmp(fields[0], "constant") == 0 && n == 1) {
        parsed.kind = KEEL_SCHEDULE_CONSTANT;
    } else if (strcmp(fields[0], "step") == 0 && n <= 3) {
        parsed.kind = KEEL_SCHEDULE_STEP;
        if (n >= 2) {
            if (!parse_double(fields[1], &v) || v < 1 || v != floor(v) || v > 1e6)
                return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "schedule '%s': the step must be a whole number of "
                                 "epochs >= 1", text);
            parsed.step_epochs = (int)v;
        }
        if (n >= 3) {
            if (!parse_double(fields[2], &v) || !(v > 0) || v > 1)
                return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "schedule '%s': gamma must lie in (0, 1]", text);
            parsed.gamma = (float)v;
        }
    } else if (strcmp(fields[0], "cosine") == 0 && n <= 2) {
        parsed.kind = KEEL_SCHEDULE_COSINE;
        if (n == 2) {
            if (!parse_double(fields[1], &v) || v < 0)
                return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "schedule '%s': the final rate must be >= 0", text);
            parsed.min_lr = (float)v;
        }
    } else {
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "unknown schedule '%s'; %s", text, usage);
    }
    *s = parsed;
    return KEEL_OK;
}

static const char *plural(double n) { return n == 1.0 ? "" : "s"; }

const char *keel_schedule_describe(const keel_schedule *s, float base_lr, int64_t steps_per_epoch,
                                   int64_t total_steps, char *buf, size_t size)
{
    if (steps_per_epoch < 1)
        steps_per_epoch = 1;
    double epochs = (double)total_steps / (double)steps_per_epoch;
    size_t used = 0;
    int n;
    switch (s->kind) {
    case KEEL_SCHEDULE_STEP:
        n = snprintf(buf, size, "step: %g, multiplied by %g every %d epoch%s (%lld steps)", (double)base_lr,
                     (double)s->gamma, s->step_epochs, plural(s->step_epochs),
                     (long long)(s->step_epochs * steps_per_epoch));
        break;
    case KEEL_SCHEDULE_COSINE:
        n = snprintf(buf, size, "cosine from %g to %g over %lld steps (%g epoch%s of %lld)", (double)base_lr,
                     (double)s->min_lr, (long long)total_steps, epochs, plural(epochs), (long long)steps_per_epoch);
        break;
    case KEEL_SCHEDULE_CONSTANT:
    default:
        n = snprintf(buf, size, "constant %g", (double)base_lr);
        break;
    }
    used = n > 0 ? (size_t)n : 0;
    int64_t warm = warmup_steps(s, steps_per_epoch);
    if (warm > 0 && used < size)
        snprintf(buf + used, size - used, ", after a linear warm-up from %g over %lld steps (%g epoch%s)",
                 (double)keel_schedule_lr(s, base_lr, 0, steps_per_epoch, total_steps), (long long)warm,
                 (double)s->warmup_epochs, plural(s->warmup_epochs));
    return buf;
}
