// The CUDA kernels of adamax (math/adamax.h): the update, one launch per bucket (NOTE: [One launch per
// bucket]), and the step kernel for device-side steps (NOTE: [Device steps and GradScaler]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(adamax, AdamaxRule, AdamaxHyper)
FO_CUDA_DEVICE_STEPS(adamax, AdamaxStepCoefs, AdamaxHyper)
