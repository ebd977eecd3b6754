/* The flag parser every command shares: --name VALUE or --name=VALUE, and
 * help text generated from the same table, so every flag is documented. */
#include "cli.h"
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("keel: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CLI_ERROR;
}

int cli_keel_error(void)
{
    return cli_error("%s", keel_last_error());
}

void cli_print_usage(const cli_command *cmd, FILE *out)
{
    fprintf(out, "usage: %s\n", cmd->usage);
}

int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "keel %s: ", cmd->name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    cli_print_usage(cmd, stderr);
    fprintf(stderr, "Run 'keel %s --help' for every flag.\n", cmd->name);
    return CLI_USAGE;
}

void cli_print_help(const cli_command *cmd, FILE *out)
{
    fprintf(out, "usage: %s\n\n%s\n\nflags:\n", cmd->usage, cmd->description);
    int width = 0;
    for (int i = 0; i < cmd->n_flags; i++) {
        const cli_flag *f = &cmd->flags[i];
        int w = (int)strlen(f->name) + 2 + (f->metavar ? (int)strlen(f->metavar) + 1 : 0);
        if (w > width)
            width = w;
    }
    for (int i = 0; i < cmd->n_flags; i++) {
        const cli_flag *f = &cmd->flags[i];
        char left[96];
        snprintf(left, sizeof left, "--%s%s%s", f->name, f->metavar ? " " : "", f->metavar ? f->metavar : "");
        fprintf(out, "  %-*s  %s\n", width, left, f->help);
    }
    fprintf(out, "  %-*s  %s\n", width, "--help", "show this help and exit");
}

cli_flag *cli_find(const cli_command *cmd, const char *name)
{
    for (int i = 0; i < cmd->n_flags; i++)
        if (strcmp(cmd->flags[i].name, name) == 0)
            return &cmd->flags[i];
    return NULL;
}

static int set_value(const cli_command *cmd, cli_flag *f, const char *text)
{
    char *end = NULL;
    errno = 0;
    switch (f->kind) {
    case CLI_STRING:
        *(const char **)f->value = text;
        return CLI_OK;
    case CLI_INT: {
        long v = strtol(text, &end, 10);
        if (end == text || *end || errno || v < -2147483647L || v > 2147483647L)
            return cli_usage_error(cmd, "--%s expects a whole number, got '%s'", f->name, text);
        *(int *)f->value = (int)v;
        return CLI_OK;
    }
    case CLI_INT64: {
        long long v = strtoll(text, &end, 10);
        if (end == text || *end || errno)
            return cli_usage_error(cmd, "--%s expects a whole number, got '%s'", f->name, text);
        *(int64_t *)f->value = v;
        return CLI_OK;
    }
    case CLI_UINT64: {
        if (text[0] == '-')
            return cli_usage_error(cmd, "--%s expects a whole number >= 0, got '%s'", f->name, text);
        unsigned long long v = strtoull(text, &end, 10);
        if (end == text || *end || errno)
            return cli_usage_error(cmd, "--%s expects a whole number >= 0, got '%s'", f->name, text);
        *(uint64_t *)f->value = v;
        return CLI_OK;
    }
    case CLI_FLOAT: {
        float v = strtof(text, &end);
        if (end == text || *end || errno || !isfinite(v))
            return cli_usage_error(cmd, "--%s expects a number, got '%s'", f->name, text);
        *(float *)f->value = v;
        return CLI_OK;
    }
    case CLI_SWITCH:
        *(bool *)f->value = true;
        return CLI_OK;
    }
    return CLI_USAGE;
}

int cli_parse(const cli_command *cmd, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            cli_print_help(cmd, stdout);
            return -1;
        }
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            return cli_usage_error(cmd, "unexpected argument '%s' (flags start with --)", arg);
        char name[64];
        const char *eq = strchr(arg + 2, '=');
        size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        if (len >= sizeof name)
            return cli_usage_error(cmd, "unknown flag '%s'", arg);
        memcpy(name, arg + 2, len);
        name[len] = '\0';
        cli_flag *f = cli_find(cmd, name);
        if (!f)
            return cli_usage_error(cmd, "unknown flag '--%s'", name);
        const char *value = NULL;
        if (f->kind == CLI_SWITCH) {
            if (eq)
                return cli_usage_error(cmd, "--%s takes no value", name);
        } else if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            return cli_usage_error(cmd, "--%s needs a value (%s)", name, f->metavar ? f->metavar : "VALUE");
        }
        int rc = set_value(cmd, f, value);
        if (rc != CLI_OK)
            return rc;
        f->given = true;
    }
    return CLI_OK;
}

/* ---- shared helpers ---------------------------------------------------------- */

int cli_parse_input_shape(const char *text, int *channels, int *height, int *width)
{
    int c, h, w, used = 0;
    if (sscanf(text, "%dx%dx%d%n", &c, &h, &w, &used) != 3 || text[used] || c < 1 || h < 1 || w < 1)
        return -1;
    *channels = c;
    *height = h;
    *width = w;
    return 0;
}

int cli_parse_widths(const char *text, int *widths, int most)
{
    int n = 0;
    const char *c = text;
    while (*c) {
        char *end = NULL;
        long v = strtol(c, &end, 10);
        if (end == c || v < 1 || v > 1 << 24 || n == most)
            return -1;
        widths[n++] = (int)v;
        c = end;
        if (*c == ',')
            c++;
        else if (*c)
            return -1;
    }
    return n;
}

const char *cli_default_data_dir(const char *dataset)
{
    if (strcmp(dataset, "mnist") == 0)
        return "/usr/share/datasets/mnist";
    if (strcmp(dataset, "cifar10") == 0)
        return "/usr/share/datasets/cifar10";
    return KEEL_FASHION_MNIST_DIR;
}

int cli_resolve_images(const cli_command *cmd, const char *dataset, const char *data, const char *const *image_flags,
                       bool *images)
{
    if (cli_find(cmd, "dataset")->given)
        *images = strcmp(dataset, "images") == 0;
    else
        *images = data && cli_is_image_path(data);
    for (int i = 0; !*images && image_flags[i]; i++)
        if (cli_find(cmd, image_flags[i])->given)
            return cli_usage_error(cmd, "--%s applies to image datasets (--data FOLDER, a list file or packed "
                                   "shards), not %s", image_flags[i], dataset);
    return CLI_OK;
}

bool cli_is_image_path(const char *path)
{
    struct stat info;
    if (!path || stat(path, &info) != 0)
        return false;
    if (S_ISREG(info.st_mode))
        return true;
    if (!S_ISDIR(info.st_mode))
        return false;
    DIR *dir = opendir(path);
    if (!dir)
        return false;
    bool images = false;
    char child[4096];
    for (struct dirent *e; !images && (e = readdir(dir));) {
        if (e->d_name[0] == '.')
            continue;
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "train-images-idx", 16) == 0 || strncmp(e->d_name, "data_batch_", 11) == 0)
            break; /* MNIST or CIFAR-10 files, whatever else is there */
        if (n > 9 && strcmp(e->d_name + n - 9, ".keelpack") == 0)
            images = true;
        snprintf(child, sizeof child, "%s/%s", path, e->d_name);
        if (stat(child, &info) == 0 && S_ISDIR(info.st_mode))
            images = true;
    }
    closedir(dir);
    return images;
}

int cli_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 && n < 1024 ? (int)n : 1;
}

int cli_default_short_side(int crop)
{
    return crop <= 256 ? 256 : (int)(((int64_t)crop * 8 + 6) / 7);
}

void cli_warn_image(const char *message, void *user)
{
    (void)user;
    fprintf(stderr, "keel: warning: %s\n", message);
}

const char *cli_mean_image_path(const char *weights, char *buf, size_t size)
{
    snprintf(buf, size, "%s.mean.npy", weights);
    return buf;
}

keel_status cli_load_dataset(const char *name, const char *dir, bool train, keel_dataset **out)
{
    if (strcmp(name, "fashion-mnist") == 0 || strcmp(name, "mnist") == 0)
        return keel_dataset_load_mnist_dir(out, dir ? dir : cli_default_data_dir(name), train);
    if (strcmp(name, "cifar10") == 0)
        return keel_dataset_load_cifar10(out, dir ? dir : cli_default_data_dir(name), train);
    return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "unknown dataset '%s'; use fashion-mnist, mnist, cifar10 or images "
                     "(an image folder, list file or packed shards given with --data)", name);
}

const char *cli_thousands(int64_t n, char *buf, size_t size)
{
    char digits[32];
    snprintf(digits, sizeof digits, "%lld", (long long)(n < 0 ? -n : n));
    size_t len = strlen(digits), used = 0;
    if (n < 0 && used + 1 < size)
        buf[used++] = '-';
    for (size_t i = 0; i < len && used + 1 < size; i++) {
        buf[used++] = digits[i];
        size_t left = len - i - 1;
        if (left && left % 3 == 0 && used + 1 < size)
            buf[used++] = ',';
    }
    buf[used] = '\0';
    return buf;
}

const char *cli_scaled(double value, bool binary, const char *unit, char *buf, size_t size)
{
    static const char *const decimal[] = {"", "K", "M", "G", "T", "P"};
    static const char *const powers[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi"};
    double base = binary ? 1024.0 : 1000.0;
    int k = 0;
    while (fabs(value) >= base && k < 5) {
        value /= base;
        k++;
    }
    if (k == 0)
        snprintf(buf, size, "%.0f %s", value, unit);
    else
        snprintf(buf, size, "%.2f %s%s", value, binary ? powers[k] : decimal[k], unit);
    return buf;
}

const char *cli_duration(double seconds, char *buf, size_t size)
{
    if (!(seconds >= 0) || seconds > 1e8)
        seconds = 0;
    long s = lround(seconds);
    if (s >= 3600)
        snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
    return buf;
}
