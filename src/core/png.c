/* PNG input and output with libpng's simplified (png_image) API. */
#include "core/png.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef KEEL_HAVE_PNG
#include <png.h>
#endif

static keel_status check_shape(const char *path, const uint8_t *pixels, int width, int height, int channels)
{
    if (!path || !pixels)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_png_write: path and pixels are required");
    if (width <= 0 || height <= 0 || (channels != 1 && channels != 3))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "cannot write %s: a PNG needs a positive size and 1 or 3 "
                         "channels, got %dx%d with %d", path, width, height, channels);
    return KEEL_OK;
}

#ifdef KEEL_HAVE_PNG

keel_status keel_png_write(const char *path, const uint8_t *pixels, int width, int height, int channels)
{
    keel_status st = check_shape(path, pixels, width, height, channels);
    if (st != KEEL_OK)
        return st;
    size_t tmp_size = strlen(path) + 32;
    char *tmp = malloc(tmp_size);
    if (!tmp)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory writing %s", path);
    snprintf(tmp, tmp_size, "%s.tmp.%ld", path, (long)getpid());
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = (png_uint_32)width;
    image.height = (png_uint_32)height;
    image.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    if (!png_image_write_to_file(&image, tmp, 0, pixels, 0, NULL)) {
        st = keel_fail(KEEL_ERR_IO, "cannot write %s: %s", path, image.message);
        remove(tmp);
    } else if (rename(tmp, path) != 0) {
        st = keel_fail(KEEL_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        remove(tmp);
    }
    png_image_free(&image);
    free(tmp);
    return st;
}

keel_status keel_png_read(const char *path, uint8_t **pixels, int *width, int *height, int *channels)
{
    if (!path || !pixels || !width || !height || !channels)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_png_read: path and outputs are required");
    *pixels = NULL;
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&image, path)) {
        FILE *f = fopen(path, "rb");
        if (!f)
            return keel_fail(KEEL_ERR_IO, "cannot open %s: %s", path, strerror(errno));
        fclose(f);
        return keel_fail(KEEL_ERR_FORMAT, "%s is not a readable PNG: %s", path, image.message);
    }
    bool colour = (image.format & PNG_FORMAT_FLAG_COLOR) != 0;
    image.format = colour ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
    size_t bytes = PNG_IMAGE_SIZE(image);
    uint8_t *buffer = malloc(bytes ? bytes : 1);
    if (!buffer) {
        png_image_free(&image);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes for %s", bytes, path);
    }
    if (!png_image_finish_read(&image, NULL, buffer, 0, NULL)) {
        keel_status st = keel_fail(KEEL_ERR_FORMAT, "cannot decode %s: %s", path, image.message);
        png_image_free(&image);
        free(buffer);
        return st;
    }
    *pixels = buffer;
    *width = (int)image.width;
    *height = (int)image.height;
    *channels = colour ? 3 : 1;
    png_image_free(&image);
    return KEEL_OK;
}

#else

keel_status keel_png_write(const char *path, const uint8_t *pixels, int width, int height, int channels)
{
    keel_status st = check_shape(path, pixels, width, height, channels);
    if (st != KEEL_OK)
        return st;
    return keel_fail(KEEL_ERR_UNSUPPORTED, "cannot write %s: this libkeel was built without PNG support (install "
                     "libpng-dev and rebuild)", path);
}

keel_status keel_png_read(const char *path, uint8_t **pixels, int *width, int *height, int *channels)
{
    (void)width;
    (void)height;
    (void)channels;
    if (pixels)
        *pixels = NULL;
    return keel_fail(KEEL_ERR_UNSUPPORTED, "cannot read %s: this libkeel was built without PNG support (install "
                     "libpng-dev and rebuild)", path ? path : "(null)");
}

#endif
