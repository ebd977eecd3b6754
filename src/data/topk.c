/* Top-1 and top-5 error as ILSVRC reports them, with the softmax outputs of a
 * sample's crops averaged first (AlexNet's ten-crop test-time ensemble). */
#include "data/image_internal.h"
#include <math.h>
#include <stdlib.h>

/* Adds the softmax of one row of logits, divided by `views`, to probs. */
static void add_softmax(const float *logits, int classes, int views, double *probs)
{
    double top = logits[0];
    for (int c = 1; c < classes; c++)
        if (logits[c] > top)
            top = logits[c];
    double total = 0.0;
    for (int c = 0; c < classes; c++)
        total += exp((double)logits[c] - top);
    for (int c = 0; c < classes; c++)
        probs[c] += exp((double)logits[c] - top) / total / views;
}

/* Classes ranked above the label: higher scores, and equal scores of lower
 * index (argmax takes the first maximum). */
static int rank_of(const double *probs, int classes, int label)
{
    int rank = 0;
    for (int c = 0; c < classes; c++)
        rank += probs[c] > probs[label] || (probs[c] == probs[label] && c < label);
    return rank;
}

keel_status keel_topk_update(keel_topk *acc, const float *logits, int64_t samples, int views, int classes,
                             const int32_t *labels)
{
    if (!acc || (samples > 0 && (!logits || !labels)) || samples < 0 || views < 1 || classes < 1)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_topk_update: need an accumulator, logits and labels, "
                         "views >= 1 and classes >= 1 (got %d views, %d classes)", views, classes);
    for (int64_t i = 0; i < samples; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "sample %lld has label %d outside [0, %d)", (long long)i,
                             labels[i], classes);
    double *probs = malloc((size_t)classes * sizeof *probs);
    if (!probs)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %d probabilities", classes);
    for (int64_t i = 0; i < samples; i++) {
        for (int c = 0; c < classes; c++)
            probs[c] = 0.0;
        for (int v = 0; v < views; v++)
            add_softmax(logits + (size_t)(i * views + v) * classes, classes, views, probs);
        int rank = rank_of(probs, classes, labels[i]);
        acc->top1_errors += rank >= 1;
        acc->top5_errors += rank >= 5;
    }
    acc->samples += samples;
    free(probs);
    return KEEL_OK;
}

double keel_topk_top1_error(const keel_topk *acc)
{
    return acc && acc->samples > 0 ? (double)acc->top1_errors / (double)acc->samples : 0.0;
}

double keel_topk_top5_error(const keel_topk *acc)
{
    return acc && acc->samples > 0 ? (double)acc->top5_errors / (double)acc->samples : 0.0;
}
