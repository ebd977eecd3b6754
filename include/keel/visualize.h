/* Pictures of what a network holds: grids of images, the learned filters of
 * a layer (AlexNet's famous conv1 sheet), and the feature maps one image
 * produces at a layer, written as PNG (libpng). */
#ifndef KEEL_VISUALIZE_H
#define KEEL_VISUALIZE_H

#include "plan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 8-bit pixels, row-major, channels interleaved (height x width x channels). */
typedef struct keel_picture {
    int height, width;
    int channels;         /* 1 (grey) or 3 (RGB) */
    uint8_t *pixels;      /* owned; free with keel_picture_release */
} keel_picture;

void keel_picture_release(keel_picture *picture);
/* Writes an 8-bit grey or RGB PNG atomically (a temporary file renamed). */
keel_status keel_picture_save_png(const keel_picture *picture, const char *path);
/* Reads a PNG as stored: grey (with or without alpha) gives 1 channel, the
 * rest 3 (palette expanded, alpha dropped, 16-bit reduced to 8). */
keel_status keel_picture_load_png(keel_picture *picture, const char *path);

/* ---- grids -------------------------------------------------------------------- */

typedef enum keel_grid_scale {
    KEEL_GRID_EACH = 0,   /* each tile stretched to its own min..max */
    KEEL_GRID_ALL,        /* one min..max over every tile */
    KEEL_GRID_RANGE,      /* the fixed range [low, high] (e.g. -1, 1 for tanh images) */
} keel_grid_scale;

typedef struct keel_grid_opts {
    int columns;          /* tiles per row; 0: ceil(sqrt(count)) */
    int padding;          /* pixels between and around tiles; < 0: none, 0: 1 */
    int zoom;             /* nearest-neighbour magnification; 0: 1 */
    keel_grid_scale scale;
    float low, high;      /* KEEL_GRID_RANGE */
    uint8_t background;   /* grey level of the padding */
} keel_grid_opts;

/* Tiles `count` images of channels x height x width floats (CHW, channels
 * 1 or 3) into one picture: tile t goes to row t / columns, column
 * t % columns; its pixel (y, x) lands at (pad + row * (zoom*height + pad) +
 * zoom*y, pad + col * (zoom*width + pad) + zoom*x) (zoom x zoom copies).
 * A value v maps to round(255 * (v - lo) / (hi - lo)), clamped to 0..255;
 * a tile whose range is empty is drawn black. opts may be NULL. */
keel_status keel_grid_make(keel_picture *out, const float *tiles, int count, int channels, int height, int width,
                           const keel_grid_opts *opts);

/* ---- looking inside a network --------------------------------------------------- */

/* The forward layer called `name`, or for "convN" when no layer has that
 * name, the N-th convolution (conv1 is the first: "block1.conv1" in
 * cnn-small, "features.0" in alexnet-1gpu). KEEL_ERR_NOT_FOUND names the
 * layers there are. */
keel_status keel_find_layer(const keel_graph *g, const char *name, keel_node **layer);

/* The weights "<layer>.weight" {out, in, kh, kw} of a convolution as a grid
 * of filters, each stretched to its own range: one RGB tile per filter when
 * in == 3, one grey tile per filter when in == 1, otherwise one grey tile
 * per (filter, input channel) with a row per filter. zoom 0 picks one that
 * makes tiles at least 24 pixels wide. */
keel_status keel_filter_picture(keel_plan *plan, const keel_node *layer, int zoom, keel_picture *out);

/* The output of `layer` for the image the plan's input holds (run the
 * forward first; the layer's node must have been kept with keel_graph_keep
 * before compiling): sample 0's feature maps {C, H, W} as C grey tiles, each
 * stretched to its own range, or a {N, F} dense output as a mosaic of F
 * cells on one scale. zoom 0 picks one that makes tiles at least 28 pixels
 * wide. */
keel_status keel_activation_picture(keel_plan *plan, const keel_node *layer, int zoom, keel_picture *out);

#ifdef __cplusplus
}
#endif
#endif
