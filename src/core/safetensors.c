/* safetensors reader and writer (see safetensors.h for the format). The
 * header is JSON parsed by cJSON; every number and offset in it comes from
 * an untrusted file and is checked against the file before any use. */
#include "core/safetensors.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c copies little-endian data as is and needs a little-endian host"
#endif

/* The reference implementation refuses headers above 100 MB. */
#define ST_MAX_HEADER 100000000u
/* JSON numbers are doubles: integers above 2^53 are not exact. */
#define ST_MAX_EXACT 9007199254740992.0

static const struct {
    const char *name;
    size_t size;
} dtype_table[] = {
    [KEEL_ST_BOOL] = {"BOOL", 1}, [KEEL_ST_U8] = {"U8", 1},     [KEEL_ST_I8] = {"I8", 1},
    [KEEL_ST_U16] = {"U16", 2},   [KEEL_ST_I16] = {"I16", 2},   [KEEL_ST_F16] = {"F16", 2},
    [KEEL_ST_BF16] = {"BF16", 2}, [KEEL_ST_U32] = {"U32", 4},   [KEEL_ST_I32] = {"I32", 4},
    [KEEL_ST_F32] = {"F32", 4},   [KEEL_ST_U64] = {"U64", 8},   [KEEL_ST_I64] = {"I64", 8},
    [KEEL_ST_F64] = {"F64", 8},
};
#define DTYPE_COUNT (sizeof dtype_table / sizeof dtype_table[0])

static bool dtype_valid(keel_st_dtype dtype)
{
    return (unsigned)dtype < DTYPE_COUNT;
}

size_t keel_st_dtype_size(keel_st_dtype dtype)
{
    return dtype_valid(dtype) ? dtype_table[dtype].size : 0;
}

const char *keel_st_dtype_name(keel_st_dtype dtype)
{
    return dtype_valid(dtype) ? dtype_table[dtype].name : "?";
}

keel_st_dtype keel_st_dtype_of(keel_dtype dtype)
{
    return dtype == KEEL_I32 ? KEEL_ST_I32 : KEEL_ST_F32;
}

static bool dtype_from_name(const char *name, keel_st_dtype *out)
{
    for (size_t i = 0; i < DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_table[i].name) == 0) {
            *out = (keel_st_dtype)i;
            return true;
        }
    }
    return false;
}

/* numel and byte size of a shape, false on overflow. */
static bool shape_bytes(int ndim, const int64_t *shape, size_t elem_size, int64_t *numel, size_t *bytes)
{
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        uint64_t dim = (uint64_t)shape[i];
        if (shape[i] < 0 || (dim != 0 && n > (uint64_t)INT64_MAX / 16 / dim))
            return false;
        n *= dim;
    }
    *numel = (int64_t)n;
    *bytes = (size_t)n * elem_size;
    return true;
}

static const char *shape_text(char *buf, size_t size, int ndim, const int64_t *shape)
{
    return keel_shape_str(buf, size, ndim, shape);
}

/* ==== writer ================================================================ */

typedef struct st_entry {
    char *name;
    keel_st_dtype dtype;
    int ndim;
    int64_t shape[KEEL_ST_MAX_DIMS];
    size_t bytes;
    const void *data;
    void *owned; /* the copy made by add_copy / add_tensor, else NULL */
} st_entry;

typedef struct st_pair {
    char *key;
    char *value;
} st_pair;

struct keel_st_writer {
    st_entry *entries;
    size_t count, capacity;
    st_pair *meta;
    size_t meta_count, meta_capacity;
};

keel_status keel_st_writer_new(keel_st_writer **out)
{
    if (!out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_st_writer_new: out must not be NULL");
    *out = calloc(1, sizeof **out);
    if (!*out)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a safetensors writer");
    return KEEL_OK;
}

void keel_st_writer_free(keel_st_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->count; i++) {
        free(w->entries[i].name);
        keel_aligned_free(w->entries[i].owned);
    }
    for (size_t i = 0; i < w->meta_count; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->entries);
    free(w->meta);
    free(w);
}

static bool grow(void **items, size_t *capacity, size_t count, size_t item_size)
{
    if (count < *capacity)
        return true;
    size_t next = *capacity ? *capacity * 2 : 16;
    void *p = realloc(*items, next * item_size);
    if (!p)
        return false;
    *items = p;
    *capacity = next;
    return true;
}

static keel_status check_new_entry(const keel_st_writer *w, const char *name, keel_st_dtype dtype, int ndim,
                                   const int64_t *shape)
{
    if (!w || !name || !name[0] || strcmp(name, "__metadata__") == 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "safetensors: a tensor needs a non-empty name other than __metadata__");
    if (!dtype_valid(dtype))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "safetensors: tensor '%s' has an unknown dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > KEEL_ST_MAX_DIMS || (ndim > 0 && !shape))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "safetensors: tensor '%s' has %d dimensions (0 to %d allowed)", name,
                         ndim, KEEL_ST_MAX_DIMS);
    for (size_t i = 0; i < w->count; i++)
        if (strcmp(w->entries[i].name, name) == 0)
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "safetensors: tensor '%s' was added twice", name);
    return KEEL_OK;
}

/* Appends an entry; the data pointer is set by the caller. */
static keel_status append_entry(keel_st_writer *w, const char *name, keel_st_dtype dtype, int ndim,
                                const int64_t *shape, st_entry **out)
{
    keel_status st = check_new_entry(w, name, dtype, ndim, shape);
    if (st != KEEL_OK)
        return st;
    int64_t numel;
    size_t bytes;
    if (!shape_bytes(ndim, shape, keel_st_dtype_size(dtype), &numel, &bytes)) {
        char buf[160];
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "safetensors: tensor '%s' has an impossible shape %s", name,
                         shape_text(buf, sizeof buf, ndim, shape));
    }
    if (!grow((void **)&w->entries, &w->capacity, w->count, sizeof *w->entries))
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "safetensors: cannot grow the tensor list");
    st_entry *e = &w->entries[w->count];
    memset(e, 0, sizeof *e);
    e->name = keel_strdup(name);
    if (!e->name)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "safetensors: cannot copy the name '%s'", name);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    e->bytes = bytes;
    w->count++;
    *out = e;
    return KEEL_OK;
}

/* Removes the last entry again after a failure to fill it. */
static void drop_last_entry(keel_st_writer *w)
{
    st_entry *e = &w->entries[--w->count];
    free(e->name);
    keel_aligned_free(e->owned);
}

keel_status keel_st_writer_add(keel_st_writer *w, const char *name, keel_st_dtype dtype, int ndim,
                               const int64_t *shape, const void *data)
{
    st_entry *e;
    keel_status st = append_entry(w, name, dtype, ndim, shape, &e);
    if (st != KEEL_OK)
        return st;
    if (!data && e->bytes) {
        drop_last_entry(w);
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "safetensors: tensor '%s' has no data", name);
    }
    e->data = data;
    return KEEL_OK;
}

keel_status keel_st_writer_add_copy(keel_st_writer *w, const char *name, keel_st_dtype dtype, int ndim,
                                    const int64_t *shape, const void *data)
{
    keel_status st = keel_st_writer_add(w, name, dtype, ndim, shape, data);
    if (st != KEEL_OK)
        return st;
    st_entry *e = &w->entries[w->count - 1];
    e->owned = keel_aligned_alloc(e->bytes);
    if (!e->owned) {
        drop_last_entry(w);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "safetensors: cannot copy tensor '%s' (%zu bytes)", name, e->bytes);
    }
    if (e->bytes)
        memcpy(e->owned, data, e->bytes);
    e->data = e->owned;
    return KEEL_OK;
}

/* Copies a 4-byte-element strided tensor into row-major order. */
static void gather(const keel_tensor *t, uint32_t *dst)
{
    int64_t numel = keel_tensor_numel(t);
    int64_t index[KEEL_MAX_DIMS] = {0};
    const uint32_t *src = t->data;
    for (int64_t i = 0; i < numel; i++) {
        int64_t offset = 0;
        for (int d = 0; d < t->ndim; d++)
            offset += index[d] * t->strides[d];
        dst[i] = src[offset];
        for (int d = t->ndim - 1; d >= 0 && ++index[d] == t->shape[d]; d--)
            index[d] = 0;
    }
}

keel_status keel_st_writer_add_tensor(keel_st_writer *w, const char *name, const keel_tensor *t)
{
    if (!t || (t->dtype != KEEL_F32 && t->dtype != KEEL_I32) || t->ndim < 0 || t->ndim > KEEL_MAX_DIMS)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "safetensors: tensor '%s' must be a float32 or int32 keel tensor",
                         name ? name : "(null)");
    if (keel_tensor_is_contiguous(t))
        return keel_st_writer_add_copy(w, name, keel_st_dtype_of(t->dtype), t->ndim, t->shape, t->data);
    st_entry *e;
    keel_status st = append_entry(w, name, keel_st_dtype_of(t->dtype), t->ndim, t->shape, &e);
    if (st != KEEL_OK)
        return st;
    e->owned = keel_aligned_alloc(e->bytes);
    if (!e->owned) {
        drop_last_entry(w);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "safetensors: cannot copy tensor '%s' (%zu bytes)", name, e->bytes);
    }
    gather(t, e->owned);
    e->data = e->owned;
    return KEEL_OK;
}

keel_status keel_st_writer_set_metadata(keel_st_writer *w, const char *key, const char *value)
{
    if (!w || !key || !value)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "safetensors: metadata needs a key and a value");
    char *copy = keel_strdup(value);
    if (!copy)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "safetensors: cannot copy metadata '%s'", key);
    for (size_t i = 0; i < w->meta_count; i++) {
        if (strcmp(w->meta[i].key, key) == 0) {
            free(w->meta[i].value);
            w->meta[i].value = copy;
            return KEEL_OK;
        }
    }
    char *key_copy = keel_strdup(key);
    if (!key_copy || !grow((void **)&w->meta, &w->meta_capacity, w->meta_count, sizeof *w->meta)) {
        free(key_copy);
        free(copy);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "safetensors: cannot store metadata '%s'", key);
    }
    w->meta[w->meta_count++] = (st_pair){key_copy, copy};
    return KEEL_OK;
}

keel_status keel_st_writer_set_metadataf(keel_st_writer *w, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "safetensors: bad format for metadata '%s'", key ? key : "(null)");
    char *value = malloc((size_t)n + 1);
    if (!value)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "safetensors: cannot format metadata '%s'", key ? key : "(null)");
    va_start(ap, fmt);
    vsnprintf(value, (size_t)n + 1, fmt, ap);
    va_end(ap);
    keel_status st = keel_st_writer_set_metadata(w, key, value);
    free(value);
    return st;
}

/* Layout order: insertion order within each element size, largest first, so
 * each tensor starts at a multiple of its element size. */
static size_t *layout_order(const keel_st_writer *w)
{
    size_t *order = malloc((w->count ? w->count : 1) * sizeof *order);
    if (!order)
        return NULL;
    size_t n = 0;
    for (size_t size = 8; size >= 1; size /= 2)
        for (size_t i = 0; i < w->count; i++)
            if (keel_st_dtype_size(w->entries[i].dtype) == size)
                order[n++] = i;
    return order;
}

static cJSON *json_raw_int(uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    return cJSON_CreateRaw(buf);
}

static cJSON *json_int_array(size_t n, const uint64_t *values)
{
    cJSON *array = cJSON_CreateArray();
    for (size_t i = 0; array && i < n; i++) {
        cJSON *item = json_raw_int(values[i]);
        if (!item || !cJSON_AddItemToArray(array, item)) {
            cJSON_Delete(item);
            cJSON_Delete(array);
            return NULL;
        }
    }
    return array;
}

static cJSON *json_entry(const st_entry *e, uint64_t begin)
{
    uint64_t shape[KEEL_ST_MAX_DIMS], offsets[2] = {begin, begin + e->bytes};
    for (int i = 0; i < e->ndim; i++)
        shape[i] = (uint64_t)e->shape[i];
    cJSON *obj = cJSON_CreateObject();
    cJSON *dtype = cJSON_CreateString(keel_st_dtype_name(e->dtype));
    cJSON *shape_json = json_int_array((size_t)e->ndim, shape);
    cJSON *offsets_json = json_int_array(2, offsets);
    if (!obj || !dtype || !shape_json || !offsets_json) {
        cJSON_Delete(obj);
        cJSON_Delete(dtype);
        cJSON_Delete(shape_json);
        cJSON_Delete(offsets_json);
        return NULL;
    }
    cJSON_AddItemToObject(obj, "dtype", dtype);
    cJSON_AddItemToObject(obj, "shape", shape_json);
    cJSON_AddItemToObject(obj, "data_offsets", offsets_json);
    return obj;
}

static cJSON *json_metadata(const keel_st_writer *w)
{
    cJSON *meta = cJSON_CreateObject();
    for (size_t i = 0; meta && i < w->meta_count; i++) {
        cJSON *value = cJSON_CreateString(w->meta[i].value);
        if (!value || !cJSON_AddItemToObject(meta, w->meta[i].key, value)) {
            cJSON_Delete(value);
            cJSON_Delete(meta);
            return NULL;
        }
    }
    return meta;
}

/* The header JSON, or NULL when out of memory. */
static char *header_json(const keel_st_writer *w, const size_t *order)
{
    cJSON *root = cJSON_CreateObject();
    bool ok = root != NULL;
    if (ok && w->meta_count) {
        cJSON *meta = json_metadata(w);
        ok = meta && cJSON_AddItemToObject(root, "__metadata__", meta);
    }
    uint64_t offset = 0;
    for (size_t k = 0; ok && k < w->count; k++) {
        const st_entry *e = &w->entries[order[k]];
        cJSON *entry = json_entry(e, offset);
        ok = entry && cJSON_AddItemToObject(root, e->name, entry);
        if (!ok)
            cJSON_Delete(entry);
        offset += e->bytes;
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return text;
}

static keel_status write_bytes(FILE *f, const void *p, size_t n, const char *path)
{
    if (n && fwrite(p, 1, n, f) != n)
        return keel_fail(KEEL_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return KEEL_OK;
}

static keel_status write_contents(FILE *f, const keel_st_writer *w, const size_t *order, const char *json,
                                  const char *tmp)
{
    size_t json_len = strlen(json);
    /* Pad with spaces to a multiple of 8 so the data buffer is 8-aligned. */
    size_t header_len = (json_len + 7) / 8 * 8;
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; i++)
        len_bytes[i] = (unsigned char)((uint64_t)header_len >> (8 * i));
    static const char spaces[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
    keel_status st = write_bytes(f, len_bytes, 8, tmp);
    if (st == KEEL_OK)
        st = write_bytes(f, json, json_len, tmp);
    if (st == KEEL_OK)
        st = write_bytes(f, spaces, header_len - json_len, tmp);
    for (size_t k = 0; st == KEEL_OK && k < w->count; k++)
        st = write_bytes(f, w->entries[order[k]].data, w->entries[order[k]].bytes, tmp);
    if (st == KEEL_OK && (fflush(f) != 0 || fsync(fileno(f)) != 0))
        st = keel_fail(KEEL_ERR_IO, "%s: cannot flush to disk: %s", tmp, strerror(errno));
    return st;
}

static keel_status write_atomically(const keel_st_writer *w, const size_t *order, const char *json, const char *path)
{
    size_t tmp_size = strlen(path) + 32;
    char *tmp = malloc(tmp_size);
    if (!tmp)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot allocate a file name", path);
    snprintf(tmp, tmp_size, "%s.tmp.%ld", path, (long)getpid());
    keel_status st;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        st = keel_fail(KEEL_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return st;
    }
    st = write_contents(f, w, order, json, tmp);
    if (fclose(f) != 0 && st == KEEL_OK)
        st = keel_fail(KEEL_ERR_IO, "%s: cannot close: %s", tmp, strerror(errno));
    if (st == KEEL_OK && rename(tmp, path) != 0)
        st = keel_fail(KEEL_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    if (st != KEEL_OK)
        unlink(tmp);
    free(tmp);
    return st;
}

keel_status keel_st_writer_write(const keel_st_writer *w, const char *path)
{
    if (!w || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_st_writer_write: writer and path must not be NULL");
    size_t *order = layout_order(w);
    char *json = order ? header_json(w, order) : NULL;
    keel_status st = json ? write_atomically(w, order, json, path)
                          : keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot build the safetensors header", path);
    free(json);
    free(order);
    return st;
}

/* ==== reader ================================================================ */

typedef struct st_parsed {
    keel_st_tensor tensor;
    uint64_t begin, end;
    size_t header_index; /* position in the JSON, to keep sorting stable */
} st_parsed;

struct keel_st_file {
    char *path;
    unsigned char *storage;     /* the whole file, placed so the data buffer is 64-aligned */
    const unsigned char *data;  /* the data buffer inside storage */
    size_t data_size;
    keel_st_tensor *tensors;    /* file order */
    size_t count;
    const keel_st_tensor **by_name;
    st_pair *meta;
    size_t meta_count;
};

void keel_st_file_free(keel_st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->count; i++)
        free((char *)f->tensors[i].name);
    for (size_t i = 0; i < f->meta_count; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->tensors);
    free(f->by_name);
    free(f->meta);
    keel_aligned_free(f->storage);
    free(f->path);
    free(f);
}

/* A non-negative integer that a double represents exactly. */
static bool json_uint(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsNumber(item))
        return false;
    double v = item->valuedouble;
    if (!(v >= 0.0) || v > ST_MAX_EXACT || (double)(uint64_t)v != v)
        return false;
    *out = (uint64_t)v;
    return true;
}

static keel_status parse_shape(const keel_st_file *f, const char *name, const cJSON *shape, keel_st_tensor *t)
{
    if (!cJSON_IsArray(shape))
        return keel_fail(KEEL_ERR_FORMAT, "%s: tensor '%s': \"shape\" is missing or not an array", f->path, name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > KEEL_ST_MAX_DIMS)
        return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: tensor '%s' has %d dimensions; at most %d are supported", f->path,
                         name, ndim, KEEL_ST_MAX_DIMS);
    t->ndim = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape) {
        uint64_t v;
        if (!json_uint(dim, &v))
            return keel_fail(KEEL_ERR_FORMAT, "%s: tensor '%s': shape entries must be non-negative integers", f->path,
                             name);
        t->shape[t->ndim++] = (int64_t)v;
    }
    return KEEL_OK;
}

static keel_status parse_offsets(const keel_st_file *f, const char *name, const cJSON *offsets, st_parsed *p)
{
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        !json_uint(cJSON_GetArrayItem(offsets, 0), &p->begin) || !json_uint(cJSON_GetArrayItem(offsets, 1), &p->end))
        return keel_fail(KEEL_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" must be [begin, end] with non-negative integers",
                         f->path, name);
    if (p->begin > p->end)
        return keel_fail(KEEL_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", f->path,
                         name, (unsigned long long)p->begin, (unsigned long long)p->end);
    if (p->end > f->data_size)
        return keel_fail(KEEL_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the data (%zu bytes; is the file truncated?)",
                         f->path, name, (unsigned long long)p->begin, (unsigned long long)p->end, f->data_size);
    return KEEL_OK;
}

static keel_status parse_tensor(const keel_st_file *f, const cJSON *item, st_parsed *p)
{
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        return keel_fail(KEEL_ERR_FORMAT, "%s: tensor '%s' is not a JSON object", f->path, name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    if (!cJSON_IsString(dtype))
        return keel_fail(KEEL_ERR_FORMAT, "%s: tensor '%s': \"dtype\" is missing or not a string", f->path, name);
    keel_st_tensor *t = &p->tensor;
    if (!dtype_from_name(dtype->valuestring, &t->dtype))
        return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype '%s', which is not supported", f->path, name,
                         dtype->valuestring);
    keel_status st = parse_shape(f, name, cJSON_GetObjectItemCaseSensitive(item, "shape"), t);
    if (st == KEEL_OK)
        st = parse_offsets(f, name, cJSON_GetObjectItemCaseSensitive(item, "data_offsets"), p);
    if (st != KEEL_OK)
        return st;
    char buf[160];
    if (!shape_bytes(t->ndim, t->shape, keel_st_dtype_size(t->dtype), &t->numel, &t->bytes))
        return keel_fail(KEEL_ERR_FORMAT, "%s: tensor '%s' has an impossible shape %s", f->path, name,
                         shape_text(buf, sizeof buf, t->ndim, t->shape));
    if (p->end - p->begin != t->bytes)
        return keel_fail(KEEL_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, but %s %s needs %zu", f->path,
                         name, (unsigned long long)p->begin, (unsigned long long)p->end,
                         (unsigned long long)(p->end - p->begin), keel_st_dtype_name(t->dtype),
                         shape_text(buf, sizeof buf, t->ndim, t->shape), t->bytes);
    t->data = f->data + p->begin;
    t->name = keel_strdup(name);
    if (!t->name)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot copy the name '%s'", f->path, name);
    return KEEL_OK;
}

static keel_status parse_metadata(keel_st_file *f, const cJSON *meta)
{
    if (f->meta)
        return keel_fail(KEEL_ERR_FORMAT, "%s: \"__metadata__\" appears twice", f->path);
    if (!cJSON_IsObject(meta))
        return keel_fail(KEEL_ERR_FORMAT, "%s: \"__metadata__\" must be an object of strings", f->path);
    size_t n = (size_t)cJSON_GetArraySize(meta);
    f->meta = calloc(n ? n : 1, sizeof *f->meta);
    if (!f->meta)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot allocate the metadata", f->path);
    const cJSON *item;
    cJSON_ArrayForEach(item, meta) {
        if (!cJSON_IsString(item))
            return keel_fail(KEEL_ERR_FORMAT, "%s: metadata '%s' must be a string", f->path, item->string);
        st_pair *pair = &f->meta[f->meta_count++];
        pair->key = keel_strdup(item->string);
        pair->value = keel_strdup(item->valuestring);
        if (!pair->key || !pair->value)
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot copy the metadata", f->path);
    }
    return KEEL_OK;
}

static int compare_by_offset(const void *a, const void *b)
{
    const st_parsed *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return x->header_index < y->header_index ? -1 : x->header_index > y->header_index;
}

static int compare_by_name(const void *a, const void *b)
{
    const keel_st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Sorted by offset, a non-empty tensor overlaps another exactly when it
 * begins before the furthest end seen so far. */
static keel_status check_overlaps(const keel_st_file *f, const st_parsed *parsed, size_t n)
{
    const st_parsed *furthest = NULL;
    for (size_t i = 0; i < n; i++) {
        const st_parsed *p = &parsed[i];
        if (p->begin == p->end)
            continue;
        if (furthest && p->begin < furthest->end)
            return keel_fail(KEEL_ERR_FORMAT, "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap", f->path,
                             furthest->tensor.name, (unsigned long long)furthest->begin,
                             (unsigned long long)furthest->end, p->tensor.name, (unsigned long long)p->begin,
                             (unsigned long long)p->end);
        if (!furthest || p->end > furthest->end)
            furthest = p;
    }
    return KEEL_OK;
}

static keel_status index_names(keel_st_file *f)
{
    f->by_name = malloc((f->count ? f->count : 1) * sizeof *f->by_name);
    if (!f->by_name)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot index the tensor names", f->path);
    for (size_t i = 0; i < f->count; i++)
        f->by_name[i] = &f->tensors[i];
    qsort(f->by_name, f->count, sizeof *f->by_name, compare_by_name);
    for (size_t i = 1; i < f->count; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0)
            return keel_fail(KEEL_ERR_FORMAT, "%s: tensor '%s' appears twice in the header", f->path, f->by_name[i]->name);
    return KEEL_OK;
}

/* Validates every entry of the parsed header and builds the tensor table. */
static keel_status build_tables(keel_st_file *f, const cJSON *root)
{
    size_t n = (size_t)cJSON_GetArraySize(root);
    st_parsed *parsed = calloc(n ? n : 1, sizeof *parsed);
    if (!parsed)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot allocate the tensor table", f->path);
    size_t count = 0;
    keel_status st = KEEL_OK;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0) {
            st = parse_metadata(f, item);
        } else {
            parsed[count].header_index = count;
            st = parse_tensor(f, item, &parsed[count]);
            if (parsed[count].tensor.name)
                count++;
        }
        if (st != KEEL_OK)
            break;
    }
    if (st == KEEL_OK) {
        qsort(parsed, count, sizeof *parsed, compare_by_offset);
        st = check_overlaps(f, parsed, count);
    }
    f->tensors = malloc((count ? count : 1) * sizeof *f->tensors);
    if (f->tensors) {
        for (size_t i = 0; i < count; i++)
            f->tensors[i] = parsed[i].tensor;
        f->count = count; /* the file now owns the names, even on failure */
    } else {
        for (size_t i = 0; i < count; i++)
            free((char *)parsed[i].tensor.name);
        if (st == KEEL_OK)
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot allocate the tensor table", f->path);
    }
    free(parsed);
    if (st == KEEL_OK)
        st = index_names(f);
    return st;
}

static keel_status parse_header(keel_st_file *f, const char *text, size_t len)
{
    size_t first = 0;
    while (first < len && (text[first] == ' ' || text[first] == '\n' || text[first] == '\r' || text[first] == '\t'))
        first++;
    if (first == len || text[first] != '{')
        return keel_fail(KEEL_ERR_FORMAT, "%s: the safetensors header is not a JSON object (bad header length or not a safetensors file)",
                         f->path);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!root) {
        size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        return keel_fail(KEEL_ERR_FORMAT, "%s: the safetensors header is not valid JSON (near byte %zu of %zu)", f->path,
                         at, len);
    }
    for (const char *p = end; p < text + len; p++) {
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != '\0') {
            cJSON_Delete(root);
            return keel_fail(KEEL_ERR_FORMAT, "%s: unexpected bytes after the safetensors header JSON (byte %zu)", f->path,
                             (size_t)(p - text));
        }
    }
    keel_status st = cJSON_IsObject(root) ? build_tables(f, root)
                                          : keel_fail(KEEL_ERR_FORMAT, "%s: the safetensors header is not a JSON object", f->path);
    cJSON_Delete(root);
    return st;
}

/* Reads the whole file; the header length decides where in `storage` it
 * lands so that the data buffer starts on a 64-byte boundary. */
static keel_status read_file(keel_st_file *f, FILE *fp, size_t *header_len)
{
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0)
        return keel_fail(KEEL_ERR_IO, "%s: cannot stat: %s", f->path, strerror(errno));
    size_t size = (size_t)sb.st_size;
    unsigned char len_bytes[8];
    if (size < 8 || fread(len_bytes, 1, 8, fp) != 8)
        return keel_fail(KEEL_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file", f->path, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | len_bytes[i];
    if (n == 0 || n > size - 8 || n > ST_MAX_HEADER)
        return keel_fail(KEEL_ERR_FORMAT, "%s: header length %llu is impossible for a file of %zu bytes", f->path,
                         (unsigned long long)n, size);
    size_t pad = (64 - (8 + (size_t)n) % 64) % 64;
    f->storage = keel_aligned_alloc(pad + size);
    if (!f->storage)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes to read the file", f->path, size);
    memcpy(f->storage + pad, len_bytes, 8);
    size_t rest = size - 8;
    size_t got = fread(f->storage + pad + 8, 1, rest, fp);
    if (got != rest)
        return keel_fail(KEEL_ERR_IO, "%s: read %zu of %zu bytes: %s", f->path, got, rest,
                         ferror(fp) ? strerror(errno) : "file shrank while reading");
    *header_len = (size_t)n;
    f->data = f->storage + pad + 8 + n;
    f->data_size = size - 8 - (size_t)n;
    return KEEL_OK;
}

keel_status keel_st_file_load(keel_st_file **out, const char *path)
{
    if (!out || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_st_file_load: out and path must not be NULL");
    *out = NULL;
    keel_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = keel_strdup(path))) {
        free(f);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot allocate a safetensors file", path);
    }
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        keel_status st = keel_fail(KEEL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        keel_st_file_free(f);
        return st;
    }
    size_t header_len = 0;
    keel_status st = read_file(f, fp, &header_len);
    fclose(fp);
    if (st == KEEL_OK)
        st = parse_header(f, (const char *)f->data - header_len, header_len);
    if (st != KEEL_OK) {
        keel_st_file_free(f);
        return st;
    }
    *out = f;
    return KEEL_OK;
}

const char *keel_st_file_path(const keel_st_file *f)
{
    return f->path;
}

size_t keel_st_file_count(const keel_st_file *f)
{
    return f->count;
}

const keel_st_tensor *keel_st_file_at(const keel_st_file *f, size_t index)
{
    return index < f->count ? &f->tensors[index] : NULL;
}

const keel_st_tensor *keel_st_file_find(const keel_st_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    keel_st_tensor key = {.name = name};
    const keel_st_tensor *key_ptr = &key;
    const keel_st_tensor **hit = bsearch(&key_ptr, f->by_name, f->count, sizeof *f->by_name, compare_by_name);
    return hit ? *hit : NULL;
}

keel_status keel_st_file_get(const keel_st_file *f, const char *name, const keel_st_tensor **out)
{
    *out = keel_st_file_find(f, name);
    if (!*out)
        return keel_fail(KEEL_ERR_NOT_FOUND, "%s: no tensor named '%s'", f->path, name ? name : "(null)");
    return KEEL_OK;
}

static bool same_shape(const keel_st_tensor *t, int ndim, const int64_t *shape)
{
    if (t->ndim != ndim)
        return false;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i])
            return false;
    return true;
}

keel_status keel_st_file_read(const keel_st_file *f, const char *name, keel_st_dtype dtype, int ndim,
                              const int64_t *shape, void *dst)
{
    const keel_st_tensor *t;
    keel_status st = keel_st_file_get(f, name, &t);
    if (st != KEEL_OK)
        return st;
    if (t->dtype != dtype)
        return keel_fail(KEEL_ERR_FORMAT, "%s: tensor '%s' has dtype %s, expected %s", f->path, name,
                         keel_st_dtype_name(t->dtype), keel_st_dtype_name(dtype));
    if (ndim < 0 || (ndim > 0 && !shape) || !same_shape(t, ndim, shape)) {
        char have[160], want[160];
        return keel_fail(KEEL_ERR_SHAPE, "%s: tensor '%s' has shape %s, expected %s", f->path, name,
                         shape_text(have, sizeof have, t->ndim, t->shape),
                         ndim >= 0 && ndim <= KEEL_ST_MAX_DIMS && (shape || ndim == 0)
                             ? shape_text(want, sizeof want, ndim, shape)
                             : "an invalid shape");
    }
    if (t->bytes)
        memcpy(dst, t->data, t->bytes);
    return KEEL_OK;
}

keel_status keel_st_file_read_tensor(const keel_st_file *f, const char *name, keel_tensor **out)
{
    *out = NULL;
    const keel_st_tensor *t;
    keel_status st = keel_st_file_get(f, name, &t);
    if (st != KEEL_OK)
        return st;
    if (t->dtype != KEEL_ST_F32 && t->dtype != KEEL_ST_I32)
        return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s; keel tensors are F32 or I32", f->path,
                         name, keel_st_dtype_name(t->dtype));
    if (t->ndim > KEEL_MAX_DIMS)
        return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: tensor '%s' has %d dimensions; keel tensors have at most %d",
                         f->path, name, t->ndim, KEEL_MAX_DIMS);
    st = keel_tensor_new(out, t->dtype == KEEL_ST_I32 ? KEEL_I32 : KEEL_F32, t->ndim, t->shape);
    if (st != KEEL_OK)
        return keel_fail_prefix(st, "%s: tensor '%s': ", f->path, name);
    if (t->bytes)
        memcpy((*out)->data, t->data, t->bytes);
    return KEEL_OK;
}

const char *keel_st_file_metadata(const keel_st_file *f, const char *key)
{
    for (size_t i = 0; key && i < f->meta_count; i++)
        if (strcmp(f->meta[i].key, key) == 0)
            return f->meta[i].value;
    return NULL;
}

size_t keel_st_file_metadata_count(const keel_st_file *f)
{
    return f->meta_count;
}

void keel_st_file_metadata_at(const keel_st_file *f, size_t index, const char **key, const char **value)
{
    bool ok = index < f->meta_count;
    if (key)
        *key = ok ? f->meta[index].key : NULL;
    if (value)
        *value = ok ? f->meta[index].value : NULL;
}

static keel_status metadata_number(const keel_st_file *f, const char *key, const char **text)
{
    *text = keel_st_file_metadata(f, key);
    if (!*text)
        return keel_fail(KEEL_ERR_NOT_FOUND, "%s: no metadata '%s'", f->path, key ? key : "(null)");
    const char *p = *text;
    if (*p == '-')
        p++;
    if (*p < '0' || *p > '9')
        return keel_fail(KEEL_ERR_FORMAT, "%s: metadata '%s' = '%s' is not an integer", f->path, key, *text);
    return KEEL_OK;
}

keel_status keel_st_file_metadata_i64(const keel_st_file *f, const char *key, int64_t *value)
{
    const char *text;
    keel_status st = metadata_number(f, key, &text);
    if (st != KEEL_OK)
        return st;
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || *end != '\0')
        return keel_fail(KEEL_ERR_FORMAT, "%s: metadata '%s' = '%s' is not a 64-bit integer", f->path, key, text);
    *value = (int64_t)v;
    return KEEL_OK;
}

keel_status keel_st_file_metadata_u64(const keel_st_file *f, const char *key, uint64_t *value)
{
    const char *text;
    keel_status st = metadata_number(f, key, &text);
    if (st != KEEL_OK)
        return st;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (text[0] == '-' || errno != 0 || *end != '\0')
        return keel_fail(KEEL_ERR_FORMAT, "%s: metadata '%s' = '%s' is not an unsigned 64-bit integer", f->path, key,
                         text);
    *value = (uint64_t)v;
    return KEEL_OK;
}
