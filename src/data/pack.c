/* Packed shards: writing them (keel_image_pack) and memory-mapping them.
 *
 * Decoding a JPEG costs milliseconds; copying a crop out of an already
 * decoded image costs microseconds. Packing pays the decode once, so a host
 * with few cores can keep a fast GPU busy. The byte layout is described in
 * image_internal.h. */
#include "data/image_internal.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* ---- little-endian fields --------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static uint32_t crc(const uint8_t *p, size_t n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    while (n > 0) {
        uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, p, chunk);
        p += chunk;
        n -= chunk;
    }
    return (uint32_t)c;
}

void keel_shard_header_encode(const keel_shard_header *h, uint8_t out[KEEL_PACK_HEADER_BYTES])
{
    memset(out, 0, KEEL_PACK_HEADER_BYTES);
    memcpy(out, KEEL_PACK_MAGIC, 8);
    put32(out + 8, h->version);
    put32(out + 12, KEEL_PACK_HEADER_BYTES);
    put32(out + 16, h->shard_index);
    put32(out + 20, h->shard_count);
    put64(out + 24, h->count);
    put64(out + 32, h->total_count);
    put32(out + 40, h->classes);
    put32(out + 44, h->channels);
    put32(out + 48, h->short_side);
    put64(out + 56, h->records_offset);
    put64(out + 64, h->names_offset);
    put64(out + 72, h->names_bytes);
    put64(out + 80, h->file_bytes);
    put64(out + 88, h->pack_id);
    put32(out + 96, h->records_crc);
    put32(out + 100, h->names_crc);
    put32(out + 124, crc(out, 124));
}

static void decode_header(const uint8_t *b, keel_shard_header *h)
{
    h->version = get32(b + 8);
    h->shard_index = get32(b + 16);
    h->shard_count = get32(b + 20);
    h->count = get64(b + 24);
    h->total_count = get64(b + 32);
    h->classes = get32(b + 40);
    h->channels = get32(b + 44);
    h->short_side = get32(b + 48);
    h->records_offset = get64(b + 56);
    h->names_offset = get64(b + 64);
    h->names_bytes = get64(b + 72);
    h->file_bytes = get64(b + 80);
    h->pack_id = get64(b + 88);
    h->records_crc = get32(b + 96);
    h->names_crc = get32(b + 100);
}

/* ---- reading ------------------------------------------------------------- */

static bool has_shard_name(const char *name)
{
    size_t n = strlen(name), e = strlen(KEEL_PACK_EXTENSION);
    return name[0] != '.' && n > e && strcmp(name + n - e, KEEL_PACK_EXTENSION) == 0;
}

bool keel_is_shard_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    char magic[8];
    bool yes = fread(magic, 1, 8, f) == 8 && memcmp(magic, KEEL_PACK_MAGIC, 8) == 0;
    fclose(f);
    return yes;
}

static keel_status list_shards(const char *dir, char ***names, int *count)
{
    *names = NULL;
    *count = 0;
    DIR *h = opendir(dir);
    if (!h)
        return keel_fail(KEEL_ERR_IO, "cannot open the folder %s: %s", dir, strerror(errno));
    int cap = 0;
    struct dirent *e;
    keel_status st = KEEL_OK;
    while ((e = readdir(h)) != NULL) {
        if (!has_shard_name(e->d_name))
            continue;
        if (*count == cap) {
            cap = cap ? 2 * cap : 16;
            char **grown = realloc(*names, (size_t)cap * sizeof *grown);
            if (!grown) {
                st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot list %s", dir);
                break;
            }
            *names = grown;
        }
        size_t n = strlen(dir) + strlen(e->d_name) + 2;
        char *path = malloc(n);
        if (!path) {
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot list %s", dir);
            break;
        }
        snprintf(path, n, "%s/%s", dir, e->d_name);
        (*names)[(*count)++] = path;
    }
    closedir(h);
    return st;
}

static void free_names(char **names, int count)
{
    for (int i = 0; i < count; i++)
        free(names[i]);
    free(names);
}

bool keel_dir_has_shards(const char *dir)
{
    char **names;
    int count;
    bool yes = list_shards(dir, &names, &count) == KEEL_OK && count > 0;
    free_names(names, count);
    return yes;
}

static keel_status check_records(const keel_shard *s)
{
    const keel_shard_header *h = &s->header;
    const uint8_t *records = s->map + h->records_offset;
    for (uint64_t i = 0; i < h->count; i++) {
        const uint8_t *r = records + i * KEEL_PACK_RECORD_BYTES;
        uint64_t offset = get64(r);
        uint64_t height = get32(r + 8), width = get32(r + 12);
        int32_t label = (int32_t)get32(r + 16);
        uint64_t bytes = height * width * 3;
        if (height == 0 || width == 0 || height > 65535 || width > 65535 || offset < KEEL_PACK_HEADER_BYTES ||
            offset > h->records_offset || bytes > h->records_offset - offset)
            return keel_fail(KEEL_ERR_FORMAT, "%s: image %llu (%llux%llu at byte %llu) lies outside the pixel area",
                             s->path, (unsigned long long)i, (unsigned long long)width, (unsigned long long)height,
                             (unsigned long long)offset);
        if (label < 0 || (uint32_t)label >= h->classes)
            return keel_fail(KEEL_ERR_FORMAT, "%s: image %llu has label %d outside [0, %u)", s->path,
                             (unsigned long long)i, label, h->classes);
    }
    return KEEL_OK;
}

static keel_status check_header(const keel_shard *s, const uint8_t *b, uint64_t size)
{
    const keel_shard_header *h = &s->header;
    if (memcmp(b, KEEL_PACK_MAGIC, 8) != 0)
        return keel_fail(KEEL_ERR_FORMAT, "%s is not a Keel shard (its first bytes are not \"KEELPACK\")", s->path);
    if (h->version != KEEL_PACK_VERSION)
        return keel_fail(KEEL_ERR_FORMAT, "%s is shard format version %u; this libkeel reads version %u", s->path,
                         h->version, KEEL_PACK_VERSION);
    if (get32(b + 124) != crc(b, 124))
        return keel_fail(KEEL_ERR_FORMAT, "%s: the header's checksum does not match (the file is damaged)", s->path);
    if (size < h->file_bytes)
        return keel_fail(KEEL_ERR_FORMAT, "%s is truncated: %llu bytes of the %llu its header records (pack it again)",
                         s->path, (unsigned long long)size, (unsigned long long)h->file_bytes);
    if (size > h->file_bytes)
        return keel_fail(KEEL_ERR_FORMAT, "%s has %llu bytes, more than the %llu its header records", s->path,
                         (unsigned long long)size, (unsigned long long)h->file_bytes);
    uint64_t records_end = h->records_offset + h->count * KEEL_PACK_RECORD_BYTES;
    if (h->channels != 3 || h->classes == 0 || h->shard_count == 0 || h->shard_index >= h->shard_count ||
        h->count > (size >> 4) || h->records_offset < KEEL_PACK_HEADER_BYTES || h->records_offset > size || records_end > h->names_offset ||
        h->names_offset > size || h->names_bytes > size - h->names_offset)
        return keel_fail(KEEL_ERR_FORMAT, "%s: the header's counts and offsets are inconsistent (the file is damaged)",
                         s->path);
    if (crc(s->map + h->records_offset, h->count * KEEL_PACK_RECORD_BYTES) != h->records_crc ||
        crc(s->map + h->names_offset, h->names_bytes) != h->names_crc)
        return keel_fail(KEEL_ERR_FORMAT, "%s: the image table's checksum does not match (the file is damaged)",
                         s->path);
    return check_records(s);
}

static keel_status open_shard(keel_shard *s, const char *path)
{
    s->path = keel_strdup(path);
    if (!s->path)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a path");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return keel_fail(KEEL_ERR_IO, "cannot open the shard %s: %s", path, strerror(errno));
    struct stat info;
    if (fstat(fd, &info) != 0) {
        close(fd);
        return keel_fail(KEEL_ERR_IO, "cannot read %s: %s", path, strerror(errno));
    }
    uint64_t size = (uint64_t)info.st_size;
    if (size < KEEL_PACK_HEADER_BYTES) {
        close(fd);
        return keel_fail(KEEL_ERR_FORMAT, "%s is truncated: %llu bytes, shorter than the %d-byte shard header", path,
                         (unsigned long long)size, KEEL_PACK_HEADER_BYTES);
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return keel_fail(KEEL_ERR_IO, "cannot memory-map %s: %s", path, strerror(errno));
    s->map = map;
    s->map_bytes = (size_t)size;
    decode_header(s->map, &s->header);
    /* No MADV_RANDOM: an image is a few hundred contiguous kilobytes, which
     * the kernel's readahead fetches in a few requests from a cold disk. */
    return check_header(s, s->map, size);
}

void keel_packed_close(keel_image_dataset *d)
{
    for (int i = 0; i < d->shard_count; i++) {
        if (d->shards[i].map)
            munmap((void *)d->shards[i].map, d->shards[i].map_bytes);
        free(d->shards[i].path);
    }
    free(d->shards);
    d->shards = NULL;
    d->shard_count = 0;
}

static int compare_shards(const void *a, const void *b)
{
    const keel_shard *x = a, *y = b;
    return x->header.shard_index < y->header.shard_index ? -1 : x->header.shard_index > y->header.shard_index;
}

/* The shards of a directory must be exactly one pack: the same id, and every
 * index from 0 to count - 1 once. */
static keel_status check_complete(const keel_image_dataset *d, const char *dir)
{
    const keel_shard_header *first = &d->shards[0].header;
    for (int i = 0; i < d->shard_count; i++) {
        const keel_shard_header *h = &d->shards[i].header;
        if (h->pack_id != first->pack_id || h->shard_count != first->shard_count)
            return keel_fail(KEEL_ERR_FORMAT, "%s holds shards of two different packs (%s and %s); remove the stale ones",
                             dir, d->shards[0].path, d->shards[i].path);
        if (h->shard_index != (uint32_t)i)
            return keel_fail(KEEL_ERR_FORMAT, "%s: shard %d of %u is missing (or duplicated)", dir, i,
                             first->shard_count);
    }
    if ((uint32_t)d->shard_count != first->shard_count)
        return keel_fail(KEEL_ERR_FORMAT, "%s: shard %d of %u is missing", dir, d->shard_count, first->shard_count);
    if ((uint64_t)d->count != first->total_count)
        return keel_fail(KEEL_ERR_FORMAT, "%s: the shards hold %lld images, their headers %llu", dir,
                         (long long)d->count, (unsigned long long)first->total_count);
    return KEEL_OK;
}

static keel_status copy_names(keel_image_dataset *d)
{
    const keel_shard *s = &d->shards[0];
    if (s->header.names_bytes == 0)
        return KEEL_OK;
    const char *p = (const char *)s->map + s->header.names_offset;
    const char *end = p + s->header.names_bytes;
    d->class_names = calloc((size_t)d->classes, sizeof *d->class_names);
    if (!d->class_names)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate class names");
    for (int c = 0; c < d->classes; c++) {
        const char *nul = memchr(p, '\0', (size_t)(end - p));
        if (!nul)
            return keel_fail(KEEL_ERR_FORMAT, "%s: the class names are cut short", s->path);
        d->class_names[c] = keel_strdup(p);
        if (!d->class_names[c])
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate class names");
        p = nul + 1;
    }
    return KEEL_OK;
}

static keel_status index_shards(keel_image_dataset *d, bool whole_pack, const char *path)
{
    qsort(d->shards, (size_t)d->shard_count, sizeof *d->shards, compare_shards);
    d->count = 0;
    for (int i = 0; i < d->shard_count; i++) {
        const keel_shard_header *h = &d->shards[i].header;
        if (h->classes != d->shards[0].header.classes || h->short_side != d->shards[0].header.short_side)
            return keel_fail(KEEL_ERR_FORMAT, "%s and %s disagree on classes or short side", d->shards[0].path,
                             d->shards[i].path);
        d->shards[i].first = d->count;
        d->count += (int64_t)h->count;
    }
    if (whole_pack) {
        keel_status st = check_complete(d, path);
        if (st != KEEL_OK)
            return st;
    }
    if (d->count == 0)
        return keel_fail(KEEL_ERR_FORMAT, "%s holds no images", path);
    d->classes = (int)d->shards[0].header.classes;
    d->short_side = (int)d->shards[0].header.short_side;
    d->labels = malloc((size_t)d->count * sizeof *d->labels);
    if (!d->labels)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %lld labels", (long long)d->count);
    for (int i = 0; i < d->shard_count; i++) {
        const keel_shard *s = &d->shards[i];
        for (uint64_t r = 0; r < s->header.count; r++)
            d->labels[s->first + (int64_t)r] =
                (int32_t)get32(s->map + s->header.records_offset + r * KEEL_PACK_RECORD_BYTES + 16);
    }
    return copy_names(d);
}

static keel_status open_packed(keel_image_dataset *d, const char *path)
{
    struct stat info;
    if (stat(path, &info) != 0)
        return keel_fail(KEEL_ERR_IO, "cannot open the shards %s: %s", path, strerror(errno));
    char **names = NULL;
    int count = 0;
    bool whole_pack = S_ISDIR(info.st_mode);
    keel_status st = KEEL_OK;
    if (whole_pack) {
        st = list_shards(path, &names, &count);
        if (st == KEEL_OK && count == 0)
            st = keel_fail(KEEL_ERR_FORMAT, "%s holds no *%s shards (write them with keel pack)", path,
                           KEEL_PACK_EXTENSION);
    } else {
        names = malloc(sizeof *names);
        if (names && (names[0] = keel_strdup(path)))
            count = 1;
        else
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a path");
    }
    if (st == KEEL_OK) {
        d->shards = calloc((size_t)count, sizeof *d->shards);
        if (!d->shards)
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %d shards", count);
    }
    for (int i = 0; st == KEEL_OK && i < count; i++) {
        d->shard_count = i + 1;
        st = open_shard(&d->shards[i], names[i]);
    }
    free_names(names, count);
    if (st == KEEL_OK)
        st = index_shards(d, whole_pack, path);
    return st;
}

keel_status keel_image_dataset_open_packed(keel_image_dataset **out, const char *path,
                                           const keel_image_open_opts *opts)
{
    if (!out || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_image_dataset_open_packed: out and path must not be NULL");
    *out = NULL;
    keel_image_dataset *d;
    keel_status st = keel_image_dataset_new(&d, KEEL_SOURCE_PACKED, opts);
    if (st != KEEL_OK)
        return st;
    st = open_packed(d, path);
    if (st == KEEL_OK)
        st = keel_image_dataset_finish(d);
    if (st != KEEL_OK) {
        keel_image_dataset_free(d);
        return st;
    }
    *out = d;
    return KEEL_OK;
}

keel_status keel_packed_view(const keel_image_dataset *d, int64_t index, keel_image *img)
{
    int lo = 0, hi = d->shard_count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (d->shards[mid].first <= index)
            lo = mid;
        else
            hi = mid - 1;
    }
    const keel_shard *s = &d->shards[lo];
    const uint8_t *r = s->map + s->header.records_offset + (uint64_t)(index - s->first) * KEEL_PACK_RECORD_BYTES;
    keel_image_release(img);
    img->pixels = (uint8_t *)(s->map + get64(r));
    img->height = (int)get32(r + 8);
    img->width = (int)get32(r + 12);
    img->channels = 3;
    img->capacity = 0;
    return KEEL_OK;
}

/* ---- writing ------------------------------------------------------------- */

typedef struct pack_item {
    keel_image image;
    bool ok;
} pack_item;

typedef struct pack_job {
    keel_image_dataset *src;
    int short_side;
    pack_item *items;
    int64_t first, count;  /* the chunk of source indices being decoded */
    atomic_llong next;
    keel_status fatal;     /* out of memory: stops the pack */
    char fatal_message[512];
    pthread_mutex_t mutex;
} pack_job;

typedef struct pack_worker {
    pack_job *job;
    keel_decoder decoder;
    pthread_t thread;
} pack_worker;

static void *decode_chunk(void *arg)
{
    pack_worker *w = arg;
    pack_job *job = w->job;
    for (;;) {
        int64_t i = atomic_fetch_add(&job->next, 1);
        if (i >= job->count)
            break;
        pack_item *item = &job->items[i];
        keel_status st = keel_image_dataset_read_with(job->src, &w->decoder, job->first + i, job->short_side,
                                                      &item->image);
        item->ok = st == KEEL_OK;
        if (st == KEEL_ERR_OUT_OF_MEMORY) {
            pthread_mutex_lock(&job->mutex);
            if (job->fatal == KEEL_OK) {
                job->fatal = st;
                snprintf(job->fatal_message, sizeof job->fatal_message, "%s", keel_last_error());
            }
            pthread_mutex_unlock(&job->mutex);
        }
    }
    return NULL;
}

/* Decodes source indices [first, first + count) on every worker (the
 * caller's thread being the first). */
static keel_status run_chunk(pack_job *job, pack_worker *workers, int worker_count, int64_t first, int64_t count)
{
    job->first = first;
    job->count = count;
    atomic_store(&job->next, 0);
    int started = 1;
    for (int t = 1; t < worker_count; t++) {
        if (pthread_create(&workers[t].thread, NULL, decode_chunk, &workers[t]) != 0)
            break;
        started++;
    }
    decode_chunk(&workers[0]);
    for (int t = 1; t < started; t++)
        pthread_join(workers[t].thread, NULL);
    if (job->fatal != KEEL_OK)
        return keel_fail(job->fatal, "%s", job->fatal_message);
    return KEEL_OK;
}

typedef struct shard_writer {
    const char *out_dir;
    int shard_count;
    keel_shard_header *headers;
    char **tmp_paths;
    FILE *file;
    int current;           /* the shard being written, -1 before the first */
    uint64_t offset;       /* bytes written to it */
    uint8_t *records;
    size_t records_cap;
    const uint8_t *names;  /* the class names block, same in every shard */
    size_t names_bytes;
    uint64_t pack_hash;
} shard_writer;

static char *shard_path(const char *dir, int index, int count, bool tmp)
{
    size_t n = strlen(dir) + 64;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%sshard-%05d-of-%05d%s", dir, tmp ? "." : "", index, count,
                 tmp ? KEEL_PACK_EXTENSION ".tmp" : KEEL_PACK_EXTENSION);
    return p;
}

static keel_status write_bytes(shard_writer *w, const void *data, size_t n)
{
    if (n && fwrite(data, 1, n, w->file) != n)
        return keel_fail(KEEL_ERR_IO, "cannot write %s: %s", w->tmp_paths[w->current], strerror(errno));
    w->offset += n;
    return KEEL_OK;
}

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

static keel_status begin_shard(shard_writer *w, int index, const keel_image_dataset *src, int short_side)
{
    w->tmp_paths[index] = shard_path(w->out_dir, index, w->shard_count, true);
    if (!w->tmp_paths[index])
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a path");
    w->current = index;
    w->file = fopen(w->tmp_paths[index], "wb");
    if (!w->file)
        return keel_fail(KEEL_ERR_IO, "cannot create %s: %s", w->tmp_paths[index], strerror(errno));
    setvbuf(w->file, NULL, _IOFBF, 1 << 20);
    keel_shard_header *h = &w->headers[index];
    memset(h, 0, sizeof *h);
    h->version = KEEL_PACK_VERSION;
    h->shard_index = (uint32_t)index;
    h->shard_count = (uint32_t)w->shard_count;
    h->classes = (uint32_t)src->classes;
    h->channels = 3;
    h->short_side = (uint32_t)short_side;
    w->offset = 0;
    uint8_t blank_header[KEEL_PACK_HEADER_BYTES] = {0};
    return write_bytes(w, blank_header, sizeof blank_header);
}

static keel_status add_image(shard_writer *w, const keel_image *img, int32_t label)
{
    keel_shard_header *h = &w->headers[w->current];
    size_t need = (size_t)(h->count + 1) * KEEL_PACK_RECORD_BYTES;
    if (need > w->records_cap) {
        size_t cap = w->records_cap ? 2 * w->records_cap : 4096 * KEEL_PACK_RECORD_BYTES;
        uint8_t *grown = realloc(w->records, cap);
        if (!grown)
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot grow the image table of %s", w->tmp_paths[w->current]);
        w->records = grown;
        w->records_cap = cap;
    }
    uint8_t *r = w->records + h->count * KEEL_PACK_RECORD_BYTES;
    memset(r, 0, KEEL_PACK_RECORD_BYTES);
    put64(r, w->offset);
    put32(r + 8, (uint32_t)img->height);
    put32(r + 12, (uint32_t)img->width);
    put32(r + 16, (uint32_t)label);
    h->count++;
    return write_bytes(w, img->pixels, (size_t)img->height * img->width * 3);
}

/* Appends the image table and the names; the header is written once every
 * shard is complete (it carries the pack id). */
static keel_status end_shard(shard_writer *w)
{
    keel_shard_header *h = &w->headers[w->current];
    size_t records_bytes = (size_t)h->count * KEEL_PACK_RECORD_BYTES;
    h->records_offset = w->offset;
    h->records_crc = crc(w->records, records_bytes);
    keel_status st = write_bytes(w, w->records, records_bytes);
    h->names_offset = w->offset;
    h->names_bytes = w->names_bytes;
    h->names_crc = crc(w->names, w->names_bytes);
    if (st == KEEL_OK)
        st = write_bytes(w, w->names, w->names_bytes);
    h->file_bytes = w->offset;
    w->pack_hash = fnv1a(w->pack_hash, w->records, records_bytes);
    w->pack_hash = fnv1a(w->pack_hash, (const uint8_t *)&h->count, sizeof h->count);
    if (fflush(w->file) != 0 || fsync(fileno(w->file)) != 0)
        st = st != KEEL_OK ? st : keel_fail(KEEL_ERR_IO, "cannot write %s: %s", w->tmp_paths[w->current], strerror(errno));
    if (fclose(w->file) != 0 && st == KEEL_OK)
        st = keel_fail(KEEL_ERR_IO, "cannot write %s: %s", w->tmp_paths[w->current], strerror(errno));
    w->file = NULL;
    return st;
}

static keel_status write_header(const char *path, keel_shard_header *h)
{
    uint8_t bytes[KEEL_PACK_HEADER_BYTES];
    keel_shard_header_encode(h, bytes);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return keel_fail(KEEL_ERR_IO, "cannot reopen %s: %s", path, strerror(errno));
    bool ok = pwrite(fd, bytes, sizeof bytes, 0) == (ssize_t)sizeof bytes && fsync(fd) == 0;
    int err = errno;
    close(fd);
    if (!ok)
        return keel_fail(KEEL_ERR_IO, "cannot write the header of %s: %s", path, strerror(err));
    return KEEL_OK;
}

/* Shards of an earlier pack would mix with the new ones: remove them just
 * before the new ones take their place. */
static keel_status remove_old_shards(const char *dir)
{
    char **names;
    int count;
    keel_status st = list_shards(dir, &names, &count);
    for (int i = 0; st == KEEL_OK && i < count; i++) {
        if (unlink(names[i]) != 0)
            st = keel_fail(KEEL_ERR_IO, "cannot remove the old shard %s: %s", names[i], strerror(errno));
    }
    free_names(names, count);
    return st;
}

static keel_status publish(shard_writer *w)
{
    for (int s = 0; s < w->shard_count; s++) {
        w->headers[s].pack_id = w->pack_hash;
        uint64_t total = 0;
        for (int t = 0; t < w->shard_count; t++)
            total += w->headers[t].count;
        w->headers[s].total_count = total;
        keel_status st = write_header(w->tmp_paths[s], &w->headers[s]);
        if (st != KEEL_OK)
            return st;
    }
    keel_status st = remove_old_shards(w->out_dir);
    for (int s = 0; st == KEEL_OK && s < w->shard_count; s++) {
        char *final_path = shard_path(w->out_dir, s, w->shard_count, false);
        if (!final_path)
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a path");
        if (rename(w->tmp_paths[s], final_path) != 0)
            st = keel_fail(KEEL_ERR_IO, "cannot rename %s to %s: %s", w->tmp_paths[s], final_path, strerror(errno));
        free(final_path);
    }
    return st;
}

static keel_status make_names(const keel_image_dataset *src, uint8_t **names, size_t *bytes)
{
    *names = NULL;
    *bytes = 0;
    if (!src->class_names)
        return KEEL_OK;
    size_t total = 0;
    for (int c = 0; c < src->classes; c++)
        total += strlen(src->class_names[c]) + 1;
    *names = malloc(total);
    if (!*names)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate class names");
    uint8_t *p = *names;
    for (int c = 0; c < src->classes; c++) {
        size_t n = strlen(src->class_names[c]) + 1;
        memcpy(p, src->class_names[c], n);
        p += n;
    }
    *bytes = total;
    return KEEL_OK;
}

static keel_status check_pack_args(keel_image_dataset *src, const char *out_dir, const keel_pack_opts *opts)
{
    if (!src || !out_dir || !opts)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_image_pack: source, output folder and options are required");
    if (src->source != KEEL_SOURCE_FILES)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_image_pack: the source is already packed; pack the folder");
    if (opts->short_side <= 0 || opts->short_side > 65535)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the short side must be in [1, 65535], got %d", opts->short_side);
    if (opts->shards < 1 || opts->shards > 99999 || opts->shards > src->count)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "cannot cut %lld images into %d shards", (long long)src->count,
                         opts->shards);
    if (opts->workers < 0 || opts->workers > 1024)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the worker count must be in [0, 1024], got %d", opts->workers);
    if (mkdir(out_dir, 0777) != 0 && errno != EEXIST)
        return keel_fail(KEEL_ERR_IO, "cannot create the folder %s: %s", out_dir, strerror(errno));
    struct stat info;
    if (stat(out_dir, &info) != 0 || !S_ISDIR(info.st_mode))
        return keel_fail(KEEL_ERR_IO, "%s is not a folder", out_dir);
    return KEEL_OK;
}

/* Writes the decoded chunk in source order, starting shards as their
 * contiguous ranges begin. */
static keel_status write_chunk(shard_writer *w, pack_job *job, const keel_image_dataset *src, int short_side,
                               int64_t *packed)
{
    for (int64_t i = 0; i < job->count; i++) {
        int64_t index = job->first + i;
        int shard = (int)(index * w->shard_count / src->count);
        keel_status st = KEEL_OK;
        while (w->current < shard && st == KEEL_OK) {
            if (w->current >= 0)
                st = end_shard(w);
            if (st == KEEL_OK)
                st = begin_shard(w, w->current + 1, src, short_side);
        }
        if (st == KEEL_OK && job->items[i].ok) {
            st = add_image(w, &job->items[i].image, src->labels[index]);
            (*packed)++;
        }
        if (st != KEEL_OK)
            return st;
    }
    return KEEL_OK;
}

static keel_status pack_all(keel_image_dataset *src, const keel_pack_opts *opts, shard_writer *w, pack_job *job,
                            pack_worker *workers, int worker_count, int64_t chunk, int64_t *packed)
{
    keel_status st = KEEL_OK;
    for (int64_t first = 0; st == KEEL_OK && first < src->count; first += chunk) {
        int64_t count = src->count - first < chunk ? src->count - first : chunk;
        st = run_chunk(job, workers, worker_count, first, count);
        if (st == KEEL_OK)
            st = write_chunk(w, job, src, opts->short_side, packed);
        if (st == KEEL_OK && opts->progress)
            opts->progress(first + count, src->count, opts->progress_user);
    }
    /* Trailing shards whose every image was corrupt still exist, empty. */
    while (st == KEEL_OK && w->current < w->shard_count - 1) {
        st = end_shard(w);
        if (st == KEEL_OK)
            st = begin_shard(w, w->current + 1, src, opts->short_side);
    }
    if (st == KEEL_OK)
        st = end_shard(w);
    if (st == KEEL_OK && *packed == 0)
        st = keel_fail(KEEL_ERR_FORMAT, "none of the %lld images could be decoded (each was reported as skipped)",
                       (long long)src->count);
    if (st == KEEL_OK)
        st = publish(w);
    return st;
}

keel_status keel_image_pack(keel_image_dataset *src, const char *out_dir, const keel_pack_opts *opts, int64_t *packed)
{
    keel_status st = check_pack_args(src, out_dir, opts);
    if (st != KEEL_OK)
        return st;
    int worker_count = opts->workers > 0 ? opts->workers : 1;
    int64_t chunk = 32 * (int64_t)worker_count;
    shard_writer w = {.out_dir = out_dir, .shard_count = opts->shards, .current = -1,
                      .pack_hash = 0xCBF29CE484222325ull};
    pack_job job = {.src = src, .short_side = opts->short_side};
    atomic_init(&job.next, 0);
    pthread_mutex_init(&job.mutex, NULL);
    w.headers = calloc((size_t)w.shard_count, sizeof *w.headers);
    w.tmp_paths = calloc((size_t)w.shard_count, sizeof *w.tmp_paths);
    job.items = calloc((size_t)chunk, sizeof *job.items);
    pack_worker *workers = calloc((size_t)worker_count, sizeof *workers);
    uint8_t *names = NULL;
    int64_t written = 0;
    if (!w.headers || !w.tmp_paths || !job.items || !workers)
        st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate the packing state");
    if (st == KEEL_OK)
        st = make_names(src, &names, &w.names_bytes);
    w.names = names;
    for (int t = 0; st == KEEL_OK && t < worker_count; t++)
        workers[t].job = &job;
    if (st == KEEL_OK)
        st = pack_all(src, opts, &w, &job, workers, worker_count, chunk, &written);
    if (w.file)
        fclose(w.file);
    for (int s = 0; w.tmp_paths && s < w.shard_count; s++) {
        if (w.tmp_paths[s] && st != KEEL_OK)
            unlink(w.tmp_paths[s]);
        free(w.tmp_paths[s]);
    }
    for (int64_t i = 0; job.items && i < chunk; i++)
        keel_image_release(&job.items[i].image);
    for (int t = 0; workers && t < worker_count; t++)
        keel_decoder_release(&workers[t].decoder);
    pthread_mutex_destroy(&job.mutex);
    free(workers);
    free(job.items);
    free(w.tmp_paths);
    free(w.headers);
    free(w.records);
    free(names);
    if (packed)
        *packed = st == KEEL_OK ? written : 0;
    return st;
}
