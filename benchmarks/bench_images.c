/* Input-pipeline benchmark: decode + augment images per second, per worker
 * thread, from an image folder (JPEG) and from packed shards of the same
 * images, through keel_image_loader.
 *
 *   bench_images --dir DIR [--images N] [--classes C] [--threads 1,2]
 *                [--seconds S] [--batch B] [--pipeline crop|rrc]
 *
 * Writes DIR/train (generated once: ImageNet-sized JPEGs, quality 90) and
 * DIR/packed (`keel pack` at short side 256), then prints one line per
 * measurement: "keel <source> <pipeline> threads=T images_per_s=X per_thread=Y".
 * benchmarks/image_pipeline.py runs it next to torchvision's ImageFolder
 * DataLoader on the same files. Pipelines, as torchvision transforms:
 *   crop  Resize(256), RandomCrop(224), RandomHorizontalFlip, ToTensor,
 *         Normalize (AlexNet's recipe)
 *   rrc   RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize
 *         (ResNet's recipe; the folder decodes at full size, the shards
 *         hold 256-short-side images). */
#include "keel/keel.h"
#include "cli/pack.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

typedef struct bench_args {
    const char *dir;
    int images, classes, batch;
    double seconds;
    int threads[16];
    int thread_count;
    const char *pipeline;
} bench_args;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static double unit(uint64_t *state)
{
    *state = mix(*state);
    return (double)(*state >> 11) * (1.0 / 9007199254740992.0);
}

/* A photograph-like picture: a few smooth waves, soft edges and sensor-like
 * noise, so JPEG files come out near ImageNet's ~0.8 bytes per pixel. */
static void synthesize(keel_image *img, int height, int width, uint64_t seed)
{
    img->height = height;
    img->width = width;
    img->channels = 3;
    img->pixels = malloc((size_t)height * width * 3);
    img->capacity = (size_t)height * width * 3;
    uint64_t s = seed;
    double f[4][2], phase[4][3];
    for (int k = 0; k < 4; k++) {
        f[k][0] = 0.002 + 0.12 * unit(&s);
        f[k][1] = 0.002 + 0.12 * unit(&s);
        for (int c = 0; c < 3; c++)
            phase[k][c] = 6.283 * unit(&s);
    }
    for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++) {
            double grain = 130 * (unit(&s) - 0.5); /* mostly luminance, as in photographs */
            for (int c = 0; c < 3; c++) {
                double v = 128 + grain + 12 * (unit(&s) - 0.5);
                for (int k = 0; k < 4; k++)
                    v += 28 * sin(f[k][0] * x + f[k][1] * y + phase[k][c]);
                img->pixels[((size_t)y * width + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
}

static int make_dir(const char *path)
{
    if (mkdir(path, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "bench_images: cannot create %s: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

/* ImageNet's sizes: most are 500x375 or 375x500, the rest spread around. */
static int generate(const bench_args *a)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/train", a->dir);
    struct stat info;
    if (stat(path, &info) == 0)
        return 0;
    if (make_dir(a->dir) || make_dir(path))
        return 1;
    double bytes = 0, pixels = 0;
    for (int i = 0; i < a->images; i++) {
        int c = i % a->classes;
        snprintf(path, sizeof path, "%s/train/class%03d", a->dir, c);
        if (make_dir(path))
            return 1;
        uint64_t s = (uint64_t)i * 7919 + 1;
        double u = unit(&s);
        int width = 500, height = 375;
        if (u < 0.25)
            width = 375, height = 500;
        else if (u > 0.6)
            width = 250 + (int)(250 * unit(&s)), height = 250 + (int)(250 * unit(&s));
        keel_image img;
        synthesize(&img, height, width, (uint64_t)i);
        snprintf(path, sizeof path, "%s/train/class%03d/img%06d.jpg", a->dir, c, i);
        if (keel_image_save(&img, path, 90) != KEEL_OK) {
            fprintf(stderr, "bench_images: %s\n", keel_last_error());
            return 1;
        }
        stat(path, &info);
        bytes += (double)info.st_size;
        pixels += (double)width * height;
        keel_image_release(&img);
    }
    printf("generated %d JPEGs in %s/train: %.1f KB and %.2f bytes per pixel on average\n", a->images, a->dir,
           bytes / a->images / 1024, bytes / pixels);
    return 0;
}

static int pack(const bench_args *a, int workers)
{
    char src[1024], out[1024], workers_text[16];
    snprintf(src, sizeof src, "%s/train", a->dir);
    snprintf(out, sizeof out, "%s/packed", a->dir);
    snprintf(workers_text, sizeof workers_text, "%d", workers);
    char *argv[] = {"pack", src, out, "--short-side", "256", "--shards", "4", "--workers", workers_text, "--quiet",
                    NULL};
    double start = now();
    int rc = keel_cli_pack(10, argv);
    printf("keel pack workers=%d seconds=%.2f\n", workers, now() - start);
    return rc;
}

/* Images per second after the first batch (thread start-up and the first
 * decodes excluded, as for torchvision), over whole epochs until `seconds`. */
static int measure(const bench_args *a, const char *source, int threads)
{
    char path[1024];
    bool packed = strcmp(source, "packed") == 0;
    bool rrc = strcmp(a->pipeline, "rrc") == 0;
    snprintf(path, sizeof path, "%s/%s", a->dir, packed ? "packed" : "train");
    keel_image_open_opts open_opts = {.short_side = rrc ? 0 : 256};
    keel_image_dataset *d;
    if (keel_image_dataset_open(&d, path, &open_opts) != KEEL_OK) {
        fprintf(stderr, "bench_images: %s\n", keel_last_error());
        return 1;
    }
    keel_image_loader_opts o = {.batch = a->batch, .workers = threads, .shuffle = true, .seed = 1, .drop_last = true};
    o.augment = keel_augment_defaults(rrc ? KEEL_CROP_RANDOM_RESIZED : KEEL_CROP_RANDOM);
    keel_image_loader *l;
    if (keel_image_loader_create(&l, d, &o) != KEEL_OK) {
        fprintf(stderr, "bench_images: %s\n", keel_last_error());
        keel_image_dataset_free(d);
        return 1;
    }
    double start = 0, checksum = 0;
    int64_t images = 0;
    bool first = true;
    for (int64_t epoch = 0; first || now() - start < a->seconds; epoch++) {
        keel_image_loader_start_epoch(l, epoch);
        for (;;) {
            const float *x;
            const int32_t *y;
            int64_t n;
            if (keel_image_loader_next(l, &x, &y, &n) != KEEL_OK) {
                fprintf(stderr, "bench_images: %s\n", keel_last_error());
                return 1;
            }
            if (n == 0)
                break;
            checksum += x[0] + y[0];
            if (first) {
                first = false;
                start = now();
                continue;
            }
            images += n;
        }
    }
    double rate = (double)images / (now() - start);
    printf("keel %s %s threads=%d images_per_s=%.1f per_thread=%.1f (checksum %.3g)\n", source, a->pipeline, threads,
           rate, rate / threads, checksum);
    keel_image_loader_destroy(l);
    keel_image_dataset_free(d);
    return 0;
}

static int parse(int argc, char **argv, bench_args *a)
{
    *a = (bench_args){.images = 1280, .classes = 10, .batch = 64, .seconds = 10, .threads = {1}, .thread_count = 1,
                      .pipeline = "crop"};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "--dir") == 0)
            a->dir = v;
        else if (strcmp(k, "--images") == 0)
            a->images = atoi(v);
        else if (strcmp(k, "--classes") == 0)
            a->classes = atoi(v);
        else if (strcmp(k, "--batch") == 0)
            a->batch = atoi(v);
        else if (strcmp(k, "--seconds") == 0)
            a->seconds = atof(v);
        else if (strcmp(k, "--pipeline") == 0)
            a->pipeline = v;
        else if (strcmp(k, "--threads") == 0) {
            a->thread_count = 0;
            for (char *p = (char *)v; *p && a->thread_count < 16;) {
                a->threads[a->thread_count++] = (int)strtol(p, &p, 10);
                if (*p == ',')
                    p++;
            }
        } else {
            fprintf(stderr, "bench_images: unknown option %s\n", k);
            return 2;
        }
    }
    if (!a->dir || a->images < a->batch || a->classes < 1 ||
        (strcmp(a->pipeline, "crop") != 0 && strcmp(a->pipeline, "rrc") != 0)) {
        fprintf(stderr, "usage: bench_images --dir DIR [--images N >= batch] [--classes C] [--threads 1,2] "
                        "[--seconds S] [--batch B] [--pipeline crop|rrc]\n");
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    bench_args a;
    int rc = parse(argc, argv, &a);
    if (rc)
        return rc;
    if (generate(&a))
        return 1;
    char packed[1024];
    snprintf(packed, sizeof packed, "%s/packed", a.dir);
    struct stat info;
    if (stat(packed, &info) != 0 && pack(&a, a.threads[a.thread_count - 1]))
        return 1;
    for (int t = 0; t < a.thread_count; t++) {
        if (measure(&a, "folder", a.threads[t]) || measure(&a, "packed", a.threads[t]))
            return 1;
    }
    return 0;
}
