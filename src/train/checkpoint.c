/* Weights and checkpoints in safetensors: each parameter and state buffer
 * under its own name, read back with every shape checked. */
#include "train/train_internal.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Tensors a weights load skips: optimiser state and torch's batch-norm
 * step counter, which Keel does not keep. */
static bool is_ignorable(const char *name)
{
    return strncmp(name, "optimizer.", 10) == 0 || ends_with(name, ".num_batches_tracked");
}

keel_status keel_weights_export(keel_plan *plan, keel_st_writer *w, float **host)
{
    size_t trainable = (size_t)plan->param_floats, state = (size_t)plan->state_floats;
    *host = malloc((trainable + state + 1) * sizeof(float));
    if (!*host)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory saving the parameters");
    float *host_state = *host + trainable;
    keel_status st = keel_plan_blocks_download(plan, true, plan->param_blocks, *host);
    if (st == KEEL_OK && state)
        st = keel_plan_blocks_download(plan, false, plan->state_blocks, host_state);
    for (int k = 0; k < plan->n_params && st == KEEL_OK; k++) {
        const keel_plan_param *p = &plan->params[k];
        const float *src = (p->node->trainable ? *host : host_state) + p->offset;
        st = keel_st_writer_add(w, p->node->name, KEEL_ST_F32, p->node->ndim, p->node->shape, src);
    }
    return st;
}

static const char *tensor_shape_str(const keel_st_tensor *t, char *buf, size_t size)
{
    if (t->ndim <= KEEL_MAX_DIMS)
        return keel_shape_str(buf, size, t->ndim, t->shape);
    snprintf(buf, size, "a %d-dimensional tensor", t->ndim);
    return buf;
}

/* Checks the parameter at position `index` of the model. Files Keel writes
 * hold the parameters in model order, so when a name is missing the file's
 * tensor at the same position is usually its counterpart: naming it and its
 * shape says which model the file belongs to. */
static keel_status check_tensor(const keel_st_file *f, const keel_plan_param *p, size_t index,
                                const keel_st_tensor **out)
{
    const keel_node *x = p->node;
    char want[128], have[128];
    keel_shape_str(want, sizeof want, x->ndim, x->shape);
    const keel_st_tensor *t = keel_st_file_find(f, x->name);
    if (!t) {
        const keel_st_tensor *there = index < keel_st_file_count(f) ? keel_st_file_at(f, index) : NULL;
        if (there && !is_ignorable(there->name))
            return keel_fail(KEEL_ERR_NOT_FOUND, "%s has no tensor '%s' (shape %s in the model); at that position "
                             "the file holds '%s' with shape %s", keel_st_file_path(f), x->name, want, there->name,
                             tensor_shape_str(there, have, sizeof have));
        return keel_fail(KEEL_ERR_NOT_FOUND, "%s has no tensor '%s' (shape %s in the model)", keel_st_file_path(f),
                         x->name, want);
    }
    bool same = t->ndim == x->ndim;
    for (int d = 0; same && d < x->ndim; d++)
        same = t->shape[d] == x->shape[d];
    if (!same)
        return keel_fail(KEEL_ERR_SHAPE, "%s: tensor '%s' has shape %s in the file but %s in the model",
                         keel_st_file_path(f), x->name, tensor_shape_str(t, have, sizeof have), want);
    if (t->dtype != KEEL_ST_F32)
        return keel_fail(KEEL_ERR_FORMAT, "%s: tensor '%s' is %s; Keel's parameters are F32", keel_st_file_path(f),
                         x->name, keel_st_dtype_name(t->dtype));
    *out = t;
    return KEEL_OK;
}

static keel_status check_extras(keel_plan *plan, const keel_st_file *f)
{
    for (size_t i = 0; i < keel_st_file_count(f); i++) {
        const char *name = keel_st_file_at(f, i)->name;
        if (!is_ignorable(name) && !keel_plan_find_param(plan, name))
            return keel_fail(KEEL_ERR_NOT_FOUND, "%s holds tensor '%s', which the model does not have",
                             keel_st_file_path(f), name);
    }
    return KEEL_OK;
}

keel_status keel_weights_import(keel_plan *plan, const keel_st_file *f, bool strict_extra)
{
    /* Everything is checked before anything is uploaded: a failed load
     * leaves the plan as it was. */
    size_t trainable = (size_t)plan->param_floats, state = (size_t)plan->state_floats;
    float *host = calloc(trainable + state + 1, sizeof(float));
    if (!host)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory loading the parameters");
    float *host_state = host + trainable;
    keel_status st = KEEL_OK;
    for (int k = 0; k < plan->n_params && st == KEEL_OK; k++) {
        const keel_plan_param *p = &plan->params[k];
        const keel_st_tensor *t = NULL;
        st = check_tensor(f, p, (size_t)k, &t);
        if (st == KEEL_OK)
            memcpy((p->node->trainable ? host : host_state) + p->offset, t->data, (size_t)p->numel * sizeof(float));
    }
    if (st == KEEL_OK && strict_extra)
        st = check_extras(plan, f);
    if (st == KEEL_OK)
        st = keel_plan_blocks_upload(plan, true, plan->param_blocks, host);
    if (st == KEEL_OK && state)
        st = keel_plan_blocks_upload(plan, false, plan->state_blocks, host_state);
    free(host);
    return st;
}

keel_status keel_weights_save(keel_plan *plan, const char *path, const char *const *metadata)
{
    if (!plan || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_weights_save: plan and path are required");
    keel_st_writer *w = NULL;
    float *host = NULL;
    keel_status st = keel_st_writer_new(&w);
    if (st == KEEL_OK)
        st = keel_weights_export(plan, w, &host);
    if (st == KEEL_OK)
        st = keel_st_writer_set_metadata(w, "format", "pt");
    for (int i = 0; metadata && metadata[i] && st == KEEL_OK; i += 2) {
        if (!metadata[i + 1]) {
            st = keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_weights_save: metadata key '%s' has no value",
                           metadata[i]);
            break;
        }
        st = keel_st_writer_set_metadata(w, metadata[i], metadata[i + 1]);
    }
    if (st == KEEL_OK)
        st = keel_st_writer_write(w, path);
    keel_st_writer_free(w);
    free(host);
    return st;
}

keel_status keel_weights_load(keel_plan *plan, const char *path)
{
    if (!plan || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_weights_load: plan and path are required");
    keel_st_file *f = NULL;
    keel_status st = keel_st_file_load(&f, path);
    if (st == KEEL_OK)
        st = keel_weights_import(plan, f, true);
    keel_st_file_free(f);
    return st;
}

/* Reads only the JSON header of a safetensors file: metadata lookups stay
 * cheap for files of hundreds of megabytes. */
static keel_status read_header(const char *path, cJSON **out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return keel_fail(KEEL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char len_bytes[8];
    uint64_t n = 0;
    keel_status st = KEEL_OK;
    if (fread(len_bytes, 1, 8, f) != 8)
        st = keel_fail(KEEL_ERR_FORMAT, "%s: too short to be a safetensors file", path);
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)len_bytes[i] << (8 * i);
    if (st == KEEL_OK && (n == 0 || n > 100000000u))
        st = keel_fail(KEEL_ERR_FORMAT, "%s: header length %llu is not that of a safetensors file", path,
                       (unsigned long long)n);
    char *json = st == KEEL_OK ? malloc((size_t)n + 1) : NULL;
    if (st == KEEL_OK && !json)
        st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory reading the header", path);
    if (st == KEEL_OK && fread(json, 1, (size_t)n, f) != (size_t)n)
        st = keel_fail(KEEL_ERR_FORMAT, "%s: the header is cut short (is the file truncated?)", path);
    fclose(f);
    if (st == KEEL_OK) {
        json[n] = '\0';
        *out = cJSON_ParseWithLength(json, (size_t)n);
        if (!*out || !cJSON_IsObject(*out)) {
            cJSON_Delete(*out);
            st = keel_fail(KEEL_ERR_FORMAT, "%s: the header is not a JSON object", path);
        }
    }
    free(json);
    return st;
}

keel_status keel_checkpoint_metadata(const char *path, const char *key, char *value, size_t size)
{
    if (!path || !key || !value || size == 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_checkpoint_metadata: path, key and value are required");
    cJSON *root = NULL;
    keel_status st = read_header(path, &root);
    if (st != KEEL_OK)
        return st;
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
    const cJSON *v = cJSON_IsObject(meta) ? cJSON_GetObjectItemCaseSensitive(meta, key) : NULL;
    if (cJSON_IsString(v))
        snprintf(value, size, "%s", v->valuestring);
    else
        st = keel_fail(KEEL_ERR_NOT_FOUND, "%s has no metadata '%s'", path, key);
    cJSON_Delete(root);
    return st;
}

/* Parses "a,b,c" into exactly n floats. */
static bool parse_floats(const char *text, int n, float *out)
{
    const char *c = text;
    for (int i = 0; i < n; i++) {
        char *end = NULL;
        out[i] = strtof(c, &end);
        if (end == c)
            return false;
        c = end;
        if (i + 1 < n && *c++ != ',')
            return false;
    }
    return *c == '\0';
}

keel_status keel_checkpoint_normalization(const char *path, int channels, float *mean, float *std)
{
    char m[512], s[512];
    keel_status st = keel_checkpoint_metadata(path, "normalize.mean", m, sizeof m);
    if (st == KEEL_OK)
        st = keel_checkpoint_metadata(path, "normalize.std", s, sizeof s);
    if (st != KEEL_OK)
        return st;
    if (!parse_floats(m, channels, mean) || !parse_floats(s, channels, std))
        return keel_fail(KEEL_ERR_FORMAT, "%s: normalize.mean '%s' and normalize.std '%s' are not %d number%s each",
                         path, m, s, channels, channels == 1 ? "" : "s");
    return KEEL_OK;
}
