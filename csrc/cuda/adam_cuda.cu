// The CUDA kernel of adam (math/adam.h): one launch per bucket (NOTE: [One launch per bucket]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(adam, AdamRule, AdamHyper)
