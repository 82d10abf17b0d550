// The CUDA kernel of adadelta (math/adadelta.h): one launch per bucket (NOTE: [One launch per bucket]).
#include "cuda/sweep.cuh"

FO_CUDA_ELEMENTWISE(adadelta, AdadeltaRule, AdadeltaHyper)
