/* Decoding JPEG (TurboJPEG) and PNG (libpng's simplified API) into RGB
 * bytes, resizing to a short side, and writing images back out.
 *
 * The resize follows PIL's bilinear resampling, which torchvision's Resize
 * and RandomResizedCrop use: separable, a triangle filter whose support
 * widens by the shrink factor (so shrinking averages every source pixel
 * instead of skipping some), fixed-point weights with 22 fraction bits, the
 * horizontal pass first. JPEGs are first shrunk in the DCT domain, which
 * costs almost nothing: libjpeg-turbo's scaled inverse DCT computes fewer
 * output pixels from the same coefficients. */
#include "data/image_internal.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef KEEL_HAVE_TURBOJPEG
#include <turbojpeg.h>
#endif
#ifdef KEEL_HAVE_PNG
#include <png.h>
#endif

/* Larger than any photograph a CNN is trained on; bounds the buffers a
 * damaged header can ask for. */
#define MAX_PIXELS ((int64_t)1 << 28)
#define FIXED_BITS 22

static bool grow(void **buffer, size_t *capacity, size_t bytes)
{
    if (bytes <= *capacity)
        return true;
    size_t want = bytes + bytes / 4;
    void *p = realloc(*buffer, want);
    if (!p)
        return false;
    *buffer = p;
    *capacity = want;
    return true;
}

void keel_image_release(keel_image *img)
{
    if (!img)
        return;
    if (img->capacity)
        free(img->pixels);
    memset(img, 0, sizeof *img);
}

bool keel_image_reserve(keel_image *img, int height, int width)
{
    size_t bytes = (size_t)height * (size_t)width * 3;
    if (img->capacity == 0)
        img->pixels = NULL; /* a view into a shard is never written */
    if (!grow((void **)&img->pixels, &img->capacity, bytes ? bytes : 1))
        return false;
    img->height = height;
    img->width = width;
    img->channels = 3;
    return true;
}

void keel_short_side_size(int height, int width, int short_side, int *out_height, int *out_width)
{
    if (short_side <= 0) {
        *out_height = height;
        *out_width = width;
    } else if (width <= height) {
        *out_width = short_side;
        *out_height = (int)((int64_t)short_side * height / width);
    } else {
        *out_height = short_side;
        *out_width = (int)((int64_t)short_side * width / height);
    }
}

void keel_resample_scratch_release(keel_resample_scratch *s)
{
    free(s->weights);
    free(s->bounds);
    free(s->middle);
    free(s->accum);
    memset(s, 0, sizeof *s);
}

static double triangle(double x)
{
    x = fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* The taps of each output position along one axis: output o reads source
 * positions bounds[2o] .. bounds[2o] + bounds[2o+1] - 1 (absolute, inside
 * [start, start + in_size)) with weights[o * taps_max + t]. */
static int filter_taps(int in_size, int out_size)
{
    double scale = (double)in_size / out_size;
    double support = scale < 1.0 ? 1.0 : scale;
    return (int)ceil(support) * 2 + 1;
}

/* With `pad`, every output gets exactly taps_max taps, the extra ones with
 * weight 0 and the window moved left where it would pass the end, so the
 * horizontal pass runs one fixed-length loop across a block of rows
 * (resample_block); the sums are unchanged. Needs in_size >= taps_max. */
static void compute_taps(int start, int in_size, int out_size, int taps_max, bool pad, int *bounds, int32_t *weights)
{
    double scale = (double)in_size / out_size;
    double filter_scale = scale < 1.0 ? 1.0 : scale;
    double support = filter_scale;
    for (int o = 0; o < out_size; o++) {
        double center = (o + 0.5) * scale;
        int first = (int)(center - support + 0.5);
        if (first < 0)
            first = 0;
        int last = (int)(center + support + 0.5);
        if (last > in_size)
            last = in_size;
        int count = last - first;
        if (count > taps_max)
            count = taps_max;
        double total = 0.0;
        for (int t = 0; t < count; t++)
            total += triangle((t + first - center + 0.5) / filter_scale);
        int window = first;
        if (pad && first + taps_max > in_size)
            window = in_size - taps_max;
        int shift = first - window;
        for (int t = 0; t < taps_max; t++) {
            int j = t - shift;
            double w = j >= 0 && j < count && total > 0.0 ? triangle((j + first - center + 0.5) / filter_scale) / total
                                                          : 0.0;
            weights[(size_t)o * taps_max + t] = (int32_t)lrint(w * (1 << FIXED_BITS));
        }
        bounds[2 * o] = start + window;
        bounds[2 * o + 1] = pad ? taps_max : count;
    }
}

static inline uint8_t clip_fixed(int32_t acc)
{
    acc >>= FIXED_BITS;
    return (uint8_t)(acc < 0 ? 0 : acc > 255 ? 255 : acc);
}

/* One row, each output with its own tap count: fixed-point sums as Pillow's. */
static void resample_row_varying(const uint8_t *row, const int *bounds, const int32_t *weights, int taps_max,
                                 uint8_t *out, int out_width)
{
    for (int o = 0; o < out_width; o++) {
        const uint8_t *p = row + (size_t)bounds[2 * o] * 3;
        const int32_t *w = weights + (size_t)o * taps_max;
        int32_t r = 1 << (FIXED_BITS - 1), g = r, b = r;
        for (int t = 0; t < bounds[2 * o + 1]; t++) {
            r += p[3 * t] * w[t];
            g += p[3 * t + 1] * w[t];
            b += p[3 * t + 2] * w[t];
        }
        out[3 * o] = clip_fixed(r);
        out[3 * o + 1] = clip_fixed(g);
        out[3 * o + 2] = clip_fixed(b);
    }
}

/* The padded horizontal pass, BLOCK_ROWS rows at a time and transposed: the
 * block's source pixels are laid out column by column (BLOCK_LANES bytes:
 * each row's R, G, B), so that a tap is one multiply-add across every row
 * and channel of the block, which the compiler vectorises (with AVX2 where
 * the CPU has it). The sums are resample_row_varying's, so the bytes are
 * too. */
enum { BLOCK_ROWS = 16, BLOCK_LANES = 3 * BLOCK_ROWS };

__attribute__((target_clones("avx2", "default")))
static void resample_block(const uint8_t *columns, int first_column, const int *bounds, const int32_t *weights,
                           int taps, uint8_t *out, int out_width)
{
    for (int o = 0; o < out_width; o++) {
        int32_t acc[BLOCK_LANES];
        for (int l = 0; l < BLOCK_LANES; l++)
            acc[l] = 1 << (FIXED_BITS - 1);
        const int32_t *w = weights + (size_t)o * taps;
        const uint8_t *column = columns + (size_t)(bounds[2 * o] - first_column) * BLOCK_LANES;
        for (int t = 0; t < taps; t++, column += BLOCK_LANES)
            for (int l = 0; l < BLOCK_LANES; l++)
                acc[l] += column[l] * w[t];
        uint8_t *dst = out + (size_t)o * BLOCK_LANES;
        for (int l = 0; l < BLOCK_LANES; l++) {
            int32_t v = acc[l] >> FIXED_BITS;
            dst[l] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

/* Bytes of scratch resample_rows_blocked needs next to its output. */
static size_t blocked_scratch_bytes(int first_column, int end_column, int out_width)
{
    return ((size_t)(end_column - first_column) + (size_t)out_width) * BLOCK_LANES;
}

/* Pixel by pixel between a row (3 bytes apart) and a lane of a block
 * (BLOCK_LANES bytes apart); plain moves are faster here than what the
 * vectoriser makes of the strides. */
__attribute__((optimize("no-tree-vectorize")))
static void pixels_to_lane(const uint8_t *restrict row, int count, uint8_t *restrict lane)
{
    for (int x = 0; x < count; x++, row += 3, lane += BLOCK_LANES)
        memcpy(lane, row, 3);
}

__attribute__((optimize("no-tree-vectorize")))
static void lane_to_pixels(const uint8_t *restrict lane, int count, uint8_t *restrict row)
{
    for (int x = 0; x < count; x++, row += 3, lane += BLOCK_LANES)
        memcpy(row, lane, 3);
}

static void resample_rows_blocked(const uint8_t *src, size_t src_stride, int row_count, const int *bounds,
                                  const int32_t *weights, int taps, uint8_t *dst, int out_width, uint8_t *scratch)
{
    int first_column = bounds[0], end_column = bounds[2 * (out_width - 1)] + taps;
    uint8_t *columns = scratch, *block = scratch + (size_t)(end_column - first_column) * BLOCK_LANES;
    for (int r0 = 0; r0 < row_count; r0 += BLOCK_ROWS) {
        int rows = row_count - r0 < BLOCK_ROWS ? row_count - r0 : BLOCK_ROWS;
        for (int r = 0; r < rows; r++)
            pixels_to_lane(src + (size_t)(r0 + r) * src_stride + (size_t)first_column * 3, end_column - first_column,
                           columns + 3 * r);
        resample_block(columns, first_column, bounds, weights, taps, block, out_width);
        for (int r = 0; r < rows; r++)
            lane_to_pixels(block + 3 * r, out_width, dst + (size_t)(r0 + r) * out_width * 3);
    }
}

/* A box narrower than the filter (few source pixels, each output its own
 * tap count): row by row. */
static void resample_rows(const uint8_t *src, size_t src_stride, int row_count, const int *bounds,
                          const int32_t *weights, int taps_max, uint8_t *dst, int out_width)
{
    for (int r = 0; r < row_count; r++)
        resample_row_varying(src + (size_t)r * src_stride, bounds, weights, taps_max,
                             dst + (size_t)r * out_width * 3, out_width);
}

__attribute__((target_clones("avx2", "default")))
static void resample_columns(const uint8_t *src, size_t src_stride, int first_row, const int *bounds,
                             const int32_t *weights, int taps_max, int32_t *accum, uint8_t *dst, int out_width,
                             int out_height)
{
    size_t row_bytes = (size_t)out_width * 3;
    for (int o = 0; o < out_height; o++) {
        const int32_t *w = weights + (size_t)o * taps_max;
        for (size_t x = 0; x < row_bytes; x++)
            accum[x] = 1 << (FIXED_BITS - 1);
        for (int t = 0; t < bounds[2 * o + 1]; t++) {
            const uint8_t *row = src + (size_t)(bounds[2 * o] - first_row + t) * src_stride;
            int32_t weight = w[t];
            for (size_t x = 0; x < row_bytes; x++)
                accum[x] += row[x] * weight;
        }
        uint8_t *out = dst + (size_t)o * row_bytes;
        for (size_t x = 0; x < row_bytes; x++)
            out[x] = clip_fixed(accum[x]);
    }
}

keel_status keel_resample(const uint8_t *src, int src_width, int x, int y, int box_width, int box_height,
                          uint8_t *dst, int out_width, int out_height, keel_resample_scratch *s)
{
    if (box_width <= 0 || box_height <= 0 || out_width <= 0 || out_height <= 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "cannot resample a %dx%d box to %dx%d", box_width, box_height,
                         out_width, out_height);
    size_t src_stride = (size_t)src_width * 3;
    int htaps = filter_taps(box_width, out_width), vtaps = filter_taps(box_height, out_height);
    size_t weight_count = (size_t)out_width * htaps + (size_t)out_height * vtaps;
    size_t bound_count = 2 * ((size_t)out_width + out_height);
    if (!grow((void **)&s->weights, &s->weights_cap, weight_count * sizeof(int32_t)) ||
        !grow((void **)&s->bounds, &s->bounds_cap, bound_count * sizeof(int)) ||
        !grow((void **)&s->accum, &s->accum_cap, (size_t)out_width * 3 * sizeof(int32_t)))
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate resampling tables for %dx%d", out_width, out_height);
    int32_t *hweights = s->weights, *vweights = s->weights + (size_t)out_width * htaps;
    int *hbounds = s->bounds, *vbounds = s->bounds + 2 * (size_t)out_width;
    compute_taps(y, box_height, out_height, vtaps, false, vbounds, vweights);

    /* Only the source rows some output row reads need the horizontal pass. */
    int first_row = vbounds[0];
    int last_row = vbounds[2 * (out_height - 1)] + vbounds[2 * (out_height - 1) + 1];
    const uint8_t *middle = src + (size_t)first_row * src_stride + (size_t)x * 3;
    size_t middle_stride = src_stride;
    if (box_width != out_width) {
        int rows = last_row - first_row;
        bool padded = box_width >= htaps;
        compute_taps(x, box_width, out_width, htaps, padded, hbounds, hweights);
        size_t middle_bytes = (size_t)rows * out_width * 3;
        size_t blocked = padded ? blocked_scratch_bytes(hbounds[0], hbounds[2 * (out_width - 1)] + htaps, out_width)
                                : 0;
        if (!grow((void **)&s->middle, &s->middle_cap, middle_bytes + blocked))
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %d resampled rows", rows);
        if (padded)
            resample_rows_blocked(src + (size_t)first_row * src_stride, src_stride, rows, hbounds, hweights, htaps,
                                  s->middle, out_width, s->middle + middle_bytes);
        else
            resample_rows(src + (size_t)first_row * src_stride, src_stride, rows, hbounds, hweights, htaps,
                          s->middle, out_width);
        middle = s->middle;
        middle_stride = (size_t)out_width * 3;
    }
    if (box_height == out_height) {
        for (int r = 0; r < out_height; r++)
            memcpy(dst + (size_t)r * out_width * 3, middle + (size_t)r * middle_stride, (size_t)out_width * 3);
        return KEEL_OK;
    }
    resample_columns(middle, middle_stride, first_row, vbounds, vweights, vtaps, s->accum, dst, out_width,
                     out_height);
    return KEEL_OK;
}

static keel_status check_size(const char *name, int height, int width)
{
    if (height <= 0 || width <= 0 || (int64_t)height * width > MAX_PIXELS)
        return keel_fail(KEEL_ERR_FORMAT, "%s: image size %dx%d is not plausible", name, width, height);
    return KEEL_OK;
}

/* Brings a decoded image to the short side (or hands it over when it already
 * has the size). */
static keel_status finish_resize(keel_decoder *dec, const keel_image *decoded, int height, int width, keel_image *out)
{
    if (decoded == out)
        return KEEL_OK;
    if (!keel_image_reserve(out, height, width))
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a %dx%d image", width, height);
    return keel_resample(decoded->pixels, decoded->width, 0, 0, decoded->width, decoded->height, out->pixels, width,
                         height, &dec->resample);
}

#ifdef KEEL_HAVE_TURBOJPEG
/* The smallest DCT scaling (at most 1) that still leaves both sides at least
 * the target: the resize after it then only shrinks a little. */
static tjscalingfactor pick_scale(int height, int width, int target_height, int target_width)
{
    tjscalingfactor best = {1, 1};
    int count = 0;
    tjscalingfactor *factors = tjGetScalingFactors(&count);
    for (int i = 0; factors && i < count; i++) {
        tjscalingfactor f = factors[i];
        if (f.num > f.denom)
            continue;
        if (TJSCALED(width, f) >= target_width && TJSCALED(height, f) >= target_height &&
            TJSCALED(width, f) < TJSCALED(width, best))
            best = f;
    }
    return best;
}

/* libjpeg-turbo reports recoverable damage as warnings and still fills the
 * image; PIL accepts those too, except a file that ends early, whose missing
 * rows would be grey. */
static bool jpeg_failed(tjhandle handle, int rc)
{
    if (rc == 0)
        return false;
    if (tjGetErrorCode(handle) != TJERR_WARNING)
        return true;
    return strstr(tjGetErrorStr2(handle), "Premature end") != NULL;
}

/* Adobe CMYK JPEGs store inverted ink, so R = C' K' / 255. */
static void cmyk_to_rgb(const uint8_t *cmyk, uint8_t *rgb, size_t pixels)
{
    for (size_t i = 0; i < pixels; i++) {
        unsigned k = cmyk[4 * i + 3];
        for (int c = 0; c < 3; c++)
            rgb[3 * i + c] = (uint8_t)((cmyk[4 * i + c] * k + 127) / 255);
    }
}

static keel_status decode_jpeg(keel_decoder *dec, const uint8_t *bytes, size_t size, const char *name, int short_side,
                               keel_image *out)
{
    if (!dec->jpeg && !(dec->jpeg = tjInitDecompress()))
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot create a JPEG decompressor");
    tjhandle handle = dec->jpeg;
    int width, height, subsampling, colorspace;
    if (tjDecompressHeader3(handle, bytes, (unsigned long)size, &width, &height, &subsampling, &colorspace) != 0)
        return keel_fail(KEEL_ERR_FORMAT, "%s: %s", name, tjGetErrorStr2(handle));
    keel_status st = check_size(name, height, width);
    if (st != KEEL_OK)
        return st;
    int target_height, target_width;
    keel_short_side_size(height, width, short_side, &target_height, &target_width);
    tjscalingfactor f = pick_scale(height, width, target_height, target_width);
    int scaled_width = TJSCALED(width, f), scaled_height = TJSCALED(height, f);
    bool direct = scaled_width == target_width && scaled_height == target_height;
    keel_image *decoded = direct ? out : &dec->decoded;
    if (!keel_image_reserve(decoded, scaled_height, scaled_width))
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot allocate %dx%d pixels", name, scaled_width, scaled_height);
    int rc;
    if (colorspace == TJCS_CMYK || colorspace == TJCS_YCCK) {
        size_t pixels = (size_t)scaled_width * scaled_height;
        if (!grow((void **)&dec->cmyk, &dec->cmyk_cap, pixels * 4))
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot allocate CMYK pixels", name);
        rc = tjDecompress2(handle, bytes, (unsigned long)size, dec->cmyk, scaled_width, 0, scaled_height, TJPF_CMYK, 0);
        if (!jpeg_failed(handle, rc))
            cmyk_to_rgb(dec->cmyk, decoded->pixels, pixels);
    } else {
        rc = tjDecompress2(handle, bytes, (unsigned long)size, decoded->pixels, scaled_width, 0, scaled_height,
                           TJPF_RGB, 0);
    }
    if (jpeg_failed(handle, rc))
        return keel_fail(KEEL_ERR_FORMAT, "%s: %s", name, tjGetErrorStr2(handle));
    return finish_resize(dec, decoded, target_height, target_width, out);
}
#endif

#ifdef KEEL_HAVE_PNG
static keel_status decode_png(keel_decoder *dec, const uint8_t *bytes, size_t size, const char *name, int short_side,
                              keel_image *out)
{
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&image, bytes, size))
        return keel_fail(KEEL_ERR_FORMAT, "%s: %s", name, image.message);
    int width = (int)image.width, height = (int)image.height;
    keel_status st = check_size(name, height, width);
    if (st != KEEL_OK) {
        png_image_free(&image);
        return st;
    }
    int target_height, target_width;
    keel_short_side_size(height, width, short_side, &target_height, &target_width);
    keel_image *decoded = target_height == height && target_width == width ? out : &dec->decoded;
    size_t pixels = (size_t)width * height;
    bool alpha = (image.format & PNG_FORMAT_FLAG_ALPHA) != 0;
    image.format = alpha ? PNG_FORMAT_RGBA : PNG_FORMAT_RGB;
    /* A 16-bit file without gamma information holds sRGB values, as image
     * editors write them; libpng would otherwise take them as linear and
     * brighten them on the way to 8 bits. */
    image.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
    bool ok = keel_image_reserve(decoded, height, width) &&
              (!alpha || grow((void **)&dec->cmyk, &dec->cmyk_cap, pixels * 4));
    if (!ok) {
        png_image_free(&image);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot allocate %dx%d pixels", name, width, height);
    }
    /* The alpha channel is dropped, not composited, as PIL's convert("RGB"). */
    if (!png_image_finish_read(&image, NULL, alpha ? dec->cmyk : decoded->pixels, 0, NULL))
        return keel_fail(KEEL_ERR_FORMAT, "%s: %s", name, image.message);
    if (alpha) {
        for (size_t i = 0; i < pixels; i++)
            memcpy(decoded->pixels + 3 * i, dec->cmyk + 4 * i, 3);
    }
    return finish_resize(dec, decoded, target_height, target_width, out);
}
#endif

keel_status keel_decode_memory(keel_decoder *dec, const uint8_t *bytes, size_t size, const char *name, int short_side,
                               keel_image *out)
{
    static const uint8_t jpeg_magic[3] = {0xFF, 0xD8, 0xFF};
    static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (size >= 3 && memcmp(bytes, jpeg_magic, 3) == 0) {
#ifdef KEEL_HAVE_TURBOJPEG
        return decode_jpeg(dec, bytes, size, name, short_side, out);
#else
        return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: this libkeel was built without JPEG support (install "
                         "libturbojpeg0-dev and reconfigure)", name);
#endif
    }
    if (size >= 8 && memcmp(bytes, png_magic, 8) == 0) {
#ifdef KEEL_HAVE_PNG
        return decode_png(dec, bytes, size, name, short_side, out);
#else
        return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: this libkeel was built without PNG support (install libpng-dev "
                         "and reconfigure)", name);
#endif
    }
    if (size == 0)
        return keel_fail(KEEL_ERR_FORMAT, "%s: the file is empty", name);
    return keel_fail(KEEL_ERR_FORMAT, "%s: neither a JPEG nor a PNG (starts with 0x%02x 0x%02x)", name, bytes[0],
                     size > 1 ? bytes[1] : 0);
}

static keel_status read_file(keel_decoder *dec, const char *path, size_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return keel_fail(KEEL_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat info;
    if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
        close(fd);
        return keel_fail(KEEL_ERR_IO, "%s is not a regular file", path);
    }
    size_t want = (size_t)info.st_size;
    if (!grow((void **)&dec->file, &dec->file_cap, want ? want : 1)) {
        close(fd);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes to read %s", want, path);
    }
    size_t got = 0;
    while (got < want) {
        ssize_t n = read(fd, dec->file + got, want - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int err = n < 0 ? errno : 0;
            close(fd);
            return keel_fail(KEEL_ERR_IO, "cannot read %s: %s", path, err ? strerror(err) : "the file shrank");
        }
        got += (size_t)n;
    }
    close(fd);
    *size = got;
    return KEEL_OK;
}

keel_status keel_decode_file(keel_decoder *dec, const char *path, int short_side, keel_image *out)
{
    size_t size = 0;
    keel_status st = read_file(dec, path, &size);
    if (st != KEEL_OK)
        return st;
    return keel_decode_memory(dec, dec->file, size, path, short_side, out);
}

void keel_decoder_release(keel_decoder *dec)
{
#ifdef KEEL_HAVE_TURBOJPEG
    if (dec->jpeg)
        tjDestroy(dec->jpeg);
#endif
    free(dec->file);
    free(dec->cmyk);
    keel_image_release(&dec->decoded);
    keel_resample_scratch_release(&dec->resample);
    memset(dec, 0, sizeof *dec);
}

keel_status keel_image_load(keel_image *img, const char *path, int short_side)
{
    if (!img || !path || short_side < 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_image_load: need an image, a path and a short side >= 0");
    keel_decoder dec;
    memset(&dec, 0, sizeof dec);
    keel_status st = keel_decode_file(&dec, path, short_side, img);
    keel_decoder_release(&dec);
    return st;
}

/* ---- writing --------------------------------------------------------------- */

static bool has_extension(const char *path, const char *ext)
{
    size_t n = strlen(path), e = strlen(ext);
    return n >= e && strcasecmp(path + n - e, ext) == 0;
}

static keel_status write_atomically(const char *path, const void *data, size_t size)
{
    size_t n = strlen(path) + 16;
    char *tmp = malloc(n);
    if (!tmp)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a path");
    snprintf(tmp, n, "%s.tmp-XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        keel_status st = keel_fail(KEEL_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
        free(tmp);
        return st;
    }
    const uint8_t *p = data;
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, p + done, size - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    int err = done < size ? errno : 0;
    if (close(fd) != 0 && !err)
        err = errno;
    if (err || done < size || rename(tmp, path) != 0) {
        keel_status st = keel_fail(KEEL_ERR_IO, "cannot write %s: %s", path, strerror(err ? err : errno));
        unlink(tmp);
        free(tmp);
        return st;
    }
    free(tmp);
    return KEEL_OK;
}

#ifdef KEEL_HAVE_TURBOJPEG
static keel_status save_jpeg(const keel_image *img, const char *path, int quality)
{
    tjhandle handle = tjInitCompress();
    if (!handle)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot create a JPEG compressor");
    unsigned char *jpeg = NULL;
    unsigned long size = 0;
    int q = quality < 1 ? 1 : quality > 100 ? 100 : quality;
    keel_status st;
    if (tjCompress2(handle, img->pixels, img->width, 0, img->height, TJPF_RGB, &jpeg, &size, TJSAMP_420, q, 0) != 0)
        st = keel_fail(KEEL_ERR_FORMAT, "cannot encode %s: %s", path, tjGetErrorStr2(handle));
    else
        st = write_atomically(path, jpeg, size);
    tjFree(jpeg);
    tjDestroy(handle);
    return st;
}
#endif

#ifdef KEEL_HAVE_PNG
static keel_status save_png(const keel_image *img, const char *path)
{
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = (png_uint_32)img->width;
    image.height = (png_uint_32)img->height;
    image.format = PNG_FORMAT_RGB;
    png_alloc_size_t size = 0;
    if (!png_image_write_to_memory(&image, NULL, &size, 0, img->pixels, 0, NULL))
        return keel_fail(KEEL_ERR_FORMAT, "cannot encode %s: %s", path, image.message);
    void *buffer = malloc(size);
    if (!buffer)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes for %s", (size_t)size, path);
    keel_status st = KEEL_OK;
    if (!png_image_write_to_memory(&image, buffer, &size, 0, img->pixels, 0, NULL))
        st = keel_fail(KEEL_ERR_FORMAT, "cannot encode %s: %s", path, image.message);
    else
        st = write_atomically(path, buffer, size);
    free(buffer);
    return st;
}
#endif

keel_status keel_image_save(const keel_image *img, const char *path, int quality)
{
    if (!img || !path || !img->pixels || img->height <= 0 || img->width <= 0 || img->channels != 3)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_image_save: need a path and a non-empty RGB image");
    if (has_extension(path, ".jpg") || has_extension(path, ".jpeg")) {
#ifdef KEEL_HAVE_TURBOJPEG
        return save_jpeg(img, path, quality);
#else
        return keel_fail(KEEL_ERR_UNSUPPORTED, "cannot write %s: this libkeel was built without JPEG support", path);
#endif
    }
    if (has_extension(path, ".png")) {
#ifdef KEEL_HAVE_PNG
        return save_png(img, path);
#else
        return keel_fail(KEEL_ERR_UNSUPPORTED, "cannot write %s: this libkeel was built without PNG support", path);
#endif
    }
    return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "cannot write %s: the name must end in .jpg, .jpeg or .png", path);
}
