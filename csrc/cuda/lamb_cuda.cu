// The CUDA kernels of LAMB (math/lamb.h): the moments pass with its per-segment sums, the apply
// pass, and the grad-squares reduction of its global grad-norm clipping.
#include "cuda/sweep.cuh"

FO_CUDA_REDUCTION(lamb_moments, LambMomentsRule, LambHyper)
FO_CUDA_ELEMENTWISE(lamb_apply, LambApplyRule, LambHyper)
FO_CUDA_REDUCTION(grad_squares, GradSquaresRule, GradSquaresHyper)
