// A stand-in for <cuda_runtime.h>: with this directory first on the include path and
// FO_CUDA_EMULATION defined, csrc/cuda/*.cu compile as plain C++ and their kernels run on the CPU
// (csrc/tests/test_cuda_emulated.cpp).
//
// NOTE: [CUDA emulation]
// The CUDA kernels can't run without a GPU, and the development machine and CI have none. So
// the C++ tests also build them with the host compiler and run them here: a launch runs its
// blocks one after another, and a block's threads as coroutines (ucontext) on the calling
// thread, each on its own stack. A thread runs until it returns or reaches __syncthreads,
// which hands over to the next; once every thread still running has reached the barrier, they
// go on. So a __shared__ array (a function-local static here) is shared by the block's
// threads, and a thread that returns no longer holds the others at a barrier, as an exited
// CUDA thread does. What a GPU would refuse is refused here too: a launch configuration out
// of range and threads of a block at different __syncthreads are errors of cudaGetLastError,
// and a 16-byte access that is not 16-byte aligned (FO_CUDA_PACK_ACCESS in sweep.cuh, which
// also counts them) stops the program. Since the update rules are the same headers and both builds keep IEEE
// arithmetic (-ffp-contract=off, nvcc --fmad=false), an emulated elementwise kernel must give
// the CPU scalar sweep's bits. That checks the kernels' own logic: the table walk, chunks and
// the grid stride, packs of 16-byte accesses and the element-wise fallback, the options,
// device steps, and the reductions' trees. It cannot check what needs a GPU: device code
// generation and math functions, the memory model (threads here never run at the same time),
// speed, or the torch side of the tables (csrc/cuda_table.cpp); benchmarks/gpu_check.sh does,
// on a GPU machine.
#pragma once
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(threads)

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct uint3 {
  unsigned x, y, z;
};
using dim3 = uint3;

typedef void* cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};

// The running thread's coordinates, set by the emulator before it resumes a thread.
inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1};
inline dim3 gridDim{1, 1, 1};

namespace fusedoptim {
namespace cuda {
namespace emulation {

// What the emulator saw since the last cudaGetLastError (the first error sticks), and the
// 16-byte accesses of the kernels (FO_CUDA_PACK_ACCESS in csrc/cuda/sweep.cuh).
struct Record {
  cudaError_t error = cudaSuccess;
  int64_t packs = 0;
};
inline Record record;

inline void fail(cudaError_t error) {
  if (record.error == cudaSuccess) record.error = error;
}

// A misaligned 16-byte access stops the program, as it stops a kernel on the GPU (and the
// aligned uint4 access that follows would fault here anyway).
inline void pack_access(const void* address) {
  ++record.packs;
  if (reinterpret_cast<uintptr_t>(address) % 16 != 0) {
    std::fprintf(stderr, "FAIL: misaligned 16-byte access at %p (cudaErrorMisalignedAddress)\n", address);
    std::abort();
  }
}

// The threads of a block, as coroutines of the calling thread.
class BlockThreads {
 public:
  static BlockThreads& instance() {
    static BlockThreads threads;
    return threads;
  }

  // body(t) for every thread t of a block of `count`, interleaved at each __syncthreads.
  void run(int count, const std::function<void(unsigned)>& body) {
    while (int(stacks_.size()) < count) stacks_.emplace_back(new char[kStackBytes]);
    contexts_.resize(count);
    done_.assign(count, false);
    barriers_.assign(count, 0);
    body_ = &body;
    for (int t = 0; t < count; ++t) {
      getcontext(&contexts_[t]);
      contexts_[t].uc_stack.ss_sp = stacks_[t].get();
      contexts_[t].uc_stack.ss_size = kStackBytes;
      contexts_[t].uc_link = &scheduler_;
      makecontext(&contexts_[t], &BlockThreads::thread_main, 0);
    }
    for (int running = count; running > 0;) {
      int64_t barrier = -1;  // every thread still running must wait at the same __syncthreads
      for (int t = 0; t < count; ++t) {
        if (done_[t]) continue;
        current_ = unsigned(t);
        threadIdx = {unsigned(t), 0, 0};
        swapcontext(&scheduler_, &contexts_[t]);
        if (done_[t]) {
          --running;
        } else if (barrier < 0) {
          barrier = barriers_[t];
        } else if (barriers_[t] != barrier) {
          fail(cudaErrorLaunchFailure);
        }
      }
    }
  }

  // __syncthreads: back to the scheduler, which resumes this thread once the others arrived.
  void sync() {
    ++barriers_[current_];
    swapcontext(&contexts_[current_], &scheduler_);
  }

 private:
  static constexpr size_t kStackBytes = 256 * 1024;

  static void thread_main() {
    BlockThreads& block = instance();
    const unsigned t = block.current_;
    (*block.body_)(t);
    block.done_[t] = true;  // returning resumes the scheduler (uc_link)
  }

  std::vector<std::unique_ptr<char[]>> stacks_;
  std::vector<ucontext_t> contexts_;
  std::vector<bool> done_;
  std::vector<int64_t> barriers_;  // __syncthreads reached, per thread
  ucontext_t scheduler_;
  const std::function<void(unsigned)>* body_ = nullptr;
  unsigned current_ = 0;
};

// kernel<<<blocks, threads>>>(args...), blocks one after another.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), int64_t blocks, int threads, const Args&... args) {
  if (blocks < 1 || blocks > 0x7FFFFFFF || threads < 1 || threads > 1024) return fail(cudaErrorInvalidConfiguration);
  blockDim = {unsigned(threads), 1, 1};
  gridDim = {unsigned(blocks), 1, 1};
  for (int64_t b = 0; b < blocks; ++b) {
    blockIdx = {unsigned(b), 0, 0};
    BlockThreads::instance().run(threads, [&](unsigned) { kernel(args...); });
  }
}

}  // namespace emulation
}  // namespace cuda
}  // namespace fusedoptim

inline void __syncthreads() { fusedoptim::cuda::emulation::BlockThreads::instance().sync(); }

inline cudaError_t cudaGetLastError() {
  const cudaError_t error = fusedoptim::cuda::emulation::record.error;
  fusedoptim::cuda::emulation::record.error = cudaSuccess;
  return error;
}

inline const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure (threads at different __syncthreads)";
  }
  return "unknown error";
}

#define FO_CUDA_PACK_ACCESS(address) ::fusedoptim::cuda::emulation::pack_access(address)
