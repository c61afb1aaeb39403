// The pool of KV cache blocks: who holds which, and which full blocks can be shared.
//
// Blocks are reference-counted. A block that is full of prompt/output tokens gets a hash of its
// tokens chained with the hash of the block before it (so equal hashes mean equal prefixes);
// a later sequence whose prompt starts with the same blocks takes them (ref + 1) instead of
// computing them again. When the last holder lets go, a hashed block stays cached on an LRU
// free list and is only recycled, losing its hash, when a fresh block is needed.
//
// Invariants: num_free() + num_used() == num_total(); a block with ref > 0 is never on the free
// list; a hash maps to at most one block. Not thread-safe: the engine loop owns it.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

namespace baton {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size, bool enable_prefix_caching = true);

  int block_size() const { return block_size_; }
  int num_total() const { return static_cast<int>(blocks_.size()); }
  int num_free() const { return num_free_; }  // ref == 0, cached or not
  int num_used() const { return num_total() - num_free_; }
  int blocks_for(int n_tokens) const { return (n_tokens + block_size_ - 1) / block_size_; }

  struct Counters {
    uint64_t fresh_allocations = 0;  // blocks handed out for new KV
    uint64_t prefix_hits = 0;        // blocks reused from the prefix cache
    uint64_t evictions = 0;          // cached blocks recycled
  };
  const Counters& counters() const { return counters_; }

  // For a sequence with no blocks yet: takes the longest run of cached full blocks that match
  // the start of `tokens`, appends them to `table` and returns how many tokens they hold. At
  // least one token is always left to compute (its logits are needed). `hashes` receives the
  // chain hashes of the taken blocks.
  int take_cached_prefix(std::span<const int> tokens, std::vector<int32_t>& table, std::vector<uint64_t>& hashes);

  // Grows `table` to cover n_tokens slots with fresh blocks. Returns false, changing nothing,
  // when too few blocks are free.
  bool ensure_capacity(std::vector<int32_t>& table, int n_tokens);

  // Publishes every block of `table` that is now full of computed tokens, so later sequences can
  // share it. `hashes` holds the chain hashes of the blocks already published for this table and
  // is extended.
  void publish_full_blocks(std::span<const int> tokens, int n_computed, std::span<const int32_t> table,
                           std::vector<uint64_t>& hashes);

  // Lets go of every block of `table` (ref - 1) and clears it.
  void release(std::vector<int32_t>& table);

  int ref_count(int32_t block) const { return blocks_[block].ref; }

 private:
  struct Block {
    int ref = 0;
    uint64_t hash = 0;
    bool has_hash = false;
    int32_t prev = -1, next = -1;  // free list links (valid while ref == 0)
  };
  uint64_t chain_hash(uint64_t parent, std::span<const int> block_tokens) const;
  void free_list_remove(int32_t id);
  void free_list_push_back(int32_t id);
  int32_t pop_free();

  int block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  int32_t free_head_ = -1, free_tail_ = -1;  // oldest first: popped for reuse
  int num_free_ = 0;
  std::unordered_map<uint64_t, int32_t> cached_;  // chain hash -> block
  Counters counters_;
};

}  // namespace baton
