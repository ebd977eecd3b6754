/* PNG files through libpng's simplified API: 8-bit grey or RGB pixels,
 * written atomically. Without libpng (KEEL_HAVE_PNG unset) both calls
 * return KEEL_ERR_UNSUPPORTED with a message saying so. */
#ifndef KEEL_PNG_H
#define KEEL_PNG_H

#include "core/core.h"

/* Writes height x width x channels bytes (channels 1 or 3, rows top first)
 * to a temporary file "<path>.tmp.<pid>" that is renamed over `path`. */
keel_status keel_png_write(const char *path, const uint8_t *pixels, int width, int height, int channels);

/* Reads a PNG into a new buffer (free() it): grey files (with or without
 * alpha) give 1 channel, colour and palette files 3; alpha is composited
 * onto black and 16-bit samples are reduced to 8. */
keel_status keel_png_read(const char *path, uint8_t **pixels, int *width, int *height, int *channels);

#endif
