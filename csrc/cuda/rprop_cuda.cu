// The CUDA kernel of rprop (math/rprop.h): one launch per bucket (NOTE: [One launch per bucket]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(rprop, RpropRule, RpropHyper)
