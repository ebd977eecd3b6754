/* Element-wise math shared by the CPU backend and the CUDA kernels. This
 * header compiles as C and as CUDA: KEEL_HD marks the functions for both, so
 * the CPU tests exercise the very expressions the GPU runs. */
#ifndef KEEL_OPS_MATH_H
#define KEEL_OPS_MATH_H

#include <stdint.h>

#ifdef __CUDACC__
#define KEEL_HD __host__ __device__ __forceinline__
#else
#include <math.h>
#define KEEL_HD static inline
#endif

/* ---- activations: forward, and backward from whichever of x or y the
 * derivative is cheapest in (ReLU and sigmoid and tanh use y). ------------ */

KEEL_HD float keel_relu_f(float x) { return x > 0.0f ? x : 0.0f; }
KEEL_HD float keel_relu_grad(float dy, float y) { return y > 0.0f ? dy : 0.0f; }

KEEL_HD float keel_leaky_relu_f(float x, float slope) { return x > 0.0f ? x : slope * x; }
KEEL_HD float keel_leaky_relu_grad(float dy, float x, float slope) { return x > 0.0f ? dy : slope * dy; }

/* Written to stay finite for large |x|: exp of a negative number only. */
KEEL_HD float keel_sigmoid_f(float x)
{
    if (x >= 0.0f) {
        float z = expf(-x);
        return 1.0f / (1.0f + z);
    }
    float z = expf(x);
    return z / (1.0f + z);
}
KEEL_HD float keel_sigmoid_grad(float dy, float y) { return dy * y * (1.0f - y); }

KEEL_HD float keel_tanh_f(float x) { return tanhf(x); }
KEEL_HD float keel_tanh_grad(float dy, float y) { return dy * (1.0f - y * y); }

/* ---- binary cross-entropy with logits, stable for any x:
 * l = max(x, 0) - x*t + log(1 + exp(-|x|)); dl/dx = sigmoid(x) - t. ------- */
KEEL_HD float keel_bce_logits_f(float x, float t)
{
    float ax = x < 0.0f ? -x : x;
    return (x > 0.0f ? x : 0.0f) - x * t + log1pf(expf(-ax));
}

/* ---- LRN across channels (Caffe / cuDNN / PyTorch convention):
 * scale = k + alpha/size * sum_{c' in window(c)} a_{c'}^2,  b = a * scale^-beta.
 * The window of channel c is [c - (size-1)/2, c + size/2] clipped to [0, C). */
KEEL_HD int keel_lrn_lo(int c, int size) { int lo = c - (size - 1) / 2; return lo < 0 ? 0 : lo; }
KEEL_HD int keel_lrn_hi(int c, int size, int channels) { int hi = c + size / 2; return hi >= channels ? channels - 1 : hi; }
/* The channels j whose window holds channel c (the backward pass sums over
 * them): the window mirrored, which differs from it when size is even. */
KEEL_HD int keel_lrn_reach_lo(int c, int size) { int lo = c - size / 2; return lo < 0 ? 0 : lo; }
KEEL_HD int keel_lrn_reach_hi(int c, int size, int channels) { int hi = c + (size - 1) / 2; return hi >= channels ? channels - 1 : hi; }

/* ---- optimisers, PyTorch semantics --------------------------------------
 * SGD: g' = g + wd*w;  v = momentum*v + (1 - dampening)*g' (v = g' on the
 * first step);  w -= lr * (nesterov ? g' + momentum*v : v).
 * Keel keeps dampening 0 and starts v at zero, which equals PyTorch's first
 * step because v = 0*momentum + g'. */
KEEL_HD void keel_sgd_update(float *w, float *v, float g, float lr, float momentum, float weight_decay,
                             int nesterov)
{
    float gd = g + weight_decay * *w;
    float vn = momentum * *v + gd;
    *v = vn;
    *w -= lr * (nesterov ? gd + momentum * vn : vn);
}

/* Adam (Kingma & Ba), with L2 weight decay added to the gradient as
 * torch.optim.Adam does; bias corrections c1 = 1 - beta1^t, c2 = 1 - beta2^t
 * are computed once per step by the caller. */
KEEL_HD void keel_adam_update(float *w, float *m, float *v, float g, float lr, float beta1, float beta2,
                              float eps, float weight_decay, float c1, float c2)
{
    float gd = g + weight_decay * *w;
    float mn = beta1 * *m + (1.0f - beta1) * gd;
    float vn = beta2 * *v + (1.0f - beta2) * gd * gd;
    *m = mn;
    *v = vn;
    float mhat = mn / c1;
    float vhat = vn / c2;
    *w -= lr * mhat / (sqrtf(vhat) + eps);
}

/* ---- counter-based random numbers (splitmix64 finaliser) -----------------
 * keel_hash64(seed ^ stream, index) is the i-th draw of a stream; the CPU and
 * the GPU draw the same dropout masks. */
KEEL_HD uint64_t keel_mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
KEEL_HD uint64_t keel_hash64(uint64_t key, uint64_t index) { return keel_mix64(key ^ keel_mix64(index)); }
/* Uniform in [0, 1) from the top 24 bits. */
KEEL_HD float keel_hash_uniform(uint64_t key, uint64_t index)
{
    return (float)(keel_hash64(key, index) >> 40) * (1.0f / 16777216.0f);
}
/* Dropout keeps an element when its draw is >= p; the survivors are scaled. */
KEEL_HD float keel_dropout_f(float x, uint64_t key, uint64_t index, float p, float inv_keep)
{
    return keel_hash_uniform(key, index) >= p ? x * inv_keep : 0.0f;
}
/* The mask stream of one dropout node at one step: its forward and its
 * DROPOUT_BWD (fwd->id), on the CPU and the GPU, all derive the same key. */
KEEL_HD uint64_t keel_dropout_key(uint64_t seed, int node_id, uint64_t step)
{
    return keel_hash64(seed, (uint64_t)node_id * 0x100000000ull + step);
}

#endif
