/* Host tensors. */
#include "core/core.h"
#include <stdlib.h>
#include <string.h>

size_t keel_dtype_size(keel_dtype dtype)
{
    return dtype == KEEL_I32 ? sizeof(int32_t) : sizeof(float);
}

const char *keel_dtype_name(keel_dtype dtype)
{
    return dtype == KEEL_I32 ? "int32" : "float32";
}

static keel_status check_shape(int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > KEEL_MAX_DIMS)
        return keel_fail(KEEL_ERR_UNSUPPORTED, "tensors have at most %d dimensions, got %d", KEEL_MAX_DIMS, ndim);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return keel_fail(KEEL_ERR_SHAPE, "dimension %d has negative size %lld", i, (long long)shape[i]);
    return KEEL_OK;
}

static keel_tensor *tensor_header(keel_dtype dtype, int ndim, const int64_t *shape)
{
    keel_tensor *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->dtype = dtype;
    t->ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t->shape[i] = shape[i];
        t->strides[i] = stride;
        stride *= shape[i];
    }
    return t;
}

keel_status keel_tensor_new(keel_tensor **out, keel_dtype dtype, int ndim, const int64_t *shape)
{
    *out = NULL;
    keel_status st = check_shape(ndim, shape);
    if (st != KEEL_OK)
        return st;
    keel_tensor *t = tensor_header(dtype, ndim, shape);
    size_t bytes = (size_t)keel_shape_numel(ndim, shape) * keel_dtype_size(dtype);
    void *data = t ? keel_aligned_alloc(bytes) : NULL;
    if (!data) {
        free(t);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a tensor of %zu bytes", bytes);
    }
    memset(data, 0, bytes);
    t->data = data;
    t->owns_data = true;
    *out = t;
    return KEEL_OK;
}

keel_status keel_tensor_wrap(keel_tensor **out, keel_dtype dtype, int ndim, const int64_t *shape, void *data)
{
    *out = NULL;
    keel_status st = check_shape(ndim, shape);
    if (st != KEEL_OK)
        return st;
    keel_tensor *t = tensor_header(dtype, ndim, shape);
    if (!t)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate a tensor header");
    t->data = data;
    *out = t;
    return KEEL_OK;
}

void keel_tensor_free(keel_tensor *t)
{
    if (!t)
        return;
    if (t->owns_data)
        keel_aligned_free(t->data);
    free(t);
}

int64_t keel_tensor_numel(const keel_tensor *t)
{
    return keel_shape_numel(t->ndim, t->shape);
}

bool keel_tensor_is_contiguous(const keel_tensor *t)
{
    int64_t stride = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->strides[i] != stride)
            return false;
        stride *= t->shape[i];
    }
    return true;
}
