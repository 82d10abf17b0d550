// The CUDA kernels of rmsprop (math/rmsprop.h): the update, one launch per bucket (NOTE: [One launch per
// bucket]), and the step kernel for device-side steps (NOTE: [Device steps and GradScaler]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(rmsprop, RmspropRule, RmspropHyper)
FO_CUDA_DEVICE_STEPS(rmsprop, StepCountOnly, RmspropHyper)
