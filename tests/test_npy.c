/* .npy input and output: round trips, files written byte by byte as NumPy
 * writes them (other dtypes, versions 2.0 and 3.0, Fortran order), and
 * malformed or hostile files, each of which must give its documented status
 * and never crash. */
#include "support/support.h"
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
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/keel-npy-XXXXXX");
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

/* A .npy file as NumPy writes it: magic, version, header length (2 bytes
 * for 1.0, 4 for 2.0/3.0), the dict padded with spaces and '\n' to a
 * multiple of 64, then `data`. */
static void write_npy(const char *path, int major, const char *dict, const void *data, size_t data_bytes)
{
    size_t prefix = major == 1 ? 10 : 12;
    size_t len = strlen(dict);
    size_t header = (prefix + len + 1 + 63) / 64 * 64 - prefix;
    size_t total = prefix + header + data_bytes;
    unsigned char *buf = calloc(1, total);
    assert_non_null(buf);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    for (size_t i = 0; i < prefix - 8; i++)
        buf[8 + i] = (unsigned char)(header >> (8 * i));
    memcpy(buf + prefix, dict, len);
    memset(buf + prefix + len, ' ', header - len - 1);
    buf[prefix + header - 1] = '\n';
    if (data_bytes)
        memcpy(buf + prefix + header, data, data_bytes);
    write_bytes(path, buf, total);
    free(buf);
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

static void expect_status(const char *path, keel_status want, const char *needle)
{
    keel_tensor *t = (keel_tensor *)0x1;
    keel_status st = keel_tensor_load_npy(&t, path);
    if (st != want)
        fail_msg("%s: expected status '%s', got '%s': %s", path, keel_status_string(want), keel_status_string(st),
                 keel_last_error());
    assert_null(t);
    if (needle && !strstr(keel_last_error(), needle))
        fail_msg("error '%s' does not mention '%s'", keel_last_error(), needle);
}

/* ---- round trips ----------------------------------------------------------- */

static void check_round_trip(keel_dtype dtype, int ndim, const int64_t *shape)
{
    keel_tensor *t, *back;
    KS_OK(keel_tensor_new(&t, dtype, ndim, shape));
    int64_t n = keel_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
        if (dtype == KEEL_F32)
            keel_tensor_f32(t)[i] = (float)i * 0.37f - 5.0f;
        else
            ((int32_t *)t->data)[i] = (int32_t)(i * 7919 - 100000);
    }
    const char *path = path_of("round.npy");
    KS_OK(keel_tensor_save_npy(t, path));
    KS_OK(keel_tensor_load_npy(&back, path));
    assert_int_equal(back->dtype, dtype);
    assert_int_equal(back->ndim, ndim);
    for (int i = 0; i < ndim; i++)
        assert_int_equal(back->shape[i], shape[i]);
    assert_true(keel_tensor_is_contiguous(back));
    if (n)
        assert_memory_equal(back->data, t->data, (size_t)n * 4);
    keel_tensor_free(t);
    keel_tensor_free(back);
}

static void test_round_trip_shapes(void **state)
{
    (void)state;
    static const int64_t s1[] = {7}, s2[] = {3, 4}, s3[] = {2, 3, 4}, s5[] = {2, 1, 3, 2, 2}, s0[] = {0, 3};
    check_round_trip(KEEL_F32, 0, NULL);
    check_round_trip(KEEL_F32, 1, s1);
    check_round_trip(KEEL_F32, 2, s2);
    check_round_trip(KEEL_F32, 3, s3);
    check_round_trip(KEEL_F32, 5, s5);
    check_round_trip(KEEL_F32, 2, s0);
    check_round_trip(KEEL_I32, 1, s1);
    check_round_trip(KEEL_I32, 3, s3);
}

/* Our header must be NumPy's, byte for byte, so NumPy reads it unchanged. */
static void test_header_matches_numpy(void **state)
{
    (void)state;
    static const struct { int ndim; int64_t shape[2]; const char *dict; } cases[] = {
        {0, {0}, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }"},
        {1, {5}, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }"},
        {2, {2, 3}, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        keel_tensor *t;
        KS_OK(keel_tensor_new(&t, KEEL_F32, cases[c].ndim, cases[c].shape));
        KS_OK(keel_tensor_save_npy(t, path_of("header.npy")));
        size_t size;
        unsigned char *bytes = read_all(path_of("header.npy"), &size);
        size_t header_len = bytes[8] | (size_t)bytes[9] << 8;
        assert_int_equal(memcmp(bytes, "\x93NUMPY\x01\x00", 8), 0);
        assert_int_equal((10 + header_len) % 64, 0);
        assert_int_equal(size, 10 + header_len + (size_t)keel_tensor_numel(t) * 4);
        size_t dict_len = strlen(cases[c].dict);
        assert_memory_equal(bytes + 10, cases[c].dict, dict_len);
        for (size_t i = 10 + dict_len; i < 10 + header_len - 1; i++)
            assert_int_equal(bytes[i], ' ');
        assert_int_equal(bytes[10 + header_len - 1], '\n');
        free(bytes);
        keel_tensor_free(t);
    }
}

/* A transposed view (strides swapped) is saved in its logical C order. */
static void test_save_strided(void **state)
{
    (void)state;
    float data[6] = {0, 1, 2, 3, 4, 5}; /* a 2x3 matrix */
    keel_tensor *view, *back;
    int64_t shape[2] = {3, 2};
    KS_OK(keel_tensor_wrap(&view, KEEL_F32, 2, shape, data));
    view->strides[0] = 1;
    view->strides[1] = 3;
    assert_false(keel_tensor_is_contiguous(view));
    KS_OK(keel_tensor_save_npy(view, path_of("strided.npy")));
    KS_OK(keel_tensor_load_npy(&back, path_of("strided.npy")));
    const float want[6] = {0, 3, 1, 4, 2, 5};
    assert_int_equal(back->shape[0], 3);
    assert_int_equal(back->shape[1], 2);
    assert_memory_equal(back->data, want, sizeof want);
    keel_tensor_free(view);
    keel_tensor_free(back);
}

static void test_save_is_atomic(void **state)
{
    (void)state;
    int64_t shape[1] = {4};
    keel_tensor *t;
    KS_OK(keel_tensor_new(&t, KEEL_F32, 1, shape));
    KS_OK(keel_tensor_save_npy(t, path_of("atomic.npy")));
    char tmp[200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path_of("atomic.npy"), (long)getpid());
    assert_int_not_equal(access(tmp, F_OK), 0);
    /* A directory that does not exist: an I/O error naming the path, no file. */
    char bad[200];
    snprintf(bad, sizeof bad, "%s/missing/dir/x.npy", tmp_dir);
    assert_int_equal(keel_tensor_save_npy(t, bad), KEEL_ERR_IO);
    assert_non_null(strstr(keel_last_error(), "missing/dir"));
    keel_tensor_free(t);
}

/* ---- files written as NumPy writes them ------------------------------------ */

static void test_load_f8_i8_u1(void **state)
{
    (void)state;
    double f8[6] = {1.5, -2.25, 3e10, 1e-3, 0.0, -7.0};
    write_npy(path_of("f8.npy"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", f8, sizeof f8);
    keel_tensor *t;
    KS_OK(keel_tensor_load_npy(&t, path_of("f8.npy")));
    assert_int_equal(t->dtype, KEEL_F32);
    for (int i = 0; i < 6; i++)
        assert_true(keel_tensor_f32(t)[i] == (float)f8[i]);
    keel_tensor_free(t);

    int64_t i8[4] = {0, -1, 2147483647, -2147483648LL};
    write_npy(path_of("i8.npy"), 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }", i8, sizeof i8);
    KS_OK(keel_tensor_load_npy(&t, path_of("i8.npy")));
    assert_int_equal(t->dtype, KEEL_I32);
    for (int i = 0; i < 4; i++)
        assert_int_equal(((int32_t *)t->data)[i], (int32_t)i8[i]);
    keel_tensor_free(t);

    int64_t too_big[2] = {1, 1LL << 40};
    write_npy(path_of("i8big.npy"), 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", too_big,
              sizeof too_big);
    expect_status(path_of("i8big.npy"), KEEL_ERR_UNSUPPORTED, "int32");

    unsigned char u1[3] = {0, 128, 255};
    write_npy(path_of("u1.npy"), 1, "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", u1, sizeof u1);
    KS_OK(keel_tensor_load_npy(&t, path_of("u1.npy")));
    assert_int_equal(t->dtype, KEEL_F32);
    assert_true(keel_tensor_f32(t)[2] == 255.0f);
    keel_tensor_free(t);
}

static void test_load_versions_and_spelling(void **state)
{
    (void)state;
    float data[4] = {1, 2, 3, 4};
    /* Version 2.0 and 3.0 headers, keys in another order and double quotes,
     * a Python 2 long, and no trailing comma. */
    const char *dicts[] = {
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
        "{\"shape\": (2L, 2L), \"fortran_order\": False, \"descr\": \"<f4\"}",
        "{ 'fortran_order' : False , 'shape' : ( 2 , 2 ) , 'descr' : '<f4' }",
    };
    for (int major = 1; major <= 3; major++) {
        for (size_t d = 0; d < sizeof dicts / sizeof dicts[0]; d++) {
            write_npy(path_of("v.npy"), major, dicts[d], data, sizeof data);
            keel_tensor *t;
            KS_OK(keel_tensor_load_npy(&t, path_of("v.npy")));
            assert_int_equal(t->ndim, 2);
            assert_memory_equal(t->data, data, sizeof data);
            keel_tensor_free(t);
        }
    }
}

static void test_load_fortran_order(void **state)
{
    (void)state;
    /* The 2x3 matrix [[0 1 2] [3 4 5]] stored column by column. */
    float col_major[6] = {0, 3, 1, 4, 2, 5};
    write_npy(path_of("f.npy"), 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", col_major,
              sizeof col_major);
    keel_tensor *t;
    KS_OK(keel_tensor_load_npy(&t, path_of("f.npy")));
    for (int i = 0; i < 6; i++)
        assert_true(keel_tensor_f32(t)[i] == (float)i);
    keel_tensor_free(t);

    /* 2x3x4 int64 in Fortran order: element (i, j, k) = 100i + 10j + k lives
     * at offset i + 2j + 6k. */
    int64_t f3[24];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 4; k++)
                f3[i + 2 * j + 6 * k] = 100 * i + 10 * j + k;
    write_npy(path_of("f3.npy"), 1, "{'descr': '<i8', 'fortran_order': True, 'shape': (2, 3, 4), }", f3, sizeof f3);
    KS_OK(keel_tensor_load_npy(&t, path_of("f3.npy")));
    const int32_t *v = t->data;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 4; k++)
                assert_int_equal(v[(i * 3 + j) * 4 + k], 100 * i + 10 * j + k);
    keel_tensor_free(t);
}

/* ---- bad files --------------------------------------------------------------- */

static void test_bad_magic_and_short_files(void **state)
{
    (void)state;
    static const char zip[] = "PK\x03\x04 this is a zip file, not npy";
    write_bytes(path_of("magic.npy"), zip, sizeof zip - 1);
    expect_status(path_of("magic.npy"), KEEL_ERR_FORMAT, "magic");
    write_bytes(path_of("empty.npy"), "", 0);
    expect_status(path_of("empty.npy"), KEEL_ERR_FORMAT, "magic");
    write_bytes(path_of("short.npy"), "\x93NUMPY\x01", 7);
    expect_status(path_of("short.npy"), KEEL_ERR_FORMAT, NULL);
    expect_status(path_of("does-not-exist.npy"), KEEL_ERR_IO, "does-not-exist.npy");
    float data[1] = {1};
    write_npy(path_of("v9.npy"), 9, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", data, 4);
    expect_status(path_of("v9.npy"), KEEL_ERR_UNSUPPORTED, "version");
}

static void test_malformed_headers(void **state)
{
    (void)state;
    const char *dicts[] = {
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3}",
        "{'descr': '<f4', 'fortran_order': False}",
        "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': [2], }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
        "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
        "{'descr: '<f4', 'fortran_order': False, 'shape': (2,), }",
        "not a dict at all",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }",
        "",
    };
    float data[2] = {1, 2};
    for (size_t d = 0; d < sizeof dicts / sizeof dicts[0]; d++) {
        write_npy(path_of("bad.npy"), 1, dicts[d], data, sizeof data);
        expect_status(path_of("bad.npy"), KEEL_ERR_FORMAT, "bad.npy");
    }
    /* A header length past the end of the file. */
    unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0xff, 0x7f};
    write_bytes(path_of("long.npy"), prefix, sizeof prefix);
    expect_status(path_of("long.npy"), KEEL_ERR_FORMAT, "truncated");
    /* A version 2.0 header length of 4 GiB is refused before allocating. */
    unsigned char prefix2[12] = {0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 0xff, 0xff, 0xff, 0xff};
    write_bytes(path_of("huge.npy"), prefix2, sizeof prefix2);
    expect_status(path_of("huge.npy"), KEEL_ERR_FORMAT, "header");
}

static void test_truncated_data(void **state)
{
    (void)state;
    float data[3] = {1, 2, 3};
    write_npy(path_of("trunc.npy"), 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", data, sizeof data);
    expect_status(path_of("trunc.npy"), KEEL_ERR_FORMAT, "expected 24 bytes");
    assert_non_null(strstr(keel_last_error(), "got 12"));
    /* A shape whose size overflows is refused without allocating. */
    write_npy(path_of("vast.npy"), 1,
              "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", data,
              sizeof data);
    expect_status(path_of("vast.npy"), KEEL_ERR_FORMAT, NULL);
    write_npy(path_of("big.npy"), 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000,), }", data,
              sizeof data);
    expect_status(path_of("big.npy"), KEEL_ERR_FORMAT, "expected 4000000000 bytes");
}

static void test_unsupported(void **state)
{
    (void)state;
    float data[8] = {0};
    write_npy(path_of("f2.npy"), 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", data, 4);
    expect_status(path_of("f2.npy"), KEEL_ERR_UNSUPPORTED, "'<f2'");
    write_npy(path_of("be.npy"), 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", data, 8);
    expect_status(path_of("be.npy"), KEEL_ERR_UNSUPPORTED, "'>f4'");
    write_npy(path_of("struct.npy"), 1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", data, 8);
    expect_status(path_of("struct.npy"), KEEL_ERR_UNSUPPORTED, "structured");
    write_npy(path_of("six.npy"), 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 2), }", data,
              8);
    expect_status(path_of("six.npy"), KEEL_ERR_UNSUPPORTED, "5 dimensions");
}

/* Every prefix of a valid file, and the file with header bytes changed
 * one at a time, loads or fails cleanly (ASan checks the "cleanly"). */
static void test_hostile_bytes(void **state)
{
    (void)state;
    double data[6] = {1, 2, 3, 4, 5, 6};
    write_npy(path_of("good.npy"), 1, "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }", data, sizeof data);
    size_t size;
    unsigned char *good = read_all(path_of("good.npy"), &size);
    for (size_t cut = 0; cut < size; cut++) {
        write_bytes(path_of("cut.npy"), good, cut);
        keel_tensor *t = NULL;
        assert_int_not_equal(keel_tensor_load_npy(&t, path_of("cut.npy")), KEEL_OK);
        assert_null(t);
    }
    static const unsigned char replacements[] = {0, '(', ')', '\'', ',', '9', 0xff, '{', '}'};
    unsigned char *bent = malloc(size);
    assert_non_null(bent);
    for (size_t at = 0; at < 128; at++) {
        for (size_t r = 0; r < sizeof replacements; r++) {
            memcpy(bent, good, size);
            bent[at] = replacements[r];
            write_bytes(path_of("bent.npy"), bent, size);
            keel_tensor *t = NULL;
            if (keel_tensor_load_npy(&t, path_of("bent.npy")) == KEEL_OK)
                keel_tensor_free(t);
        }
    }
    free(bent);
    free(good);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_shapes),
        cmocka_unit_test(test_header_matches_numpy),
        cmocka_unit_test(test_save_strided),
        cmocka_unit_test(test_save_is_atomic),
        cmocka_unit_test(test_load_f8_i8_u1),
        cmocka_unit_test(test_load_versions_and_spelling),
        cmocka_unit_test(test_load_fortran_order),
        cmocka_unit_test(test_bad_magic_and_short_files),
        cmocka_unit_test(test_malformed_headers),
        cmocka_unit_test(test_truncated_data),
        cmocka_unit_test(test_unsupported),
        cmocka_unit_test(test_hostile_bytes),
    };
    return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
