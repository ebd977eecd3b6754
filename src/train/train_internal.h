/* Training internals shared by the optimiser, the trainer and checkpoints. */
#ifndef KEEL_TRAIN_INTERNAL_H
#define KEEL_TRAIN_INTERNAL_H

#include "graph/plan_internal.h"
#include "core/safetensors.h"
#include "keel/train.h"

/* State blocks mirror the plan's parameter blocks float for float (one per
 * device, keel_plan_blocks_alloc), so the state of a parameter sits at the
 * same place as the parameter itself. */
struct keel_optimizer {
    keel_plan *plan;
    keel_optimizer_opts opts;
    int64_t steps;
    int n_state;            /* SGD: 1 (momentum), Adam: 2 (m, v) */
    float **state[2];       /* per device, like plan->param_blocks */
};

/* The torch names of an optimiser's state tensors ("momentum_buffer";
 * "exp_avg", "exp_avg_sq"). */
const char *keel_optimizer_state_name(const keel_optimizer *opt, int which);

/* Adds the optimiser's state and hyper-parameters to a checkpoint writer;
 * `host` receives a host copy of the state blocks that must stay alive
 * until the writer has written (free with free()). */
keel_status keel_optimizer_export(const keel_optimizer *opt, keel_st_writer *w, float **host);
/* Restores state saved by keel_optimizer_export. */
keel_status keel_optimizer_import(keel_optimizer *opt, const keel_st_file *f);

/* Adds every parameter and state buffer of the plan to the writer; `host`
 * as above. */
keel_status keel_weights_export(keel_plan *plan, keel_st_writer *w, float **host);
/* Checks and loads every parameter of the plan from a loaded file. With
 * `strict_extra` a non-optimiser tensor the model lacks is an error. */
keel_status keel_weights_import(keel_plan *plan, const keel_st_file *f, bool strict_extra);

/* The shortest decimal text that reads back as exactly v ("0.05", not
 * "0.0500000007"). Returns buf (at least 32 bytes). */
const char *keel_float_str(float v, char *buf, size_t size);

/* Wall-clock seconds from a monotonic clock. */
double keel_train_now(void);

#endif
