/* PNG output through libpng read back pixel for pixel, the grid layout on
 * known tiles, and the filter and feature-map pictures of a tiny network. */
#include "support/support.h"
#include "keel/visualize.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void temp_path(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "/tmp/keel-test-png-%ld-%s", (long)getpid(), name);
}

/* Saves and reloads; skips the test when this libkeel has no libpng. */
static void round_trip(const keel_picture *pic, keel_picture *back, const char *name)
{
    char path[256];
    temp_path(path, sizeof path, name);
    keel_status st = keel_picture_save_png(pic, path);
    if (st == KEEL_ERR_UNSUPPORTED) {
        printf("built without libpng: %s\n", keel_last_error());
        skip();
    }
    KS_OK(st);
    KS_OK(keel_picture_load_png(back, path));
    remove(path);
}

static void test_grey_round_trip(void **state)
{
    (void)state;
    enum { width = 7, height = 5 };
    uint8_t pixels[width * height];
    for (int i = 0; i < width * height; i++)
        pixels[i] = (uint8_t)(i * 37 + 11);
    keel_picture pic = {.height = height, .width = width, .channels = 1, .pixels = pixels};
    keel_picture back = {0};
    round_trip(&pic, &back, "grey.png");
    assert_int_equal(back.width, width);
    assert_int_equal(back.height, height);
    assert_int_equal(back.channels, 1);
    assert_memory_equal(back.pixels, pixels, sizeof pixels);
    keel_picture_release(&back);
    assert_null(back.pixels);
}

static void test_rgb_round_trip(void **state)
{
    (void)state;
    enum { width = 4, height = 3 };
    uint8_t pixels[width * height * 3];
    for (int i = 0; i < width * height * 3; i++)
        pixels[i] = (uint8_t)(255 - i * 19);
    keel_picture pic = {.height = height, .width = width, .channels = 3, .pixels = pixels};
    keel_picture back = {0};
    round_trip(&pic, &back, "rgb.png");
    assert_int_equal(back.width, width);
    assert_int_equal(back.height, height);
    assert_int_equal(back.channels, 3);
    assert_memory_equal(back.pixels, pixels, sizeof pixels);
    keel_picture_release(&back);
}

static void test_bad_files(void **state)
{
    (void)state;
    keel_picture pic = {0};
    char path[256];
    temp_path(path, sizeof path, "not-a-png.png");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("this is not a PNG file at all", f);
    fclose(f);
    keel_status st = keel_picture_load_png(&pic, path);
    remove(path);
    if (st == KEEL_ERR_UNSUPPORTED)
        skip();
    assert_int_equal(st, KEEL_ERR_FORMAT);
    printf("bad file: %s\n", keel_last_error());
    assert_non_null(strstr(keel_last_error(), path));
    assert_int_equal(keel_picture_load_png(&pic, "/nonexistent/dir/x.png"), KEEL_ERR_IO);
    uint8_t one = 0;
    keel_picture wrong = {.height = 1, .width = 1, .channels = 2, .pixels = &one};
    assert_int_equal(keel_picture_save_png(&wrong, path), KEEL_ERR_INVALID_ARGUMENT);
}

/* Three 2x3 grey tiles, two columns, padding 1, zoom 2, range [0, 1]:
 * picture 2 rows x (2*2+1)+1 = 11 high, 2 x (3*2+1)+1 = 15 wide. */
static void test_grid_layout(void **state)
{
    (void)state;
    float tiles[3 * 6];
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < 6; i++)
            tiles[t * 6 + i] = (float)(t * 6 + i) / 17.0f;
    keel_grid_opts o = {.columns = 2, .padding = 1, .zoom = 2, .scale = KEEL_GRID_RANGE, .low = 0, .high = 1,
                        .background = 200};
    keel_picture pic = {0};
    KS_OK(keel_grid_make(&pic, tiles, 3, 1, 2, 3, &o));
    assert_int_equal(pic.height, 11);
    assert_int_equal(pic.width, 15);
    assert_int_equal(pic.channels, 1);
    for (int t = 0; t < 3; t++) {
        int top = 1 + (t / 2) * 5, left = 1 + (t % 2) * 7;
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 6; x++) {
                float v = tiles[t * 6 + (y / 2) * 3 + x / 2];
                int want = (int)(255.0f * v + 0.5f);
                assert_int_equal(pic.pixels[(top + y) * 15 + left + x], want);
            }
    }
    /* padding and the empty fourth cell keep the background */
    assert_int_equal(pic.pixels[0], 200);
    assert_int_equal(pic.pixels[5 * 15 + 3], 200);
    assert_int_equal(pic.pixels[7 * 15 + 10], 200);
    keel_picture back = {0};
    round_trip(&pic, &back, "grid.png");
    assert_int_equal(back.height, 11);
    assert_int_equal(back.width, 15);
    assert_memory_equal(back.pixels, pic.pixels, 11 * 15);
    keel_picture_release(&back);
    keel_picture_release(&pic);
}

/* Per-tile scaling stretches each tile to 0..255; an RGB tile keeps its
 * channels interleaved; a constant tile is black. */
static void test_grid_scaling(void **state)
{
    (void)state;
    float tiles[2 * 3 * 1 * 2] = {
        2, 4, 3, 3, 5, 2,   /* tile 0: R = (2, 4), G = (3, 3), B = (5, 2); range 2..5 */
        7, 7, 7, 7, 7, 7,   /* tile 1: constant */
    };
    keel_grid_opts o = {.padding = -1};
    keel_picture pic = {0};
    KS_OK(keel_grid_make(&pic, tiles, 2, 3, 1, 2, &o));
    assert_int_equal(pic.height, 1);
    assert_int_equal(pic.width, 4);
    assert_int_equal(pic.channels, 3);
    const uint8_t want[12] = {0, 85, 255, 170, 85, 0, 0, 0, 0, 0, 0, 0};
    assert_memory_equal(pic.pixels, want, sizeof want);
    keel_picture_release(&pic);

    float ramp[4] = {-1, 0, 0.5f, 1};
    keel_grid_opts all = {.padding = -1, .scale = KEEL_GRID_ALL, .columns = 4};
    KS_OK(keel_grid_make(&pic, ramp, 4, 1, 1, 1, &all));
    const uint8_t want_ramp[4] = {0, 128, 191, 255};
    assert_memory_equal(pic.pixels, want_ramp, sizeof want_ramp);
    keel_picture_release(&pic);
    assert_int_equal(keel_grid_make(&pic, ramp, 4, 2, 1, 1, NULL), KEEL_ERR_INVALID_ARGUMENT);
}

/* conv1 (2 filters of 1x2x2) and a second conv: the filter sheet holds the
 * weights, "conv2" finds the second convolution by position, and the
 * feature maps are conv1's output. */
static void test_filters_and_activations(void **state)
{
    (void)state;
    keel_graph *g = keel_graph_new();
    const int64_t shape[4] = {1, 1, 3, 3};
    keel_node *x = keel_input(g, "x", 4, shape);
    keel_conv2d_opts o = keel_conv_opts(2, 1, 0);
    o.no_bias = true;
    keel_node *first = keel_conv2d(g, "stem", x, 2, &o);
    keel_node *second = keel_conv2d(g, "head", first, 1, &o);
    keel_graph_keep(g, first);
    ks_graph_ok(g);
    keel_node *found = NULL;
    KS_OK(keel_find_layer(g, "conv1", &found));
    assert_ptr_equal(found, first);
    KS_OK(keel_find_layer(g, "conv2", &found));
    assert_ptr_equal(found, second);
    KS_OK(keel_find_layer(g, "head", &found));
    assert_ptr_equal(found, second);
    assert_int_equal(keel_find_layer(g, "conv3", &found), KEEL_ERR_NOT_FOUND);
    printf("unknown layer: %s\n", keel_last_error());
    assert_non_null(strstr(keel_last_error(), "stem"));

    keel_context *ctx = ks_context();
    keel_plan *plan = ks_compile(g, ctx, 1);
    const float weights[8] = {0, 1, 2, 3, 4, 4, 4, 8};
    KS_OK(keel_plan_param_set(plan, "stem.weight", weights, 8));
    keel_picture pic = {0};
    KS_OK(keel_filter_picture(plan, first, 1, &pic));
    assert_int_equal(pic.height, 3 + 2 + 3);          /* 2 columns (ceil sqrt 2), one row, padding 3 */
    assert_int_equal(pic.width, 3 + 2 * (2 + 3));
    /* filter 0 = {0, 1, 2, 3} on 0..3, filter 1 = {4, 4, 4, 8} on 4..8, grey padding */
    const uint8_t row0[13] = {128, 128, 128, 0, 85, 128, 128, 128, 0, 0, 128, 128, 128};
    assert_memory_equal(pic.pixels + 3 * 13, row0, 13);
    const uint8_t row1[13] = {128, 128, 128, 170, 255, 128, 128, 128, 0, 255, 128, 128, 128};
    assert_memory_equal(pic.pixels + 4 * 13, row1, 13);
    keel_picture_release(&pic);
    assert_int_equal(keel_filter_picture(plan, keel_graph_find(g, "x"), 1, &pic), KEEL_ERR_INVALID_ARGUMENT);

    const float image[9] = {1, 0, 0, 0, 1, 0, 0, 0, 2};
    KS_OK(keel_plan_set_input(plan, x, image));
    KS_OK(keel_plan_forward(plan, false));
    KS_OK(keel_activation_picture(plan, first, 1, &pic));
    assert_int_equal(pic.width, 2 + 2 * (2 + 2));      /* 2 maps of 2x2, padding 2 */
    /* map 0 (filter 0 over the image) = {3, 2, 1, 6}: stretched to {102, 51, 0, 255} */
    assert_int_equal(pic.height, 2 + 2 + 2);
    assert_int_equal(pic.pixels[2 * pic.width + 2], 102);
    assert_int_equal(pic.pixels[2 * pic.width + 3], 51);
    assert_int_equal(pic.pixels[3 * pic.width + 2], 0);
    assert_int_equal(pic.pixels[3 * pic.width + 3], 255);
    assert_int_equal(pic.pixels[0], 255);
    keel_picture_release(&pic);
    keel_plan_destroy(plan);
    keel_context_destroy(ctx);
    keel_graph_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grey_round_trip),
        cmocka_unit_test(test_rgb_round_trip),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_grid_layout),
        cmocka_unit_test(test_grid_scaling),
        cmocka_unit_test(test_filters_and_activations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
