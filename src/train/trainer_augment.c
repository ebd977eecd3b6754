/* The image augmentation a trainer's loaders apply: the options as given,
 * with the documented defaults filled in and checked, and the words that
 * describe them. */
#include "train/trainer_internal.h"
#include "data/image_internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool all_zero(const float *v, int n)
{
    for (int i = 0; i < n; i++)
        if (v[i] != 0.0f)
            return false;
    return true;
}

static bool augment_unset(const keel_augment_opts *o)
{
    return o->mode == 0 && o->crop_size == 0 && !o->mirror && o->scale_min == 0.0f && o->scale_max == 0.0f &&
           o->ratio_min == 0.0f && o->ratio_max == 0.0f && all_zero(o->mean, 3) && all_zero(o->std, 3) &&
           !o->mean_image && o->lighting_std == 0.0f;
}

/* The options as documented in train.h: all zero means the mode's
 * defaults; otherwise fields left 0 take them. */
static keel_augment_opts resolve_augment(const keel_augment_opts *given, keel_crop_mode fallback)
{
    if (augment_unset(given))
        return keel_augment_defaults(fallback);
    keel_augment_opts base = keel_augment_defaults(given->mode), o = *given;
    if (o.crop_size == 0)
        o.crop_size = base.crop_size;
    if (o.scale_min == 0.0f && o.scale_max == 0.0f) {
        o.scale_min = base.scale_min;
        o.scale_max = base.scale_max;
    }
    if (o.ratio_min == 0.0f && o.ratio_max == 0.0f) {
        o.ratio_min = base.ratio_min;
        o.ratio_max = base.ratio_max;
    }
    if (all_zero(o.std, 3)) {
        if (all_zero(o.mean, 3))
            memcpy(o.mean, base.mean, sizeof o.mean);
        memcpy(o.std, base.std, sizeof o.std);
    }
    return o;
}

static keel_status copy_mean_image(keel_augment_opts *o, float **copy)
{
    if (!o->mean_image)
        return KEEL_OK;
    size_t floats = 3 * (size_t)o->crop_size * (size_t)o->crop_size;
    *copy = malloc(floats * sizeof **copy);
    if (!*copy)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory copying the mean image");
    memcpy(*copy, o->mean_image, floats * sizeof **copy);
    o->mean_image = *copy;
    return KEEL_OK;
}

keel_status keel_trainer_set_augment(keel_trainer *t)
{
    t->train_augment = resolve_augment(&t->opts.train_augment, KEEL_CROP_RANDOM_RESIZED);
    t->test_augment = resolve_augment(&t->opts.test_augment, KEEL_CROP_CENTER);
    if (t->train_augment.mode == KEEL_CROP_TEN)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "ten-crop views are for evaluation; train with a random, "
                         "random-resized or centre crop");
    keel_status st = keel_augment_check(&t->train_augment);
    if (st == KEEL_OK)
        st = keel_augment_check(&t->test_augment);
    if (st != KEEL_OK)
        return keel_fail_prefix(st, "image augmentation: ");
    if (t->test_augment.crop_size != t->train_augment.crop_size)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the test crop (%d) differs from the training crop (%d), but the "
                         "model takes one input size", t->test_augment.crop_size, t->train_augment.crop_size);
    st = copy_mean_image(&t->train_augment, &t->train_mean_image);
    if (st == KEEL_OK)
        st = copy_mean_image(&t->test_augment, &t->test_mean_image);
    return st;
}

static const char *crop_mode_text(keel_crop_mode mode)
{
    switch (mode) {
    case KEEL_CROP_RANDOM: return "random crop";
    case KEEL_CROP_RANDOM_RESIZED: return "random-resized crop";
    case KEEL_CROP_CENTER: return "centre crop";
    case KEEL_CROP_TEN: return "ten crops";
    }
    return "crop";
}

const char *keel_trainer_augment_text(const keel_augment_opts *o, char *buf, size_t size)
{
    int used = snprintf(buf, size, "%s %d", crop_mode_text(o->mode), o->crop_size);
    if (o->mode == KEEL_CROP_RANDOM_RESIZED && used > 0 && (size_t)used < size)
        used += snprintf(buf + used, size - (size_t)used, " (area %g-%g, ratio %.3g-%.3g)", (double)o->scale_min,
                         (double)o->scale_max, (double)o->ratio_min, (double)o->ratio_max);
    bool random = o->mode == KEEL_CROP_RANDOM || o->mode == KEEL_CROP_RANDOM_RESIZED;
    if (random && o->mirror && used > 0 && (size_t)used < size)
        used += snprintf(buf + used, size - (size_t)used, ", mirrored");
    if (o->lighting_std > 0.0f && used > 0 && (size_t)used < size)
        snprintf(buf + used, size - (size_t)used, ", PCA lighting %g", (double)o->lighting_std);
    return buf;
}
