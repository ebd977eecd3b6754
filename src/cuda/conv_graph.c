/* Convolutions through the cuDNN graph API, from plain C.
 *
 * A convolution becomes an operation graph of one node (fprop, dgrad or
 * wgrad; fprop + bias add + ReLU for the fused graph) over packed NCHW fp32
 * tensors. Heuristics modes A and FALLBACK rank engine configs; the policy
 * drops TF32 configs in strict-fp32 mode and nondeterministic ones in
 * deterministic mode; plans are finalized in rank order. Grouped and
 * depthwise convolutions need no attribute: the filter {K, C/groups, R, S}
 * implies the groups.
 *
 * This file includes cudnn_graph.h only and builds with
 * -DCUDNN_WARN_DEPRECATED -Werror=deprecated-declarations. Nothing here
 * needs a GPU until keel_cudnn_execute: with a DEVICEPROP from a JSON
 * profile, graphs, heuristics and plans all work on a machine without one,
 * which is what keel_cudnn_conv_check (the CI tier) relies on. */
#include "cuda/conv_graph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Declared alignment of every tensor: cudaMalloc gives 256 bytes and the
 * planner places tensors at multiples of 64 bytes or more. */
#define TENSOR_ALIGNMENT 16

/* Tensor UIDs in variant packs: the keel_conv_* index + 1; the fused
 * graph's intermediates are virtual and never bound. */
#define UID_OF(index) ((int64_t)(index) + 1)
#define UID_CONV_OUT 101
#define UID_BIAS_OUT 102

/* ---- errors ---------------------------------------------------------------- */

static keel_status cudnn_error(cudnnStatus_t status, const char *call, const char *what, const char *where)
{
    char detail[512] = "";
    cudnnGetLastErrorString(detail, sizeof detail);
    return keel_fail(KEEL_ERR_BACKEND, "%s: %s(%s) failed: %s%s%s", where, call, what, cudnnGetErrorString(status),
                     detail[0] ? ": " : "", detail);
}

/* Every descriptor a build creates, destroyed together at its end (cuDNN
 * lets children go once their parent is finalized). */
typedef struct builder {
    cudnnBackendDescriptor_t owned[32];
    int n_owned;
    const char *where;
} builder;

static keel_status create(builder *b, cudnnBackendDescriptorType_t type, const char *what,
                          cudnnBackendDescriptor_t *out)
{
    if (b->n_owned == (int)(sizeof b->owned / sizeof b->owned[0]))
        return keel_fail(KEEL_ERR_STATE, "%s: too many cuDNN descriptors in one graph", b->where);
    cudnnStatus_t st = cudnnBackendCreateDescriptor(type, out);
    if (st != CUDNN_STATUS_SUCCESS)
        return cudnn_error(st, "cudnnBackendCreateDescriptor", what, b->where);
    b->owned[b->n_owned++] = *out;
    return KEEL_OK;
}

static void builder_free(builder *b)
{
    for (int i = b->n_owned - 1; i >= 0; i--)
        cudnnBackendDestroyDescriptor(b->owned[i]);
    b->n_owned = 0;
}

#define SET(b, desc, name, type, count, ptr)                                                          \
    do {                                                                                               \
        cudnnStatus_t set_st_ = cudnnBackendSetAttribute(desc, name, type, count, ptr);                \
        if (set_st_ != CUDNN_STATUS_SUCCESS)                                                           \
            return cudnn_error(set_st_, "cudnnBackendSetAttribute", #name, (b)->where);                \
    } while (0)

#define FINALIZE(b, desc, what)                                                                        \
    do {                                                                                               \
        cudnnStatus_t fin_st_ = cudnnBackendFinalize(desc);                                            \
        if (fin_st_ != CUDNN_STATUS_SUCCESS)                                                           \
            return cudnn_error(fin_st_, "cudnnBackendFinalize", what, (b)->where);                     \
    } while (0)

/* ---- tensors and the convolution descriptor ------------------------------------ */

/* Packed NCHW strides for dims {N, C, H, W}. */
static void packed_strides(const int64_t dims[4], int64_t strides[4])
{
    strides[3] = 1;
    strides[2] = dims[3];
    strides[1] = dims[2] * dims[3];
    strides[0] = dims[1] * dims[2] * dims[3];
}

static keel_status make_tensor(builder *b, int64_t uid, const int64_t dims[4], bool is_virtual,
                               cudnnBackendDescriptor_t *out)
{
    int64_t strides[4];
    packed_strides(dims, strides);
    cudnnDataType_t dtype = CUDNN_DATA_FLOAT;
    int64_t alignment = TENSOR_ALIGNMENT;
    bool virtual_flag = is_virtual; /* BOOLEAN attributes take a C bool */
    keel_status st = create(b, CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor", out);
    if (st != KEEL_OK)
        return st;
    SET(b, *out, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dtype);
    SET(b, *out, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
    SET(b, *out, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
    SET(b, *out, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    SET(b, *out, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
    SET(b, *out, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virtual_flag);
    FINALIZE(b, *out, "tensor");
    return KEEL_OK;
}

static keel_status make_conv_desc(builder *b, const keel_conv_shape *s, cudnnBackendDescriptor_t *out)
{
    cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION; /* what deep learning calls convolution */
    int64_t spatial = 2;
    int64_t pre[2] = {s->pad_top, s->pad_left}, post[2] = {s->pad_bottom, s->pad_right};
    int64_t strides[2] = {s->stride_h, s->stride_w}, dilations[2] = {s->dilation_h, s->dilation_w};
    keel_status st = create(b, CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, "convolution", out);
    if (st != KEEL_OK)
        return st;
    SET(b, *out, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
    SET(b, *out, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
    SET(b, *out, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial);
    SET(b, *out, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pre);
    SET(b, *out, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, post);
    SET(b, *out, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, strides);
    SET(b, *out, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dilations);
    FINALIZE(b, *out, "convolution");
    return KEEL_OK;
}

static keel_status check_shape(const keel_conv_shape *s, const char *where)
{
    char buf[256];
    if (s->batch < 1 || s->channels < 1 || s->height < 1 || s->width < 1 || s->filters < 1 || s->out_height < 1 ||
        s->out_width < 1 || s->kernel_h < 1 || s->kernel_w < 1 || s->groups < 1 || s->stride_h < 1 ||
        s->stride_w < 1 || s->dilation_h < 1 || s->dilation_w < 1 || s->pad_top < 0 || s->pad_bottom < 0 ||
        s->pad_left < 0 || s->pad_right < 0)
        return keel_fail(KEEL_ERR_SHAPE, "%s: impossible convolution %s", where,
                         keel_conv_shape_str(s, buf, sizeof buf));
    if (s->channels % s->groups || s->filters % s->groups)
        return keel_fail(KEEL_ERR_SHAPE, "%s: %lld groups do not divide the channels of %s", where,
                         (long long)s->groups, keel_conv_shape_str(s, buf, sizeof buf));
    return KEEL_OK;
}

/* The operation graph: descriptors are added to b; *graph is finalized. */
static keel_status make_graph(builder *b, const keel_conv_shape *s, cudnnBackendDescriptor_t *graph)
{
    keel_status st = check_shape(s, b->where);
    if (st != KEEL_OK)
        return st;
    const int64_t x_dims[4] = {s->batch, s->channels, s->height, s->width};
    const int64_t w_dims[4] = {s->filters, s->channels / s->groups, s->kernel_h, s->kernel_w};
    const int64_t y_dims[4] = {s->batch, s->filters, s->out_height, s->out_width};
    const int64_t bias_dims[4] = {1, s->filters, 1, 1};
    const bool fused = s->pass == KEEL_CONV_FPROP_BIAS_RELU;
    cudnnBackendDescriptor_t x, w, y, conv, op, ops[3];
    int n_ops = 0;
    float alpha = 1.0f, beta = 0.0f;
    if ((st = make_tensor(b, UID_OF(KEEL_CONV_X), x_dims, false, &x)) != KEEL_OK ||
        (st = make_tensor(b, UID_OF(KEEL_CONV_W), w_dims, false, &w)) != KEEL_OK ||
        (st = make_tensor(b, fused ? UID_CONV_OUT : UID_OF(KEEL_CONV_Y), y_dims, fused, &y)) != KEEL_OK ||
        (st = make_conv_desc(b, s, &conv)) != KEEL_OK)
        return st;
    switch (s->pass) {
    case KEEL_CONV_FPROP:
    case KEEL_CONV_FPROP_BIAS_RELU:
        if ((st = create(b, CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, "conv fprop", &op)) != KEEL_OK)
            return st;
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
        break;
    case KEEL_CONV_DGRAD:
        if ((st = create(b, CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR, "conv dgrad", &op)) !=
            KEEL_OK)
            return st;
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
        break;
    case KEEL_CONV_WGRAD:
        if ((st = create(b, CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR, "conv wgrad", &op)) !=
            KEEL_OK)
            return st;
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
        SET(b, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
        break;
    default:
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "%s: unknown convolution pass %d", b->where, (int)s->pass);
    }
    FINALIZE(b, op, "convolution operation");
    ops[n_ops++] = op;

    if (fused) {
        /* y = relu(conv + bias): two pointwise epilogue nodes over virtual tensors. */
        cudnnBackendDescriptor_t bias, biased, out, add, add_op, relu, relu_op;
        cudnnPointwiseMode_t add_mode = CUDNN_POINTWISE_ADD, relu_mode = CUDNN_POINTWISE_RELU_FWD;
        cudnnDataType_t precision = CUDNN_DATA_FLOAT;
        if ((st = make_tensor(b, UID_OF(KEEL_CONV_BIAS), bias_dims, false, &bias)) != KEEL_OK ||
            (st = make_tensor(b, UID_BIAS_OUT, y_dims, true, &biased)) != KEEL_OK ||
            (st = make_tensor(b, UID_OF(KEEL_CONV_Y), y_dims, false, &out)) != KEEL_OK ||
            (st = create(b, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "bias add", &add)) != KEEL_OK ||
            (st = create(b, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "relu", &relu)) != KEEL_OK ||
            (st = create(b, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "bias add op", &add_op)) != KEEL_OK ||
            (st = create(b, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "relu op", &relu_op)) != KEEL_OK)
            return st;
        SET(b, add, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &add_mode);
        SET(b, add, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &precision);
        FINALIZE(b, add, "bias add");
        SET(b, relu, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &relu_mode);
        SET(b, relu, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &precision);
        FINALIZE(b, relu, "relu");
        SET(b, add_op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &add);
        SET(b, add_op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
        SET(b, add_op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bias);
        SET(b, add_op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &biased);
        FINALIZE(b, add_op, "bias add operation");
        SET(b, relu_op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &relu);
        SET(b, relu_op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &biased);
        SET(b, relu_op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &out);
        FINALIZE(b, relu_op, "relu operation");
        ops[n_ops++] = add_op;
        ops[n_ops++] = relu_op;
    }

    if ((st = create(b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph", graph)) != KEEL_OK)
        return st;
    SET(b, *graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_ops, ops);
    FINALIZE(b, *graph, "operation graph");
    return KEEL_OK;
}

/* ---- heuristics -------------------------------------------------------------------- */

/* One ranked engine config and what its engine says about itself. */
typedef struct candidate {
    cudnnBackendDescriptor_t config;
    int64_t engine_id;
    int64_t workspace_bytes;
    bool tensor_cores, reduced_precision, nondeterministic, runtime_compiled;
} candidate;

typedef struct candidate_list {
    candidate *items;
    int n, cap;
} candidate_list;

static void candidates_free(candidate_list *list)
{
    for (int i = 0; i < list->n; i++)
        if (list->items[i].config)
            cudnnBackendDestroyDescriptor(list->items[i].config);
    free(list->items);
    memset(list, 0, sizeof *list);
}

/* Reads the engine behind `config` into c. */
static keel_status describe(const char *where, cudnnBackendDescriptor_t config, candidate *c)
{
    cudnnBackendDescriptor_t engine = NULL;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &engine);
    if (st != CUDNN_STATUS_SUCCESS)
        return cudnn_error(st, "cudnnBackendCreateDescriptor", "engine", where);
    int64_t count = 0;
    keel_status result = KEEL_OK;
    cudnnBackendNumericalNote_t numerical[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    cudnnBackendBehaviorNote_t behavior[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
    int64_t n_numerical = 0, n_behavior = 0;
    if ((st = cudnnBackendGetAttribute(config, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count,
                                       &engine)) != CUDNN_STATUS_SUCCESS)
        result = cudnn_error(st, "cudnnBackendGetAttribute", "CUDNN_ATTR_ENGINECFG_ENGINE", where);
    else if ((st = cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &count,
                                            &c->engine_id)) != CUDNN_STATUS_SUCCESS)
        result = cudnn_error(st, "cudnnBackendGetAttribute", "CUDNN_ATTR_ENGINE_GLOBAL_INDEX", where);
    else if ((st = cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                            CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n_numerical, numerical)) !=
             CUDNN_STATUS_SUCCESS)
        result = cudnn_error(st, "cudnnBackendGetAttribute", "CUDNN_ATTR_ENGINE_NUMERICAL_NOTE", where);
    else if ((st = cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                                            CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &n_behavior, behavior)) !=
             CUDNN_STATUS_SUCCESS)
        result = cudnn_error(st, "cudnnBackendGetAttribute", "CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE", where);
    else if ((st = cudnnBackendGetAttribute(config, CUDNN_ATTR_ENGINECFG_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &count,
                                            &c->workspace_bytes)) != CUDNN_STATUS_SUCCESS)
        result = cudnn_error(st, "cudnnBackendGetAttribute", "CUDNN_ATTR_ENGINECFG_WORKSPACE_SIZE", where);
    for (int64_t i = 0; result == KEEL_OK && i < n_numerical && i < CUDNN_NUMERICAL_NOTE_TYPE_COUNT; i++) {
        if (numerical[i] == CUDNN_NUMERICAL_NOTE_TENSOR_CORE)
            c->tensor_cores = true;
        if (numerical[i] == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS ||
            numerical[i] == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION)
            c->reduced_precision = true;
        if (numerical[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC)
            c->nondeterministic = true;
    }
    for (int64_t i = 0; result == KEEL_OK && i < n_behavior && i < CUDNN_BEHAVIOR_NOTE_TYPE_COUNT; i++)
        if (behavior[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION)
            c->runtime_compiled = true;
    cudnnBackendDestroyDescriptor(engine);
    return result;
}

static bool has_engine(const candidate_list *list, int64_t engine_id)
{
    for (int i = 0; i < list->n; i++)
        if (list->items[i].engine_id == engine_id)
            return true;
    return false;
}

/* Appends the configs of one heuristics mode. With `skip_known`, configs
 * whose engine is already listed are left out (FALLBACK repeats A's). */
static keel_status heuristics(builder *b, cudnnBackendDescriptor_t graph, cudnnBackendDescriptor_t deviceprop,
                              cudnnBackendHeurMode_t mode, bool skip_known, candidate_list *list)
{
    cudnnBackendDescriptor_t heur;
    keel_status st = create(b, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics", &heur);
    if (st != KEEL_OK)
        return st;
    SET(b, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
    SET(b, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    if (deviceprop)
        SET(b, heur, CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &deviceprop);
    FINALIZE(b, heur, mode == CUDNN_HEUR_MODE_A ? "heuristics mode A" : "heuristics mode FALLBACK");

    /* The count is an upper bound: configs failing support checks are
     * dropped when fetched, so only `fetched` of them are filled in. */
    int64_t count = 0, fetched = 0;
    cudnnStatus_t cst = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                                 &count, NULL);
    if (cst != CUDNN_STATUS_SUCCESS)
        return cudnn_error(cst, "cudnnBackendGetAttribute", "CUDNN_ATTR_ENGINEHEUR_RESULTS count", b->where);
    if (count <= 0)
        return KEEL_OK;
    cudnnBackendDescriptor_t *configs = calloc((size_t)count, sizeof *configs);
    if (!configs)
        return keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory for %lld engine configs", b->where,
                         (long long)count);
    int64_t created = 0;
    for (; created < count; created++)
        if ((cst = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &configs[created])) !=
            CUDNN_STATUS_SUCCESS)
            break;
    if (created == count)
        cst = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                                       &fetched, configs);
    if (cst != CUDNN_STATUS_SUCCESS)
        st = cudnn_error(cst, created == count ? "cudnnBackendGetAttribute" : "cudnnBackendCreateDescriptor",
                         created == count ? "CUDNN_ATTR_ENGINEHEUR_RESULTS" : "engine config", b->where);
    for (int64_t i = 0; i < created; i++) {
        candidate c = {.config = configs[i]};
        bool keep = st == KEEL_OK && i < fetched;
        if (keep)
            st = describe(b->where, configs[i], &c);
        keep = keep && st == KEEL_OK && !(skip_known && has_engine(list, c.engine_id));
        if (keep && list->n == list->cap) {
            int cap = list->cap ? list->cap * 2 : 16;
            candidate *grown = realloc(list->items, (size_t)cap * sizeof *grown);
            if (!grown) {
                st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory listing engine configs", b->where);
                keep = false;
            } else {
                list->items = grown;
                list->cap = cap;
            }
        }
        if (keep)
            list->items[list->n++] = c;
        else
            cudnnBackendDestroyDescriptor(configs[i]);
    }
    free(configs);
    return st;
}

static bool excluded(const candidate *c, const keel_conv_policy *policy)
{
    if (policy->strict_fp32 && (c->tensor_cores || c->reduced_precision))
        return true;
    if (policy->deterministic && c->nondeterministic)
        return true;
    return policy->workspace_limit > 0 && c->workspace_bytes > policy->workspace_limit;
}

/* ---- plans --------------------------------------------------------------------------- */

/* Finalizes one plan; KEEL_ERR_UNSUPPORTED (with cuDNN's reason) when the
 * engine turns the problem down, which is normal: the next one is tried.
 * Any failure of the finalize counts as a refusal, not only NOT_SUPPORTED:
 * a runtime-compiled engine reports a failed NVRTC build or driver load as
 * INTERNAL_ERROR_COMPILATION_FAILED or EXECUTION_FAILED_CUDA_DRIVER, and
 * the precompiled engines ranked after it still serve (cudnn-frontend also
 * moves on after any failed plan build). Setting the attributes fails only
 * through a mistake of ours, so that stays an error. */
static keel_status make_plan(const char *where, const candidate *c, cudnnBackendDescriptor_t deviceprop,
                             int n_tensors, keel_cudnn_plan *out)
{
    cudnnBackendDescriptor_t plan = NULL;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
    if (st != CUDNN_STATUS_SUCCESS)
        return cudnn_error(st, "cudnnBackendCreateDescriptor", "execution plan", where);
    const char *call = "cudnnBackendSetAttribute", *what = "CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG";
    st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                  &c->config);
    if (st == CUDNN_STATUS_SUCCESS && deviceprop) {
        what = "CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP";
        st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                      &deviceprop);
    }
    bool refused = false;
    if (st == CUDNN_STATUS_SUCCESS) {
        call = "cudnnBackendFinalize";
        what = "execution plan";
        st = cudnnBackendFinalize(plan);
        refused = st != CUDNN_STATUS_SUCCESS;
    }
    int64_t count = 0, workspace = 0;
    if (st == CUDNN_STATUS_SUCCESS) {
        call = "cudnnBackendGetAttribute";
        what = "CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE";
        st = cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &count,
                                      &workspace);
    }
    if (st != CUDNN_STATUS_SUCCESS) {
        keel_status result = cudnn_error(st, call, what, where);
        cudnnBackendDestroyDescriptor(plan);
        return refused || CUDNN_STATUS_CATEGORY(st) == CUDNN_STATUS_NOT_SUPPORTED ? KEEL_ERR_UNSUPPORTED : result;
    }
    *out = (keel_cudnn_plan){.plan = plan,
                             .workspace_bytes = workspace,
                             .engine_id = c->engine_id,
                             .tensor_cores = c->tensor_cores,
                             .n_tensors = n_tensors};
    return KEEL_OK;
}

void keel_cudnn_plan_release(keel_cudnn_plan *plan)
{
    if (plan && plan->plan) {
        cudnnBackendDestroyDescriptor(plan->plan);
        plan->plan = NULL;
    }
}

void keel_cudnn_plans_free(keel_cudnn_plan *plans, int n_plans)
{
    for (int i = 0; plans && i < n_plans; i++)
        keel_cudnn_plan_release(&plans[i]);
    free(plans);
}

keel_status keel_cudnn_conv_plans(const keel_conv_shape *shape, const keel_conv_policy *policy,
                                  cudnnBackendDescriptor_t deviceprop, int max_plans, const char *where,
                                  keel_cudnn_plan **plans, int *n_plans, keel_cudnn_report *report)
{
    builder b = {.where = where ? where : "convolution"};
    candidate_list list = {0};
    keel_cudnn_report local = {0};
    keel_cudnn_plan *found = NULL;
    int n_found = 0;
    char desc[256], last_reason[512] = "";
    const keel_conv_policy no_policy = {0};
    if (!policy)
        policy = &no_policy;
    *plans = NULL;
    *n_plans = 0;
    if (!deviceprop) {
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT,
                         "%s: cuDNN needs a device profile (DEVICEPROP) to rank engines for %s", b.where,
                         keel_conv_shape_str(shape, desc, sizeof desc));
    }

    cudnnBackendDescriptor_t graph;
    keel_status st = make_graph(&b, shape, &graph);
    if (st == KEEL_OK)
        st = heuristics(&b, graph, deviceprop, CUDNN_HEUR_MODE_A, false, &list);
    if (st == KEEL_OK)
        st = heuristics(&b, graph, deviceprop, CUDNN_HEUR_MODE_FALLBACK, true, &list);
    if (st == KEEL_OK) {
        local.candidates = list.n;
        found = calloc((size_t)(list.n ? list.n : 1), sizeof *found);
        if (!found)
            st = keel_fail(KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory for execution plans", b.where);
    }
    int n_tensors = shape->pass == KEEL_CONV_FPROP_BIAS_RELU ? 4 : 3;
    for (int i = 0; st == KEEL_OK && i < list.n && (max_plans <= 0 || n_found < max_plans); i++) {
        if (excluded(&list.items[i], policy)) {
            local.filtered++;
            continue;
        }
        keel_status pst = make_plan(b.where, &list.items[i], deviceprop, n_tensors, &found[n_found]);
        if (pst == KEEL_OK) {
            n_found++;
        } else if (pst == KEEL_ERR_UNSUPPORTED) {
            snprintf(last_reason, sizeof last_reason, "%s", keel_last_error());
        } else {
            st = pst;
        }
    }
    candidates_free(&list);
    builder_free(&b);
    if (st == KEEL_OK && n_found == 0) {
        st = keel_fail(KEEL_ERR_UNSUPPORTED,
                       "%s: cuDNN has no engine for %s (%d candidates from heuristics, %d excluded by %s%s%s)%s%s",
                       b.where, keel_conv_shape_str(shape, desc, sizeof desc), local.candidates, local.filtered,
                       policy->strict_fp32 ? "strict fp32" : "the policy",
                       policy->deterministic ? ", deterministic" : "",
                       policy->workspace_limit > 0 ? ", workspace limit" : "", last_reason[0] ? "; last refusal: " : "",
                       last_reason);
    }
    if (st != KEEL_OK) {
        keel_cudnn_plans_free(found, n_found);
        return st;
    }
    local.plans = n_found;
    local.engine_id = found[0].engine_id;
    local.workspace_bytes = found[0].workspace_bytes;
    local.tensor_cores = found[0].tensor_cores;
    for (int i = 0; i < n_found; i++)
        if (found[i].workspace_bytes > local.max_workspace_bytes)
            local.max_workspace_bytes = found[i].workspace_bytes;
    if (report)
        *report = local;
    *plans = found;
    *n_plans = n_found;
    return KEEL_OK;
}

/* ---- execution ------------------------------------------------------------------------- */

keel_status keel_cudnn_pack_make(const keel_cudnn_plan *plan, void *const pointers[KEEL_CONV_TENSORS], void *workspace,
                                 const char *where, cudnnBackendDescriptor_t *pack)
{
    int64_t uids[KEEL_CONV_TENSORS];
    void *data[KEEL_CONV_TENSORS];
    for (int i = 0; i < plan->n_tensors; i++) {
        uids[i] = UID_OF(i);
        data[i] = pointers[i];
        if ((uintptr_t)data[i] % TENSOR_ALIGNMENT)
            return keel_fail(KEEL_ERR_STATE, "%s: a convolution tensor at %p is not %d-byte aligned", where, data[i],
                             TENSOR_ALIGNMENT);
    }
    cudnnBackendDescriptor_t vp = NULL;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
    const char *what = "variant pack";
    if (st == CUDNN_STATUS_SUCCESS) {
        what = "CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS";
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, plan->n_tensors, uids);
    }
    if (st == CUDNN_STATUS_SUCCESS) {
        what = "CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS";
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, plan->n_tensors,
                                      data);
    }
    if (st == CUDNN_STATUS_SUCCESS) {
        what = "CUDNN_ATTR_VARIANT_PACK_WORKSPACE";
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    }
    if (st == CUDNN_STATUS_SUCCESS) {
        what = "variant pack";
        st = cudnnBackendFinalize(vp);
    }
    if (st != CUDNN_STATUS_SUCCESS) {
        keel_status result = cudnn_error(st, "cudnnBackend*", what, where);
        if (vp)
            cudnnBackendDestroyDescriptor(vp);
        return result;
    }
    *pack = vp;
    return KEEL_OK;
}

keel_status keel_cudnn_execute(cudnnHandle_t handle, const keel_cudnn_plan *plan, cudnnBackendDescriptor_t pack,
                               const char *where)
{
    cudnnStatus_t st = cudnnBackendExecute(handle, plan->plan, pack);
    if (st != CUDNN_STATUS_SUCCESS)
        return cudnn_error(st, "cudnnBackendExecute", "convolution plan", where);
    return KEEL_OK;
}

void keel_cudnn_pack_free(cudnnBackendDescriptor_t pack)
{
    if (pack)
        cudnnBackendDestroyDescriptor(pack);
}

/* ---- device profiles --------------------------------------------------------------------- */

static keel_status finish_deviceprop(cudnnBackendDescriptor_t d, cudnnStatus_t st, const char *what,
                                     cudnnBackendDescriptor_t *out)
{
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendFinalize(d);
    if (st != CUDNN_STATUS_SUCCESS) {
        keel_status result = cudnn_error(st, "cudnnBackendSetAttribute/Finalize", what, "cuDNN device profile");
        cudnnBackendDestroyDescriptor(d);
        return result;
    }
    *out = d;
    return KEEL_OK;
}

keel_status keel_cudnn_deviceprop_from_handle(cudnnHandle_t handle, int ordinal, cudnnBackendDescriptor_t *out)
{
    cudnnBackendDescriptor_t d = NULL;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, &d);
    if (st != CUDNN_STATUS_SUCCESS)
        return cudnn_error(st, "cudnnBackendCreateDescriptor", "device profile", "cuDNN device profile");
    st = cudnnBackendSetAttribute(d, CUDNN_ATTR_DEVICEPROP_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
    if (st == CUDNN_STATUS_SUCCESS && cudnnBackendFinalize(d) == CUDNN_STATUS_SUCCESS) {
        *out = d;
        return KEEL_OK;
    }
    /* Some builds describe a device only by its ordinal. */
    cudnnBackendDestroyDescriptor(d);
    st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, &d);
    if (st != CUDNN_STATUS_SUCCESS)
        return cudnn_error(st, "cudnnBackendCreateDescriptor", "device profile", "cuDNN device profile");
    int32_t device_id = ordinal;
    st = cudnnBackendSetAttribute(d, CUDNN_ATTR_DEVICEPROP_DEVICE_ID, CUDNN_TYPE_INT32, 1, &device_id);
    return finish_deviceprop(d, st, "CUDNN_ATTR_DEVICEPROP_DEVICE_ID", out);
}

keel_status keel_cudnn_deviceprop_from_json(const char *json, cudnnBackendDescriptor_t *out)
{
    cudnnBackendDescriptor_t d = NULL;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, &d);
    if (st != CUDNN_STATUS_SUCCESS)
        return cudnn_error(st, "cudnnBackendCreateDescriptor", "device profile", "cuDNN device profile");
    st = cudnnBackendSetAttribute(d, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR,
                                  (int64_t)strlen(json) + 1, json);
    return finish_deviceprop(d, st, "CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION", out);
}

void keel_cudnn_deviceprop_free(cudnnBackendDescriptor_t deviceprop)
{
    if (deviceprop)
        cudnnBackendDestroyDescriptor(deviceprop);
}

/* ---- the GPU-free check ------------------------------------------------------------------- */

keel_status keel_cudnn_conv_check(const keel_conv_shape *shape, const keel_conv_policy *policy,
                                  const char *deviceprop_json, int max_plans, keel_cudnn_report *report)
{
    if (!shape || !deviceprop_json || !report)
        return keel_fail(KEEL_ERR_INVALID_ARGUMENT, "keel_cudnn_conv_check: shape, profile and report are required");
    cudnnBackendDescriptor_t deviceprop = NULL;
    keel_status st = keel_cudnn_deviceprop_from_json(deviceprop_json, &deviceprop);
    if (st != KEEL_OK)
        return st;
    keel_cudnn_plan *plans = NULL;
    int n_plans = 0;
    char where[300];
    keel_conv_shape_str(shape, where, sizeof where);
    st = keel_cudnn_conv_plans(shape, policy, deviceprop, max_plans, where, &plans, &n_plans, report);
    keel_cudnn_plans_free(plans, n_plans);
    keel_cudnn_deviceprop_free(deviceprop);
    return st;
}

long keel_cudnn_version(void)
{
    return (long)cudnnGetVersion();
}
