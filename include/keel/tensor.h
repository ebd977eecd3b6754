/* Host tensors: float32 (and int32 for labels), up to five dimensions,
 * strided, with .npy input and output so data moves to and from NumPy. */
#ifndef KEEL_TENSOR_H
#define KEEL_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KEEL_MAX_DIMS 5

typedef enum keel_dtype {
    KEEL_F32 = 0,
    KEEL_I32 = 1,
} keel_dtype;

size_t keel_dtype_size(keel_dtype dtype);
const char *keel_dtype_name(keel_dtype dtype);

/* A host tensor. The struct is plain so that callers may read it; strides
 * count elements, not bytes. A tensor made by keel_tensor_new owns its data
 * (contiguous, row-major); one made by keel_tensor_wrap does not. */
typedef struct keel_tensor {
    keel_dtype dtype;
    int ndim;
    int64_t shape[KEEL_MAX_DIMS];
    int64_t strides[KEEL_MAX_DIMS];
    void *data;
    bool owns_data;
} keel_tensor;

/* Allocates a zero-filled contiguous tensor. Free with keel_tensor_free. */
keel_status keel_tensor_new(keel_tensor **out, keel_dtype dtype, int ndim, const int64_t *shape);
/* Views caller memory as a contiguous tensor; the caller keeps ownership. */
keel_status keel_tensor_wrap(keel_tensor **out, keel_dtype dtype, int ndim, const int64_t *shape, void *data);
void keel_tensor_free(keel_tensor *t);

int64_t keel_tensor_numel(const keel_tensor *t);
bool keel_tensor_is_contiguous(const keel_tensor *t);
static inline float *keel_tensor_f32(const keel_tensor *t) { return (float *)t->data; }

/* .npy version 1.0/2.0/3.0 files with dtype <f4, <f8 (converted to float32),
 * <i4 or <i8 (converted to int32), C order or Fortran order. */
keel_status keel_tensor_load_npy(keel_tensor **out, const char *path);
/* Writes a C-order .npy (version 1.0) of the tensor; strided tensors are
 * gathered. The write is atomic: a temporary file renamed into place. */
keel_status keel_tensor_save_npy(const keel_tensor *t, const char *path);

#ifdef __cplusplus
}
#endif
#endif
