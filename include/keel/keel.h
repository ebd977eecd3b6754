/* Keel: a convolutional-network training framework. The one header a
 * program includes; link with `pkg-config --cflags --libs keel`. */
#ifndef KEEL_KEEL_H
#define KEEL_KEEL_H

#include "status.h"
#include "tensor.h"
#include "graph.h"
#include "plan.h"
#include "train.h"
#include "data.h"
#include "models.h"
#include "gan.h"
#include "visualize.h"

#define KEEL_VERSION_MAJOR 0
#define KEEL_VERSION_MINOR 1
#define KEEL_VERSION_PATCH 0

#ifdef __cplusplus
extern "C" {
#endif
/* "0.1.0 (cpu, cuda)": the version and the backends built in. */
const char *keel_version(void);
#ifdef __cplusplus
}
#endif
#endif
