#include "engine/block_manager.h"

#include <cassert>

namespace baton {

BlockManager::BlockManager(int num_blocks, int block_size, bool enable_prefix_caching)
    : block_size_(block_size), prefix_caching_(enable_prefix_caching), blocks_(num_blocks) {
  assert(num_blocks >= 0 && block_size > 0);
  for (int32_t i = 0; i < num_blocks; ++i) free_list_push_back(i);  // low ids first
}

uint64_t BlockManager::chain_hash(uint64_t parent, std::span<const int> block_tokens) const {
  // FNV-1a over the parent hash and the token ids, then a final mix. Collisions would share
  // KV between different prefixes, so the 64-bit space is used in full.
  uint64_t h = 0xcbf29ce484222325ull ^ parent;
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xFF;
      h *= 0x100000001b3ull;
    }
  };
  mix(parent);
  for (int t : block_tokens) mix(static_cast<uint32_t>(t));
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

void BlockManager::free_list_remove(int32_t id) {
  Block& b = blocks_[id];
  if (b.prev >= 0) blocks_[b.prev].next = b.next; else free_head_ = b.next;
  if (b.next >= 0) blocks_[b.next].prev = b.prev; else free_tail_ = b.prev;
  b.prev = b.next = -1;
  --num_free_;
}

void BlockManager::free_list_push_back(int32_t id) {
  Block& b = blocks_[id];
  b.prev = free_tail_;
  b.next = -1;
  if (free_tail_ >= 0) blocks_[free_tail_].next = id; else free_head_ = id;
  free_tail_ = id;
  ++num_free_;
}

int32_t BlockManager::pop_free() {
  int32_t id = free_head_;
  assert(id >= 0);
  free_list_remove(id);
  Block& b = blocks_[id];
  if (b.has_hash) {  // recycle a cached block: it no longer holds that prefix
    cached_.erase(b.hash);
    b.has_hash = false;
    ++counters_.evictions;
  }
  return id;
}

int BlockManager::take_cached_prefix(std::span<const int> tokens, std::vector<int32_t>& table,
                                     std::vector<uint64_t>& hashes) {
  assert(table.empty() && hashes.empty());
  if (!prefix_caching_ || tokens.empty()) return 0;
  const int max_blocks = static_cast<int>(tokens.size() - 1) / block_size_;  // keep >= 1 token to compute
  uint64_t parent = 0;
  for (int b = 0; b < max_blocks; ++b) {
    uint64_t h = chain_hash(parent, tokens.subspan(static_cast<size_t>(b) * block_size_, block_size_));
    auto it = cached_.find(h);
    if (it == cached_.end()) break;
    int32_t id = it->second;
    if (blocks_[id].ref == 0) free_list_remove(id);
    ++blocks_[id].ref;
    table.push_back(id);
    hashes.push_back(h);
    ++counters_.prefix_hits;
    parent = h;
  }
  return static_cast<int>(table.size()) * block_size_;
}

bool BlockManager::ensure_capacity(std::vector<int32_t>& table, int n_tokens) {
  int need = blocks_for(n_tokens) - static_cast<int>(table.size());
  if (need <= 0) return true;
  if (need > num_free_) return false;
  for (int i = 0; i < need; ++i) {
    int32_t id = pop_free();
    blocks_[id].ref = 1;
    table.push_back(id);
    ++counters_.fresh_allocations;
  }
  return true;
}

void BlockManager::publish_full_blocks(std::span<const int> tokens, int n_computed, std::span<const int32_t> table,
                                       std::vector<uint64_t>& hashes) {
  if (!prefix_caching_) return;
  const int full = std::min<int>(n_computed / block_size_, static_cast<int>(table.size()));
  for (int b = static_cast<int>(hashes.size()); b < full; ++b) {
    uint64_t parent = b == 0 ? 0 : hashes[b - 1];
    uint64_t h = chain_hash(parent, tokens.subspan(static_cast<size_t>(b) * block_size_, block_size_));
    hashes.push_back(h);
    Block& blk = blocks_[table[b]];
    if (blk.has_hash || cached_.count(h)) continue;  // already published, or another block holds it
    blk.hash = h;
    blk.has_hash = true;
    cached_.emplace(h, table[b]);
  }
}

void BlockManager::release(std::vector<int32_t>& table) {
  // Tail blocks first, so that a sequence's last (least shareable) blocks are recycled first.
  for (auto it = table.rbegin(); it != table.rend(); ++it) {
    Block& b = blocks_[*it];
    assert(b.ref > 0 && "block released twice");
    if (--b.ref == 0) free_list_push_back(*it);
  }
  table.clear();
}

}  // namespace baton
