/* Datasets and batch loaders. A dataset holds its images in memory as the
 * bytes the files store (a quarter of float32) with int32 labels, and turns
 * them into normalised float32 NCHW when a batch is assembled; a loader cuts
 * it into seeded, shuffled mini-batches, assembled by a prefetch thread
 * while the current step runs. */
#ifndef KEEL_DATA_H
#define KEEL_DATA_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_dataset keel_dataset;

/* Where Debian's dataset-fashion-mnist package installs the files. */
#define KEEL_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

/* IDX files (MNIST's format), gzip-compressed or raw, detected by content.
 * Pixels are scaled to [0, 1]. Labels must lie in [0, 10) (the MNIST
 * family); the images and labels must be equally many. */
keel_status keel_dataset_load_idx(keel_dataset **out, const char *images_path, const char *labels_path);
/* MNIST or Fashion-MNIST in `dir` (NULL: KEEL_FASHION_MNIST_DIR):
 * train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] (train) or
 * t10k-* (test). */
keel_status keel_dataset_load_mnist_dir(keel_dataset **out, const char *dir, bool train);
/* CIFAR-10 binary version in `dir`: data_batch_1..5.bin (train) or
 * test_batch.bin (test). Pixels scaled to [0, 1]. */
keel_status keel_dataset_load_cifar10(keel_dataset **out, const char *dir, bool train);
/* A dataset from memory: `count` images of channels x height x width bytes
 * (NCHW; byte / 255 is the pixel) and labels in [0, classes); both copied. */
keel_status keel_dataset_from_u8(keel_dataset **out, int64_t count, int channels, int height, int width,
                                 int classes, const uint8_t *pixels, const int32_t *labels);
void keel_dataset_free(keel_dataset *d);

int64_t keel_dataset_size(const keel_dataset *d);
void keel_dataset_image_shape(const keel_dataset *d, int *channels, int *height, int *width);
int keel_dataset_classes(const keel_dataset *d);
/* Keeps only the first `count` samples (a quick subset for tests); a count
 * above the size keeps everything. Call it before creating loaders. */
keel_status keel_dataset_truncate(keel_dataset *d, int64_t count);
/* Per-channel mean and standard deviation of the pixels (arrays of C). */
keel_status keel_dataset_channel_stats(const keel_dataset *d, float *mean, float *std);
/* Loaders return (x - mean[c]) / std[c]; NULL restores raw [0, 1] pixels.
 * Set it before creating loaders: loaders read the dataset concurrently. */
keel_status keel_dataset_set_normalization(keel_dataset *d, const float *mean, const float *std);
/* Sample i: image (C*H*W floats, normalised) and label. */
keel_status keel_dataset_get(const keel_dataset *d, int64_t index, float *image, int32_t *label);

typedef struct keel_loader keel_loader;

typedef struct keel_loader_opts {
    int64_t batch;      /* required */
    bool shuffle;       /* a new permutation each epoch, from seed and epoch */
    uint64_t seed;
    bool drop_last;     /* skip a final partial batch (training) */
    bool no_prefetch;   /* assemble batches on the caller's thread */
    /* Data parallelism: with shard_count > 1, batch k of this loader holds
     * samples [(k*shard_count + shard_index)*batch, +batch) of the epoch's
     * order, so ranks that share seed and epoch see disjoint shards of one
     * global batch. Needs drop_last. 0 means one shard. */
    int shard_count, shard_index;
} keel_loader_opts;

keel_status keel_loader_create(keel_loader **out, const keel_dataset *d, const keel_loader_opts *opts);
void keel_loader_destroy(keel_loader *l);
/* Starts epoch `epoch` (0-based): its order is a function of seed and epoch
 * alone, so a resumed run sees the same batches. */
keel_status keel_loader_start_epoch(keel_loader *l, int64_t epoch);
/* The next batch: `images` {batch, C, H, W} and `labels` {batch}, valid
 * until the next call. *count is the number of real samples (< batch only
 * for a final partial batch, whose tail is zero-padded with label 0);
 * *count == 0 at the end of the epoch. */
keel_status keel_loader_next(keel_loader *l, const float **images, const int32_t **labels, int64_t *count);
/* Batches in one epoch. */
int64_t keel_loader_batches(const keel_loader *l);

/* ==== Image datasets (ImageNet scale) ========================================
 * Files on disk, decoded by worker threads while the GPU trains: an image
 * folder in ImageNet's layout, a Caffe-style list file, or packed shards
 * (`keel pack`) that hold the decoded pixels and are memory-mapped. A loader
 * over any of them crops, mirrors, colours and normalises each image the way
 * the AlexNet and ResNet papers did, and hands out float32 NCHW batches.
 *
 * Pixels are RGB, 8 bits, interleaved (height x width x 3): what the decoders
 * give and what the shards store. Grey, palette, 16-bit and CMYK files are
 * converted to it; an alpha channel is dropped, as PIL's convert("RGB"). */

typedef struct keel_image {
    int height, width;
    int channels;      /* always 3 (RGB) */
    uint8_t *pixels;   /* height x width x channels bytes */
    size_t capacity;   /* bytes owned at `pixels`; 0 for a view into a shard */
} keel_image;

/* Frees what the image owns and zeroes it. A zeroed keel_image is empty and
 * may be passed to keel_image_load, which grows its buffer as needed. */
void keel_image_release(keel_image *img);
/* Decodes a JPEG (libjpeg-turbo) or PNG (libpng) file, recognised by its
 * content. short_side > 0 resizes so the shorter side is short_side and the
 * longer one floor(short_side * long / short) (torchvision's Resize), with
 * JPEGs first reduced in the DCT domain to the smallest libjpeg-turbo scale
 * that is still at least that size; 0 keeps the file's size. */
keel_status keel_image_load(keel_image *img, const char *path, int short_side);
/* Writes a JPEG (quality 1..100) or a PNG (quality ignored), chosen by the
 * extension (.jpg / .jpeg / .png), atomically. For tests, tools and looking
 * at what the augmentation made. */
keel_status keel_image_save(const keel_image *img, const char *path, int quality);

typedef struct keel_image_dataset keel_image_dataset;

/* Called with one line per corrupt or unreadable image ("skipping unreadable
 * image /data/train/n01/x.JPEG: Not a JPEG file"), once per image, from
 * whichever thread met it; calls are serialised by the dataset. */
typedef void (*keel_image_warn_fn)(const char *message, void *user);

typedef struct keel_image_open_opts {
    int short_side;          /* folders and lists: decode to this shorter side
                                (0: keep each file's size); shards: ignored,
                                they hold the size they were packed at */
    const char *root;        /* lists: the folder the paths are relative to
                                (NULL: the folder holding the list file) */
    int classes;             /* lists: labels must lie in [0, classes)
                                (0: the largest label + 1) */
    keel_image_warn_fn warn; /* NULL: count corrupt images silently */
    void *warn_user;
} keel_image_open_opts;

/* ImageNet's train/ layout: one sub-folder per class, classes numbered in
 * the sorted order of their folder names and files sorted within each, as
 * torchvision's ImageFolder does; sub-folders are searched recursively and
 * files ending in .jpg, .jpeg or .png (any case) are taken. A missing root,
 * a root without class folders or a class folder without images is an
 * error. Nothing is decoded here: a corrupt file is found by the loader,
 * counted, named through `warn` and skipped. */
keel_status keel_image_dataset_open_folder(keel_image_dataset **out, const char *root,
                                           const keel_image_open_opts *opts);
/* A Caffe list file, one "path label" per line (the label is the last
 * whitespace-separated field, so paths may hold spaces; blank lines are
 * skipped): ImageNet's val/ with its label file. A malformed line is an
 * error naming the file, the line number and the text. */
keel_status keel_image_dataset_open_list(keel_image_dataset **out, const char *list_path,
                                         const keel_image_open_opts *opts);
/* Packed shards written by keel_image_pack: a directory (every *.keelpack in
 * it, which must form one complete pack) or a single shard file. Each shard
 * is checked (magic, version, checksums, size against its header, every
 * record inside the file) and memory-mapped; a truncated or damaged shard
 * is an error that names it. */
keel_status keel_image_dataset_open_packed(keel_image_dataset **out, const char *path,
                                           const keel_image_open_opts *opts);
/* Any of the three, by what `path` is: a directory of *.keelpack shards or a
 * shard file opens packed, another directory as a folder, another file as
 * a list. */
keel_status keel_image_dataset_open(keel_image_dataset **out, const char *path, const keel_image_open_opts *opts);
void keel_image_dataset_free(keel_image_dataset *d);

int64_t keel_image_dataset_size(const keel_image_dataset *d);
int keel_image_dataset_classes(const keel_image_dataset *d);
bool keel_image_dataset_is_packed(const keel_image_dataset *d);
/* The folder name of class `c` (folders, and shards packed from one); NULL
 * when the source had no names (lists) or c is out of range. */
const char *keel_image_dataset_class_name(const keel_image_dataset *d, int c);
int32_t keel_image_dataset_label(const keel_image_dataset *d, int64_t index);
/* The file of sample `index` (folders and lists); NULL for shards. */
const char *keel_image_dataset_path(const keel_image_dataset *d, int64_t index);
/* Sample `index` at the dataset's short side. A file is decoded into img's
 * buffer (grown as needed); a packed sample becomes a view into the mapping
 * (capacity 0, valid while the dataset lives; a buffer img owned is freed
 * first). A corrupt file fails here (KEEL_ERR_FORMAT or KEEL_ERR_IO) and is
 * counted. */
keel_status keel_image_dataset_read(keel_image_dataset *d, int64_t index, keel_image *img);
/* Distinct corrupt or unreadable images met so far (by loaders, packing or
 * reads). */
int64_t keel_image_dataset_corrupt(const keel_image_dataset *d);

/* ---- packed shards --------------------------------------------------------
 * `keel pack SRC OUT --short-side 256 --shards N`: every image decoded once,
 * resized to the short side, and stored as uint8 RGB in N shard files
 * OUT/shard-00000-of-0000N.keelpack. A shard holds a 128-byte header
 * (magic "KEELPACK", version, counts, classes, short side, offsets, CRC-32s),
 * the pixels, a table of (offset, height, width, label) per image and the
 * class names; see src/data/image_internal.h for the byte layout. Images keep
 * the source's order, shard s taking the s-th contiguous N-th of it; corrupt
 * images are counted, named through the source's `warn` and left out. Shards
 * are written under temporary names and renamed when all are complete;
 * shards of an earlier pack in OUT are removed. The output depends on the
 * source alone, not on the worker count. */
typedef struct keel_pack_opts {
    int short_side;  /* > 0; 256 for the AlexNet and ResNet recipes */
    int shards;      /* >= 1 */
    int workers;     /* decoding threads; 0: one */
    void (*progress)(int64_t done, int64_t total, void *user); /* NULL: none */
    void *progress_user;
} keel_pack_opts;

/* Packs `src` (a folder or list dataset) into `out_dir`, created if missing.
 * *packed (may be NULL) receives the number of images written. */
keel_status keel_image_pack(keel_image_dataset *src, const char *out_dir, const keel_pack_opts *opts,
                            int64_t *packed);

/* ---- augmentation ---------------------------------------------------------
 * Each view of an image is a crop box (possibly resized to crop_size, possibly
 * mirrored), then x = pixel / 255 + lighting[c], then
 *   (x - mean[c]) / std[c]            or, with a mean image,
 *   (x - mean_image[c][y][x]) / std[c].
 * The modes:
 *   RANDOM          AlexNet: a crop_size square at a uniform position.
 *   RANDOM_RESIZED  ResNet (torchvision's RandomResizedCrop): area a uniform
 *                   fraction in [scale_min, scale_max] of the image, aspect
 *                   ratio log-uniform in [ratio_min, ratio_max], 10 tries,
 *                   then the centre crop of the clamped ratio; the box is
 *                   resized to crop_size with a bilinear filter that widens
 *                   when shrinking (PIL's, as torchvision uses).
 *   CENTER          evaluation: the centre square, offsets rounded as
 *                   torchvision's CenterCrop ((d / 2) rounded half to even).
 *   TEN             evaluation (AlexNet's test-time ensemble): 10 views in
 *                   torchvision's TenCrop order: 0 top-left, 1 top-right,
 *                   2 bottom-left, 3 bottom-right, 4 centre, then 5..9 the
 *                   same five mirrored.
 * `mirror` flips the random modes horizontally with probability 1/2.
 * Lighting is AlexNet's PCA colour noise: alpha_i ~ N(0, lighting_std) per
 * view, lighting = eigvec * (alpha .* eigval) with ImageNet's RGB eigenpairs
 * (KEEL_IMAGENET_EIGVAL/EIGVEC), in [0, 1] pixel units; 0 turns it off. */
typedef enum keel_crop_mode {
    KEEL_CROP_RANDOM = 0,
    KEEL_CROP_RANDOM_RESIZED,
    KEEL_CROP_CENTER,
    KEEL_CROP_TEN,
} keel_crop_mode;

#define KEEL_IMAGENET_MEAN {0.485f, 0.456f, 0.406f}
#define KEEL_IMAGENET_STD {0.229f, 0.224f, 0.225f}
#define KEEL_IMAGENET_EIGVAL {0.2175f, 0.0188f, 0.0045f}
/* Rows are R, G, B; column i is the eigenvector of eigval[i]. */
#define KEEL_IMAGENET_EIGVEC {{-0.5675f, 0.7192f, 0.4009f}, {-0.5808f, -0.0045f, -0.8140f}, {-0.5836f, -0.6948f, 0.4203f}}

typedef struct keel_augment_opts {
    keel_crop_mode mode;
    int crop_size;             /* 224 (ResNet, VGG) or 227 (AlexNet, CaffeNet) */
    bool mirror;               /* random modes: horizontal flip, p = 1/2 */
    float scale_min, scale_max;/* RANDOM_RESIZED: area fraction, 0.08 and 1 */
    float ratio_min, ratio_max;/* RANDOM_RESIZED: aspect ratio, 3/4 and 4/3 */
    float mean[3];             /* in [0, 1] pixel units */
    float std[3];              /* > 0; 1/255 gives Caffe's 0..255 scale */
    const float *mean_image;   /* NULL, or 3 x crop_size x crop_size in [0, 1]
                                  units, replacing mean[]; copied by loaders */
    float lighting_std;        /* 0.1 in AlexNet; 0: off */
} keel_augment_opts;

/* ImageNet mean and std, crop 224, mirror on for the random modes, the
 * RandomResizedCrop ranges, no lighting. */
keel_augment_opts keel_augment_defaults(keel_crop_mode mode);
/* Views per image: 10 for TEN, otherwise 1. */
int keel_augment_views(const keel_augment_opts *opts);

/* Where one view of one image comes from. */
typedef struct keel_crop {
    int x, y, width, height;   /* the box in the source image */
    bool mirror;
    float lighting[3];         /* RGB offset added in [0, 1] units */
} keel_crop;

/* The crop of view `view` of a height x width image. The random choices are
 * a function of `seed` alone (loaders derive it from their seed, the epoch,
 * the sample and the view). An image smaller than crop_size in the RANDOM,
 * CENTER and TEN modes is an error naming both sizes. */
keel_status keel_augment_crop(const keel_augment_opts *opts, int height, int width, uint64_t seed, int view,
                              keel_crop *crop);
/* Writes the view as 3 x crop_size x crop_size floats (CHW). */
keel_status keel_augment_apply(const keel_augment_opts *opts, const keel_image *img, const keel_crop *crop,
                               float *out);

/* ---- image loader: worker threads, bounded queue --------------------------
 * `workers` threads decode and augment samples into a ring of queue_depth + 1
 * batch buffers: the caller holds one, the workers fill up to queue_depth
 * ahead, all of them on the same batch first. A sample's views depend on
 * (seed, epoch, sample index) alone, and the order on (seed, epoch), so the
 * batches are identical for any number of workers (0: the caller's thread
 * assembles each batch when asked). A corrupt file is counted, reported
 * through the dataset's `warn` once, and replaced by the next readable sample
 * in dataset order, so batches stay full; pack the dataset to drop such
 * files for good. Batch buffers come from `host_alloc` when set, so the
 * CUDA backend can pass pinned memory (cudaHostAlloc) and copy batches to
 * the device asynchronously. */
typedef void *(*keel_host_alloc_fn)(size_t bytes, void *user);
typedef void (*keel_host_free_fn)(void *ptr, void *user);

typedef struct keel_image_loader_opts {
    int64_t batch;          /* samples per batch; required */
    int workers;            /* decoding threads; 0: the caller's thread */
    int queue_depth;        /* batches prepared ahead; 0: 2 */
    bool shuffle;           /* a new order each epoch from seed and epoch */
    bool drop_last;         /* skip a final partial batch (training) */
    uint64_t seed;
    keel_augment_opts augment;
    keel_host_alloc_fn host_alloc; /* NULL: 64-byte aligned malloc */
    keel_host_free_fn host_free;
    void *host_user;
    /* Data parallelism, as keel_loader_opts: with shard_count > 1, batch k
     * holds samples [(k*shard_count + shard_index)*batch, +batch) of the
     * epoch's order, so ranks that share seed and epoch see disjoint shards
     * of one global batch. Needs drop_last. 0 means one shard. */
    int shard_count, shard_index;
} keel_image_loader_opts;

typedef struct keel_image_loader keel_image_loader;

/* The dataset must outlive the loader; several loaders may share it. */
keel_status keel_image_loader_create(keel_image_loader **out, keel_image_dataset *d,
                                     const keel_image_loader_opts *opts);
void keel_image_loader_destroy(keel_image_loader *l);
keel_status keel_image_loader_start_epoch(keel_image_loader *l, int64_t epoch);
/* The next batch: `images` {batch * views, 3, crop, crop}, the views of
 * sample i at rows i * views .. i * views + views - 1, and `labels` {batch};
 * valid until the next call. *count is the number of real samples (fewer
 * only in a final partial batch, whose tail is zero with label 0); 0 at the
 * end of the epoch. start_epoch hands every buffer back to the workers; a
 * page-locked batch given to keel_plan_set_input stays in use until the next
 * forward pass, which the next call here follows in a training loop. */
keel_status keel_image_loader_next(keel_image_loader *l, const float **images, const int32_t **labels,
                                   int64_t *count);
int64_t keel_image_loader_batches(const keel_image_loader *l);
int keel_image_loader_views(const keel_image_loader *l);

/* The mean of the centre crops (crop_size, at the dataset's short side) of
 * every image, 3 x crop_size x crop_size in [0, 1] units: Caffe's mean image
 * for keel_augment_opts.mean_image. */
keel_status keel_image_dataset_mean_image(keel_image_dataset *d, int crop_size, int workers, float *mean_image);

/* ---- top-1 / top-5 error (ILSVRC) -----------------------------------------
 * Logits of `views` crops per sample, sample-major ({samples * views,
 * classes}, the loader's order); the softmax probabilities of a sample's
 * views are averaged (AlexNet's ten-crop ensemble) and the label counts as
 * within the top k when fewer than k classes score above it (ties go to the
 * lower class index, as argmax). */
typedef struct keel_topk {
    int64_t samples;
    int64_t top1_errors;
    int64_t top5_errors;
} keel_topk;

keel_status keel_topk_update(keel_topk *acc, const float *logits, int64_t samples, int views, int classes,
                             const int32_t *labels);
/* Error rates in [0, 1]; 0 for no samples. */
double keel_topk_top1_error(const keel_topk *acc);
double keel_topk_top5_error(const keel_topk *acc);

#ifdef __cplusplus
}
#endif
#endif
