/* Convolution on the CPU through oneDNN's JIT primitives, the engine PyTorch
 * uses for CPU convolutions.
 *
 * Keel's tensors are plain NCHW and OIHW (GOIHW when grouped). The primitives
 * are created with "any" layouts so that oneDNN picks its fastest ones
 * (channels blocked by 16 on AVX-512); each operand whose chosen layout
 * differs from Keel's is reordered into the workspace before the convolution
 * (inputs) or back out of it after (the output). Everything is created at
 * compile time, every scratchpad is a slice of the plan's workspace, and a
 * run only points the memory objects at this step's buffers: nothing
 * allocates in a step.
 *
 * The forward and the data gradient are one primitive each, on all the
 * device's threads, which oneDNN splits over outputs, never within a sum
 * (tests/test_planner.c compares one thread against two). The weight
 * gradient sums over the batch, and oneDNN would split that
 * sum over threads, so its bits would change with the thread count (and with
 * a plan's split over several CPU devices). Here it is cut instead into a
 * fixed number of slices of the output channels (slices_of): each slice is a
 * single-threaded primitive over the whole batch, the slices run in an
 * OpenMP loop, and the result is the same for any thread count.
 *
 * oneDNN here runs on OpenMP (libgomp, the pool our own kernels use) and
 * sizes its parallel regions by omp_get_max_threads(), so each call sets that
 * to the device's thread count and restores the caller's afterwards.
 *
 * Which nodes oneDNN takes is decided per node (suits_dnnl); KEEL_CPU_CONV in
 * the environment when a plan is compiled overrides it (engine_of). A shape
 * oneDNN has no implementation for runs on conv.c's reference path. */
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include "cpu/conv_dnnl.h"

enum { WORKSPACE_ALIGN = 64 };
/* The data gradient of images with fewer channels per group than this stays
 * on col2im (see suits_dnnl). */
enum { MIN_DATA_CHANNELS = 8 };
/* Likewise the forward of layers with fewer filters per group than this
 * (LeNet-5's first layer: 6 filters padded to a block of 16). */
enum { MIN_FORWARD_FILTERS = 8 };
/* The weight gradient's output-channel slices: at most MAX_SLICES, each a
 * multiple of SLICE_CHANNELS (oneDNN's channel block). */
enum { MAX_SLICES = 8, SLICE_CHANNELS = 16 };
/* A weight gradient that does not slice still goes to oneDNN, as one
 * single-threaded slice, up to this many multiply-adds. */
enum { SMALL_WORK = 1 << 25 };
/* Below this many floats an OpenMP region costs more than it saves. */
enum { PARALLEL_MIN_FLOATS = 1 << 15 };

/* ---- the engine ------------------------------------------------------------ */

static dnnl_engine_t shared_engine;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;

/* One CPU engine for the process: it holds no per-plan state. */
static void create_engine(void)
{
    if (dnnl_engine_create(&shared_engine, dnnl_cpu, 0) != dnnl_success)
        shared_engine = NULL;
}

/* ---- shapes -------------------------------------------------------------- */

/* The conv2d a node belongs to: its image side, output side and weight, with
 * `filters` output channels (the weight gradient's slices have fewer). */
typedef struct conv_shape {
    dnnl_dims_t image, output, weight, bias;
    int weight_ndims;
    dnnl_dims_t strides, dilates, pad_l, pad_r;
} conv_shape;

static const int64_t *image_dims(const keel_node *node)
{
    return (node->op == KEEL_OP_CONV2D_BWD_DATA || node->op == KEEL_OP_CONV_TRANSPOSE2D) ? node->shape
                                                                                        : node->inputs[0]->shape;
}

static const int64_t *output_dims(const keel_node *node)
{
    switch (node->op) {
    case KEEL_OP_CONV2D_BWD_DATA:
    case KEEL_OP_CONV_TRANSPOSE2D:
        return node->inputs[0]->shape;
    case KEEL_OP_CONV2D_BWD_WEIGHT:
        return node->inputs[1]->shape;
    default:
        return node->shape;
    }
}

static conv_shape shape_of(const keel_node *node, int64_t filters)
{
    const keel_conv_attrs *a = &node->attrs.conv;
    const int64_t *image = image_dims(node), *output = output_dims(node);
    conv_shape s = {
        .image = {image[0], image[1], image[2], image[3]},
        .output = {output[0], filters, output[2], output[3]},
        .bias = {filters},
        .strides = {a->stride_h, a->stride_w},
        .dilates = {a->dilation_h - 1, a->dilation_w - 1},
        .pad_l = {a->pad_top, a->pad_left},
        .pad_r = {a->pad_bottom, a->pad_right},
    };
    int64_t groups = a->groups, channels = image[1];
    if (groups > 1) {
        int64_t w[5] = {groups, filters / groups, channels / groups, a->kernel_h, a->kernel_w};
        memcpy(s.weight, w, sizeof w);
        s.weight_ndims = 5;
    } else {
        int64_t w[4] = {filters, channels, a->kernel_h, a->kernel_w};
        memcpy(s.weight, w, sizeof w);
        s.weight_ndims = 4;
    }
    return s;
}

static void init_md(dnnl_memory_desc_t *md, int ndims, const dnnl_dims_t dims, dnnl_format_tag_t tag)
{
    dnnl_memory_desc_init_by_tag(md, ndims, dims, dnnl_f32, tag);
}

/* Keel's plain layouts of a shape's three tensors. */
static void plain_mds(const conv_shape *s, dnnl_memory_desc_t *image, dnnl_memory_desc_t *weight,
                      dnnl_memory_desc_t *output)
{
    init_md(image, 4, s->image, dnnl_nchw);
    init_md(weight, s->weight_ndims, s->weight, s->weight_ndims == 5 ? dnnl_goihw : dnnl_oihw);
    init_md(output, 4, s->output, dnnl_nchw);
}

/* ---- building primitives ----------------------------------------------------- */

typedef struct builder {
    dnnl_primitive_attr_t attr;   /* user-managed scratchpad */
    int64_t scratch_bytes;        /* the largest scratchpad seen */
} builder;

static int64_t align_up(int64_t n)
{
    return (n + WORKSPACE_ALIGN - 1) / WORKSPACE_ALIGN * WORKSPACE_ALIGN;
}

/* A memory object, no buffer yet: handles are set at run time. */
static dnnl_status_t new_memory(dnnl_memory_t *out, const dnnl_memory_desc_t *md)
{
    return dnnl_memory_create(out, md, shared_engine, DNNL_MEMORY_NONE);
}

/* A memory object for a primitive's scratchpad (NULL when it needs none);
 * notes the size in b. */
static dnnl_status_t scratch_memory(builder *b, const_dnnl_primitive_desc_t pd, dnnl_memory_t *out)
{
    *out = NULL;
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t bytes = md ? dnnl_memory_desc_get_size(md) : 0;
    if (bytes == 0)
        return dnnl_success;
    if ((int64_t)bytes > b->scratch_bytes)
        b->scratch_bytes = (int64_t)bytes;
    return new_memory(out, md);
}

/* A reorder from -> to and its scratchpad memory. */
static dnnl_status_t new_reorder(builder *b, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                                 dnnl_primitive_t *reorder, dnnl_memory_t *scratch)
{
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t st = dnnl_reorder_primitive_desc_create(&pd, from, shared_engine, to, shared_engine, b->attr);
    if (st == dnnl_success)
        st = dnnl_primitive_create(reorder, pd);
    if (st == dnnl_success)
        st = scratch_memory(b, pd, scratch);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    return st;
}

/* The convolution's primitive descriptor for `op`, all layouts "any";
 * backward kinds take the forward one as their hint. */
static dnnl_status_t conv_pd(builder *b, keel_op op, const conv_shape *s, bool with_bias,
                             dnnl_primitive_desc_t *out)
{
    dnnl_memory_desc_t image, weight, output, bias;
    init_md(&image, 4, s->image, dnnl_format_tag_any);
    init_md(&weight, s->weight_ndims, s->weight, dnnl_format_tag_any);
    init_md(&output, 4, s->output, dnnl_format_tag_any);
    init_md(&bias, 1, s->bias, dnnl_a);
    dnnl_convolution_desc_t forward, backward;
    dnnl_primitive_desc_t hint = NULL;
    dnnl_status_t st = dnnl_dilated_convolution_forward_desc_init(
        &forward, dnnl_forward_training, dnnl_convolution_direct, &image, &weight, with_bias ? &bias : NULL,
        &output, s->strides, s->dilates, s->pad_l, s->pad_r);
    if (st != dnnl_success || op == KEEL_OP_CONV2D)
        return st == dnnl_success ? dnnl_primitive_desc_create(out, &forward, b->attr, shared_engine, NULL) : st;
    st = dnnl_primitive_desc_create(&hint, &forward, b->attr, shared_engine, NULL);
    if (st == dnnl_success && op == KEEL_OP_CONV2D_BWD_WEIGHT)
        st = dnnl_dilated_convolution_backward_weights_desc_init(&backward, dnnl_convolution_direct, &image,
                                                                 &weight, NULL, &output, s->strides, s->dilates,
                                                                 s->pad_l, s->pad_r);
    else if (st == dnnl_success)
        st = dnnl_dilated_convolution_backward_data_desc_init(&backward, dnnl_convolution_direct, &image, &weight,
                                                              &output, s->strides, s->dilates, s->pad_l, s->pad_r);
    if (st == dnnl_success)
        st = dnnl_primitive_desc_create(out, &backward, b->attr, shared_engine, hint);
    if (hint)
        dnnl_primitive_desc_destroy(hint);
    return st;
}

static const dnnl_memory_desc_t *chosen_md(const_dnnl_primitive_desc_t pd, dnnl_query_t what)
{
    return dnnl_primitive_desc_query_md(pd, what, 0);
}

/* ---- the forward and the data gradient: one primitive on every thread ------ */

enum { IN0, IN1, OUT, OPERANDS };

/* One operand: Keel's buffer and, when the primitive wants another layout,
 * its copy in the workspace and the reorder between them. */
typedef struct operand {
    int arg;                    /* DNNL_ARG_SRC, DNNL_ARG_DIFF_DST, ... */
    dnnl_memory_t user;         /* Keel's plain buffer */
    dnnl_memory_t inner;        /* NULL: the primitive reads or writes user directly */
    dnnl_primitive_t reorder;   /* user -> inner (inputs), inner -> user (the output) */
    dnnl_memory_t reorder_scratch;
    int64_t offset;             /* of inner in the workspace, after the scratchpad */
} operand;

typedef struct whole_conv {
    dnnl_primitive_t conv;
    dnnl_memory_t conv_scratch;   /* the scratchpad sits at workspace offset 0 */
    dnnl_memory_t bias;           /* a forward with bias */
    operand operands[OPERANDS];
    int64_t copies_bytes;
} whole_conv;

/* ---- the weight gradient: output-channel slices, one thread each ------------ */

/* What one thread uses while it computes a slice. */
typedef struct slice_slot {
    dnnl_stream_t stream;
    dnnl_memory_t dy_user, dy_inner;          /* this slice's channels of dy */
    dnnl_memory_t dw_inner, dw_user;          /* this slice's rows of dw */
    dnnl_memory_t conv_scratch, dy_scratch, dw_scratch;
    dnnl_memory_t image;                      /* the shared image, as the primitive reads it */
    int64_t offset;                           /* of the slot's region in the workspace */
} slice_slot;

typedef struct sliced_grad {
    int slices;
    int64_t slice_filters;
    dnnl_primitive_t conv;                    /* single-threaded, one slice, whole batch */
    dnnl_primitive_t dy_reorder, dw_reorder;  /* single-threaded; NULL: layouts agree */
    operand image;                            /* x, reordered once on every thread */
    slice_slot *slots;
    int n_slots;
    int64_t dy_inner_offset, dw_inner_offset; /* within a slot, after its scratchpad */
    int64_t slot_bytes;
    int64_t workspace_bytes;
} sliced_grad;

/* A node's algo: what prepare built. */
typedef struct conv_dnnl {
    bool sliced;            /* a weight gradient (grad), else whole */
    int threads;
    int64_t workspace_bytes;
    dnnl_stream_t stream;
    whole_conv whole;
    sliced_grad grad;
} conv_dnnl;

/* Sets up operand `op`: Keel's plain layout `user_md` and the layout the
 * primitive chose; a reorder when they differ. */
static dnnl_status_t setup_operand(builder *b, operand *op, int arg, const dnnl_memory_desc_t *user_md,
                                   const dnnl_memory_desc_t *chosen, bool is_output, int64_t *copies_bytes)
{
    op->arg = arg;
    dnnl_status_t st = new_memory(&op->user, user_md);
    if (st != dnnl_success || !chosen)
        return st != dnnl_success ? st : dnnl_runtime_error;
    if (dnnl_memory_desc_equal(user_md, chosen))
        return dnnl_success;
    op->offset = *copies_bytes;
    *copies_bytes += align_up((int64_t)dnnl_memory_desc_get_size(chosen));
    st = new_memory(&op->inner, chosen);
    if (st == dnnl_success)
        st = is_output ? new_reorder(b, chosen, user_md, &op->reorder, &op->reorder_scratch)
                       : new_reorder(b, user_md, chosen, &op->reorder, &op->reorder_scratch);
    return st;
}

static dnnl_status_t build_whole(builder *b, const keel_node *node, whole_conv *w)
{
    const int64_t filters = output_dims(node)[1];
    conv_shape s = shape_of(node, filters);
    bool with_bias = node->op == KEEL_OP_CONV2D && node->attrs.conv.has_bias && node->n_inputs > 2;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t st = conv_pd(b, node->op, &s, with_bias, &pd);
    if (st == dnnl_success)
        st = dnnl_primitive_create(&w->conv, pd);
    if (st == dnnl_success)
        st = scratch_memory(b, pd, &w->conv_scratch);
    dnnl_memory_desc_t image, weight, output;
    plain_mds(&s, &image, &weight, &output);
    operand *o = w->operands;
    int64_t *copies = &w->copies_bytes;
    if (st == dnnl_success && node->op == KEEL_OP_CONV2D) {
        st = setup_operand(b, &o[IN0], DNNL_ARG_SRC, &image, chosen_md(pd, dnnl_query_src_md), false, copies);
        if (st == dnnl_success)
            st = setup_operand(b, &o[IN1], DNNL_ARG_WEIGHTS, &weight, chosen_md(pd, dnnl_query_weights_md), false,
                               copies);
        if (st == dnnl_success)
            st = setup_operand(b, &o[OUT], DNNL_ARG_DST, &output, chosen_md(pd, dnnl_query_dst_md), true, copies);
    } else if (st == dnnl_success) {   /* data gradient, transposed convolution */
        st = setup_operand(b, &o[IN0], DNNL_ARG_DIFF_DST, &output, chosen_md(pd, dnnl_query_diff_dst_md), false,
                           copies);
        if (st == dnnl_success)
            st = setup_operand(b, &o[IN1], DNNL_ARG_WEIGHTS, &weight, chosen_md(pd, dnnl_query_weights_md), false,
                               copies);
        if (st == dnnl_success)
            st = setup_operand(b, &o[OUT], DNNL_ARG_DIFF_SRC, &image, chosen_md(pd, dnnl_query_diff_src_md), true,
                               copies);
    }
    if (st == dnnl_success && with_bias) {
        dnnl_memory_desc_t bias;
        init_md(&bias, 1, s.bias, dnnl_a);
        st = new_memory(&w->bias, &bias);
    }
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    return st;
}

/* How many output-channel slices the weight gradient of `node` takes: the
 * most (up to MAX_SLICES) that cut its filters into equal multiples of
 * SLICE_CHANNELS; else one, single-threaded, when the whole gradient is at
 * most SMALL_WORK multiply-adds (LeNet-5's layers: 3x faster than im2col's
 * thin GEMMs); else 0, for conv.c. It depends on the shape only, so the
 * result does not depend on the thread count. */
static int slices_of(const keel_node *node)
{
    const int64_t *image = image_dims(node), *out = output_dims(node);
    const int64_t filters = out[1];
    if (node->attrs.conv.groups == 1)
        for (int slices = MAX_SLICES; slices >= 2; slices--)
            if (filters % slices == 0 && (filters / slices) % SLICE_CHANNELS == 0)
                return slices;
    const int64_t weights = filters * (image[1] / node->attrs.conv.groups) * node->attrs.conv.kernel_h *
                            node->attrs.conv.kernel_w;
    return weights * out[0] * out[2] * out[3] <= SMALL_WORK ? 1 : 0;
}

static void release_slot(slice_slot *s)
{
    dnnl_memory_t memories[] = {s->dy_user, s->dy_inner, s->dw_inner, s->dw_user, s->conv_scratch,
                                s->dy_scratch, s->dw_scratch, s->image};
    for (size_t i = 0; i < sizeof memories / sizeof memories[0]; i++)
        if (memories[i])
            dnnl_memory_destroy(memories[i]);
    if (s->stream)
        dnnl_stream_destroy(s->stream);
}

/* The memory objects and stream of one slot; `image_md` is the layout the
 * slice primitive reads the image in. */
static dnnl_status_t build_slot(sliced_grad *g, slice_slot *slot, const dnnl_memory_desc_t *dy_user_md,
                                const dnnl_memory_desc_t *dy_md, const dnnl_memory_desc_t *dw_md,
                                const dnnl_memory_desc_t *dw_user_md, const dnnl_memory_desc_t *image_md,
                                const dnnl_memory_desc_t *scratch_mds[3])
{
    dnnl_status_t st = dnnl_stream_create(&slot->stream, shared_engine, dnnl_stream_default_flags);
    if (st == dnnl_success)
        st = new_memory(&slot->dy_user, dy_user_md);
    if (st == dnnl_success && g->dy_reorder)
        st = new_memory(&slot->dy_inner, dy_md);
    if (st == dnnl_success && g->dw_reorder)
        st = new_memory(&slot->dw_inner, dw_md);
    if (st == dnnl_success)
        st = new_memory(&slot->dw_user, dw_user_md);
    if (st == dnnl_success)
        st = new_memory(&slot->image, image_md);
    dnnl_memory_t *scratch[3] = {&slot->conv_scratch, &slot->dy_scratch, &slot->dw_scratch};
    for (int i = 0; i < 3 && st == dnnl_success; i++)
        if (scratch_mds[i])
            st = new_memory(scratch[i], scratch_mds[i]);
    return st;
}

static const dnnl_memory_desc_t *scratch_md_of(const_dnnl_primitive_t p)
{
    const_dnnl_primitive_desc_t pd = NULL;
    if (!p || dnnl_primitive_get_primitive_desc(p, &pd) != dnnl_success)
        return NULL;
    const dnnl_memory_desc_t *md = chosen_md(pd, dnnl_query_scratchpad_md);
    return md && dnnl_memory_desc_get_size(md) > 0 ? md : NULL;
}

/* The slice primitive and its reorders are created single-threaded (the
 * caller has set omp_set_num_threads(1)); the image's reorder afterwards on
 * every thread. */
static dnnl_status_t build_slice_primitives(builder *b, const keel_node *node, sliced_grad *g,
                                            dnnl_primitive_desc_t *pd, dnnl_memory_desc_t *dy_user_md,
                                            dnnl_memory_desc_t *dw_user_md)
{
    const int64_t filters = output_dims(node)[1];
    conv_shape slice = shape_of(node, g->slice_filters);
    dnnl_status_t st = conv_pd(b, KEEL_OP_CONV2D_BWD_WEIGHT, &slice, false, pd);
    if (st != dnnl_success)
        return st;
    st = dnnl_primitive_create(&g->conv, *pd);
    /* dy's slice: some channels of the plain tensor, whose samples lie
     * `filters` channels apart. */
    const int64_t *out = slice.output;
    dnnl_dims_t dy_strides = {filters * out[2] * out[3], out[2] * out[3], out[3], 1};
    if (st == dnnl_success)
        st = dnnl_memory_desc_init_by_strides(dy_user_md, 4, slice.output, dnnl_f32, dy_strides);
    dnnl_memory_desc_t image_plain, output_plain;
    plain_mds(&slice, &image_plain, dw_user_md, &output_plain);
    const dnnl_memory_desc_t *dy_md = chosen_md(*pd, dnnl_query_diff_dst_md);
    const dnnl_memory_desc_t *dw_md = chosen_md(*pd, dnnl_query_diff_weights_md);
    if (st == dnnl_success && (!dy_md || !dw_md))
        st = dnnl_runtime_error;
    dnnl_memory_t unused = NULL;
    if (st == dnnl_success && !dnnl_memory_desc_equal(dy_user_md, dy_md))
        st = new_reorder(b, dy_user_md, dy_md, &g->dy_reorder, &unused);
    if (unused)
        dnnl_memory_destroy(unused);
    unused = NULL;
    if (st == dnnl_success && !dnnl_memory_desc_equal(dw_md, dw_user_md))
        st = new_reorder(b, dw_md, dw_user_md, &g->dw_reorder, &unused);
    if (unused)
        dnnl_memory_destroy(unused);
    return st;
}

static dnnl_status_t build_sliced(builder *b, const keel_node *node, sliced_grad *g, int threads)
{
    g->slices = slices_of(node);
    g->slice_filters = output_dims(node)[1] / g->slices;
    g->n_slots = threads < g->slices ? threads : g->slices;
    g->slots = calloc((size_t)g->n_slots, sizeof *g->slots);
    if (!g->slots)
        return dnnl_out_of_memory;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_memory_desc_t dy_user_md, dw_user_md;
    omp_set_num_threads(1);
    dnnl_status_t st = build_slice_primitives(b, node, g, &pd, &dy_user_md, &dw_user_md);
    omp_set_num_threads(threads);
    /* The image, whole: reordered once per run, shared by the slices. */
    conv_shape whole = shape_of(node, output_dims(node)[1]);
    dnnl_memory_desc_t image_plain, weight_plain, output_plain;
    plain_mds(&whole, &image_plain, &weight_plain, &output_plain);
    int64_t image_bytes = 0;
    if (st == dnnl_success)
        st = setup_operand(b, &g->image, DNNL_ARG_SRC, &image_plain, chosen_md(pd, dnnl_query_src_md), false,
                           &image_bytes);
    if (st != dnnl_success) {
        if (pd)
            dnnl_primitive_desc_destroy(pd);
        return st;
    }
    /* A slot: [scratchpad][dy slice][dw slice]. The scratchpad region fits
     * every primitive's, the image reorder's too: it runs before the slices,
     * in slot 0's region. */
    const dnnl_memory_desc_t *scratch_mds[3] = {scratch_md_of(g->conv), scratch_md_of(g->dy_reorder),
                                                scratch_md_of(g->dw_reorder)};
    int64_t scratch = b->scratch_bytes;
    for (int i = 0; i < 3; i++)
        if (scratch_mds[i] && (int64_t)dnnl_memory_desc_get_size(scratch_mds[i]) > scratch)
            scratch = (int64_t)dnnl_memory_desc_get_size(scratch_mds[i]);
    const dnnl_memory_desc_t *dy_md = chosen_md(pd, dnnl_query_diff_dst_md);
    const dnnl_memory_desc_t *dw_md = chosen_md(pd, dnnl_query_diff_weights_md);
    const dnnl_memory_desc_t *image_md = chosen_md(pd, dnnl_query_src_md);
    g->dy_inner_offset = align_up(scratch);
    g->dw_inner_offset = g->dy_inner_offset + (g->dy_reorder ? align_up((int64_t)dnnl_memory_desc_get_size(dy_md)) : 0);
    g->slot_bytes = g->dw_inner_offset + (g->dw_reorder ? align_up((int64_t)dnnl_memory_desc_get_size(dw_md)) : 0);
    for (int i = 0; i < g->n_slots && st == dnnl_success; i++) {
        g->slots[i].offset = i * g->slot_bytes;
        st = build_slot(g, &g->slots[i], &dy_user_md, dy_md, dw_md, &dw_user_md, image_md, scratch_mds);
    }
    /* The image copy follows the slots. */
    g->image.offset = g->n_slots * g->slot_bytes;
    g->workspace_bytes = g->image.offset + image_bytes;
    dnnl_primitive_desc_destroy(pd);
    return st;
}

static void release_operand(operand *op)
{
    if (op->reorder)
        dnnl_primitive_destroy(op->reorder);
    if (op->reorder_scratch)
        dnnl_memory_destroy(op->reorder_scratch);
    if (op->inner)
        dnnl_memory_destroy(op->inner);
    if (op->user)
        dnnl_memory_destroy(op->user);
}

static void release(conv_dnnl *c)
{
    if (!c)
        return;
    whole_conv *w = &c->whole;
    for (int i = 0; i < OPERANDS; i++)
        release_operand(&w->operands[i]);
    if (w->conv)
        dnnl_primitive_destroy(w->conv);
    if (w->conv_scratch)
        dnnl_memory_destroy(w->conv_scratch);
    if (w->bias)
        dnnl_memory_destroy(w->bias);
    sliced_grad *g = &c->grad;
    for (int i = 0; g->slots && i < g->n_slots; i++)
        release_slot(&g->slots[i]);
    free(g->slots);
    release_operand(&g->image);
    dnnl_primitive_t primitives[] = {g->conv, g->dy_reorder, g->dw_reorder};
    for (int i = 0; i < 3; i++)
        if (primitives[i])
            dnnl_primitive_destroy(primitives[i]);
    if (c->stream)
        dnnl_stream_destroy(c->stream);
    free(c);
}

/* ---- choosing ------------------------------------------------------------------ */

/* Which nodes oneDNN takes, from single-thread timings of the layers of
 * AlexNet, ResNet-50, LeNet-5 and cnn-small (benchmarks/results/):
 * - the forward when it has at least MIN_FORWARD_FILTERS filters per group
 *   (10-20% less time than im2col + OpenBLAS; fewer are padded to a block);
 * - the data gradient when the image has at least MIN_DATA_CHANNELS channels
 *   per group: for 1-3 channel images (a first layer's input, a generator's
 *   RGB output) oneDNN's blocked layout pads the channels to 16 and runs
 *   2-3x slower than col2im;
 * - the weight gradient when slices_of finds a way to cut it. */
static bool suits_dnnl(const keel_node *node)
{
    switch (node->op) {
    case KEEL_OP_CONV2D:
        return output_dims(node)[1] / node->attrs.conv.groups >= MIN_FORWARD_FILTERS;
    case KEEL_OP_CONV2D_BWD_DATA:
    case KEEL_OP_CONV_TRANSPOSE2D:
        return node->shape[1] / node->attrs.conv.groups >= MIN_DATA_CHANNELS;
    default:
        return slices_of(node) > 0;
    }
}

typedef enum conv_engine { ENGINE_AUTO, ENGINE_DNNL, ENGINE_IM2COL } conv_engine;

/* KEEL_CPU_CONV: unset or "auto" picks per node (suits_dnnl); "dnnl" takes
 * oneDNN for every node it can (the tests check each kernel that way; a
 * weight gradient that does not slice stays on im2col); "im2col" takes the
 * reference path for all. */
static keel_status engine_of(conv_engine *engine)
{
    const char *name = getenv("KEEL_CPU_CONV");
    if (!name || !*name || !strcmp(name, "auto"))
        *engine = ENGINE_AUTO;
    else if (!strcmp(name, "dnnl"))
        *engine = ENGINE_DNNL;
    else if (!strcmp(name, "im2col"))
        *engine = ENGINE_IM2COL;
    else
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "KEEL_CPU_CONV=%s: expected 'auto', 'dnnl' or 'im2col'", name);
    return KEEL_OK;
}

static bool takes_dnnl(conv_engine engine, const keel_node *node)
{
    if (engine == ENGINE_IM2COL)
        return false;
    if (node->op == KEEL_OP_CONV2D_BWD_WEIGHT)
        return slices_of(node) > 0;
    return engine == ENGINE_DNNL || suits_dnnl(node);
}

static dnnl_status_t build(const keel_node *node, conv_dnnl *c, builder *b, int64_t *workspace)
{
    dnnl_status_t st = dnnl_primitive_attr_create(&b->attr);
    if (st == dnnl_success)
        st = dnnl_primitive_attr_set_scratchpad_mode(b->attr, dnnl_scratchpad_mode_user);
    if (st == dnnl_success)
        st = dnnl_stream_create(&c->stream, shared_engine, dnnl_stream_default_flags);
    if (st != dnnl_success)
        return st;
    if (c->sliced) {
        st = build_sliced(b, node, &c->grad, c->threads);
        *workspace = c->grad.workspace_bytes;
        return st;
    }
    st = build_whole(b, node, &c->whole);
    int64_t scratch = align_up(b->scratch_bytes);
    for (int i = 0; i < OPERANDS; i++)
        c->whole.operands[i].offset += scratch;
    *workspace = scratch + c->whole.copies_bytes;
    return st;
}

keel_status keel_cpu_conv_dnnl_prepare(keel_device *d, const keel_node *node, int64_t *workspace, void **algo)
{
    conv_engine engine = ENGINE_AUTO;
    keel_status status = engine_of(&engine);
    if (status != KEEL_OK)
        return status;
    /* The reference path's checks and workspace; kept when oneDNN is off or
     * cannot take the shape. */
    status = keel_cpu_conv2d_prepare(d, node, workspace, algo);
    if (status != KEEL_OK || !takes_dnnl(engine, node))
        return status;
    pthread_once(&engine_once, create_engine);
    if (!shared_engine)
        return status;

    conv_dnnl *c = calloc(1, sizeof *c);
    if (!c)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory", node->name);
    c->threads = keel_cpu_threads(d);
    c->sliced = node->op == KEEL_OP_CONV2D_BWD_WEIGHT;
    int caller_threads = omp_get_max_threads();
    omp_set_num_threads(c->threads);   /* oneDNN sizes its kernels for this many */
    builder b = {0};
    int64_t bytes = 0;
    dnnl_status_t st = build(node, c, &b, &bytes);
    omp_set_num_threads(caller_threads);
    if (b.attr)
        dnnl_primitive_attr_destroy(b.attr);
    if (st != dnnl_success) {
        /* No oneDNN implementation for this shape (a transposed convolution
         * whose output padding reaches its stride, say): the reference path
         * takes every shape. */
        release(c);
        return KEEL_OK;
    }
    c->workspace_bytes = bytes;
    *workspace = bytes;
    *algo = c;
    return KEEL_OK;
}

void keel_cpu_conv_dnnl_release(keel_device *d, void *algo)
{
    (void)d;
    release(algo);
}

/* ---- running --------------------------------------------------------------- */

static dnnl_status_t point(dnnl_memory_t memory, void *data)
{
    return dnnl_memory_set_data_handle(memory, data);
}

static dnnl_status_t run_reorder(dnnl_stream_t stream, dnnl_primitive_t reorder, dnnl_memory_t from,
                                 dnnl_memory_t to, dnnl_memory_t scratch, void *scratch_data)
{
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}, {DNNL_ARG_SCRATCHPAD, scratch}};
    dnnl_status_t st = scratch ? point(scratch, scratch_data) : dnnl_success;
    return st == dnnl_success ? dnnl_primitive_execute(reorder, stream, scratch ? 3 : 2, args) : st;
}

/* Points an input operand at Keel's buffer and, when it has one, reorders it
 * into its copy in the workspace. */
static dnnl_status_t operand_in(dnnl_stream_t stream, const operand *op, void *data, char *workspace)
{
    dnnl_status_t st = point(op->user, data);
    if (st != dnnl_success || !op->inner)
        return st;
    st = point(op->inner, workspace + op->offset);
    return st == dnnl_success ? run_reorder(stream, op->reorder, op->user, op->inner, op->reorder_scratch, workspace)
                              : st;
}

static dnnl_memory_t operand_memory(const operand *op)
{
    return op->inner ? op->inner : op->user;
}

static dnnl_status_t run_whole(conv_dnnl *c, const keel_launch *l)
{
    whole_conv *w = &c->whole;
    const operand *o = w->operands;
    char *workspace = l->workspace;
    dnnl_status_t st = operand_in(c->stream, &o[IN0], l->in[0], workspace);
    if (st == dnnl_success)
        st = operand_in(c->stream, &o[IN1], l->in[1], workspace);
    if (st == dnnl_success)
        st = point(o[OUT].user, l->out);
    if (st == dnnl_success && o[OUT].inner)
        st = point(o[OUT].inner, workspace + o[OUT].offset);
    dnnl_exec_arg_t args[OPERANDS + 2];
    int n_args = 0;
    for (int i = 0; i < OPERANDS; i++)
        args[n_args++] = (dnnl_exec_arg_t){o[i].arg, operand_memory(&o[i])};
    if (st == dnnl_success && w->bias) {
        st = point(w->bias, l->in[2]);
        args[n_args++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, w->bias};
    }
    if (st == dnnl_success && w->conv_scratch) {
        st = point(w->conv_scratch, workspace);
        args[n_args++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, w->conv_scratch};
    }
    if (st == dnnl_success)
        st = dnnl_primitive_execute(w->conv, c->stream, n_args, args);
    if (st == dnnl_success && o[OUT].inner)
        st = run_reorder(c->stream, o[OUT].reorder, o[OUT].inner, o[OUT].user, o[OUT].reorder_scratch, workspace);
    return st;
}

/* Slice k of the weight gradient on the calling thread: filters
 * [k*slice_filters, (k+1)*slice_filters) summed over the whole batch. */
static dnnl_status_t run_slice(const sliced_grad *g, const slice_slot *slot, int k, const keel_launch *l,
                               void *image)
{
    const int64_t *out = output_dims(l->node);
    const int64_t dw_row = l->node->shape[1] * l->node->shape[2] * l->node->shape[3];
    char *region = (char *)l->workspace + slot->offset;
    float *dy = (float *)l->in[1] + k * g->slice_filters * out[2] * out[3];
    float *dw = (float *)l->out + k * g->slice_filters * dw_row;
    dnnl_status_t st = point(slot->dy_user, dy);
    if (st == dnnl_success && g->dy_reorder) {
        st = point(slot->dy_inner, region + g->dy_inner_offset);
        if (st == dnnl_success)
            st = run_reorder(slot->stream, g->dy_reorder, slot->dy_user, slot->dy_inner, slot->dy_scratch, region);
    }
    if (st == dnnl_success)
        st = point(slot->dw_user, dw);
    if (st == dnnl_success && g->dw_reorder)
        st = point(slot->dw_inner, region + g->dw_inner_offset);
    if (st == dnnl_success)
        st = point(slot->image, image);
    dnnl_exec_arg_t args[4] = {
        {DNNL_ARG_SRC, slot->image},
        {DNNL_ARG_DIFF_DST, g->dy_reorder ? slot->dy_inner : slot->dy_user},
        {DNNL_ARG_DIFF_WEIGHTS, g->dw_reorder ? slot->dw_inner : slot->dw_user},
        {DNNL_ARG_SCRATCHPAD, slot->conv_scratch},
    };
    if (st == dnnl_success && slot->conv_scratch)
        st = point(slot->conv_scratch, region);
    if (st == dnnl_success)
        st = dnnl_primitive_execute(g->conv, slot->stream, slot->conv_scratch ? 4 : 3, args);
    if (st == dnnl_success && g->dw_reorder)
        st = run_reorder(slot->stream, g->dw_reorder, slot->dw_inner, slot->dw_user, slot->dw_scratch, region);
    if (st == dnnl_success)
        st = dnnl_stream_wait(slot->stream);
    return st;
}

static dnnl_status_t run_sliced(conv_dnnl *c, const keel_launch *l)
{
    sliced_grad *g = &c->grad;
    char *workspace = l->workspace;
    /* The image once, on every thread; its reorder's scratchpad is slot 0's. */
    dnnl_status_t st = operand_in(c->stream, &g->image, l->in[0], workspace);
    if (st == dnnl_success)
        st = dnnl_stream_wait(c->stream);
    if (st != dnnl_success)
        return st;
    void *image = g->image.inner ? workspace + g->image.offset : l->in[0];
    int failed = dnnl_success;
    /* Outside a parallel region oneDNN's inner GEMMs would take every thread
     * omp_get_max_threads() allows: one slot runs its slices alone. */
    if (g->n_slots == 1)
        omp_set_num_threads(1);
#pragma omp parallel for num_threads(g->n_slots) schedule(static) if (g->n_slots > 1)
    for (int k = 0; k < g->slices; k++) {
        int slice_status = run_slice(g, &g->slots[omp_get_thread_num()], k, l, image);
        if (slice_status != dnnl_success) {
#pragma omp atomic write
            failed = slice_status;
        }
    }
    omp_set_num_threads(c->threads);
    return (dnnl_status_t)failed;
}

/* y[n, c, ...] += bias[c]: a transposed convolution's bias over its output. */
static void add_bias(float *y, const float *bias, int64_t batch, int64_t channels, int64_t inner, int threads)
{
    const bool parallel = threads > 1 && batch * channels * inner >= PARALLEL_MIN_FLOATS;
#pragma omp parallel for num_threads(threads) schedule(static) if (parallel)
    for (int64_t nc = 0; nc < batch * channels; nc++) {
        float b = bias[nc % channels];
        float *plane = y + nc * inner;
        for (int64_t i = 0; i < inner; i++)
            plane[i] += b;
    }
}

static keel_status run(const keel_launch *l)
{
    conv_dnnl *c = l->algo;
    const keel_node *node = l->node;
    if (l->workspace_bytes < c->workspace_bytes)
        return keel_fail(KEEL_ERR_STATE, "%s: workspace of %lld bytes, oneDNN needs %lld", node->name,
                         (long long)l->workspace_bytes, (long long)c->workspace_bytes);
    int caller_threads = omp_get_max_threads();
    if (caller_threads != c->threads)
        omp_set_num_threads(c->threads);
    dnnl_status_t st = c->sliced ? run_sliced(c, l) : run_whole(c, l);
    if (st == dnnl_success)
        st = dnnl_stream_wait(c->stream);
    if (caller_threads != c->threads)
        omp_set_num_threads(caller_threads);
    if (st != dnnl_success)
        return keel_fail(KEEL_ERR_BACKEND, "%s: oneDNN convolution failed: %s", node->name, dnnl_status2str(st));
    if (node->op == KEEL_OP_CONV_TRANSPOSE2D && node->attrs.conv.has_bias && node->n_inputs > 2)
        add_bias(l->out, l->in[2], node->shape[0], node->shape[1], node->shape[2] * node->shape[3], c->threads);
    return KEEL_OK;
}

keel_status keel_cpu_conv_dnnl_forward(const keel_launch *l)
{
    return l->algo ? run(l) : keel_cpu_conv2d(l);
}

keel_status keel_cpu_conv_dnnl_bwd_data(const keel_launch *l)
{
    return l->algo ? run(l) : keel_cpu_conv2d_bwd_data(l);
}

keel_status keel_cpu_conv_dnnl_bwd_weight(const keel_launch *l)
{
    return l->algo ? run(l) : keel_cpu_conv2d_bwd_weight(l);
}
