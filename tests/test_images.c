/* Image datasets: a small tree of JPEGs and PNGs written here (a planted
 * corrupt file and a truncated JPEG among them), folders and list files,
 * decoding and the short-side resize against a float64 reference, packed
 * shards against the folder, damaged shards and list lines, each
 * augmentation on known inputs, the worker loader's determinism, and the
 * top-1 / top-5 error with ten-crop averaging. */
#include "support/support.h"
#include "data/image_internal.h"
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp_dir[64];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static const char *path_in(int slot, const char *fmt, const char *name)
{
    static char paths[4][300];
    char rel[200];
    snprintf(rel, sizeof rel, fmt, name);
    snprintf(paths[slot], sizeof paths[slot], "%s/%s", tmp_dir, rel);
    return paths[slot];
}

static const char *at(int slot, const char *rel)
{
    return path_in(slot, "%s", rel);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static long file_size(const char *path)
{
    struct stat info;
    assert_int_equal(stat(path, &info), 0);
    return (long)info.st_size;
}

static void copy_prefix(const char *from, const char *to, long bytes)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    for (long i = 0; i < bytes; i++) {
        int c = fgetc(in);
        assert_true(c != EOF);
        fputc(c, out);
    }
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

/* A smooth pattern with a little noise, as photographs are: JPEG keeps it
 * well, so decoded pixels stay near the originals. */
static void fill_pattern(keel_image *img, int height, int width, uint64_t seed)
{
    assert_true(keel_image_reserve(img, height, width));
    keel_rng rng;
    keel_rng_init(&rng, seed);
    double fx = 0.05 + 0.1 * keel_rng_uniform(&rng), fy = 0.05 + 0.1 * keel_rng_uniform(&rng);
    for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++)
            for (int c = 0; c < 3; c++) {
                double v = 128 + 90 * sin(fx * x + fy * y + 2.1 * c) + 8 * (keel_rng_uniform(&rng) - 0.5);
                img->pixels[((size_t)y * width + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
}

/* ---- the tree -------------------------------------------------------------- */

typedef struct tree_file {
    const char *rel;
    int width, height;
    int label;
    bool corrupt;
} tree_file;

/* In the sorted order the folder reader must produce. */
static const tree_file tree[] = {
    {"ant/a0.jpg", 300, 200, 0, false},
    {"ant/a1.png", 40, 56, 0, false},
    {"ant/a2.JPEG", 64, 64, 0, false},
    {"bee/b0.png", 47, 33, 1, false},
    {"bee/b1.jpg", 80, 120, 1, false},
    {"bee/cut.jpg", 90, 70, 1, true},      /* a JPEG cut in half */
    {"cat/broken.jpg", 0, 0, 2, true},     /* text, not a JPEG */
    {"cat/c0.jpg", 50, 36, 2, false},
    {"cat/more/c1.png", 36, 36, 2, false}, /* found by the recursive walk */
};
#define TREE_FILES ((int)(sizeof tree / sizeof tree[0]))
#define TREE_GOOD 7

static bool have_jpeg = true;

static void make_tree(void)
{
    const char *dirs[] = {"ant", "bee", "cat", "cat/more", "empty_root", "noimg", "noimg/cls", "flat"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        assert_int_equal(mkdir(at(0, dirs[i]), 0777), 0);
    keel_image img = {0};
    for (int i = 0; i < TREE_FILES; i++) {
        const tree_file *f = &tree[i];
        if (f->width == 0) {
            write_text(at(0, f->rel), "this is not an image\n");
            continue;
        }
        fill_pattern(&img, f->height, f->width, 100 + (uint64_t)i);
        keel_status st = keel_image_save(&img, at(0, f->rel), 95);
        if (st == KEEL_ERR_UNSUPPORTED) {
            have_jpeg = false;
            continue;
        }
        KS_OK(st);
        if (f->corrupt) {
            KS_OK(keel_image_save(&img, at(1, "whole.jpg"), 95));
            copy_prefix(at(1, "whole.jpg"), at(0, f->rel), file_size(at(1, "whole.jpg")) / 2);
            remove(at(1, "whole.jpg"));
        }
    }
    write_text(at(0, "ant/notes.txt"), "ignored\n");
    /* train/ holds only the three classes (the temporary folder also has
     * folders for the error cases), linked as ImageNet copies often are. */
    assert_int_equal(mkdir(at(0, "train"), 0777), 0);
    const char *classes[] = {"ant", "bee", "cat"};
    for (int c = 0; c < 3; c++)
        assert_int_equal(symlink(at(0, classes[c]), path_in(1, "train/%s", classes[c])), 0);
    write_text(at(0, "noimg/cls/readme.txt"), "no images here\n");
    keel_image_release(&img);
}

static int setup_tree(void **state)
{
    (void)state;
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/keel-images-XXXXXX");
    if (!mkdtemp(tmp_dir))
        return -1;
    make_tree();
    return 0;
}

static int remove_tree(void **state)
{
    (void)state;
    return nftw(tmp_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

static void need_jpeg(void)
{
    if (!have_jpeg)
        skip();
}

/* Warnings collected from the dataset callback. */
typedef struct warnings {
    int count;
    char text[16][1200];
} warnings;

static void collect(const char *message, void *user)
{
    warnings *w = user;
    if (w->count < 16)
        snprintf(w->text[w->count], sizeof w->text[0], "%s", message);
    w->count++;
}

static bool warned_about(const warnings *w, const char *needle)
{
    for (int i = 0; i < w->count && i < 16; i++)
        if (strstr(w->text[i], needle))
            return true;
    return false;
}

/* ---- a float64 reference for PIL's bilinear resize ------------------------ */

static double tri(double x)
{
    x = fabs(x);
    return x < 1 ? 1 - x : 0;
}

static void reference_axis(int in_size, int out_size, int o, int *first, int *count, double *w)
{
    double scale = (double)in_size / out_size, fs = scale < 1 ? 1 : scale;
    double center = (o + 0.5) * scale;
    int lo = (int)(center - fs + 0.5), hi = (int)(center + fs + 0.5);
    if (lo < 0)
        lo = 0;
    if (hi > in_size)
        hi = in_size;
    double total = 0;
    for (int t = lo; t < hi; t++)
        total += tri((t - center + 0.5) / fs);
    for (int t = lo; t < hi; t++)
        w[t - lo] = tri((t - center + 0.5) / fs) / total;
    *first = lo;
    *count = hi - lo;
}

/* Resamples box (x0, y0, bw, bh) of img to oh x ow in float64. */
static void reference_resize(const keel_image *img, int x0, int y0, int bw, int bh, int ow, int oh, double *out)
{
    double wx[512], wy[512];
    for (int oy = 0; oy < oh; oy++) {
        int fy, ny;
        reference_axis(bh, oh, oy, &fy, &ny, wy);
        for (int ox = 0; ox < ow; ox++) {
            int fx, nx;
            reference_axis(bw, ow, ox, &fx, &nx, wx);
            for (int c = 0; c < 3; c++) {
                double acc = 0;
                for (int ty = 0; ty < ny; ty++)
                    for (int tx = 0; tx < nx; tx++)
                        acc += wy[ty] * wx[tx] *
                               img->pixels[((size_t)(y0 + fy + ty) * img->width + x0 + fx + tx) * 3 + c];
                out[((size_t)oy * ow + ox) * 3 + c] = acc;
            }
        }
    }
}

static double max_abs_diff_u8(const uint8_t *a, const double *b, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (d > worst)
            worst = d;
    }
    return worst;
}

static double mean_abs_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
    double total = 0;
    for (size_t i = 0; i < n; i++)
        total += abs((int)a[i] - (int)b[i]);
    return total / (double)n;
}

/* ---- folders and lists ----------------------------------------------------- */

static void test_folder_labels_and_order(void **state)
{
    (void)state;
    need_jpeg();
    warnings w = {0};
    keel_image_open_opts o = {.short_side = 32, .warn = collect, .warn_user = &w};
    keel_image_dataset *d;
    KS_OK(keel_image_dataset_open_folder(&d, at(0, "train"), &o));
    assert_int_equal(keel_image_dataset_size(d), TREE_FILES);
    assert_int_equal(keel_image_dataset_classes(d), 3);
    assert_string_equal(keel_image_dataset_class_name(d, 0), "ant");
    assert_string_equal(keel_image_dataset_class_name(d, 2), "cat");
    assert_null(keel_image_dataset_class_name(d, 3));
    assert_false(keel_image_dataset_is_packed(d));
    for (int i = 0; i < TREE_FILES; i++) {
        assert_int_equal(keel_image_dataset_label(d, i), tree[i].label);
        assert_string_equal(keel_image_dataset_path(d, i), path_in(1, "train/%s", tree[i].rel));
    }
    assert_true(warned_about(&w, "ignored 1 files"));
    keel_image_dataset_free(d);
}

static void test_folder_errors(void **state)
{
    (void)state;
    keel_image_dataset *d = NULL;
    assert_int_equal(keel_image_dataset_open_folder(&d, at(0, "no/such/folder"), NULL), KEEL_ERR_IO);
    assert_non_null(strstr(keel_last_error(), "does not exist"));
    assert_null(d);
    assert_int_equal(keel_image_dataset_open_folder(&d, at(0, "empty_root"), NULL), KEEL_ERR_FORMAT);
    assert_non_null(strstr(keel_last_error(), "has no class folders"));
    assert_int_equal(keel_image_dataset_open_folder(&d, at(0, "noimg"), NULL), KEEL_ERR_FORMAT);
    assert_non_null(strstr(keel_last_error(), "holds no .jpg"));
    assert_non_null(strstr(keel_last_error(), "noimg/cls"));
}

static void test_list_file(void **state)
{
    (void)state;
    write_text(at(0, "flat/list.txt"), "\n../ant/a1.png 4\n  ../bee/b0.png\t7  \r\n\n");
    keel_image_dataset *d;
    KS_OK(keel_image_dataset_open_list(&d, at(0, "flat/list.txt"), NULL));
    assert_int_equal(keel_image_dataset_size(d), 2);
    assert_int_equal(keel_image_dataset_classes(d), 8);
    assert_int_equal(keel_image_dataset_label(d, 0), 4);
    assert_int_equal(keel_image_dataset_label(d, 1), 7);
    assert_null(keel_image_dataset_class_name(d, 0));
    keel_image img = {0};
    KS_OK(keel_image_dataset_read(d, 1, &img));
    assert_int_equal(img.width, 47);
    assert_int_equal(img.height, 33);
    keel_image_release(&img);
    keel_image_dataset_free(d);

    /* An explicit root and class count; a path with a space. */
    write_text(at(0, "flat/rooted.txt"), "ant/a1.png 1\nbee/b0.png 2\n");
    keel_image_open_opts o = {.root = tmp_dir, .classes = 1000};
    KS_OK(keel_image_dataset_open_list(&d, at(0, "flat/rooted.txt"), &o));
    assert_int_equal(keel_image_dataset_classes(d), 1000);
    assert_string_equal(keel_image_dataset_path(d, 1), at(1, "bee/b0.png"));
    keel_image_dataset_free(d);
    write_text(at(0, "flat/space.txt"), "my image.png 3\n");
    KS_OK(keel_image_dataset_open_list(&d, at(0, "flat/space.txt"), NULL));
    assert_string_equal(keel_image_dataset_path(d, 0), at(1, "flat/my image.png"));
    keel_image_dataset_free(d);
}

static void expect_list_error(const char *text, keel_status want, const char *needle, int classes)
{
    write_text(at(0, "flat/bad.txt"), text);
    keel_image_dataset *d = NULL;
    keel_image_open_opts o = {.classes = classes};
    keel_status st = keel_image_dataset_open_list(&d, at(0, "flat/bad.txt"), &o);
    if (st != want || !strstr(keel_last_error(), needle))
        fail_msg("list %s: got status %d, message '%s'; want %d with '%s'", text, st, keel_last_error(), want, needle);
    assert_null(d);
}

static void test_list_errors(void **state)
{
    (void)state;
    expect_list_error("a.jpg 1\nb.jpg\n", KEEL_ERR_FORMAT, "bad.txt:2: expected 'path label', got 'b.jpg'", 0);
    expect_list_error("a.jpg 1\n\nb.jpg x\n", KEEL_ERR_FORMAT, "bad.txt:3: the label 'x' is not a whole number", 0);
    expect_list_error("a.jpg -3\n", KEEL_ERR_FORMAT, "bad.txt:1: the label '-3'", 0);
    expect_list_error("a.jpg 12abc\n", KEEL_ERR_FORMAT, "not a whole number", 0);
    expect_list_error("a.jpg 99999999999\n", KEEL_ERR_FORMAT, "not a whole number", 0);
    expect_list_error("a.jpg 1000\n", KEEL_ERR_FORMAT, "bad.txt:1: label 1000 is outside [0, 1000)", 1000);
    expect_list_error("\n  \n", KEEL_ERR_FORMAT, "lists no images", 0);
    expect_list_error("17\n", KEEL_ERR_FORMAT, "expected 'path label'", 0);
    keel_image_dataset *d = NULL;
    assert_int_equal(keel_image_dataset_open_list(&d, at(0, "flat/none.txt"), NULL), KEEL_ERR_IO);
    assert_non_null(strstr(keel_last_error(), "none.txt"));
}

/* ---- decoding ----------------------------------------------------------- */

static void test_decode_matches_source(void **state)
{
    (void)state;
    need_jpeg();
    keel_image original = {0}, img = {0};
    for (int i = 0; i < TREE_FILES; i++) {
        const tree_file *f = &tree[i];
        if (f->corrupt)
            continue;
        fill_pattern(&original, f->height, f->width, 100 + (uint64_t)i);
        KS_OK(keel_image_load(&img, at(0, f->rel), 0));
        assert_int_equal(img.width, f->width);
        assert_int_equal(img.height, f->height);
        assert_int_equal(img.channels, 3);
        size_t n = (size_t)f->width * f->height * 3;
        double diff = mean_abs_diff(img.pixels, original.pixels, n);
        bool png = strstr(f->rel, ".png") != NULL;
        printf("ERR decode %s: mean |decoded - written| = %.3f (tol %s)\n", f->rel, diff, png ? "0, lossless" : "4");
        if (png)
            assert_memory_equal(img.pixels, original.pixels, n);
        else
            assert_true(diff < 4.0);
    }
    keel_image_release(&original);
    keel_image_release(&img);
}

/* Small files written by Pillow 9.4 with what Image.open(f).convert("RGB")
 * gives (torchvision's loader): grey and Adobe CMYK JPEGs, PNGs with alpha,
 * grey + alpha, a palette and grey. */
typedef struct pil_vector {
    const char *name;
    int bytes, width, height;
    const char *file;
    const char *rgb;
} pil_vector;

static const pil_vector pil_vectors[] = {
    {"gray.jpg", 347, 8, 6,
     "\xff\xd8\xff\xe0\x00\x10\x4a\x46\x49\x46\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xdb\x00\x43"
     "\x00\x02\x01\x01\x01\x01\x01\x02\x01\x01\x01\x02\x02\x02\x02\x02\x04\x03\x02\x02\x02\x02\x05\x04"
     "\x04\x03\x04\x06\x05\x06\x06\x06\x05\x06\x06\x06\x07\x09\x08\x06\x07\x09\x07\x06\x06\x08\x0b\x08"
     "\x09\x0a\x0a\x0a\x0a\x0a\x06\x08\x0b\x0c\x0b\x0a\x0c\x09\x0a\x0a\x0a\xff\xc0\x00\x0b\x08\x00\x06"
     "\x00\x08\x01\x01\x11\x00\xff\xc4\x00\x1f\x00\x00\x01\x05\x01\x01\x01\x01\x01\x01\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\xff\xc4\x00\xb5\x10\x00\x02\x01\x03"
     "\x03\x02\x04\x03\x05\x05\x04\x04\x00\x00\x01\x7d\x01\x02\x03\x00\x04\x11\x05\x12\x21\x31\x41\x06"
     "\x13\x51\x61\x07\x22\x71\x14\x32\x81\x91\xa1\x08\x23\x42\xb1\xc1\x15\x52\xd1\xf0\x24\x33\x62\x72"
     "\x82\x09\x0a\x16\x17\x18\x19\x1a\x25\x26\x27\x28\x29\x2a\x34\x35\x36\x37\x38\x39\x3a\x43\x44\x45"
     "\x46\x47\x48\x49\x4a\x53\x54\x55\x56\x57\x58\x59\x5a\x63\x64\x65\x66\x67\x68\x69\x6a\x73\x74\x75"
     "\x76\x77\x78\x79\x7a\x83\x84\x85\x86\x87\x88\x89\x8a\x92\x93\x94\x95\x96\x97\x98\x99\x9a\xa2\xa3"
     "\xa4\xa5\xa6\xa7\xa8\xa9\xaa\xb2\xb3\xb4\xb5\xb6\xb7\xb8\xb9\xba\xc2\xc3\xc4\xc5\xc6\xc7\xc8\xc9"
     "\xca\xd2\xd3\xd4\xd5\xd6\xd7\xd8\xd9\xda\xe1\xe2\xe3\xe4\xe5\xe6\xe7\xe8\xe9\xea\xf1\xf2\xf3\xf4"
     "\xf5\xf6\xf7\xf8\xf9\xfa\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00\xc2\xf8\x19\xfb\x0c\x78\x33\x74"
     "\x2b\xbe\xdc\x70\x3a\x21\xff\x00\x0a\xff\xd9",
     "\x2f\x2f\x2f\x36\x36\x36\x3d\x3d\x3d\x43\x43\x43\x4a\x4a\x4a\x50\x50\x50\x57\x57\x57\x5d\x5d\x5d"
     "\x40\x40\x40\x47\x47\x47\x4d\x4d\x4d\x53\x53\x53\x59\x59\x59\x60\x60\x60\x66\x66\x66\x6c\x6c\x6c"
     "\x51\x51\x51\x58\x58\x58\x5e\x5e\x5e\x63\x63\x63\x69\x69\x69\x70\x70\x70\x76\x76\x76\x7c\x7c\x7c"
     "\x61\x61\x61\x67\x67\x67\x6e\x6e\x6e\x73\x73\x73\x7a\x7a\x7a\x80\x80\x80\x87\x87\x87\x8d\x8d\x8d"
     "\x70\x70\x70\x77\x77\x77\x7d\x7d\x7d\x83\x83\x83\x89\x89\x89\x90\x90\x90\x97\x97\x97\x9e\x9e\x9e"
     "\x82\x82\x82\x88\x88\x88\x8e\x8e\x8e\x93\x93\x93\x9a\x9a\x9a\xa1\xa1\xa1\xa8\xa8\xa8\xae\xae\xae"},
    {"cmyk.jpg", 405, 8, 6,
     "\xff\xd8\xff\xee\x00\x0e\x41\x64\x6f\x62\x65\x00\x64\x00\x00\x00\x00\x00\xff\xdb\x00\x43\x00\x02"
     "\x01\x01\x01\x01\x01\x02\x01\x01\x01\x02\x02\x02\x02\x02\x04\x03\x02\x02\x02\x02\x05\x04\x04\x03"
     "\x04\x06\x05\x06\x06\x06\x05\x06\x06\x06\x07\x09\x08\x06\x07\x09\x07\x06\x06\x08\x0b\x08\x09\x0a"
     "\x0a\x0a\x0a\x0a\x06\x08\x0b\x0c\x0b\x0a\x0c\x09\x0a\x0a\x0a\xff\xc0\x00\x14\x08\x00\x06\x00\x08"
     "\x04\x43\x11\x00\x4d\x11\x00\x59\x11\x00\x4b\x11\x00\xff\xc4\x00\x1f\x00\x00\x01\x05\x01\x01\x01"
     "\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\xff\xc4"
     "\x00\xb5\x10\x00\x02\x01\x03\x03\x02\x04\x03\x05\x05\x04\x04\x00\x00\x01\x7d\x01\x02\x03\x00\x04"
     "\x11\x05\x12\x21\x31\x41\x06\x13\x51\x61\x07\x22\x71\x14\x32\x81\x91\xa1\x08\x23\x42\xb1\xc1\x15"
     "\x52\xd1\xf0\x24\x33\x62\x72\x82\x09\x0a\x16\x17\x18\x19\x1a\x25\x26\x27\x28\x29\x2a\x34\x35\x36"
     "\x37\x38\x39\x3a\x43\x44\x45\x46\x47\x48\x49\x4a\x53\x54\x55\x56\x57\x58\x59\x5a\x63\x64\x65\x66"
     "\x67\x68\x69\x6a\x73\x74\x75\x76\x77\x78\x79\x7a\x83\x84\x85\x86\x87\x88\x89\x8a\x92\x93\x94\x95"
     "\x96\x97\x98\x99\x9a\xa2\xa3\xa4\xa5\xa6\xa7\xa8\xa9\xaa\xb2\xb3\xb4\xb5\xb6\xb7\xb8\xb9\xba\xc2"
     "\xc3\xc4\xc5\xc6\xc7\xc8\xc9\xca\xd2\xd3\xd4\xd5\xd6\xd7\xd8\xd9\xda\xe1\xe2\xe3\xe4\xe5\xe6\xe7"
     "\xe8\xe9\xea\xf1\xf2\xf3\xf4\xf5\xf6\xf7\xf8\xf9\xfa\xff\xda\x00\x0e\x04\x43\x00\x4d\x00\x59\x00"
     "\x4b\x00\x00\x3f\x00\xf3\xff\x00\xf8\x21\xc4\xff\x00\xbc\xd1\xe2\x0c\xc8\x76\xa7\xdd\xe7\x00\x63"
     "\xb9\x3c\xf4\xf6\xfe\x75\x9d\xff\x00\x0e\x53\xf8\x41\xff\x00\x3d\x6c\x3f\xef\xc9\xff\x00\xe2\x69"
     "\xbf\xb5\xb7\xed\x57\xe2\x6f\xf4\xaf\x96\x6e\xff\x00\xc4\x3f\xc6\xbf\x7f\x2b\xff\xd9",
     "\x18\x1e\xc8\x36\x1e\xbe\x4c\x1e\xb3\x64\x1e\xaa\x7d\x1e\xa0\x9a\x1e\x96\xb1\x1e\x8b\xcb\x1e\x82"
     "\x13\x3d\xbc\x33\x3d\xb3\x47\x3d\xa8\x67\x3d\x9e\x7a\x3d\x94\x9b\x3d\x8b\xad\x3d\x80\xc8\x3d\x76"
     "\x1c\x59\xb0\x36\x59\xa6\x50\x59\x9b\x64\x59\x92\x7d\x59\x88\x92\x59\x7e\xac\x59\x74\xc5\x59\x6a"
     "\x1d\x79\xa3\x32\x79\x9a\x44\x79\x8f\x61\x79\x85\x7b\x79\x7c\x99\x79\x72\xae\x79\x67\xc4\x79\x5e"
     "\x14\x96\x99\x31\x96\x8f\x4e\x96\x84\x69\x96\x7b\x7c\x96\x71\x95\x96\x67\xb1\x96\x5c\xce\x96\x53"
     "\x1a\xb4\x8b\x2e\xb4\x82\x4a\xb4\x77\x5e\xb4\x6d\x7c\xb4\x63\x92\xb4\x5a\xb0\xb4\x4f\xc4\xb4\x45"},
    {"rgba.png", 159, 8, 6,
     "\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52\x00\x00\x00\x08\x00\x00\x00\x06"
     "\x08\x06\x00\x00\x00\xfe\x05\xdf\xfb\x00\x00\x00\x66\x49\x44\x41\x54\x78\x9c\x5d\x8d\xbb\x0a\x84"
     "\x40\x10\x04\x6b\x65\x74\xcd\x2f\xf0\x40\x5d\xbf\xc8\xff\xbe\x0f\x5a\x9a\x45\xce\x47\xd2\x91\x41"
     "\xc3\x40\xd7\x54\xa7\xa9\xfc\xf6\x0d\xf1\x45\x7c\x10\x0b\x62\x45\x4c\x88\x19\x11\x57\xa9\x80\x68"
     "\x88\x1e\x71\x3b\x7f\xc4\x81\x88\xa1\x54\x6e\xc4\x88\x00\xd1\xb9\xc0\x60\xa4\x52\xb9\x6c\x38\xfc"
     "\x99\x11\xa7\xe1\x68\x06\xb2\x2d\xe1\x72\xf0\x64\x64\x03\x6f\x4b\xf2\xfd\x00\x41\x07\x46\xb2\x9d"
     "\xe9\xbe\xfd\x00\x00\x00\x00\x49\x45\x4e\x44\xae\x42\x60\x82",
     "\x17\x1e\xc8\x36\x1e\xbe\x4e\x1e\xb4\x61\x1e\xaa\x7d\x1e\xa0\x9a\x1e\x96\xb1\x1e\x8c\xcc\x1e\x82"
     "\x15\x3c\xbc\x36\x3c\xb2\x46\x3c\xa8\x66\x3c\x9e\x7c\x3c\x94\x99\x3c\x8a\xad\x3c\x80\xc6\x3c\x76"
     "\x1b\x5a\xb0\x35\x5a\xa6\x4e\x5a\x9c\x66\x5a\x92\x7e\x5a\x88\x93\x5a\x7e\xad\x5a\x74\xc5\x5a\x6a"
     "\x1c\x78\xa4\x33\x78\x9a\x46\x78\x90\x60\x78\x86\x7a\x78\x7c\x9a\x78\x72\xaa\x78\x68\xc7\x78\x5e"
     "\x14\x96\x98\x31\x96\x8e\x4d\x96\x84\x68\x96\x7a\x7e\x96\x70\x97\x96\x66\xb0\x96\x5c\xcc\x96\x52"
     "\x1b\xb4\x8c\x2f\xb4\x82\x4b\xb4\x78\x60\xb4\x6e\x78\xb4\x64\x93\xb4\x5a\xb1\xb4\x50\xc6\xb4\x46"},
    {"graya.png", 120, 8, 6,
     "\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52\x00\x00\x00\x08\x00\x00\x00\x06"
     "\x08\x04\x00\x00\x00\x54\x0c\x17\x70\x00\x00\x00\x3f\x49\x44\x41\x54\x78\x9c\x3d\xca\xcb\x0d\x44"
     "\x00\x14\x00\xc0\x11\xef\xe7\x20\x61\xb7\x10\xfd\x57\xc7\x45\x9c\x67\x96\xeb\x1e\x25\xb5\x91\x5a"
     "\x1c\x36\xab\x4d\x1a\xa9\xc4\x4f\x2b\xf5\xae\x12\xa7\x94\x4a\x1b\x61\xc4\x6e\xb4\x7e\xbd\xc5\x5f"
     "\xea\xef\xa4\x07\xc0\x10\x02\xa2\x0d\x84\x0d\xf6\x00\x00\x00\x00\x49\x45\x4e\x44\xae\x42\x60\x82",
     "\x2f\x2f\x2f\x37\x37\x37\x3d\x3d\x3d\x42\x42\x42\x49\x49\x49\x51\x51\x51\x56\x56\x56\x5d\x5d\x5d"
     "\x3f\x3f\x3f\x48\x48\x48\x4b\x4b\x4b\x54\x54\x54\x59\x59\x59\x61\x61\x61\x66\x66\x66\x6c\x6c\x6c"
     "\x51\x51\x51\x58\x58\x58\x5e\x5e\x5e\x64\x64\x64\x6a\x6a\x6a\x6f\x6f\x6f\x76\x76\x76\x7c\x7c\x7c"
     "\x62\x62\x62\x67\x67\x67\x6c\x6c\x6c\x72\x72\x72\x79\x79\x79\x81\x81\x81\x85\x85\x85\x8d\x8d\x8d"
     "\x6f\x6f\x6f\x77\x77\x77\x7e\x7e\x7e\x85\x85\x85\x8a\x8a\x8a\x91\x91\x91\x97\x97\x97\x9e\x9e\x9e"
     "\x82\x82\x82\x87\x87\x87\x8e\x8e\x8e\x93\x93\x93\x99\x99\x99\xa0\xa0\xa0\xa8\xa8\xa8\xad\xad\xad"},
    {"palette.png", 886, 8, 6,
     "\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52\x00\x00\x00\x08\x00\x00\x00\x06"
     "\x08\x03\x00\x00\x00\xc9\xdb\x2f\xc9\x00\x00\x03\x00\x50\x4c\x54\x45\xbc\xb4\x4b\xb1\x96\x5c\x7c"
     "\xa5\x6a\xae\x78\x68\xb9\x5a\x6f\x84\x64\x81\x4a\xa5\x7e\x1f\xaa\x8d\x3d\x78\x95\x41\x5a\xa1\xba"
     "\x3c\x7b\xb2\x1e\x8c\x7e\x35\x97\x3e\x3c\xad\x4c\x1e\xb4\x16\x2d\xc2\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
     "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xc3\x6a\x71\x0d\x00\x00\x00"
     "\x31\x49\x44\x41\x54\x78\x9c\x15\xc6\x41\x02\x00\x20\x04\x04\xc0\x15\x92\x88\xff\xff\xb6\x9a\xd3"
     "\xa0\xab\x2a\x23\x02\x7d\x4e\x66\xee\x0d\x77\x57\x55\x11\xac\x47\x99\x19\x66\x73\x0c\x22\xfa\x79"
     "\x03\x2e\x30\x4b\x01\x61\xf3\x6d\xfa\x55\x00\x00\x00\x00\x49\x45\x4e\x44\xae\x42\x60\x82",
     "\x16\x2d\xc2\x4c\x1e\xb4\x4c\x1e\xb4\x4c\x1e\xb4\x7e\x35\x97\xb2\x1e\x8c\xb2\x1e\x8c\xb2\x1e\x8c"
     "\x16\x2d\xc2\x3e\x3c\xad\x3e\x3c\xad\x7e\x35\x97\x7e\x35\x97\x7e\x35\x97\xba\x3c\x7b\xba\x3c\x7b"
     "\x41\x5a\xa1\x41\x5a\xa1\x41\x5a\xa1\x84\x64\x81\x84\x64\x81\x84\x64\x81\xb9\x5a\x6f\xb9\x5a\x6f"
     "\x3d\x78\x95\x3d\x78\x95\x3d\x78\x95\x3d\x78\x95\x84\x64\x81\xae\x78\x68\xae\x78\x68\xae\x78\x68"
     "\x1f\xaa\x8d\x1f\xaa\x8d\x4a\xa5\x7e\x7c\xa5\x6a\x7c\xa5\x6a\xb1\x96\x5c\xb1\x96\x5c\xb1\x96\x5c"
     "\x1f\xaa\x8d\x1f\xaa\x8d\x4a\xa5\x7e\x4a\xa5\x7e\x7c\xa5\x6a\x7c\xa5\x6a\xbc\xb4\x4b\xbc\xb4\x4b"},
    {"gray.png", 107, 8, 6,
     "\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52\x00\x00\x00\x08\x00\x00\x00\x06"
     "\x08\x00\x00\x00\x00\xdb\x6e\x80\x27\x00\x00\x00\x32\x49\x44\x41\x54\x78\x9c\x05\xc1\xc9\x0d\x80"
     "\x40\x10\x03\x41\x21\xa6\xdd\xde\xc7\x4a\x1c\x81\x90\x7f\x76\x54\x1d\x5f\x83\xc5\xb9\xd6\xb9\x28"
     "\x99\xc7\x24\x98\xb9\x21\x76\x3a\xbb\x8a\x71\x5e\x24\x96\x1f\x30\x76\x01\xa3\xc9\x9d\xee\x3f\x00"
     "\x00\x00\x00\x49\x45\x4e\x44\xae\x42\x60\x82",
     "\x2f\x2f\x2f\x37\x37\x37\x3d\x3d\x3d\x42\x42\x42\x49\x49\x49\x51\x51\x51\x56\x56\x56\x5d\x5d\x5d"
     "\x3f\x3f\x3f\x48\x48\x48\x4b\x4b\x4b\x54\x54\x54\x59\x59\x59\x61\x61\x61\x66\x66\x66\x6c\x6c\x6c"
     "\x51\x51\x51\x58\x58\x58\x5e\x5e\x5e\x64\x64\x64\x6a\x6a\x6a\x6f\x6f\x6f\x76\x76\x76\x7c\x7c\x7c"
     "\x62\x62\x62\x67\x67\x67\x6c\x6c\x6c\x72\x72\x72\x79\x79\x79\x81\x81\x81\x85\x85\x85\x8d\x8d\x8d"
     "\x6f\x6f\x6f\x77\x77\x77\x7e\x7e\x7e\x85\x85\x85\x8a\x8a\x8a\x91\x91\x91\x97\x97\x97\x9e\x9e\x9e"
     "\x82\x82\x82\x87\x87\x87\x8e\x8e\x8e\x93\x93\x93\x99\x99\x99\xa0\xa0\xa0\xa8\xa8\xa8\xad\xad\xad"},
};

static void test_decode_like_pil(void **state)
{
    (void)state;
    need_jpeg();
    keel_image img = {0};
    for (size_t i = 0; i < sizeof pil_vectors / sizeof pil_vectors[0]; i++) {
        const pil_vector *v = &pil_vectors[i];
        const char *path = path_in(0, "flat/pil-%s", v->name);
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(v->file, 1, (size_t)v->bytes, f), (size_t)v->bytes);
        fclose(f);
        KS_OK(keel_image_load(&img, path, 0));
        assert_int_equal(img.width, v->width);
        assert_int_equal(img.height, v->height);
        int worst = 0;
        for (int j = 0; j < v->width * v->height * 3; j++) {
            int d = abs((int)img.pixels[j] - (int)(uint8_t)v->rgb[j]);
            worst = d > worst ? d : worst;
        }
        /* CMYK to RGB rounds once differently from Pillow's MULDIV255. */
        int tol = strstr(v->name, "cmyk") ? 1 : 0;
        printf("ERR decode %s vs Pillow convert(\"RGB\"): max |diff| = %d (tol %d)\n", v->name, worst, tol);
        assert_true(worst <= tol);
    }
    keel_image_release(&img);
}

/* torchvision 0.14 on Pillow 9.4: Resize(7) of the 23x17 pattern below, and
 * resized_crop(top 2, left 3, height 11, width 15, size 8x8): shrinking, over
 * one and two blocks of the horizontal pass. */
static const char pil_resize_9x7[] =
    "\x6c\x84\x8e\x79\x85\x90\x7e\x7e\x86\x73\x82\x89\x7a\x8a\x74\x87\x8d\x64\x6c\x73\x89\x91\x9b\x69"
    "\x85\x49\x64\x7a\x89\x80\x8d\x8c\x81\x8d\x82\x7e\x7e\x82\x7c\x84\x8b\x8b\x78\x8f\x84\x95\x88\x7a"
    "\x7d\x82\x89\x87\x6f\x5b\x74\x8e\x80\x7a\x81\x75\x92\x82\x7f\x7e\x80\x6f\x88\x6b\x87\x8b\x88\x85"
    "\x82\x86\x8f\x92\x76\x84\x9e\x88\x68\x8a\x6c\x85\x8f\x7b\x86\x73\x80\x85\x7e\x89\x81\x82\x6a\x96"
    "\x8b\x75\x92\x74\x7a\x7c\x77\x86\x7b\x88\x6b\x8b\x9d\x72\x83\x82\x7d\x6b\x64\x89\x91\x89\x78\x91"
    "\x8b\x76\x8c\x8e\x7c\x79\x73\x70\x76\x84\x7a\x80\x88\x87\x70\x7a\x8b\x6d\x65\x91\x66\x5e\x93\x63"
    "\x6e\x8f\x73\x85\x86\x73\x81\x77\x6c\x7f\x7b\x6b\x83\x8d\x70\x6f\x96\x6b\x92\x70\x87\x7b\x78\x96"
    "\x68\x9d\x5d\x8c\x95\x76\x8b\x83\x87\x85\x71\x82\x71\x86\x86\x95\x84\x89\x9a\x78\xa4";
static const char pil_crop_resize_8x8[] =
    "\x8c\x9e\x9b\x9f\x8b\x6e\x71\x6a\x77\x75\x97\x9e\xa1\x7e\x72\x4b\x7d\x99\x90\xa9\x84\x97\x5b\x5b"
    "\x8d\x8f\x7e\x94\x87\x79\x8b\x80\x7a\x8a\x81\x70\x82\x93\xad\x82\x9c\x6b\x7b\x81\x9c\xab\xa9\x6a"
    "\x8e\x7d\x5d\x88\x83\x85\x78\x9a\x74\x74\x88\x6d\x95\x60\x6a\x79\x94\x8f\xad\x87\x70\x79\x9d\xb5"
    "\x67\x6f\x91\x98\x84\x75\x8b\x72\x75\x98\x68\x78\x7d\x72\xa5\x7e\x57\x8a\x82\x9f\x8e\x61\x6c\x92"
    "\x9e\x64\x86\x65\x84\x75\x7c\x7e\x85\x6c\x88\x96\x88\x55\x8a\x90\x73\xa6\x89\x77\x90\x67\x6f\x63"
    "\x8a\x93\x79\x68\x94\x85\x9a\x70\x96\x78\xa1\x6b\x7b\x78\x9e\x95\x76\x8b\x6e\x7b\x72\x88\x6b\x76"
    "\x7d\x72\x66\x5f\x94\x79\x6a\x73\xa8\x9c\x76\x86\x7a\x73\x83\x9b\x8b\x87\x7c\x6d\x66\x68\x8f\x77"
    "\x72\xa7\x55\x5f\x94\x6e\x4f\x83\xb8\x94\x72\xa7\xaa\x60\x95\x99\x75\x83\x88\x66\x72\x75\x60\x8d";

/* resized_crop(top 1, left 2, height 15, width 6, size 37x13): enlarging
 * both ways. */
static const char pil_crop_enlarge_13x37[] =
    "\xb3\xe8\x1d\xbb\xbf\x25\xd0\x5d\x3a\xc7\x19\x4e\x65\x2d\x62\x0d\x42\x77\x21\x56\x8b\x35\x6a\x9f"
    "\x4a\x7f\xb4\x5e\x93\xc8\x72\xa7\xdc\x87\xbc\xf1\x8f\xc4\xf9\xa3\xd8\x28\xab\xb4\x31\xc0\x5f\x46"
    "\xbb\x25\x5a\x66\x3a\x6f\x1a\x4f\x83\x2e\x63\x8a\x43\x78\x92\x58\x81\xa6\x6c\x89\xbb\x77\x9a\xcf"
    "\x80\xaf\xe4\x82\xb7\xec\x65\x9a\x53\x6e\x8c\x5c\x85\x68\x72\x8c\x53\x88\x69\x69\x9e\x4a\x7f\xaf"
    "\x60\x95\x88\x76\xab\x61\x8c\x89\x73\xa2\x63\x88\x8a\x69\x9e\x64\x7f\xb4\x53\x88\xbd\x28\x5d\x7d"
    "\x32\x63\x87\x49\x70\x9e\x5e\x81\xb6\x6b\x98\xcd\x7a\xaf\xdb\x92\xc7\x86\xa9\xde\x31\xc1\x91\x3f"
    "\xd7\x3d\x56\x9d\x39\x6e\x48\x50\x85\x24\x59\x8e\x3e\x73\xa8\x48\x7d\xa2\x61\x96\x95\x7a\xa5\x91"
    "\x92\x97\xa9\xa7\x8d\xbb\x9a\xa6\x84\x8c\xbe\x4d\xa2\x8d\x5f\xba\x56\x77\x97\x5b\x73\x5f\x73\x65"
    "\x48\x7d\x5f\x69\x9e\xd3\x73\xa8\xba\x8d\xc2\x7d\xa7\xc7\x57\xc1\x8a\x70\xd4\x55\x87\x98\x6f\x82"
    "\x5b\x89\x7c\x6e\x86\x93\x88\x7f\xac\x8a\x92\x86\x84\xab\x49\x81\xb6\x30\x93\xa6\xdb\x98\xb1\xbb"
    "\xa3\xcc\x71\xb3\xce\x3f\xcd\x83\x5a\xe0\x40\x74\x95\x5c\x7f\x4b\x77\x8b\x5d\x84\xa5\x78\x8e\xbf"
    "\x87\xa6\x8e\x93\xc1\x43\x97\xcc\x24\xbe\x68\x9d\xaf\x74\x93\x8c\x91\x79\x78\x9f\x6d\x95\x86\x89"
    "\xac\x70\xa0\x93\x8d\x7d\x7a\xaa\x5a\x91\x8c\x71\xae\x68\x8e\x9a\x75\x81\x77\x91\x67\x68\x9d\x5d"
    "\xe8\x2b\x60\xc6\x38\x6a\x74\x56\x82\x3e\x71\x9a\x5d\x8a\xb9\x79\xa1\xcd\x91\xbf\x7b\xa9\xdd\x29"
    "\xc5\x94\x3d\xe4\x42\x5c\xad\x44\x74\x5c\x61\x8b\x39\x6e\x95\xb9\x48\x7d\xa6\x55\x79\x78\x74\x6f"
    "\x5e\x89\x6e\x7e\x7f\x8e\x99\x77\xa6\x8f\x97\x79\x84\xb6\x4b\x9f\x8e\x63\xbf\x61\x83\xa5\x6d\x83"
    "\x77\x8c\x78\x64\x99\x74\x7c\x72\xa7\x7d\x80\x90\x81\xa0\x57\x8c\xab\x34\xad\x72\x55\xc5\x40\x73"
    "\x8c\x61\x76\x53\x81\x7a\x6c\x87\x98\x8d\x8b\xb9\x98\xa4\x96\x9b\xc4\x5d\x9d\xd2\x45\x68\x9d\xa9"
    "\x6e\xa3\x8e\x7d\xb2\x4c\x90\xad\x23\xb2\x6b\x46\xcb\x32\x66\x8a\x54\x74\x49\x75\x83\x62\x85\xa2"
    "\x84\x95\xc5\x98\xb1\x9c\xa6\xd3\x5b\xac\xe1\x40\x93\xc8\x6b\x85\xba\x65\x65\x9a\x55\x56\x7e\x51"
    "\x7a\x6f\x75\x98\x63\x92\x88\x86\x72\x78\xa9\x52\x96\x8e\x6f\xba\x6e\x93\xab\x80\x8f\x8a\xa4\x7f"
    "\x7d\xb2\x78\xbd\xf2\x2e\x9c\xd1\x3c\x4e\x83\x5d\x1c\x50\x7f\x41\x72\xa4\x64\x93\xbe\x86\xb8\x70"
    "\xa7\xdc\x21\xcb\x96\x3b\xef\x48\x60\xbe\x4f\x82\x6f\x74\xa4\x4e\x83\xb1\x87\xbc\x52\x78\xad\x61"
    "\x54\x89\x87\x43\x6c\xa1\x69\x66\x9b\x8a\x62\x91\x84\x88\x6e\x7d\xae\x4a\x9e\x90\x69\xc4\x6c\x8f"
    "\xb3\x5e\x93\x8f\x57\x8c\x80\x54\x89\x4a\x7f\x7c\x50\x85\x8d\x5c\x91\xb3\x71\x8e\xc3\x98\x59\x8e"
    "\xb6\x2b\x5d\x81\x52\x6b\x4c\x79\x79\x6a\x88\x9d\x92\x96\xc4\xa6\x71\xa6\xb3\x3c\x71\xb9\x25\x5a"
    "\x3d\x72\xa7\x4e\x7a\xaf\x76\x8b\xc0\x99\x8b\xc0\xab\x54\x89\xb6\x24\x57\x7f\x4c\x69\x48\x75\x7b"
    "\x53\x88\xa1\x65\x9a\xca\x88\x75\xaa\xb0\x3e\x73\xc1\x26\x5b\x67\x9c\xd1\x79\x91\xc6\xa2\x74\xa9"
    "\xba\x5d\x92\x9e\x57\x8c\x83\x54\x83\x7d\x7e\x67\x76\xa7\x4a\x5b\x90\x6d\x3f\x74\x97\x57\x68\x9d"
    "\x80\x62\x97\x92\x5f\x94\x92\xc7\xfc\xa4\xa8\xdd\xcf\x5c\x91\xdc\x2f\x64\x91\x5a\x8f\x50\x85\xb0"
    "\x7b\xb0\x65\xa5\xda\x19\x64\x99\x3a\x19\x4e\x65\x26\x5b\x90\x51\x86\xbb\x63\x98\xcd\xbd\x8a\xbf"
    "\xbb\x7f\xb4\xb7\x65\x9a\xae\x5d\x86\x94\x89\x82\x7c\xb1\x7d\x79\xae\x63\x74\xa9\x48\x5c\x91\x6e"
    "\x42\x77\x9b\x5d\x6e\xa3\x89\x6a\x9f\x9c\x69\x9e\xe7\x4d\x82\xd2\x56\x8b\xa0\x6d\xa2\x80\x8b\xa7"
    "\x97\xb8\x75\xa8\xdd\x49\x76\xab\x60\x44\x79\x77\x55\x8a\xa3\x6c\xa1\xd0\x94\x81\xb6\xc2\x4f\x84"
    "\xd5\x3a\x6f\xda\x47\x7c\xc7\x4f\x84\x9a\x65\x9a\x7d\x81\x9e\x92\xb0\x71\xa2\xd7\x49\x74\xa9\x5e"
    "\x46\x7b\x73\x56\x8b\xa0\x6b\xa0\xce\x94\x83\xb8\xc2\x55\x8a\xd6\x42\x77\x9d\x71\xa6\x9f\x66\x9b"
    "\xa2\x4e\x83\x9f\x46\x70\x85\x77\x74\x6e\xa3\x75\x72\xa7\x5c\x75\xaa\x42\x5e\x93\x6c\x45\x7a\x9d"
    "\x63\x76\xab\x93\x79\xae\xa7\x7b\xb0\x67\x95\xca\x7b\x79\xae\xa8\x39\x6e\xbb\x13\x47\x79\x45\x76"
    "\x41\x76\x9b\x70\xa5\x5a\x9e\xd3\x18\x65\x9a\x3f\x24\x59\x72\x36\x6b\xa0\x64\x99\xce\x78\xad\xe2"
    "\x91\x58\x8d\x92\x51\x86\x91\x41\x76\x8d\x41\x69\x7c\x74\x69\x6e\xa3\x67\x6d\xa2\x57\x6d\xa2\x47"
    "\x5e\x93\x74\x4e\x83\xa7\x49\x7e\xb3\x49\x7e\xb3\x49\x7e\xb3\xbc\x1a\x4f\xa9\x28\x5d\x79\x4a\x7f"
    "\x5e\x6f\x8b\x80\xa3\x5c\x9a\xcf\x34\x6b\xa0\x55\x3c\x71\x76\x56\x8b\xa8\x77\xac\xdd\x5c\x91\xc6"
    "\x2d\x62\x97\x1a\x4f\x84\xa8\x1c\x51\x99\x32\x5b\x75\x68\x74\x60\x95\x7d\x79\xae\x59\x8d\xc2\x3a"
    "\x69\x9e\x53\x44\x79\x6c\x58\x8d\x9e\x71\xa6\xd4\x5c\x91\xc6\x38\x6d\xa2\x29\x5e\x93\x6b\x46\x7b"
    "\x70\x5d\x72\x7e\x94\x5c\x82\xb7\x4f\x6c\xa1\x5c\x5a\x8f\x66\x67\x9c\x51\x73\xa8\x3b\x61\x96\x6b"
    "\x4b\x80\xa2\x4f\x84\xb9\x5c\x91\xc6\x62\x97\xcc\x3c\x71\x98\x50\x85\x81\x82\xb7\x49\x99\xce\x2b"
    "\x61\x96\x5d\x33\x68\x86\x65\x9a\x4f\x96\xcb\x16\x67\x9c\x3f\x30\x65\x71\x47\x7c\xa7\x78\xad\xe0"
    "\x8d\xc2\xf7\x66\x9b\x5b\x67\x9c\x58\x6a\x9f\x52\x6b\xa0\x4d\x65\x9a\x50\x5f\x94\x53\x62\x97\x4c"
    "\x65\x9a\x45\x5f\x94\x48\x59\x8e\x4b\x5a\x8f\x76\x5d\x92\xb0\x5e\x93\xc8\x91\xc6\x1d\x7e\xb3\x30"
    "\x53\x88\x5a\x3d\x72\x6f\x68\x9d\x43\x8b\xc0\x1f\x60\x95\x4a\x34\x69\x74\x58\x8d\x50\x82\xb7\x25"
    "\x6d\xa2\x45\x41\x76\x80\x2f\x64\x99\x76\xab\x25\x6b\xa0\x3f\x51\x86\x7a\x44\x79\x99\x60\x95\x5e"
    "\x78\xad\x2b\x5e\x93\x48\x43\x78\x64\x5b\x90\x4e\x77\xac\x34\x6a\x9f\x42\x50\x85\x5e\x45\x7a\x6a"
    "\x39\x6e\x50\x42\x77\x6a\x59\x8e\xa7\x66\x9b\xc6\x53\x88\x8d\x44\x79\x58\x5c\x91\x46\x72\xa7\x33"
    "\x63\x98\x46\x50\x85\x5d\x5d\x92\x55\x74\xa9\x42\x7e\xb3\x3b\x11\x46\x7b\x2b\x5c\x91\x69\x90\xc5"
    "\x8a\xad\xe2\x52\x7f\xb4\x24\x59\x85\x5a\x8f\x4e\x8e\xc3\x16\x68\x9d\x42\x3a\x6f\x76\x57\x8c\x61"
    "\x8b\xc0\x33\xa2\xd7\x20\x3b\x70\xa5\x56\x73\xa8\x96\x79\xae\xb8\x7f\xb4\x81\x82\xb7\x51\x86\xb5"
    "\x57\x8c\x7f\x5d\x92\x49\x61\x96\x4a\x64\x99\x50\x6a\x9f\x54\x70\xa5\x58\x73\xa8\x59\x66\x9b\xd0"
    "\x81\x8a\xbf\xc2\x61\x96\xe6\x50\x85\xb0\x85\xba\x7d\xb2\xe6\x55\x8a\xb1\x2c\x61\x7b\x59\x8e\x53"
    "\x8e\xc3\x2a\x7d\xb2\x47\x54\x89\x7c\x44\x79\x92\x71\xa6\xdb\x8c\x90\xc5\xce\x5b\x90\xf2\x44\x79"
    "\xbd\x86\xbb\x89\xbe\xf3\x54\x89\xbe\x1f\x54\x89\x57\x8c\x55\x99\xce\x20\x82\xb7\x44\x4d\x82\x86"
    "\x37\x6c\xa1";

static void test_resize_like_torchvision(void **state)
{
    (void)state;
    keel_image img = {0};
    assert_true(keel_image_reserve(&img, 17, 23));
    for (int y = 0; y < 17; y++)
        for (int x = 0; x < 23; x++)
            for (int c = 0; c < 3; c++)
                img.pixels[(y * 23 + x) * 3 + c] = (uint8_t)((x * 37 + y * 91 + c * 53 + x * y * 7) % 256);
    keel_resample_scratch scratch = {0};
    uint8_t out[9 * 7 * 3];
    KS_OK(keel_resample(img.pixels, 23, 0, 0, 23, 17, out, 9, 7, &scratch));
    assert_memory_equal(out, pil_resize_9x7, sizeof out);
    uint8_t crop[8 * 8 * 3];
    KS_OK(keel_resample(img.pixels, 23, 3, 2, 15, 11, crop, 8, 8, &scratch));
    assert_memory_equal(crop, pil_crop_resize_8x8, sizeof crop);
    uint8_t enlarged[13 * 37 * 3];
    KS_OK(keel_resample(img.pixels, 23, 2, 1, 6, 15, enlarged, 13, 37, &scratch));
    assert_memory_equal(enlarged, pil_crop_enlarge_13x37, sizeof enlarged);
    printf("ERR resize vs torchvision/Pillow: bit-exact (tol 0)\n");
    keel_resample_scratch_release(&scratch);
    keel_image_release(&img);
}

static void test_short_side_resize(void **state)
{
    (void)state;
    need_jpeg();
    int h, w;
    keel_short_side_size(200, 300, 256, &h, &w);
    assert_int_equal(h, 256);
    assert_int_equal(w, 384);
    keel_short_side_size(375, 500, 256, &h, &w);
    assert_int_equal(w, 341); /* floor(256 * 500 / 375) as torchvision */
    keel_short_side_size(33, 47, 20, &h, &w);
    assert_int_equal(h, 20);
    assert_int_equal(w, 28);

    /* PNG: the decoded pixels resized in C against the float64 filter. */
    keel_image full = {0}, small = {0};
    KS_OK(keel_image_load(&full, at(0, "bee/b0.png"), 0));
    KS_OK(keel_image_load(&small, at(0, "bee/b0.png"), 20));
    assert_int_equal(small.height, 20);
    assert_int_equal(small.width, 28);
    double *want = malloc(sizeof(double) * 20 * 28 * 3);
    reference_resize(&full, 0, 0, 47, 33, 28, 20, want);
    double err = max_abs_diff_u8(small.pixels, want, 20 * 28 * 3);
    printf("ERR resize png 47x33 -> 28x20: max |got - float64| = %.3f (tol 1.01)\n", err);
    assert_true(err <= 1.01);
    /* An upscale (short side larger than the image). */
    KS_OK(keel_image_load(&small, at(0, "bee/b0.png"), 50));
    assert_int_equal(small.height, 50);
    assert_int_equal(small.width, 71);
    free(want);
    want = malloc(sizeof(double) * 50 * 71 * 3);
    reference_resize(&full, 0, 0, 47, 33, 71, 50, want);
    err = max_abs_diff_u8(small.pixels, want, 50 * 71 * 3);
    printf("ERR resize png 47x33 -> 71x50: max |got - float64| = %.3f (tol 1.01)\n", err);
    assert_true(err <= 1.01);
    free(want);

    /* JPEG 300x200 to short side 50: the DCT-domain 1/4 decode (75x50
     * exactly) must look like a full decode resized. */
    KS_OK(keel_image_load(&full, at(0, "ant/a0.jpg"), 0));
    KS_OK(keel_image_load(&small, at(0, "ant/a0.jpg"), 50));
    assert_int_equal(small.width, 75);
    assert_int_equal(small.height, 50);
    want = malloc(sizeof(double) * 75 * 50 * 3);
    reference_resize(&full, 0, 0, 300, 200, 75, 50, want);
    double total = 0;
    for (size_t i = 0; i < 75 * 50 * 3; i++)
        total += fabs(small.pixels[i] - want[i]);
    printf("ERR jpeg DCT-scaled 300x200 -> 75x50 vs full decode + filter: mean abs %.3f (tol 6)\n",
           total / (75 * 50 * 3));
    assert_true(total / (75 * 50 * 3) < 6.0);
    /* 60 is not a DCT scale of 200: 3/8 (113x75) then the filter. */
    KS_OK(keel_image_load(&small, at(0, "ant/a0.jpg"), 60));
    assert_int_equal(small.width, 90);
    assert_int_equal(small.height, 60);
    free(want);
    keel_image_release(&full);
    keel_image_release(&small);
}

static void test_decode_errors(void **state)
{
    (void)state;
    need_jpeg();
    keel_image img = {0};
    assert_int_equal(keel_image_load(&img, at(0, "cat/broken.jpg"), 0), KEEL_ERR_FORMAT);
    assert_non_null(strstr(keel_last_error(), "neither a JPEG nor a PNG"));
    assert_int_equal(keel_image_load(&img, at(0, "bee/cut.jpg"), 0), KEEL_ERR_FORMAT);
    assert_non_null(strstr(keel_last_error(), "cut.jpg"));
    assert_int_equal(keel_image_load(&img, at(0, "cat/none.jpg"), 0), KEEL_ERR_IO);
    write_text(at(0, "flat/empty.png"), "");
    assert_int_equal(keel_image_load(&img, at(0, "flat/empty.png"), 0), KEEL_ERR_FORMAT);
    copy_prefix(at(0, "bee/b0.png"), at(1, "flat/cut.png"), file_size(at(2, "bee/b0.png")) / 2);
    assert_int_equal(keel_image_load(&img, at(0, "flat/cut.png"), 0), KEEL_ERR_FORMAT);
    keel_image_release(&img);
}

/* ---- the loader over the folder: corrupt files skipped and counted ------- */

static keel_image_loader_opts small_opts(keel_crop_mode mode, int64_t batch, int workers)
{
    keel_image_loader_opts o = {.batch = batch, .workers = workers, .shuffle = true, .seed = 7};
    o.augment = keel_augment_defaults(mode);
    o.augment.crop_size = 24;
    return o;
}

static void test_loader_skips_corrupt(void **state)
{
    (void)state;
    need_jpeg();
    warnings w = {0};
    keel_image_open_opts o = {.short_side = 32, .warn = collect, .warn_user = &w};
    keel_image_dataset *d;
    KS_OK(keel_image_dataset_open_folder(&d, at(0, "train"), &o));
    keel_image_loader_opts lo = small_opts(KEEL_CROP_RANDOM, 4, 2);
    keel_image_loader *l;
    KS_OK(keel_image_loader_create(&l, d, &lo));
    assert_int_equal(keel_image_loader_batches(l), 3);
    for (int epoch = 0; epoch < 2; epoch++) {
        KS_OK(keel_image_loader_start_epoch(l, epoch));
        int64_t seen = 0, n;
        const float *images;
        const int32_t *labels;
        for (;;) {
            KS_OK(keel_image_loader_next(l, &images, &labels, &n));
            if (n == 0)
                break;
            for (int64_t i = 0; i < n; i++)
                assert_true(labels[i] >= 0 && labels[i] < 3);
            seen += n;
        }
        assert_int_equal(seen, TREE_FILES);
    }
    for (int i = 0; i < w.count; i++)
        printf("warning: %s\n", w.text[i]);
    assert_int_equal(keel_image_dataset_corrupt(d), 2);
    assert_true(warned_about(&w, "broken.jpg"));
    assert_true(warned_about(&w, "cut.jpg"));
    int skipping = 0;
    for (int i = 0; i < w.count; i++)
        skipping += strstr(w.text[i], "skipping image") != NULL;
    assert_int_equal(skipping, 2); /* once per file, not once per epoch */
    keel_image_loader_destroy(l);
    keel_image_dataset_free(d);
}

/* ---- packed shards ----------------------------------------------------------- */

static void pack_train(const char *out, int shards, int workers, int short_side)
{
    keel_image_open_opts o = {.short_side = short_side};
    keel_image_dataset *d;
    KS_OK(keel_image_dataset_open_folder(&d, at(2, "train"), &o));
    keel_pack_opts po = {.short_side = short_side, .shards = shards, .workers = workers};
    int64_t packed = -1;
    KS_OK(keel_image_pack(d, out, &po, &packed));
    assert_int_equal(packed, TREE_GOOD);
    keel_image_dataset_free(d);
}

static void read_whole(const char *path, uint8_t **data, long *size)
{
    *size = file_size(path);
    *data = malloc((size_t)*size);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(*data, 1, (size_t)*size, f), (size_t)*size);
    fclose(f);
}

static void test_pack_equals_folder(void **state)
{
    (void)state;
    need_jpeg();
    pack_train(at(3, "packed"), 2, 3, 32);
    keel_image_dataset *packed, *folder;
    KS_OK(keel_image_dataset_open(&packed, at(0, "packed"), NULL));
    assert_true(keel_image_dataset_is_packed(packed));
    assert_int_equal(keel_image_dataset_size(packed), TREE_GOOD);
    assert_int_equal(keel_image_dataset_classes(packed), 3);
    assert_string_equal(keel_image_dataset_class_name(packed, 1), "bee");
    assert_null(keel_image_dataset_path(packed, 0));
    keel_image_open_opts o = {.short_side = 32};
    KS_OK(keel_image_dataset_open(&folder, at(0, "train"), &o));
    keel_image a = {0}, b = {0};
    int j = 0;
    for (int i = 0; i < TREE_FILES; i++) {
        if (tree[i].corrupt)
            continue;
        KS_OK(keel_image_dataset_read(folder, i, &a));
        KS_OK(keel_image_dataset_read(packed, j, &b));
        assert_int_equal(b.capacity, 0); /* a view into the mapping */
        assert_int_equal(a.width, b.width);
        assert_int_equal(a.height, b.height);
        assert_int_equal(a.width < a.height ? a.width : a.height, 32);
        assert_memory_equal(a.pixels, b.pixels, (size_t)a.width * a.height * 3);
        assert_int_equal(keel_image_dataset_label(packed, j), tree[i].label);
        j++;
    }
    keel_image_release(&a);
    keel_image_release(&b);

    /* Shard files do not depend on the worker count. */
    pack_train(at(3, "packed1"), 2, 1, 32);
    for (int s = 0; s < 2; s++) {
        char name[64];
        snprintf(name, sizeof name, "shard-%05d-of-00002.keelpack", s);
        uint8_t *x, *y;
        long nx, ny;
        read_whole(path_in(0, "packed/%s", name), &x, &nx);
        read_whole(path_in(1, "packed1/%s", name), &y, &ny);
        assert_int_equal(nx, ny);
        assert_memory_equal(x, y, (size_t)nx);
        free(x);
        free(y);
    }

    /* The loader gives the same tensors from the shards as from a list of
     * the same (readable) files in the same order. */
    FILE *list = fopen(at(0, "good.txt"), "w");
    assert_non_null(list);
    for (int i = 0; i < TREE_FILES; i++)
        if (!tree[i].corrupt)
            fprintf(list, "train/%s %d\n", tree[i].rel, tree[i].label);
    fclose(list);
    keel_image_dataset *listed;
    KS_OK(keel_image_dataset_open(&listed, at(0, "good.txt"), &o));
    keel_crop_mode modes[] = {KEEL_CROP_RANDOM, KEEL_CROP_RANDOM_RESIZED, KEEL_CROP_TEN};
    for (int m = 0; m < 3; m++) {
        keel_image_loader_opts lo = small_opts(modes[m], 3, 2);
        lo.augment.lighting_std = 0.1f;
        keel_image_loader *lp, *lf;
        KS_OK(keel_image_loader_create(&lp, packed, &lo));
        KS_OK(keel_image_loader_create(&lf, listed, &lo));
        KS_OK(keel_image_loader_start_epoch(lp, 1));
        KS_OK(keel_image_loader_start_epoch(lf, 1));
        size_t floats = (size_t)3 * keel_image_loader_views(lp) * 3 * 24 * 24;
        for (;;) {
            const float *xp, *xf;
            const int32_t *yp, *yf;
            int64_t np, nf;
            KS_OK(keel_image_loader_next(lp, &xp, &yp, &np));
            KS_OK(keel_image_loader_next(lf, &xf, &yf, &nf));
            assert_int_equal(np, nf);
            if (np == 0)
                break;
            assert_memory_equal(xp, xf, floats * sizeof(float));
            assert_memory_equal(yp, yf, 3 * sizeof(int32_t));
        }
        keel_image_loader_destroy(lp);
        keel_image_loader_destroy(lf);
    }
    keel_image_dataset_free(listed);
    keel_image_dataset_free(folder);
    keel_image_dataset_free(packed);
}

static void expect_shard_error(const char *path, keel_status want, const char *needle)
{
    keel_image_dataset *d = NULL;
    keel_status st = keel_image_dataset_open_packed(&d, path, NULL);
    if (st != want || !strstr(keel_last_error(), needle))
        fail_msg("%s: got status %d, '%s'; want %d with '%s'", path, st, keel_last_error(), want, needle);
    assert_null(d);
}

static void test_damaged_shards(void **state)
{
    (void)state;
    need_jpeg();
    pack_train(at(3, "dmg"), 2, 2, 32);
    const char *shard0 = "dmg/shard-00000-of-00002.keelpack";
    long size = file_size(at(0, shard0));
    assert_int_equal(mkdir(at(0, "cut"), 0777), 0);
    long cuts[] = {0, 7, 60, 128, 200, size / 2, size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        copy_prefix(at(0, shard0), at(1, "cut/one.keelpack"), cuts[i]);
        expect_shard_error(at(1, "cut/one.keelpack"), KEEL_ERR_FORMAT, "truncated");
        /* The dataset opener routes a directory of shards the same way. */
        keel_image_dataset *d = NULL;
        assert_int_equal(keel_image_dataset_open(&d, at(1, "cut"), NULL), KEEL_ERR_FORMAT);
        assert_null(d);
    }
    /* A flipped byte in the image table or the header. */
    uint8_t *bytes;
    long n;
    read_whole(at(0, shard0), &bytes, &n);
    uint64_t records_offset = 0;
    for (int b = 0; b < 8; b++)
        records_offset |= (uint64_t)bytes[56 + b] << (8 * b);
    bytes[records_offset + 9] ^= 0x40;
    FILE *f = fopen(at(1, "cut/one.keelpack"), "wb");
    fwrite(bytes, 1, (size_t)n, f);
    fclose(f);
    expect_shard_error(at(1, "cut/one.keelpack"), KEEL_ERR_FORMAT, "checksum");
    bytes[records_offset + 9] ^= 0x40;
    bytes[20] ^= 1;
    f = fopen(at(1, "cut/one.keelpack"), "wb");
    fwrite(bytes, 1, (size_t)n, f);
    fclose(f);
    expect_shard_error(at(1, "cut/one.keelpack"), KEEL_ERR_FORMAT, "header's checksum");
    free(bytes);
    /* Not a shard at all, a missing shard, an empty folder. */
    write_text(at(1, "cut/one.keelpack"), "hello, this is not a shard file, but long enough to hold a header........"
                                          "......................................................................");
    expect_shard_error(at(1, "cut/one.keelpack"), KEEL_ERR_FORMAT, "is not a Keel shard");
    remove(at(1, "dmg/shard-00001-of-00002.keelpack"));
    expect_shard_error(at(1, "dmg"), KEEL_ERR_FORMAT, "shard 1 of 2 is missing");
    remove(at(1, "cut/one.keelpack"));
    expect_shard_error(at(1, "cut"), KEEL_ERR_FORMAT, "holds no");
    /* A single complete shard opens on its own. */
    keel_image_dataset *d;
    KS_OK(keel_image_dataset_open_packed(&d, at(0, shard0), NULL));
    assert_true(keel_image_dataset_size(d) > 0 && keel_image_dataset_size(d) < TREE_GOOD);
    keel_image_dataset_free(d);
    /* Re-packing into the folder replaces the old shards. */
    pack_train(at(3, "dmg"), 3, 1, 32);
    KS_OK(keel_image_dataset_open_packed(&d, at(0, "dmg"), NULL));
    assert_int_equal(keel_image_dataset_size(d), TREE_GOOD);
    keel_image_dataset_free(d);
}

static void test_pack_errors(void **state)
{
    (void)state;
    need_jpeg();
    keel_image_dataset *d;
    keel_image_open_opts o = {.short_side = 32};
    KS_OK(keel_image_dataset_open_folder(&d, at(0, "train"), &o));
    keel_pack_opts po = {.short_side = 0, .shards = 1};
    assert_int_equal(keel_image_pack(d, at(0, "never"), &po, NULL), KEEL_ERR_INVALID_ARGUMENT);
    po.short_side = 32;
    po.shards = 100;
    assert_int_equal(keel_image_pack(d, at(0, "never"), &po, NULL), KEEL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(keel_last_error(), "100 shards"));
    keel_image_dataset_free(d);
    /* A list whose every file is unreadable packs nothing and says so. */
    write_text(at(0, "flat/missing.txt"), "gone1.jpg 0\ngone2.png 1\n");
    warnings w = {0};
    keel_image_open_opts wo = {.warn = collect, .warn_user = &w};
    KS_OK(keel_image_dataset_open_list(&d, at(0, "flat/missing.txt"), &wo));
    po.shards = 1;
    assert_int_equal(keel_image_pack(d, at(0, "nothing"), &po, NULL), KEEL_ERR_FORMAT);
    assert_non_null(strstr(keel_last_error(), "none of the 2 images"));
    assert_int_equal(w.count, 2);
    assert_true(warned_about(&w, "gone1.jpg"));
    assert_false(keel_dir_has_shards(at(0, "nothing")));
    keel_image_dataset_free(d);
}

/* ---- augmentation on known inputs ----------------------------------------- */

/* Pixel (x, y) holds R = x, G = y, B = 200 - x - y: every view is checkable. */
static void coordinate_image(keel_image *img, int height, int width)
{
    assert_true(keel_image_reserve(img, height, width));
    for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++) {
            uint8_t *p = img->pixels + ((size_t)y * width + x) * 3;
            p[0] = (uint8_t)x;
            p[1] = (uint8_t)y;
            p[2] = (uint8_t)(200 - x - y);
        }
}

/* Checks a view of the coordinate image against the crop it reports. */
static void check_view(const keel_augment_opts *o, const keel_image *img, const keel_crop *crop, const float *out,
                       const char *what)
{
    int size = o->crop_size;
    double worst = 0;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++) {
                int sx = crop->x + (crop->mirror ? size - 1 - x : x), sy = crop->y + y;
                double v = img->pixels[((size_t)sy * img->width + sx) * 3 + c] / 255.0 + crop->lighting[c];
                double m = o->mean_image ? o->mean_image[((size_t)c * size + y) * size + x] : o->mean[c];
                double want = (v - m) / o->std[c];
                double got = out[((size_t)c * size + y) * size + x];
                double err = fabs(got - want) / fmax(fabs(want), 1.0);
                if (err > worst)
                    worst = err;
            }
    if (worst > 1e-5)
        fail_msg("%s: view at (%d, %d) mirror %d differs from float64 by %g", what, crop->x, crop->y, crop->mirror,
                 worst);
}

static void test_random_crop_and_mirror(void **state)
{
    (void)state;
    keel_image img = {0};
    coordinate_image(&img, 12, 10);
    keel_augment_opts o = keel_augment_defaults(KEEL_CROP_RANDOM);
    o.crop_size = 4;
    float out[3 * 16];
    int seen_x[7] = {0}, seen_y[9] = {0}, mirrored = 0;
    for (uint64_t seed = 0; seed < 400; seed++) {
        keel_crop crop;
        KS_OK(keel_augment_crop(&o, 12, 10, seed, 0, &crop));
        assert_int_equal(crop.width, 4);
        assert_int_equal(crop.height, 4);
        assert_true(crop.x >= 0 && crop.x <= 6 && crop.y >= 0 && crop.y <= 8);
        seen_x[crop.x]++;
        seen_y[crop.y]++;
        mirrored += crop.mirror;
        KS_OK(keel_augment_apply(&o, &img, &crop, out));
        check_view(&o, &img, &crop, out, "random crop");
        keel_crop again;
        KS_OK(keel_augment_crop(&o, 12, 10, seed, 0, &again));
        assert_memory_equal(&crop, &again, sizeof crop);
    }
    for (int i = 0; i < 7; i++)
        assert_true(seen_x[i] > 20);
    for (int i = 0; i < 9; i++)
        assert_true(seen_y[i] > 15);
    assert_true(mirrored > 150 && mirrored < 250);
    /* A mirrored view reads the row backwards: R (= x) runs down. */
    keel_crop crop = {.x = 2, .y = 3, .width = 4, .height = 4, .mirror = true};
    KS_OK(keel_augment_apply(&o, &img, &crop, out));
    for (int x = 0; x < 4; x++)
        assert_float_equal(out[x], (float)(((5 - x) / 255.0 - 0.485) / 0.229), 1e-5);
    o.mirror = false;
    for (uint64_t seed = 0; seed < 50; seed++) {
        KS_OK(keel_augment_crop(&o, 12, 10, seed, 0, &crop));
        assert_false(crop.mirror);
    }
    o.crop_size = 11;
    assert_int_equal(keel_augment_crop(&o, 12, 10, 1, 0, &crop), KEEL_ERR_SHAPE);
    assert_non_null(strstr(keel_last_error(), "does not fit in a 10x12 image"));
    keel_image_release(&img);
}

static void test_normalisation_values(void **state)
{
    (void)state;
    keel_image img = {0};
    coordinate_image(&img, 6, 6);
    keel_augment_opts o = keel_augment_defaults(KEEL_CROP_CENTER);
    o.crop_size = 6;
    float out[3 * 36];
    keel_crop crop;
    KS_OK(keel_augment_crop(&o, 6, 6, 0, 0, &crop));
    KS_OK(keel_augment_apply(&o, &img, &crop, out));
    /* Pixel (x=5, y=1): R 5, G 1, B 194. */
    assert_float_equal(out[1 * 6 + 5], (5 / 255.0 - 0.485) / 0.229, 1e-5);
    assert_float_equal(out[36 + 1 * 6 + 5], (1 / 255.0 - 0.456) / 0.224, 1e-5);
    assert_float_equal(out[72 + 1 * 6 + 5], (194 / 255.0 - 0.406) / 0.225, 1e-5);
    /* Caffe's scale: std 1/255 and a mean of 0.5 give pixel - 127.5. */
    for (int c = 0; c < 3; c++) {
        o.mean[c] = 0.5f;
        o.std[c] = 1.0f / 255.0f;
    }
    KS_OK(keel_augment_apply(&o, &img, &crop, out));
    assert_float_equal(out[72 + 1 * 6 + 5], 194 - 127.5, 1e-3);
    /* A mean image replaces the channel means. */
    float mean_image[3 * 36];
    for (int i = 0; i < 3 * 36; i++)
        mean_image[i] = (float)i / 200.0f;
    o.mean_image = mean_image;
    o.std[0] = 0.5f;
    KS_OK(keel_augment_apply(&o, &img, &crop, out));
    check_view(&o, &img, &crop, out, "mean image");
    assert_float_equal(out[1 * 6 + 5], (5 / 255.0 - 11 / 200.0) / 0.5, 1e-5);
    o.std[1] = 0.0f;
    assert_int_equal(keel_augment_apply(&o, &img, &crop, out), KEEL_ERR_INVALID_ARGUMENT);
    keel_image_release(&img);
}

static void test_centre_and_ten_crop(void **state)
{
    (void)state;
    keel_image img = {0};
    coordinate_image(&img, 7, 9);
    keel_augment_opts o = keel_augment_defaults(KEEL_CROP_CENTER);
    o.crop_size = 4;
    assert_int_equal(keel_augment_views(&o), 1);
    keel_crop crop;
    KS_OK(keel_augment_crop(&o, 7, 9, 123, 0, &crop));
    /* torchvision: round(5 / 2) = 2 (half to even), round(3 / 2) = 2. */
    assert_int_equal(crop.x, 2);
    assert_int_equal(crop.y, 2);
    assert_false(crop.mirror);
    KS_OK(keel_augment_crop(&o, 8, 11, 5, 0, &crop));
    assert_int_equal(crop.x, 4); /* round(3.5) = 4 */
    assert_int_equal(crop.y, 2);

    o.mode = KEEL_CROP_TEN;
    assert_int_equal(keel_augment_views(&o), 10);
    /* torchvision's TenCrop of a 9x7 image, size 4: FiveCrop (TL, TR, BL, BR,
     * centre), then FiveCrop of the mirrored image. */
    const int want[10][3] = {{0, 0, 0}, {5, 0, 0}, {0, 3, 0}, {5, 3, 0}, {2, 2, 0},
                             {5, 0, 1}, {0, 0, 1}, {5, 3, 1}, {0, 3, 1}, {3, 2, 1}};
    float out[3 * 16];
    for (int v = 0; v < 10; v++) {
        KS_OK(keel_augment_crop(&o, 7, 9, 99, v, &crop));
        assert_int_equal(crop.x, want[v][0]);
        assert_int_equal(crop.y, want[v][1]);
        assert_int_equal(crop.mirror, want[v][2]);
        KS_OK(keel_augment_apply(&o, &img, &crop, out));
        check_view(&o, &img, &crop, out, "ten-crop");
    }
    /* View 5 is the mirrored image's top-left corner: its first column is
     * the original's last one (x = 8). */
    KS_OK(keel_augment_crop(&o, 7, 9, 0, 5, &crop));
    KS_OK(keel_augment_apply(&o, &img, &crop, out));
    assert_float_equal(out[0], (8 / 255.0 - 0.485) / 0.229, 1e-5);
    assert_int_equal(keel_augment_crop(&o, 7, 9, 0, 10, &crop), KEEL_ERR_INVALID_ARGUMENT);
    keel_image_release(&img);
}

static void test_random_resized_crop(void **state)
{
    (void)state;
    keel_augment_opts o = keel_augment_defaults(KEEL_CROP_RANDOM_RESIZED);
    o.crop_size = 16;
    keel_image img = {0};
    fill_pattern(&img, 80, 100, 5);
    float out[3 * 256];
    int mirrored = 0;
    double smallest = 1, largest = 0;
    for (uint64_t seed = 0; seed < 300; seed++) {
        keel_crop crop;
        KS_OK(keel_augment_crop(&o, 80, 100, seed, 0, &crop));
        assert_true(crop.x >= 0 && crop.y >= 0 && crop.x + crop.width <= 100 && crop.y + crop.height <= 80);
        double area = (double)crop.width * crop.height / 8000.0;
        double ratio = (double)crop.width / crop.height;
        /* Rounding the sides to integers moves area and ratio a little. */
        assert_true(area > 0.07 && area <= 1.0);
        assert_true(ratio > 0.70 && ratio < 1.42);
        smallest = fmin(smallest, area);
        largest = fmax(largest, area);
        mirrored += crop.mirror;
        if (seed < 20) {
            KS_OK(keel_augment_apply(&o, &img, &crop, out));
            double want[3 * 256];
            reference_resize(&img, crop.x, crop.y, crop.width, crop.height, 16, 16, want);
            double worst = 0;
            for (int c = 0; c < 3; c++)
                for (int y = 0; y < 16; y++)
                    for (int x = 0; x < 16; x++) {
                        int sx = crop.mirror ? 15 - x : x;
                        double pixel = (out[(c * 16 + y) * 16 + x] * o.std[c] + o.mean[c]) * 255.0;
                        worst = fmax(worst, fabs(pixel - want[(y * 16 + sx) * 3 + c]));
                    }
            if (worst > 1.01)
                fail_msg("random-resized crop %d: max |got - float64| = %g pixel levels (tol 1.01)", (int)seed, worst);
        }
    }
    printf("ERR random-resized crop areas seen: [%.3f, %.3f] of [0.08, 1]\n", smallest, largest);
    assert_true(smallest < 0.2 && largest > 0.8);
    assert_true(mirrored > 100 && mirrored < 200);
    /* No try fits in a 1000x10 strip: torchvision's fallback, the centre crop
     * at the largest ratio (round(10 * 4/3) = 13 wide). */
    keel_crop crop;
    KS_OK(keel_augment_crop(&o, 10, 1000, 3, 0, &crop));
    assert_int_equal(crop.width, 13);
    assert_int_equal(crop.height, 10);
    assert_int_equal(crop.x, 493);
    assert_int_equal(crop.y, 0);
    KS_OK(keel_augment_crop(&o, 1000, 10, 3, 0, &crop));
    assert_int_equal(crop.width, 10);
    assert_int_equal(crop.height, 13); /* round(10 / (3/4)) */
    assert_int_equal(crop.y, 493);
    keel_image_release(&img);
}

static void test_pca_lighting(void **state)
{
    (void)state;
    const float eigval[3] = KEEL_IMAGENET_EIGVAL;
    const float eigvec[3][3] = KEEL_IMAGENET_EIGVEC;
    keel_augment_opts o = keel_augment_defaults(KEEL_CROP_CENTER);
    o.crop_size = 2;
    o.lighting_std = 0.1f;
    for (int c = 0; c < 3; c++)
        o.mean[c] = 0, o.std[c] = 1;
    keel_image img = {0};
    coordinate_image(&img, 2, 2);
    double sum[3] = {0}, sum_sq[3] = {0};
    const int draws = 4000;
    for (int s = 0; s < draws; s++) {
        keel_crop crop;
        KS_OK(keel_augment_crop(&o, 2, 2, (uint64_t)s, 0, &crop));
        /* alpha_i = (eigvec^T lighting)_i / eigval_i: the eigenvectors are
         * orthonormal to the published 4 digits. */
        for (int i = 0; i < 3; i++) {
            double proj = 0;
            for (int c = 0; c < 3; c++)
                proj += eigvec[c][i] * crop.lighting[c];
            double alpha = proj / eigval[i];
            sum[i] += alpha;
            sum_sq[i] += alpha * alpha;
        }
        if (s < 5) {
            float out[12];
            KS_OK(keel_augment_apply(&o, &img, &crop, out));
            check_view(&o, &img, &crop, out, "lighting");
        }
    }
    for (int i = 0; i < 3; i++) {
        double mean = sum[i] / draws, sd = sqrt(sum_sq[i] / draws - mean * mean);
        printf("ERR PCA lighting alpha_%d: mean %.4f sd %.4f (want 0 and 0.1)\n", i, mean, sd);
        assert_true(fabs(mean) < 0.01);
        assert_true(fabs(sd - 0.1) < 0.01);
    }
    /* Off by default. */
    o.lighting_std = 0;
    keel_crop crop;
    KS_OK(keel_augment_crop(&o, 2, 2, 1, 0, &crop));
    assert_true(crop.lighting[0] == 0 && crop.lighting[1] == 0 && crop.lighting[2] == 0);
    keel_image_release(&img);
}

/* ---- the loader: determinism, queue, hooks -------------------------------- */

typedef struct alloc_count {
    int allocs, frees;
} alloc_count;

static void *counting_alloc(size_t bytes, void *user)
{
    ((alloc_count *)user)->allocs++;
    return malloc(bytes);
}

static void counting_free(void *p, void *user)
{
    ((alloc_count *)user)->frees++;
    free(p);
}

/* Every batch of two epochs, concatenated. */
static float *run_loader(keel_image_dataset *d, keel_image_loader_opts *o, size_t *floats)
{
    keel_image_loader *l;
    KS_OK(keel_image_loader_create(&l, d, o));
    size_t per_batch = (size_t)o->batch * keel_image_loader_views(l) * 3 * o->augment.crop_size * o->augment.crop_size;
    size_t total = 2 * (size_t)keel_image_loader_batches(l) * (per_batch + (size_t)o->batch);
    float *all = malloc(total * sizeof *all), *p = all;
    for (int epoch = 0; epoch < 2; epoch++) {
        KS_OK(keel_image_loader_start_epoch(l, epoch));
        const float *x;
        const int32_t *y;
        int64_t n;
        for (;;) {
            KS_OK(keel_image_loader_next(l, &x, &y, &n));
            if (n == 0)
                break;
            memcpy(p, x, per_batch * sizeof *p);
            p += per_batch;
            for (int64_t i = 0; i < o->batch; i++)
                *p++ = (float)y[i];
        }
    }
    keel_image_loader_destroy(l);
    *floats = (size_t)(p - all);
    return all;
}

static void test_loader_deterministic(void **state)
{
    (void)state;
    need_jpeg();
    keel_image_dataset *d;
    KS_OK(keel_image_dataset_open_packed(&d, at(0, "packed"), NULL));
    keel_image_loader_opts o = small_opts(KEEL_CROP_RANDOM_RESIZED, 2, 0);
    o.augment.lighting_std = 0.1f;
    size_t n0, n;
    float *reference = run_loader(d, &o, &n0);
    int worker_counts[] = {1, 3, 8};
    for (int i = 0; i < 3; i++) {
        o.workers = worker_counts[i];
        o.queue_depth = i + 1;
        float *got = run_loader(d, &o, &n);
        assert_int_equal(n, n0);
        assert_memory_equal(got, reference, n * sizeof *got);
        free(got);
    }
    o.seed = 8;
    float *other = run_loader(d, &o, &n);
    assert_true(memcmp(other, reference, n * sizeof *other) != 0);
    free(other);
    free(reference);

    /* Partial last batch: zero tail, label 0; drop_last drops it. */
    alloc_count counts = {0};
    o = small_opts(KEEL_CROP_CENTER, 3, 2);
    o.shuffle = false;
    o.host_alloc = counting_alloc;
    o.host_free = counting_free;
    o.host_user = &counts;
    keel_image_loader *l;
    KS_OK(keel_image_loader_create(&l, d, &o));
    assert_int_equal(keel_image_loader_batches(l), 3);
    KS_OK(keel_image_loader_start_epoch(l, 0));
    const float *x;
    const int32_t *y;
    int64_t got;
    for (int b = 0; b < 3; b++) {
        KS_OK(keel_image_loader_next(l, &x, &y, &got));
        assert_int_equal(got, b < 2 ? 3 : 1);
        for (int64_t i = 0; i < got; i++)
            assert_int_equal(y[i], keel_image_dataset_label(d, b * 3 + i));
    }
    for (size_t i = 3 * 24 * 24; i < 3 * 3 * 24 * 24; i++)
        assert_true(x[i] == 0.0f);
    assert_int_equal(y[1], 0);
    KS_OK(keel_image_loader_next(l, &x, &y, &got));
    assert_int_equal(got, 0);
    keel_image_loader_destroy(l);
    assert_int_equal(counts.allocs, 6); /* images and labels, 3 slots */
    assert_int_equal(counts.frees, 6);
    o.drop_last = true;
    o.host_alloc = NULL;
    o.host_free = NULL;
    KS_OK(keel_image_loader_create(&l, d, &o));
    assert_int_equal(keel_image_loader_batches(l), 2);
    /* next before start_epoch is a usage error. */
    assert_int_equal(keel_image_loader_next(l, &x, &y, &got), KEEL_ERR_STATE);
    keel_image_loader_destroy(l);

    /* Crops that cannot fit the packed short side are refused up front. */
    o.augment.crop_size = 40;
    assert_int_equal(keel_image_loader_create(&l, d, &o), KEEL_ERR_SHAPE);
    assert_non_null(strstr(keel_last_error(), "32-pixel short side"));
    keel_image_dataset_free(d);
}

static void test_loader_ten_crop_layout(void **state)
{
    (void)state;
    need_jpeg();
    keel_image_dataset *d;
    KS_OK(keel_image_dataset_open_packed(&d, at(0, "packed"), NULL));
    keel_image_loader_opts o = small_opts(KEEL_CROP_TEN, 2, 2);
    o.shuffle = false;
    keel_image_loader *l;
    KS_OK(keel_image_loader_create(&l, d, &o));
    assert_int_equal(keel_image_loader_views(l), 10);
    KS_OK(keel_image_loader_start_epoch(l, 0));
    const float *x;
    const int32_t *y;
    int64_t n;
    KS_OK(keel_image_loader_next(l, &x, &y, &n));
    assert_int_equal(n, 2);
    keel_image img = {0};
    float view[3 * 24 * 24];
    for (int i = 0; i < 2; i++) {
        KS_OK(keel_image_dataset_read(d, i, &img));
        for (int v = 0; v < 10; v++) {
            keel_crop crop;
            KS_OK(keel_augment_crop(&o.augment, img.height, img.width, 0, v, &crop));
            KS_OK(keel_augment_apply(&o.augment, &img, &crop, view));
            assert_memory_equal(x + (size_t)(i * 10 + v) * 3 * 24 * 24, view, sizeof view);
        }
    }
    keel_image_release(&img);
    keel_image_loader_destroy(l);
    keel_image_dataset_free(d);
}

static void test_mean_image(void **state)
{
    (void)state;
    need_jpeg();
    keel_image_dataset *d;
    KS_OK(keel_image_dataset_open_packed(&d, at(0, "packed"), NULL));
    float mean[3 * 8 * 8];
    KS_OK(keel_image_dataset_mean_image(d, 8, 2, mean));
    /* Against the centre crops averaged here. */
    keel_image img = {0};
    double want[3 * 64] = {0};
    int64_t count = keel_image_dataset_size(d);
    for (int64_t i = 0; i < count; i++) {
        KS_OK(keel_image_dataset_read(d, i, &img));
        int x0 = (int)nearbyint((img.width - 8) / 2.0), y0 = (int)nearbyint((img.height - 8) / 2.0);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 8; y++)
                for (int x = 0; x < 8; x++)
                    want[(c * 8 + y) * 8 + x] +=
                        img.pixels[((size_t)(y0 + y) * img.width + x0 + x) * 3 + c] / 255.0 / (double)count;
    }
    ks_check("mean image of centre crops", mean, want, 3 * 64, 1e-3, 1e-5);
    keel_image_release(&img);
    keel_image_dataset_free(d);
}

/* ---- top-1 / top-5 ---------------------------------------------------------- */

static void test_topk(void **state)
{
    (void)state;
    /* 7 classes; the label's rank is 0, 1, 4, 5 and 6. */
    const float logits[5][7] = {
        {9, 1, 2, 3, 4, 5, 6},   /* label 0: top-1 */
        {1, 9, 8, 3, 4, 5, 6},   /* label 2: rank 1 */
        {1, 2, 3, 4, 5, 6, 7},   /* label 2: rank 4 (3..6 above) */
        {1, 2, 3, 4, 5, 6, 7},   /* label 1: rank 5 */
        {1, 1, 1, 1, 1, 1, 1},   /* label 6: ties go to lower indices, rank 6 */
    };
    const int32_t labels[5] = {0, 2, 2, 1, 6};
    keel_topk acc = {0};
    KS_OK(keel_topk_update(&acc, &logits[0][0], 5, 1, 7, labels));
    assert_int_equal(acc.samples, 5);
    assert_int_equal(acc.top1_errors, 4);
    assert_int_equal(acc.top5_errors, 2);
    assert_float_equal(keel_topk_top1_error(&acc), 0.8, 1e-12);
    assert_float_equal(keel_topk_top5_error(&acc), 0.4, 1e-12);

    /* Ten-crop: softmax outputs are averaged, not votes. Eight views lean
     * slightly to class 1, two are certain of class 0: the average picks 0. */
    float views[10][3];
    for (int v = 0; v < 10; v++) {
        views[v][0] = v < 2 ? 20.0f : 0.0f;
        views[v][1] = v < 2 ? 0.0f : 0.5f;
        views[v][2] = 0.0f;
    }
    const int32_t label0 = 0, label1 = 1;
    keel_topk ten = {0};
    KS_OK(keel_topk_update(&ten, &views[0][0], 1, 10, 3, &label0));
    assert_int_equal(ten.top1_errors, 0);
    KS_OK(keel_topk_update(&ten, &views[0][0], 1, 10, 3, &label1));
    assert_int_equal(ten.top1_errors, 1);
    assert_int_equal(ten.top5_errors, 0);
    assert_int_equal(ten.samples, 2);
    const int32_t bad = 3;
    assert_int_equal(keel_topk_update(&ten, &views[0][0], 1, 10, 3, &bad), KEEL_ERR_INVALID_ARGUMENT);
    keel_topk empty = {0};
    assert_float_equal(keel_topk_top1_error(&empty), 0.0, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_folder_labels_and_order),
        cmocka_unit_test(test_folder_errors),
        cmocka_unit_test(test_list_file),
        cmocka_unit_test(test_list_errors),
        cmocka_unit_test(test_decode_matches_source),
        cmocka_unit_test(test_decode_like_pil),
        cmocka_unit_test(test_resize_like_torchvision),
        cmocka_unit_test(test_short_side_resize),
        cmocka_unit_test(test_decode_errors),
        cmocka_unit_test(test_loader_skips_corrupt),
        cmocka_unit_test(test_pack_equals_folder),
        cmocka_unit_test(test_damaged_shards),
        cmocka_unit_test(test_pack_errors),
        cmocka_unit_test(test_random_crop_and_mirror),
        cmocka_unit_test(test_normalisation_values),
        cmocka_unit_test(test_centre_and_ten_crop),
        cmocka_unit_test(test_random_resized_crop),
        cmocka_unit_test(test_pca_lighting),
        cmocka_unit_test(test_loader_deterministic),
        cmocka_unit_test(test_loader_ten_crop_layout),
        cmocka_unit_test(test_mean_image),
        cmocka_unit_test(test_topk),
    };
    return cmocka_run_group_tests(tests, setup_tree, remove_tree);
}
