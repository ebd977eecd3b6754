/* Fully connected layers through cuBLAS. Keel's tensors are row-major and
 * cuBLAS is column-major: a row-major {rows, cols} matrix is the
 * column-major {cols, rows} matrix, its transpose, so each product below is
 * written for the transposes (C^T = B^T A^T) and needs no copies.
 *   forward      y {N, out} = x {N, in} . W^T      -> y^T = W . x^T
 *   data grad    dx {N, in} = dy {N, out} . W       -> dx^T = W^T . dy^T
 *   weight grad  dW {out, in} = dy^T . x            -> dW^T = x^T . dy
 * Strict fp32 computes in IEEE fp32 (CUBLAS_COMPUTE_32F); otherwise TF32
 * tensor cores may be used (CUBLAS_COMPUTE_32F_FAST_TF32), as for the
 * convolutions. */
#include "cuda/cuda_internal.h"

#include <limits.h>
#include <stdlib.h>

typedef struct linear_algo {
    keel_cuda_algo_kind kind;   /* KEEL_CUDA_ALGO_LINEAR */
    cublasComputeType_t compute;
} linear_algo;

keel_status keel_cuda_linear_prepare(keel_device *d, const keel_node *node, int64_t *workspace, void **algo)
{
    *workspace = 0;
    *algo = NULL;
    for (int i = 0; i < 2; i++)
        for (int dim = 0; dim < node->inputs[i]->ndim; dim++)
            if (node->inputs[i]->shape[dim] > INT_MAX)
                return keel_fail(KEEL_ERR_UNSUPPORTED, "%s: cuBLAS takes sizes below 2^31; input %d has %lld",
                                 node->name, i, (long long)node->inputs[i]->shape[dim]);
    linear_algo *a = malloc(sizeof *a);
    if (!a)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory", node->name);
    a->kind = KEEL_CUDA_ALGO_LINEAR;
    a->compute = d->policy.strict_fp32 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
    *algo = a;
    return KEEL_OK;
}

static cublasComputeType_t compute_of(const keel_launch *l)
{
    const linear_algo *a = l->algo;
    return a ? a->compute : CUBLAS_COMPUTE_32F;
}

/* C {m, n} = op(A) {m, k} . op(B) {k, n}, all column-major fp32. */
static keel_status gemm(const keel_launch *l, cublasOperation_t trans_a, cublasOperation_t trans_b, int m, int n,
                        int k, const float *a, int lda, const float *b, int ldb, float *c, int ldc)
{
    const float one = 1.0f, zero = 0.0f;
    keel_device *d = l->device;
    KEEL_CUDA_TRY(l->node->name, cudaSetDevice, (d->ordinal));
    KEEL_CUBLAS_TRY(l->node->name, cublasGemmEx,
                    (d->cublas, trans_a, trans_b, m, n, k, &one, a, CUDA_R_32F, lda, b, CUDA_R_32F, ldb, &zero, c,
                     CUDA_R_32F, ldc, compute_of(l), CUBLAS_GEMM_DEFAULT));
    return KEEL_OK;
}

keel_status keel_cuda_linear(const keel_launch *l)
{
    const keel_node *node = l->node;
    int batch = (int)node->shape[0], out_features = (int)node->shape[1];
    int in_features = (int)node->inputs[0]->shape[1];
    keel_status st = gemm(l, CUBLAS_OP_T, CUBLAS_OP_N, out_features, batch, in_features, l->in[1], in_features,
                          l->in[0], in_features, l->out, out_features);
    if (st == KEEL_OK && node->attrs.linear.has_bias && node->n_inputs > 2)
        KEEL_CUDA_TRY(node->name, keel_k_bias_add,
                      (l->device->stream, l->out, l->in[2], batch, out_features, 1));
    return st;
}

keel_status keel_cuda_linear_bwd_data(const keel_launch *l)
{
    const keel_node *node = l->node;
    int batch = (int)node->shape[0], in_features = (int)node->shape[1];
    int out_features = (int)node->inputs[0]->shape[1];
    return gemm(l, CUBLAS_OP_N, CUBLAS_OP_N, in_features, batch, out_features, l->in[1], in_features, l->in[0],
                out_features, l->out, in_features);
}

keel_status keel_cuda_linear_bwd_weight(const keel_launch *l)
{
    const keel_node *node = l->node;
    int out_features = (int)node->shape[0], in_features = (int)node->shape[1];
    int batch = (int)node->inputs[0]->shape[0];
    return gemm(l, CUBLAS_OP_N, CUBLAS_OP_T, in_features, out_features, batch, l->in[0], in_features, l->in[1],
                out_features, l->out, in_features);
}
