/* The executor: runs a compiled plan, on one thread per device when the plan
 * spans several; reads and writes inputs, outputs and parameters. */
#include "graph/plan_internal.h"
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Host time after the device has finished everything queued so far. */
static double device_clock(const keel_plan_device *dev)
{
    if (dev->backend->sync)
        dev->backend->sync(dev->device);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Queues a list of copies on `dev` (ended by bytes == 0; NULL: none). */
static keel_status run_copies(const keel_plan *plan, keel_plan_device *dev, const keel_plan_copy *copies)
{
    for (const keel_plan_copy *c = copies; c && c->bytes; c++) {
        double started = plan->profiling ? device_clock(dev) : 0.0;
        keel_status st = dev->backend->copy_between(dev->device, c->dst_device, c->dst, c->src_device, c->src,
                                                    (size_t)c->bytes);
        if (st != KEEL_OK)
            return keel_fail_prefix(st, "copying '%s' on %s: ", c->node->name, dev->name);
        if (plan->profiling)
            dev->copy_seconds += device_clock(dev) - started;
    }
    return KEEL_OK;
}

/* Runs the node at schedule position s on its device. */
static keel_status run_node(keel_plan *plan, int s, bool training)
{
    keel_node *x = plan->sched[s];
    keel_plan_device *dev = &plan->devices[plan->device_of[s]];
    if (plan->copies_before) {
        keel_status st = run_copies(plan, dev, plan->copies_before[s]);
        if (st != KEEL_OK)
            return st;
    }
    if (!keel_op_get(x->op)->view) {
        keel_launch launch = {
            .node = x,
            .out = plan->out_ptr[x->id],
            .in = plan->in_ptrs[s],
            .aux = plan->aux_ptr[x->id],
            .fwd_aux = x->fwd ? plan->aux_ptr[x->fwd->id] : NULL,
            .workspace = dev->workspace,
            .workspace_bytes = dev->workspace_bytes,
            .algo = plan->algo[s],
            .device = dev->device,
            .training = training,
            .seed = plan->seed,
            .step = plan->step,
        };
        double started = plan->profiling ? device_clock(dev) : 0.0;
        keel_status st = dev->backend->run[x->op](&launch);
        if (st != KEEL_OK)
            return keel_fail_prefix(st, "node '%s' (%s) on %s: ", x->name, keel_op_get(x->op)->name, dev->name);
        if (plan->profiling) {
            double seconds = device_clock(dev) - started;
            plan->node_seconds[s] += seconds;
            plan->node_runs[s]++;
            dev->busy_seconds += seconds;
        }
    }
    if (plan->node_events && plan->node_events[s]) {
        keel_status st = dev->backend->event_record(dev->device, plan->node_events[s]);
        if (st != KEEL_OK)
            return st;
    }
    if (plan->poison_dead)
        for (const keel_poison *d = plan->dying[s]; d->ptr; d++)
            dev->backend->fill(dev->device, d->ptr, NAN, (size_t)d->count);
    if (x->is_backward && plan->on_backward_node)
        plan->on_backward_node(plan, x, plan->on_backward_user);
    return KEEL_OK;
}

/* ---- several devices: one worker thread each ------------------------------
 * A worker runs its device's positions in schedule order; before a node it
 * waits until the nodes it reads on other devices have finished in this
 * range. Every dependency points to an earlier position, so the earliest
 * unfinished node can always run: no deadlock. A failure anywhere wakes
 * every waiter, so no thread hangs on a node that will never finish. */

struct keel_workers {
    pthread_mutex_t lock;
    pthread_cond_t wake;        /* a new range, a finished node, a failure, quit */
    pthread_cond_t idle;        /* a worker finished its part of the range */
    pthread_t *threads;
    int n_started;
    uint64_t generation;        /* one per range */
    uint64_t *done;             /* by position: the generation it last finished in */
    int begin, end;
    bool training;
    int busy;                   /* workers still in the current range */
    bool failed, quit;
    keel_status status;
    char error[1024];           /* the first failure's message (errors are per thread) */
};

typedef struct worker_arg {
    keel_plan *plan;
    int device;
} worker_arg;

static bool wait_for_deps(keel_workers *w, const keel_plan *plan, int s, uint64_t generation)
{
    for (const int *q = plan->cross_deps[s]; *q >= 0; q++) {
        if (*q < w->begin || *q >= w->end)
            continue; /* finished in an earlier range */
        while (w->done[*q] != generation && !w->failed)
            pthread_cond_wait(&w->wake, &w->lock);
        if (w->failed)
            return false;
    }
    return true;
}

/* On devices that queue their work, a node queued after its inputs' nodes
 * were queued must still wait on the device until they have run. Nodes of
 * earlier ranges are ordered by the range's start event. */
static keel_status queue_waits(const keel_workers *w, const keel_plan *plan, int s)
{
    if (!plan->node_events)
        return KEEL_OK;
    const keel_plan_device *dev = &plan->devices[plan->device_of[s]];
    for (const int *q = plan->cross_deps[s]; *q >= 0; q++) {
        if (*q < w->begin || *q >= w->end)
            continue;
        keel_status st = dev->backend->event_wait(dev->device, plan->node_events[*q]);
        if (st != KEEL_OK)
            return st;
    }
    return KEEL_OK;
}

static void *worker_main(void *arg_v)
{
    worker_arg *arg = arg_v;
    keel_plan *plan = arg->plan;
    keel_workers *w = plan->workers;
    const keel_plan_device *dev = &plan->devices[arg->device];
    uint64_t seen = 0;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (w->generation == seen && !w->quit)
            pthread_cond_wait(&w->wake, &w->lock);
        if (w->quit)
            break;
        seen = w->generation;
        for (int k = 0; k < dev->n_positions && !w->failed; k++) {
            int s = dev->positions[k];
            if (s < w->begin || s >= w->end)
                continue;
            if (!wait_for_deps(w, plan, s, seen))
                break;
            bool training = w->training;
            pthread_mutex_unlock(&w->lock);
            keel_status st = queue_waits(w, plan, s);
            if (st == KEEL_OK)
                st = run_node(plan, s, training);
            pthread_mutex_lock(&w->lock);
            if (st != KEEL_OK && !w->failed) {
                w->failed = true;
                w->status = st;
                snprintf(w->error, sizeof w->error, "%s", keel_last_error());
            }
            w->done[s] = seen;
            pthread_cond_broadcast(&w->wake);
        }
        w->busy--;
        pthread_cond_signal(&w->idle);
    }
    pthread_mutex_unlock(&w->lock);
    free(arg);
    return NULL;
}

keel_status keel_workers_start(keel_plan *plan)
{
    keel_workers *w = calloc(1, sizeof *w);
    if (!w)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory starting device threads");
    w->done = calloc((size_t)plan->n_sched + 1, sizeof *w->done);
    w->threads = calloc((size_t)plan->n_devices, sizeof *w->threads);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    pthread_cond_init(&w->idle, NULL);
    plan->workers = w;
    if (!w->done || !w->threads)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory starting device threads");
    for (int d = 0; d < plan->n_devices; d++) {
        worker_arg *arg = malloc(sizeof *arg);
        if (!arg)
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory starting device threads");
        *arg = (worker_arg){plan, d};
        if (pthread_create(&w->threads[d], NULL, worker_main, arg) != 0) {
            free(arg);
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot start the thread of %s", plan->devices[d].name);
        }
        w->n_started++;
    }
    return KEEL_OK;
}

void keel_workers_stop(keel_plan *plan)
{
    keel_workers *w = plan->workers;
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->quit = true;
    pthread_cond_broadcast(&w->wake);
    pthread_mutex_unlock(&w->lock);
    for (int d = 0; d < w->n_started; d++)
        pthread_join(w->threads[d], NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->wake);
    pthread_cond_destroy(&w->idle);
    free(w->threads);
    free(w->done);
    free(w);
    plan->workers = NULL;
}

/* Devices that queue their work: every device starts a range after what
 * every device has queued before it (inputs, each device's parameter
 * update, which others may read), and devices[0] continues after every
 * device's part of it (it reads their results and copies gradients), so
 * ranges and steps stay ordered on the devices as they are on the host.
 * join makes devices[0] wait for all; fork makes all wait for devices[0]. */
static keel_status fork_queues(keel_plan *plan)
{
    const keel_backend *be = plan->backend;
    keel_status st = be->event_record(plan->devices[0].device, plan->start_event);
    for (int d = 1; d < plan->n_devices && st == KEEL_OK; d++)
        st = be->event_wait(plan->devices[d].device, plan->start_event);
    return st;
}

static keel_status join_queues(keel_plan *plan)
{
    const keel_backend *be = plan->backend;
    keel_status st = KEEL_OK;
    for (int d = 1; d < plan->n_devices && st == KEEL_OK; d++) {
        st = be->event_record(plan->devices[d].device, plan->end_events[d]);
        if (st == KEEL_OK)
            st = be->event_wait(plan->devices[0].device, plan->end_events[d]);
    }
    return st;
}

static keel_status run_on_workers(keel_plan *plan, int begin, int end, bool training)
{
    keel_workers *w = plan->workers;
    if (plan->node_events) {
        keel_status st = join_queues(plan);
        if (st == KEEL_OK)
            st = fork_queues(plan);
        if (st != KEEL_OK)
            return st;
    }
    pthread_mutex_lock(&w->lock);
    w->begin = begin;
    w->end = end;
    w->training = training;
    w->failed = false;
    w->busy = w->n_started;
    w->generation++;
    pthread_cond_broadcast(&w->wake);
    while (w->busy > 0)
        pthread_cond_wait(&w->idle, &w->lock);
    keel_status st = w->failed ? w->status : KEEL_OK;
    if (w->failed)
        keel_fail(st, "%s", w->error);
    pthread_mutex_unlock(&w->lock);
    if (st == KEEL_OK && plan->node_events)
        st = join_queues(plan);
    return st;
}

keel_status keel_plan_run_range(keel_plan *plan, int begin, int end, bool training)
{
    if (plan->workers)
        return run_on_workers(plan, begin, end, training);
    for (int s = begin; s < end; s++) {
        keel_status st = run_node(plan, s, training);
        if (st != KEEL_OK)
            return st;
    }
    return KEEL_OK;
}

/* ---- forward and backward ------------------------------------------------ */

/* Gradients that could not be bound to their parameter's gradient block
 * are copied there, queued on the first device, which has waited for every
 * device's backward pass; keel_plan_backward then makes every device wait
 * for it before its own update. */
static keel_status copy_unbound_grads(keel_plan *plan)
{
    return run_copies(plan, &plan->devices[0], plan->grad_copies);
}

static int64_t node_bytes(const keel_node *x)
{
    return keel_node_numel(x) * (int64_t)keel_dtype_size(x->dtype);
}

/* Moves an input whose batch was copied in while the last step ran into
 * place, behind that step's work. */
static keel_status move_in(keel_plan *plan, const keel_node *x)
{
    keel_staged_input *in = plan->staged ? &plan->staged[x->id] : NULL;
    if (!in || !in->pending)
        return KEEL_OK;
    in->pending = false;
    return plan->backend->copy_in_finish(plan->device, plan->out_ptr[x->id], in->staging, (size_t)node_bytes(x),
                                         in->copied, in->staging_free);
}

static keel_status move_in_all(keel_plan *plan)
{
    keel_graph *g = plan->graph;
    for (int i = 0; plan->staged && i < g->n_nodes; i++) {
        keel_status st = move_in(plan, g->nodes[i]);
        if (st != KEEL_OK)
            return st;
    }
    return KEEL_OK;
}

keel_status keel_plan_forward(keel_plan *plan, bool training)
{
    if (!plan)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_plan_forward: plan is NULL");
    keel_status st = move_in_all(plan);
    if (st != KEEL_OK)
        return st;
    if (training)
        plan->step++;
    plan->forward_done = false;
    st = keel_plan_run_range(plan, 0, plan->n_forward, training);
    if (st != KEEL_OK)
        return st;
    plan->forward_done = true;
    plan->forward_was_training = training;
    return KEEL_OK;
}

keel_status keel_plan_backward(keel_plan *plan)
{
    if (!plan)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_plan_backward: plan is NULL");
    if (!plan->graph->has_backward)
        return keel_fail(KEEL_ERR_STATE, "the graph has no backward pass (call keel_graph_backward before compiling)");
    if (!plan->forward_done || !plan->forward_was_training)
        return keel_fail(KEEL_ERR_STATE, "keel_plan_backward needs a training forward pass first "
                                         "(keel_plan_forward(plan, true))");
    plan->forward_done = false; /* the backward pass consumes the saved activations */
    keel_status st = keel_plan_run_range(plan, plan->n_forward, plan->n_sched, true);
    if (st == KEEL_OK)
        st = copy_unbound_grads(plan);
    /* Each device's optimiser update reads gradients other devices wrote. */
    if (st == KEEL_OK && plan->node_events)
        st = fork_queues(plan);
    return st;
}

/* ---- inputs, outputs, parameters ------------------------------------- */

static keel_status check_node(const keel_plan *plan, const keel_node *x, const char *what)
{
    if (!plan || !x)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s: %s is NULL", what, plan ? "node" : "plan");
    if (x->id >= plan->graph->n_nodes || plan->graph->nodes[x->id] != x)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s: node '%s' belongs to another graph", what, x->name);
    return KEEL_OK;
}

/* The device whose queue wrote a node's value: its node's, a parameter's
 * own, and the first device's for inputs. */
static const keel_plan_device *home_of(const keel_plan *plan, const keel_node *x)
{
    int s = plan->pos_of[x->id];
    if (s >= 0)
        return &plan->devices[plan->device_of[s]];
    for (int k = 0; x->op == KEEL_OP_PARAM && k < plan->n_params; k++)
        if (plan->params[k].node == x)
            return &plan->devices[plan->params[k].device];
    return &plan->devices[0];
}

keel_status keel_plan_set_input(keel_plan *plan, const keel_node *input, const void *data)
{
    keel_status st = check_node(plan, input, "keel_plan_set_input");
    if (st != KEEL_OK)
        return st;
    if (input->op != KEEL_OP_INPUT)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_plan_set_input: '%s' is not an input", input->name);
    keel_staged_input *in = plan->staged ? &plan->staged[input->id] : NULL;
    if (in && in->staging) {
        /* Page-locked memory: the copy runs while the last step does. */
        bool started = false;
        st = plan->backend->copy_in(plan->device, in->staging, data, (size_t)node_bytes(input), in->copied,
                                    in->staging_free, &started);
        if (st != KEEL_OK || started) {
            in->pending = started;
            return st;
        }
        in->pending = false; /* a plain upload below replaces a batch still in staging */
    }
    return plan->backend->upload(plan->device, plan->out_ptr[input->id], data, (size_t)node_bytes(input));
}

keel_status keel_plan_read(keel_plan *plan, const keel_node *x, void *dst)
{
    keel_status st = check_node(plan, x, "keel_plan_read");
    if (st != KEEL_OK)
        return st;
    bool readable = x->keep || x->op == KEEL_OP_INPUT || x->op == KEEL_OP_PARAM;
    if (!readable || !plan->out_ptr[x->id])
        return keel_fail(KEEL_ERR_STATE, "keel_plan_read: '%s' is not kept after a run; call keel_graph_keep "
                                         "before keel_plan_compile", x->name);
    if (x->op == KEEL_OP_INPUT && (st = move_in(plan, x)) != KEEL_OK)
        return st;
    const keel_plan_device *dev = home_of(plan, x);
    return dev->backend->download(dev->device, dst, plan->out_ptr[x->id], (size_t)node_bytes(x));
}

const keel_plan_param *keel_plan_find_param(const keel_plan *plan, const char *name)
{
    for (int k = 0; k < plan->n_params; k++)
        if (strcmp(plan->params[k].node->name, name) == 0)
            return &plan->params[k];
    return NULL;
}

float *keel_plan_param_ptr(const keel_plan *plan, const keel_plan_param *p)
{
    const keel_plan_device *dev = &plan->devices[p->device];
    if (p->node->trainable)
        return plan->param_blocks[p->device] + (p->offset - dev->param_begin);
    return plan->state_blocks[p->device] + (p->offset - dev->state_begin);
}

float *keel_plan_grad_ptr(const keel_plan *plan, const keel_plan_param *p)
{
    return plan->grad_blocks[p->device] + (p->offset - plan->devices[p->device].param_begin);
}

static keel_status lookup(const keel_plan *plan, const char *name, int64_t count, const keel_plan_param **out)
{
    const keel_plan_param *p = plan && name ? keel_plan_find_param(plan, name) : NULL;
    if (!p)
        return keel_fail(KEEL_ERR_NOT_FOUND, "no parameter named '%s'", name ? name : "(null)");
    if (count != p->numel) {
        char buf[96];
        return keel_fail(KEEL_ERR_SHAPE, "parameter '%s' has %lld elements (shape %s), not %lld", name,
                         (long long)p->numel, keel_node_shape_str(p->node, buf, sizeof buf), (long long)count);
    }
    *out = p;
    return KEEL_OK;
}

keel_status keel_plan_param_get(keel_plan *plan, const char *name, float *dst, int64_t count)
{
    const keel_plan_param *p = NULL;
    keel_status st = lookup(plan, name, count, &p);
    if (st != KEEL_OK)
        return st;
    const keel_plan_device *dev = &plan->devices[p->device];
    return dev->backend->download(dev->device, dst, keel_plan_param_ptr(plan, p), (size_t)count * sizeof(float));
}

keel_status keel_plan_param_set(keel_plan *plan, const char *name, const float *src, int64_t count)
{
    const keel_plan_param *p = NULL;
    keel_status st = lookup(plan, name, count, &p);
    if (st != KEEL_OK)
        return st;
    const keel_plan_device *dev = &plan->devices[p->device];
    return dev->backend->upload(dev->device, keel_plan_param_ptr(plan, p), src, (size_t)count * sizeof(float));
}

keel_status keel_plan_grad_get(keel_plan *plan, const char *name, float *dst, int64_t count)
{
    const keel_plan_param *p = NULL;
    keel_status st = lookup(plan, name, count, &p);
    if (st != KEEL_OK)
        return st;
    if (!p->node->trainable)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "'%s' is a state buffer and has no gradient", name);
    const keel_plan_device *dev = &plan->devices[p->device];
    return dev->backend->download(dev->device, dst, keel_plan_grad_ptr(plan, p), (size_t)count * sizeof(float));
}

int keel_plan_param_count(const keel_plan *plan)
{
    return plan ? plan->n_params : 0;
}

keel_status keel_plan_param_info(const keel_plan *plan, int index, keel_param_info *info)
{
    if (!plan || index < 0 || index >= plan->n_params)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "parameter index %d out of range", index);
    const keel_node *x = plan->params[index].node;
    info->name = x->name;
    info->ndim = x->ndim;
    for (int i = 0; i < x->ndim; i++)
        info->shape[i] = x->shape[i];
    info->trainable = x->trainable;
    return KEEL_OK;
}

keel_status keel_plan_memory(const keel_plan *plan, keel_memory_report *report)
{
    if (!plan || !report)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_plan_memory: plan and report are required");
    report->arena_bytes = plan->arena_bytes;
    report->tensor_bytes = plan->tensor_bytes;
    report->param_bytes = (plan->param_floats + plan->state_floats) * (int64_t)sizeof(float);
    report->grad_bytes = plan->param_floats * (int64_t)sizeof(float);
    report->workspace_bytes = plan->workspace_bytes;
    report->pool_reserved_bytes = report->pool_in_use_bytes = report->pool_peak_bytes = 0;
    report->pool_driver_allocs = report->pool_reuses = 0;
    for (int d = 0; d < plan->n_devices; d++)
        if (plan->devices[d].backend->pool_report)
            plan->devices[d].backend->pool_report(plan->devices[d].device, report);
    return KEEL_OK;
}

/* ---- profiling ----------------------------------------------------------- */

keel_status keel_plan_profile(keel_plan *plan, bool on)
{
    if (!plan)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_plan_profile: plan is NULL");
    if (on && !plan->node_seconds) {
        /* Allocated once, outside any step. */
        plan->node_seconds = calloc((size_t)plan->n_sched + 1, sizeof *plan->node_seconds);
        plan->node_runs = calloc((size_t)plan->n_sched + 1, sizeof *plan->node_runs);
        if (!plan->node_seconds || !plan->node_runs)
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for profiling");
    }
    plan->profiling = on;
    return KEEL_OK;
}

void keel_plan_profile_reset(keel_plan *plan)
{
    if (!plan || !plan->node_seconds)
        return;
    memset(plan->node_seconds, 0, (size_t)plan->n_sched * sizeof *plan->node_seconds);
    memset(plan->node_runs, 0, (size_t)plan->n_sched * sizeof *plan->node_runs);
    for (int d = 0; d < plan->n_devices; d++)
        plan->devices[d].busy_seconds = plan->devices[d].copy_seconds = 0.0;
}

int keel_plan_profile_count(const keel_plan *plan)
{
    return plan ? plan->n_sched : 0;
}

keel_status keel_plan_profile_get(const keel_plan *plan, int index, keel_node_time *out)
{
    if (!plan || index < 0 || index >= plan->n_sched)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "profile index %d out of range", index);
    const keel_node *x = plan->sched[index];
    out->node = x->name;
    out->op = keel_op_get(x->op)->name;
    out->layer = x->layer ? x->layer : x->name;
    out->backward = x->is_backward;
    out->seconds = plan->node_seconds ? plan->node_seconds[index] : 0.0;
    out->runs = plan->node_runs ? plan->node_runs[index] : 0;
    return KEEL_OK;
}

int keel_plan_device_count(const keel_plan *plan)
{
    return plan ? plan->n_devices : 0;
}

keel_status keel_plan_device_time(const keel_plan *plan, int index, keel_device_time *out)
{
    if (!plan || index < 0 || index >= plan->n_devices)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "device index %d out of range", index);
    const keel_plan_device *dev = &plan->devices[index];
    out->device = dev->name;
    out->compute_seconds = dev->busy_seconds;
    out->copy_seconds = dev->copy_seconds;
    out->arena_bytes = dev->arena_bytes;
    out->param_bytes = (2 * dev->param_floats + dev->state_floats) * (int64_t)sizeof(float);
    return KEEL_OK;
}
