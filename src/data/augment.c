/* Augmentation as the papers did it: AlexNet's random crops, mirrors and PCA
 * colour lighting (Krizhevsky et al. 2012, section 4.1), ResNet's
 * random-resized crop (Szegedy et al. 2015, as torchvision implements it),
 * and the centre and ten-crop views for evaluation. A view is chosen first
 * (keel_augment_crop: pure arithmetic on the image size and a seed), then
 * cut out and normalised into CHW floats (keel_augment_apply). */
#include "data/image_internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const float imagenet_eigval[3] = KEEL_IMAGENET_EIGVAL;
static const float imagenet_eigvec[3][3] = KEEL_IMAGENET_EIGVEC;

keel_augment_opts keel_augment_defaults(keel_crop_mode mode)
{
    keel_augment_opts o = {
        .mode = mode,
        .crop_size = 224,
        .mirror = mode == KEEL_CROP_RANDOM || mode == KEEL_CROP_RANDOM_RESIZED,
        .scale_min = 0.08f,
        .scale_max = 1.0f,
        .ratio_min = 3.0f / 4.0f,
        .ratio_max = 4.0f / 3.0f,
        .mean = KEEL_IMAGENET_MEAN,
        .std = KEEL_IMAGENET_STD,
    };
    return o;
}

int keel_augment_views(const keel_augment_opts *opts)
{
    return opts && opts->mode == KEEL_CROP_TEN ? 10 : 1;
}

keel_status keel_augment_check(const keel_augment_opts *o)
{
    if (!o)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "augmentation options must not be NULL");
    if (o->mode < KEEL_CROP_RANDOM || o->mode > KEEL_CROP_TEN)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "unknown crop mode %d", (int)o->mode);
    if (o->crop_size < 1 || o->crop_size > 8192)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the crop size must be in [1, 8192], got %d", o->crop_size);
    for (int c = 0; c < 3; c++) {
        if (!(o->std[c] > 0.0f) || !isfinite(o->std[c]) || !isfinite(o->mean[c]))
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "channel %d: std must be > 0 and mean finite, got mean %g std %g",
                             c, o->mean[c], o->std[c]);
    }
    if (o->mode == KEEL_CROP_RANDOM_RESIZED &&
        !(o->scale_min > 0.0f && o->scale_min <= o->scale_max && o->ratio_min > 0.0f && o->ratio_min <= o->ratio_max))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT,
                         "random-resized crop needs 0 < scale_min <= scale_max and 0 < ratio_min <= ratio_max, got "
                         "scale [%g, %g] ratio [%g, %g]", o->scale_min, o->scale_max, o->ratio_min, o->ratio_max);
    if (!(o->lighting_std >= 0.0f) || !isfinite(o->lighting_std))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "lighting_std must be >= 0, got %g", o->lighting_std);
    return KEEL_OK;
}

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

uint64_t keel_augment_seed(uint64_t seed, int64_t epoch, int64_t index)
{
    return mix(seed ^ mix((uint64_t)epoch ^ mix((uint64_t)index + 0x5EEDull)));
}

/* Python's round(), which torchvision uses: halves go to the even integer. */
static int round_even(double x)
{
    return (int)nearbyint(x);
}

/* torchvision's CenterCrop offset. */
static int centre_offset(int size, int crop)
{
    return round_even((size - crop) / 2.0);
}

static double uniform(keel_rng *rng, double lo, double hi)
{
    return lo + (hi - lo) * keel_rng_uniform(rng);
}

/* torchvision's RandomResizedCrop.get_params. */
static void random_resized_box(const keel_augment_opts *o, int height, int width, keel_rng *rng, keel_crop *crop)
{
    double area = (double)height * width;
    double log_lo = log(o->ratio_min), log_hi = log(o->ratio_max);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target_area = area * uniform(rng, o->scale_min, o->scale_max);
        double aspect = exp(uniform(rng, log_lo, log_hi));
        int w = round_even(sqrt(target_area * aspect));
        int h = round_even(sqrt(target_area / aspect));
        if (w > 0 && w <= width && h > 0 && h <= height) {
            crop->y = (int)keel_rng_below(rng, (uint64_t)(height - h + 1));
            crop->x = (int)keel_rng_below(rng, (uint64_t)(width - w + 1));
            crop->width = w;
            crop->height = h;
            return;
        }
    }
    double in_ratio = (double)width / height;
    int w = width, h = height;
    if (in_ratio < o->ratio_min)
        h = round_even(w / (double)o->ratio_min);
    else if (in_ratio > o->ratio_max)
        w = round_even(h * (double)o->ratio_max);
    crop->width = w > 0 ? w : 1;
    crop->height = h > 0 ? h : 1;
    crop->y = (height - crop->height) / 2;
    crop->x = (width - crop->width) / 2;
}

/* torchvision's FiveCrop positions: corners clockwise from the top-left as
 * TL, TR, BL, BR, then the centre. */
static void five_crop_box(int position, int height, int width, int size, keel_crop *crop)
{
    crop->width = crop->height = size;
    switch (position) {
    case 0: crop->x = 0, crop->y = 0; break;
    case 1: crop->x = width - size, crop->y = 0; break;
    case 2: crop->x = 0, crop->y = height - size; break;
    case 3: crop->x = width - size, crop->y = height - size; break;
    default: crop->x = centre_offset(width, size), crop->y = centre_offset(height, size); break;
    }
}

static void pca_lighting(float sigma, keel_rng *rng, float lighting[3])
{
    float alpha[3];
    for (int j = 0; j < 3; j++)
        alpha[j] = sigma * keel_rng_normal(rng);
    for (int c = 0; c < 3; c++) {
        lighting[c] = 0.0f;
        for (int j = 0; j < 3; j++)
            lighting[c] += imagenet_eigvec[c][j] * alpha[j] * imagenet_eigval[j];
    }
}

keel_status keel_augment_crop(const keel_augment_opts *o, int height, int width, uint64_t seed, int view,
                              keel_crop *crop)
{
    keel_status st = keel_augment_check(o);
    if (st != KEEL_OK)
        return st;
    if (!crop || height <= 0 || width <= 0 || view < 0 || view >= keel_augment_views(o))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_augment_crop: need a crop, a non-empty image and a view in "
                         "[0, %d), got %dx%d view %d", keel_augment_views(o), width, height, view);
    memset(crop, 0, sizeof *crop);
    int size = o->crop_size;
    if (o->mode != KEEL_CROP_RANDOM_RESIZED && (height < size || width < size))
        return keel_fail(KEEL_ERR_SHAPE, "a %dx%d crop does not fit in a %dx%d image (width x height); resize to a "
                         "short side of at least %d", size, size, width, height, size);
    keel_rng rng;
    keel_rng_init(&rng, seed);
    switch (o->mode) {
    case KEEL_CROP_RANDOM:
        crop->width = crop->height = size;
        crop->y = (int)keel_rng_below(&rng, (uint64_t)(height - size + 1));
        crop->x = (int)keel_rng_below(&rng, (uint64_t)(width - size + 1));
        crop->mirror = o->mirror && (keel_rng_next_u64(&rng) >> 63);
        break;
    case KEEL_CROP_RANDOM_RESIZED:
        random_resized_box(o, height, width, &rng, crop);
        crop->mirror = o->mirror && (keel_rng_next_u64(&rng) >> 63);
        break;
    case KEEL_CROP_CENTER:
        five_crop_box(4, height, width, size, crop);
        break;
    case KEEL_CROP_TEN:
        /* Views 5..9 are FiveCrop of the mirrored image, as torchvision's
         * TenCrop: view 5, the mirrored image's top-left, is the top-right
         * corner of the original, mirrored. */
        five_crop_box(view % 5, height, width, size, crop);
        if (view >= 5) {
            crop->x = width - size - crop->x;
            crop->mirror = true;
        }
        break;
    }
    if (o->lighting_std > 0.0f)
        pca_lighting(o->lighting_std, &rng, crop->lighting);
    return KEEL_OK;
}

/* Rows are converted in chunks through a small float buffer: converting the
 * bytes first and de-interleaving floats afterwards is what the compiler
 * vectorises (twice as fast as converting pixel by pixel). */
#define ROW_CHUNK 256

static void bytes_to_floats(const uint8_t *restrict p, int n, float *restrict out)
{
    for (int i = 0; i < n; i++)
        out[i] = (float)p[i];
}

/* A mirrored run: the bytes reversed, so each pixel reads B, G, R. */
static void bytes_to_floats_reversed(const uint8_t *restrict p, int n, float *restrict out)
{
    for (int i = 0; i < n; i++)
        out[i] = (float)p[n - 1 - i];
}

static void deinterleave_rgb(const float *restrict t, int n, const float *scale, const float *bias,
                             float *restrict r, float *restrict g, float *restrict b)
{
    float s0 = scale[0], s1 = scale[1], s2 = scale[2], b0 = bias[0], b1 = bias[1], b2 = bias[2];
    for (int x = 0; x < n; x++) {
        r[x] = t[3 * x] * s0 + b0;
        g[x] = t[3 * x + 1] * s1 + b1;
        b[x] = t[3 * x + 2] * s2 + b2;
    }
}

static void deinterleave_bgr(const float *restrict t, int n, const float *scale, const float *bias,
                             float *restrict r, float *restrict g, float *restrict b)
{
    float s0 = scale[0], s1 = scale[1], s2 = scale[2], b0 = bias[0], b1 = bias[1], b2 = bias[2];
    for (int x = 0; x < n; x++) {
        r[x] = t[3 * x + 2] * s0 + b0;
        g[x] = t[3 * x + 1] * s1 + b1;
        b[x] = t[3 * x] * s2 + b2;
    }
}

/* One source row of `size` pixels into three channel rows:
 * out = pixel * scale[c] + bias[c], read right to left when mirrored. */
static void row_to_planes(const uint8_t *row, int size, bool mirror, const float *scale, const float *bias, float *r,
                          float *g, float *b)
{
    float chunk[3 * ROW_CHUNK];
    for (int x0 = 0; x0 < size; x0 += ROW_CHUNK) {
        int n = size - x0 < ROW_CHUNK ? size - x0 : ROW_CHUNK;
        if (mirror) {
            /* Output pixels x0 .. x0 + n - 1 are source pixels size - 1 - x. */
            bytes_to_floats_reversed(row + 3 * (size_t)(size - x0 - n), 3 * n, chunk);
            deinterleave_bgr(chunk, n, scale, bias, r + x0, g + x0, b + x0);
        } else {
            bytes_to_floats(row + 3 * (size_t)x0, 3 * n, chunk);
            deinterleave_rgb(chunk, n, scale, bias, r + x0, g + x0, b + x0);
        }
    }
}

/* One view as CHW floats, minus the scaled mean image when there is one. */
static void write_view(const uint8_t *src, size_t stride, int size, bool mirror, const float scale[3],
                       const float bias[3], const float *mean_scaled, float *out)
{
    size_t plane = (size_t)size * size;
    for (int y = 0; y < size; y++) {
        const uint8_t *row = src + (size_t)y * stride;
        float *r = out + (size_t)y * size, *g = r + plane, *b = g + plane;
        row_to_planes(row, size, mirror, scale, bias, r, g, b);
    }
    if (mean_scaled) {
        for (size_t i = 0; i < 3 * plane; i++)
            out[i] -= mean_scaled[i];
    }
}

keel_status keel_augment_apply_with(const keel_augment_opts *o, const keel_image *img, const keel_crop *crop,
                                    const float *mean_scaled, keel_image *resized, keel_resample_scratch *scratch,
                                    float *out)
{
    int size = o->crop_size;
    if (!img->pixels || crop->x < 0 || crop->y < 0 || crop->width <= 0 || crop->height <= 0 ||
        crop->x + crop->width > img->width || crop->y + crop->height > img->height)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the crop %dx%d at (%d, %d) lies outside the %dx%d image",
                         crop->width, crop->height, crop->x, crop->y, img->width, img->height);
    const uint8_t *src = img->pixels + ((size_t)crop->y * img->width + crop->x) * 3;
    size_t stride = (size_t)img->width * 3;
    if (crop->width != size || crop->height != size) {
        if (!keel_image_reserve(resized, size, size))
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a %dx%d crop", size, size);
        keel_status st = keel_resample(img->pixels, img->width, crop->x, crop->y, crop->width, crop->height,
                                       resized->pixels, size, size, scratch);
        if (st != KEEL_OK)
            return st;
        src = resized->pixels;
        stride = (size_t)size * 3;
    }
    float scale[3], bias[3];
    bool mean_image = mean_scaled != NULL || o->mean_image != NULL;
    for (int c = 0; c < 3; c++) {
        scale[c] = 1.0f / (255.0f * o->std[c]);
        bias[c] = (crop->lighting[c] - (mean_image ? 0.0f : o->mean[c])) / o->std[c];
    }
    write_view(src, stride, size, crop->mirror, scale, bias, mean_scaled, out);
    if (!mean_scaled && o->mean_image) {
        size_t plane = (size_t)size * size;
        for (size_t i = 0; i < 3 * plane; i++)
            out[i] -= o->mean_image[i] / o->std[i / plane];
    }
    return KEEL_OK;
}

keel_status keel_augment_apply(const keel_augment_opts *o, const keel_image *img, const keel_crop *crop, float *out)
{
    keel_status st = keel_augment_check(o);
    if (st != KEEL_OK)
        return st;
    if (!img || !crop || !out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_augment_apply: image, crop and output must not be NULL");
    keel_image resized = {0};
    keel_resample_scratch scratch = {0};
    st = keel_augment_apply_with(o, img, crop, NULL, &resized, &scratch, out);
    keel_image_release(&resized);
    keel_resample_scratch_release(&scratch);
    return st;
}
