// The pool of KV cache blocks and which sequence holds which. Block ids index the backend's
// cache; a sequence's block table lists its blocks in position order. Invariant: free + used ==
// total, and a block is in at most one table. Not thread-safe: the engine loop owns it.
#pragma once

#include <cstdint>
#include <vector>

namespace baton {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size);

  int block_size() const { return block_size_; }
  int num_total() const { return static_cast<int>(free_flag_.size()); }
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_used() const { return num_total() - num_free(); }
  int blocks_for(int n_tokens) const { return (n_tokens + block_size_ - 1) / block_size_; }

  // Grows `table` to cover n_tokens slots. Returns false, leaving `table` as it was, when the
  // pool has too few free blocks.
  bool ensure_capacity(std::vector<int32_t>& table, int n_tokens);
  // Returns every block of `table` to the pool and clears it.
  void release(std::vector<int32_t>& table);

 private:
  int block_size_;
  std::vector<int32_t> free_;    // stack of free block ids
  std::vector<bool> free_flag_;  // catches double frees
};

}  // namespace baton
