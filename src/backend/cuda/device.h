// What the CUDA backend's parts share (cuda_backend.cpp and its pieces: weights, linear, forward,
// staging, graphs): the error macros, a rank's place in tensor parallelism, and device memory that
// is freed with its owner.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/kernels.h"
#include "common/float16.h"
#include "common/result.h"

#ifdef BATON_HAS_NCCL
#include <nccl.h>
#endif

#define BATON_CU(expr)                                                                            \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess) return make_error("CUDA: ", cudaGetErrorString(e_), " (", #expr, ")"); \
  } while (0)
#define BATON_CUBLAS(expr)                                                                                       \
  do {                                                                                                           \
    cublasStatus_t s_ = (expr);                                                                                  \
    if (s_ != CUBLAS_STATUS_SUCCESS) return make_error("cuBLAS: ", cublasGetStatusString(s_), " (", #expr, ")"); \
  } while (0)
#ifdef BATON_HAS_NCCL
#define BATON_NCCL(expr)                                                                          \
  do {                                                                                            \
    ncclResult_t r_ = (expr);                                                                     \
    if (r_ != ncclSuccess) return make_error("NCCL: ", ncclGetErrorString(r_), " (", #expr, ")"); \
  } while (0)
#endif

namespace baton::cuda {

struct Rank {
  int rank = 0, size = 1, device = 0;
  void* nccl = nullptr;  // ncclComm_t when size > 1
};

// Device allocations of one GPU, freed together by free_all() or the destructor (weights,
// activations, workspaces, the KV pool). Nothing is allocated once steps run.
class DeviceArena {
 public:
  DeviceArena() = default;
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  ~DeviceArena() { free_all(); }

  template <class T>
  Result<T*> alloc(size_t n) {
    void* p = nullptr;
    BATON_CU(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
    ptrs_.push_back(p);
    return static_cast<T*>(p);
  }
  template <class T>
  Result<T*> upload(const std::vector<T>& host) {
    BATON_ASSIGN_OR_RETURN(T * p, alloc<T>(host.size()));
    BATON_CU(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    return p;
  }
  Result<bf16_t*> upload_bf16(const std::vector<float>& host) {
    std::vector<bf16_t> b(host.size());
    for (size_t i = 0; i < host.size(); ++i) b[i] = f32_to_bf16(host[i]);
    return upload(b);
  }
  void free_all() {
    for (void* p : ptrs_) cudaFree(p);
    ptrs_.clear();
  }

 private:
  std::vector<void*> ptrs_;
};

}  // namespace baton::cuda
