// The CUDA kernel of sgd (math/sgd.h): one launch per bucket (NOTE: [One launch per bucket]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(sgd, SgdRule, SgdHyper)
