/* Status codes and error text shared by every part of the public API. */
#ifndef KEEL_STATUS_H
#define KEEL_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum keel_status {
    KEEL_OK = 0,
    KEEL_ERR_INVALID_ARGUMENT, /* a caller passed something impossible */
    KEEL_ERR_SHAPE,            /* shapes do not fit together */
    KEEL_ERR_IO,               /* a file could not be opened, read or written */
    KEEL_ERR_FORMAT,           /* a file was read but its contents are wrong */
    KEEL_ERR_OUT_OF_MEMORY,
    KEEL_ERR_UNSUPPORTED,      /* valid, but this build or backend cannot do it */
    KEEL_ERR_BACKEND,          /* a device library (CUDA, cuDNN, cuBLAS) failed */
    KEEL_ERR_STATE,            /* called in the wrong order */
    KEEL_ERR_NOT_FOUND,        /* a name that is not there */
} keel_status;

/* A fixed English phrase for a status ("shape mismatch"). Never NULL. */
const char *keel_status_string(keel_status status);

/* The message of the last failed call on this thread: what failed and where,
 * e.g. "conv1: kernel 5x5 is larger than the padded input 3x3". The text
 * stays valid until the next failing call on the same thread. */
const char *keel_last_error(void);

/* Records a message as this thread's last error and returns `status`, so
 * code built on libkeel (the model zoo, programs, custom layers) reports its
 * failures the way the library does:
 * `return keel_fail(KEEL_ERR_NOT_FOUND, "unknown model '%s'", name);` */
keel_status keel_fail(keel_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

typedef enum keel_log_level {
    KEEL_LOG_ERROR = 0,
    KEEL_LOG_WARN,
    KEEL_LOG_INFO,
    KEEL_LOG_DEBUG,
} keel_log_level;

/* Receives every log line of a context (see keel_context_opts). */
typedef void (*keel_log_fn)(keel_log_level level, const char *message, void *user);

#ifdef __cplusplus
}
#endif
#endif
