/* Pictures: grids of images, a convolution's filters and a layer's feature
 * maps, as 8-bit PNG. */
#include "keel/visualize.h"
#include "core/png.h"
#include "graph/graph_internal.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void keel_picture_release(keel_picture *picture)
{
    if (!picture)
        return;
    free(picture->pixels);
    memset(picture, 0, sizeof *picture);
}

keel_status keel_picture_save_png(const keel_picture *picture, const char *path)
{
    if (!picture || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_picture_save_png: picture and path are required");
    return keel_png_write(path, picture->pixels, picture->width, picture->height, picture->channels);
}

keel_status keel_picture_load_png(keel_picture *picture, const char *path)
{
    if (!picture || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_picture_load_png: picture and path are required");
    memset(picture, 0, sizeof *picture);
    return keel_png_read(path, &picture->pixels, &picture->width, &picture->height, &picture->channels);
}

/* ---- grids ---------------------------------------------------------------------- */

typedef struct grid_layout {
    int columns, rows, padding, zoom;
    int tile_h, tile_w;        /* zoomed */
} grid_layout;

static void value_range(const float *x, int64_t n, float *lo, float *hi)
{
    float a = INFINITY, b = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            continue;
        a = x[i] < a ? x[i] : a;
        b = x[i] > b ? x[i] : b;
    }
    *lo = a;
    *hi = b;
}

static uint8_t to_byte(float v, float lo, float hi)
{
    if (!(hi > lo) || !isfinite(v))
        return 0;
    float scaled = 255.0f * (v - lo) / (hi - lo);
    if (scaled <= 0.0f)
        return 0;
    if (scaled >= 255.0f)
        return 255;
    return (uint8_t)lrintf(scaled);
}

/* Copies one CHW tile, zoomed, into the interleaved picture. */
static void draw_tile(keel_picture *out, const grid_layout *l, int t, const float *tile, int height, int width,
                      float lo, float hi)
{
    int channels = out->channels;
    int top = l->padding + (t / l->columns) * (l->tile_h + l->padding);
    int left = l->padding + (t % l->columns) * (l->tile_w + l->padding);
    for (int y = 0; y < height * l->zoom; y++) {
        uint8_t *row = out->pixels + ((size_t)(top + y) * (size_t)out->width + (size_t)left) * (size_t)channels;
        for (int x = 0; x < width * l->zoom; x++)
            for (int c = 0; c < channels; c++) {
                float v = tile[((size_t)c * (size_t)height + (size_t)(y / l->zoom)) * (size_t)width +
                               (size_t)(x / l->zoom)];
                row[(size_t)x * (size_t)channels + (size_t)c] = to_byte(v, lo, hi);
            }
    }
}

static keel_status check_grid(const float *tiles, int count, int channels, int height, int width,
                              const keel_grid_opts *o)
{
    if (!tiles || count < 1 || height < 1 || width < 1)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_grid_make: need at least one tile of positive size, got %d "
                         "tiles of %dx%d", count, height, width);
    if (channels != 1 && channels != 3)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_grid_make: tiles must have 1 or 3 channels, got %d",
                         channels);
    if (o->columns < 0 || o->zoom < 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_grid_make: columns and zoom must be >= 0 (0: automatic), "
                         "got %d and %d", o->columns, o->zoom);
    if (o->scale == KEEL_GRID_RANGE && !(o->high > o->low))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_grid_make: the range [%g, %g] is empty", (double)o->low,
                         (double)o->high);
    return KEEL_OK;
}

keel_status keel_grid_make(keel_picture *out, const float *tiles, int count, int channels, int height, int width,
                           const keel_grid_opts *opts)
{
    keel_grid_opts o = opts ? *opts : (keel_grid_opts){0};
    if (!out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_grid_make: out is NULL");
    memset(out, 0, sizeof *out);
    keel_status st = check_grid(tiles, count, channels, height, width, &o);
    if (st != KEEL_OK)
        return st;
    grid_layout l = {.zoom = o.zoom ? o.zoom : 1, .padding = o.padding < 0 ? 0 : o.padding ? o.padding : 1};
    l.columns = o.columns ? o.columns : (int)ceil(sqrt((double)count));
    if (l.columns > count)
        l.columns = count;
    l.rows = (count + l.columns - 1) / l.columns;
    l.tile_h = height * l.zoom;
    l.tile_w = width * l.zoom;
    int64_t grid_h = (int64_t)l.rows * (l.tile_h + l.padding) + l.padding;
    int64_t grid_w = (int64_t)l.columns * (l.tile_w + l.padding) + l.padding;
    if (grid_h > 1 << 15 || grid_w > 1 << 15)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_grid_make: a %lldx%lld picture is too large (at most "
                         "32768 a side); use fewer tiles or a smaller zoom", (long long)grid_h, (long long)grid_w);
    out->pixels = malloc((size_t)(grid_h * grid_w * channels));
    if (!out->pixels)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for a %lldx%lld picture", (long long)grid_h,
                         (long long)grid_w);
    memset(out->pixels, o.background, (size_t)(grid_h * grid_w * channels));
    out->height = (int)grid_h;
    out->width = (int)grid_w;
    out->channels = channels;

    int64_t tile_size = (int64_t)channels * height * width;
    float lo = o.low, hi = o.high;
    if (o.scale == KEEL_GRID_ALL)
        value_range(tiles, tile_size * count, &lo, &hi);
    for (int t = 0; t < count; t++) {
        const float *tile = tiles + t * tile_size;
        if (o.scale == KEEL_GRID_EACH)
            value_range(tile, tile_size, &lo, &hi);
        draw_tile(out, &l, t, tile, height, width, lo, hi);
    }
    return KEEL_OK;
}

/* ---- layers ------------------------------------------------------------------------ */

static bool is_forward_layer(const keel_node *x)
{
    return !x->is_backward && x->op != KEEL_OP_INPUT && x->op != KEEL_OP_PARAM;
}

static bool is_convolution(const keel_node *x)
{
    return x->op == KEEL_OP_CONV2D || x->op == KEEL_OP_CONV_TRANSPOSE2D;
}

static keel_status unknown_layer(const keel_graph *g, const char *name)
{
    char known[1024];
    size_t used = 0;
    known[0] = '\0';
    for (int i = 0; i < g->n_nodes && used + 8 < sizeof known; i++) {
        const keel_node *x = g->nodes[i];
        if (is_forward_layer(x))
            used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", used ? ", " : "", x->name);
    }
    if (used + 8 >= sizeof known)
        snprintf(known + sizeof known - 5, 5, "...");
    return keel_fail(KEEL_ERR_NOT_FOUND, "no layer '%s' (nor convN, the N-th convolution); the layers are: %s", name,
                     known);
}

keel_status keel_find_layer(const keel_graph *g, const char *name, keel_node **layer)
{
    if (!g || !name || !layer)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_find_layer: graph, name and layer are required");
    *layer = NULL;
    for (int i = 0; i < g->n_nodes; i++)
        if (is_forward_layer(g->nodes[i]) && strcmp(g->nodes[i]->name, name) == 0) {
            *layer = g->nodes[i];
            return KEEL_OK;
        }
    int wanted = 0, used = 0;
    if (sscanf(name, "conv%d%n", &wanted, &used) == 1 && name[used] == '\0' && wanted >= 1) {
        for (int i = 0; i < g->n_nodes; i++)
            if (!g->nodes[i]->is_backward && is_convolution(g->nodes[i]) && --wanted == 0) {
                *layer = g->nodes[i];
                return KEEL_OK;
            }
    }
    return unknown_layer(g, name);
}

/* ---- filters ------------------------------------------------------------------------- */

static int auto_zoom(int size, int at_least)
{
    int zoom = (at_least + size - 1) / size;
    return zoom < 1 ? 1 : zoom;
}

/* Rearranges {filters, inputs, kh, kw} weights into tiles: RGB filters stay
 * as they are (CHW already), others become filters x inputs grey tiles. */
static keel_status filter_tiles(const keel_node *w, const float *weights, keel_picture *out, int zoom)
{
    int filters = (int)w->shape[0], inputs = (int)w->shape[1];
    int kh = (int)w->shape[2], kw = (int)w->shape[3];
    keel_grid_opts o = {.zoom = zoom ? zoom : auto_zoom(kw, 24), .padding = 3, .background = 128};
    if (inputs == 3)
        return keel_grid_make(out, weights, filters, 3, kh, kw, &o);
    if (inputs == 1)
        return keel_grid_make(out, weights, filters, 1, kh, kw, &o);
    o.columns = inputs;
    return keel_grid_make(out, weights, filters * inputs, 1, kh, kw, &o);
}

keel_status keel_filter_picture(keel_plan *plan, const keel_node *layer, int zoom, keel_picture *out)
{
    if (!plan || !layer || !out || zoom < 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_filter_picture: plan, layer and out are required, zoom >= 0");
    if (!is_convolution(layer))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "layer '%s' is a %s layer; filters are drawn for convolutions",
                         layer->name, keel_op_get(layer->op)->name);
    const keel_node *w = layer->inputs[1];
    if (w->ndim != 4)
        return keel_fail(KEEL_ERR_SHAPE, "layer '%s': weights '%s' are not 4-D", layer->name, w->name);
    int64_t n = keel_node_numel(w);
    float *weights = malloc((size_t)n * sizeof *weights);
    if (!weights)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", w->name);
    keel_status st = keel_plan_param_get(plan, w->name, weights, n);
    if (st == KEEL_OK)
        st = filter_tiles(w, weights, out, zoom);
    free(weights);
    return st;
}

/* ---- activations ----------------------------------------------------------------------- */

keel_status keel_activation_picture(keel_plan *plan, const keel_node *layer, int zoom, keel_picture *out)
{
    if (!plan || !layer || !out || zoom < 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_activation_picture: plan, layer and out are required, "
                         "zoom >= 0");
    if (layer->ndim != 4 && layer->ndim != 2)
        return keel_fail(KEEL_ERR_SHAPE, "layer '%s' has a %d-D output; feature maps are drawn for {N, C, H, W} "
                         "and {N, F} outputs", layer->name, layer->ndim);
    if (layer->dtype != KEEL_F32)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "layer '%s' does not hold float values", layer->name);
    int64_t n = keel_node_numel(layer);
    float *values = malloc((size_t)n * sizeof *values);
    if (!values)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", layer->name);
    keel_status st = keel_plan_read(plan, layer, values);
    if (st == KEEL_OK && layer->ndim == 4) {
        int maps = (int)layer->shape[1], height = (int)layer->shape[2], width = (int)layer->shape[3];
        keel_grid_opts o = {.zoom = zoom ? zoom : auto_zoom(width, 28), .padding = 2, .background = 255};
        st = keel_grid_make(out, values, maps, 1, height, width, &o);
    } else if (st == KEEL_OK) {
        keel_grid_opts o = {.zoom = zoom ? zoom : 8, .padding = -1, .scale = KEEL_GRID_ALL};
        st = keel_grid_make(out, values, (int)layer->shape[1], 1, 1, 1, &o);
    }
    free(values);
    return st;
}
