// The CUDA kernel of lion (math/lion.h): one launch per bucket (NOTE: [One launch per bucket]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(lion, LionRule, LionHyper)
