/* The planner: schedule, device placement, liveness-based memory plan,
 * parameter blocks and per-node algorithm choice.
 *
 * Memory plan. Every value the schedule produces is a buffer with a
 * lifetime [first writer, last reader] in schedule positions, on the device
 * of the node that writes it. Views (reshape) and in-place element-wise ops
 * share their input's buffer and extend its lifetime. Each device's buffers
 * are packed into that device's arena greedily, largest first, each at the
 * lowest offset that overlaps no placed buffer whose lifetime intersects its
 * own (the "greedy by size" offset assignment of TFLite and ggml-alloc).
 *
 * Devices. Placement group g runs on device g mod n. Devices run their
 * nodes concurrently, so a buffer another device reads is kept for the rest
 * of the step: its memory is never handed to a new tensor while a reader on
 * another device may still be behind. Devices read each other's memory in
 * place (CPU devices share the host; GPUs with a peer-to-peer path), or,
 * where they cannot, each device copies what it reads into its own arena
 * first (place_mirrors). A parameter lives on the device of its first
 * reader (layout_params). plan_devices.c opens the devices and creates the
 * events that order them. */
#include "graph/plan_internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 256
#define BUF_EXTERNAL (-2)   /* parameter, state or gradient block */
#define BUF_VIEW (-3)       /* shares its input's memory, wherever that is */

typedef struct buffer {
    int64_t bytes;
    int first, last;     /* schedule positions; -1 = before the first node */
    int device;
    int64_t offset;
} buffer;

typedef struct planner {
    keel_plan *plan;
    keel_graph *g;
    int *buf_of;         /* by node id: output buffer, -1 none, BUF_EXTERNAL, BUF_VIEW */
    int *aux_buf_of;     /* by node id: aux buffer, -1 none */
    buffer *bufs;
    int n_bufs, cap_bufs;
    int *mirror_of;      /* by node id * n_devices + device: that device's copy, -1 none */
    int *ext_device;     /* by node id: the device of a BUF_EXTERNAL node's block */
} planner;

static int64_t align_up(int64_t n, int64_t a)
{
    return (n + a - 1) / a * a;
}

static int64_t node_bytes(const keel_node *x)
{
    return keel_node_numel(x) * (int64_t)keel_dtype_size(x->dtype);
}

/* ---- schedule ---------------------------------------------------------- */

static keel_status build_schedule(keel_plan *plan)
{
    keel_graph *g = plan->graph;
    bool *needed = calloc((size_t)g->n_nodes + 1, sizeof *needed);
    plan->sched = malloc(((size_t)g->n_nodes + 1) * sizeof *plan->sched);
    plan->device_of = malloc(((size_t)g->n_nodes + 1) * sizeof *plan->device_of);
    if (!needed || !plan->sched || !plan->device_of) {
        free(needed);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory planning the schedule");
    }
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
    /* Nodes are created in a topological order (inputs before users, the
     * backward pass after the forward), so creation order is a schedule. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < g->n_nodes; i++) {
            keel_node *x = g->nodes[i];
            if (!needed[i] || x->op == KEEL_OP_INPUT || x->op == KEEL_OP_PARAM)
                continue;
            if (x->is_backward != (pass == 1))
                continue;
            plan->pos_of[x->id] = plan->n_sched;
            plan->device_of[plan->n_sched] = x->group % plan->n_devices;
            plan->sched[plan->n_sched++] = x;
            if (pass == 0)
                plan->n_forward = plan->n_sched;
        }
    free(needed);

    for (int d = 0; d < plan->n_devices; d++) {
        keel_plan_device *dev = &plan->devices[d];
        dev->positions = malloc(((size_t)plan->n_sched + 1) * sizeof *dev->positions);
        if (!dev->positions)
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory planning the schedule");
        for (int s = 0; s < plan->n_sched; s++)
            if (plan->device_of[s] == d)
                dev->positions[dev->n_positions++] = s;
    }
    return KEEL_OK;
}

/* ---- parameters ---------------------------------------------------------- */

/* A parameter lives on the device of its first reader, so a placement
 * group's weights stay with it (AlexNet's towers each keep their own);
 * each device's parameters are one contiguous range of the layout. */
static keel_status layout_params(planner *pl)
{
    keel_graph *g = pl->g;
    keel_plan *plan = pl->plan;
    plan->params = calloc((size_t)g->n_nodes + 1, sizeof *plan->params);
    if (!plan->params)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory laying out parameters");
    for (int s = plan->n_sched - 1; s >= 0; s--) /* backwards: the first reader has the last word */
        for (int j = 0; j < plan->sched[s]->n_inputs; j++)
            if (plan->sched[s]->inputs[j]->op == KEEL_OP_PARAM)
                pl->ext_device[plan->sched[s]->inputs[j]->id] = plan->device_of[s];
    for (int i = 0; i < g->n_nodes; i++) {
        keel_node *x = g->nodes[i];
        if (x->op != KEEL_OP_PARAM)
            continue;
        keel_plan_param *p = &plan->params[plan->n_params++];
        p->node = x;
        p->numel = keel_node_numel(x);
        p->device = pl->ext_device[x->id];
        pl->buf_of[x->id] = BUF_EXTERNAL;
    }
    for (int d = 0; d < plan->n_devices; d++) {
        keel_plan_device *dev = &plan->devices[d];
        dev->param_begin = plan->param_floats;
        dev->state_begin = plan->state_floats;
        for (int k = 0; k < plan->n_params; k++) {
            keel_plan_param *p = &plan->params[k];
            if (p->device != d)
                continue;
            /* 16-float alignment keeps every tensor 64-byte aligned in its block. */
            int64_t *cursor = p->node->trainable ? &plan->param_floats : &plan->state_floats;
            p->offset = *cursor;
            *cursor += align_up(p->numel, 16);
        }
        dev->param_floats = plan->param_floats - dev->param_begin;
        dev->state_floats = plan->state_floats - dev->state_begin;
    }
    return KEEL_OK;
}

/* A trainable parameter's final gradient node writes straight into the
 * gradient block, unless it is something that cannot move there (another
 * parameter's gradient, a view, a leaf, or, where devices copy, a node on
 * another device); then the executor copies it there after the backward
 * pass. */
static bool grad_is_bindable(const planner *pl, const keel_plan_param *p)
{
    const keel_plan *plan = pl->plan;
    const keel_node *grad = p->node->grad;
    if (!grad->is_backward || keel_op_get(grad->op)->view || grad->op == KEEL_OP_INPUT)
        return false;
    if (plan->copy_between_devices && plan->device_of[plan->pos_of[grad->id]] != p->device)
        return false;
    return pl->buf_of[grad->id] != BUF_EXTERNAL;
}

/* ---- buffers and lifetimes --------------------------------------------- */

static int new_buffer(planner *pl, int64_t bytes, int first, int device)
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
    b->device = device;
    return pl->n_bufs++;
}

static void use_buffer(planner *pl, int buf, int position)
{
    if (buf >= 0 && pl->bufs[buf].last < position)
        pl->bufs[buf].last = position;
}

/* The buffer a node's memory comes from, following views. */
static int root_buffer(const planner *pl, const keel_node *x)
{
    while (pl->buf_of[x->id] == BUF_VIEW)
        x = x->inputs[0];
    return pl->buf_of[x->id];
}

/* Last reader of every node's output and aux, in schedule positions; reads
 * from another device count as reads at the end of the step. */
static void compute_last_reads(const keel_plan *plan, int *last_read, int *aux_last)
{
    const keel_graph *g = plan->graph;
    int end = plan->n_sched;
    for (int i = 0; i < g->n_nodes; i++)
        last_read[i] = aux_last[i] = g->nodes[i]->keep ? end : -1;
    /* Parameter gradients are read after the backward pass: by the optimiser
     * from the gradient block, or by the executor copying one that could not
     * be written there (a view) into it. */
    for (int i = 0; i < g->n_nodes; i++) {
        const keel_node *x = g->nodes[i];
        if (x->op == KEEL_OP_PARAM && x->trainable && x->grad)
            last_read[x->grad->id] = end;
    }
    for (int s = 0; s < plan->n_sched; s++) {
        keel_node *x = plan->sched[s];
        for (int j = 0; j <= x->n_inputs; j++) {
            const keel_node *from = j < x->n_inputs ? x->inputs[j] : x->fwd;
            if (!from)
                continue;
            int q = plan->pos_of[from->id];
            bool remote = q >= 0 && plan->device_of[q] != plan->device_of[s];
            int *slot = j < x->n_inputs ? &last_read[from->id] : &aux_last[from->id];
            int at = remote ? end : s;
            if (*slot < at)
                *slot = at;
        }
    }
    /* A view read remotely keeps what it views alive too. */
    for (int s = plan->n_sched - 1; s >= 0; s--) {
        keel_node *x = plan->sched[s];
        if (keel_op_get(x->op)->view && x->n_inputs > 0 && last_read[x->inputs[0]->id] < last_read[x->id])
            last_read[x->inputs[0]->id] = last_read[x->id];
    }
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
    compute_last_reads(plan, last_read, aux_last);

    keel_status st = KEEL_OK;
    /* Inputs live on the parameter device for the whole step: the caller
     * writes them before it. */
    for (int i = 0; i < g->n_nodes && st == KEEL_OK; i++) {
        keel_node *x = g->nodes[i];
        if (x->op != KEEL_OP_INPUT)
            continue;
        pl->buf_of[i] = new_buffer(pl, node_bytes(x), -1, 0);
        if (pl->buf_of[i] < 0)
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory planning buffers");
        else
            pl->bufs[pl->buf_of[i]].last = end;
    }
    for (int k = 0; k < plan->n_params; k++) {
        keel_node *p = plan->params[k].node;
        if (p->trainable && p->grad && plan->pos_of[p->grad->id] >= 0 && grad_is_bindable(pl, &plan->params[k])) {
            pl->buf_of[p->grad->id] = BUF_EXTERNAL;
            pl->ext_device[p->grad->id] = plan->params[k].device;
        }
    }
    for (int s = 0; s < plan->n_sched && st == KEEL_OK; s++) {
        keel_node *x = plan->sched[s];
        const keel_op_def *def = keel_op_get(x->op);
        int device = plan->device_of[s];
        int lifetime_end = last_read[x->id] > s ? last_read[x->id] : s;
        if (x->aux_bytes > 0) {
            int b = new_buffer(pl, x->aux_bytes, s, device);
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
            if (in >= 0 && pl->bufs[in].first >= 0 && pl->bufs[in].last <= s && pl->bufs[in].device == device &&
                node_bytes(src) == node_bytes(x) && src->dtype == x->dtype) {
                pl->buf_of[x->id] = in;
                use_buffer(pl, in, lifetime_end);
                continue;
            }
        }
        int b = new_buffer(pl, node_bytes(x), s, device);
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

/* ---- copies between devices ---------------------------------------------- */

/* The device whose memory holds a node's value: its root buffer's, or its
 * block's for parameters, statistics and bound gradients. */
static int home_device(const planner *pl, const keel_node *x)
{
    while (pl->buf_of[x->id] == BUF_VIEW)
        x = x->inputs[0];
    int b = pl->buf_of[x->id];
    return b >= 0 ? pl->bufs[b].device : b == BUF_EXTERNAL ? pl->ext_device[x->id] : 0;
}

/* Devices that copy: a node reading a tensor another device holds reads this
 * device's copy of it, one copy per tensor and device, filled just before the
 * device's first reader and alive until its last. Only that device's queue
 * touches it, so its lifetime is an ordinary one on that device. (Gradient
 * nodes run where their forward ran, so a forward's aux is always local.) */
static keel_status place_mirrors(planner *pl)
{
    keel_plan *plan = pl->plan;
    if (!plan->copy_between_devices)
        return KEEL_OK;
    size_t slots = (size_t)pl->g->n_nodes * (size_t)plan->n_devices;
    pl->mirror_of = malloc((slots ? slots : 1) * sizeof *pl->mirror_of);
    if (!pl->mirror_of)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory planning copies between devices");
    for (size_t i = 0; i < slots; i++)
        pl->mirror_of[i] = -1;
    for (int s = 0; s < plan->n_sched; s++) {
        const keel_node *x = plan->sched[s];
        int device = plan->device_of[s];
        if (keel_op_get(x->op)->view)
            continue; /* a view moves no data; its readers copy what it views */
        for (int j = 0; j < x->n_inputs; j++) {
            const keel_node *v = x->inputs[j];
            if (home_device(pl, v) == device)
                continue;
            /* Running statistics live with their one reader, the node that
             * updates them; a copy of them could not take the update. */
            if (v->op == KEEL_OP_PARAM && !v->trainable)
                return keel_fail(KEEL_ERR_UNSUPPORTED, "'%s' (running statistics) is read on two devices that "
                                 "cannot share memory; keep its readers in one placement group", v->name);
            int *mirror = &pl->mirror_of[(size_t)v->id * (size_t)plan->n_devices + (size_t)device];
            if (*mirror < 0 && (*mirror = new_buffer(pl, node_bytes(v), s, device)) < 0)
                return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory planning copies between devices");
            use_buffer(pl, *mirror, s);
        }
    }
    return KEEL_OK;
}

static int by_size_desc(const void *a, const void *b, void *bufs_v)
{
    const buffer *bufs = bufs_v;
    int ia = *(const int *)a, ib = *(const int *)b;
    if (bufs[ia].bytes != bufs[ib].bytes)
        return bufs[ia].bytes < bufs[ib].bytes ? 1 : -1;
    return ia - ib;
}

static bool lifetimes_overlap(const buffer *a, const buffer *b)
{
    return !(a->last < b->first || b->last < a->first);
}

/* Places one device's buffers (ids in `order`, largest first). */
static void pack_device(planner *pl, const int *order, int n, keel_plan_device *dev)
{
    int *placed = malloc((size_t)(n ? n : 1) * sizeof *placed);
    int n_placed = 0;
    int64_t arena = 0, tensors = 0;
    for (int k = 0; k < n && placed; k++) {
        buffer *b = &pl->bufs[order[k]];
        tensors += b->bytes;
        /* Candidate offsets: 0 and the end of every conflicting buffer; the
         * lowest that overlaps no conflicting buffer wins. */
        int64_t best = -1;
        for (int c = -1; c < n_placed; c++) {
            const buffer *o = c >= 0 ? &pl->bufs[placed[c]] : NULL;
            if (o && !lifetimes_overlap(o, b))
                continue;
            int64_t offset = o ? o->offset + o->bytes : 0;
            if (best >= 0 && offset >= best)
                continue;
            bool fits = true;
            for (int j = 0; j < n_placed && fits; j++) {
                const buffer *p = &pl->bufs[placed[j]];
                if (lifetimes_overlap(p, b) && offset < p->offset + p->bytes && p->offset < offset + b->bytes)
                    fits = false;
            }
            if (fits)
                best = offset;
        }
        b->offset = best;
        placed[n_placed++] = order[k];
        if (best + b->bytes > arena)
            arena = best + b->bytes;
    }
    free(placed);
    dev->arena_bytes = arena;
    dev->tensor_bytes = tensors;
}

static keel_status pack_arenas(planner *pl)
{
    keel_plan *plan = pl->plan;
    int n = pl->n_bufs;
    int *order = malloc((size_t)(n ? n : 1) * sizeof *order);
    int *mine = malloc((size_t)(n ? n : 1) * sizeof *mine);
    if (!order || !mine) {
        free(order);
        free(mine);
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory packing the arena");
    }
    for (int i = 0; i < n; i++)
        order[i] = i;
    qsort_r(order, (size_t)n, sizeof *order, by_size_desc, pl->bufs);
    for (int d = 0; d < plan->n_devices; d++) {
        int count = 0;
        for (int k = 0; k < n; k++)
            if (pl->bufs[order[k]].device == d)
                mine[count++] = order[k];
        pack_device(pl, mine, count, &plan->devices[d]);
        plan->arena_bytes += plan->devices[d].arena_bytes;
        plan->tensor_bytes += plan->devices[d].tensor_bytes;
    }
    free(order);
    free(mine);
    return KEEL_OK;
}

/* ---- algorithms, memory, pointers ------------------------------------- */

static keel_status prepare_nodes(keel_plan *plan, const keel_plan_opts *opts)
{
    for (int d = 0; d < plan->n_devices; d++) {
        keel_plan_device *dev = &plan->devices[d];
        if (dev->backend->configure) {
            keel_status st = dev->backend->configure(dev->device, opts);
            if (st != KEEL_OK)
                return st;
        }
    }
    plan->algo = calloc((size_t)plan->n_sched + 1, sizeof *plan->algo);
    if (!plan->algo)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int s = 0; s < plan->n_sched; s++) {
        keel_node *x = plan->sched[s];
        keel_plan_device *dev = &plan->devices[plan->device_of[s]];
        const keel_backend *be = dev->backend;
        if (keel_op_get(x->op)->view)
            continue;
        if (!be->run[x->op])
            return keel_fail(KEEL_ERR_UNSUPPORTED, "op '%s' (node '%s') is not supported on backend '%s'",
                             keel_op_get(x->op)->name, x->name, be->name);
        if (be->prepare[x->op]) {
            int64_t ws = 0;
            keel_status st = be->prepare[x->op](dev->device, x, &ws, &plan->algo[s]);
            if (st != KEEL_OK)
                return keel_fail_prefix(st, "preparing '%s': ", x->name);
            if (ws > dev->workspace_bytes)
                dev->workspace_bytes = ws;
        }
    }
    for (int d = 0; d < plan->n_devices; d++) {
        plan->devices[d].workspace_bytes = align_up(plan->devices[d].workspace_bytes, ARENA_ALIGN);
        plan->workspace_bytes += plan->devices[d].workspace_bytes;
    }
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

static int64_t first_batch_size(const keel_graph *g)
{
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i]->op == KEEL_OP_INPUT && g->nodes[i]->ndim > 0)
            return g->nodes[i]->shape[0];
    return 0;
}

/* Checks what a device needs against what it has free before allocating
 * anything, so a plan that cannot fit says so with numbers. */
static keel_status check_fits(const keel_plan *plan, const keel_plan_device *dev, int64_t need)
{
    int64_t free_bytes = 0, total_bytes = 0;
    if (!dev->backend->memory_info || dev->backend->memory_info(dev->device, &free_bytes, &total_bytes) != KEEL_OK ||
        free_bytes <= 0 || need <= free_bytes)
        return KEEL_OK;
    char a[32], b[32];
    return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "the plan needs %s on %s, %s free%s", format_bytes(a, sizeof a, need),
                     dev->name, format_bytes(b, sizeof b, free_bytes),
                     first_batch_size(plan->graph) > 1 ? "; try a smaller --batch" : "");
}

/* Staging buffers for inputs copied while a step runs (create_staging). */
static int64_t staging_bytes(const keel_plan *plan)
{
    int64_t bytes = 0;
    for (int i = 0; plan->backend->copy_in && i < plan->graph->n_nodes; i++)
        if (plan->graph->nodes[i]->op == KEEL_OP_INPUT)
            bytes += node_bytes(plan->graph->nodes[i]);
    return bytes;
}

static keel_status allocate_memory(keel_plan *plan)
{
    for (int d = 0; d < plan->n_devices; d++) {
        keel_plan_device *dev = &plan->devices[d];
        int64_t blocks = (int64_t)sizeof(float) * (2 * dev->param_floats + dev->state_floats + 48);
        keel_status st = check_fits(plan, dev, dev->arena_bytes + dev->workspace_bytes + blocks +
                                                   (d == 0 ? staging_bytes(plan) : 0));
        if (st != KEEL_OK)
            return st;
    }
    for (int d = 0; d < plan->n_devices; d++) {
        keel_plan_device *dev = &plan->devices[d];
        dev->arena = dev->backend->alloc(dev->device, (size_t)(dev->arena_bytes ? dev->arena_bytes : ARENA_ALIGN));
        dev->workspace = dev->workspace_bytes ? dev->backend->alloc(dev->device, (size_t)dev->workspace_bytes) : NULL;
        char a[32];
        if (!dev->arena || (dev->workspace_bytes && !dev->workspace))
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %s for the plan on %s",
                             format_bytes(a, sizeof a, dev->arena_bytes + dev->workspace_bytes), dev->name);
        keel_status st = dev->backend->fill(dev->device, dev->arena, 0.0f, (size_t)dev->arena_bytes / sizeof(float));
        if (st != KEEL_OK)
            return st;
    }
    keel_status st = keel_plan_blocks_alloc(plan, true, &plan->param_blocks);
    if (st == KEEL_OK)
        st = keel_plan_blocks_alloc(plan, true, &plan->grad_blocks);
    if (st == KEEL_OK)
        st = keel_plan_blocks_alloc(plan, false, &plan->state_blocks);
    if (st == KEEL_OK)
        st = keel_plan_blocks_fill(plan, true, plan->grad_blocks, 0.0f);
    return st;
}

/* A staging buffer and two events per input, where the backend can copy
 * inputs while a step runs. */
static keel_status create_staging(keel_plan *plan)
{
    const keel_backend *be = plan->backend;
    keel_graph *g = plan->graph;
    if (!be->copy_in || !be->event_create)
        return KEEL_OK;
    plan->staged = calloc((size_t)g->n_nodes + 1, sizeof *plan->staged);
    if (!plan->staged)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for input staging");
    for (int i = 0; i < g->n_nodes; i++) {
        keel_node *x = g->nodes[i];
        if (x->op != KEEL_OP_INPUT || !plan->out_ptr[x->id])
            continue;
        keel_staged_input *in = &plan->staged[x->id];
        in->staging = be->alloc(plan->device, (size_t)node_bytes(x));
        if (!in->staging) {
            char a[32];
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %s to stage input '%s' on %s",
                             format_bytes(a, sizeof a, node_bytes(x)), x->name, plan->devices[0].name);
        }
        keel_status st = be->event_create(plan->device, &in->copied);
        if (st == KEEL_OK)
            st = be->event_create(plan->device, &in->staging_free);
        if (st != KEEL_OK)
            return st;
    }
    return KEEL_OK;
}

static void destroy_staging(keel_plan *plan)
{
    const keel_backend *be = plan->backend;
    for (int i = 0; plan->staged && i < plan->graph->n_nodes; i++) {
        keel_staged_input *in = &plan->staged[i];
        if (in->staging)
            be->free(plan->device, in->staging);
        if (in->copied)
            be->event_destroy(plan->device, in->copied);
        if (in->staging_free)
            be->event_destroy(plan->device, in->staging_free);
    }
    free(plan->staged);
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
        const keel_plan_device *dev = &plan->devices[p->device];
        if (st == KEEL_OK)
            st = dev->backend->upload(dev->device, keel_plan_param_ptr(plan, p), host, (size_t)p->numel * sizeof(float));
    }
    free(host);
    return st;
}

static void *buffer_ptr(const planner *pl, int b)
{
    const buffer *buf = &pl->bufs[b];
    return (char *)pl->plan->devices[buf->device].arena + buf->offset;
}

/* Points every scheduled node at its buffers. */
static keel_status bind_pointers(planner *pl)
{
    keel_plan *plan = pl->plan;
    keel_graph *g = pl->g;
    for (int k = 0; k < plan->n_params; k++) {
        const keel_plan_param *p = &plan->params[k];
        plan->out_ptr[p->node->id] = keel_plan_param_ptr(plan, p);
        if (p->node->trainable && p->node->grad && pl->buf_of[p->node->grad->id] == BUF_EXTERNAL)
            plan->out_ptr[p->node->grad->id] = keel_plan_grad_ptr(plan, p);
    }
    for (int i = 0; i < g->n_nodes; i++) {
        if (pl->buf_of[i] >= 0)
            plan->out_ptr[i] = buffer_ptr(pl, pl->buf_of[i]);
        if (pl->aux_buf_of[i] >= 0)
            plan->aux_ptr[i] = buffer_ptr(pl, pl->aux_buf_of[i]);
    }
    for (int s = 0; s < plan->n_sched; s++) /* views, in order: a view of a view works */
        if (pl->buf_of[plan->sched[s]->id] == BUF_VIEW)
            plan->out_ptr[plan->sched[s]->id] = plan->out_ptr[plan->sched[s]->inputs[0]->id];
    /* Gradients that cannot write into the block are copied there on the
     * parameter device after each backward pass. */
    plan->grad_copies = calloc((size_t)plan->n_params + 1, sizeof *plan->grad_copies);
    if (!plan->grad_copies)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory binding the plan");
    int n_copies = 0;
    for (int k = 0; k < plan->n_params; k++) {
        const keel_plan_param *p = &plan->params[k];
        keel_node *grad = p->node->grad;
        if (!p->node->trainable || !grad || plan->out_ptr[grad->id] == keel_plan_grad_ptr(plan, p))
            continue;
        if (!plan->out_ptr[grad->id])
            return keel_fail(KEEL_ERR_STATE, "the gradient of '%s' is not computed by the plan", p->node->name);
        plan->grad_copies[n_copies++] = (keel_plan_copy){
            .node = grad,
            .dst_device = plan->devices[p->device].device,
            .src_device = plan->devices[home_device(pl, grad)].device,
            .dst = keel_plan_grad_ptr(plan, p),
            .src = plan->out_ptr[grad->id],
            .bytes = p->numel * (int64_t)sizeof(float),
        };
    }
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

/* Devices that copy: each node reads its device's copies, filled before the
 * first reader. */
static keel_status bind_copies(planner *pl)
{
    keel_plan *plan = pl->plan;
    if (!plan->copy_between_devices)
        return KEEL_OK;
    plan->copies_before = calloc((size_t)plan->n_sched + 1, sizeof *plan->copies_before);
    if (!plan->copies_before)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory binding copies between devices");
    for (int s = 0; s < plan->n_sched; s++) {
        const keel_node *x = plan->sched[s];
        keel_plan_device *dev = &plan->devices[plan->device_of[s]];
        plan->copies_before[s] = calloc((size_t)x->n_inputs + 1, sizeof(keel_plan_copy));
        if (!plan->copies_before[s])
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory binding copies between devices");
        int n_before = 0;
        for (int j = 0; j < x->n_inputs && !keel_op_get(x->op)->view; j++) {
            const keel_node *v = x->inputs[j];
            int mirror = pl->mirror_of[(size_t)v->id * (size_t)plan->n_devices + (size_t)plan->device_of[s]];
            if (mirror < 0)
                continue;
            void *copy = buffer_ptr(pl, mirror);
            bool seen = false;
            for (int i = 0; i < j; i++)
                seen |= plan->in_ptrs[s][i] == copy;
            plan->in_ptrs[s][j] = copy;
            if (seen)
                continue; /* the node reads one tensor twice */
            keel_device *home = plan->devices[home_device(pl, v)].device;
            keel_plan_copy in = {v, dev->device, home, copy, plan->out_ptr[v->id], node_bytes(v)};
            if (pl->bufs[mirror].first == s)
                plan->copies_before[s][n_before++] = in;
        }
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
        if (pl->bufs[b].first >= 0 && pl->bufs[b].last < plan->n_sched)
            count[pl->bufs[b].last]++;
    keel_status st = KEEL_OK;
    for (int s = 0; s < plan->n_sched && st == KEEL_OK; s++) {
        plan->dying[s] = calloc((size_t)count[s] + 1, sizeof(keel_poison));
        if (!plan->dying[s]) {
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
            break;
        }
        int n = 0;
        for (int b = 0; b < pl->n_bufs; b++)
            if (pl->bufs[b].first >= 0 && pl->bufs[b].last == s)
                plan->dying[s][n++] = (keel_poison){buffer_ptr(pl, b), pl->bufs[b].bytes / (int64_t)sizeof(float)};
    }
    free(count);
    return st;
}

static keel_status compile(planner *pl, const keel_plan_opts *opts)
{
    keel_plan *plan = pl->plan;
    keel_status st = keel_plan_open_devices(plan, opts->devices);
    if (st == KEEL_OK)
        st = build_schedule(plan);
    if (st == KEEL_OK)
        st = keel_plan_list_cross_deps(plan);
    if (st == KEEL_OK)
        st = keel_plan_create_events(plan);
    if (st == KEEL_OK)
        st = layout_params(pl);
    if (st == KEEL_OK)
        st = assign_buffers(pl);
    if (st == KEEL_OK)
        st = place_mirrors(pl);
    if (st == KEEL_OK)
        st = pack_arenas(pl);
    if (st == KEEL_OK)
        st = prepare_nodes(plan, opts);
    if (st == KEEL_OK)
        st = allocate_memory(plan);
    if (st == KEEL_OK)
        st = init_params(plan);
    if (st == KEEL_OK)
        st = bind_pointers(pl);
    if (st == KEEL_OK)
        st = bind_copies(pl);
    if (st == KEEL_OK)
        st = create_staging(plan);
    if (st == KEEL_OK && plan->poison_dead)
        st = list_dying(pl);
    if (st == KEEL_OK && plan->n_devices > 1)
        st = keel_workers_start(plan);
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
    size_t n = (size_t)g->n_nodes + 1;
    keel_plan *plan = calloc(1, sizeof *plan);
    planner pl = {.plan = plan, .g = g};
    if (plan) {
        plan->graph = g;
        plan->ctx = ctx;
        plan->seed = opts->seed;
        plan->poison_dead = opts->poison_dead;
        plan->copy_between_devices = opts->copy_between_devices;
        plan->out_ptr = calloc(n, sizeof *plan->out_ptr);
        plan->aux_ptr = calloc(n, sizeof *plan->aux_ptr);
        plan->in_ptrs = calloc(n, sizeof *plan->in_ptrs);
        plan->pos_of = malloc(n * sizeof *plan->pos_of);
        pl.buf_of = malloc(n * sizeof *pl.buf_of);
        pl.aux_buf_of = malloc(n * sizeof *pl.aux_buf_of);
        pl.ext_device = calloc(n, sizeof *pl.ext_device);
    }
    keel_status st = KEEL_OK;
    if (!plan || !plan->out_ptr || !plan->aux_ptr || !plan->in_ptrs || !plan->pos_of || !pl.buf_of ||
        !pl.aux_buf_of || !pl.ext_device) {
        st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory compiling the plan");
    } else {
        for (int i = 0; i < g->n_nodes; i++)
            pl.buf_of[i] = pl.aux_buf_of[i] = plan->pos_of[i] = -1; /* none */
        st = compile(&pl, opts);
    }
    free(pl.buf_of);
    free(pl.aux_buf_of);
    free(pl.bufs);
    free(pl.mirror_of);
    free(pl.ext_device);
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
    keel_workers_stop(plan);
    for (int d = 0; d < plan->n_devices; d++)
        if (plan->devices[d].device && plan->devices[d].backend->sync)
            plan->devices[d].backend->sync(plan->devices[d].device);
    keel_plan_blocks_free(plan, plan->param_blocks);
    keel_plan_blocks_free(plan, plan->grad_blocks);
    keel_plan_blocks_free(plan, plan->state_blocks);
    keel_plan_destroy_events(plan);
    destroy_staging(plan);
    for (int d = 0; d < plan->n_devices; d++) {
        keel_plan_device *dev = &plan->devices[d];
        if (!dev->device)
            continue;
        const keel_backend *be = dev->backend;
        if (be->sync)
            be->sync(dev->device);
        for (int s = 0; plan->algo && s < plan->n_sched; s++)
            if (plan->algo[s] && plan->device_of[s] == d && be->release_algo)
                be->release_algo(dev->device, plan->algo[s]);
        be->free(dev->device, dev->arena);
        be->free(dev->device, dev->workspace);
        if (dev->owned)
            be->close(dev->device);
        free(dev->positions);
    }
    for (int s = 0; s < plan->n_sched; s++) {
        if (plan->in_ptrs)
            free(plan->in_ptrs[s]);
        if (plan->dying)
            free(plan->dying[s]);
        if (plan->cross_deps)
            free(plan->cross_deps[s]);
        if (plan->copies_before)
            free(plan->copies_before[s]);
    }
    free(plan->devices);
    free(plan->copies_before);
    free(plan->grad_copies);
    free(plan->cross_deps);
    free(plan->dying);
    free(plan->node_seconds);
    free(plan->node_runs);
    free(plan->in_ptrs);
    free(plan->algo);
    free(plan->out_ptr);
    free(plan->aux_ptr);
    free(plan->pos_of);
    free(plan->device_of);
    free(plan->sched);
    free(plan->params);
    free(plan);
}
