// Timing work on a stream with a pair of events (the decode graphs' and the tuned GEMMs' choices).
#pragma once

#include <cuda_runtime.h>

#include <functional>

#include "common/result.h"

namespace baton::cuda {

// Milliseconds between an event recorded before `enqueue` puts its work on `stream` and one
// recorded after it, waited for. Not while `stream` is being captured.
inline Result<float> time_ms(cudaStream_t stream, const std::function<Status()>& enqueue) {
  cudaEvent_t ev[2] = {};
  if (cudaEventCreate(&ev[0]) != cudaSuccess) return make_error("cudaEventCreate failed");
  if (cudaEventCreate(&ev[1]) != cudaSuccess) {
    cudaEventDestroy(ev[0]);
    return make_error("cudaEventCreate failed");
  }
  cudaError_t e = cudaEventRecord(ev[0], stream);
  Status st;
  if (e == cudaSuccess) st = enqueue();
  float ms = 0.f;
  if (e == cudaSuccess && st.ok()) e = cudaEventRecord(ev[1], stream);
  if (e == cudaSuccess && st.ok()) e = cudaEventSynchronize(ev[1]);
  if (e == cudaSuccess && st.ok()) e = cudaEventElapsedTime(&ms, ev[0], ev[1]);
  cudaEventDestroy(ev[0]);
  cudaEventDestroy(ev[1]);
  if (!st.ok()) return Error{st.message()};
  if (e != cudaSuccess) return make_error("CUDA: ", cudaGetErrorString(e), " (timing on a stream)");
  return ms;
}

}  // namespace baton::cuda
