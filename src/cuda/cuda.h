/* The CUDA backend's entry points beyond the backend table, in plain C types
 * so that code compiled without the CUDA headers (the planner, the tests)
 * can call them. In a build without CUDA, the functions that need no device
 * answer KEEL_ERR_UNSUPPORTED ("built without CUDA") and the rest are absent. */
#ifndef KEEL_CUDA_H
#define KEEL_CUDA_H

#include "backend.h"

/* ---- convolution problems ---------------------------------------------------- */

/* Which cuDNN operation graph a convolution node becomes. */
typedef enum keel_conv_pass {
    KEEL_CONV_FPROP = 0,       /* y = conv(x, w) */
    KEEL_CONV_DGRAD,           /* dx = conv's data gradient of dy (also conv_transpose2d) */
    KEEL_CONV_WGRAD,           /* dw = conv's weight gradient from x and dy */
    KEEL_CONV_FPROP_BIAS_RELU, /* y = relu(conv(x, w) + bias), one fused graph */
} keel_conv_pass;

/* One convolution in conv2d's terms: the "image" is conv2d's input x and
 * the "output" conv2d's y, whichever of them the pass reads or writes.
 * fp32, NCHW, packed. Groups are implied by the filter {K, C/groups, R, S}. */
typedef struct keel_conv_shape {
    keel_conv_pass pass;
    int64_t batch, channels, height, width;    /* image */
    int64_t filters, out_height, out_width;    /* output */
    int64_t kernel_h, kernel_w, groups;
    int64_t pad_top, pad_bottom, pad_left, pad_right;
    int64_t stride_h, stride_w, dilation_h, dilation_w;
} keel_conv_shape;

/* Which engines a plan may use. */
typedef struct keel_conv_policy {
    bool strict_fp32;          /* IEEE fp32 only: no TF32 tensor-core engines */
    bool deterministic;        /* no engines whose reductions vary run to run */
    int64_t workspace_limit;   /* bytes an engine may ask for; 0: no limit */
} keel_conv_policy;

/* The convolution a CONV2D, CONV2D_BWD_DATA, CONV2D_BWD_WEIGHT or
 * CONV_TRANSPOSE2D node computes (pass FPROP, DGRAD or WGRAD). */
keel_status keel_conv_shape_of(const keel_node *node, keel_conv_shape *shape);
/* "fprop 8x3x32x32 * 16x3x3x3 (stride 1x1, pad 1,1,1,1, dil 1x1, groups 1) -> 8x16x32x32" */
const char *keel_conv_shape_str(const keel_conv_shape *shape, char *buf, size_t size);

/* What cuDNN made of one convolution. */
typedef struct keel_cudnn_report {
    int candidates;            /* engine configs from heuristics (modes A and FALLBACK) */
    int filtered;              /* of those, dropped by the policy */
    int plans;                 /* execution plans that finalized */
    int64_t engine_id;         /* the first (best ranked) plan's engine */
    int64_t workspace_bytes;   /* its workspace */
    int64_t max_workspace_bytes; /* the largest over every plan that finalized */
    bool tensor_cores;         /* the first plan uses TF32 tensor cores */
} keel_cudnn_report;

/* The GPU-free check: builds the cuDNN operation graph of `shape`, runs the
 * heuristics against the device profile `deviceprop_json` (the text of a
 * cuDNN DEVICEPROP JSON, e.g. docs/h200-deviceprop.json) and finalizes every
 * execution plan it can, up to `max_plans` (0: all). Needs no GPU and no
 * driver. KEEL_ERR_UNSUPPORTED when no plan finalizes, with cuDNN's reason. */
keel_status keel_cudnn_conv_check(const keel_conv_shape *shape, const keel_conv_policy *policy,
                                  const char *deviceprop_json, int max_plans, keel_cudnn_report *report);

/* The cuDNN device profile of CUDA device `index` as JSON, to save in place of
 * the hand-written one. Needs the GPU. buf gets a NUL-terminated string. */
keel_status keel_cudnn_deviceprop_json(int index, char *buf, size_t size);

/* cuDNN's version (e.g. 91900), 0 without CUDA. */
long keel_cudnn_version(void);

#ifdef KEEL_HAVE_CUDA
/* ---- the plan's options --------------------------------------------------------
 * The planner calls this after opening the device and before preparing the
 * nodes: strict_fp32, deterministic and autotune apply to the algorithms the
 * following prepare calls choose. Without the call: TF32 allowed, any engine,
 * heuristics only. */
keel_status keel_cuda_configure(keel_device *device, const keel_plan_opts *opts);

/* ---- the memory pool ------------------------------------------------------------ */
typedef struct keel_cuda_pool_stats {
    int64_t reserved_bytes;    /* held from cudaMalloc, in use or cached */
    int64_t in_use_bytes;      /* handed out and not yet freed */
    int64_t peak_in_use_bytes;
    int64_t device_mallocs;    /* cudaMalloc calls made */
    int64_t reuses;            /* allocations served from the cache */
} keel_cuda_pool_stats;

void keel_cuda_pool_stats_get(keel_device *device, keel_cuda_pool_stats *stats);

#ifdef KEEL_HAVE_NCCL
/* ---- NCCL (nccl.c): collectives for data parallelism -----------------------------
 * libnccl is opened at run time; without it every call here fails with
 * KEEL_ERR_UNSUPPORTED and a message saying how to install it. Collectives
 * are queued on a stream of their own after the work queued on the device's
 * compute stream; keel_nccl_wait makes the compute stream continue after
 * them. Every wait is bounded: past the timeout the communicator is aborted
 * and the call fails, naming the rank. */
#define KEEL_NCCL_ID_BYTES 128

typedef struct keel_nccl keel_nccl;

/* Whether libnccl can be opened here (a reason when not). */
keel_status keel_nccl_probe(void);
/* Rank 0 makes the communicator's id and sends it to the others (over MPI). */
keel_status keel_nccl_unique_id(unsigned char id[KEEL_NCCL_ID_BYTES]);
keel_status keel_nccl_open(keel_nccl **out, keel_device *device, const unsigned char id[KEEL_NCCL_ID_BYTES], int rank,
                           int ranks, double timeout_seconds);
void keel_nccl_close(keel_nccl *comm);
/* In place: data becomes the mean over the ranks. */
keel_status keel_nccl_all_reduce_mean(keel_nccl *comm, float *data, int64_t count, double timeout_seconds);
/* In place: data becomes rank 0's. */
keel_status keel_nccl_broadcast(keel_nccl *comm, float *data, int64_t count, double timeout_seconds);
keel_status keel_nccl_wait(keel_nccl *comm, double timeout_seconds);
#endif
#endif

#endif
