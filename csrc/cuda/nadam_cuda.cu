// The CUDA kernel of nadam (math/nadam.h): one launch per bucket (NOTE: [One launch per bucket]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(nadam, NadamRule, NadamHyper)
