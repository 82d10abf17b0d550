// The CUDA kernels of adagrad (math/adagrad.h): the update, one launch per bucket (NOTE: [One launch per
// bucket]), and the step kernel for device-side steps (NOTE: [Device steps and GradScaler]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(adagrad, AdagradRule, AdagradHyper)
FO_CUDA_DEVICE_STEPS(adagrad, AdagradStepCoefs, AdagradHyper)
