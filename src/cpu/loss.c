/* Softmax and the losses on the CPU (formulas in src/ops/loss.c).
 *
 * Sums run in float64. A loss is reduced in REDUCE_BLOCKS fixed slices
 * whose partial sums are added in slice order, so the value is the same bits
 * whatever the thread count. Row-wise work (softmax) and element-wise
 * gradients parallelise over rows or elements once there is enough of it. */
#include "cpu/cpu.h"
#include "ops/math.h"

enum {
    REDUCE_BLOCKS = 64,
    PARALLEL_MIN = 32768, /* elements below which threads cost more than they save */
};

static int64_t numel(const keel_node *x) { return keel_shape_numel(x->ndim, x->shape); }

/* [lo, hi) of slice b when n items are cut into REDUCE_BLOCKS slices. */
static int64_t slice_start(int64_t n, int b) { return n / REDUCE_BLOCKS * b + (n % REDUCE_BLOCKS) * b / REDUCE_BLOCKS; }

static double sum_in_order(const double *partial)
{
    double total = 0.0;
    for (int b = 0; b < REDUCE_BLOCKS; b++)
        total += partial[b];
    return total;
}

/* ---- softmax ---------------------------------------------------------------- */

/* Writes exp(z - max) to p and returns their sum; *max_out gets max z.
 * Subtracting the maximum keeps every exponent <= 0: no overflow. */
static double exp_row(const float *z, float *p, int64_t classes, float *max_out)
{
    float max = z[0];
    for (int64_t c = 1; c < classes; c++)
        max = z[c] > max ? z[c] : max;
    double sum = 0.0;
    for (int64_t c = 0; c < classes; c++) {
        p[c] = expf(z[c] - max);
        sum += p[c];
    }
    *max_out = max;
    return sum;
}

static void normalise_row(float *p, int64_t classes, double sum)
{
    float inv = (float)(1.0 / sum);
    for (int64_t c = 0; c < classes; c++)
        p[c] *= inv;
}

keel_status keel_cpu_softmax(const keel_launch *l)
{
    const float *x = l->in[0];
    float *y = l->out;
    int64_t rows = l->node->shape[0], classes = l->node->shape[1];
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * classes >= PARALLEL_MIN)
    for (int64_t n = 0; n < rows; n++) {
        float max;
        double sum = exp_row(x + n * classes, y + n * classes, classes, &max);
        normalise_row(y + n * classes, classes, sum);
    }
    return KEEL_OK;
}

/* dx = y ⊙ (dy − Σ_c dy_c y_c), row by row. */
keel_status keel_cpu_softmax_bwd(const keel_launch *l)
{
    const float *dy = l->in[0], *y = l->in[1];
    float *dx = l->out;
    int64_t rows = l->node->shape[0], classes = l->node->shape[1];
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * classes >= PARALLEL_MIN)
    for (int64_t n = 0; n < rows; n++) {
        const float *dy_row = dy + n * classes, *y_row = y + n * classes;
        double dot = 0.0;
        for (int64_t c = 0; c < classes; c++)
            dot += (double)dy_row[c] * y_row[c];
        float dotf = (float)dot;
        for (int64_t c = 0; c < classes; c++)
            dx[n * classes + c] = y_row[c] * (dy_row[c] - dotf);
    }
    return KEEL_OK;
}

/* ---- softmax cross-entropy ---------------------------------------------------- */

/* A label outside [0, classes) would index past the row: refuse the batch
 * before touching it, naming the first bad sample (the plan prefixes the
 * node's name). */
static keel_status check_labels(const int32_t *labels, int64_t rows, int64_t classes)
{
    for (int64_t n = 0; n < rows; n++)
        if (labels[n] < 0 || labels[n] >= classes)
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT,
                             "sample %lld has label %d, outside the %lld classes [0, %lld) of the logits",
                             (long long)n, (int)labels[n], (long long)classes, (long long)classes);
    return KEEL_OK;
}

/* Probabilities go to aux for the backward pass; the loss of a row is
 * logsumexp(z) − z[label] = (max − z[label]) + log Σ exp(z − max), which
 * stays finite and exact however confident the row is. */
keel_status keel_cpu_softmax_cross_entropy(const keel_launch *l)
{
    const keel_node *node = l->node;
    const float *logits = l->in[0];
    const int32_t *labels = l->in[1];
    float *prob = l->aux;
    int64_t rows = node->inputs[0]->shape[0], classes = node->inputs[0]->shape[1];
    keel_status status = check_labels(labels, rows, classes);
    if (status != KEEL_OK)
        return status;
    double partial[REDUCE_BLOCKS];
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * classes >= PARALLEL_MIN)
    for (int b = 0; b < REDUCE_BLOCKS; b++) {
        double block_loss = 0.0;
        for (int64_t n = slice_start(rows, b); n < slice_start(rows, b + 1); n++) {
            const float *z = logits + n * classes;
            float *p = prob + n * classes;
            float max;
            double sum = exp_row(z, p, classes, &max);
            normalise_row(p, classes, sum);
            block_loss += ((double)max - z[labels[n]]) + log(sum);
        }
        partial[b] = block_loss;
    }
    *(float *)l->out = (float)(sum_in_order(partial) / (double)rows);
    return KEEL_OK;
}

/* dz = dloss · (p − onehot(label)) / N */
keel_status keel_cpu_softmax_cross_entropy_bwd(const keel_launch *l)
{
    const keel_node *node = l->node;
    const float *dloss = l->in[0];
    const int32_t *labels = l->in[1];
    const float *prob = l->fwd_aux;
    float *dz = l->out;
    int64_t rows = node->shape[0], classes = node->shape[1];
    keel_status status = check_labels(labels, rows, classes);
    if (status != KEEL_OK)
        return status;
    float scale = (float)((double)dloss[0] / (double)rows);
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * classes >= PARALLEL_MIN)
    for (int64_t n = 0; n < rows; n++) {
        for (int64_t c = 0; c < classes; c++)
            dz[n * classes + c] = scale * prob[n * classes + c];
        dz[n * classes + labels[n]] = scale * (prob[n * classes + labels[n]] - 1.0f);
    }
    return KEEL_OK;
}

/* ---- element-wise losses ------------------------------------------------------ */

keel_status keel_cpu_mse_loss(const keel_launch *l)
{
    const float *p = l->in[0], *t = l->in[1];
    int64_t count = numel(l->node->inputs[0]);
    double partial[REDUCE_BLOCKS];
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static) if (count >= PARALLEL_MIN)
    for (int b = 0; b < REDUCE_BLOCKS; b++) {
        double block_sum = 0.0;
        for (int64_t i = slice_start(count, b); i < slice_start(count, b + 1); i++) {
            double d = (double)p[i] - (double)t[i];
            block_sum += d * d;
        }
        partial[b] = block_sum;
    }
    *(float *)l->out = (float)(sum_in_order(partial) / (double)count);
    return KEEL_OK;
}

/* dp = 2 · dloss · (p − t) / M */
keel_status keel_cpu_mse_loss_bwd(const keel_launch *l)
{
    const float *dloss = l->in[0], *p = l->in[1], *t = l->in[2];
    float *dp = l->out;
    int64_t count = numel(l->node);
    float scale = (float)(2.0 * (double)dloss[0] / (double)count);
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static) if (count >= PARALLEL_MIN)
    for (int64_t i = 0; i < count; i++)
        dp[i] = scale * (p[i] - t[i]);
    return KEEL_OK;
}

keel_status keel_cpu_bce_with_logits(const keel_launch *l)
{
    const float *x = l->in[0], *t = l->in[1];
    int64_t count = numel(l->node->inputs[0]);
    double partial[REDUCE_BLOCKS];
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static) if (count >= PARALLEL_MIN)
    for (int b = 0; b < REDUCE_BLOCKS; b++) {
        double block_sum = 0.0;
        for (int64_t i = slice_start(count, b); i < slice_start(count, b + 1); i++)
            block_sum += keel_bce_logits_f(x[i], t[i]);
        partial[b] = block_sum;
    }
    *(float *)l->out = (float)(sum_in_order(partial) / (double)count);
    return KEEL_OK;
}

/* dx = dloss · (sigmoid(x) − t) / M */
keel_status keel_cpu_bce_with_logits_bwd(const keel_launch *l)
{
    const float *dloss = l->in[0], *x = l->in[1], *t = l->in[2];
    float *dx = l->out;
    int64_t count = numel(l->node);
    float scale = (float)((double)dloss[0] / (double)count);
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static) if (count >= PARALLEL_MIN)
    for (int64_t i = 0; i < count; i++)
        dx[i] = scale * (keel_sigmoid_f(x[i]) - t[i]);
    return KEEL_OK;
}
