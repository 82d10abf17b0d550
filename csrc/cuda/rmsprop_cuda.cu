// The CUDA kernel of rmsprop (math/rmsprop.h): one launch per bucket (NOTE: [One launch per bucket]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(rmsprop, RmspropRule, RmspropHyper)
