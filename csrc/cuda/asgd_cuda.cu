// The CUDA kernels of asgd (math/asgd.h): the update, one launch per bucket (NOTE: [One launch per
// bucket]), and the step kernel for device-side steps (NOTE: [Device steps and GradScaler]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(asgd, AsgdRule, AsgdHyper)
FO_CUDA_DEVICE_STEPS(asgd, AsgdStepCoefs, AsgdHyper)
