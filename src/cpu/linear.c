/* Fully connected layer on the CPU: one cblas_sgemm per node. Row-major
 * throughout; x {N, in}, W {out, in}, dy {N, out}. */
#include <cblas.h>
#include <string.h>
#include "cpu/cpu.h"

/* y = x · Wᵀ + b. The bias is written into every row first so the GEMM can
 * add onto it (beta = 1) instead of a second pass over y. */
keel_status keel_cpu_linear(const keel_launch *l)
{
    const keel_node *node = l->node;
    const float *x = l->in[0], *w = l->in[1];
    float *y = l->out;
    int batch = (int)node->shape[0], out_features = (int)node->shape[1];
    int in_features = (int)node->inputs[0]->shape[1];
    float beta = 0.0f;
    if (node->attrs.linear.has_bias) {
        const float *bias = l->in[2];
        for (int n = 0; n < batch; n++)
            memcpy(y + (size_t)n * out_features, bias, (size_t)out_features * sizeof *y);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, out_features, in_features, 1.0f, x, in_features,
                w, in_features, beta, y, out_features);
    return KEEL_OK;
}

/* dx = dy · W */
keel_status keel_cpu_linear_bwd_data(const keel_launch *l)
{
    const keel_node *node = l->node;
    const float *dy = l->in[0], *w = l->in[1];
    int batch = (int)node->shape[0], in_features = (int)node->shape[1];
    int out_features = (int)node->inputs[0]->shape[1];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, batch, in_features, out_features, 1.0f, dy,
                out_features, w, in_features, 0.0f, l->out, in_features);
    return KEEL_OK;
}

/* dW = dyᵀ · x */
keel_status keel_cpu_linear_bwd_weight(const keel_launch *l)
{
    const keel_node *node = l->node;
    const float *x = l->in[0], *dy = l->in[1];
    int out_features = (int)node->shape[0], in_features = (int)node->shape[1];
    int batch = (int)node->inputs[0]->shape[0];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out_features, in_features, batch, 1.0f, dy,
                out_features, x, in_features, 0.0f, l->out, in_features);
    return KEEL_OK;
}
