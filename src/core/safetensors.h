/* safetensors files (https://github.com/huggingface/safetensors), read and
 * written by libkeel for checkpoints and weight exchange with PyTorch.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON
 *   {"__metadata__": {"key": "value", ...},
 *    "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
 * padded with spaces, then the data buffer; offsets count bytes from the
 * start of that buffer. Python's safetensors.torch.load_file reads what the
 * writer below produces, and the reader accepts what Python writes.
 *
 * Typical checkpoint use:
 *   keel_st_writer *w;  keel_st_writer_new(&w);
 *   keel_st_writer_add(w, "conv1.weight", KEEL_ST_F32, 4, shape, weights);
 *   keel_st_writer_set_metadataf(w, "epoch", "%lld", (long long)epoch);
 *   keel_st_writer_write(w, "run/checkpoint.safetensors");  keel_st_writer_free(w);
 *
 *   keel_st_file *f;  keel_st_file_load(&f, "run/checkpoint.safetensors");
 *   keel_st_file_read(f, "conv1.weight", KEEL_ST_F32, 4, shape, weights);
 *   keel_st_file_metadata_i64(f, "epoch", &epoch);
 *   keel_st_file_free(f);
 *
 * Every failure returns a status and records a message that names the file
 * and, where one is at fault, the tensor. */
#ifndef KEEL_SAFETENSORS_H
#define KEEL_SAFETENSORS_H

#include "core/core.h"

/* safetensors allows any rank; more than this is refused as unsupported. */
#define KEEL_ST_MAX_DIMS 8

typedef enum keel_st_dtype {
    KEEL_ST_BOOL,
    KEEL_ST_U8,
    KEEL_ST_I8,
    KEEL_ST_U16,
    KEEL_ST_I16,
    KEEL_ST_F16,
    KEEL_ST_BF16,
    KEEL_ST_U32,
    KEEL_ST_I32,
    KEEL_ST_F32,
    KEEL_ST_U64,
    KEEL_ST_I64,
    KEEL_ST_F64,
} keel_st_dtype;

/* Bytes per element, and the name used in the header ("F32", "I64", ...). */
size_t keel_st_dtype_size(keel_st_dtype dtype);
const char *keel_st_dtype_name(keel_st_dtype dtype);
/* KEEL_F32 -> KEEL_ST_F32, KEEL_I32 -> KEEL_ST_I32. */
keel_st_dtype keel_st_dtype_of(keel_dtype dtype);

/* One tensor of a loaded file. `data` points into the file's buffer and
 * lives as long as the keel_st_file; for files this writer produced it is
 * aligned to the element size (others may not be: keel_st_file_read copies
 * safely either way). */
typedef struct keel_st_tensor {
    const char *name;
    keel_st_dtype dtype;
    int ndim;
    int64_t shape[KEEL_ST_MAX_DIMS];
    int64_t numel;
    const void *data;
    size_t bytes;
} keel_st_tensor;

/* ---- writing ----------------------------------------------------------------
 * A writer collects tensors and metadata, then writes them in one go to a
 * temporary file "<path>.tmp.<pid>" that is flushed to disk and renamed over
 * `path`, so a crash never leaves a half-written file. Tensors are laid out
 * in the order added, grouped by element size (largest first) so that every
 * tensor is aligned when the file is loaded. */
typedef struct keel_st_writer keel_st_writer;

keel_status keel_st_writer_new(keel_st_writer **out);
void keel_st_writer_free(keel_st_writer *w);
/* Adds a contiguous row-major tensor. The data is NOT copied: it must stay
 * valid and unchanged until keel_st_writer_write returns. Names must be
 * unique, non-empty and not "__metadata__". */
keel_status keel_st_writer_add(keel_st_writer *w, const char *name, keel_st_dtype dtype, int ndim,
                               const int64_t *shape, const void *data);
/* Like keel_st_writer_add, but copies the data now (for reused buffers). */
keel_status keel_st_writer_add_copy(keel_st_writer *w, const char *name, keel_st_dtype dtype, int ndim,
                                    const int64_t *shape, const void *data);
/* Copies a keel tensor (float32 or int32, strided ones are gathered). */
keel_status keel_st_writer_add_tensor(keel_st_writer *w, const char *name, const keel_tensor *t);
/* Sets a metadata string (copied); setting a key again replaces its value. */
keel_status keel_st_writer_set_metadata(keel_st_writer *w, const char *key, const char *value);
keel_status keel_st_writer_set_metadataf(keel_st_writer *w, const char *key, const char *fmt, ...)
    KEEL_PRINTF(3, 4);
/* Writes the file atomically. The writer stays usable (write again, free). */
keel_status keel_st_writer_write(const keel_st_writer *w, const char *path);

/* ---- reading ----------------------------------------------------------------
 * keel_st_file_load reads the whole file and validates it before returning:
 * header length within the file, well-formed JSON, known dtypes, shapes of
 * non-negative integers, offsets inside the data buffer with end - begin =
 * numel * element size, no two tensors overlapping, unique names, and
 * string-only metadata. */
typedef struct keel_st_file keel_st_file;

keel_status keel_st_file_load(keel_st_file **out, const char *path);
void keel_st_file_free(keel_st_file *f);
const char *keel_st_file_path(const keel_st_file *f);

/* Tensors in file order (by position in the data buffer). */
size_t keel_st_file_count(const keel_st_file *f);
const keel_st_tensor *keel_st_file_at(const keel_st_file *f, size_t index);
/* The tensor called `name`, or NULL when there is none (no error set). */
const keel_st_tensor *keel_st_file_find(const keel_st_file *f, const char *name);
/* Like keel_st_file_find, but a missing name is KEEL_ERR_NOT_FOUND with a
 * message naming the file and the tensor. */
keel_status keel_st_file_get(const keel_st_file *f, const char *name, const keel_st_tensor **out);
/* Copies tensor `name` into dst after checking that it has exactly this
 * dtype (else KEEL_ERR_FORMAT) and shape (else KEEL_ERR_SHAPE); a missing
 * name is KEEL_ERR_NOT_FOUND. The messages say what the file holds and what
 * was expected: "ckpt.safetensors: tensor 'fc.weight' has shape 10x84,
 * expected 10x120". */
keel_status keel_st_file_read(const keel_st_file *f, const char *name, keel_st_dtype dtype, int ndim,
                              const int64_t *shape, void *dst);
/* A new contiguous keel tensor (free with keel_tensor_free) holding a copy
 * of an F32 or I32 tensor of at most KEEL_MAX_DIMS dimensions. */
keel_status keel_st_file_read_tensor(const keel_st_file *f, const char *name, keel_tensor **out);

/* Metadata: the value of `key`, or NULL when absent. */
const char *keel_st_file_metadata(const keel_st_file *f, const char *key);
size_t keel_st_file_metadata_count(const keel_st_file *f);
void keel_st_file_metadata_at(const keel_st_file *f, size_t index, const char **key, const char **value);
/* A metadata value parsed as a whole decimal integer: KEEL_ERR_NOT_FOUND
 * when absent, KEEL_ERR_FORMAT when it is not an integer in range. */
keel_status keel_st_file_metadata_i64(const keel_st_file *f, const char *key, int64_t *value);
keel_status keel_st_file_metadata_u64(const keel_st_file *f, const char *key, uint64_t *value);

#endif
