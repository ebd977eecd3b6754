/* The CUDA entry points of src/cuda/cuda.h that need no device, in a build
 * without CUDA: they say so, and the CUDA tests skip themselves. */
#include "cuda/cuda.h"

#define BUILT_WITHOUT_CUDA "this libkeel was built without CUDA (configure with -Dcuda=enabled)"

keel_status keel_cudnn_conv_check(const keel_conv_shape *shape, const keel_conv_policy *policy,
                                  const char *deviceprop_json, int max_plans, keel_cudnn_report *report)
{
    (void)shape, (void)policy, (void)deviceprop_json, (void)max_plans, (void)report;
    return keel_fail(KEEL_ERR_UNSUPPORTED, "cuDNN check: " BUILT_WITHOUT_CUDA);
}

keel_status keel_cudnn_deviceprop_json(int index, char *buf, size_t size)
{
    (void)index, (void)buf, (void)size;
    return keel_fail(KEEL_ERR_UNSUPPORTED, "cuDNN device profile: " BUILT_WITHOUT_CUDA);
}

long keel_cudnn_version(void)
{
    return 0;
}
