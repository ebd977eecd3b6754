/* Convolutions through the cuDNN graph ("backend") API: operation graphs,
 * heuristics, execution plans and their execution (conv_graph.c, which
 * includes cudnn_graph.h only: no legacy and no deprecated cuDNN call).
 * See ../shared/docs/cudnn-graph-c.md for what the API needs from C. */
#ifndef KEEL_CUDA_CONV_GRAPH_H
#define KEEL_CUDA_CONV_GRAPH_H

#include <cudnn_graph.h>
#include "cuda/cuda.h"

/* The tensors of a convolution graph, in conv2d's terms; also the order of
 * the pointers passed to keel_cudnn_pack_make. */
enum {
    KEEL_CONV_X = 0,  /* image: read by fprop and wgrad, written by dgrad */
    KEEL_CONV_W,      /* filter: read by fprop and dgrad, written by wgrad */
    KEEL_CONV_Y,      /* output (dy for the gradients): written by fprop */
    KEEL_CONV_BIAS,   /* fused fprop only */
    KEEL_CONV_TENSORS
};

/* One finalized execution plan. */
typedef struct keel_cudnn_plan {
    cudnnBackendDescriptor_t plan;
    int64_t workspace_bytes;
    int64_t engine_id;
    bool tensor_cores;          /* TF32 */
    int n_tensors;              /* 3, or 4 with the bias */
} keel_cudnn_plan;

/* Builds the operation graph of `shape`, merges the engine configs of
 * heuristics modes A and FALLBACK (best ranked first), drops those the
 * policy excludes, and finalizes plans in rank order until `max_plans` have
 * (0: all of them). `deviceprop` describes the GPU (required). On success
 * *plans holds *n_plans >= 1 plans (free with keel_cudnn_plans_free); when
 * none finalizes the error quotes cuDNN's reason. report may be NULL. */
keel_status keel_cudnn_conv_plans(const keel_conv_shape *shape, const keel_conv_policy *policy,
                                  cudnnBackendDescriptor_t deviceprop, int max_plans, const char *where,
                                  keel_cudnn_plan **plans, int *n_plans, keel_cudnn_report *report);
void keel_cudnn_plans_free(keel_cudnn_plan *plans, int n_plans);
void keel_cudnn_plan_release(keel_cudnn_plan *plan);

/* A variant pack binding the plan's tensors to device pointers (indexed by
 * KEEL_CONV_X..BIAS) and its workspace. Build once per set of pointers. */
keel_status keel_cudnn_pack_make(const keel_cudnn_plan *plan, void *const pointers[KEEL_CONV_TENSORS], void *workspace,
                                 const char *where, cudnnBackendDescriptor_t *pack);
keel_status keel_cudnn_execute(cudnnHandle_t handle, const keel_cudnn_plan *plan, cudnnBackendDescriptor_t pack,
                               const char *where);
void keel_cudnn_pack_free(cudnnBackendDescriptor_t pack);

/* The DEVICEPROP of the GPU behind `handle`, or of a JSON profile. */
keel_status keel_cudnn_deviceprop_from_handle(cudnnHandle_t handle, int ordinal, cudnnBackendDescriptor_t *out);
keel_status keel_cudnn_deviceprop_from_json(const char *json, cudnnBackendDescriptor_t *out);
void keel_cudnn_deviceprop_free(cudnnBackendDescriptor_t deviceprop);

#endif
