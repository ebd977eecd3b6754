/* Convolution through oneDNN, behind the same backend entries as the im2col
 * reference path of conv.c. Built only when oneDNN is found (KEEL_HAVE_DNNL).
 *
 * prepare builds one node's oneDNN primitives (its algo) and sizes their
 * scratch into the plan's workspace, or leaves algo NULL so that the run
 * functions below call conv.c: for the nodes im2col runs faster (see
 * suits_dnnl in conv_dnnl.c), for every node when KEEL_CPU_CONV=im2col is
 * set when the plan is compiled, and for shapes oneDNN has no
 * implementation for. release frees an algo. */
#ifndef KEEL_CPU_CONV_DNNL_H
#define KEEL_CPU_CONV_DNNL_H

#include "cpu/cpu.h"

keel_status keel_cpu_conv_dnnl_prepare(keel_device *d, const keel_node *node, int64_t *workspace, void **algo);
keel_status keel_cpu_conv_dnnl_forward(const keel_launch *l);
keel_status keel_cpu_conv_dnnl_bwd_data(const keel_launch *l);    /* also CONV_TRANSPOSE2D */
keel_status keel_cpu_conv_dnnl_bwd_weight(const keel_launch *l);
void keel_cpu_conv_dnnl_release(keel_device *d, void *algo);

#endif
