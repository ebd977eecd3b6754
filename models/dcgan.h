/* The DCGAN pair for the zoo registry ("dcgan-g", "dcgan-d"); keel/gan.h
 * documents what each exposes in keel_model_io. */
#ifndef KEEL_ZOO_DCGAN_H
#define KEEL_ZOO_DCGAN_H

#include "zoo.h"

keel_status keel_zoo_dcgan_generator(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);
keel_status keel_zoo_dcgan_discriminator(keel_graph *g, const keel_model_opts *opts, keel_model_io *io);

#endif
