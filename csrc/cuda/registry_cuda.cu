// Registers this build's CUDA kernels with the host side when the extension loads, and the two
// runtime questions the host side asks: how large a grid to launch, and whether a stream is
// capturing a graph (NOTE: [CUDA without torch headers]).
#include "cuda/sweep.cuh"

namespace fusedoptim {
namespace cuda {

int multiprocessor_count(int device, const char** error) {
  int count = 0;
  const cudaError_t status = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
  if (status != cudaSuccess) {
    *error = cudaGetErrorString(status);
    return -1;
  }
  return count;
}

int stream_capturing(void* stream, const char** error) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  const cudaError_t status = cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &capture);
  if (status != cudaSuccess) {
    *error = cudaGetErrorString(status);
    return -1;
  }
  return capture == cudaStreamCaptureStatusNone ? 0 : 1;
}

namespace {

#define FO_CUDA_ENTRY(name, Rule, Hyper) name##_launch,
#define FO_CUDA_STEPS_ENTRY(name, Coefs, Hyper) name##_steps_launch,
const KernelTable kCudaKernels = {
    FO_ELEMENTWISE_RULES(FO_CUDA_ENTRY) FO_REDUCTION_RULES(FO_CUDA_ENTRY)
        FO_DEVICE_STEP_RULES(FO_CUDA_STEPS_ENTRY) grad_norm_launch, multiprocessor_count,
    stream_capturing,
};
#undef FO_CUDA_ENTRY
#undef FO_CUDA_STEPS_ENTRY

const bool kRegistered = (register_kernels(&kCudaKernels), true);

}  // namespace
}  // namespace cuda
}  // namespace fusedoptim
