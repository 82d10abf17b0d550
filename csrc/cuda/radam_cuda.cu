// The CUDA kernels of radam (math/radam.h): the update, one launch per bucket (NOTE: [One launch per
// bucket]), and the step kernel for device-side steps (NOTE: [Device steps and GradScaler]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(radam, RadamRule, RadamHyper)
FO_CUDA_DEVICE_STEPS(radam, RadamStepCoefs, RadamHyper)
