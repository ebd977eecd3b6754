/* The devices of a plan: the device list parsed and opened, peer access
 * between them (or the choice to copy between them), and the events that
 * order their queues around the nodes another device reads. */
#include "graph/plan_internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static keel_status parse_one_device(const char *spec, size_t len, const keel_backend **backend, int *index)
{
    char text[64] = {0};
    if (len == 0 || len >= sizeof text)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "device '%.*s' is not 'cpu[:N]' or 'cuda[:N]'", (int)len, spec);
    memcpy(text, spec, len);
    char *colon = strchr(text, ':');
    int idx = 0;
    if (colon) {
        char *end = NULL;
        long v = strtol(colon + 1, &end, 10);
        if (!colon[1] || *end || v < 0 || v > 1024)
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "device '%s': the index after ':' must be a number", text);
        idx = (int)v;
        *colon = '\0';
    }
    if (strcmp(text, "cpu") == 0) {
        *backend = &keel_cpu_backend;
    } else if (strcmp(text, "cuda") == 0) {
#ifdef KEEL_HAVE_CUDA
        int count = keel_cuda_backend.device_count();
        if (idx >= count)
            return keel_fail(KEEL_ERR_NOT_FOUND, "device 'cuda:%d': %d CUDA device%s found%s", idx, count,
                             count == 1 ? "" : "s", count == 0 ? " (is the NVIDIA driver loaded?)" : "");
        *backend = &keel_cuda_backend;
#else
        return keel_fail(KEEL_ERR_UNSUPPORTED,
                         "device 'cuda:%d': this libkeel was built without CUDA (configure with -Dcuda=enabled)",
                         idx);
#endif
    } else {
        if (colon)
            *colon = ':';
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "device '%s' is not 'cpu[:N]' or 'cuda[:N]'", text);
    }
    *index = idx;
    return KEEL_OK;
}

/* "cpu", "cuda:0", "cpu:0,cpu:1": one entry per device, all of one kind. */
keel_status keel_plan_open_devices(keel_plan *plan, const char *spec)
{
    const char *devices = spec && *spec ? spec : "cpu";
    int n = 1;
    for (const char *c = devices; *c; c++)
        n += *c == ',';
    plan->devices = calloc((size_t)n, sizeof *plan->devices);
    if (!plan->devices)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory opening devices");
    const char *at = devices;
    for (int d = 0; d < n; d++) {
        const char *comma = strchr(at, ',');
        size_t len = comma ? (size_t)(comma - at) : strlen(at);
        keel_plan_device *dev = &plan->devices[d];
        int index = 0;
        keel_status st = parse_one_device(at, len, &dev->backend, &index);
        if (st != KEEL_OK)
            return st;
        dev->index = index;
        int repeats = 0; /* a GPU named again is another stream on it */
        for (int e = 0; e < d; e++) {
            if (plan->devices[e].backend != dev->backend)
                return keel_fail(KEEL_ERR_UNSUPPORTED, "devices '%s' mix %s and %s; use devices of one kind",
                                 devices, plan->devices[e].backend->name, dev->backend->name);
            repeats += plan->devices[e].index == index;
        }
        if (repeats && !dev->backend->event_create)
            return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "devices '%s' name %s:%d twice", devices, dev->backend->name,
                             index);
        if (repeats)
            snprintf(dev->name, sizeof dev->name, "%s:%d.%d", dev->backend->name, index, repeats);
        else
            snprintf(dev->name, sizeof dev->name, "%s:%d", dev->backend->name, index);
        if (n == 1) {
            st = keel_context_device(plan->ctx, dev->backend, index, &dev->device);
        } else {
            /* Logical CPU devices share the host: each gets its own share of
             * the cores, its own thread and its own arena. A GPU device gets
             * its own stream and library handles. */
            int threads = keel_context_threads(plan->ctx) / n;
            st = dev->backend->open(&dev->device, index, threads > 0 ? threads : 1);
            dev->owned = st == KEEL_OK;
        }
        if (st != KEEL_OK)
            return st;
        plan->n_devices++;
        at = comma ? comma + 1 : at + len;
    }
    plan->backend = plan->devices[0].backend;
    plan->device = plan->devices[0].device;
    plan->device_index = 0;
    /* Every device reads the others' memory where they are different GPUs
     * with a path between them, and copies what it reads where any pair has
     * none. */
    for (int a = 0; a < n && plan->backend->connect_peer; a++)
        for (int b = 0; b < n; b++) {
            bool direct = true;
            keel_status st = a == b ? KEEL_OK
                                    : plan->backend->connect_peer(plan->devices[a].device, plan->devices[b].device,
                                                                  &direct);
            if (st != KEEL_OK)
                return st;
            plan->copy_between_devices |= !direct;
        }
    if (n == 1)
        plan->copy_between_devices = false;
    return KEEL_OK;
}

/* For each node, the nodes on other devices it must wait for. */
keel_status keel_plan_list_cross_deps(keel_plan *plan)
{
    plan->cross_deps = calloc((size_t)plan->n_sched + 1, sizeof *plan->cross_deps);
    if (!plan->cross_deps)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int s = 0; s < plan->n_sched; s++) {
        keel_node *x = plan->sched[s];
        int *deps = malloc(((size_t)x->n_inputs + 2) * sizeof *deps);
        if (!deps)
            return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory");
        int n = 0;
        for (int j = 0; j <= x->n_inputs; j++) {
            const keel_node *from = j < x->n_inputs ? x->inputs[j] : x->fwd;
            int q = from ? plan->pos_of[from->id] : -1;
            if (q >= 0 && plan->device_of[q] != plan->device_of[s])
                deps[n++] = q;
        }
        deps[n] = -1;
        plan->cross_deps[s] = deps;
    }
    return KEEL_OK;
}

/* Devices that queue their work order it with events: one after each node
 * another device reads, and one per device to start and end each range. */
keel_status keel_plan_create_events(keel_plan *plan)
{
    const keel_backend *be = plan->backend;
    if (plan->n_devices < 2 || !be->event_create)
        return KEEL_OK;
    plan->node_events = calloc((size_t)plan->n_sched + 1, sizeof *plan->node_events);
    plan->end_events = calloc((size_t)plan->n_devices, sizeof *plan->end_events);
    if (!plan->node_events || !plan->end_events)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "out of memory for device events");
    keel_status st = be->event_create(plan->devices[0].device, &plan->start_event);
    for (int d = 0; d < plan->n_devices && st == KEEL_OK; d++)
        st = be->event_create(plan->devices[d].device, &plan->end_events[d]);
    for (int s = 0; s < plan->n_sched && st == KEEL_OK; s++)
        for (const int *q = plan->cross_deps[s]; *q >= 0 && st == KEEL_OK; q++)
            if (!plan->node_events[*q])
                st = be->event_create(plan->devices[plan->device_of[*q]].device, &plan->node_events[*q]);
    return st;
}

void keel_plan_destroy_events(keel_plan *plan)
{
    const keel_backend *be = plan->backend;
    if (!be || !be->event_destroy)
        return;
    for (int s = 0; plan->node_events && s < plan->n_sched; s++)
        if (plan->node_events[s])
            be->event_destroy(plan->devices[plan->device_of[s]].device, plan->node_events[s]);
    for (int d = 0; plan->end_events && d < plan->n_devices; d++)
        if (plan->end_events[d])
            be->event_destroy(plan->devices[d].device, plan->end_events[d]);
    if (plan->start_event)
        be->event_destroy(plan->devices[0].device, plan->start_event);
    free(plan->node_events);
    free(plan->end_events);
}
