// The CUDA kernel of adagrad (math/adagrad.h): one launch per bucket (NOTE: [One launch per bucket]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(adagrad, AdagradRule, AdagradHyper)
