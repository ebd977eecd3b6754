/* The keel program, run as a user runs it: help and usage, exit codes,
 * error messages, `keel info`'s table, a short training run that writes a
 * checkpoint and a chart which `keel eval` then reads, and the same on a
 * small tree of PNGs (folder, packed shards, ten-crop evaluation). */
#include "support/support.h"
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char keel_path[PATH_MAX];
static char tmp_dir[256];

/* build/tests/test_cli -> build/src/cli/keel */
static int setup(void **state)
{
    (void)state;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = '\0';
    snprintf(keel_path, sizeof keel_path, "%s/../src/cli/keel", dirname(self));
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/keel_test_cli_XXXXXX");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[320];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    return system(cmd) == 0 ? 0 : -1;
}

typedef struct run_result {
    int status;     /* exit code */
    char *output;   /* stdout and stderr together */
} run_result;

/* Runs `keel <args>` through the shell; args are trusted test strings. */
static run_result run_keel(const char *args)
{
    char cmd[5 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", keel_path, args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t size = 0, cap = 4096;
    char *out = malloc(cap);
    assert_non_null(out);
    size_t got;
    while ((got = fread(out + size, 1, cap - size - 1, p)) > 0) {
        size += got;
        if (cap - size < 1024) {
            cap *= 2;
            out = realloc(out, cap);
            assert_non_null(out);
        }
    }
    out[size] = '\0';
    int status = pclose(p);
    run_result r = {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
    printf("$ keel %s  -> exit %d\n%s", args, r.status, out);
    return r;
}

static void expect(const run_result *r, const char *needle)
{
    if (!strstr(r->output, needle))
        fail_msg("expected '%s' in the output", needle);
}

static bool have_fashion_mnist(void)
{
    const char *dir = getenv("KEEL_DATA_DIR");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/t10k-labels-idx1-ubyte.gz", dir && *dir ? dir : KEEL_FASHION_MNIST_DIR);
    return access(path, R_OK) == 0;
}

static const char *data_flag(void)
{
    static char flag[PATH_MAX + 16];
    const char *dir = getenv("KEEL_DATA_DIR");
    snprintf(flag, sizeof flag, "--data '%s'", dir && *dir ? dir : KEEL_FASHION_MNIST_DIR);
    return flag;
}

static void test_help_and_version(void **state)
{
    (void)state;
    run_result r = run_keel("--help");
    assert_int_equal(r.status, 0);
    expect(&r, "usage: keel COMMAND");
    expect(&r, "train");
    expect(&r, "lenet5");
    free(r.output);

    r = run_keel("--version");
    assert_int_equal(r.status, 0);
    expect(&r, "keel 0.1.0");
    free(r.output);

    r = run_keel("");
    assert_int_not_equal(r.status, 0);
    expect(&r, "usage:");
    free(r.output);

    r = run_keel("frobnicate");
    assert_int_not_equal(r.status, 0);
    expect(&r, "unknown command 'frobnicate'");
    free(r.output);
}

static void test_command_help_lists_every_flag(void **state)
{
    (void)state;
    run_result r = run_keel("train --help");
    assert_int_equal(r.status, 0);
    const char *flags[] = {"--model", "--epochs", "--batch", "--lr", "--momentum", "--weight-decay", "--optimizer",
                           "--schedule", "--warmup", "--seed", "--threads", "--device", "--data", "--dataset",
                           "--subset", "--save", "--resume", "--plot", "--progress", "--val", "--workers", "--crop",
                           "--augment", "--lighting", "--mean-image", "--ten-crop", "--short-side"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        expect(&r, flags[i]);
    free(r.output);
    const char *commands[] = {"eval --help", "info --help", "devices --help"};
    for (size_t i = 0; i < 3; i++) {
        r = run_keel(commands[i]);
        assert_int_equal(r.status, 0);
        expect(&r, "usage: keel");
        free(r.output);
    }
    r = run_keel("eval --help");
    const char *eval_flags[] = {"--weights", "--data", "--ten-crop", "--crop", "--workers", "--short-side"};
    for (size_t i = 0; i < sizeof eval_flags / sizeof eval_flags[0]; i++)
        expect(&r, eval_flags[i]);
    free(r.output);
}

static void test_bad_flags(void **state)
{
    (void)state;
    run_result r = run_keel("train --no-such-flag");
    assert_int_equal(r.status, 2);
    expect(&r, "unknown flag '--no-such-flag'");
    expect(&r, "usage: keel train");
    free(r.output);

    r = run_keel("train --epochs ten");
    assert_int_equal(r.status, 2);
    expect(&r, "--epochs expects a whole number, got 'ten'");
    free(r.output);

    r = run_keel("train --epochs");
    assert_int_equal(r.status, 2);
    expect(&r, "--epochs needs a value");
    free(r.output);

    r = run_keel("train --optimizer rmsprop");
    assert_int_equal(r.status, 2);
    expect(&r, "rmsprop");
    free(r.output);

    r = run_keel("train --schedule exponential");
    assert_int_equal(r.status, 2);
    expect(&r, "unknown schedule 'exponential'");
    free(r.output);

    r = run_keel("info --input 3x224");
    assert_int_equal(r.status, 2);
    expect(&r, "--input expects CxHxW");
    free(r.output);

    r = run_keel("eval");
    assert_int_equal(r.status, 2);
    expect(&r, "--weights FILE is required");
    free(r.output);
}

static void test_info_lenet5(void **state)
{
    (void)state;
    run_result r = run_keel("info --model lenet5");
    assert_int_equal(r.status, 0);
    expect(&r, "conv1");
    expect(&r, "1x6x28x28");
    expect(&r, "fc2");
    expect(&r, "Total params:      61,706");
    expect(&r, "Forward FLOPs:");
    free(r.output);

    r = run_keel("info --model lenet5 --batch 8 --classes 5");
    assert_int_equal(r.status, 0);
    expect(&r, "8x5");
    free(r.output);

    r = run_keel("info --model no-such-net");
    assert_int_equal(r.status, 1);
    expect(&r, "keel: error: unknown model 'no-such-net'");
    free(r.output);
}

static void test_devices(void **state)
{
    (void)state;
    run_result r = run_keel("devices");
    assert_int_equal(r.status, 0);
    expect(&r, "cpu");
    free(r.output);
}

static void test_bad_data_dir(void **state)
{
    (void)state;
    run_result r = run_keel("train --data /nonexistent/fashion --epochs 1");
    assert_int_equal(r.status, 1);
    expect(&r, "keel: error:");
    expect(&r, "/nonexistent/fashion");
    free(r.output);
}

static void test_train_eval_resume(void **state)
{
    (void)state;
    if (!have_fashion_mnist()) {
        printf("Fashion-MNIST not found (KEEL_DATA_DIR); skipping\n");
        skip();
    }
    char args[3 * PATH_MAX];
    snprintf(args, sizeof args,
             "train %s --subset 500 --test-subset 500 --epochs 1 --batch 50 --threads 2 --progress lines "
             "--save '%s/run.safetensors' --plot '%s/run.svg'", data_flag(), tmp_dir, tmp_dir);
    run_result r = run_keel(args);
    assert_int_equal(r.status, 0);
    expect(&r, "epoch 1/1");
    expect(&r, "top-1");
    expect(&r, "schedule");
    free(r.output);

    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/run.svg", tmp_dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char head[64] = "";
    assert_true(fread(head, 1, sizeof head - 1, f) > 0);
    fclose(f);
    assert_non_null(strstr(head, "<svg"));

    snprintf(args, sizeof args, "eval %s --weights '%s/run.safetensors' --subset 500", data_flag(), tmp_dir);
    r = run_keel(args);
    assert_int_equal(r.status, 0);
    expect(&r, "lenet5 on fashion-mnist (test, 500 images)");
    expect(&r, "top-1");
    free(r.output);

    /* Continue to epoch 2 from the checkpoint. */
    snprintf(args, sizeof args,
             "train %s --subset 500 --test-subset 500 --epochs 2 --batch 50 --threads 2 --progress none "
             "--resume '%s/run.safetensors'", data_flag(), tmp_dir);
    r = run_keel(args);
    assert_int_equal(r.status, 0);
    expect(&r, "after epoch 1 of 2");
    expect(&r, "epoch 2/2");
    free(r.output);

    /* Another model cannot continue it. */
    snprintf(args, sizeof args, "train %s --subset 500 --epochs 2 --batch 50 --model cnn-small --resume '%s/run.safetensors'",
             data_flag(), tmp_dir);
    r = run_keel(args);
    assert_int_equal(r.status, 1);
    expect(&r, "keel: error:");
    expect(&r, "block1.conv1.weight");
    free(r.output);

    /* Nor can eval load it into another model. */
    snprintf(args, sizeof args, "eval %s --weights '%s/run.safetensors' --model cnn-small --subset 100", data_flag(),
             tmp_dir);
    r = run_keel(args);
    assert_int_equal(r.status, 1);
    expect(&r, "block1.conv1.weight");
    free(r.output);
}

/* ---- image datasets ------------------------------------------------------------ */

static void test_train_eval_images(void **state)
{
    (void)state;
    char tree[PATH_MAX], args[4 * PATH_MAX];
    snprintf(tree, sizeof tree, "%s/tree", tmp_dir);
    if (!ks_write_colour_tree(tree, 8, 40, 48)) {
        printf("PNG writing is not built in; skipping\n");
        skip();
    }
    /* The folder is recognised as an image dataset without --dataset. */
    snprintf(args, sizeof args,
             "train --data '%s' --val '%s' --model lenet5 --crop 32 --short-side 40 --epochs 1 --batch 6 "
             "--workers 2 --threads 2 --progress lines --save '%s/img.safetensors'", tree, tree, tmp_dir);
    run_result r = run_keel(args);
    assert_int_equal(r.status, 0);
    expect(&r, "24 training images (image files)");
    expect(&r, "random-resized crop 32");
    expect(&r, "top-1 error");
    expect(&r, "top-5 error");
    expect(&r, "final top-1 error");
    free(r.output);

    snprintf(args, sizeof args, "eval --weights '%s/img.safetensors' --data '%s' --ten-crop --short-side 40 "
             "--workers 2 --threads 2 --batch 20", tmp_dir, tree);
    r = run_keel(args);
    assert_int_equal(r.status, 0);
    expect(&r, "(24 images, ten crops 32)");
    expect(&r, "top-1 error");
    expect(&r, "top-5 error");
    free(r.output);

    /* Packed shards, the AlexNet recipe, a mean image and ten-crop validation. */
    snprintf(args, sizeof args, "pack '%s' '%s/shards' --short-side 40 --shards 2 --quiet", tree, tmp_dir);
    r = run_keel(args);
    assert_int_equal(r.status, 0);
    free(r.output);
    snprintf(args, sizeof args,
             "train --data '%s/shards' --val '%s/shards' --model lenet5 --crop 32 --augment alexnet --lighting 0.1 "
             "--mean-image --ten-crop --epochs 1 --batch 12 --workers 0 --threads 2 --progress none "
             "--save '%s/mean.safetensors'", tmp_dir, tmp_dir, tmp_dir);
    r = run_keel(args);
    assert_int_equal(r.status, 0);
    expect(&r, "(packed shards)");
    expect(&r, "random crop 32, mirrored, PCA lighting 0.1; test: ten crops 32");
    expect(&r, "32x32 mean image");
    expect(&r, "mean.safetensors.mean.npy");
    expect(&r, "top-5 error");
    free(r.output);
    snprintf(args, sizeof args, "eval --weights '%s/mean.safetensors' --data '%s/shards' --ten-crop --workers 1",
             tmp_dir, tmp_dir);
    r = run_keel(args);
    assert_int_equal(r.status, 0);
    expect(&r, "(24 images, ten crops 32)");
    free(r.output);

    /* Bad combinations are usage errors. */
    struct {
        const char *args, *message;
    } bad[] = {
        {"train --ten-crop --epochs 1", "--ten-crop applies to image datasets"},
        {"train --crop 32", "--crop applies to image datasets"},
        {"train --dataset images", "--dataset images needs --data PATH"},
        {"train --data '%s' --augment cutmix", "--augment must be alexnet, resnet or none, got 'cutmix'"},
        {"train --data '%s' --subset 10", "--subset and --test-subset apply to fashion-mnist"},
        {"train --data '%s' --ten-crop", "--ten-crop evaluates the validation set"},
        {"train --data '%s' --mean-image --no-normalize", "--mean-image and --no-normalize exclude each other"},
        {"train --data '%s' --lighting -1", "--lighting must be >= 0"},
        {"eval --weights x.safetensors --data '%s' --ten-crop --batch 8", "--ten-crop needs --batch >= 10"},
        {"eval --weights x.safetensors --ten-crop", "--ten-crop applies to image datasets"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char line[2 * PATH_MAX];
        snprintf(line, sizeof line, bad[i].args, tree);
        r = run_keel(line);
        assert_int_equal(r.status, 2);
        expect(&r, bad[i].message);
        expect(&r, "usage: keel");
        free(r.output);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_and_version),
        cmocka_unit_test(test_command_help_lists_every_flag),
        cmocka_unit_test(test_bad_flags),
        cmocka_unit_test(test_info_lenet5),
        cmocka_unit_test(test_devices),
        cmocka_unit_test(test_bad_data_dir),
        cmocka_unit_test(test_train_eval_resume),
        cmocka_unit_test(test_train_eval_images),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
