/* LRN and batch-norm kernels (the formulas are in src/ops/norm.c).
 * LRN runs over (n, c) planes, batch norm over channels; each iteration owns
 * what it writes, so nothing races and every sum has a fixed order. */
#include "cpu/cpu.h"
#include "ops/math.h"

#include <math.h>
#include <string.h>

/* {N, C, rest...}: the batch, the channels and the elements per (n, c). */
typedef struct nc_geom {
    int64_t batch, channels, plane;
} nc_geom;

static nc_geom nc_geom_of(const keel_node *x)
{
    nc_geom s = {x->shape[0], x->shape[1], 1};
    for (int d = 2; d < x->ndim; d++)
        s.plane *= x->shape[d];
    return s;
}

/* ---- LRN -------------------------------------------------------------------- */

keel_status keel_cpu_lrn(const keel_launch *l)
{
    const keel_node *node = l->node;
    keel_lrn_attrs a = node->attrs.lrn;
    nc_geom s = nc_geom_of(node);
    const float *x = l->in[0];
    float *y = l->out, *scale = l->aux;
    float alpha_over_size = a.alpha / (float)a.size;
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t nc = 0; nc < s.batch * s.channels; nc++) {
        int64_t n = nc / s.channels;
        int c = (int)(nc % s.channels);
        const float *xc = x + nc * s.plane;
        float *sc = scale + nc * s.plane, *yc = y + nc * s.plane;
        memset(sc, 0, (size_t)s.plane * sizeof *sc);
        int hi = keel_lrn_hi(c, a.size, (int)s.channels);
        for (int j = keel_lrn_lo(c, a.size); j <= hi; j++) {
            const float *xj = x + (n * s.channels + j) * s.plane;
            for (int64_t i = 0; i < s.plane; i++)
                sc[i] += xj[i] * xj[i];
        }
        for (int64_t i = 0; i < s.plane; i++) {
            sc[i] = a.k + alpha_over_size * sc[i];
            yc[i] = xc[i] * powf(sc[i], -a.beta);
        }
    }
    return KEEL_OK;
}

/* dx_c = dy_c*scale_c^-beta - (2*alpha*beta/size) * a_c * sum_{j reaching c} dy_j*b_j/scale_j */
keel_status keel_cpu_lrn_bwd(const keel_launch *l)
{
    const keel_node *node = l->node;
    keel_lrn_attrs a = node->attrs.lrn;
    nc_geom s = nc_geom_of(node);
    const float *dy = l->in[0], *x = l->in[1], *y = l->in[2], *scale = l->fwd_aux;
    float *dx = l->out;
    float coef = 2.0f * a.alpha * a.beta / (float)a.size;
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t nc = 0; nc < s.batch * s.channels; nc++) {
        int64_t n = nc / s.channels;
        int c = (int)(nc % s.channels);
        int lo = keel_lrn_reach_lo(c, a.size), hi = keel_lrn_reach_hi(c, a.size, (int)s.channels);
        const float *xc = x + nc * s.plane, *dyc = dy + nc * s.plane, *sc = scale + nc * s.plane;
        float *dxc = dx + nc * s.plane;
        /* Sum over the reaching channels into dx first, plane by plane, so
         * the inner loops run over contiguous memory. */
        memset(dxc, 0, (size_t)s.plane * sizeof *dxc);
        for (int j = lo; j <= hi; j++) {
            int64_t at = (n * s.channels + j) * s.plane;
            for (int64_t i = 0; i < s.plane; i++)
                dxc[i] += dy[at + i] * y[at + i] / scale[at + i];
        }
        for (int64_t i = 0; i < s.plane; i++)
            dxc[i] = dyc[i] * powf(sc[i], -a.beta) - coef * xc[i] * dxc[i];
    }
    return KEEL_OK;
}

/* ---- batch norm -------------------------------------------------------------- */

/* Channel sums in float64, in LANES running sums that the compiler keeps
 * in vector registers: a fixed order, so the result does not depend on the
 * thread count, and a quarter of the time of one running sum. */
enum { LANES = 8 };

static double lanes_total(const double *lane)
{
    double total = 0.0;
    for (int k = 0; k < LANES; k++)
        total += lane[k];
    return total;
}

/* sum x */
static void add_sum(const float *x, int64_t n, double *lane)
{
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++)
            lane[k] += x[i + k];
    for (; i < n; i++)
        lane[i % LANES] += x[i];
}

/* sum (x - centre)^2 */
static void add_squares(const float *x, int64_t n, double centre, double *lane)
{
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) {
            double d = x[i + k] - centre;
            lane[k] += d * d;
        }
    for (; i < n; i++) {
        double d = x[i] - centre;
        lane[i % LANES] += d * d;
    }
}

/* sum dy * (x - centre) */
static void add_products(const float *dy, const float *x, int64_t n, double centre, double *lane)
{
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++)
            lane[k] += (double)dy[i + k] * ((double)x[i + k] - centre);
    for (; i < n; i++)
        lane[i % LANES] += (double)dy[i] * ((double)x[i] - centre);
}

/* The batch mean and biased variance of one channel, in float64, two passes. */
static void channel_moments(const float *x, nc_geom s, int64_t c, double *mean, double *var)
{
    double count = (double)(s.batch * s.plane);
    double sums[LANES] = {0}, squares[LANES] = {0};
    for (int64_t n = 0; n < s.batch; n++)
        add_sum(x + (n * s.channels + c) * s.plane, s.plane, sums);
    *mean = lanes_total(sums) / count;
    for (int64_t n = 0; n < s.batch; n++)
        add_squares(x + (n * s.channels + c) * s.plane, s.plane, *mean, squares);
    *var = lanes_total(squares) / count;
}

keel_status keel_cpu_batch_norm(const keel_launch *l)
{
    const keel_node *node = l->node;
    keel_bn_attrs a = node->attrs.bn;
    nc_geom s = nc_geom_of(node);
    int64_t count = s.batch * s.plane;
    if (l->training && count < 2) {
        char buf[96];
        return keel_fail(KEEL_ERR_SHAPE,
                         "batch norm in training needs more than one value per channel (input %s)",
                         keel_node_shape_str(node->inputs[0], buf, sizeof buf));
    }
    const float *x = l->in[0], *gamma = l->in[1], *beta = l->in[2];
    /* The persistent state block: updated here, in place. */
    float *running_mean = l->in[3], *running_var = l->in[4];
    float *y = l->out, *saved_mean = l->aux, *saved_inv_std = saved_mean + s.channels;
    double momentum = a.momentum;
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < s.channels; c++) {
        double mean, var;
        if (l->training) {
            channel_moments(x, s, c, &mean, &var);
            double unbiased = var * (double)count / (double)(count - 1);
            running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mean);
            running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * unbiased);
        } else {
            mean = running_mean[c];
            var = running_var[c];
        }
        float mean_f = (float)mean, inv_std = (float)(1.0 / sqrt(var + a.eps));
        saved_mean[c] = mean_f;
        saved_inv_std[c] = inv_std;
        float scale = gamma[c] * inv_std, shift = beta[c];
        for (int64_t n = 0; n < s.batch; n++) {
            int64_t at = (n * s.channels + c) * s.plane;
            for (int64_t i = 0; i < s.plane; i++)
                y[at + i] = (x[at + i] - mean_f) * scale + shift;
        }
    }
    return KEEL_OK;
}

/* dgamma_c = sum dy * xhat */
keel_status keel_cpu_batch_norm_bwd_gamma(const keel_launch *l)
{
    const keel_node *node = l->node;
    nc_geom s = nc_geom_of(node->inputs[1]);
    const float *dy = l->in[0], *x = l->in[1];
    const float *saved_mean = l->fwd_aux, *saved_inv_std = saved_mean + s.channels;
    float *dgamma = l->out;
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < s.channels; c++) {
        double lane[LANES] = {0};
        for (int64_t n = 0; n < s.batch; n++) {
            int64_t at = (n * s.channels + c) * s.plane;
            add_products(dy + at, x + at, s.plane, saved_mean[c], lane);
        }
        dgamma[c] = (float)(lanes_total(lane) * saved_inv_std[c]);
    }
    return KEEL_OK;
}

/* dx = gamma*inv_std/M * (M*dy - dbeta - xhat*dgamma), written as
 * gamma*inv_std * (dy - mean(dy) - xhat*mean(dy*xhat)). */
keel_status keel_cpu_batch_norm_bwd_data(const keel_launch *l)
{
    const keel_node *node = l->node;
    nc_geom s = nc_geom_of(node);
    const float *dy = l->in[0], *x = l->in[1], *gamma = l->in[2], *dgamma = l->in[3], *dbeta = l->in[4];
    const float *saved_mean = l->fwd_aux, *saved_inv_std = saved_mean + s.channels;
    float *dx = l->out;
    double count = (double)(s.batch * s.plane);
    int threads = keel_cpu_threads(l->device);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < s.channels; c++) {
        float mean = saved_mean[c], inv_std = saved_inv_std[c];
        float scale = gamma[c] * inv_std;
        float mean_dy = (float)(dbeta[c] / count), mean_dy_xhat = (float)(dgamma[c] / count);
        for (int64_t n = 0; n < s.batch; n++) {
            int64_t at = (n * s.channels + c) * s.plane;
            for (int64_t i = 0; i < s.plane; i++) {
                float xhat = (x[at + i] - mean) * inv_std;
                dx[at + i] = scale * (dy[at + i] - mean_dy - xhat * mean_dy_xhat);
            }
        }
    }
    return KEEL_OK;
}
