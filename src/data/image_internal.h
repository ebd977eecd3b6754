/* Image datasets shared by the decoder (image_decode.c), the folder and list
 * readers (image_folder.c), the shards (pack.c), the augmentation
 * (augment.c) and the worker loader (workers.c). */
#ifndef KEEL_IMAGE_INTERNAL_H
#define KEEL_IMAGE_INTERNAL_H

#include "core/core.h"
#include "keel/data.h"
#include <pthread.h>
#include <stdatomic.h>

/* ---- decoding ---------------------------------------------------------- */

/* Scratch for the separable resampler, grown on demand and reused. */
typedef struct keel_resample_scratch {
    int32_t *weights;   /* horizontal then vertical taps, fixed point */
    int *bounds;        /* per output position: first tap, tap count */
    size_t weights_cap, bounds_cap;
    uint8_t *middle;    /* the horizontally resampled rows */
    size_t middle_cap;
    int32_t *accum;     /* one output row of the vertical pass */
    size_t accum_cap;
} keel_resample_scratch;

/* One per thread: a TurboJPEG handle, the file's bytes and the image before
 * resizing, all reused from image to image. */
typedef struct keel_decoder {
    void *jpeg;          /* tjhandle, created on first use */
    uint8_t *file;
    size_t file_cap;
    keel_image decoded;  /* before the resize to the short side */
    uint8_t *cmyk;
    size_t cmyk_cap;
    keel_resample_scratch resample;
} keel_decoder;

void keel_decoder_release(keel_decoder *dec);
/* Reads and decodes `path` into `out` (grown as needed). `name` is only
 * used in messages. */
keel_status keel_decode_file(keel_decoder *dec, const char *path, int short_side, keel_image *out);
keel_status keel_decode_memory(keel_decoder *dec, const uint8_t *bytes, size_t size, const char *name,
                               int short_side, keel_image *out);
/* torchvision's Resize(short_side) output size. */
void keel_short_side_size(int height, int width, int short_side, int *out_height, int *out_width);
/* Makes img hold height x width x 3 bytes; false when out of memory. */
bool keel_image_reserve(keel_image *img, int height, int width);

/* Resamples the box (x, y, box_width, box_height) of an interleaved RGB image
 * to out_height x out_width with PIL's bilinear filter (support widened by
 * the shrink factor), taps limited to the box, as PIL's crop-then-resize. */
keel_status keel_resample(const uint8_t *src, int src_width, int x, int y, int box_width, int box_height,
                          uint8_t *dst, int out_width, int out_height, keel_resample_scratch *scratch);
void keel_resample_scratch_release(keel_resample_scratch *s);

/* ---- shards -------------------------------------------------------------
 * A shard file, little-endian:
 *   [0, 128)                  header (offsets below)
 *   [128, records_offset)     pixels, image after image, HWC uint8
 *   [records_offset, +24 n)   per image: u64 offset, u32 height, u32 width,
 *                             i32 label, u32 zero
 *   [names_offset, +bytes)    class names, each NUL-terminated (or none)
 * Header: 0 magic "KEELPACK", 8 u32 version (1), 12 u32 header bytes (128),
 * 16 u32 shard index, 20 u32 shard count, 24 u64 images in this shard,
 * 32 u64 images in the pack, 40 u32 classes, 44 u32 channels (3),
 * 48 u32 short side, 52 u32 zero, 56 u64 records offset, 64 u64 names
 * offset, 72 u64 names bytes, 80 u64 file bytes, 88 u64 pack id (a hash of
 * every shard's records, equal in all shards of one pack), 96 u32 CRC-32 of
 * the records, 100 u32 CRC-32 of the names, 104..123 zero, 124 u32 CRC-32
 * of bytes [0, 124). */
#define KEEL_PACK_MAGIC "KEELPACK"
#define KEEL_PACK_VERSION 1u
#define KEEL_PACK_HEADER_BYTES 128
#define KEEL_PACK_RECORD_BYTES 24
#define KEEL_PACK_EXTENSION ".keelpack"

typedef struct keel_shard_header {
    uint32_t version, shard_index, shard_count;
    uint64_t count, total_count;
    uint32_t classes, channels, short_side;
    uint64_t records_offset, names_offset, names_bytes, file_bytes, pack_id;
    uint32_t records_crc, names_crc;
} keel_shard_header;

void keel_shard_header_encode(const keel_shard_header *h, uint8_t out[KEEL_PACK_HEADER_BYTES]);

typedef struct keel_shard {
    char *path;
    keel_shard_header header;
    const uint8_t *map;   /* the whole file, read-only */
    size_t map_bytes;
    int64_t first;        /* dataset index of its first image */
} keel_shard;

/* ---- the dataset ----------------------------------------------------------- */

typedef enum keel_image_source { KEEL_SOURCE_FILES, KEEL_SOURCE_PACKED } keel_image_source;

struct keel_image_dataset {
    keel_image_source source;
    int64_t count;
    int classes;
    int short_side;
    char **class_names;      /* classes entries, or NULL */
    int32_t *labels;         /* count */

    /* files: the paths, NUL-terminated, in one block */
    char *path_chars;
    int64_t *path_offsets;   /* count */

    /* packed */
    keel_shard *shards;
    int shard_count;

    /* Corrupt files: a flag per sample, set once by whichever thread meets
     * the file first, so each is counted and reported once. */
    atomic_uchar *bad;
    atomic_llong corrupt;
    keel_image_warn_fn warn;
    void *warn_user;
    pthread_mutex_t warn_mutex;
};

/* An empty dataset with the options' warning callback. */
keel_status keel_image_dataset_new(keel_image_dataset **out, keel_image_source source, const keel_image_open_opts *opts);
/* Allocates labels and bad flags once count is known. */
keel_status keel_image_dataset_finish(keel_image_dataset *d);
/* Reads sample `index` with a thread's decoder. A failing file is flagged,
 * counted and reported once, and the error returned. */
keel_status keel_image_dataset_read_with(keel_image_dataset *d, keel_decoder *dec, int64_t index, int short_side,
                                         keel_image *img);
keel_status keel_packed_view(const keel_image_dataset *d, int64_t index, keel_image *img);
void keel_packed_close(keel_image_dataset *d);
bool keel_is_shard_file(const char *path);
bool keel_dir_has_shards(const char *dir);

/* ---- augmentation internals ------------------------------------------------ */

/* keel_augment_apply with caller scratch; mean_scaled, when not NULL, is
 * mean_image / std (3 x crop x crop), precomputed by the loader. */
keel_status keel_augment_apply_with(const keel_augment_opts *opts, const keel_image *img, const keel_crop *crop,
                                    const float *mean_scaled, keel_image *resized, keel_resample_scratch *scratch,
                                    float *out);
keel_status keel_augment_check(const keel_augment_opts *opts);
/* The per-view seed the loader uses. */
uint64_t keel_augment_seed(uint64_t seed, int64_t epoch, int64_t index);

#endif
