/* What nvcc gives a .cu file, for the CPU emulator: the runtime API and
 * the device-side built-ins (keel_emu.h). */
#ifndef KEEL_EMU_CUDA_RUNTIME_H
#define KEEL_EMU_CUDA_RUNTIME_H

#include "cuda_runtime_api.h"
#include "keel_emu.h"

#endif
