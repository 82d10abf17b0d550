// The CUDA kernel of adamax (math/adamax.h): one launch per bucket (NOTE: [One launch per bucket]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(adamax, AdamaxRule, AdamaxHyper)
