// The CUDA kernels of adadelta (math/adadelta.h): the update, one launch per bucket (NOTE: [One launch per
// bucket]), and the step kernel for device-side steps (NOTE: [Device steps and GradScaler]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(adadelta, AdadeltaRule, AdadeltaHyper)
FO_CUDA_DEVICE_STEPS(adadelta, StepCountOnly, AdadeltaHyper)
