// The CUDA kernels of nadam (math/nadam.h): the update, one launch per bucket (NOTE: [One launch per
// bucket]), and the step kernel for device-side steps (NOTE: [Device steps and GradScaler]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(nadam, NadamRule, NadamHyper)
FO_CUDA_DEVICE_STEPS(nadam, NadamStepCoefs, NadamHyper)
