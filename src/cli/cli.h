/* The `keel` program: commands, the flag parser they share, progress
 * output and the SVG chart. Uses only the public API. */
#ifndef KEEL_CLI_H
#define KEEL_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include "keel/keel.h"

/* Exit codes: 0 success, 1 an error while running, 2 bad usage. */
enum { CLI_OK = 0, CLI_ERROR = 1, CLI_USAGE = 2 };

typedef enum cli_flag_kind {
    CLI_STRING,
    CLI_INT,
    CLI_INT64,
    CLI_UINT64,
    CLI_FLOAT,
    CLI_SWITCH, /* no value: sets a bool */
} cli_flag_kind;

typedef struct cli_flag {
    const char *name;       /* "epochs" for --epochs */
    cli_flag_kind kind;
    void *value;            /* const char **, int *, int64_t *, uint64_t *, float *, bool * */
    const char *metavar;    /* "N", "FILE" */
    const char *help;       /* one line; the default is part of it */
    bool given;             /* set by the parser */
} cli_flag;

typedef struct cli_command {
    const char *name;       /* "train" */
    const char *summary;    /* one line for `keel --help` */
    const char *usage;      /* "keel train [flags]" */
    const char *description;/* a paragraph for `keel train --help` */
    cli_flag *flags;
    int n_flags;
} cli_command;

/* Parses argv (after the command name). Returns CLI_OK, or prints the usage
 * or the help and returns CLI_USAGE (bad flag) or -1 (--help printed: exit 0). */
int cli_parse(const cli_command *cmd, int argc, char **argv);
void cli_print_help(const cli_command *cmd, FILE *out);
void cli_print_usage(const cli_command *cmd, FILE *out);
/* "keel: error: <message>" on stderr; returns CLI_ERROR. */
int cli_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
/* The same, with keel_last_error() as the message. */
int cli_keel_error(void);
/* A usage error: the message, the usage line and a hint; returns CLI_USAGE. */
int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
cli_flag *cli_find(const cli_command *cmd, const char *name);

/* Shared helpers for the model and data flags. */
int cli_parse_input_shape(const char *text, int *channels, int *height, int *width);
/* "1000,500" -> widths; returns the count or -1. */
int cli_parse_widths(const char *text, int *widths, int most);
/* Loads one split of a dataset by name: fashion-mnist, mnist, cifar10. */
keel_status cli_load_dataset(const char *name, const char *dir, bool train, keel_dataset **out);
const char *cli_default_data_dir(const char *dataset);

/* ---- image datasets (ImageNet style) -------------------------------------- */
/* Whether --data names an image dataset: a directory holding class
 * sub-folders or *.keelpack shards, or a file (a list or a shard). */
bool cli_is_image_path(const char *path);
/* Sets *images: --dataset images, or without --dataset what --data is
 * (cli_is_image_path). For any other dataset, a flag of `image_flags`
 * (NULL-terminated) that was given is a usage error. */
int cli_resolve_images(const cli_command *cmd, const char *dataset, const char *data, const char *const *image_flags,
                       bool *images);
/* The cores of this machine (at least 1): the default of --workers. */
int cli_cpu_count(void);
/* The shorter side images are decoded to for `crop`-pixel crops: 256, as
 * the AlexNet and ResNet recipes, or 8/7 of a larger crop. */
int cli_default_short_side(int crop);
/* keel_image_open_opts.warn: "keel: warning: ..." on stderr. */
void cli_warn_image(const char *message, void *user);
/* The Caffe mean image written beside a checkpoint: "<weights>.mean.npy". */
const char *cli_mean_image_path(const char *weights, char *buf, size_t size);
/* "1,234,567" */
const char *cli_thousands(int64_t n, char *buf, size_t size);
/* "1.5 MiB", "12.3 GFLOPs" style: value scaled with 1000 or 1024 steps. */
const char *cli_scaled(double value, bool binary, const char *unit, char *buf, size_t size);
/* "1:05" or "1:02:05" */
const char *cli_duration(double seconds, char *buf, size_t size);

/* Progress output of `keel train`. */
typedef enum cli_progress_mode { CLI_PROGRESS_AUTO, CLI_PROGRESS_BAR, CLI_PROGRESS_LINES, CLI_PROGRESS_NONE } cli_progress_mode;
typedef struct cli_progress {
    cli_progress_mode mode; /* resolved: BAR, LINES or NONE */
    FILE *out;
    double last_draw;
    int64_t next_line_step;
    int bar_width;
    bool errors;            /* image datasets: top-1 / top-5 error, as ILSVRC */
} cli_progress;
void cli_progress_init(cli_progress *p, cli_progress_mode mode, FILE *out);
void cli_progress_callback(const keel_progress *progress, void *user);

/* Writes train loss and validation accuracy per epoch as an SVG chart
 * (atomically). */
keel_status cli_plot_svg(const char *path, const char *title, const keel_epoch_stats *epochs, int count);

int cli_train(int argc, char **argv);
int cli_eval(int argc, char **argv);
int cli_info(int argc, char **argv);
int cli_devices(int argc, char **argv);
int cli_bench(int argc, char **argv);

#endif
