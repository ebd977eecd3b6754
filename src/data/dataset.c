/* Datasets in memory: byte pixels, int32 labels, per-channel normalisation
 * and statistics. */
#include "data/data_internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void fill_plain_table(keel_dataset *d)
{
    for (int c = 0; c < d->channels; c++)
        for (int v = 0; v < 256; v++)
            d->table[c * 256 + v] = (float)v / 255.0f;
}

keel_status keel_dataset_alloc(keel_dataset **out, int64_t count, int channels, int height, int width, int classes,
                               uint8_t *pixels)
{
    *out = NULL;
    if (count <= 0 || channels <= 0 || height <= 0 || width <= 0 || classes <= 0 ||
        (int64_t)channels * height * width > ((int64_t)1 << 40) / count) {
        free(pixels);
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT,
                         "a dataset needs positive sizes, got %lld samples of %dx%dx%d in %d classes", (long long)count,
                         channels, height, width, classes);
    }
    keel_dataset *d = calloc(1, sizeof *d);
    size_t pixel_bytes = (size_t)count * (size_t)channels * (size_t)height * (size_t)width;
    if (d) {
        d->count = count;
        d->channels = channels;
        d->height = height;
        d->width = width;
        d->classes = classes;
        d->pixels = pixels ? pixels : malloc(pixel_bytes);
        d->labels = malloc((size_t)count * sizeof *d->labels);
        d->table = malloc((size_t)channels * 256 * sizeof *d->table);
    } else {
        free(pixels);
    }
    if (!d || !d->pixels || !d->labels || !d->table) {
        keel_dataset_free(d);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a dataset of %lld samples (%zu bytes of pixels)",
                         (long long)count, pixel_bytes);
    }
    fill_plain_table(d);
    *out = d;
    return KEEL_OK;
}

void keel_dataset_free(keel_dataset *d)
{
    if (!d)
        return;
    free(d->pixels);
    free(d->labels);
    free(d->table);
    free(d);
}

keel_status keel_dataset_check_labels(const keel_dataset *d, const char *source)
{
    for (int64_t i = 0; i < d->count; i++)
        if (d->labels[i] < 0 || d->labels[i] >= d->classes)
            return keel_fail(KEEL_ERR_FORMAT, "%s: label %d of sample %lld is outside [0, %d)", source, (int)d->labels[i],
                             (long long)i, d->classes);
    return KEEL_OK;
}

keel_status keel_dataset_from_u8(keel_dataset **out, int64_t count, int channels, int height, int width, int classes,
                                 const uint8_t *pixels, const int32_t *labels)
{
    if (!out || !pixels || !labels)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_dataset_from_u8: out, pixels and labels must not be NULL");
    keel_dataset *d;
    keel_status st = keel_dataset_alloc(&d, count, channels, height, width, classes, NULL);
    if (st != KEEL_OK)
        return st;
    memcpy(d->pixels, pixels, (size_t)(count * keel_dataset_image_bytes(d)));
    memcpy(d->labels, labels, (size_t)count * sizeof *labels);
    st = keel_dataset_check_labels(d, "keel_dataset_from_u8");
    if (st != KEEL_OK) {
        keel_dataset_free(d);
        return st;
    }
    *out = d;
    return KEEL_OK;
}

int64_t keel_dataset_size(const keel_dataset *d)
{
    return d ? d->count : 0;
}

void keel_dataset_image_shape(const keel_dataset *d, int *channels, int *height, int *width)
{
    if (channels)
        *channels = d->channels;
    if (height)
        *height = d->height;
    if (width)
        *width = d->width;
}

int keel_dataset_classes(const keel_dataset *d)
{
    return d->classes;
}

keel_status keel_dataset_truncate(keel_dataset *d, int64_t count)
{
    if (!d || count <= 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "a dataset subset needs at least 1 sample, got %lld",
                         (long long)count);
    if (count < d->count)
        d->count = count;
    return KEEL_OK;
}

/* Exact per-channel histograms of the bytes; the moments then come from 256
 * values per channel in float64, independent of the dataset size. */
keel_status keel_dataset_channel_stats(const keel_dataset *d, float *mean, float *std)
{
    if (!d || !mean || !std)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_dataset_channel_stats: dataset, mean and std must not be NULL");
    uint64_t *histogram = calloc((size_t)d->channels * 256, sizeof *histogram);
    if (!histogram)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate channel histograms");
    int64_t plane = (int64_t)d->height * d->width;
    for (int64_t i = 0; i < d->count; i++) {
        const uint8_t *image = d->pixels + i * keel_dataset_image_bytes(d);
        for (int c = 0; c < d->channels; c++) {
            uint64_t *h = histogram + c * 256;
            const uint8_t *p = image + c * plane;
            for (int64_t k = 0; k < plane; k++)
                h[p[k]]++;
        }
    }
    double n = (double)d->count * (double)plane;
    for (int c = 0; c < d->channels; c++) {
        const uint64_t *h = histogram + c * 256;
        double sum = 0.0;
        for (int v = 0; v < 256; v++)
            sum += (double)h[v] * (v / 255.0);
        double m = sum / n, sq = 0.0;
        for (int v = 0; v < 256; v++)
            sq += (double)h[v] * (v / 255.0 - m) * (v / 255.0 - m);
        mean[c] = (float)m;
        std[c] = (float)sqrt(sq / n);
    }
    free(histogram);
    return KEEL_OK;
}

keel_status keel_dataset_set_normalization(keel_dataset *d, const float *mean, const float *std)
{
    if (!d)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_dataset_set_normalization: dataset must not be NULL");
    if (!mean || !std) {
        fill_plain_table(d);
        return KEEL_OK;
    }
    for (int c = 0; c < d->channels; c++)
        if (!(std[c] > 0.0f) || !isfinite(std[c]) || !isfinite(mean[c]))
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT,
                             "normalisation of channel %d needs a finite mean and a positive std, got %g and %g", c,
                             (double)mean[c], (double)std[c]);
    for (int c = 0; c < d->channels; c++)
        for (int v = 0; v < 256; v++)
            d->table[c * 256 + v] = (float)((v / 255.0 - mean[c]) / std[c]);
    return KEEL_OK;
}

void keel_dataset_decode(const keel_dataset *d, int64_t index, float *image)
{
    int64_t plane = (int64_t)d->height * d->width;
    const uint8_t *src = d->pixels + index * keel_dataset_image_bytes(d);
    for (int c = 0; c < d->channels; c++) {
        const float *table = d->table + c * 256;
        for (int64_t k = 0; k < plane; k++)
            image[c * plane + k] = table[src[c * plane + k]];
    }
}

keel_status keel_dataset_get(const keel_dataset *d, int64_t index, float *image, int32_t *label)
{
    if (!d || index < 0 || index >= d->count)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "sample %lld is outside the dataset of %lld samples",
                         (long long)index, (long long)(d ? d->count : 0));
    if (image)
        keel_dataset_decode(d, index, image);
    if (label)
        *label = d->labels[index];
    return KEEL_OK;
}
