/* NumPy .npy files (format versions 1.0, 2.0 and 3.0).
 *
 * A file is the magic "\x93NUMPY", a version byte pair, a little-endian
 * header length (2 bytes in 1.0, 4 bytes later), a Python dict literal such
 * as {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), } padded with
 * spaces and a newline, and then the raw array data. The header comes from
 * an untrusted file, so the parser below checks every index against the
 * header length and every size against the file length. */
#include "core/core.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.c copies little-endian data as is and needs a little-endian host"
#endif

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_PREFIX_V1 10 /* magic, version, uint16 header length */
#define NPY_PREFIX_V2 12 /* magic, version, uint32 header length */
/* NumPy itself refuses headers above 10000 bytes by default; a little
 * headroom still rejects absurd lengths before allocating them. */
#define NPY_MAX_HEADER (1 << 20)

/* The on-disk element types we accept and what they become in memory. */
typedef enum npy_kind { NPY_F4, NPY_F8, NPY_I4, NPY_I8, NPY_U1 } npy_kind;

typedef struct npy_header {
    npy_kind kind;
    size_t item_size;
    bool fortran_order;
    int ndim;
    int64_t shape[KEEL_MAX_DIMS];
    bool have_descr, have_order, have_shape;
} npy_header;

/* ---- header parsing ------------------------------------------------------ */

typedef struct cursor {
    const char *text;
    size_t len;
    size_t pos;
    const char *path;
} cursor;

static void skip_space(cursor *c)
{
    while (c->pos < c->len && (c->text[c->pos] == ' ' || c->text[c->pos] == '\t' || c->text[c->pos] == '\n' ||
                               c->text[c->pos] == '\r'))
        c->pos++;
}

static bool peek_is(cursor *c, char ch)
{
    skip_space(c);
    return c->pos < c->len && c->text[c->pos] == ch;
}

static keel_status malformed(const cursor *c, const char *what)
{
    return keel_fail(KEEL_ERR_FORMAT, "%s: malformed .npy header: %s at byte %zu of the header", c->path, what, c->pos);
}

static keel_status expect(cursor *c, char ch, const char *what)
{
    if (!peek_is(c, ch))
        return malformed(c, what);
    c->pos++;
    return KEEL_OK;
}

/* A Python string literal in single or double quotes, without escapes
 * (NumPy never writes any in these headers). */
static keel_status parse_string(cursor *c, char *out, size_t size)
{
    skip_space(c);
    if (c->pos >= c->len || (c->text[c->pos] != '\'' && c->text[c->pos] != '"'))
        return malformed(c, "expected a quoted string");
    char quote = c->text[c->pos++];
    size_t n = 0;
    while (c->pos < c->len && c->text[c->pos] != quote) {
        if (n + 1 >= size)
            return malformed(c, "string too long");
        out[n++] = c->text[c->pos++];
    }
    if (c->pos >= c->len)
        return malformed(c, "unterminated string");
    c->pos++;
    out[n] = '\0';
    return KEEL_OK;
}

static bool parse_word(cursor *c, const char *word)
{
    skip_space(c);
    size_t n = strlen(word);
    if (c->len - c->pos < n || memcmp(c->text + c->pos, word, n) != 0)
        return false;
    c->pos += n;
    return true;
}

static keel_status parse_bool(cursor *c, bool *out)
{
    if (parse_word(c, "True"))
        *out = true;
    else if (parse_word(c, "False"))
        *out = false;
    else
        return malformed(c, "fortran_order must be True or False");
    return KEEL_OK;
}

static keel_status parse_dim(cursor *c, int64_t *out)
{
    skip_space(c);
    size_t start = c->pos;
    int64_t value = 0;
    while (c->pos < c->len && c->text[c->pos] >= '0' && c->text[c->pos] <= '9') {
        if (value > (INT64_MAX / 4 - 9) / 10)
            return malformed(c, "dimension too large");
        value = value * 10 + (c->text[c->pos++] - '0');
    }
    if (c->pos == start)
        return malformed(c, "expected a non-negative integer dimension");
    if (c->pos < c->len && c->text[c->pos] == 'L') /* Python 2 long literal */
        c->pos++;
    *out = value;
    return KEEL_OK;
}

/* A tuple of dimensions: (), (n,), (a, b), (a, b,). */
static keel_status parse_shape(cursor *c, npy_header *h)
{
    keel_status st = expect(c, '(', "shape must be a tuple");
    if (st != KEEL_OK)
        return st;
    h->ndim = 0;
    while (!peek_is(c, ')')) {
        int64_t dim = 0;
        if ((st = parse_dim(c, &dim)) != KEEL_OK)
            return st;
        if (h->ndim == KEEL_MAX_DIMS)
            return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: arrays with more than %d dimensions are not supported",
                             c->path, KEEL_MAX_DIMS);
        h->shape[h->ndim++] = dim;
        if (peek_is(c, ','))
            c->pos++;
        else if (!peek_is(c, ')'))
            return malformed(c, "expected ',' or ')' in the shape");
    }
    c->pos++;
    return KEEL_OK;
}

static keel_status parse_descr(cursor *c, npy_header *h)
{
    if (peek_is(c, '['))
        return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: structured dtypes are not supported (expected <f4, <f8, <i4, <i8 or |u1)",
                         c->path);
    char descr[32];
    keel_status st = parse_string(c, descr, sizeof descr);
    if (st != KEEL_OK)
        return st;
    static const struct { const char *name; npy_kind kind; size_t size; } known[] = {
        {"<f4", NPY_F4, 4}, {"<f8", NPY_F8, 8}, {"<i4", NPY_I4, 4},
        {"<i8", NPY_I8, 8}, {"|u1", NPY_U1, 1}, {"<u1", NPY_U1, 1},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strcmp(descr, known[i].name) == 0) {
            h->kind = known[i].kind;
            h->item_size = known[i].size;
            return KEEL_OK;
        }
    }
    if (descr[0] == '>')
        return keel_fail(KEEL_ERR_UNSUPPORTED,
                         "%s: big-endian dtype '%s' is not supported; convert with arr.astype('<%s')", c->path, descr,
                         descr + 1);
    return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: dtype '%s' is not supported (expected <f4, <f8, <i4, <i8 or |u1)",
                     c->path, descr);
}

static keel_status parse_entry(cursor *c, npy_header *h)
{
    char key[32];
    keel_status st = parse_string(c, key, sizeof key);
    if (st != KEEL_OK)
        return st;
    if ((st = expect(c, ':', "expected ':' after a key")) != KEEL_OK)
        return st;
    bool *seen;
    if (strcmp(key, "descr") == 0) {
        seen = &h->have_descr;
        st = parse_descr(c, h);
    } else if (strcmp(key, "fortran_order") == 0) {
        seen = &h->have_order;
        st = parse_bool(c, &h->fortran_order);
    } else if (strcmp(key, "shape") == 0) {
        seen = &h->have_shape;
        st = parse_shape(c, h);
    } else {
        return keel_fail(KEEL_ERR_FORMAT, "%s: malformed .npy header: unexpected key '%s'", c->path, key);
    }
    if (st != KEEL_OK)
        return st;
    if (*seen)
        return keel_fail(KEEL_ERR_FORMAT, "%s: malformed .npy header: key '%s' appears twice", c->path, key);
    *seen = true;
    return KEEL_OK;
}

static keel_status parse_header(const char *text, size_t len, const char *path, npy_header *h)
{
    cursor c = {text, len, 0, path};
    memset(h, 0, sizeof *h);
    keel_status st = expect(&c, '{', "the header must be a dict");
    if (st != KEEL_OK)
        return st;
    while (!peek_is(&c, '}')) {
        if ((st = parse_entry(&c, h)) != KEEL_OK)
            return st;
        if (peek_is(&c, ','))
            c.pos++;
        else if (!peek_is(&c, '}'))
            return malformed(&c, "expected ',' or '}' after an entry");
    }
    if (!h->have_descr || !h->have_order || !h->have_shape)
        return keel_fail(KEEL_ERR_FORMAT, "%s: malformed .npy header: missing %s", path,
                         !h->have_descr ? "'descr'" : !h->have_order ? "'fortran_order'" : "'shape'");
    return KEEL_OK;
}

/* ---- loading --------------------------------------------------------------- */

static uint32_t read_le(const unsigned char *p, int bytes)
{
    uint32_t v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static keel_status read_prefix(FILE *f, const char *path, size_t *header_len, size_t *data_start)
{
    unsigned char prefix[NPY_PREFIX_V2];
    size_t got = fread(prefix, 1, NPY_PREFIX_V1, f);
    if (got < NPY_MAGIC_LEN || memcmp(prefix, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
        return keel_fail(KEEL_ERR_FORMAT, "%s: not a .npy file (bad magic; expected \\x93NUMPY)", path);
    if (got < NPY_PREFIX_V1)
        return keel_fail(KEEL_ERR_FORMAT, "%s: truncated .npy header (%zu bytes)", path, got);
    int major = prefix[6];
    if (major == 1) {
        *header_len = read_le(prefix + 8, 2);
        *data_start = NPY_PREFIX_V1 + *header_len;
        return KEEL_OK;
    }
    if (major != 2 && major != 3)
        return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: .npy format version %d.%d is not supported (expected 1.0, 2.0 or 3.0)",
                         path, major, prefix[7]);
    if (fread(prefix + NPY_PREFIX_V1, 1, 2, f) != 2)
        return keel_fail(KEEL_ERR_FORMAT, "%s: truncated .npy header", path);
    *header_len = read_le(prefix + 8, 4);
    *data_start = NPY_PREFIX_V2 + *header_len;
    return KEEL_OK;
}

static keel_status read_header(FILE *f, const char *path, npy_header *h, size_t *data_start)
{
    size_t header_len = 0;
    keel_status st = read_prefix(f, path, &header_len, data_start);
    if (st != KEEL_OK)
        return st;
    if (header_len > NPY_MAX_HEADER)
        return keel_fail(KEEL_ERR_FORMAT, "%s: malformed .npy header: length %zu is implausibly large", path, header_len);
    char *text = malloc(header_len + 1);
    if (!text)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot allocate the .npy header", path);
    size_t got = fread(text, 1, header_len, f);
    if (got != header_len) {
        free(text);
        return keel_fail(KEEL_ERR_FORMAT, "%s: truncated .npy header: expected %zu bytes, got %zu", path, header_len, got);
    }
    text[header_len] = '\0';
    st = parse_header(text, header_len, path, h);
    free(text);
    return st;
}

/* Element count and byte size of the data, rejecting overflow. */
static keel_status data_size(const npy_header *h, const char *path, int64_t *numel, size_t *bytes)
{
    uint64_t n = 1;
    for (int i = 0; i < h->ndim; i++) {
        uint64_t dim = (uint64_t)h->shape[i];
        if (dim != 0 && n > (uint64_t)INT64_MAX / 8 / dim)
            return keel_fail(KEEL_ERR_FORMAT, "%s: shape is too large to be a real array", path);
        n *= dim;
    }
    *numel = (int64_t)n;
    *bytes = (size_t)n * h->item_size;
    return KEEL_OK;
}

static keel_status check_file_holds(FILE *f, const char *path, size_t data_start, size_t bytes)
{
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0)
        return keel_fail(KEEL_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    size_t have = (size_t)sb.st_size > data_start ? (size_t)sb.st_size - data_start : 0;
    if (have < bytes)
        return keel_fail(KEEL_ERR_FORMAT, "%s: truncated .npy data: expected %zu bytes after the header, got %zu", path,
                         bytes, have);
    return KEEL_OK;
}

/* Offset, in elements of the Fortran-order source, of each C-order index:
 * dimension 0 varies fastest on disk. */
static void fortran_strides(const npy_header *h, int64_t *strides)
{
    int64_t stride = 1;
    for (int i = 0; i < h->ndim; i++) {
        strides[i] = stride;
        stride *= h->shape[i];
    }
}

static keel_status convert_element(const npy_header *h, const unsigned char *src, void *dst, int64_t index,
                                   const char *path)
{
    switch (h->kind) {
    case NPY_F4: memcpy(dst, src, 4); break;
    case NPY_I4: memcpy(dst, src, 4); break;
    case NPY_U1: *(float *)dst = (float)src[0]; break;
    case NPY_F8: {
        double v;
        memcpy(&v, src, 8);
        *(float *)dst = (float)v;
        break;
    }
    case NPY_I8: {
        int64_t v;
        memcpy(&v, src, 8);
        if (v < INT32_MIN || v > INT32_MAX)
            return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: int64 value %lld at index %lld does not fit in int32", path,
                             (long long)v, (long long)index);
        *(int32_t *)dst = (int32_t)v;
        break;
    }
    }
    return KEEL_OK;
}

/* Converts `raw` (disk layout) into the C-order tensor element by element. */
static keel_status convert_all(const npy_header *h, const unsigned char *raw, keel_tensor *t, int64_t numel,
                               const char *path)
{
    int64_t fstrides[KEEL_MAX_DIMS];
    int64_t index[KEEL_MAX_DIMS] = {0};
    fortran_strides(h, fstrides);
    unsigned char *dst = t->data;
    size_t out_size = keel_dtype_size(t->dtype);
    for (int64_t i = 0; i < numel; i++) {
        int64_t src = i;
        if (h->fortran_order) {
            src = 0;
            for (int d = 0; d < h->ndim; d++)
                src += index[d] * fstrides[d];
            for (int d = h->ndim - 1; d >= 0 && ++index[d] == h->shape[d]; d--)
                index[d] = 0;
        }
        keel_status st = convert_element(h, raw + (size_t)src * h->item_size, dst + (size_t)i * out_size, src, path);
        if (st != KEEL_OK)
            return st;
    }
    return KEEL_OK;
}

static keel_status read_data(FILE *f, const char *path, const npy_header *h, keel_tensor *t, int64_t numel,
                             size_t bytes)
{
    /* Little-endian float32/int32 in C order is already the tensor layout. */
    bool direct = !h->fortran_order && (h->kind == NPY_F4 || h->kind == NPY_I4);
    unsigned char *raw = direct ? t->data : malloc(bytes ? bytes : 1);
    if (!raw)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes", path, bytes);
    size_t got = fread(raw, 1, bytes, f);
    keel_status st = KEEL_OK;
    if (got != bytes)
        st = keel_fail(KEEL_ERR_FORMAT, "%s: truncated .npy data: expected %zu bytes after the header, got %zu", path,
                       bytes, got);
    else if (!direct)
        st = convert_all(h, raw, t, numel, path);
    if (!direct)
        free(raw);
    return st;
}

keel_status keel_tensor_load_npy(keel_tensor **out, const char *path)
{
    if (!out || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_tensor_load_npy: out and path must not be NULL");
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return keel_fail(KEEL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    npy_header h;
    size_t data_start = 0, bytes = 0;
    int64_t numel = 0;
    keel_tensor *t = NULL;
    keel_status st = read_header(f, path, &h, &data_start);
    if (st == KEEL_OK)
        st = data_size(&h, path, &numel, &bytes);
    if (st == KEEL_OK)
        st = check_file_holds(f, path, data_start, bytes);
    if (st == KEEL_OK) {
        keel_dtype dtype = (h.kind == NPY_I4 || h.kind == NPY_I8) ? KEEL_I32 : KEEL_F32;
        st = keel_tensor_new(&t, dtype, h.ndim, h.shape);
        if (st != KEEL_OK)
            keel_fail_prefix(st, "%s: ", path);
    }
    if (st == KEEL_OK)
        st = read_data(f, path, &h, t, numel, bytes);
    fclose(f);
    if (st != KEEL_OK) {
        keel_tensor_free(t);
        return st;
    }
    *out = t;
    return KEEL_OK;
}

/* ---- saving ---------------------------------------------------------------- */

/* The header dict, padded with spaces and a final newline so that the data
 * starts at a multiple of 64 bytes, as NumPy writes it. */
static size_t format_header(const keel_tensor *t, char *buf, size_t size)
{
    size_t n = (size_t)snprintf(buf, size, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                                t->dtype == KEEL_I32 ? "<i4" : "<f4");
    for (int i = 0; i < t->ndim; i++)
        n += (size_t)snprintf(buf + n, size - n, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    n += (size_t)snprintf(buf + n, size - n, "%s), }", t->ndim == 1 ? "," : "");
    size_t total = NPY_PREFIX_V1 + n + 1;
    size_t padded = (total + 63) / 64 * 64;
    while (NPY_PREFIX_V1 + n + 1 < padded)
        buf[n++] = ' ';
    buf[n++] = '\n';
    return n;
}

static keel_status write_bytes(FILE *f, const void *p, size_t n, const char *path)
{
    if (n && fwrite(p, 1, n, f) != n)
        return keel_fail(KEEL_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return KEEL_OK;
}

/* Writes the elements in C order, gathering through the strides in chunks
 * so that a strided tensor needs no full-size copy. */
static keel_status write_data(FILE *f, const keel_tensor *t, const char *path)
{
    int64_t numel = keel_tensor_numel(t);
    size_t item = keel_dtype_size(t->dtype);
    if (keel_tensor_is_contiguous(t))
        return write_bytes(f, t->data, (size_t)numel * item, path);
    enum { CHUNK = 4096 };
    uint32_t chunk[CHUNK];
    int64_t index[KEEL_MAX_DIMS] = {0};
    const uint32_t *src = t->data;
    size_t filled = 0;
    for (int64_t i = 0; i < numel; i++) {
        int64_t offset = 0;
        for (int d = 0; d < t->ndim; d++)
            offset += index[d] * t->strides[d];
        chunk[filled++] = src[offset];
        for (int d = t->ndim - 1; d >= 0 && ++index[d] == t->shape[d]; d--)
            index[d] = 0;
        if (filled == CHUNK || i + 1 == numel) {
            keel_status st = write_bytes(f, chunk, filled * item, path);
            if (st != KEEL_OK)
                return st;
            filled = 0;
        }
    }
    return KEEL_OK;
}

static keel_status write_file(FILE *f, const keel_tensor *t, const char *tmp)
{
    unsigned char prefix[NPY_PREFIX_V1] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    char header[512];
    size_t header_len = format_header(t, header, sizeof header);
    prefix[8] = (unsigned char)(header_len & 0xff);
    prefix[9] = (unsigned char)(header_len >> 8);
    keel_status st = write_bytes(f, prefix, sizeof prefix, tmp);
    if (st == KEEL_OK)
        st = write_bytes(f, header, header_len, tmp);
    if (st == KEEL_OK)
        st = write_data(f, t, tmp);
    if (st == KEEL_OK && (fflush(f) != 0 || fsync(fileno(f)) != 0))
        st = keel_fail(KEEL_ERR_IO, "%s: cannot flush to disk: %s", tmp, strerror(errno));
    return st;
}

keel_status keel_tensor_save_npy(const keel_tensor *t, const char *path)
{
    if (!t || !path || (t->dtype != KEEL_F32 && t->dtype != KEEL_I32) || t->ndim < 0 || t->ndim > KEEL_MAX_DIMS)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_tensor_save_npy: need a float32 or int32 tensor and a path");
    if (!t->data && keel_tensor_numel(t) > 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s: the tensor has no data", path);
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
    st = write_file(f, t, tmp);
    if (fclose(f) != 0 && st == KEEL_OK)
        st = keel_fail(KEEL_ERR_IO, "%s: cannot close: %s", tmp, strerror(errno));
    if (st == KEEL_OK && rename(tmp, path) != 0)
        st = keel_fail(KEEL_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    if (st != KEEL_OK)
        unlink(tmp);
    free(tmp);
    return st;
}
