// Timeline stamps for one decode step, kernel by kernel and CTA by CTA (bench/gpu/cuda.sh stamps,
// bench/gpu/stamps.py): compiled in only with -DBATON_STAMPS (CMake option BATON_STAMPS). Thread 0
// of every CTA of an instrumented kernel records %globaltimer (32 ns steps on H100 / H200) at its
// entry, at the kernel's phase marks (before and after the PDL wait, ...) and at its exit, into a
// ring of StampRec (kernels.h) the backend allocates and dumps to $BATON_STAMPS_OUT at exit.
// Nsight Systems is not on the lent machines, and CUPTI's kernel records have no phases inside a
// kernel. Without BATON_STAMPS every macro is empty (the kernels' PTX is unchanged).
#pragma once

#include "backend/cuda/kernels.h"

#ifdef BATON_STAMPS
namespace baton::cuda {
namespace {
__device__ StampRec* g_stamp_ring;
__device__ uint32_t* g_stamp_count;
__device__ __forceinline__ uint64_t stamp_now() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
}  // namespace
}  // namespace baton::cuda
// In a kernel's first line; the ring slot is taken at entry so that its atomic overlaps the work.
#define BATON_STAMP_BEGIN()                                                                   \
  __shared__ uint64_t stamp_t_[8];                                                            \
  __shared__ uint32_t stamp_slot_, stamp_n_;                                                  \
  if (threadIdx.x == 0) {                                                                     \
    stamp_t_[0] = ::baton::cuda::stamp_now();                                                 \
    stamp_n_ = 1;                                                                             \
    stamp_slot_ = ::baton::cuda::g_stamp_count ? atomicAdd(::baton::cuda::g_stamp_count, 1u) : ~0u; \
  }
#define BATON_STAMP()                                                    \
  do {                                                                   \
    if (threadIdx.x == 0 && stamp_n_ < 7) stamp_t_[stamp_n_++] = ::baton::cuda::stamp_now(); \
  } while (0)
// Before every return of the kernel (thread 0 must reach one).
#define BATON_STAMP_END(kind_)                                                                  \
  do {                                                                                          \
    if (threadIdx.x == 0 && stamp_slot_ != ~0u) {                                               \
      ::baton::cuda::StampRec& r = ::baton::cuda::g_stamp_ring[stamp_slot_ % ::baton::cuda::kStampRing]; \
      stamp_t_[stamp_n_++] = ::baton::cuda::stamp_now();                                        \
      asm volatile("mov.u64 %0, %%gridid;" : "=l"(r.grid));                                     \
      r.seq = stamp_slot_;                                                                      \
      r.block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);                 \
      r.kind = (kind_);                                                                         \
      r.marks = stamp_n_;                                                                       \
      for (uint32_t i = 0; i < stamp_n_; ++i) r.t[i] = stamp_t_[i];                             \
    }                                                                                           \
  } while (0)
// Once in each .cu file that stamps: its host function pointing the file's ring at the backend's.
#define BATON_STAMP_ATTACH(fn)                                           \
  void fn(StampRec* ring, uint32_t* count) {                            \
    cudaMemcpyToSymbol(g_stamp_ring, &ring, sizeof(ring));               \
    cudaMemcpyToSymbol(g_stamp_count, &count, sizeof(count));            \
  }
#else
#define BATON_STAMP_BEGIN()
#define BATON_STAMP()
#define BATON_STAMP_END(kind_)
#define BATON_STAMP_ATTACH(fn)
#endif
