/* keel pack SRC OUT [--short-side 256] [--shards N] [--workers N]
 *                   [--root DIR] [--classes N] [--quiet]
 *
 * SRC is an image folder in ImageNet's layout or a list file of "path label"
 * lines; OUT a folder that receives shard-*-of-*.keelpack files. Training
 * and evaluation then read OUT instead of SRC. */
#include "cli/pack.h"
#include "keel/keel.h"
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Images per shard when --shards is not given: about 2.6 GB of 256-pixel
 * short-side images per file. */
#define IMAGES_PER_SHARD 10000

static const char usage[] =
    "usage: keel pack SRC OUT [options]\n"
    "  Decodes every image of SRC once, resizes it to the short side and writes\n"
    "  uint8 RGB shards OUT/shard-NNNNN-of-NNNNN.keelpack, memory-mapped at train\n"
    "  time. SRC is a folder with one sub-folder per class (ImageNet's train/) or\n"
    "  a list file of 'path label' lines (ImageNet's val/ with its label file).\n"
    "  Corrupt or unreadable images are reported and left out.\n"
    "options:\n"
    "  --short-side N   shorter side of the stored images (default 256)\n"
    "  --shards N       number of shard files (default: one per 10000 images)\n"
    "  --workers N      decoding threads (default: the number of CPUs)\n"
    "  --root DIR       list files: the folder paths are relative to\n"
    "                   (default: the list file's folder)\n"
    "  --classes N      list files: labels must lie in [0, N)\n"
    "  --quiet          no progress line\n";

typedef struct pack_args {
    const char *src, *out, *root;
    int short_side, shards, workers, classes;
    bool quiet;
} pack_args;

static bool parse_int(const char *text, int lo, int hi, int *value)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > hi)
        return false;
    *value = (int)v;
    return true;
}

/* The value of "--name VALUE" or "--name=VALUE", advancing *i past it. */
static const char *option_value(int argc, char **argv, int *i, const char *name)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0' || *i + 1 >= argc)
        return NULL;
    return argv[++*i];
}

static int usage_error(const char *fmt, const char *what)
{
    fprintf(stderr, "keel pack: ");
    fprintf(stderr, fmt, what);
    fprintf(stderr, " (see keel pack --help)\n");
    return 2;
}

static int parse_args(int argc, char **argv, pack_args *a)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    *a = (pack_args){.short_side = 256, .workers = cpus > 0 && cpus < 1024 ? (int)cpus : 1};
    int positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *v;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(usage, stdout);
            return -1;
        } else if (strcmp(arg, "--quiet") == 0) {
            a->quiet = true;
        } else if ((v = option_value(argc, argv, &i, "--short-side"))) {
            if (!parse_int(v, 1, 65535, &a->short_side))
                return usage_error("--short-side needs a whole number in [1, 65535], got '%s'", v);
        } else if ((v = option_value(argc, argv, &i, "--shards"))) {
            if (!parse_int(v, 1, 99999, &a->shards))
                return usage_error("--shards needs a whole number in [1, 99999], got '%s'", v);
        } else if ((v = option_value(argc, argv, &i, "--workers"))) {
            if (!parse_int(v, 1, 1024, &a->workers))
                return usage_error("--workers needs a whole number in [1, 1024], got '%s'", v);
        } else if ((v = option_value(argc, argv, &i, "--classes"))) {
            if (!parse_int(v, 1, INT_MAX, &a->classes))
                return usage_error("--classes needs a positive whole number, got '%s'", v);
        } else if ((v = option_value(argc, argv, &i, "--root"))) {
            a->root = v;
        } else if (arg[0] == '-' && arg[1] != '\0') {
            return usage_error("unknown option or missing value: %s", arg);
        } else if (positional < 2) {
            *(positional++ == 0 ? &a->src : &a->out) = arg;
        } else {
            return usage_error("unexpected argument '%s'", arg);
        }
    }
    if (positional < 2)
        return usage_error("%s", "needs a source (folder or list file) and an output folder");
    return 0;
}

static void print_warning(const char *message, void *user)
{
    (void)user;
    fprintf(stderr, "\nkeel pack: warning: %s\n", message);
}

typedef struct progress_state {
    struct timespec start;
    double last_print;
    bool quiet;
} progress_state;

static double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + 1e-9 * (double)(now.tv_nsec - start->tv_nsec);
}

static void print_progress(int64_t done, int64_t total, void *user)
{
    progress_state *p = user;
    double t = seconds_since(&p->start);
    if (p->quiet || (done < total && t - p->last_print < 1.0))
        return;
    p->last_print = t;
    fprintf(stderr, "\rkeel pack: %lld/%lld images, %.0f images/s", (long long)done, (long long)total,
            t > 0 ? (double)done / t : 0.0);
    if (done == total)
        fputc('\n', stderr);
    fflush(stderr);
}

int keel_cli_pack(int argc, char **argv)
{
    pack_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    keel_image_open_opts open_opts = {.short_side = a.short_side, .root = a.root, .classes = a.classes,
                                      .warn = print_warning};
    keel_image_dataset *src;
    if (keel_image_dataset_open(&src, a.src, &open_opts) != KEEL_OK) {
        fprintf(stderr, "keel pack: error: %s\n", keel_last_error());
        return 1;
    }
    if (keel_image_dataset_is_packed(src)) {
        fprintf(stderr, "keel pack: error: %s is already packed\n", a.src);
        keel_image_dataset_free(src);
        return 1;
    }
    int64_t count = keel_image_dataset_size(src);
    int shards = a.shards;
    if (shards == 0)
        shards = (int)((count + IMAGES_PER_SHARD - 1) / IMAGES_PER_SHARD);
    progress_state progress = {.quiet = a.quiet};
    clock_gettime(CLOCK_MONOTONIC, &progress.start);
    keel_pack_opts opts = {.short_side = a.short_side, .shards = shards, .workers = a.workers,
                           .progress = print_progress, .progress_user = &progress};
    int64_t packed = 0;
    keel_status st = keel_image_pack(src, a.out, &opts, &packed);
    int64_t corrupt = keel_image_dataset_corrupt(src);
    keel_image_dataset_free(src);
    if (st != KEEL_OK) {
        fprintf(stderr, "keel pack: error: %s\n", keel_last_error());
        return 1;
    }
    printf("packed %lld of %lld images (%lld unreadable, left out) from %s into %d shard%s in %s, short side %d, "
           "%.1f s\n", (long long)packed, (long long)count, (long long)corrupt, a.src, shards, shards == 1 ? "" : "s",
           a.out, a.short_side, seconds_since(&progress.start));
    return 0;
}
