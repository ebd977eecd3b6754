/* Image datasets: the object shared by every source, ImageNet-layout folders,
 * Caffe list files, opening by what a path is, and reading one sample. */
#include "data/image_internal.h"
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* ---- the dataset object ---------------------------------------------------- */

keel_status keel_image_dataset_new(keel_image_dataset **out, keel_image_source source, const keel_image_open_opts *opts)
{
    keel_image_dataset *d = calloc(1, sizeof *d);
    if (!d)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate an image dataset");
    if (pthread_mutex_init(&d->warn_mutex, NULL) != 0) {
        free(d);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot create the dataset's mutex");
    }
    d->source = source;
    if (opts) {
        d->short_side = opts->short_side;
        d->warn = opts->warn;
        d->warn_user = opts->warn_user;
    }
    atomic_init(&d->corrupt, 0);
    *out = d;
    return KEEL_OK;
}

keel_status keel_image_dataset_finish(keel_image_dataset *d)
{
    d->bad = calloc((size_t)(d->count ? d->count : 1), sizeof *d->bad);
    if (!d->bad)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate flags for %lld images", (long long)d->count);
    return KEEL_OK;
}

void keel_image_dataset_free(keel_image_dataset *d)
{
    if (!d)
        return;
    keel_packed_close(d);
    if (d->class_names) {
        for (int c = 0; c < d->classes; c++)
            free(d->class_names[c]);
        free(d->class_names);
    }
    free(d->labels);
    free(d->path_chars);
    free(d->path_offsets);
    free(d->bad);
    pthread_mutex_destroy(&d->warn_mutex);
    free(d);
}

int64_t keel_image_dataset_size(const keel_image_dataset *d)
{
    return d ? d->count : 0;
}

int keel_image_dataset_classes(const keel_image_dataset *d)
{
    return d ? d->classes : 0;
}

bool keel_image_dataset_is_packed(const keel_image_dataset *d)
{
    return d && d->source == KEEL_SOURCE_PACKED;
}

const char *keel_image_dataset_class_name(const keel_image_dataset *d, int c)
{
    if (!d || !d->class_names || c < 0 || c >= d->classes)
        return NULL;
    return d->class_names[c];
}

int32_t keel_image_dataset_label(const keel_image_dataset *d, int64_t index)
{
    if (!d || index < 0 || index >= d->count)
        return -1;
    return d->labels[index];
}

const char *keel_image_dataset_path(const keel_image_dataset *d, int64_t index)
{
    if (!d || d->source != KEEL_SOURCE_FILES || index < 0 || index >= d->count)
        return NULL;
    return d->path_chars + d->path_offsets[index];
}

int64_t keel_image_dataset_corrupt(const keel_image_dataset *d)
{
    return d ? (int64_t)atomic_load(&d->corrupt) : 0;
}

static void warn(keel_image_dataset *d, const char *message)
{
    if (!d->warn)
        return;
    pthread_mutex_lock(&d->warn_mutex);
    d->warn(message, d->warn_user);
    pthread_mutex_unlock(&d->warn_mutex);
}

/* The first thread to meet a bad file counts and reports it. */
static void note_corrupt(keel_image_dataset *d, int64_t index)
{
    if (atomic_exchange(&d->bad[index], 1) != 0)
        return;
    atomic_fetch_add(&d->corrupt, 1);
    char message[1200];
    snprintf(message, sizeof message, "skipping image %lld: %s", (long long)index, keel_last_error());
    warn(d, message);
}

keel_status keel_image_dataset_read_with(keel_image_dataset *d, keel_decoder *dec, int64_t index, int short_side,
                                         keel_image *img)
{
    if (d->source == KEEL_SOURCE_PACKED)
        return keel_packed_view(d, index, img);
    keel_status st = keel_decode_file(dec, d->path_chars + d->path_offsets[index], short_side, img);
    if (st != KEEL_OK)
        note_corrupt(d, index);
    return st;
}

keel_status keel_image_dataset_read(keel_image_dataset *d, int64_t index, keel_image *img)
{
    if (!d || !img || index < 0 || index >= d->count)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_image_dataset_read: index %lld outside [0, %lld)",
                         (long long)index, (long long)(d ? d->count : 0));
    keel_decoder dec;
    memset(&dec, 0, sizeof dec);
    keel_status st = keel_image_dataset_read_with(d, &dec, index, d->short_side, img);
    keel_decoder_release(&dec);
    return st;
}

/* ---- growing lists --------------------------------------------------------- */

typedef struct string_list {
    char **items;
    size_t count, cap;
} string_list;

static bool list_push(string_list *l, const char *s)
{
    if (l->count == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        char **items = realloc(l->items, cap * sizeof *items);
        if (!items)
            return false;
        l->items = items;
        l->cap = cap;
    }
    char *copy = keel_strdup(s);
    if (!copy)
        return false;
    l->items[l->count++] = copy;
    return true;
}

static void list_free(string_list *l)
{
    for (size_t i = 0; i < l->count; i++)
        free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list_sort(string_list *l)
{
    if (l->count > 1)
        qsort(l->items, l->count, sizeof *l->items, compare_strings);
}

/* Appends a path and its label to the dataset. */
typedef struct sample_builder {
    keel_image_dataset *d;
    size_t chars_used, chars_cap;
    size_t cap;
} sample_builder;

static bool add_sample(sample_builder *b, const char *path, int32_t label)
{
    keel_image_dataset *d = b->d;
    size_t n = strlen(path) + 1;
    if (b->chars_used + n > b->chars_cap) {
        size_t cap = b->chars_cap ? 2 * b->chars_cap : 4096;
        while (cap < b->chars_used + n)
            cap *= 2;
        char *chars = realloc(d->path_chars, cap);
        if (!chars)
            return false;
        d->path_chars = chars;
        b->chars_cap = cap;
    }
    if ((size_t)d->count == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 1024;
        int64_t *offsets = realloc(d->path_offsets, cap * sizeof *offsets);
        if (!offsets)
            return false;
        d->path_offsets = offsets;
        int32_t *labels = realloc(d->labels, cap * sizeof *labels);
        if (!labels)
            return false;
        d->labels = labels;
        b->cap = cap;
    }
    memcpy(d->path_chars + b->chars_used, path, n);
    d->path_offsets[d->count] = (int64_t)b->chars_used;
    d->labels[d->count] = label;
    d->count++;
    b->chars_used += n;
    return true;
}

static char *join_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static bool is_directory(const char *path)
{
    struct stat info;
    return stat(path, &info) == 0 && S_ISDIR(info.st_mode);
}

/* ---- folders --------------------------------------------------------------- */

static bool is_image_name(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot && (strcasecmp(dot, ".jpg") == 0 || strcasecmp(dot, ".jpeg") == 0 || strcasecmp(dot, ".png") == 0);
}

/* The entries of `dir` (not hidden): sub-folders into `dirs`, images into
 * `files`, others counted. */
static keel_status list_dir(const char *dir, string_list *dirs, string_list *files, int64_t *others)
{
    DIR *h = opendir(dir);
    if (!h)
        return keel_fail(KEEL_ERR_IO, "cannot open the folder %s: %s", dir, strerror(errno));
    keel_status st = KEEL_OK;
    struct dirent *e;
    while (st == KEEL_OK && (e = readdir(h)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char *path = join_path(dir, e->d_name);
        if (!path) {
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a path");
            break;
        }
        bool ok = true;
        /* d_type spares a stat per file on the file systems that fill it. */
        bool folder = e->d_type == DT_DIR || ((e->d_type == DT_LNK || e->d_type == DT_UNKNOWN) && is_directory(path));
        if (folder) {
            if (dirs)
                ok = list_push(dirs, path);
        } else if (files && is_image_name(e->d_name)) {
            ok = list_push(files, path);
        } else if (others) {
            (*others)++;
        }
        free(path);
        if (!ok)
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot list %s", dir);
    }
    closedir(h);
    return st;
}

/* Every folder under `root` (itself included), sorted by path as
 * torchvision's sorted(os.walk(root)); symbolic links are followed, up to a
 * depth that stops link cycles. */
static keel_status walk_dirs(const char *root, string_list *all)
{
    if (!list_push(all, root))
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot list %s", root);
    size_t next = 0;
    int depth_guard = 0;
    while (next < all->count) {
        size_t level_end = all->count;
        for (; next < level_end; next++) {
            keel_status st = list_dir(all->items[next], all, NULL, NULL);
            if (st != KEEL_OK)
                return st;
        }
        if (++depth_guard > 32)
            return keel_fail(KEEL_ERR_FORMAT, "%s is nested more than 32 folders deep (a symbolic-link cycle?)", root);
    }
    list_sort(all);
    return KEEL_OK;
}

static keel_status add_class(sample_builder *b, const char *class_dir, int32_t label, int64_t *others)
{
    string_list dirs = {0}, files = {0};
    keel_status st = walk_dirs(class_dir, &dirs);
    int64_t before = b->d->count;
    for (size_t i = 0; st == KEEL_OK && i < dirs.count; i++) {
        st = list_dir(dirs.items[i], NULL, &files, others);
        list_sort(&files);
        for (size_t f = 0; st == KEEL_OK && f < files.count; f++) {
            if (!add_sample(b, files.items[f], label))
                st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot record the images of %s", class_dir);
        }
        list_free(&files);
    }
    list_free(&dirs);
    if (st == KEEL_OK && b->d->count == before)
        st = keel_fail(KEEL_ERR_FORMAT, "the class folder %s holds no .jpg, .jpeg or .png files", class_dir);
    return st;
}

static keel_status open_folder(keel_image_dataset *d, const char *root)
{
    if (!is_directory(root))
        return keel_fail(KEEL_ERR_IO, "the image folder %s does not exist or is not a folder", root);
    string_list classes = {0};
    int64_t others = 0;
    keel_status st = list_dir(root, &classes, NULL, &others);
    if (st != KEEL_OK) {
        list_free(&classes);
        return st;
    }
    if (classes.count == 0) {
        list_free(&classes);
        return keel_fail(KEEL_ERR_FORMAT,
                         "%s has no class folders (expected one folder per class, as ImageNet's train/; for a flat "
                         "folder of images give a list file of 'path label' lines)", root);
    }
    if (classes.count > INT32_MAX / 2) {
        list_free(&classes);
        return keel_fail(KEEL_ERR_FORMAT, "%s has too many class folders", root);
    }
    list_sort(&classes);
    d->classes = (int)classes.count;
    d->class_names = calloc(classes.count, sizeof *d->class_names);
    if (!d->class_names) {
        list_free(&classes);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate class names");
    }
    sample_builder b = {.d = d};
    others = 0;
    for (size_t c = 0; st == KEEL_OK && c < classes.count; c++) {
        const char *slash = strrchr(classes.items[c], '/');
        d->class_names[c] = keel_strdup(slash ? slash + 1 : classes.items[c]);
        if (!d->class_names[c])
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate class names");
        else
            st = add_class(&b, classes.items[c], (int32_t)c, &others);
    }
    list_free(&classes);
    if (st == KEEL_OK && others > 0) {
        char message[600];
        snprintf(message, sizeof message, "ignored %lld files under %s that are not .jpg, .jpeg or .png",
                 (long long)others, root);
        warn(d, message);
    }
    return st;
}

static keel_status check_open_args(keel_image_dataset **out, const char *path, const keel_image_open_opts *opts,
                                   const char *what)
{
    if (!out || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s: out and path must not be NULL", what);
    *out = NULL;
    if (opts && (opts->short_side < 0 || opts->classes < 0))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s: short_side and classes must be >= 0", what);
    return KEEL_OK;
}

static keel_status finish_open(keel_image_dataset **out, keel_image_dataset *d, keel_status st)
{
    if (st == KEEL_OK)
        st = keel_image_dataset_finish(d);
    if (st != KEEL_OK) {
        keel_image_dataset_free(d);
        return st;
    }
    *out = d;
    return KEEL_OK;
}

keel_status keel_image_dataset_open_folder(keel_image_dataset **out, const char *root, const keel_image_open_opts *opts)
{
    keel_status st = check_open_args(out, root, opts, "keel_image_dataset_open_folder");
    if (st != KEEL_OK)
        return st;
    keel_image_dataset *d;
    st = keel_image_dataset_new(&d, KEEL_SOURCE_FILES, opts);
    if (st != KEEL_OK)
        return st;
    return finish_open(out, d, open_folder(d, root));
}

/* ---- list files ------------------------------------------------------------ */

static void trim(char **start, char **end)
{
    while (*start < *end && isspace((unsigned char)**start))
        (*start)++;
    while (*end > *start && isspace((unsigned char)(*end)[-1]))
        (*end)--;
}

/* Splits "path label" at the last run of whitespace. */
static keel_status parse_line(const char *list_path, int64_t line_no, char *line, char **path, int64_t *label)
{
    char *start = line, *end = line + strlen(line);
    trim(&start, &end);
    *end = '\0';
    char *split = end;
    while (split > start && !isspace((unsigned char)split[-1]))
        split--;
    char *label_text = split;
    char *path_end = split;
    trim(&start, &path_end);
    if (split == start || path_end == start)
        return keel_fail(KEEL_ERR_FORMAT, "%s:%lld: expected 'path label', got '%.80s'", list_path, (long long)line_no,
                         start);
    errno = 0;
    char *stop;
    long long value = strtoll(label_text, &stop, 10);
    if (*stop != '\0' || stop == label_text || errno != 0 || value < 0 || value > INT32_MAX - 1)
        return keel_fail(KEEL_ERR_FORMAT, "%s:%lld: the label '%.40s' is not a whole number in [0, %d)", list_path,
                         (long long)line_no, label_text, INT32_MAX);
    *path_end = '\0';
    *path = start;
    *label = value;
    return KEEL_OK;
}

static char *list_root(const char *list_path, const keel_image_open_opts *opts)
{
    if (opts && opts->root)
        return keel_strdup(opts->root);
    const char *slash = strrchr(list_path, '/');
    if (!slash)
        return keel_strdup(".");
    size_t n = (size_t)(slash - list_path);
    char *root = malloc(n + 2);
    if (root) {
        memcpy(root, list_path, n ? n : 1);
        root[n ? n : 1] = '\0';
    }
    return root;
}

static keel_status read_list(keel_image_dataset *d, FILE *f, const char *list_path, const char *root, int classes)
{
    sample_builder b = {.d = d};
    char *line = NULL;
    size_t line_cap = 0;
    int64_t line_no = 0;
    int64_t max_label = -1;
    keel_status st = KEEL_OK;
    while (st == KEEL_OK && getline(&line, &line_cap, f) >= 0) {
        line_no++;
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0')
            continue;
        char *path = NULL;
        int64_t label = 0;
        st = parse_line(list_path, line_no, line, &path, &label);
        if (st != KEEL_OK)
            break;
        if (classes > 0 && label >= classes) {
            st = keel_fail(KEEL_ERR_FORMAT, "%s:%lld: label %lld is outside [0, %d) (the number of classes)",
                           list_path, (long long)line_no, (long long)label, classes);
            break;
        }
        char *full = path[0] == '/' ? keel_strdup(path) : join_path(root, path);
        if (!full || !add_sample(&b, full, (int32_t)label))
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot record the images of %s", list_path);
        free(full);
        if (label > max_label)
            max_label = label;
    }
    if (st == KEEL_OK && ferror(f))
        st = keel_fail(KEEL_ERR_IO, "cannot read %s: %s", list_path, strerror(errno));
    free(line);
    if (st == KEEL_OK && d->count == 0)
        st = keel_fail(KEEL_ERR_FORMAT, "%s lists no images (expected lines of 'path label')", list_path);
    if (st == KEEL_OK)
        d->classes = classes > 0 ? classes : (int)(max_label + 1);
    return st;
}

keel_status keel_image_dataset_open_list(keel_image_dataset **out, const char *list_path,
                                         const keel_image_open_opts *opts)
{
    keel_status st = check_open_args(out, list_path, opts, "keel_image_dataset_open_list");
    if (st != KEEL_OK)
        return st;
    FILE *f = fopen(list_path, "r");
    if (!f)
        return keel_fail(KEEL_ERR_IO, "cannot open the list file %s: %s", list_path, strerror(errno));
    char *root = list_root(list_path, opts);
    keel_image_dataset *d = NULL;
    if (!root)
        st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a path");
    else
        st = keel_image_dataset_new(&d, KEEL_SOURCE_FILES, opts);
    if (st == KEEL_OK) {
        if (root[0] && !is_directory(root))
            st = keel_fail(KEEL_ERR_IO, "the image folder %s of %s does not exist", root, list_path);
        else
            st = read_list(d, f, list_path, root, opts ? opts->classes : 0);
        st = finish_open(out, d, st);
    }
    free(root);
    fclose(f);
    return st;
}

keel_status keel_image_dataset_open(keel_image_dataset **out, const char *path, const keel_image_open_opts *opts)
{
    keel_status st = check_open_args(out, path, opts, "keel_image_dataset_open");
    if (st != KEEL_OK)
        return st;
    struct stat info;
    if (stat(path, &info) != 0)
        return keel_fail(KEEL_ERR_IO, "cannot open the dataset %s: %s", path, strerror(errno));
    if (S_ISDIR(info.st_mode))
        return keel_dir_has_shards(path) ? keel_image_dataset_open_packed(out, path, opts)
                                         : keel_image_dataset_open_folder(out, path, opts);
    return keel_is_shard_file(path) ? keel_image_dataset_open_packed(out, path, opts)
                                    : keel_image_dataset_open_list(out, path, opts);
}
