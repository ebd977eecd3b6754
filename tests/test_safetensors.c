/* safetensors: round trips with metadata, the exact byte layout Python's
 * safetensors expects, and hand-built bad files (header length, offsets out
 * of range, overlaps, truncation, bad JSON), each a clear error. */
#include "support/support.h"
#include "core/safetensors.h"
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmp_dir[64];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/keel-st-XXXXXX");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    (void)state;
    return nftw(tmp_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

static const char *path_of(const char *name)
{
    static char path[160];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    return path;
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static unsigned char *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(*size ? *size : 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, *size, f), *size);
    fclose(f);
    return buf;
}

/* A file from a JSON header and a data buffer; header_len overrides the
 * length field when non-zero. */
static void write_st(const char *path, const char *json, const void *data, size_t data_bytes, uint64_t header_len)
{
    size_t json_len = strlen(json);
    uint64_t len = header_len ? header_len : json_len;
    size_t total = 8 + json_len + data_bytes;
    unsigned char *buf = malloc(total);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(len >> (8 * i));
    memcpy(buf + 8, json, json_len);
    if (data_bytes)
        memcpy(buf + 8 + json_len, data, data_bytes);
    write_bytes(path, buf, total);
    free(buf);
}

static void expect_load_error(const char *path, keel_status want, const char *needle1, const char *needle2)
{
    keel_st_file *f = (keel_st_file *)0x1;
    keel_status st = keel_st_file_load(&f, path);
    if (st != want)
        fail_msg("%s: expected '%s', got '%s': %s", path, keel_status_string(want), keel_status_string(st),
                 keel_last_error());
    assert_null(f);
    if (!strstr(keel_last_error(), path))
        fail_msg("error '%s' does not name the file", keel_last_error());
    if (needle1 && !strstr(keel_last_error(), needle1))
        fail_msg("error '%s' does not mention '%s'", keel_last_error(), needle1);
    if (needle2 && !strstr(keel_last_error(), needle2))
        fail_msg("error '%s' does not mention '%s'", keel_last_error(), needle2);
}

/* ---- round trips ------------------------------------------------------------- */

static float weights[2 * 3] = {1.5f, -2.0f, 3.25f, 0.0f, -0.5f, 1e-7f};
static int32_t counts[4] = {1, -2, 3, 2147483647};
static int64_t steps[2] = {123456789012345LL, -1};
static uint8_t bytes5[5] = {0, 1, 127, 128, 255};
static double scalar = 3.141592653589793;

static void write_sample(const char *path)
{
    keel_st_writer *w;
    KS_OK(keel_st_writer_new(&w));
    int64_t s_w[2] = {2, 3}, s_c[1] = {4}, s_s[1] = {2}, s_b[1] = {5}, s_e[2] = {0, 4};
    /* Added in an order that would misalign the 8-byte tensors if laid out
     * as given. */
    KS_OK(keel_st_writer_add(w, "bytes", KEEL_ST_U8, 1, s_b, bytes5));
    KS_OK(keel_st_writer_add(w, "conv1.weight", KEEL_ST_F32, 2, s_w, weights));
    KS_OK(keel_st_writer_add(w, "counts", KEEL_ST_I32, 1, s_c, counts));
    KS_OK(keel_st_writer_add(w, "opt.step", KEEL_ST_I64, 1, s_s, steps));
    KS_OK(keel_st_writer_add(w, "pi", KEEL_ST_F64, 0, NULL, &scalar));
    KS_OK(keel_st_writer_add(w, "empty", KEEL_ST_F32, 2, s_e, NULL));
    KS_OK(keel_st_writer_add_copy(w, "we\"ird\\name \xc3\xa9", KEEL_ST_F32, 1, s_c, (float[4]){4, 3, 2, 1}));
    KS_OK(keel_st_writer_set_metadata(w, "format", "pt"));
    KS_OK(keel_st_writer_set_metadataf(w, "epoch", "%d", 3));
    KS_OK(keel_st_writer_set_metadata(w, "epoch", "7"));
    KS_OK(keel_st_writer_set_metadataf(w, "rng", "%llu", 18446744073709551615ULL));
    KS_OK(keel_st_writer_set_metadata(w, "note", "quotes \" and \\ and\nnewlines"));
    KS_OK(keel_st_writer_write(w, path));
    keel_st_writer_free(w);
}

static void test_round_trip(void **state)
{
    (void)state;
    const char *path = path_of("ckpt.safetensors");
    write_sample(path);
    keel_st_file *f;
    KS_OK(keel_st_file_load(&f, path));
    assert_int_equal(keel_st_file_count(f), 7);

    const keel_st_tensor *t;
    KS_OK(keel_st_file_get(f, "conv1.weight", &t));
    assert_int_equal(t->dtype, KEEL_ST_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->numel, 6);
    assert_memory_equal(t->data, weights, sizeof weights);
    assert_memory_equal(keel_st_file_find(f, "counts")->data, counts, sizeof counts);
    assert_memory_equal(keel_st_file_find(f, "opt.step")->data, steps, sizeof steps);
    assert_memory_equal(keel_st_file_find(f, "bytes")->data, bytes5, sizeof bytes5);
    t = keel_st_file_find(f, "pi");
    assert_int_equal(t->ndim, 0);
    assert_memory_equal(t->data, &scalar, sizeof scalar);
    t = keel_st_file_find(f, "empty");
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->bytes, 0);
    t = keel_st_file_find(f, "we\"ird\\name \xc3\xa9");
    assert_non_null(t);
    assert_true(((const float *)t->data)[0] == 4.0f);
    assert_null(keel_st_file_find(f, "conv2.weight"));

    /* Every tensor is aligned to its element size, and file order puts the
     * 8-byte tensors first, then the 4-byte ones in the order added. */
    for (size_t i = 0; i < keel_st_file_count(f); i++) {
        t = keel_st_file_at(f, i);
        assert_int_equal((uintptr_t)t->data % keel_st_dtype_size(t->dtype), 0);
    }
    assert_string_equal(keel_st_file_at(f, 0)->name, "opt.step");
    assert_string_equal(keel_st_file_at(f, 1)->name, "pi");
    assert_string_equal(keel_st_file_at(f, 2)->name, "conv1.weight");
    assert_string_equal(keel_st_file_at(f, 3)->name, "counts");
    assert_null(keel_st_file_at(f, 7));

    assert_string_equal(keel_st_file_metadata(f, "format"), "pt");
    assert_string_equal(keel_st_file_metadata(f, "note"), "quotes \" and \\ and\nnewlines");
    assert_null(keel_st_file_metadata(f, "missing"));
    int64_t epoch;
    uint64_t rng;
    KS_OK(keel_st_file_metadata_i64(f, "epoch", &epoch));
    assert_int_equal(epoch, 7);
    KS_OK(keel_st_file_metadata_u64(f, "rng", &rng));
    assert_true(rng == 18446744073709551615ULL);
    assert_int_equal(keel_st_file_metadata_i64(f, "format", &epoch), KEEL_ERR_FORMAT);
    assert_int_equal(keel_st_file_metadata_i64(f, "rng", &epoch), KEEL_ERR_FORMAT);
    assert_int_equal(keel_st_file_metadata_u64(f, "missing", &rng), KEEL_ERR_NOT_FOUND);
    assert_int_equal(keel_st_file_metadata_count(f), 4);
    const char *key, *value;
    keel_st_file_metadata_at(f, 0, &key, &value);
    assert_string_equal(key, "format");
    keel_st_file_free(f);

    char tmp[200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    assert_int_not_equal(access(tmp, F_OK), 0);
}

/* The bytes Python's safetensors expects: a little-endian length that is a
 * multiple of 8, JSON padded with spaces, offsets from the data start that
 * tile the buffer exactly. */
static void test_layout_python_reads(void **state)
{
    (void)state;
    const char *path = path_of("layout.safetensors");
    keel_st_writer *w;
    KS_OK(keel_st_writer_new(&w));
    int64_t shape[1] = {3};
    KS_OK(keel_st_writer_add(w, "a", KEEL_ST_F32, 1, shape, weights));
    KS_OK(keel_st_writer_add(w, "b", KEEL_ST_I32, 1, shape, counts));
    KS_OK(keel_st_writer_set_metadata(w, "epoch", "1"));
    KS_OK(keel_st_writer_write(w, path));
    keel_st_writer_free(w);
    size_t size;
    unsigned char *bytes = read_all(path, &size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | bytes[i];
    assert_int_equal(n % 8, 0);
    assert_int_equal(size, 8 + n + 24);
    const char *want = "{\"__metadata__\":{\"epoch\":\"1\"},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                       "\"b\":{\"dtype\":\"I32\",\"shape\":[3],\"data_offsets\":[12,24]}}";
    assert_memory_equal(bytes + 8, want, strlen(want));
    for (size_t i = 8 + strlen(want); i < 8 + n; i++)
        assert_int_equal(bytes[i], ' ');
    assert_memory_equal(bytes + 8 + n, weights, 12);
    free(bytes);
}

/* A file as Python writes it (metadata after the tensors, header padded to
 * 8 with spaces, whitespace in the JSON) reads back. */
static void test_reads_foreign_file(void **state)
{
    (void)state;
    const char *json = "{\"x\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 16]}, "
                       "\"y\": {\"dtype\": \"BF16\", \"shape\": [], \"data_offsets\": [16, 18]}, "
                       "\"__metadata__\": {\"format\": \"pt\"}}    ";
    unsigned char data[18] = {0};
    float x[4] = {1, 2, 3, 4};
    memcpy(data, x, sizeof x);
    write_st(path_of("py.safetensors"), json, data, sizeof data, 0);
    keel_st_file *f;
    KS_OK(keel_st_file_load(&f, path_of("py.safetensors")));
    assert_int_equal(keel_st_file_count(f), 2);
    float back[4];
    int64_t shape[2] = {2, 2};
    KS_OK(keel_st_file_read(f, "x", KEEL_ST_F32, 2, shape, back));
    assert_memory_equal(back, x, sizeof x);
    assert_int_equal(keel_st_file_find(f, "y")->dtype, KEEL_ST_BF16);
    assert_string_equal(keel_st_file_metadata(f, "format"), "pt");
    keel_st_file_free(f);
}

static void test_read_checks(void **state)
{
    (void)state;
    const char *path = path_of("ckpt2.safetensors");
    write_sample(path);
    keel_st_file *f;
    KS_OK(keel_st_file_load(&f, path));
    float buf[6];
    int64_t good[2] = {2, 3}, bad[2] = {3, 2};
    KS_OK(keel_st_file_read(f, "conv1.weight", KEEL_ST_F32, 2, good, buf));
    assert_memory_equal(buf, weights, sizeof buf);
    assert_int_equal(keel_st_file_read(f, "conv1.weight", KEEL_ST_F32, 2, bad, buf), KEEL_ERR_SHAPE);
    assert_non_null(strstr(keel_last_error(), "'conv1.weight' has shape 2x3, expected 3x2"));
    assert_non_null(strstr(keel_last_error(), "ckpt2.safetensors"));
    assert_int_equal(keel_st_file_read(f, "conv1.weight", KEEL_ST_I32, 2, good, buf), KEEL_ERR_FORMAT);
    assert_non_null(strstr(keel_last_error(), "dtype F32, expected I32"));
    assert_int_equal(keel_st_file_read(f, "fc.bias", KEEL_ST_F32, 1, good, buf), KEEL_ERR_NOT_FOUND);
    assert_non_null(strstr(keel_last_error(), "'fc.bias'"));

    keel_tensor *t;
    KS_OK(keel_st_file_read_tensor(f, "counts", &t));
    assert_int_equal(t->dtype, KEEL_I32);
    assert_memory_equal(t->data, counts, sizeof counts);
    keel_tensor_free(t);
    assert_int_equal(keel_st_file_read_tensor(f, "opt.step", &t), KEEL_ERR_UNSUPPORTED);
    keel_st_file_free(f);
}

static void test_writer_tensors_and_errors(void **state)
{
    (void)state;
    keel_st_writer *w;
    KS_OK(keel_st_writer_new(&w));
    float data[6] = {0, 1, 2, 3, 4, 5};
    int64_t shape[2] = {3, 2};
    keel_tensor *view;
    KS_OK(keel_tensor_wrap(&view, KEEL_F32, 2, shape, data));
    view->strides[0] = 1; /* the transpose of a 2x3 matrix */
    view->strides[1] = 3;
    KS_OK(keel_st_writer_add_tensor(w, "t", view));
    keel_tensor_free(view);
    memset(data, 0, sizeof data); /* add_tensor copied */

    assert_int_equal(keel_st_writer_add(w, "t", KEEL_ST_F32, 2, shape, data), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "twice"));
    assert_int_equal(keel_st_writer_add(w, "__metadata__", KEEL_ST_F32, 2, shape, data), KEEL_ERR_INVALID_ARGUMENT);
    assert_int_equal(keel_st_writer_add(w, "", KEEL_ST_F32, 2, shape, data), KEEL_ERR_INVALID_ARGUMENT);
    assert_int_equal(keel_st_writer_add(w, "nodata", KEEL_ST_F32, 2, shape, NULL), KEEL_ERR_INVALID_ARGUMENT);
    assert_int_equal(keel_st_writer_add(w, "rank9", KEEL_ST_F32, 9, (int64_t[9]){1, 1, 1, 1, 1, 1, 1, 1, 1}, data),
                     KEEL_ERR_INVALID_ARGUMENT);
    int64_t negative[1] = {-1};
    assert_int_equal(keel_st_writer_add(w, "neg", KEEL_ST_F32, 1, negative, data), KEEL_ERR_INVALID_ARGUMENT);
    /* The failed adds left nothing behind: "nodata" can be added now. */
    KS_OK(keel_st_writer_add_copy(w, "nodata", KEEL_ST_F32, 2, shape, data));

    char bad[200];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x.safetensors", tmp_dir);
    assert_int_equal(keel_st_writer_write(w, bad), KEEL_ERR_IO);
    KS_OK(keel_st_writer_write(w, path_of("w.safetensors")));
    keel_st_writer_free(w);

    keel_st_file *f;
    KS_OK(keel_st_file_load(&f, path_of("w.safetensors")));
    const float want[6] = {0, 3, 1, 4, 2, 5};
    assert_memory_equal(keel_st_file_find(f, "t")->data, want, sizeof want);
    assert_int_equal(keel_st_file_count(f), 2);
    keel_st_file_free(f);
}

/* ---- bad files --------------------------------------------------------------- */

static void test_bad_header_length(void **state)
{
    (void)state;
    const char *json = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    float one = 1.0f;
    write_st(path_of("len.safetensors"), json, &one, 4, 1000000);
    expect_load_error(path_of("len.safetensors"), KEEL_ERR_FORMAT, "header length 1000000", NULL);
    write_st(path_of("len0.safetensors"), json, &one, 4, 0xffffffffffffffffULL);
    expect_load_error(path_of("len0.safetensors"), KEEL_ERR_FORMAT, "header length", NULL);
    write_bytes(path_of("tiny.safetensors"), "\x10\x00\x00", 3);
    expect_load_error(path_of("tiny.safetensors"), KEEL_ERR_FORMAT, "too short", NULL);
    /* A length that cuts the JSON short. */
    write_st(path_of("cut.safetensors"), json, &one, 4, 20);
    expect_load_error(path_of("cut.safetensors"), KEEL_ERR_FORMAT, "JSON", NULL);
    /* A header that is not JSON at all (a wrong file). */
    write_st(path_of("png.safetensors"), "\x89PNG\r\n\x1a\n", NULL, 0, 0);
    expect_load_error(path_of("png.safetensors"), KEEL_ERR_FORMAT, "not a JSON object", NULL);
    expect_load_error(path_of("missing.safetensors"), KEEL_ERR_IO, NULL, NULL);
}

static void test_bad_offsets(void **state)
{
    (void)state;
    unsigned char data[16] = {0};
    write_st(path_of("range.safetensors"), "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", data, 8,
             0);
    expect_load_error(path_of("range.safetensors"), KEEL_ERR_FORMAT, "'w'", "past the end");
    write_st(path_of("overlap.safetensors"),
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
             data, 16, 0);
    expect_load_error(path_of("overlap.safetensors"), KEEL_ERR_FORMAT, "'a'", "'b'");
    assert_non_null(strstr(keel_last_error(), "overlap"));
    write_st(path_of("size.safetensors"), "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", data, 16,
             0);
    expect_load_error(path_of("size.safetensors"), KEEL_ERR_FORMAT, "'w'", "needs 12");
    write_st(path_of("backwards.safetensors"), "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}",
             data, 16, 0);
    expect_load_error(path_of("backwards.safetensors"), KEEL_ERR_FORMAT, "'w'", NULL);
    write_st(path_of("frac.safetensors"), "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0.5,4.5]}}", data,
             16, 0);
    expect_load_error(path_of("frac.safetensors"), KEEL_ERR_FORMAT, "'w'", "data_offsets");
    write_st(path_of("huge.safetensors"),
             "{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", data,
             16, 0);
    expect_load_error(path_of("huge.safetensors"), KEEL_ERR_FORMAT, "'w'", NULL);
}

static void test_truncated_buffer(void **state)
{
    (void)state;
    const char *path = path_of("trunc.safetensors");
    write_sample(path);
    size_t size;
    unsigned char *bytes = read_all(path, &size);
    write_bytes(path, bytes, size - 4);
    expect_load_error(path, KEEL_ERR_FORMAT, "past the end", "truncated");
    free(bytes);
}

static void test_bad_entries(void **state)
{
    (void)state;
    unsigned char data[8] = {0};
    static const struct { const char *json; keel_status status; const char *needle; } cases[] = {
        {"{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", KEEL_ERR_UNSUPPORTED, "F8_E4M3"},
        {"{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", KEEL_ERR_FORMAT, "dtype"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", KEEL_ERR_FORMAT, "shape"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", KEEL_ERR_FORMAT, "shape"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", KEEL_ERR_FORMAT, "data_offsets"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", KEEL_ERR_UNSUPPORTED,
         "9 dimensions"},
        {"{\"w\":[1,2]}", KEEL_ERR_FORMAT, "'w'"},
        {"{\"__metadata__\":{\"epoch\":3}}", KEEL_ERR_FORMAT, "epoch"},
        {"{\"__metadata__\":[]}", KEEL_ERR_FORMAT, "__metadata__"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         KEEL_ERR_FORMAT, "twice"},
        {"[1, 2, 3]", KEEL_ERR_FORMAT, "not a JSON object"},
        {"{\"w\": }", KEEL_ERR_FORMAT, "JSON"},
        {"{} trailing", KEEL_ERR_FORMAT, "after"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        write_st(path_of("entry.safetensors"), cases[c].json, data, sizeof data, 0);
        expect_load_error(path_of("entry.safetensors"), cases[c].status, cases[c].needle, NULL);
    }
    /* An empty header object is a valid file with no tensors. */
    write_st(path_of("none.safetensors"), "{}      ", NULL, 0, 0);
    keel_st_file *f;
    KS_OK(keel_st_file_load(&f, path_of("none.safetensors")));
    assert_int_equal(keel_st_file_count(f), 0);
    assert_null(keel_st_file_find(f, "x"));
    keel_st_file_free(f);
}

/* Every prefix of a valid file, and single-byte changes across its header,
 * load or fail cleanly (ASan checks the "cleanly"). */
static void test_hostile_bytes(void **state)
{
    (void)state;
    const char *path = path_of("good.safetensors");
    write_sample(path);
    size_t size;
    unsigned char *good = read_all(path, &size);
    for (size_t cut = 0; cut < size; cut++) {
        write_bytes(path_of("cut.safetensors"), good, cut);
        keel_st_file *f = NULL;
        assert_int_not_equal(keel_st_file_load(&f, path_of("cut.safetensors")), KEEL_OK);
        assert_null(f);
    }
    static const unsigned char replacements[] = {0, '"', '[', ']', '{', '}', ',', '9', '-', 0xff};
    unsigned char *bent = malloc(size);
    assert_non_null(bent);
    size_t header_end = 8 + (good[0] | (size_t)good[1] << 8);
    for (size_t at = 0; at < header_end; at += 3) {
        for (size_t r = 0; r < sizeof replacements; r++) {
            memcpy(bent, good, size);
            bent[at] = replacements[r];
            write_bytes(path_of("bent.safetensors"), bent, size);
            keel_st_file *f = NULL;
            if (keel_st_file_load(&f, path_of("bent.safetensors")) == KEEL_OK) {
                for (size_t i = 0; i < keel_st_file_count(f); i++) {
                    const keel_st_tensor *t = keel_st_file_at(f, i);
                    volatile unsigned char sink = 0;
                    for (size_t b = 0; b < t->bytes; b++)
                        sink ^= ((const unsigned char *)t->data)[b];
                    (void)sink;
                }
                keel_st_file_free(f);
            }
        }
    }
    free(bent);
    free(good);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_layout_python_reads),
        cmocka_unit_test(test_reads_foreign_file),
        cmocka_unit_test(test_read_checks),
        cmocka_unit_test(test_writer_tensors_and_errors),
        cmocka_unit_test(test_bad_header_length),
        cmocka_unit_test(test_bad_offsets),
        cmocka_unit_test(test_truncated_buffer),
        cmocka_unit_test(test_bad_entries),
        cmocka_unit_test(test_hostile_bytes),
    };
    return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
