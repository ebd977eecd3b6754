/* SGD (with momentum, Nesterov and weight decay) and Adam, with PyTorch's
 * semantics (see keel/train.h and ops/math.h for the update rules). The
 * state blocks mirror the plan's parameter blocks, so one step is a single
 * fused backend call per device over all of its trainable parameters. */
#include "train/train_internal.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

keel_optimizer_opts keel_optimizer_defaults(keel_optimizer_kind kind)
{
    keel_optimizer_opts o = {.kind = kind};
    if (kind == KEEL_OPTIMIZER_ADAM) {
        o.lr = 1e-3f;
        o.beta1 = 0.9f;
        o.beta2 = 0.999f;
        o.eps = 1e-8f;
    } else {
        o.lr = 0.05f;
        o.momentum = 0.9f;
    }
    return o;
}

const char *keel_optimizer_name(keel_optimizer_kind kind)
{
    return kind == KEEL_OPTIMIZER_ADAM ? "adam" : "sgd";
}

keel_status keel_optimizer_parse(const char *name, keel_optimizer_kind *kind)
{
    if (name && strcmp(name, "sgd") == 0)
        *kind = KEEL_OPTIMIZER_SGD;
    else if (name && strcmp(name, "adam") == 0)
        *kind = KEEL_OPTIMIZER_ADAM;
    else
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "unknown optimizer '%s'; use sgd or adam", name ? name : "");
    return KEEL_OK;
}

static bool in_unit(float x) { return x >= 0.0f && x < 1.0f; }

static keel_status check_opts(const keel_optimizer_opts *o)
{
    if (o->kind != KEEL_OPTIMIZER_SGD && o->kind != KEEL_OPTIMIZER_ADAM)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "unknown optimizer kind %d", (int)o->kind);
    if (!(o->lr > 0.0f) || !isfinite(o->lr))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the learning rate must be a positive number, got %g",
                         (double)o->lr);
    if (!(o->weight_decay >= 0.0f) || !isfinite(o->weight_decay))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "weight decay must be >= 0, got %g", (double)o->weight_decay);
    if (o->kind == KEEL_OPTIMIZER_SGD) {
        if (!in_unit(o->momentum))
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "SGD momentum must lie in [0, 1), got %g",
                             (double)o->momentum);
        if (o->nesterov && o->momentum == 0.0f)
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "Nesterov momentum needs a momentum above 0");
        return KEEL_OK;
    }
    if (!in_unit(o->beta1) || !in_unit(o->beta2))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "Adam's betas must lie in [0, 1), got %g and %g",
                         (double)o->beta1, (double)o->beta2);
    if (!(o->eps > 0.0f))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "Adam's eps must be positive, got %g", (double)o->eps);
    return KEEL_OK;
}

/* The block has 16-float alignment gaps between tensors that nothing
 * initialises; zeroed, the fused update keeps them at zero (no NaN from
 * garbage, nothing uninitialised read). */
static keel_status zero_param_gaps(keel_plan *plan)
{
    for (int k = 0; k < plan->n_params; k++) {
        const keel_plan_param *p = &plan->params[k];
        if (!p->node->trainable)
            continue;
        int64_t gap = ((p->numel + 15) / 16) * 16 - p->numel;
        const keel_plan_device *dev = &plan->devices[p->device];
        if (gap > 0) {
            keel_status st = dev->backend->fill(dev->device, keel_plan_param_ptr(plan, p) + p->numel, 0.0f,
                                                (size_t)gap);
            if (st != KEEL_OK)
                return st;
        }
    }
    return KEEL_OK;
}

keel_status keel_optimizer_create(keel_optimizer **out, keel_plan *plan, const keel_optimizer_opts *opts)
{
    if (!out || !plan || !opts)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_optimizer_create: out, plan and opts are required");
    *out = NULL;
    keel_status st = check_opts(opts);
    if (st != KEEL_OK)
        return st;
    if (plan->param_floats == 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "the plan has no trainable parameters to optimise");
    if (!plan->graph->has_backward)
        return keel_fail(KEEL_ERR_STATE, "the plan has no backward pass (call keel_graph_backward before "
                                         "keel_plan_compile)");
    const keel_backend *be = plan->backend; /* every device of a plan has the same */
    if ((opts->kind == KEEL_OPTIMIZER_SGD && !be->sgd_update) || (opts->kind == KEEL_OPTIMIZER_ADAM && !be->adam_update))
        return keel_fail(KEEL_ERR_UNSUPPORTED, "backend '%s' has no %s update", be->name,
                         keel_optimizer_name(opts->kind));
    keel_optimizer *opt = calloc(1, sizeof *opt);
    if (!opt)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory creating the optimiser");
    opt->plan = plan;
    opt->opts = *opts;
    opt->n_state = opts->kind == KEEL_OPTIMIZER_ADAM ? 2 : 1;
    for (int i = 0; i < opt->n_state && st == KEEL_OK; i++) {
        st = keel_plan_blocks_alloc(plan, true, &opt->state[i]);
        if (st == KEEL_OK)
            st = keel_plan_blocks_fill(plan, true, opt->state[i], 0.0f);
        else
            keel_fail_prefix(st, "optimiser state: ");
    }
    if (st == KEEL_OK)
        st = zero_param_gaps(plan);
    if (st != KEEL_OK) {
        keel_optimizer_destroy(opt);
        return st;
    }
    *out = opt;
    return KEEL_OK;
}

void keel_optimizer_destroy(keel_optimizer *opt)
{
    if (!opt)
        return;
    for (int i = 0; i < opt->n_state; i++)
        keel_plan_blocks_free(opt->plan, opt->state[i]);
    free(opt);
}

keel_status keel_optimizer_step(keel_optimizer *opt, float lr)
{
    if (!opt)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_optimizer_step: optimizer is NULL");
    if (!(lr >= 0.0f) || !isfinite(lr))
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "learning rate %g is not a number >= 0", (double)lr);
    keel_plan *plan = opt->plan;
    const keel_optimizer_opts *o = &opt->opts;
    /* Bias corrections in double: beta2^t is 1 - 1e-3*t for small t, and
     * float would round its complement badly. */
    double t = (double)(opt->steps + 1);
    float c1 = (float)(1.0 - pow(o->beta1, t));
    float c2 = (float)(1.0 - pow(o->beta2, t));
    keel_status st = KEEL_OK;
    for (int d = 0; d < plan->n_devices && st == KEEL_OK; d++) {
        const keel_plan_device *dev = &plan->devices[d];
        if (dev->param_floats == 0)
            continue;
        if (o->kind == KEEL_OPTIMIZER_SGD)
            st = dev->backend->sgd_update(dev->device, plan->param_blocks[d], opt->state[0][d], plan->grad_blocks[d],
                                          dev->param_floats, lr, o->momentum, o->weight_decay, o->nesterov);
        else
            st = dev->backend->adam_update(dev->device, plan->param_blocks[d], opt->state[0][d], opt->state[1][d],
                                           plan->grad_blocks[d], dev->param_floats, lr, o->beta1, o->beta2, o->eps,
                                           o->weight_decay, c1, c2);
    }
    if (st != KEEL_OK)
        return keel_fail_prefix(st, "%s step: ", keel_optimizer_name(o->kind));
    opt->steps++;
    return KEEL_OK;
}

int64_t keel_optimizer_steps(const keel_optimizer *opt) { return opt ? opt->steps : 0; }

const keel_optimizer_opts *keel_optimizer_get_opts(const keel_optimizer *opt) { return opt ? &opt->opts : NULL; }

const char *keel_optimizer_state_name(const keel_optimizer *opt, int which)
{
    if (opt->opts.kind == KEEL_OPTIMIZER_SGD)
        return "momentum_buffer";
    return which == 0 ? "exp_avg" : "exp_avg_sq";
}

/* ---- checkpoint state ------------------------------------------------------ */

static void state_tensor_name(const keel_optimizer *opt, const keel_plan_param *p, int which, char *buf,
                              size_t size)
{
    snprintf(buf, size, "optimizer.%s.%s", p->node->name, keel_optimizer_state_name(opt, which));
}

keel_status keel_optimizer_export(const keel_optimizer *opt, keel_st_writer *w, float **host)
{
    keel_plan *plan = opt->plan;
    size_t floats = (size_t)plan->param_floats;
    *host = malloc((size_t)opt->n_state * floats * sizeof(float) + 1);
    if (!*host)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory saving the optimiser state");
    keel_status st = KEEL_OK;
    for (int i = 0; i < opt->n_state && st == KEEL_OK; i++)
        st = keel_plan_blocks_download(plan, true, opt->state[i], *host + i * floats);
    for (int k = 0; k < plan->n_params && st == KEEL_OK; k++) {
        const keel_plan_param *p = &plan->params[k];
        if (!p->node->trainable)
            continue;
        for (int i = 0; i < opt->n_state && st == KEEL_OK; i++) {
            char name[512];
            state_tensor_name(opt, p, i, name, sizeof name);
            st = keel_st_writer_add(w, name, KEEL_ST_F32, p->node->ndim, p->node->shape,
                                    *host + i * floats + p->offset);
        }
    }
    const keel_optimizer_opts *o = &opt->opts;
    if (st == KEEL_OK)
        st = keel_st_writer_set_metadata(w, "optimizer", keel_optimizer_name(o->kind));
    if (st == KEEL_OK)
        st = keel_st_writer_set_metadataf(w, "optimizer.steps", "%lld", (long long)opt->steps);
    char a[32], b[32];
    if (st == KEEL_OK)
        st = keel_st_writer_set_metadata(w, "optimizer.lr", keel_float_str(o->lr, a, sizeof a));
    if (st == KEEL_OK)
        st = keel_st_writer_set_metadata(w, "optimizer.weight_decay", keel_float_str(o->weight_decay, a, sizeof a));
    if (st == KEEL_OK && o->kind == KEEL_OPTIMIZER_SGD) {
        st = keel_st_writer_set_metadata(w, "optimizer.momentum", keel_float_str(o->momentum, a, sizeof a));
        if (st == KEEL_OK)
            st = keel_st_writer_set_metadata(w, "optimizer.nesterov", o->nesterov ? "true" : "false");
    } else if (st == KEEL_OK) {
        st = keel_st_writer_set_metadataf(w, "optimizer.betas", "%s,%s", keel_float_str(o->beta1, a, sizeof a),
                                          keel_float_str(o->beta2, b, sizeof b));
        if (st == KEEL_OK)
            st = keel_st_writer_set_metadata(w, "optimizer.eps", keel_float_str(o->eps, a, sizeof a));
    }
    return st;
}

keel_status keel_optimizer_import(keel_optimizer *opt, const keel_st_file *f)
{
    keel_plan *plan = opt->plan;
    const char *kind = keel_st_file_metadata(f, "optimizer");
    const char *mine = keel_optimizer_name(opt->opts.kind);
    if (!kind)
        return keel_fail(KEEL_ERR_FORMAT, "%s: no optimizer state (a weights file, not a training checkpoint)",
                         keel_st_file_path(f));
    if (strcmp(kind, mine) != 0)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s holds %s state; this run uses %s (pass --optimizer %s to "
                         "continue it)", keel_st_file_path(f), kind, mine, kind);
    int64_t steps = 0;
    keel_status st = keel_st_file_metadata_i64(f, "optimizer.steps", &steps);
    if (st != KEEL_OK)
        return keel_fail_prefix(st, "%s: ", keel_st_file_path(f));
    if (steps < 0)
        return keel_fail(KEEL_ERR_FORMAT, "%s: optimizer.steps is negative (%lld)", keel_st_file_path(f),
                         (long long)steps);
    size_t floats = (size_t)plan->param_floats;
    float *host = calloc((size_t)opt->n_state * floats + 16, sizeof(float));
    if (!host)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory loading the optimiser state");
    for (int k = 0; k < plan->n_params && st == KEEL_OK; k++) {
        const keel_plan_param *p = &plan->params[k];
        if (!p->node->trainable)
            continue;
        for (int i = 0; i < opt->n_state && st == KEEL_OK; i++) {
            char name[512];
            state_tensor_name(opt, p, i, name, sizeof name);
            st = keel_st_file_read(f, name, KEEL_ST_F32, p->node->ndim, p->node->shape, host + i * floats + p->offset);
        }
    }
    for (int i = 0; i < opt->n_state && st == KEEL_OK; i++)
        st = keel_plan_blocks_upload(plan, true, opt->state[i], host + i * floats);
    free(host);
    if (st == KEEL_OK)
        opt->steps = steps;
    return st;
}
