/* Datasets and loaders: IDX files (raw and gzipped) and CIFAR-10 batches
 * written here, their error cases, the real Fashion-MNIST when installed,
 * statistics and normalisation, and the loader's order, padding and
 * prefetch determinism. */
#include "support/support.h"
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

static char tmp_dir[64];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/keel-data-XXXXXX");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    (void)state;
    return nftw(tmp_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Paths in the temporary directory; two slots so that an images and a
 * labels path can be alive at once. */
static const char *path_of(int slot, const char *name)
{
    static char paths[2][200];
    snprintf(paths[slot], sizeof paths[slot], "%s/%s", tmp_dir, name);
    return paths[slot];
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* An IDX file: magic, big-endian dims, then `data_bytes` of data (which may
 * be fewer than the dims claim, for truncation tests). */
static void write_idx(const char *path, uint32_t magic, int ndim, const uint32_t *dims, const uint8_t *data,
                      size_t data_bytes, bool gzip)
{
    unsigned char header[16];
    put_be32(header, magic);
    for (int i = 0; i < ndim; i++)
        put_be32(header + 4 + 4 * i, dims[i]);
    size_t header_bytes = 4 + 4 * (size_t)ndim;
    if (gzip) {
        gzFile gz = gzopen(path, "wb");
        assert_non_null(gz);
        assert_int_equal(gzwrite(gz, header, (unsigned)header_bytes), (int)header_bytes);
        if (data_bytes)
            assert_int_equal(gzwrite(gz, data, (unsigned)data_bytes), (int)data_bytes);
        assert_int_equal(gzclose(gz), Z_OK);
    } else {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(header, 1, header_bytes, f), header_bytes);
        if (data_bytes)
            assert_int_equal(fwrite(data, 1, data_bytes, f), data_bytes);
        assert_int_equal(fclose(f), 0);
    }
}

enum { N_IMAGES = 7, ROWS = 4, COLS = 5 };

static uint8_t sample_pixel(int i, int k)
{
    return (uint8_t)(i * 37 + k * 11 + 3);
}

static void write_small_mnist(const char *images, const char *labels, bool gzip_images, bool gzip_labels)
{
    uint8_t pixels[N_IMAGES * ROWS * COLS], label_bytes[N_IMAGES];
    for (int i = 0; i < N_IMAGES; i++) {
        for (int k = 0; k < ROWS * COLS; k++)
            pixels[i * ROWS * COLS + k] = sample_pixel(i, k);
        label_bytes[i] = (uint8_t)((i * 3) % 10);
    }
    write_idx(images, 0x803, 3, (uint32_t[]){N_IMAGES, ROWS, COLS}, pixels, sizeof pixels, gzip_images);
    write_idx(labels, 0x801, 1, (uint32_t[]){N_IMAGES}, label_bytes, sizeof label_bytes, gzip_labels);
}

static void check_small_mnist(const keel_dataset *d)
{
    assert_int_equal(keel_dataset_size(d), N_IMAGES);
    int c, h, w;
    keel_dataset_image_shape(d, &c, &h, &w);
    assert_int_equal(c, 1);
    assert_int_equal(h, ROWS);
    assert_int_equal(w, COLS);
    assert_int_equal(keel_dataset_classes(d), 10);
    float image[ROWS * COLS];
    int32_t label;
    for (int i = 0; i < N_IMAGES; i++) {
        KS_OK(keel_dataset_get(d, i, image, &label));
        assert_int_equal(label, (i * 3) % 10);
        for (int k = 0; k < ROWS * COLS; k++)
            assert_true(image[k] == (float)sample_pixel(i, k) / 255.0f);
    }
    assert_int_equal(keel_dataset_get(d, N_IMAGES, image, &label), KEEL_ERR_INVALID_ARGUMENT);
}

static void expect_error(keel_status got, keel_status want, const char *needle1, const char *needle2)
{
    if (got != want)
        fail_msg("expected '%s', got '%s': %s", keel_status_string(want), keel_status_string(got), keel_last_error());
    if (needle1 && !strstr(keel_last_error(), needle1))
        fail_msg("error '%s' does not mention '%s'", keel_last_error(), needle1);
    if (needle2 && !strstr(keel_last_error(), needle2))
        fail_msg("error '%s' does not mention '%s'", keel_last_error(), needle2);
}

/* ---- IDX ----------------------------------------------------------------------- */

static void test_idx_raw_and_gzip(void **state)
{
    (void)state;
    for (int mode = 0; mode < 4; mode++) {
        const char *images = path_of(0, "images.idx"), *labels = path_of(1, "labels.idx");
        write_small_mnist(images, labels, mode & 1, mode & 2);
        keel_dataset *d;
        KS_OK(keel_dataset_load_idx(&d, images, labels));
        check_small_mnist(d);
        keel_dataset_free(d);
    }
}

static void test_mnist_dir(void **state)
{
    (void)state;
    char dir[160];
    snprintf(dir, sizeof dir, "%s/mnist", tmp_dir);
    assert_int_equal(mkdir(dir, 0755), 0);
    /* Raw images next to gzipped labels: NAME and NAME.gz are both found. */
    write_small_mnist(path_of(0, "mnist/t10k-images-idx3-ubyte"), path_of(1, "mnist/t10k-labels-idx1-ubyte.gz"), false,
                      true);
    keel_dataset *d;
    KS_OK(keel_dataset_load_mnist_dir(&d, dir, false));
    check_small_mnist(d);
    keel_dataset_free(d);
    expect_error(keel_dataset_load_mnist_dir(&d, dir, true), KEEL_ERR_IO, "train-images-idx3-ubyte", "neither");
    assert_null(d);
    char missing[200];
    snprintf(missing, sizeof missing, "%s/not-there", tmp_dir);
    expect_error(keel_dataset_load_mnist_dir(&d, missing, true), KEEL_ERR_IO, "not-there", "--data");
}

static void test_idx_truncated(void **state)
{
    (void)state;
    uint8_t pixels[N_IMAGES * ROWS * COLS] = {0}, label_bytes[N_IMAGES] = {0};
    const char *images = path_of(0, "trunc-images"), *labels = path_of(1, "trunc-labels");
    write_idx(labels, 0x801, 1, (uint32_t[]){N_IMAGES}, label_bytes, sizeof label_bytes, false);
    for (int gzip = 0; gzip < 2; gzip++) {
        /* The header claims 140 bytes; the file holds 130. */
        write_idx(images, 0x803, 3, (uint32_t[]){N_IMAGES, ROWS, COLS}, pixels, sizeof pixels - 10, gzip);
        keel_dataset *d;
        expect_error(keel_dataset_load_idx(&d, images, labels), KEEL_ERR_FORMAT, "expected 140 bytes", "got 130");
        assert_null(d);
    }
    /* A gzip stream cut short: what zlib decoded is reported with its error. */
    write_idx(images, 0x803, 3, (uint32_t[]){N_IMAGES, ROWS, COLS}, pixels, sizeof pixels, true);
    FILE *f = fopen(images, "rb");
    unsigned char buf[512];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    write_bytes(images, buf, n - 12);
    keel_dataset *d;
    expect_error(keel_dataset_load_idx(&d, images, labels), KEEL_ERR_FORMAT, "trunc-images", NULL);
    /* A damaged CRC in the gzip trailer: every data byte decodes, and the
     * file is still refused. */
    write_idx(images, 0x803, 3, (uint32_t[]){N_IMAGES, ROWS, COLS}, pixels, sizeof pixels, true);
    f = fopen(images, "rb");
    n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    buf[n - 8] ^= 0xff;
    write_bytes(images, buf, n);
    expect_error(keel_dataset_load_idx(&d, images, labels), KEEL_ERR_FORMAT, "trunc-images", "zlib");
    /* Only a header. */
    write_bytes(images, "\x00\x00\x08", 3);
    expect_error(keel_dataset_load_idx(&d, images, labels), KEEL_ERR_FORMAT, "IDX header", NULL);
    /* A header claiming 2^32 x 2^16 x 2^16 bytes in a tiny file is refused
     * before any allocation, raw or compressed. */
    for (int gzip = 0; gzip < 2; gzip++) {
        write_idx(images, 0x803, 3, (uint32_t[]){0xffffffffu, 65536, 65536}, pixels, 16, gzip);
        expect_error(keel_dataset_load_idx(&d, images, labels), KEEL_ERR_FORMAT, "trunc-images", NULL);
    }
}

static void test_idx_bad_contents(void **state)
{
    (void)state;
    const char *images = path_of(0, "bad-images.gz"), *labels = path_of(1, "bad-labels.gz");
    write_small_mnist(images, labels, true, true);
    keel_dataset *d;
    /* Swapped: the labels file where images belong. */
    expect_error(keel_dataset_load_idx(&d, labels, images), KEEL_ERR_FORMAT, "bad magic 0x00000801", "label file");
    write_idx(images, 0x0000ABCD, 0, NULL, NULL, 0, false);
    expect_error(keel_dataset_load_idx(&d, images, labels), KEEL_ERR_FORMAT, "bad magic 0x0000abcd", "0x00000803");
    /* 7 images, 6 labels. */
    write_small_mnist(images, labels, true, true);
    uint8_t six[6] = {0};
    write_idx(labels, 0x801, 1, (uint32_t[]){6}, six, sizeof six, true);
    expect_error(keel_dataset_load_idx(&d, images, labels), KEEL_ERR_FORMAT, "7 images", "6 labels");
    /* A label outside [0, 10). */
    uint8_t seven[7] = {0, 1, 2, 12, 4, 5, 6};
    write_idx(labels, 0x801, 1, (uint32_t[]){7}, seven, sizeof seven, false);
    expect_error(keel_dataset_load_idx(&d, images, labels), KEEL_ERR_FORMAT, "label 12 of sample 3", "[0, 10)");
    expect_error(keel_dataset_load_idx(&d, path_of(0, "nope"), labels), KEEL_ERR_IO, "nope", NULL);
}

/* ---- Fashion-MNIST ------------------------------------------------------------- */

static void check_fashion(const char *dir, bool train)
{
    keel_dataset *d;
    KS_OK(keel_dataset_load_mnist_dir(&d, dir, train));
    int64_t want = train ? 60000 : 10000;
    assert_int_equal(keel_dataset_size(d), want);
    int c, h, w;
    keel_dataset_image_shape(d, &c, &h, &w);
    assert_int_equal(c, 1);
    assert_int_equal(h, 28);
    assert_int_equal(w, 28);
    assert_int_equal(keel_dataset_classes(d), 10);
    int64_t per_class[10] = {0};
    for (int64_t i = 0; i < want; i++) {
        int32_t label;
        KS_OK(keel_dataset_get(d, i, NULL, &label));
        assert_true(label >= 0 && label < 10);
        per_class[label]++;
    }
    for (int k = 0; k < 10; k++) /* Fashion-MNIST is balanced */
        assert_int_equal(per_class[k], want / 10);
    if (train) {
        /* The published statistics of the training set: 0.2860 and 0.3530. */
        float mean, std;
        KS_OK(keel_dataset_channel_stats(d, &mean, &std));
        printf("fashion-mnist train: mean %.4f std %.4f\n", mean, std);
        assert_true(fabsf(mean - 0.2860f) < 1e-3f);
        assert_true(fabsf(std - 0.3530f) < 1e-3f);
    }
    keel_dataset_free(d);
}

static void test_fashion_mnist(void **state)
{
    (void)state;
    const char *dir = getenv("KEEL_DATA_DIR");
    struct stat sb;
    if (!dir || stat(dir, &sb) != 0) {
        printf("KEEL_DATA_DIR not set or missing; install dataset-fashion-mnist to run this test\n");
        skip();
    }
    check_fashion(dir, true);
    check_fashion(dir, false);
}

/* ---- CIFAR-10 --------------------------------------------------------------------- */

enum { CIFAR_RECORD = 3073 };

static uint8_t cifar_pixel(int file, int record, int k)
{
    return (uint8_t)(file * 101 + record * 13 + k * 7);
}

static void write_cifar(const char *path, int file, int records, int bad_label_at)
{
    uint8_t *buf = malloc((size_t)records * CIFAR_RECORD);
    assert_non_null(buf);
    for (int r = 0; r < records; r++) {
        uint8_t *rec = buf + (size_t)r * CIFAR_RECORD;
        rec[0] = (uint8_t)(r == bad_label_at ? 10 : (file + r) % 10);
        for (int k = 0; k < 3072; k++)
            rec[1 + k] = cifar_pixel(file, r, k);
    }
    write_bytes(path, buf, (size_t)records * CIFAR_RECORD);
    free(buf);
}

static void test_cifar10(void **state)
{
    (void)state;
    char dir[160], name[64];
    snprintf(dir, sizeof dir, "%s/cifar", tmp_dir);
    assert_int_equal(mkdir(dir, 0755), 0);
    assert_int_equal(mkdir(path_of(0, "cifar/cifar-10-batches-bin"), 0755), 0);
    write_cifar(path_of(0, "cifar/cifar-10-batches-bin/test_batch.bin"), 0, 4, -1);
    for (int b = 1; b <= 5; b++) {
        snprintf(name, sizeof name, "cifar/cifar-10-batches-bin/data_batch_%d.bin", b);
        write_cifar(path_of(0, name), b, 3, -1);
    }
    keel_dataset *d;
    /* The directory that holds cifar-10-batches-bin works too. */
    KS_OK(keel_dataset_load_cifar10(&d, dir, true));
    assert_int_equal(keel_dataset_size(d), 15);
    int c, h, w;
    keel_dataset_image_shape(d, &c, &h, &w);
    assert_true(c == 3 && h == 32 && w == 32);
    float image[3072];
    int32_t label;
    for (int b = 1; b <= 5; b++) {
        for (int r = 0; r < 3; r++) {
            KS_OK(keel_dataset_get(d, (b - 1) * 3 + r, image, &label));
            assert_int_equal(label, (b + r) % 10);
            for (int k = 0; k < 3072; k++) /* red plane, green plane, blue plane: already CHW */
                assert_true(image[k] == (float)cifar_pixel(b, r, k) / 255.0f);
        }
    }
    keel_dataset_free(d);
    KS_OK(keel_dataset_load_cifar10(&d, path_of(0, "cifar/cifar-10-batches-bin"), false));
    assert_int_equal(keel_dataset_size(d), 4);
    keel_dataset_free(d);

    /* A label of 10, a file cut mid-record, a missing batch. */
    write_cifar(path_of(0, "cifar/cifar-10-batches-bin/data_batch_2.bin"), 2, 3, 1);
    expect_error(keel_dataset_load_cifar10(&d, dir, true), KEEL_ERR_FORMAT, "data_batch_2.bin", "label 10 of record 1");
    write_cifar(path_of(0, "cifar/cifar-10-batches-bin/data_batch_2.bin"), 2, 3, -1);
    assert_int_equal(truncate(path_of(0, "cifar/cifar-10-batches-bin/data_batch_2.bin"), 3 * CIFAR_RECORD - 100), 0);
    expect_error(keel_dataset_load_cifar10(&d, dir, true), KEEL_ERR_FORMAT, "data_batch_2.bin", "3073");
    remove(path_of(0, "cifar/cifar-10-batches-bin/data_batch_2.bin"));
    expect_error(keel_dataset_load_cifar10(&d, dir, true), KEEL_ERR_IO, "data_batch_2.bin", NULL);
    assert_null(d);
}

/* ---- statistics and normalisation ---------------------------------------------- */

static void test_stats_and_normalization(void **state)
{
    (void)state;
    enum { N = 9, C = 3, HW = 6 };
    uint8_t pixels[N * C * HW];
    int32_t labels[N];
    for (int i = 0; i < N * C * HW; i++)
        pixels[i] = (uint8_t)((i * 97 + 13) % 256);
    for (int i = 0; i < N; i++)
        labels[i] = i % 4;
    keel_dataset *d;
    KS_OK(keel_dataset_from_u8(&d, N, C, 2, 3, 4, pixels, labels));
    float mean[C], std[C];
    KS_OK(keel_dataset_channel_stats(d, mean, std));
    for (int c = 0; c < C; c++) {
        double sum = 0, sq = 0;
        for (int i = 0; i < N; i++)
            for (int k = 0; k < HW; k++)
                sum += pixels[(i * C + c) * HW + k] / 255.0;
        double m = sum / (N * HW);
        for (int i = 0; i < N; i++)
            for (int k = 0; k < HW; k++)
                sq += pow(pixels[(i * C + c) * HW + k] / 255.0 - m, 2);
        double s = sqrt(sq / (N * HW));
        assert_true(fabs(mean[c] - m) < 1e-6);
        assert_true(fabs(std[c] - s) < 1e-6);
    }
    KS_OK(keel_dataset_set_normalization(d, mean, std));
    float image[C * HW];
    int32_t label;
    KS_OK(keel_dataset_get(d, 5, image, &label));
    assert_int_equal(label, 1);
    for (int c = 0; c < C; c++)
        for (int k = 0; k < HW; k++) {
            double want = (pixels[(5 * C + c) * HW + k] / 255.0 - mean[c]) / std[c];
            assert_true(fabs(image[c * HW + k] - want) < 1e-5);
        }
    float zero_std[C] = {1, 0, 1};
    expect_error(keel_dataset_set_normalization(d, mean, zero_std), KEEL_ERR_INVALID_ARGUMENT, "channel 1", NULL);
    KS_OK(keel_dataset_set_normalization(d, NULL, NULL));
    KS_OK(keel_dataset_get(d, 5, image, NULL));
    assert_true(image[0] == (float)pixels[5 * C * HW] / 255.0f);

    KS_OK(keel_dataset_truncate(d, 4));
    assert_int_equal(keel_dataset_size(d), 4);
    KS_OK(keel_dataset_truncate(d, 100));
    assert_int_equal(keel_dataset_size(d), 4);
    expect_error(keel_dataset_truncate(d, 0), KEEL_ERR_INVALID_ARGUMENT, NULL, NULL);
    keel_dataset_free(d);

    labels[2] = 4;
    expect_error(keel_dataset_from_u8(&d, N, C, 2, 3, 4, pixels, labels), KEEL_ERR_FORMAT, "label 4 of sample 2", NULL);
}

/* ---- loader ------------------------------------------------------------------------ */

/* Each sample's two pixels spell its index, so a batch says which samples
 * it holds; the label is the index mod 10. */
enum { L_COUNT = 103, L_PIXELS = 2 };

static keel_dataset *indexed_dataset(int64_t count)
{
    uint8_t *pixels = malloc((size_t)count * L_PIXELS);
    int32_t *labels = malloc((size_t)count * sizeof *labels);
    assert_true(pixels && labels);
    for (int64_t i = 0; i < count; i++) {
        pixels[i * L_PIXELS] = (uint8_t)(i % 256);
        pixels[i * L_PIXELS + 1] = (uint8_t)(i / 256);
        labels[i] = (int32_t)(i % 10);
    }
    keel_dataset *d;
    KS_OK(keel_dataset_from_u8(&d, count, 1, 1, L_PIXELS, 10, pixels, labels));
    free(pixels);
    free(labels);
    return d;
}

static int64_t sample_index(const float *image)
{
    return (int64_t)lroundf(image[0] * 255.0f) + 256 * (int64_t)lroundf(image[1] * 255.0f);
}

/* Runs one epoch and records the sample order (and checks labels and the
 * padding); returns the number of samples seen. */
static int64_t run_epoch(keel_loader *l, int64_t epoch, int64_t batch, int64_t *order)
{
    KS_OK(keel_loader_start_epoch(l, epoch));
    int64_t seen = 0, batches = 0;
    for (;;) {
        const float *images;
        const int32_t *labels;
        int64_t count;
        KS_OK(keel_loader_next(l, &images, &labels, &count));
        if (count == 0)
            break;
        batches++;
        assert_true(count <= batch);
        for (int64_t i = 0; i < count; i++) {
            int64_t index = sample_index(images + i * L_PIXELS);
            assert_int_equal(labels[i], index % 10);
            order[seen++] = index;
        }
        for (int64_t i = count; i < batch; i++) { /* the zero-padded tail */
            assert_true(images[i * L_PIXELS] == 0.0f && images[i * L_PIXELS + 1] == 0.0f);
            assert_int_equal(labels[i], 0);
        }
    }
    assert_int_equal(batches, keel_loader_batches(l));
    const float *images;
    const int32_t *labels;
    int64_t count = -1;
    KS_OK(keel_loader_next(l, &images, &labels, &count)); /* still the end */
    assert_int_equal(count, 0);
    assert_null(images);
    return seen;
}

static bool is_permutation(const int64_t *order, int64_t n)
{
    bool *hit = calloc((size_t)n, 1);
    bool ok = true;
    for (int64_t i = 0; i < n && ok; i++) {
        ok = order[i] >= 0 && order[i] < n && !hit[order[i]];
        if (ok)
            hit[order[i]] = true;
    }
    free(hit);
    return ok;
}

static keel_loader *make_loader(const keel_dataset *d, int64_t batch, bool shuffle, uint64_t seed, bool drop_last,
                                bool prefetch)
{
    keel_loader_opts opts = {.batch = batch, .shuffle = shuffle, .seed = seed, .drop_last = drop_last,
                             .no_prefetch = !prefetch};
    keel_loader *l;
    KS_OK(keel_loader_create(&l, d, &opts));
    return l;
}

static void test_loader_epochs(void **state)
{
    (void)state;
    keel_dataset *d = indexed_dataset(L_COUNT);
    int64_t a[L_COUNT], b[L_COUNT], c[L_COUNT];
    keel_loader *l = make_loader(d, 10, true, 42, false, true);
    assert_int_equal(keel_loader_batches(l), 11);
    /* Every sample exactly once per epoch, the last batch holding 3. */
    assert_int_equal(run_epoch(l, 0, 10, a), L_COUNT);
    assert_true(is_permutation(a, L_COUNT));
    /* Another epoch, another order; the same epoch again, the same order. */
    assert_int_equal(run_epoch(l, 1, 10, b), L_COUNT);
    assert_true(is_permutation(b, L_COUNT));
    assert_true(memcmp(a, b, sizeof a) != 0);
    assert_int_equal(run_epoch(l, 0, 10, c), L_COUNT);
    assert_memory_equal(a, c, sizeof a);
    keel_loader_destroy(l);

    /* A new loader with the same seed starts at epoch 1 as a resumed run
     * would, and sees epoch 1's order; another seed gives another order. */
    l = make_loader(d, 10, true, 42, false, true);
    run_epoch(l, 1, 10, c);
    assert_memory_equal(b, c, sizeof b);
    keel_loader_destroy(l);
    l = make_loader(d, 10, true, 43, false, false);
    run_epoch(l, 0, 10, c);
    assert_true(memcmp(a, c, sizeof a) != 0);
    keel_loader_destroy(l);

    /* No shuffle: dataset order. */
    l = make_loader(d, 16, false, 42, false, true);
    run_epoch(l, 3, 16, c);
    for (int64_t i = 0; i < L_COUNT; i++)
        assert_int_equal(c[i], i);
    keel_loader_destroy(l);
    keel_dataset_free(d);
}

/* Two shards of one seeded order are disjoint, and together they are the
 * global batches of an unsharded loader with twice the batch. */
static void test_loader_shards(void **state)
{
    (void)state;
    keel_dataset *d = indexed_dataset(L_COUNT);
    int64_t whole[L_COUNT], shard[2][L_COUNT];
    keel_loader *l = make_loader(d, 10, true, 9, true, true);
    int64_t n_whole = run_epoch(l, 2, 10, whole);
    keel_loader_destroy(l);
    for (int r = 0; r < 2; r++) {
        keel_loader_opts opts = {.batch = 5, .shuffle = true, .seed = 9, .drop_last = true, .shard_count = 2,
                                 .shard_index = r};
        KS_OK(keel_loader_create(&l, d, &opts));
        assert_int_equal(keel_loader_batches(l), n_whole / 10);
        assert_int_equal(run_epoch(l, 2, 5, shard[r]), n_whole / 2);
        keel_loader_destroy(l);
    }
    for (int64_t k = 0; k < n_whole / 10; k++)
        for (int64_t i = 0; i < 5; i++) {
            assert_int_equal(shard[0][k * 5 + i], whole[k * 10 + i]);
            assert_int_equal(shard[1][k * 5 + i], whole[k * 10 + 5 + i]);
        }
    keel_loader_opts bad = {.batch = 5, .shard_count = 2, .shard_index = 0};
    assert_int_equal(keel_loader_create(&l, d, &bad), KEEL_ERR_INVALID_ARGUMENT); /* needs drop_last */
    bad.drop_last = true;
    bad.shard_index = 2;
    assert_int_equal(keel_loader_create(&l, d, &bad), KEEL_ERR_INVALID_ARGUMENT);
    keel_dataset_free(d);
}

static void test_loader_drop_last_and_errors(void **state)
{
    (void)state;
    keel_dataset *d = indexed_dataset(L_COUNT);
    keel_loader *l = make_loader(d, 10, true, 7, true, true);
    assert_int_equal(keel_loader_batches(l), 10);
    int64_t order[L_COUNT];
    assert_int_equal(run_epoch(l, 0, 10, order), 100);
    for (int i = 0; i < 100; i++)
        for (int j = 0; j < i; j++)
            assert_int_not_equal(order[i], order[j]);
    keel_loader_destroy(l);

    l = make_loader(d, 10, true, 7, false, true);
    const float *images;
    const int32_t *labels;
    int64_t count;
    expect_error(keel_loader_next(l, &images, &labels, &count), KEEL_ERR_STATE, "start_epoch", NULL);
    keel_loader_destroy(l);

    keel_loader_opts opts = {.batch = 0};
    expect_error(keel_loader_create(&l, d, &opts), KEEL_ERR_INVALID_ARGUMENT, "batch", NULL);
    opts = (keel_loader_opts){.batch = 200, .drop_last = true};
    expect_error(keel_loader_create(&l, d, &opts), KEEL_ERR_INVALID_ARGUMENT, "103 samples", NULL);
    keel_dataset_free(d);
}

/* Prefetching changes when batches are assembled, never what they hold:
 * whole batch buffers are compared bit for bit, over several epochs, with
 * normalisation on. */
static void test_loader_prefetch_matches(void **state)
{
    (void)state;
    enum { COUNT = 1000, BATCH = 64 };
    uint8_t *pixels = malloc(COUNT * 3 * 8 * 8);
    int32_t *labels = malloc(COUNT * sizeof *labels);
    for (int i = 0; i < COUNT * 3 * 8 * 8; i++)
        pixels[i] = (uint8_t)((i * 2654435761u) >> 24);
    for (int i = 0; i < COUNT; i++)
        labels[i] = (i * 7) % 10;
    keel_dataset *d;
    KS_OK(keel_dataset_from_u8(&d, COUNT, 3, 8, 8, 10, pixels, labels));
    float mean[3], std[3];
    KS_OK(keel_dataset_channel_stats(d, mean, std));
    KS_OK(keel_dataset_set_normalization(d, mean, std));
    keel_loader *on = make_loader(d, BATCH, true, 99, false, true);
    keel_loader *off = make_loader(d, BATCH, true, 99, false, false);
    for (int64_t epoch = 0; epoch < 4; epoch++) {
        KS_OK(keel_loader_start_epoch(on, epoch));
        KS_OK(keel_loader_start_epoch(off, epoch));
        for (;;) {
            const float *xa, *xb;
            const int32_t *ya, *yb;
            int64_t na, nb;
            KS_OK(keel_loader_next(on, &xa, &ya, &na));
            KS_OK(keel_loader_next(off, &xb, &yb, &nb));
            assert_int_equal(na, nb);
            if (na == 0)
                break;
            assert_memory_equal(xa, xb, BATCH * 3 * 8 * 8 * sizeof(float));
            assert_memory_equal(ya, yb, BATCH * sizeof(int32_t));
        }
    }
    keel_loader_destroy(on);
    keel_loader_destroy(off);
    free(pixels);
    free(labels);
    keel_dataset_free(d);
}

/* Restarting mid-epoch, destroying mid-epoch and destroying before any
 * epoch all end cleanly, and a restart gives the full new epoch. */
static void test_loader_restart_and_shutdown(void **state)
{
    (void)state;
    keel_dataset *d = indexed_dataset(L_COUNT);
    int64_t want[L_COUNT], got[L_COUNT];
    keel_loader *ref = make_loader(d, 8, true, 5, false, false);
    run_epoch(ref, 1, 8, want);
    keel_loader_destroy(ref);

    keel_loader *l = make_loader(d, 8, true, 5, false, true);
    for (int round = 0; round < 20; round++) {
        KS_OK(keel_loader_start_epoch(l, 0));
        const float *images;
        const int32_t *labels;
        int64_t count;
        for (int k = 0; k < round % 5; k++)
            KS_OK(keel_loader_next(l, &images, &labels, &count));
        assert_int_equal(run_epoch(l, 1, 8, got), L_COUNT);
        assert_memory_equal(want, got, sizeof want);
    }
    KS_OK(keel_loader_start_epoch(l, 2));
    const float *images;
    const int32_t *labels;
    int64_t count;
    KS_OK(keel_loader_next(l, &images, &labels, &count));
    keel_loader_destroy(l); /* mid-epoch, worker possibly busy */
    keel_loader_destroy(make_loader(d, 8, true, 5, false, true));
    keel_dataset_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idx_raw_and_gzip),
        cmocka_unit_test(test_mnist_dir),
        cmocka_unit_test(test_idx_truncated),
        cmocka_unit_test(test_idx_bad_contents),
        cmocka_unit_test(test_fashion_mnist),
        cmocka_unit_test(test_cifar10),
        cmocka_unit_test(test_stats_and_normalization),
        cmocka_unit_test(test_loader_epochs),
        cmocka_unit_test(test_loader_drop_last_and_errors),
        cmocka_unit_test(test_loader_shards),
        cmocka_unit_test(test_loader_prefetch_matches),
        cmocka_unit_test(test_loader_restart_and_shutdown),
    };
    return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
