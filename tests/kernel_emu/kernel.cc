/* One kernel source of kernels/, compiled as C++ against the emulator:
 * tests/meson.build builds this file once per source, naming it in
 * KEEL_EMU_KERNEL. */
#include KEEL_EMU_KERNEL
