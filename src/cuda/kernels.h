/* Launchers of the CUDA kernels in kernels/, callable from C. Each
 * enqueues its work on `stream` and returns the launch error (cudaSuccess
 * when the launch was accepted). Tensors are contiguous NCHW float32 device
 * memory; `inner` is the product of the dimensions after the channel axis.
 * No launcher allocates: scratch comes from the caller's workspace. */
#ifndef KEEL_CUDA_KERNELS_H
#define KEEL_CUDA_KERNELS_H

#include <stdbool.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The activations, numbered independently of keel_act_kind. */
typedef enum keel_k_act {
    KEEL_K_RELU = 0,
    KEEL_K_LEAKY_RELU,
    KEEL_K_SIGMOID,
    KEEL_K_TANH,
} keel_k_act;

/* Blocks of the two-stage deterministic sums (loss reductions); their
 * workspace is KEEL_K_REDUCE_BLOCKS doubles. */
#define KEEL_K_REDUCE_BLOCKS 256
#define KEEL_K_REDUCE_BYTES ((int64_t)KEEL_K_REDUCE_BLOCKS * (int64_t)sizeof(double))

/* ---- elementwise.cu ------------------------------------------------------- */
cudaError_t keel_k_fill(cudaStream_t stream, float *y, float value, int64_t n);
cudaError_t keel_k_activation(cudaStream_t stream, keel_k_act act, float slope, const float *x, float *y, int64_t n);
/* saved: y, or x for the leaky ReLU (see keel_activation_backward). */
cudaError_t keel_k_activation_bwd(cudaStream_t stream, keel_k_act act, float slope, const float *dy,
                                  const float *saved, float *dx, int64_t n);
/* y = a + b, then max(., 0) when relu (the residual add of ResNet). */
cudaError_t keel_k_add(cudaStream_t stream, const float *a, const float *b, float *y, int64_t n, bool relu);
cudaError_t keel_k_scale(cudaStream_t stream, const float *x, float *y, float s, int64_t n);
/* y = keel_dropout_f(x, key, i, p, 1/(1-p)) for every index i. */
cudaError_t keel_k_dropout(cudaStream_t stream, const float *x, float *y, int64_t n, uint64_t key, float p);
/* y[n, c, i] += bias[c] */
cudaError_t keel_k_bias_add(cudaStream_t stream, float *y, const float *bias, int64_t batch, int64_t channels,
                            int64_t inner);
/* db[c] = sum over n, i of dy[n, c, i], one block per channel, float64. */
cudaError_t keel_k_bias_grad(cudaStream_t stream, const float *dy, float *db, int64_t batch, int64_t channels,
                             int64_t inner);

/* ---- pool.cu -------------------------------------------------------------- */
typedef struct keel_k_pool_params {
    int64_t planes;            /* N * C */
    int64_t in_h, in_w, out_h, out_w;
    int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
    bool exclude_pad;
} keel_k_pool_params;

/* argmax: the offset of each window's maximum in its input plane (int32). */
cudaError_t keel_k_max_pool(cudaStream_t stream, const keel_k_pool_params *p, const float *x, float *y,
                            int32_t *argmax);
cudaError_t keel_k_max_pool_bwd(cudaStream_t stream, const keel_k_pool_params *p, const float *dy,
                                const int32_t *argmax, float *dx);
cudaError_t keel_k_avg_pool(cudaStream_t stream, const keel_k_pool_params *p, const float *x, float *y);
cudaError_t keel_k_avg_pool_bwd(cudaStream_t stream, const keel_k_pool_params *p, const float *dy, float *dx);

/* ---- norm.cu -------------------------------------------------------------- */
typedef struct keel_k_lrn_params {
    int64_t batch, channels, inner;
    int size;
    float alpha, beta, k;
} keel_k_lrn_params;

/* scale: k + alpha/size * sum of squares, one per element (the node's aux). */
cudaError_t keel_k_lrn(cudaStream_t stream, const keel_k_lrn_params *p, const float *x, float *y, float *scale);
cudaError_t keel_k_lrn_bwd(cudaStream_t stream, const keel_k_lrn_params *p, const float *dy, const float *x,
                           const float *y, const float *scale, float *dx);

typedef struct keel_k_bn_params {
    int64_t batch, channels, inner;
    float eps, momentum;
} keel_k_bn_params;

/* saved: mean[C] then 1/sqrt(var + eps)[C] (the node's aux). Training uses
 * the batch moments and moves the running ones (unbiased variance) in place;
 * evaluation normalises with the running ones. */
cudaError_t keel_k_batch_norm(cudaStream_t stream, const keel_k_bn_params *p, bool training, const float *x,
                              const float *gamma, const float *beta, float *running_mean, float *running_var,
                              float *y, float *saved);
/* dgamma[c] = sum dy * xhat */
cudaError_t keel_k_batch_norm_bwd_gamma(cudaStream_t stream, const keel_k_bn_params *p, const float *dy, const float *x,
                                        const float *saved, float *dgamma);
/* dx = gamma*inv_std * (dy - dbeta/M - xhat*dgamma/M) */
cudaError_t keel_k_batch_norm_bwd_data(cudaStream_t stream, const keel_k_bn_params *p, const float *dy, const float *x,
                                       const float *gamma, const float *dgamma, const float *dbeta,
                                       const float *saved, float *dx);

/* ---- loss.cu -------------------------------------------------------------- */
cudaError_t keel_k_softmax(cudaStream_t stream, const float *x, float *y, int64_t rows, int64_t classes);
cudaError_t keel_k_softmax_bwd(cudaStream_t stream, const float *dy, const float *y, float *dx, int64_t rows,
                               int64_t classes);
/* Writes the probabilities to prob and the mean over rows of
 * logsumexp(z) - z[label] to *loss; row_loss is rows doubles of scratch.
 * A label outside [0, classes) makes the loss NaN and lowers *bad_sample
 * (a device word the caller set to all ones) to the first such sample. */
cudaError_t keel_k_softmax_cross_entropy(cudaStream_t stream, const float *logits, const int32_t *labels,
                                         float *prob, float *loss, int64_t rows, int64_t classes,
                                         double *row_loss, unsigned long long *bad_sample);
/* Rows with an invalid label get a zero gradient (the forward reported them). */
cudaError_t keel_k_softmax_cross_entropy_bwd(cudaStream_t stream, const float *dloss, const int32_t *labels,
                                             const float *prob, float *dz, int64_t rows, int64_t classes);
/* Mean over all n elements; workspace KEEL_K_REDUCE_BYTES. */
cudaError_t keel_k_mse_loss(cudaStream_t stream, const float *p, const float *t, float *loss, int64_t n,
                            void *workspace);
cudaError_t keel_k_mse_loss_bwd(cudaStream_t stream, const float *dloss, const float *p, const float *t, float *dp,
                                int64_t n);
cudaError_t keel_k_bce_with_logits(cudaStream_t stream, const float *x, const float *t, float *loss, int64_t n,
                                   void *workspace);
cudaError_t keel_k_bce_with_logits_bwd(cudaStream_t stream, const float *dloss, const float *x, const float *t,
                                       float *dx, int64_t n);

/* ---- optim.cu ------------------------------------------------------------- */
/* The formulas of keel_sgd_update and keel_adam_update over n floats. */
cudaError_t keel_k_sgd(cudaStream_t stream, float *w, float *v, const float *g, int64_t n, float lr, float momentum,
                       float weight_decay, bool nesterov);
cudaError_t keel_k_adam(cudaStream_t stream, float *w, float *m, float *v, const float *g, int64_t n, float lr,
                        float beta1, float beta2, float eps, float weight_decay, float c1, float c2);

#ifdef __cplusplus
}
#endif
#endif
