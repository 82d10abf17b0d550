// The CUDA kernel of asgd (math/asgd.h): one launch per bucket (NOTE: [One launch per bucket]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(asgd, AsgdRule, AsgdHyper)
