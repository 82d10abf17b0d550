// The CUDA kernels of Adam and AdamW (math/adam.h): the update, one launch per bucket (NOTE: [One
// launch per bucket]), and the step kernel for device-side steps (NOTE: [Device steps and
// GradScaler]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(adam, AdamRule, AdamHyper)
FO_CUDA_DEVICE_STEPS(adam, AdamStepCoefs, AdamHyper)
