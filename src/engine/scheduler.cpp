#include "engine/scheduler.h"

#include <algorithm>
#include <cassert>

namespace baton {

void Scheduler::add(Sequence* seq) {
  seq->state = SeqState::kWaiting;
  waiting_.push_back(seq);
}

void Scheduler::add_remote(Sequence* seq) {
  seq->state = SeqState::kRemoteKv;
  remote_.push_back(seq);
}

void Scheduler::remote_done(Sequence* seq, bool kv_in_place) {
  auto it = std::find(remote_.begin(), remote_.end(), seq);
  assert(it != remote_.end());
  remote_.erase(it);
  if (kv_in_place && static_cast<int>(seq->block_table.size()) >= blocks_.blocks_for(seq->num_computed)) {
    seq->state = SeqState::kRunning;
    running_.push_back(seq);
    return;
  }
  blocks_.release(seq->block_table);
  seq->block_hashes.clear();
  seq->num_computed = 0;
  seq->state = SeqState::kWaiting;
  waiting_.push_front(seq);  // it has waited already: recompute it first
}

void Scheduler::remove(Sequence* seq) {
  if (auto it = std::find(running_.begin(), running_.end(), seq); it != running_.end()) running_.erase(it);
  if (auto it = std::find(waiting_.begin(), waiting_.end(), seq); it != waiting_.end()) waiting_.erase(it);
  if (auto it = std::find(remote_.begin(), remote_.end(), seq); it != remote_.end()) remote_.erase(it);
  blocks_.release(seq->block_table);
  seq->block_hashes.clear();
  seq->state = SeqState::kFinished;
}

void Scheduler::preempt(Sequence* seq) {
  blocks_.release(seq->block_table);
  seq->block_hashes.clear();
  seq->num_computed = 0;
  seq->state = SeqState::kWaiting;
  ++seq->num_preemptions;
  waiting_.push_front(seq);
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  int budget = config_.max_num_batched_tokens;

  // 1. Running sequences, oldest first. Preemption victims come from the back.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* seq = running_[i];
    const int n = std::min(seq->num_uncomputed(), budget);
    assert(n > 0);
    bool self_preempted = false;
    while (!blocks_.ensure_capacity(seq->block_table, seq->num_computed + n)) {
      Sequence* victim = running_.back();
      running_.pop_back();
      preempt(victim);
      ++out.num_preempted;
      if (victim == seq) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;
    out.seqs.push_back({seq, n, seq->num_computed + n == static_cast<int>(seq->tokens.size())});
    budget -= n;
    ++i;
  }

  // 2. Waiting sequences, in order, while there is room (not in a step that had to preempt).
  while (out.num_preempted == 0 && !waiting_.empty() && budget > 0 &&
         static_cast<int>(running_.size()) < config_.max_num_seqs) {
    Sequence* seq = waiting_.front();
    if (seq->num_computed == 0 && seq->block_table.empty()) {
      seq->num_computed = blocks_.take_cached_prefix(seq->tokens, seq->block_table, seq->block_hashes);
      if (!seq->cached_counted) {
        seq->num_cached_tokens = std::min(seq->num_computed, seq->prompt_len);
        seq->cached_counted = true;
      }
    }
    const int n = std::min(seq->num_uncomputed(), budget);
    if (!blocks_.ensure_capacity(seq->block_table, seq->num_computed + n)) {
      // Not now: give back what it took from the cache, so waiting holds no blocks.
      blocks_.release(seq->block_table);
      seq->block_hashes.clear();
      seq->num_computed = 0;
      break;
    }
    waiting_.pop_front();
    seq->state = SeqState::kRunning;
    running_.push_back(seq);
    out.seqs.push_back({seq, n, seq->num_computed + n == static_cast<int>(seq->tokens.size())});
    budget -= n;
  }
  return out;
}

}  // namespace baton
