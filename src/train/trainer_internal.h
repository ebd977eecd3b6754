/* Shared by evaluate.c and trainer.c. */
#ifndef KEEL_TRAINER_INTERNAL_H
#define KEEL_TRAINER_INTERNAL_H

#include "keel/train.h"

/* Evaluates over every batch `loader` yields; logits is a host buffer of
 * batch x classes floats. */
keel_status keel_eval_loop(keel_plan *plan, const keel_model_io *io, keel_loader *loader, float *logits,
                           keel_eval_result *out);
/* Checks that the model can be evaluated on d and returns its batch. */
keel_status keel_check_eval_io(const keel_model_io *io, const keel_dataset *d, int64_t *batch);

#endif
