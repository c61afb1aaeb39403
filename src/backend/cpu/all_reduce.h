// Shared-memory all-reduce for CPU tensor-parallel ranks running as threads of one process
// (DESIGN.md section 3). Each rank sums one slice of the buffer across all ranks, in rank order,
// and writes it back to every rank's buffer: the result is the same on every rank and does not
// depend on thread timing.
#pragma once

#include <algorithm>
#include <barrier>
#include <cstddef>
#include <vector>

#include "common/tp_split.h"

namespace baton::cpu {

class AllReduce {
 public:
  explicit AllReduce(int ranks) : ranks_(ranks), bufs_(ranks), barrier_(ranks) {}
  int ranks() const { return ranks_; }

  // Called by every rank with its own buffer of the same length; returns when buf holds the sum.
  void sum(int rank, float* buf, size_t n) {
    bufs_[rank] = buf;
    barrier_.arrive_and_wait();  // every rank's partial is complete
    const size_t per = (n + ranks_ - 1) / ranks_;
    const size_t begin = std::min(n, rank * per), end = std::min(n, begin + per);
    for (size_t i = begin; i < end; ++i) {
      float s = bufs_[0][i];
      for (int r = 1; r < ranks_; ++r) s += bufs_[r][i];
      for (int r = 0; r < ranks_; ++r) bufs_[r][i] = s;
    }
    barrier_.arrive_and_wait();  // every slice is written everywhere
  }

  // The same, summing each element over the ranks in tp_split.h's pairwise tree
  // ((r0 + r1) + (r2 + r3)) + ...: --tp-invariant's order (its ranks: a power of two, at most 8).
  void tree_sum(int rank, float* buf, size_t n) {
    bufs_[rank] = buf;
    barrier_.arrive_and_wait();
    const size_t per = (n + ranks_ - 1) / ranks_;
    const size_t begin = std::min(n, rank * per), end = std::min(n, begin + per);
    float v[8];
    for (size_t i = begin; i < end; ++i) {
      for (int r = 0; r < ranks_; ++r) v[r] = bufs_[r][i];
      const float s = baton::tree_sum(v, ranks_);
      for (int r = 0; r < ranks_; ++r) bufs_[r][i] = s;
    }
    barrier_.arrive_and_wait();
  }

 private:
  int ranks_;
  std::vector<float*> bufs_;
  std::barrier<> barrier_;
};

}  // namespace baton::cpu
