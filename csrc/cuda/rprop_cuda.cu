// The CUDA kernels of rprop (math/rprop.h): the update, one launch per bucket (NOTE: [One launch per
// bucket]), and the step kernel for device-side steps (NOTE: [Device steps and GradScaler]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(rprop, RpropRule, RpropHyper)
FO_CUDA_DEVICE_STEPS(rprop, StepCountOnly, RpropHyper)
