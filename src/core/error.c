/* Status text and the per-thread last error message. */
#include "core/core.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Per-thread, like errno: each thread sees the message of its own last
 * failure, so concurrent contexts never read each other's errors. */
static _Thread_local char last_error[1024];

const char *keel_status_string(keel_status status)
{
    switch (status) {
    case KEEL_OK: return "ok";
    case KEEL_ERR_INVALID_ARGUMENT: return "invalid argument";
    case KEEL_ERR_SHAPE: return "shape mismatch";
    case KEEL_ERR_IO: return "input/output error";
    case KEEL_ERR_FORMAT: return "bad file format";
    case KEEL_ERR_OUT_OF_MEMORY: return "out of memory";
    case KEEL_ERR_UNSUPPORTED: return "unsupported";
    case KEEL_ERR_BACKEND: return "device library error";
    case KEEL_ERR_STATE: return "called in the wrong state";
    case KEEL_ERR_NOT_FOUND: return "not found";
    }
    return "unknown status";
}

const char *keel_last_error(void)
{
    return last_error;
}

keel_status keel_fail(keel_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

keel_status keel_fail_prefix(keel_status status, const char *fmt, ...)
{
    char prefix[256];
    char old[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    size_t used = strlen(prefix);
    memcpy(last_error, prefix, used + 1);
    /* The old message follows, cut where the buffer ends. */
    strncat(last_error, old, sizeof last_error - used - 1);
    return status;
}
