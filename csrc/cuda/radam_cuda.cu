// The CUDA kernel of radam (math/radam.h): one launch per bucket (NOTE: [One launch per bucket]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(radam, RadamRule, RadamHyper)
