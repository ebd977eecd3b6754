/* The Fréchet distance between two feature Gaussians (FID's formula) and a
 * scorer that embeds images with a trained zoo classifier. Matrix algebra in
 * double precision: OpenBLAS for the products, LAPACK's dsyevd for the
 * symmetric eigen-decompositions behind the matrix square root. */
#include "keel/gan.h"
#include "core/core.h"
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A Gaussian fitted to feature rows: mean {dim} and unbiased covariance
 * {dim, dim}. */
typedef struct gaussian {
    int dim;
    double *mean, *cov;
} gaussian;

static void gaussian_free(gaussian *g)
{
    free(g->mean);
    free(g->cov);
    memset(g, 0, sizeof *g);
}

static keel_status gaussian_fit(const float *rows, int64_t count, int dim, gaussian *g)
{
    memset(g, 0, sizeof *g);
    if (count < 2)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "a covariance needs at least 2 samples, got %lld",
                         (long long)count);
    g->dim = dim;
    g->mean = calloc((size_t)dim, sizeof *g->mean);
    g->cov = calloc((size_t)dim * (size_t)dim, sizeof *g->cov);
    double *centred = malloc((size_t)count * (size_t)dim * sizeof *centred);
    if (!g->mean || !g->cov || !centred) {
        free(centred);
        gaussian_free(g);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory fitting a %d-dimensional Gaussian", dim);
    }
    for (int64_t i = 0; i < count; i++)
        for (int d = 0; d < dim; d++)
            g->mean[d] += rows[i * dim + d];
    for (int d = 0; d < dim; d++)
        g->mean[d] /= (double)count;
    for (int64_t i = 0; i < count; i++)
        for (int d = 0; d < dim; d++)
            centred[i * dim + d] = rows[i * dim + d] - g->mean[d];
    /* cov = X^T X / (n - 1), X the centred rows */
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, dim, dim, (int)count, 1.0 / (double)(count - 1), centred,
                dim, centred, dim, 0.0, g->cov, dim);
    free(centred);
    return KEEL_OK;
}

/* Eigenvalues (ascending) and, with vectors, the eigenvectors in the
 * columns of `a` (row-major, overwritten) of a symmetric matrix. */
static keel_status symmetric_eigen(double *a, int dim, bool vectors, double *values)
{
    lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, vectors ? 'V' : 'N', 'U', dim, a, dim, values);
    if (info != 0)
        return keel_fail(KEEL_ERR_BACKEND, "LAPACK dsyevd failed on a %dx%d covariance (info %d)", dim, dim,
                         (int)info);
    return KEEL_OK;
}

/* S^(1/2) = V diag(sqrt(max(l, 0))) V^T for a symmetric positive
 * semi-definite S; rounding can make tiny eigenvalues negative. */
static keel_status matrix_sqrt(const double *s, int dim, double *root)
{
    size_t n = (size_t)dim * (size_t)dim;
    double *v = malloc(n * sizeof *v), *scaled = malloc(n * sizeof *scaled);
    double *values = malloc((size_t)dim * sizeof *values);
    keel_status st = v && scaled && values ? KEEL_OK
                                           : keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for a matrix root");
    if (st == KEEL_OK) {
        memcpy(v, s, n * sizeof *v);
        st = symmetric_eigen(v, dim, true, values);
    }
    if (st == KEEL_OK) {
        for (int i = 0; i < dim; i++)
            for (int j = 0; j < dim; j++)
                scaled[i * dim + j] = v[i * dim + j] * sqrt(values[j] > 0 ? values[j] : 0.0);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, dim, dim, dim, 1.0, scaled, dim, v, dim, 0.0, root, dim);
    }
    free(v);
    free(scaled);
    free(values);
    return st;
}

/* Tr (S_a S_b)^(1/2) = sum sqrt(eig(R S_b R)), R = S_a^(1/2): R S_b R is
 * symmetric and similar to S_a S_b, so its eigenvalues are real and >= 0. */
static keel_status trace_sqrt_product(const double *root_a, const double *cov_b, int dim, double *trace)
{
    size_t n = (size_t)dim * (size_t)dim;
    double *t = malloc(n * sizeof *t), *m = malloc(n * sizeof *m), *values = malloc((size_t)dim * sizeof *values);
    keel_status st = t && m && values ? KEEL_OK : keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for the trace");
    if (st == KEEL_OK) {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, dim, dim, dim, 1.0, root_a, dim, cov_b, dim, 0.0, t,
                    dim);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, dim, dim, dim, 1.0, t, dim, root_a, dim, 0.0, m, dim);
        for (int i = 0; i < dim; i++)
            for (int j = 0; j < i; j++)
                m[i * dim + j] = m[j * dim + i] = 0.5 * (m[i * dim + j] + m[j * dim + i]);
        st = symmetric_eigen(m, dim, false, values);
    }
    if (st == KEEL_OK) {
        double sum = 0;
        for (int i = 0; i < dim; i++)
            sum += sqrt(values[i] > 0 ? values[i] : 0.0);
        *trace = sum;
    }
    free(t);
    free(m);
    free(values);
    return st;
}

static double trace(const double *s, int dim)
{
    double sum = 0;
    for (int i = 0; i < dim; i++)
        sum += s[i * dim + i];
    return sum;
}

/* d = |mu_a - mu_b|^2 + Tr S_a + Tr S_b - 2 Tr (S_a S_b)^(1/2), with
 * root_a = S_a^(1/2) computed once by the caller. */
static keel_status frechet(const gaussian *a, const double *root_a, const gaussian *b, double *distance)
{
    double cross = 0;
    keel_status st = trace_sqrt_product(root_a, b->cov, a->dim, &cross);
    if (st != KEEL_OK)
        return st;
    double mean_term = 0;
    for (int d = 0; d < a->dim; d++)
        mean_term += (a->mean[d] - b->mean[d]) * (a->mean[d] - b->mean[d]);
    double value = mean_term + trace(a->cov, a->dim) + trace(b->cov, b->dim) - 2.0 * cross;
    *distance = value > 0 ? value : 0.0; /* rounding leaves about -1e-12 for equal sets */
    return KEEL_OK;
}

keel_status keel_frechet_distance(const float *a, int64_t count_a, const float *b, int64_t count_b, int dim,
                                  double *distance)
{
    if (!a || !b || !distance || dim < 1)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_frechet_distance: two feature sets, dim >= 1 and an output "
                         "are required");
    gaussian ga, gb;
    double *root = malloc((size_t)dim * (size_t)dim * sizeof *root);
    if (!root)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for a %dx%d matrix", dim, dim);
    keel_status st = gaussian_fit(a, count_a, dim, &ga);
    if (st == KEEL_OK) {
        st = gaussian_fit(b, count_b, dim, &gb);
        if (st == KEEL_OK) {
            st = matrix_sqrt(ga.cov, dim, root);
            if (st == KEEL_OK)
                st = frechet(&ga, root, &gb, distance);
            gaussian_free(&gb);
        }
        gaussian_free(&ga);
    }
    free(root);
    return st;
}

/* ---- the scorer ------------------------------------------------------------------ */

struct keel_fid {
    keel_graph *graph;
    keel_model_io io;
    keel_plan *plan;
    int64_t batch;
    int channels, height, width, classes, dim;
    float confidence;
    float *mean, *std;              /* the classifier's input normalisation, or NULL */
    float *input, *features, *logits; /* one batch each */
    gaussian real;
    double *real_root;              /* real.cov^(1/2) */
};

int keel_fid_dim(const keel_fid *fid) { return fid ? fid->dim : 0; }

void keel_fid_image_shape(const keel_fid *fid, int *channels, int *height, int *width)
{
    *channels = fid ? fid->channels : 0;
    *height = fid ? fid->height : 0;
    *width = fid ? fid->width : 0;
}

void keel_fid_destroy(keel_fid *fid)
{
    if (!fid)
        return;
    keel_plan_destroy(fid->plan);
    keel_graph_free(fid->graph);
    free(fid->mean);
    free(fid->std);
    free(fid->input);
    free(fid->features);
    free(fid->logits);
    gaussian_free(&fid->real);
    free(fid->real_root);
    free(fid);
}

static keel_status read_normalization(keel_fid *fid, const char *weights)
{
    fid->mean = malloc((size_t)fid->channels * sizeof *fid->mean);
    fid->std = malloc((size_t)fid->channels * sizeof *fid->std);
    if (!fid->mean || !fid->std)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    keel_status st = keel_checkpoint_normalization(weights, fid->channels, fid->mean, fid->std);
    if (st == KEEL_ERR_NOT_FOUND) {
        free(fid->mean);
        free(fid->std);
        fid->mean = fid->std = NULL;
        return KEEL_OK;
    }
    return st;
}

static keel_status build_classifier(keel_fid *fid, keel_context *ctx, const keel_fid_opts *opts, const char *model)
{
    char classes[32];
    keel_model_opts mo = {.batch = fid->batch, .in_channels = fid->channels, .height = fid->height,
                          .width = fid->width};
    if (keel_checkpoint_metadata(opts->weights, "classes", classes, sizeof classes) == KEEL_OK)
        mo.classes = atoi(classes);
    fid->graph = keel_graph_new();
    if (!fid->graph)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory creating the classifier graph");
    keel_status st = keel_model_build(fid->graph, model, &mo, &fid->io);
    if (st != KEEL_OK)
        return st;
    if (!fid->io.features || !fid->io.logits)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "model '%s' exposes no penultimate features to embed images in",
                         model);
    keel_graph_keep(fid->graph, fid->io.features);
    keel_graph_keep(fid->graph, fid->io.logits);
    keel_plan_opts po = {.devices = opts->device};
    st = keel_plan_compile(&fid->plan, fid->graph, ctx, &po);
    if (st == KEEL_OK)
        st = keel_weights_load(fid->plan, opts->weights);
    if (st != KEEL_OK)
        return st;
    int64_t shape[KEEL_MAX_DIMS];
    keel_node_shape(fid->io.logits, shape);
    fid->classes = (int)shape[1];
    fid->dim = (int)(keel_node_numel(fid->io.features) / fid->batch);
    int64_t image = (int64_t)fid->channels * fid->height * fid->width;
    fid->input = malloc((size_t)(fid->batch * image) * sizeof(float));
    fid->features = malloc((size_t)(fid->batch * fid->dim) * sizeof(float));
    fid->logits = malloc((size_t)(fid->batch * fid->classes) * sizeof(float));
    if (!fid->input || !fid->features || !fid->logits)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for the classifier's batch buffers");
    return KEEL_OK;
}

/* Raw [0, 1] real images, `count` of them, embedded and fitted. */
static keel_status fit_real(keel_fid *fid, keel_dataset *real, int64_t count)
{
    keel_status st = keel_dataset_set_normalization(real, NULL, NULL);
    if (st != KEEL_OK)
        return st;
    int64_t image = (int64_t)fid->channels * fid->height * fid->width;
    float *pixels = malloc((size_t)(count * image) * sizeof *pixels);
    float *features = malloc((size_t)(count * fid->dim) * sizeof *features);
    if (!pixels || !features)
        st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory embedding %lld real images", (long long)count);
    int32_t label;
    for (int64_t i = 0; i < count && st == KEEL_OK; i++)
        st = keel_dataset_get(real, i, pixels + i * image, &label);
    if (st == KEEL_OK)
        st = keel_fid_embed(fid, pixels, count, features, NULL, NULL);
    if (st == KEEL_OK)
        st = gaussian_fit(features, count, fid->dim, &fid->real);
    if (st == KEEL_OK) {
        fid->real_root = malloc((size_t)fid->dim * (size_t)fid->dim * sizeof *fid->real_root);
        st = fid->real_root ? matrix_sqrt(fid->real.cov, fid->dim, fid->real_root)
                            : keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for the real covariance's root");
    }
    free(pixels);
    free(features);
    return st;
}

keel_status keel_fid_create(keel_fid **out, keel_context *ctx, const keel_fid_opts *opts)
{
    if (!out || !ctx || !opts || !opts->weights || !opts->real)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_fid_create: out, ctx, opts, opts->weights and opts->real "
                         "are required");
    *out = NULL;
    if (opts->batch < 0 || opts->real_count < 0 || opts->confidence < 0 || opts->confidence >= 1)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_fid_create: batch and real_count must be >= 0 and "
                         "confidence in [0, 1)");
    int64_t count = opts->real_count ? opts->real_count : keel_dataset_size(opts->real);
    if (count > keel_dataset_size(opts->real))
        count = keel_dataset_size(opts->real);
    if (count < 2)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the real set needs at least 2 images, got %lld",
                         (long long)count);
    keel_fid *fid = calloc(1, sizeof *fid);
    if (!fid)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory creating the scorer");
    fid->batch = opts->batch ? opts->batch : 100;
    fid->confidence = opts->confidence > 0 ? opts->confidence : 0.9f;
    keel_dataset_image_shape(opts->real, &fid->channels, &fid->height, &fid->width);
    const char *model = opts->model ? opts->model : "cnn-small";
    keel_status st = read_normalization(fid, opts->weights);
    if (st == KEEL_OK)
        st = build_classifier(fid, ctx, opts, model);
    if (st == KEEL_OK)
        st = fit_real(fid, opts->real, count);
    if (st != KEEL_OK) {
        keel_fid_destroy(fid);
        return keel_fail_prefix(st, "scoring with %s (%s): ", model, opts->weights);
    }
    *out = fid;
    return KEEL_OK;
}

static void normalize_batch(const keel_fid *fid, const float *images, int64_t real, float *input)
{
    int64_t plane = (int64_t)fid->height * fid->width, image = fid->channels * plane;
    for (int64_t i = 0; i < real; i++)
        for (int c = 0; c < fid->channels; c++)
            for (int64_t p = 0; p < plane; p++) {
                float v = images[i * image + c * plane + p];
                input[i * image + c * plane + p] = fid->mean ? (v - fid->mean[c]) / fid->std[c] : v;
            }
    memset(input + real * image, 0, (size_t)((fid->batch - real) * image) * sizeof *input);
}

static void top_class(const float *logits, int classes, float *prob, int32_t *label)
{
    int best = 0;
    for (int k = 1; k < classes; k++)
        if (logits[k] > logits[best])
            best = k;
    double sum = 0;
    for (int k = 0; k < classes; k++)
        sum += exp((double)logits[k] - (double)logits[best]);
    if (prob)
        *prob = (float)(1.0 / sum);
    if (label)
        *label = best;
}

keel_status keel_fid_embed(keel_fid *fid, const float *images, int64_t count, float *features, float *max_prob,
                           int32_t *label)
{
    if (!fid || !images || !features || count < 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_fid_embed: scorer, images and features are required");
    int64_t image = (int64_t)fid->channels * fid->height * fid->width;
    for (int64_t start = 0; start < count; start += fid->batch) {
        int64_t real = count - start < fid->batch ? count - start : fid->batch;
        normalize_batch(fid, images + start * image, real, fid->input);
        keel_status st = keel_plan_set_input(fid->plan, fid->io.images, fid->input);
        if (st == KEEL_OK)
            st = keel_plan_forward(fid->plan, false);
        if (st == KEEL_OK)
            st = keel_plan_read(fid->plan, fid->io.features, fid->features);
        if (st == KEEL_OK)
            st = keel_plan_read(fid->plan, fid->io.logits, fid->logits);
        if (st != KEEL_OK)
            return st;
        memcpy(features + start * fid->dim, fid->features, (size_t)(real * fid->dim) * sizeof *features);
        for (int64_t i = 0; i < real && (max_prob || label); i++)
            top_class(fid->logits + i * fid->classes, fid->classes, max_prob ? &max_prob[start + i] : NULL,
                      label ? &label[start + i] : NULL);
    }
    return KEEL_OK;
}

static void count_confident(const keel_fid *fid, const float *prob, const int32_t *label, int64_t count,
                            keel_fid_score *out)
{
    int64_t confident = 0;
    bool seen[1024] = {false};
    out->classes = 0;
    for (int64_t i = 0; i < count; i++) {
        confident += prob[i] > fid->confidence;
        if (label[i] >= 0 && label[i] < 1024 && !seen[label[i]]) {
            seen[label[i]] = true;
            out->classes++;
        }
    }
    out->confident = (double)confident / (double)count;
}

keel_status keel_fid_score_images(keel_fid *fid, const float *images, int64_t count, keel_fid_score *out)
{
    if (!fid || !images || !out)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_fid_score_images: scorer, images and out are required");
    if (count < 2)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "scoring needs at least 2 images, got %lld", (long long)count);
    memset(out, 0, sizeof *out);
    float *features = malloc((size_t)(count * fid->dim) * sizeof *features);
    float *prob = malloc((size_t)count * sizeof *prob);
    int32_t *label = malloc((size_t)count * sizeof *label);
    keel_status st = features && prob && label
                         ? keel_fid_embed(fid, images, count, features, prob, label)
                         : keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory scoring %lld images", (long long)count);
    gaussian fake = {0};
    if (st == KEEL_OK)
        st = gaussian_fit(features, count, fid->dim, &fake);
    if (st == KEEL_OK)
        st = frechet(&fid->real, fid->real_root, &fake, &out->distance);
    if (st == KEEL_OK) {
        out->samples = count;
        count_confident(fid, prob, label, count, out);
    }
    gaussian_free(&fake);
    free(features);
    free(prob);
    free(label);
    return st;
}
