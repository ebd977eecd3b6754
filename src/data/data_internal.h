/* The dataset structure shared by the readers (idx.c, cifar.c), the sample
 * access in dataset.c and the batch loader (loader.c). */
#ifndef KEEL_DATA_INTERNAL_H
#define KEEL_DATA_INTERNAL_H

#include "core/core.h"
#include "keel/data.h"

/* Images stay as the bytes the files hold, a quarter of their float32 size;
 * a batch converts them through a per-channel table of 256 floats, which
 * applies the [0, 1] scaling and the normalisation in one lookup. */
struct keel_dataset {
    int64_t count;
    int channels, height, width;
    int classes;
    uint8_t *pixels;  /* count x channels x height x width */
    int32_t *labels;  /* count, each in [0, classes) */
    float *table;     /* channels x 256: byte -> normalised value */
};

/* A dataset of `count` samples with uninitialised pixels and labels, and
 * the plain [0, 1] table. `pixels` may be handed over instead of allocated
 * (NULL allocates); the dataset then owns it. */
keel_status keel_dataset_alloc(keel_dataset **out, int64_t count, int channels, int height, int width, int classes,
                               uint8_t *pixels);

/* Fails with KEEL_ERR_FORMAT naming `source` when a label is outside
 * [0, classes). */
keel_status keel_dataset_check_labels(const keel_dataset *d, const char *source);

static inline int64_t keel_dataset_image_bytes(const keel_dataset *d)
{
    return (int64_t)d->channels * d->height * d->width;
}

/* Converts sample `index` into C*H*W normalised floats. */
void keel_dataset_decode(const keel_dataset *d, int64_t index, float *image);

#endif
