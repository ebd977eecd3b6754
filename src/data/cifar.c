/* CIFAR-10, binary version: each file is a run of 3073-byte records, one
 * label byte then a 32x32 image as 1024 red, 1024 green and 1024 blue bytes
 * (already channel-major, as the dataset stores it). */
#include "data/data_internal.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CIFAR_SIDE 32
#define CIFAR_IMAGE_BYTES (3 * CIFAR_SIDE * CIFAR_SIDE)
#define CIFAR_RECORD_BYTES (1 + CIFAR_IMAGE_BYTES)
#define CIFAR_CLASSES 10
#define CIFAR_TRAIN_FILES 5

typedef struct cifar_files {
    int count;
    char *paths[CIFAR_TRAIN_FILES];
    int64_t records[CIFAR_TRAIN_FILES];
} cifar_files;

static void free_files(cifar_files *files)
{
    for (int i = 0; i < files->count; i++)
        free(files->paths[i]);
}

static bool is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* The record count of one file, from its size. */
static keel_status count_records(const char *path, int64_t *records)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return keel_fail(KEEL_ERR_IO,
                         "%s: cannot open: %s (the CIFAR-10 binary version has data_batch_1.bin .. data_batch_5.bin and test_batch.bin)",
                         path, strerror(errno));
    int64_t size = (int64_t)sb.st_size;
    if (size == 0 || size % CIFAR_RECORD_BYTES != 0)
        return keel_fail(KEEL_ERR_FORMAT,
                         "%s: %lld bytes is not a whole number of %d-byte CIFAR-10 records (1 label byte + %d pixel bytes); the file is truncated or not CIFAR-10",
                         path, (long long)size, CIFAR_RECORD_BYTES, CIFAR_IMAGE_BYTES);
    *records = size / CIFAR_RECORD_BYTES;
    return KEEL_OK;
}

/* The files of the split, with `dir/cifar-10-batches-bin` (what the archive
 * unpacks to) accepted in place of `dir`. */
static keel_status list_files(const char *dir, bool train, cifar_files *files)
{
    memset(files, 0, sizeof *files);
    size_t size = strlen(dir) + 64;
    char *probe = malloc(size);
    if (!probe)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate file names");
    snprintf(probe, size, "%s/cifar-10-batches-bin", dir);
    const char *base = is_dir(probe) ? probe : dir;
    keel_status st = KEEL_OK;
    int n = train ? CIFAR_TRAIN_FILES : 1;
    for (int i = 0; i < n && st == KEEL_OK; i++) {
        files->paths[i] = malloc(size + 32);
        if (!files->paths[i]) {
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate file names");
            break;
        }
        files->count++;
        if (train)
            snprintf(files->paths[i], size + 32, "%s/data_batch_%d.bin", base, i + 1);
        else
            snprintf(files->paths[i], size + 32, "%s/test_batch.bin", base);
        st = count_records(files->paths[i], &files->records[i]);
    }
    free(probe);
    return st;
}

static keel_status read_records(keel_dataset *d, const char *path, int64_t first, int64_t records)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return keel_fail(KEEL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    keel_status st = KEEL_OK;
    for (int64_t i = 0; i < records; i++) {
        unsigned char label;
        uint8_t *image = d->pixels + (first + i) * CIFAR_IMAGE_BYTES;
        if (fread(&label, 1, 1, f) != 1 || fread(image, 1, CIFAR_IMAGE_BYTES, f) != CIFAR_IMAGE_BYTES) {
            st = keel_fail(KEEL_ERR_FORMAT, "%s: truncated: expected %lld bytes, the read stopped in record %lld", path,
                           (long long)records * CIFAR_RECORD_BYTES, (long long)i);
            break;
        }
        if (label >= CIFAR_CLASSES) {
            st = keel_fail(KEEL_ERR_FORMAT, "%s: label %u of record %lld is outside [0, %d)", path, label, (long long)i,
                           CIFAR_CLASSES);
            break;
        }
        d->labels[first + i] = label;
    }
    fclose(f);
    return st;
}

keel_status keel_dataset_load_cifar10(keel_dataset **out, const char *dir, bool train)
{
    if (!out || !dir)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_dataset_load_cifar10: out and dir must not be NULL");
    *out = NULL;
    if (!is_dir(dir))
        return keel_fail(KEEL_ERR_IO, "%s: no such CIFAR-10 directory (pass --data DIR with the binary version's .bin files)",
                         dir);
    cifar_files files;
    keel_status st = list_files(dir, train, &files);
    int64_t total = 0;
    for (int i = 0; st == KEEL_OK && i < files.count; i++)
        total += files.records[i];
    keel_dataset *d = NULL;
    if (st == KEEL_OK)
        st = keel_dataset_alloc(&d, total, 3, CIFAR_SIDE, CIFAR_SIDE, CIFAR_CLASSES, NULL);
    int64_t first = 0;
    for (int i = 0; st == KEEL_OK && i < files.count; i++) {
        st = read_records(d, files.paths[i], first, files.records[i]);
        first += files.records[i];
    }
    free_files(&files);
    if (st != KEEL_OK) {
        keel_dataset_free(d);
        return st;
    }
    *out = d;
    return KEEL_OK;
}
