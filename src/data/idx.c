/* IDX files, the format of MNIST and Fashion-MNIST: a big-endian magic
 * 0x000008NN (unsigned bytes, NN dimensions), NN big-endian uint32 sizes,
 * then the bytes. zlib's gzread reads gzip-compressed and raw files alike,
 * so the two magic bytes of gzip decide the format, not the file name. */
#include "data/data_internal.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define IDX_LABELS_MAGIC 0x00000801u
#define IDX_IMAGES_MAGIC 0x00000803u
#define MNIST_CLASSES 10
/* Deflate cannot compress better than about 1032:1; a header that claims
 * more data than that is corrupt, and is refused before allocating. */
#define DEFLATE_MAX_RATIO 1032u

typedef struct idx_file {
    uint32_t dims[3];
    uint8_t *data; /* dims[0] * dims[1] * dims[2] bytes (dims beyond ndim are 1) */
    size_t bytes;
} idx_file;

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static const char *idx_kind(uint32_t magic)
{
    return magic == IDX_IMAGES_MAGIC ? "image" : "label";
}

/* Reads up to n bytes, looping over gzread's int-sized chunks, and returns
 * the count read; it stops early at the end of the file or at a zlib error
 * (a truncated gzip stream), which gz_error_text then describes. */
static long long read_gz(gzFile gz, void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        size_t chunk = n - done < (1u << 30) ? n - done : (1u << 30);
        int got = gzread(gz, (unsigned char *)buf + done, (unsigned)chunk);
        if (got <= 0)
            break;
        done += (size_t)got;
    }
    return (long long)done;
}

/* zlib's message for the last error, without the "path: " zlib puts in
 * front (our messages name the file already); "" when there is none. */
static const char *gz_error_text(gzFile gz, const char *path)
{
    int code = Z_OK;
    const char *text = gzerror(gz, &code);
    if (code == Z_OK || !text)
        return "";
    size_t n = strlen(path);
    if (strncmp(text, path, n) == 0 && text[n] == ':' && text[n + 1] == ' ')
        text += n + 2;
    return text;
}

static keel_status read_magic_and_dims(gzFile gz, const char *path, uint32_t want_magic, idx_file *f,
                                       size_t *header_bytes)
{
    unsigned char head[16];
    long long got = read_gz(gz, head, 4);
    if (got != 4) {
        const char *why = gz_error_text(gz, path);
        if (why[0])
            return keel_fail(KEEL_ERR_FORMAT, "%s: corrupt gzip data: zlib: %s", path, why);
        return keel_fail(KEEL_ERR_FORMAT, "%s: too short for an IDX header (got %lld bytes)", path, got);
    }
    uint32_t magic = be32(head);
    if (magic != want_magic) {
        bool other = magic == IDX_IMAGES_MAGIC || magic == IDX_LABELS_MAGIC;
        return keel_fail(KEEL_ERR_FORMAT, "%s: bad magic 0x%08x, expected 0x%08x (an IDX %s file)%s", path, magic,
                         want_magic, idx_kind(want_magic),
                         other ? (magic == IDX_IMAGES_MAGIC ? "; this is an image file" : "; this is a label file") : "");
    }
    int ndim = (int)(magic & 0xff);
    got = read_gz(gz, head + 4, (size_t)ndim * 4);
    if (got != ndim * 4)
        return keel_fail(KEEL_ERR_FORMAT, "%s: truncated IDX header: expected %d bytes, got %lld", path, 4 + ndim * 4,
                         4 + got);
    f->dims[0] = f->dims[1] = f->dims[2] = 1;
    for (int i = 0; i < ndim; i++)
        f->dims[i] = be32(head + 4 + 4 * i);
    *header_bytes = 4 + (size_t)ndim * 4;
    return KEEL_OK;
}

/* The data size the header claims, checked against what the file can hold. */
static keel_status check_claimed_size(gzFile gz, const char *path, const idx_file *f, size_t header_bytes,
                                      size_t file_size, size_t *bytes)
{
    if (f->dims[0] == 0 || f->dims[1] == 0 || f->dims[2] == 0 || f->dims[1] > 65536 || f->dims[2] > 65536)
        return keel_fail(KEEL_ERR_FORMAT, "%s: implausible IDX sizes %u x %u x %u", path, f->dims[0], f->dims[1],
                         f->dims[2]);
    uint64_t claimed = (uint64_t)f->dims[0] * f->dims[1] * f->dims[2];
    if (gzdirect(gz)) {
        size_t have = file_size > header_bytes ? file_size - header_bytes : 0;
        if (claimed > have)
            return keel_fail(KEEL_ERR_FORMAT, "%s: truncated: expected %llu bytes of data after the %zu-byte header, got %zu",
                             path, (unsigned long long)claimed, header_bytes, have);
    } else if (claimed > (uint64_t)file_size * DEFLATE_MAX_RATIO) {
        return keel_fail(KEEL_ERR_FORMAT,
                         "%s: the header claims %llu bytes of data, more than %zu compressed bytes can hold; the file is truncated or corrupt",
                         path, (unsigned long long)claimed, file_size);
    }
    *bytes = (size_t)claimed;
    return KEEL_OK;
}

static keel_status read_body(gzFile gz, const char *path, idx_file *f, size_t header_bytes)
{
    f->data = malloc(f->bytes ? f->bytes : 1);
    if (!f->data)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes", path, f->bytes);
    long long got = read_gz(gz, f->data, f->bytes);
    if ((size_t)got != f->bytes) {
        const char *why = gz_error_text(gz, path);
        if (why[0])
            return keel_fail(KEEL_ERR_FORMAT,
                             "%s: truncated or corrupt: expected %zu bytes of data after the %zu-byte header, got %lld before zlib failed: %s",
                             path, f->bytes, header_bytes, got, why);
        return keel_fail(KEEL_ERR_FORMAT, "%s: truncated: expected %zu bytes of data after the %zu-byte header, got %lld",
                         path, f->bytes, header_bytes, got);
    }
    /* Reading on into the gzip trailer verifies its CRC and length, so a
     * damaged or cut stream fails even when every data byte came out. */
    unsigned char extra;
    if (!gzdirect(gz) && gzread(gz, &extra, 1) < 0)
        return keel_fail(KEEL_ERR_FORMAT, "%s: corrupt gzip stream after the data: %s", path, gz_error_text(gz, path));
    if (!gzdirect(gz) && gz_error_text(gz, path)[0])
        return keel_fail(KEEL_ERR_FORMAT, "%s: truncated gzip stream after the data: %s", path, gz_error_text(gz, path));
    return KEEL_OK;
}

static keel_status idx_read(const char *path, uint32_t want_magic, idx_file *f)
{
    memset(f, 0, sizeof *f);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return keel_fail(KEEL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return keel_fail(KEEL_ERR_IO, "%s: not a regular file", path);
    gzFile gz = gzopen(path, "rb");
    if (!gz)
        return keel_fail(KEEL_ERR_IO, "%s: cannot open: %s", path, errno ? strerror(errno) : "out of memory");
    size_t header_bytes = 0;
    keel_status st = read_magic_and_dims(gz, path, want_magic, f, &header_bytes);
    if (st == KEEL_OK)
        st = check_claimed_size(gz, path, f, header_bytes, (size_t)sb.st_size, &f->bytes);
    if (st == KEEL_OK)
        st = read_body(gz, path, f, header_bytes);
    gzclose(gz);
    if (st != KEEL_OK) {
        free(f->data);
        f->data = NULL;
    }
    return st;
}

keel_status keel_dataset_load_idx(keel_dataset **out, const char *images_path, const char *labels_path)
{
    if (!out || !images_path || !labels_path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_dataset_load_idx: out and both paths must not be NULL");
    *out = NULL;
    idx_file images, labels;
    keel_status st = idx_read(images_path, IDX_IMAGES_MAGIC, &images);
    if (st != KEEL_OK)
        return st;
    st = idx_read(labels_path, IDX_LABELS_MAGIC, &labels);
    if (st != KEEL_OK) {
        free(images.data);
        return st;
    }
    if (images.dims[0] != labels.dims[0]) {
        free(images.data);
        free(labels.data);
        return keel_fail(KEEL_ERR_FORMAT, "%s has %u images but %s has %u labels", images_path, images.dims[0],
                         labels_path, labels.dims[0]);
    }
    keel_dataset *d;
    st = keel_dataset_alloc(&d, images.dims[0], 1, (int)images.dims[1], (int)images.dims[2], MNIST_CLASSES,
                            images.data);
    if (st == KEEL_OK) {
        for (uint32_t i = 0; i < labels.dims[0]; i++)
            d->labels[i] = labels.data[i];
        st = keel_dataset_check_labels(d, labels_path);
        if (st != KEEL_OK)
            keel_dataset_free(d);
    }
    free(labels.data);
    if (st == KEEL_OK)
        *out = d;
    return st;
}

static bool is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* dir/name, or dir/name.gz when only that exists. */
static keel_status find_idx(const char *dir, const char *name, bool default_dir, char *path, size_t size)
{
    snprintf(path, size, "%s/%s", dir, name);
    if (is_file(path))
        return KEEL_OK;
    snprintf(path, size, "%s/%s.gz", dir, name);
    if (is_file(path))
        return KEEL_OK;
    return keel_fail(KEEL_ERR_IO, "%s: neither %s nor %s.gz is there%s", dir, name, name,
                     default_dir ? "; reinstall with `apt-get install dataset-fashion-mnist` or pass --data DIR" : "");
}

keel_status keel_dataset_load_mnist_dir(keel_dataset **out, const char *dir, bool train)
{
    if (!out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_dataset_load_mnist_dir: out must not be NULL");
    *out = NULL;
    bool default_dir = !dir || strcmp(dir, KEEL_FASHION_MNIST_DIR) == 0;
    if (!dir)
        dir = KEEL_FASHION_MNIST_DIR;
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        if (default_dir)
            return keel_fail(KEEL_ERR_IO,
                             "Fashion-MNIST not found: %s does not exist; install it with `apt-get install dataset-fashion-mnist` or pass --data DIR",
                             dir);
        return keel_fail(KEEL_ERR_IO, "%s: no such dataset directory (pass --data DIR with the MNIST or Fashion-MNIST files)",
                         dir);
    }
    const char *prefix = train ? "train" : "t10k";
    char image_name[64], label_name[64];
    snprintf(image_name, sizeof image_name, "%s-images-idx3-ubyte", prefix);
    snprintf(label_name, sizeof label_name, "%s-labels-idx1-ubyte", prefix);
    size_t size = strlen(dir) + 80;
    char *images_path = malloc(size), *labels_path = malloc(size);
    keel_status st;
    if (!images_path || !labels_path)
        st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate file names");
    else if ((st = find_idx(dir, image_name, default_dir, images_path, size)) == KEEL_OK &&
             (st = find_idx(dir, label_name, default_dir, labels_path, size)) == KEEL_OK)
        st = keel_dataset_load_idx(out, images_path, labels_path);
    free(images_path);
    free(labels_path);
    return st;
}
