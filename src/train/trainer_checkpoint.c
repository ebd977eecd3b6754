/* Training checkpoints: the weights, the optimiser's state and enough
 * metadata (counters, RNG position, history, normalisation, augmentation)
 * for keel_trainer_resume to continue a run where keel_trainer_save left
 * it, and for `keel eval` to feed the model what it was trained on. */
#include "train/train_internal.h"
#include "train/trainer_internal.h"
#include "keel/keel.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static keel_status set_floats(keel_st_writer *w, const char *key, const float *v, int n)
{
    char buf[1024];
    size_t used = 0;
    for (int i = 0; i < n && used < sizeof buf; i++) {
        char number[32];
        used += (size_t)snprintf(buf + used, sizeof buf - used, "%s%s", i ? "," : "",
                                 keel_float_str(v[i], number, sizeof number));
    }
    return keel_st_writer_set_metadata(w, key, buf);
}

/* "epoch,train_loss,seconds,images/s,lr,evaluated,samples,loss,top1,top5;..." */
static char *format_history(const keel_trainer *t)
{
    size_t size = (size_t)t->n_history * 256 + 1;
    char *buf = malloc(size);
    if (!buf)
        return NULL;
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < t->n_history; i++) {
        const keel_epoch_stats *s = &t->history[i];
        used += (size_t)snprintf(buf + used, size - used, "%s%d,%.9g,%.6g,%.6g,%.9g,%d,%lld,%.9g,%.9g,%.9g,%.6g",
                                 i ? ";" : "", s->epoch, s->train_loss, s->seconds, s->images_per_second,
                                 (double)s->lr, s->evaluated, (long long)s->eval.samples, s->eval.loss, s->eval.top1,
                                 s->eval.top5, s->eval_seconds);
    }
    return buf;
}

static keel_status parse_history(keel_trainer *t, const char *text, const char *path)
{
    t->n_history = 0;
    const char *c = text;
    while (c && *c) {
        keel_epoch_stats s = {0};
        int evaluated = 0, used = 0;
        long long samples = 0;
        double lr = 0;
        int n = sscanf(c, "%d,%lf,%lf,%lf,%lf,%d,%lld,%lf,%lf,%lf,%lf%n", &s.epoch, &s.train_loss, &s.seconds,
                       &s.images_per_second, &lr, &evaluated, &samples, &s.eval.loss, &s.eval.top1, &s.eval.top5,
                       &s.eval_seconds, &used);
        if (n != 11 || (c[used] != ';' && c[used] != '\0'))
            return keel_fail(KEEL_ERR_FORMAT, "%s: the history metadata is malformed near '%.40s'", path, c);
        s.lr = (float)lr;
        s.evaluated = evaluated != 0;
        s.eval.samples = samples;
        s.eval.has_top5 = t->images || t->logits_classes > 10;
        keel_status st = keel_trainer_add_history(t, &s);
        if (st != KEEL_OK)
            return st;
        c += used;
        if (*c == ';')
            c++;
    }
    return KEEL_OK;
}

/* Image datasets: the normalisation the augmentation applied (what `keel
 * eval` needs to feed the model the same inputs) and the crops. */
static keel_status write_image_metadata(keel_trainer *t, keel_st_writer *w)
{
    const keel_augment_opts *o = &t->train_augment;
    char text[256];
    keel_status st = keel_st_writer_set_metadata(w, "data", "images");
    if (st == KEEL_OK && !o->mean_image) st = set_floats(w, "normalize.mean", o->mean, 3);
    if (st == KEEL_OK && o->mean_image)
        st = keel_st_writer_set_metadataf(w, "normalize.mean_image", "3x%dx%d", o->crop_size, o->crop_size);
    if (st == KEEL_OK) st = set_floats(w, "normalize.std", o->std, 3);
    if (st == KEEL_OK) st = keel_st_writer_set_metadata(w, "augment.train", keel_trainer_augment_text(o, text, sizeof text));
    if (st == KEEL_OK && t->opts.test_images)
        st = keel_st_writer_set_metadata(w, "augment.test", keel_trainer_augment_text(&t->test_augment, text, sizeof text));
    return st;
}

static keel_status write_metadata(keel_trainer *t, keel_st_writer *w)
{
    char schedule[512];
    keel_schedule_describe(&t->opts.schedule, t->opts.optimizer.lr, t->steps_per_epoch, keel_trainer_total_steps(t),
                           schedule, sizeof schedule);
    keel_status st = keel_st_writer_set_metadata(w, "format", "pt");
    if (st == KEEL_OK) st = keel_st_writer_set_metadata(w, "keel.version", keel_version());
    if (st == KEEL_OK) st = keel_st_writer_set_metadata(w, "keel.kind", "checkpoint");
    if (st == KEEL_OK) st = keel_st_writer_set_metadata(w, "model", t->model_name);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "epoch", "%d", t->epochs_done);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "epochs", "%d", t->opts.epochs);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "global_step", "%lld", (long long)t->global_step);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "batch", "%lld", (long long)t->opts.batch);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "seed", "%llu", (unsigned long long)t->opts.seed);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "rng.plan_step", "%llu", (unsigned long long)t->plan->step);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "loader.seed", "%llu", (unsigned long long)t->opts.seed);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "loader.epoch", "%d", t->epochs_done);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "threads", "%d", keel_context_threads(t->ctx));
    if (st == KEEL_OK) st = keel_st_writer_set_metadata(w, "device", t->device);
    if (st == KEEL_OK) st = keel_st_writer_set_metadata(w, "schedule", schedule);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "input", "%dx%dx%d", t->channels, t->height, t->width);
    if (st == KEEL_OK) st = keel_st_writer_set_metadataf(w, "classes", "%lld", (long long)t->logits_classes);
    if (st == KEEL_OK && t->mean) st = set_floats(w, "normalize.mean", t->mean, t->channels);
    if (st == KEEL_OK && t->std) st = set_floats(w, "normalize.std", t->std, t->channels);
    if (st == KEEL_OK && t->images) st = write_image_metadata(t, w);
    if (st == KEEL_OK) {
        char *history = format_history(t);
        st = history ? keel_st_writer_set_metadata(w, "history", history)
                     : keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory saving the history");
        free(history);
    }
    return st;
}

keel_status keel_trainer_save(keel_trainer *t, const char *path)
{
    if (!t || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_trainer_save: trainer and path are required");
    keel_st_writer *w = NULL;
    float *params = NULL, *state = NULL;
    keel_status st = keel_st_writer_new(&w);
    if (st == KEEL_OK)
        st = keel_weights_export(t->plan, w, &params);
    if (st == KEEL_OK)
        st = keel_optimizer_export(t->optimizer, w, &state);
    if (st == KEEL_OK)
        st = write_metadata(t, w);
    if (st == KEEL_OK)
        st = keel_st_writer_write(w, path);
    keel_st_writer_free(w);
    free(params);
    free(state);
    return st == KEEL_OK ? st : keel_fail_prefix(st, "saving checkpoint %s: ", path);
}

static keel_status read_count(const keel_st_file *f, const char *key, int64_t most, int64_t *value)
{
    keel_status st = keel_st_file_metadata_i64(f, key, value);
    if (st != KEEL_OK)
        return keel_fail_prefix(st, "%s: ", keel_st_file_path(f));
    if (*value < 0 || *value > most)
        return keel_fail(KEEL_ERR_FORMAT, "%s: metadata '%s' is %lld, outside [0, %lld]", keel_st_file_path(f), key,
                         (long long)*value, (long long)most);
    return KEEL_OK;
}

/* Settings that must match for a bit-identical continuation. */
static void warn_differences(keel_trainer *t, const keel_st_file *f)
{
    int64_t v = 0;
    if (keel_st_file_metadata_i64(f, "batch", &v) == KEEL_OK && v != t->opts.batch)
        keel_context_log(t->ctx, KEEL_LOG_WARN, "%s was trained with batch %lld; continuing with %lld",
                         keel_st_file_path(f), (long long)v, (long long)t->opts.batch);
    if (keel_st_file_metadata_i64(f, "threads", &v) == KEEL_OK && v != keel_context_threads(t->ctx))
        keel_context_log(t->ctx, KEEL_LOG_WARN, "%s was trained with %lld threads, this run uses %d: results will "
                         "not be bit-identical to an uninterrupted run", keel_st_file_path(f), (long long)v,
                         keel_context_threads(t->ctx));
    uint64_t seed = 0;
    if (keel_st_file_metadata_u64(f, "seed", &seed) == KEEL_OK && seed != t->opts.seed)
        keel_context_log(t->ctx, KEEL_LOG_WARN, "%s was trained with seed %llu, this run uses %llu (shuffling "
                         "and dropout differ from an uninterrupted run)", keel_st_file_path(f),
                         (unsigned long long)seed, (unsigned long long)t->opts.seed);
    const char *augment = keel_st_file_metadata(f, "augment.train");
    char text[256];
    if (t->images && augment && strcmp(augment, keel_trainer_augment_text(&t->train_augment, text, sizeof text)) != 0)
        keel_context_log(t->ctx, KEEL_LOG_WARN, "%s was trained with %s; continuing with %s", keel_st_file_path(f),
                         augment, text);
    const char *lr = keel_st_file_metadata(f, "optimizer.lr");
    if (lr && strtof(lr, NULL) != t->opts.optimizer.lr)
        keel_context_log(t->ctx, KEEL_LOG_WARN, "%s was trained with learning rate %s; continuing with %g",
                         keel_st_file_path(f), lr, (double)t->opts.optimizer.lr);
}

static keel_status resume(keel_trainer *t, const keel_st_file *f)
{
    const char *path = keel_st_file_path(f);
    const char *kind = keel_st_file_metadata(f, "keel.kind");
    if (!kind || strcmp(kind, "checkpoint") != 0 || !keel_st_file_metadata(f, "optimizer"))
        return keel_fail(KEEL_ERR_FORMAT, "%s is not a Keel training checkpoint (no optimizer state or epoch); "
                         "a weights file can be evaluated with `keel eval --weights`", path);
    const char *kind_saved = keel_st_file_metadata(f, "optimizer");
    if (strcmp(kind_saved, keel_optimizer_name(t->opts.optimizer.kind)) != 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s holds %s state; this run uses %s (pass --optimizer %s to "
                         "continue it)", path, kind_saved, keel_optimizer_name(t->opts.optimizer.kind), kind_saved);
    int64_t epoch = 0, step = 0, plan_step = 0;
    keel_status st = read_count(f, "epoch", 1 << 30, &epoch);
    if (st == KEEL_OK)
        st = read_count(f, "global_step", INT64_MAX / 2, &step);
    if (st == KEEL_OK)
        st = read_count(f, "rng.plan_step", INT64_MAX / 2, &plan_step);
    if (st != KEEL_OK)
        return st;
    st = keel_weights_import(t->plan, f, true);
    if (st != KEEL_OK) {
        const char *model = keel_st_file_metadata(f, "model");
        if (model && strcmp(model, t->model_name) != 0)
            return keel_fail_prefix(st, "the checkpoint was saved by model '%s', not '%s': ", model, t->model_name);
        return st;
    }
    st = keel_optimizer_import(t->optimizer, f);
    if (st != KEEL_OK)
        return st;
    const char *history = keel_st_file_metadata(f, "history");
    st = parse_history(t, history ? history : "", path);
    if (st != KEEL_OK)
        return st;
    warn_differences(t, f);
    t->epochs_done = (int)epoch;
    t->global_step = step;
    t->plan->step = (uint64_t)plan_step;
    return KEEL_OK;
}

keel_status keel_trainer_resume(keel_trainer *t, const char *path)
{
    if (!t || !path)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_trainer_resume: trainer and path are required");
    keel_st_file *f = NULL;
    keel_status st = keel_st_file_load(&f, path);
    if (st == KEEL_OK)
        st = resume(t, f);
    keel_st_file_free(f);
    return st == KEEL_OK ? st : keel_fail_prefix(st, "resuming: ");
}
