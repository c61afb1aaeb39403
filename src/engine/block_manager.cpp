#include "engine/block_manager.h"

#include <cassert>

namespace baton {

BlockManager::BlockManager(int num_blocks, int block_size) : block_size_(block_size), free_flag_(num_blocks, true) {
  assert(num_blocks >= 0 && block_size > 0);
  free_.reserve(num_blocks);
  for (int i = num_blocks - 1; i >= 0; --i) free_.push_back(i);  // hand out low ids first
}

bool BlockManager::ensure_capacity(std::vector<int32_t>& table, int n_tokens) {
  int need = blocks_for(n_tokens) - static_cast<int>(table.size());
  if (need <= 0) return true;
  if (need > num_free()) return false;
  for (int i = 0; i < need; ++i) {
    int32_t id = free_.back();
    free_.pop_back();
    free_flag_[id] = false;
    table.push_back(id);
  }
  return true;
}

void BlockManager::release(std::vector<int32_t>& table) {
  for (int32_t id : table) {
    assert(!free_flag_[id] && "block freed twice");
    free_flag_[id] = true;
    free_.push_back(id);
  }
  table.clear();
}

}  // namespace baton
