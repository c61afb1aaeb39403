// Decides what runs in each engine step (continuous batching with chunked prefill).
//
// Each step has a token budget (max_num_batched_tokens) and a cap on running sequences
// (max_num_seqs). Running sequences go first, oldest first: a decoding one needs one token, one
// still prefilling gets as much of its prompt as the budget allows. Then waiting sequences are
// admitted in arrival order, reusing cached prefix blocks. When the KV pool runs out, the newest
// running sequence is preempted: its blocks are released and it goes back to the front of the
// queue to be recomputed later (its tokens and sampler state are kept, so output is unchanged).
// Sequences waiting for remote KV are held aside until the engine says their KV is in place.
#pragma once

#include <deque>
#include <vector>

#include "engine/block_manager.h"
#include "engine/sequence.h"

namespace baton {

struct SchedulerConfig {
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
};

struct ScheduledSeq {
  Sequence* seq;
  int n_tokens;      // tokens computed for it this step, from seq->num_computed
  bool need_logits;  // this step reaches its last token: sample
};

struct SchedulerOutput {
  std::vector<ScheduledSeq> seqs;
  int num_preempted = 0;
  int total_tokens() const {
    int n = 0;
    for (const auto& s : seqs) n += s.n_tokens;
    return n;
  }
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, BlockManager& blocks) : config_(config), blocks_(blocks) {}

  void add(Sequence* seq);
  // Holds a sequence aside until its KV arrives; allocates blocks for its prompt now when it can
  // (see remote_blocks_ready). Returns false if the pool cannot hold the prompt right now.
  void add_remote(Sequence* seq);
  // Moves a remote-KV sequence into the running set with `num_computed` tokens in place (or
  // into the waiting queue with none, to recompute, when the transfer failed).
  void remote_done(Sequence* seq, bool kv_in_place);
  // Takes a sequence out wherever it is and releases its blocks.
  void remove(Sequence* seq);

  SchedulerOutput schedule();

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size() + remote_.size()); }
  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  const SchedulerConfig& config() const { return config_; }

 private:
  void preempt(Sequence* seq);

  SchedulerConfig config_;
  BlockManager& blocks_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;
  std::vector<Sequence*> remote_;
};

}  // namespace baton
