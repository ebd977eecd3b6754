/* The planner: schedule, liveness-based memory plan, parameter blocks,
 * per-node algorithm choice; and the executor that runs a plan.
 *
 * Memory plan. Every value the schedule produces is a buffer with a
 * lifetime [first writer, last reader] in schedule positions. Views
 * (reshape) and in-place element-wise ops share their input's buffer and
 * extend its lifetime. Buffers are packed into one arena greedily, largest
 * first, each at the lowest offset that overlaps no placed buffer whose
 * lifetime intersects its own (the "greedy by size" offset assignment of
 * TFLite and ggml-alloc). */
#include "graph/plan_internal.h"
#include <math.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 256
#define BUF_EXTERNAL (-2)   /* parameter, state or gradient block */
#define BUF_VIEW (-3)       /* shares its input's memory, wherever that is */

typedef struct buffer {
    int64_t bytes;
    int first, last;     /* schedule positions; -1 = before the first node */
    int64_t offset;
    bool placed;
    bool is_float;
} buffer;

typedef struct planner {
    keel_plan *plan;
    keel_graph *g;
    int *buf_of;         /* by node id: output buffer, -1 none, -2 external */
    int *aux_buf_of;     /* by node id: aux buffer, -1 none */
    int *pos;            /* by node id: schedule position, -1 unscheduled */
    buffer *bufs;
    int n_bufs, cap_bufs;
} planner;

static int64_t align_up(int64_t n, int64_t a)
{
    return (n + a - 1) / a * a;
}

static int64_t node_bytes(const keel_node *x)
{
    return keel_node_numel(x) * (int64_t)keel_dtype_size(x->dtype);
}

static int new_buffer(planner *pl, int64_t bytes, int first, bool is_float)
{
    if (pl->n_bufs == pl->cap_bufs) {
        int cap = pl->cap_bufs ? pl->cap_bufs * 2 : 128;
        buffer *grown = realloc(pl->bufs, (size_t)cap * sizeof *grown);
        if (!grown)
            return -1;
        pl->bufs = grown;
        pl->cap_bufs = cap;
    }
    buffer *b = &pl->bufs[pl->n_bufs];
    memset(b, 0, sizeof *b);
    b->bytes = align_up(bytes, ARENA_ALIGN);
    b->first = first;
    b->last = first;
    b->is_float = is_float;
    return pl->n_bufs++;
}

static void use_buffer(planner *pl, int buf, int position)
{
    if (buf >= 0 && pl->bufs[buf].last < position)
        pl->bufs[buf].last = position;
}

/* ---- schedule ---------------------------------------------------------- */

static keel_status build_schedule(planner *pl)
{
    keel_graph *g = pl->g;
    keel_plan *plan = pl->plan;
    bool *needed = calloc((size_t)g->n_nodes, sizeof *needed);
    if (!needed)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory planning the schedule");
    for (int i = 0; i < g->n_nodes; i++) {
        keel_node *x = g->nodes[i];
        if (x->keep)
            needed[x->id] = true;
        if (x->op == KEEL_OP_PARAM && x->trainable && x->grad)
            needed[x->grad->id] = true;
    }
    if (g->loss)
        needed[g->loss->id] = true;
    /* Inputs always have smaller ids than their users, so one reverse sweep
     * marks everything the roots depend on. */
    for (int i = g->n_nodes - 1; i >= 0; i--) {
        if (!needed[i])
            continue;
        keel_node *x = g->nodes[i];
        for (int j = 0; j < x->n_inputs; j++)
            needed[x->inputs[j]->id] = true;
        if (x->fwd)
            needed[x->fwd->id] = true;
    }
    plan->sched = malloc((size_t)g->n_nodes * sizeof *plan->sched);
    if (!plan->sched) {
        free(needed);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory planning the schedule");
    }
    /* Nodes are created in a topological order (inputs before users, the
     * backward pass after the forward), so creation order is a schedule. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < g->n_nodes; i++) {
            keel_node *x = g->nodes[i];
            if (!needed[i] || x->op == KEEL_OP_INPUT || x->op == KEEL_OP_PARAM)
                continue;
            if (x->is_backward != (pass == 1))
                continue;
            pl->pos[x->id] = plan->n_sched;
            plan->sched[plan->n_sched++] = x;
            if (pass == 0)
                plan->n_forward = plan->n_sched;
        }
    free(needed);
    return KEEL_OK;
}

/* ---- parameters ---------------------------------------------------------- */

static keel_status layout_params(planner *pl)
{
    keel_graph *g = pl->g;
    keel_plan *plan = pl->plan;
    plan->params = calloc((size_t)g->n_nodes, sizeof *plan->params);
    if (!plan->params)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory laying out parameters");
    for (int i = 0; i < g->n_nodes; i++) {
        keel_node *x = g->nodes[i];
        if (x->op != KEEL_OP_PARAM)
            continue;
        keel_plan_param *p = &plan->params[plan->n_params++];
        p->node = x;
        p->numel = keel_node_numel(x);
        /* 16-float alignment keeps every tensor 64-byte aligned in its block. */
        int64_t *cursor = x->trainable ? &plan->param_floats : &plan->state_floats;
        p->offset = *cursor;
        *cursor += align_up(p->numel, 16);
        pl->buf_of[x->id] = BUF_EXTERNAL;
    }
    return KEEL_OK;
}

/* A trainable parameter's final gradient node writes straight into the
 * gradient block, unless it is something that cannot move there (another
 * parameter's gradient, a view, a leaf); then the gradient block gets a copy
 * after the backward pass. */
static bool grad_is_bindable(const planner *pl, const keel_node *grad)
{
    if (!grad->is_backward || keel_op_get(grad->op)->view || grad->op == KEEL_OP_INPUT)
        return false;
    return pl->buf_of[grad->id] != BUF_EXTERNAL;
}

/* ---- buffers and lifetimes --------------------------------------------- */

/* The buffer a node's memory comes from, following views. */
static int root_buffer(const planner *pl, const keel_node *x)
{
    while (pl->buf_of[x->id] == BUF_VIEW)
        x = x->inputs[0];
    return pl->buf_of[x->id];
}

static keel_status assign_buffers(planner *pl)
{
    keel_graph *g = pl->g;
    keel_plan *plan = pl->plan;
    int end = plan->n_sched; /* the position after the last node */
    int *last_read = malloc(((size_t)g->n_nodes + 1) * sizeof *last_read);
    int *aux_last = malloc(((size_t)g->n_nodes + 1) * sizeof *aux_last);
    if (!last_read || !aux_last) {
        free(last_read);
        free(aux_last);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory planning buffers");
    }
    for (int i = 0; i < g->n_nodes; i++)
        last_read[i] = aux_last[i] = g->nodes[i]->keep ? end : -1;
    for (int s = 0; s < plan->n_sched; s++) {
        keel_node *x = plan->sched[s];
        for (int j = 0; j < x->n_inputs; j++)
            if (last_read[x->inputs[j]->id] < s)
                last_read[x->inputs[j]->id] = s;
        if (x->fwd && aux_last[x->fwd->id] < s)
            aux_last[x->fwd->id] = s;
    }

    keel_status st = KEEL_OK;
    /* Inputs live for the whole step: the caller writes them before it. */
    for (int i = 0; i < g->n_nodes && st == KEEL_OK; i++) {
        keel_node *x = g->nodes[i];
        if (x->op != KEEL_OP_INPUT)
            continue;
        pl->buf_of[i] = new_buffer(pl, node_bytes(x), -1, x->dtype == KEEL_F32);
        if (pl->buf_of[i] < 0)
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory planning buffers");
        else
            pl->bufs[pl->buf_of[i]].last = end;
    }
    /* Gradients bound to the gradient block. */
    for (int k = 0; k < plan->n_params; k++) {
        keel_node *p = plan->params[k].node;
        if (p->trainable && p->grad && pl->pos[p->grad->id] >= 0 && grad_is_bindable(pl, p->grad))
            pl->buf_of[p->grad->id] = BUF_EXTERNAL;
    }
    for (int s = 0; s < plan->n_sched && st == KEEL_OK; s++) {
        keel_node *x = plan->sched[s];
        const keel_op_def *def = keel_op_get(x->op);
        int lifetime_end = last_read[x->id] > s ? last_read[x->id] : s;
        if (x->aux_bytes > 0) {
            int b = new_buffer(pl, x->aux_bytes, s, false);
            if (b < 0) {
                st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory planning buffers");
                break;
            }
            pl->aux_buf_of[x->id] = b;
            use_buffer(pl, b, aux_last[x->id]);
        }
        if (pl->buf_of[x->id] == BUF_EXTERNAL)
            continue;
        if (def->view && x->n_inputs > 0) {
            pl->buf_of[x->id] = BUF_VIEW;
            use_buffer(pl, root_buffer(pl, x), lifetime_end);
            continue;
        }
        if (def->inplace_ok && x->n_inputs > 0) {
            int in = root_buffer(pl, x->inputs[0]);
            const keel_node *src = x->inputs[0];
            /* Nobody reads the input after this node: overwrite it. */
            if (in >= 0 && pl->bufs[in].first >= 0 && pl->bufs[in].last <= s && node_bytes(src) == node_bytes(x) &&
                src->dtype == x->dtype) {
                pl->buf_of[x->id] = in;
                use_buffer(pl, in, lifetime_end);
                continue;
            }
        }
        int b = new_buffer(pl, node_bytes(x), s, x->dtype == KEEL_F32);
        if (b < 0) {
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory planning buffers");
            break;
        }
        pl->buf_of[x->id] = b;
        use_buffer(pl, b, lifetime_end);
    }
    free(last_read);
    free(aux_last);
    return st;
}

static int by_size_desc(const void *a, const void *b, void *bufs_v)
{
    const buffer *bufs = bufs_v;
    int ia = *(const int *)a, ib = *(const int *)b;
    if (bufs[ia].bytes != bufs[ib].bytes)
        return bufs[ia].bytes < bufs[ib].bytes ? 1 : -1;
    return ia - ib;
}

static keel_status pack_arena(planner *pl)
{
    int n = pl->n_bufs;
    int *order = malloc((size_t)(n ? n : 1) * sizeof *order);
    int *placed = malloc((size_t)(n ? n : 1) * sizeof *placed);
    if (!order || !placed) {
        free(order);
        free(placed);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory packing the arena");
    }
    for (int i = 0; i < n; i++)
        order[i] = i;
    qsort_r(order, (size_t)n, sizeof *order, by_size_desc, pl->bufs);
    int n_placed = 0;
    int64_t arena = 0, tensors = 0;
    for (int k = 0; k < n; k++) {
        buffer *b = &pl->bufs[order[k]];
        tensors += b->bytes;
        /* Candidate offsets: 0 and the end of every conflicting buffer; take
         * the lowest that fits. Conflicts are few, so this stays fast. */
        int64_t best = -1;
        for (int c = -1; c < n_placed; c++) {
            int64_t offset = c < 0 ? 0 : pl->bufs[placed[c]].offset + pl->bufs[placed[c]].bytes;
            if (c >= 0) {
                const buffer *o = &pl->bufs[placed[c]];
                if (o->last < b->first || b->last < o->first)
                    continue;
            }
            if (best >= 0 && offset >= best)
                continue;
            bool fits = true;
            for (int j = 0; j < n_placed && fits; j++) {
                const buffer *o = &pl->bufs[placed[j]];
                if (o->last < b->first || b->last < o->first)
                    continue;
                if (offset < o->offset + o->bytes && o->offset < offset + b->bytes)
                    fits = false;
            }
            if (fits)
                best = offset;
        }
        b->offset = best;
        b->placed = true;
        placed[n_placed++] = order[k];
        if (best + b->bytes > arena)
            arena = best + b->bytes;
    }
    free(order);
    free(placed);
    pl->plan->arena_bytes = arena;
    pl->plan->tensor_bytes = tensors;
    return KEEL_OK;
}

/* ---- devices ----------------------------------------------------------- */

static keel_status parse_device(const char *spec, const keel_backend **backend, int *index)
{
    const char *devices = spec && *spec ? spec : "cpu";
    if (strchr(devices, ','))
        return keel_fail(KEEL_ERR_UNSUPPORTED,
                         "devices '%s': a plan runs on one device in this version; pass one of them", devices);
    char kind[16] = {0};
    int idx = 0;
    const char *colon = strchr(devices, ':');
    size_t kind_len = colon ? (size_t)(colon - devices) : strlen(devices);
    if (kind_len == 0 || kind_len >= sizeof kind)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "device '%s' is not 'cpu' or 'cuda[:N]'", devices);
    memcpy(kind, devices, kind_len);
    if (colon) {
        char *end = NULL;
        long v = strtol(colon + 1, &end, 10);
        if (!colon[1] || *end || v < 0 || v > 1024)
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "device '%s': the index after ':' must be a number",
                             devices);
        idx = (int)v;
    }
    if (strcmp(kind, "cpu") == 0) {
        if (idx != 0)
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "device '%s': the CPU is cpu:0", devices);
        *backend = &keel_cpu_backend;
    } else if (strcmp(kind, "cuda") == 0) {
#ifdef KEEL_HAVE_CUDA
        int count = keel_cuda_backend.device_count();
        if (idx >= count)
            return keel_fail(KEEL_ERR_NOT_FOUND, "device '%s': %d CUDA device%s found%s", devices, count,
                             count == 1 ? "" : "s", count == 0 ? " (is the NVIDIA driver loaded?)" : "");
        *backend = &keel_cuda_backend;
#else
        return keel_fail(KEEL_ERR_UNSUPPORTED,
                         "device '%s': this libkeel was built without CUDA (configure with -Dcuda=enabled)",
                         devices);
#endif
    } else {
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "device '%s' is not 'cpu' or 'cuda[:N]'", devices);
    }
    *index = idx;
    return KEEL_OK;
}

static const char *format_bytes(char *buf, size_t size, int64_t bytes)
{
    if (bytes >= (int64_t)1 << 30)
        snprintf(buf, size, "%.1f GiB", (double)bytes / (1 << 30));
    else
        snprintf(buf, size, "%.1f MiB", (double)bytes / (1 << 20));
    return buf;
}

static keel_status allocate_memory(planner *pl)
{
    keel_plan *plan = pl->plan;
    const keel_backend *be = plan->backend;
    keel_device *dev = plan->device;
    int64_t need = plan->arena_bytes + plan->workspace_bytes +
                   (int64_t)sizeof(float) * (2 * plan->param_floats + plan->state_floats);
    int64_t free_bytes = 0, total_bytes = 0;
    if (be->memory_info && be->memory_info(dev, &free_bytes, &total_bytes) == KEEL_OK && free_bytes > 0 &&
        need > free_bytes) {
        char a[32], b[32];
        int64_t batch = 0;
        for (int i = 0; i < pl->g->n_nodes; i++)
            if (pl->g->nodes[i]->op == KEEL_OP_INPUT) {
                batch = pl->g->nodes[i]->shape[0];
                break;
            }
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "the plan needs %s on %s:%d, %s free%s", format_bytes(a, sizeof a, need),
                         be->name, plan->device_index, format_bytes(b, sizeof b, free_bytes),
                         batch > 1 ? "; try a smaller --batch" : "");
    }
    plan->arena = be->alloc(dev, (size_t)(plan->arena_bytes ? plan->arena_bytes : ARENA_ALIGN));
    plan->workspace = plan->workspace_bytes ? be->alloc(dev, (size_t)plan->workspace_bytes) : NULL;
    plan->param_block = be->alloc(dev, (size_t)(plan->param_floats + 16) * sizeof(float));
    plan->grad_block = be->alloc(dev, (size_t)(plan->param_floats + 16) * sizeof(float));
    plan->state_block = be->alloc(dev, (size_t)(plan->state_floats + 16) * sizeof(float));
    if (!plan->arena || (plan->workspace_bytes && !plan->workspace) || !plan->param_block || !plan->grad_block ||
        !plan->state_block) {
        char a[32];
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %s for the plan on %s:%d",
                         format_bytes(a, sizeof a, need), be->name, plan->device_index);
    }
    keel_status st = be->fill(dev, plan->grad_block, 0.0f, (size_t)plan->param_floats + 16);
    if (st == KEEL_OK)
        st = be->fill(dev, plan->arena, 0.0f, (size_t)plan->arena_bytes / sizeof(float));
    return st;
}

static keel_status init_params(keel_plan *plan)
{
    int64_t most = 0;
    for (int k = 0; k < plan->n_params; k++)
        if (plan->params[k].numel > most)
            most = plan->params[k].numel;
    float *host = malloc((size_t)(most ? most : 1) * sizeof *host);
    if (!host)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory initialising parameters");
    keel_status st = KEEL_OK;
    for (int k = 0; k < plan->n_params && st == KEEL_OK; k++) {
        const keel_plan_param *p = &plan->params[k];
        st = keel_param_init(p->node, host, plan->seed);
        if (st == KEEL_OK)
            st = plan->backend->upload(plan->device, keel_plan_param_ptr(plan, p), host,
                                       (size_t)p->numel * sizeof(float));
    }
    free(host);
    return st;
}

/* Points every scheduled node at its buffers. */
static keel_status bind_pointers(planner *pl)
{
    keel_plan *plan = pl->plan;
    keel_graph *g = pl->g;
    char *arena = plan->arena;
    for (int k = 0; k < plan->n_params; k++) {
        const keel_plan_param *p = &plan->params[k];
        plan->out_ptr[p->node->id] = keel_plan_param_ptr(plan, p);
        if (p->node->trainable && p->node->grad && pl->buf_of[p->node->grad->id] == BUF_EXTERNAL)
            plan->out_ptr[p->node->grad->id] = plan->grad_block + p->offset;
    }
    for (int i = 0; i < g->n_nodes; i++) {
        if (pl->buf_of[i] >= 0)
            plan->out_ptr[i] = arena + pl->bufs[pl->buf_of[i]].offset;
        if (pl->aux_buf_of[i] >= 0)
            plan->aux_ptr[i] = arena + pl->bufs[pl->aux_buf_of[i]].offset;
    }
    for (int s = 0; s < plan->n_sched; s++) /* views, in order: a view of a view works */
        if (pl->buf_of[plan->sched[s]->id] == BUF_VIEW)
            plan->out_ptr[plan->sched[s]->id] = plan->out_ptr[plan->sched[s]->inputs[0]->id];
    for (int s = 0; s < plan->n_sched; s++) {
        keel_node *x = plan->sched[s];
        plan->in_ptrs[s] = calloc((size_t)(x->n_inputs ? x->n_inputs : 1), sizeof(void *));
        if (!plan->in_ptrs[s])
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory binding the plan");
        for (int j = 0; j < x->n_inputs; j++)
            plan->in_ptrs[s][j] = plan->out_ptr[x->inputs[j]->id];
    }
    return KEEL_OK;
}

/* For poison_dead: the buffers whose last reader is each position. */
static keel_status list_dying(planner *pl)
{
    keel_plan *plan = pl->plan;
    plan->dying = calloc((size_t)plan->n_sched + 1, sizeof *plan->dying);
    int *count = calloc((size_t)plan->n_sched + 1, sizeof *count);
    if (!plan->dying || !count) {
        free(count);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (int b = 0; b < pl->n_bufs; b++)
        if (pl->bufs[b].last >= 0 && pl->bufs[b].last < plan->n_sched && pl->bufs[b].first >= 0)
            count[pl->bufs[b].last]++;
    for (int s = 0; s < plan->n_sched; s++) {
        plan->dying[s] = malloc((size_t)(2 * count[s] + 1) * sizeof(int64_t));
        if (!plan->dying[s]) {
            free(count);
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
        }
        int n = 0;
        for (int b = 0; b < pl->n_bufs; b++)
            if (pl->bufs[b].last == s && pl->bufs[b].first >= 0) {
                /* Stored as (offset in floats, count of floats). */
                plan->dying[s][n++] = pl->bufs[b].offset / (int64_t)sizeof(float);
                plan->dying[s][n++] = pl->bufs[b].bytes / (int64_t)sizeof(float);
            }
        plan->dying[s][n] = -1;
    }
    free(count);
    return KEEL_OK;
}

static keel_status prepare_nodes(planner *pl)
{
    keel_plan *plan = pl->plan;
    const keel_backend *be = plan->backend;
    plan->algo = calloc((size_t)(plan->n_sched ? plan->n_sched : 1), sizeof *plan->algo);
    if (!plan->algo)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int s = 0; s < plan->n_sched; s++) {
        keel_node *x = plan->sched[s];
        if (keel_op_get(x->op)->view)
            continue;
        if (!be->run[x->op])
            return keel_fail(KEEL_ERR_UNSUPPORTED, "op '%s' (node '%s') is not supported on backend '%s'",
                             keel_op_get(x->op)->name, x->name, be->name);
        if (be->prepare[x->op]) {
            int64_t ws = 0;
            keel_status st = be->prepare[x->op](plan->device, x, &ws, &plan->algo[s]);
            if (st != KEEL_OK)
                return keel_fail_prefix(st, "preparing '%s': ", x->name);
            if (ws > plan->workspace_bytes)
                plan->workspace_bytes = ws;
        }
    }
    plan->workspace_bytes = align_up(plan->workspace_bytes, ARENA_ALIGN);
    return KEEL_OK;
}

static keel_status compile(planner *pl, const keel_plan_opts *opts)
{
    keel_plan *plan = pl->plan;
    keel_status st = parse_device(opts->devices, &plan->backend, &plan->device_index);
    if (st == KEEL_OK)
        st = keel_context_device(plan->ctx, plan->backend, plan->device_index, &plan->device);
    if (st == KEEL_OK && plan->backend->configure)
        st = plan->backend->configure(plan->device, opts);
    if (st == KEEL_OK)
        st = build_schedule(pl);
    if (st == KEEL_OK)
        st = layout_params(pl);
    if (st == KEEL_OK)
        st = assign_buffers(pl);
    if (st == KEEL_OK)
        st = pack_arena(pl);
    if (st == KEEL_OK)
        st = prepare_nodes(pl);
    if (st == KEEL_OK)
        st = allocate_memory(pl);
    if (st == KEEL_OK)
        st = init_params(plan);
    if (st == KEEL_OK)
        st = bind_pointers(pl);
    if (st == KEEL_OK && plan->poison_dead)
        st = list_dying(pl);
    return st;
}

keel_status keel_plan_compile(keel_plan **out, keel_graph *g, keel_context *ctx, const keel_plan_opts *opts)
{
    if (!out || !g || !ctx)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_plan_compile: output, graph and context are required");
    *out = NULL;
    if (g->status != KEEL_OK)
        return keel_fail(g->status, "cannot compile a graph that failed to build: %s", g->error);
    keel_plan_opts defaults = {0};
    if (!opts)
        opts = &defaults;
    keel_plan *plan = calloc(1, sizeof *plan);
    planner pl = {.plan = plan, .g = g};
    if (plan) {
        plan->graph = g;
        plan->ctx = ctx;
        plan->seed = opts->seed;
        plan->poison_dead = opts->poison_dead;
        plan->out_ptr = calloc((size_t)g->n_nodes + 1, sizeof *plan->out_ptr);
        plan->aux_ptr = calloc((size_t)g->n_nodes + 1, sizeof *plan->aux_ptr);
        plan->in_ptrs = calloc((size_t)g->n_nodes + 1, sizeof *plan->in_ptrs);
        pl.buf_of = malloc(((size_t)g->n_nodes + 1) * sizeof *pl.buf_of);
        pl.aux_buf_of = malloc(((size_t)g->n_nodes + 1) * sizeof *pl.aux_buf_of);
        pl.pos = malloc(((size_t)g->n_nodes + 1) * sizeof *pl.pos);
    }
    if (!plan || !plan->out_ptr || !plan->aux_ptr || !plan->in_ptrs || !pl.buf_of || !pl.aux_buf_of || !pl.pos) {
        free(pl.buf_of);
        free(pl.aux_buf_of);
        free(pl.pos);
        keel_plan_destroy(plan);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory compiling the plan");
    }
    for (int i = 0; i < g->n_nodes; i++)
        pl.buf_of[i] = pl.aux_buf_of[i] = pl.pos[i] = -1; /* none */
    keel_status st = compile(&pl, opts);
    free(pl.buf_of);
    free(pl.aux_buf_of);
    free(pl.pos);
    free(pl.bufs);
    if (st != KEEL_OK) {
        keel_plan_destroy(plan);
        return st;
    }
    *out = plan;
    return KEEL_OK;
}

void keel_plan_destroy(keel_plan *plan)
{
    if (!plan)
        return;
    const keel_backend *be = plan->backend;
    if (be && plan->device) {
        if (be->sync)
            be->sync(plan->device);
        for (int s = 0; plan->algo && s < plan->n_sched; s++)
            if (plan->algo[s] && be->release_algo)
                be->release_algo(plan->device, plan->algo[s]);
        be->free(plan->device, plan->arena);
        be->free(plan->device, plan->workspace);
        be->free(plan->device, plan->param_block);
        be->free(plan->device, plan->grad_block);
        be->free(plan->device, plan->state_block);
    }
    for (int s = 0; s < plan->n_sched; s++) {
        if (plan->in_ptrs)
            free(plan->in_ptrs[s]);
        if (plan->dying)
            free(plan->dying[s]);
    }
    free(plan->dying);
    free(plan->node_seconds);
    free(plan->node_runs);
    free(plan->in_ptrs);
    free(plan->algo);
    free(plan->out_ptr);
    free(plan->aux_ptr);
    free(plan->sched);
    free(plan->params);
    free(plan);
}

/* ---- running ----------------------------------------------------------- */

/* Host time after the device has finished everything queued so far. */
static double profile_clock(keel_plan *plan)
{
    if (plan->backend->sync)
        plan->backend->sync(plan->device);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static keel_status run_range(keel_plan *plan, int begin, int end, bool training)
{
    const keel_backend *be = plan->backend;
    keel_launch launch = {
        .workspace = plan->workspace,
        .workspace_bytes = plan->workspace_bytes,
        .device = plan->device,
        .training = training,
        .seed = plan->seed,
        .step = plan->step,
    };
    for (int s = begin; s < end; s++) {
        keel_node *x = plan->sched[s];
        if (!keel_op_get(x->op)->view) {
            launch.node = x;
            launch.out = plan->out_ptr[x->id];
            launch.in = plan->in_ptrs[s];
            launch.aux = plan->aux_ptr[x->id];
            launch.fwd_aux = x->fwd ? plan->aux_ptr[x->fwd->id] : NULL;
            launch.algo = plan->algo[s];
            double started = plan->profiling ? profile_clock(plan) : 0.0;
            keel_status st = be->run[x->op](&launch);
            if (st != KEEL_OK)
                return keel_fail_prefix(st, "node '%s' (%s): ", x->name, keel_op_get(x->op)->name);
            if (plan->profiling) {
                plan->node_seconds[s] += profile_clock(plan) - started;
                plan->node_runs[s]++;
            }
        }
        if (plan->poison_dead)
            for (const int64_t *d = plan->dying[s]; *d >= 0; d += 2)
                be->fill(plan->device, (float *)plan->arena + d[0], NAN, (size_t)d[1]);
    }
    return KEEL_OK;
}

/* Gradients that could not be bound to the gradient block are copied there. */
static keel_status copy_unbound_grads(keel_plan *plan)
{
    for (int k = 0; k < plan->n_params; k++) {
        const keel_plan_param *p = &plan->params[k];
        keel_node *grad = p->node->grad;
        if (!p->node->trainable || !grad)
            continue;
        float *dst = plan->grad_block + p->offset;
        const void *src = plan->out_ptr[grad->id];
        if (src == dst)
            continue;
        if (!src)
            return keel_fail(KEEL_ERR_STATE, "the gradient of '%s' was not computed", p->node->name);
        /* Host staging keeps the backend contract small; this path is rare
         * (a parameter whose gradient is another node's value). */
        size_t bytes = (size_t)p->numel * sizeof(float);
        float *tmp = malloc(bytes);
        if (!tmp)
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
        keel_status st = plan->backend->download(plan->device, tmp, src, bytes);
        if (st == KEEL_OK)
            st = plan->backend->upload(plan->device, dst, tmp, bytes);
        free(tmp);
        if (st != KEEL_OK)
            return st;
    }
    return KEEL_OK;
}

keel_status keel_plan_forward(keel_plan *plan, bool training)
{
    if (!plan)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_plan_forward: plan is NULL");
    if (training)
        plan->step++;
    plan->forward_done = false;
    keel_status st = run_range(plan, 0, plan->n_forward, training);
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
    keel_status st = run_range(plan, plan->n_forward, plan->n_sched, true);
    if (st == KEEL_OK)
        st = copy_unbound_grads(plan);
    return st;
}

static keel_status check_node(const keel_plan *plan, const keel_node *x, const char *what)
{
    if (!x)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s: node is NULL", what);
    if (x->id >= plan->graph->n_nodes || plan->graph->nodes[x->id] != x)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s: node '%s' belongs to another graph", what, x->name);
    return KEEL_OK;
}

keel_status keel_plan_set_input(keel_plan *plan, const keel_node *input, const void *data)
{
    keel_status st = check_node(plan, input, "keel_plan_set_input");
    if (st != KEEL_OK)
        return st;
    if (input->op != KEEL_OP_INPUT)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_plan_set_input: '%s' is not an input", input->name);
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
    return plan->backend->download(plan->device, dst, plan->out_ptr[x->id], (size_t)node_bytes(x));
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
    return (p->node->trainable ? plan->param_block : plan->state_block) + p->offset;
}

static keel_status lookup(const keel_plan *plan, const char *name, int64_t count, const keel_plan_param **out)
{
    const keel_plan_param *p = name ? keel_plan_find_param(plan, name) : NULL;
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
    return plan->backend->download(plan->device, dst, keel_plan_param_ptr(plan, p), (size_t)count * sizeof(float));
}

keel_status keel_plan_param_set(keel_plan *plan, const char *name, const float *src, int64_t count)
{
    const keel_plan_param *p = NULL;
    keel_status st = lookup(plan, name, count, &p);
    if (st != KEEL_OK)
        return st;
    return plan->backend->upload(plan->device, keel_plan_param_ptr(plan, p), src, (size_t)count * sizeof(float));
}

keel_status keel_plan_grad_get(keel_plan *plan, const char *name, float *dst, int64_t count)
{
    const keel_plan_param *p = NULL;
    keel_status st = lookup(plan, name, count, &p);
    if (st != KEEL_OK)
        return st;
    if (!p->node->trainable)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "'%s' is a state buffer and has no gradient", name);
    return plan->backend->download(plan->device, dst, plan->grad_block + p->offset, (size_t)count * sizeof(float));
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
    return KEEL_OK;
}

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
