// The scheduler alone (no backend, no engine loop): what each step runs, in which order, within
// which budget, and what happens to blocks when the pool runs out. The engine's part, the model
// step, is played by advance(): computed tokens move forward and a sequence whose step reached its
// last token gets one more (a decode token).
#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <vector>

namespace baton {
namespace {

std::unique_ptr<Sequence> sequence_of(uint64_t id, int prompt_len, int first_token = 0) {
  auto s = std::make_unique<Sequence>();
  s->id = id;
  s->tokens.resize(prompt_len);
  std::iota(s->tokens.begin(), s->tokens.end(), first_token);
  s->prompt_len = prompt_len;
  return s;
}

// What the engine does after a model step: the scheduled tokens are in the cache, full blocks are
// published, and a sequence that asked for logits gets its next token.
void advance(const SchedulerOutput& out, BlockManager& blocks) {
  for (const ScheduledSeq& s : out.seqs) {
    s.seq->num_computed += s.n_tokens;
    blocks.publish_full_blocks(s.seq->tokens, s.seq->num_computed, s.seq->block_table, s.seq->block_hashes);
    if (s.need_logits) s.seq->tokens.push_back(1000 + s.seq->num_output());
  }
}

std::vector<uint64_t> ids_of(const SchedulerOutput& out) {
  std::vector<uint64_t> ids;
  for (const ScheduledSeq& s : out.seqs) ids.push_back(s.seq->id);
  return ids;
}

TEST(SchedulerTest, LongPromptIsChunkedToTheBudgetAndSamplesOnlyAtItsEnd) {
  BlockManager blocks(64, 16);
  Scheduler sched({8, 32}, blocks);
  auto a = sequence_of(1, 100);
  sched.add(a.get());
  std::vector<int> chunks;
  std::vector<bool> logits;
  for (int step = 0; step < 4; ++step) {
    SchedulerOutput out = sched.schedule();
    ASSERT_EQ(out.seqs.size(), 1u);
    chunks.push_back(out.seqs[0].n_tokens);
    logits.push_back(out.seqs[0].need_logits);
    advance(out, blocks);
  }
  EXPECT_EQ(chunks, (std::vector<int>{32, 32, 32, 4}));
  EXPECT_EQ(logits, (std::vector<bool>{false, false, false, true}));
  // Then one decode token a step, sampled every time.
  SchedulerOutput out = sched.schedule();
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(out.seqs[0].n_tokens, 1);
  EXPECT_TRUE(out.seqs[0].need_logits);
  EXPECT_EQ(a->block_table.size(), 7u);  // 101 tokens in blocks of 16
}

TEST(SchedulerTest, RunningDecodesGoFirstAndWaitingPromptsTakeTheRestOfTheBudget) {
  BlockManager blocks(64, 16);
  Scheduler sched({8, 20}, blocks);
  auto a = sequence_of(1, 5), b = sequence_of(2, 5, 100), c = sequence_of(3, 40, 200);
  sched.add(a.get());
  sched.add(b.get());
  advance(sched.schedule(), blocks);  // both prompts in one step
  ASSERT_EQ(a->num_output(), 1);
  ASSERT_EQ(b->num_output(), 1);
  sched.add(c.get());
  SchedulerOutput out = sched.schedule();
  EXPECT_EQ(ids_of(out), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(out.seqs[0].n_tokens, 1);
  EXPECT_EQ(out.seqs[1].n_tokens, 1);
  EXPECT_EQ(out.seqs[2].n_tokens, 18);  // the 20-token budget less the two decodes
  EXPECT_FALSE(out.seqs[2].need_logits);
  EXPECT_EQ(out.total_tokens(), 20);
}

TEST(SchedulerTest, AdmissionStopsAtMaxNumSeqs) {
  BlockManager blocks(64, 16);
  Scheduler sched({2, 1000}, blocks);
  std::vector<std::unique_ptr<Sequence>> seqs;
  for (uint64_t i = 1; i <= 4; ++i) {
    seqs.push_back(sequence_of(i, 10, int(i) * 50));
    sched.add(seqs.back().get());
  }
  SchedulerOutput out = sched.schedule();
  EXPECT_EQ(ids_of(out), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(sched.num_running(), 2);
  EXPECT_EQ(sched.num_waiting(), 2);
  advance(out, blocks);
  sched.remove(seqs[0].get());  // a finished request makes room for the next in line
  out = sched.schedule();
  EXPECT_EQ(ids_of(out), (std::vector<uint64_t>{2, 3}));
}

TEST(SchedulerTest, OutOfBlocksPreemptsTheNewestAndRequeuesItFirst) {
  // 4 blocks of 4 tokens: two prompts of 8 tokens take 2 blocks each, and the oldest's next
  // block can only come from the newest.
  BlockManager blocks(4, 4, /*enable_prefix_caching=*/false);
  Scheduler sched({8, 100}, blocks);
  auto a = sequence_of(1, 8), b = sequence_of(2, 8, 100), c = sequence_of(3, 3, 200);
  sched.add(a.get());
  sched.add(b.get());
  advance(sched.schedule(), blocks);  // both prompts computed, each with a sampled ninth token
  ASSERT_EQ(blocks.num_free(), 0);
  sched.add(c.get());
  SchedulerOutput out = sched.schedule();
  EXPECT_EQ(out.num_preempted, 1);
  EXPECT_EQ(ids_of(out), (std::vector<uint64_t>{1}));  // no admission in a step that preempted
  EXPECT_EQ(b->state, SeqState::kWaiting);
  EXPECT_EQ(b->num_computed, 0);
  EXPECT_TRUE(b->block_table.empty());
  EXPECT_EQ(b->num_preemptions, 1);
  EXPECT_EQ(b->tokens.size(), 9u);  // its tokens stay: it is recomputed, not restarted
  EXPECT_EQ(blocks.num_free(), 1);  // b's two blocks back, one taken by a's ninth token
  advance(out, blocks);
  sched.remove(a.get());  // a finishes: the preempted one goes before the later arrival
  out = sched.schedule();
  ASSERT_FALSE(out.seqs.empty());
  EXPECT_EQ(out.seqs[0].seq, b.get());
  EXPECT_EQ(out.seqs[0].n_tokens, 9);
  EXPECT_EQ(ids_of(out), (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(blocks.num_free() + blocks.num_used(), blocks.num_total());
}

TEST(SchedulerTest, AWaitingSequenceThatDoesNotFitHoldsNoBlocks) {
  BlockManager blocks(4, 4);
  Scheduler sched({8, 100}, blocks);
  auto a = sequence_of(1, 12), b = sequence_of(2, 12, 100);
  sched.add(a.get());
  advance(sched.schedule(), blocks);  // a: 3 blocks; its 13th token takes the last
  sched.add(b.get());
  SchedulerOutput out = sched.schedule();
  EXPECT_EQ(ids_of(out), (std::vector<uint64_t>{1}));
  EXPECT_TRUE(b->block_table.empty());
  EXPECT_EQ(b->num_computed, 0);
  EXPECT_EQ(sched.num_waiting(), 1);
}

TEST(SchedulerTest, ASharedPrefixIsTakenFromTheCacheAndCountedOnce) {
  BlockManager blocks(32, 16);
  Scheduler sched({8, 256}, blocks);
  auto a = sequence_of(1, 40);
  sched.add(a.get());
  advance(sched.schedule(), blocks);  // publishes a's two full blocks (32 tokens)
  auto b = sequence_of(2, 50);        // the same first 40 tokens, then 10 more
  sched.add(b.get());
  SchedulerOutput out = sched.schedule();
  ASSERT_EQ(out.seqs.size(), 2u);
  EXPECT_EQ(out.seqs[1].seq, b.get());
  EXPECT_EQ(b->num_computed, 32);
  EXPECT_EQ(b->num_cached_tokens, 32);
  EXPECT_EQ(out.seqs[1].n_tokens, 18);
  EXPECT_EQ(b->block_table[0], a->block_table[0]);
  EXPECT_EQ(b->block_table[1], a->block_table[1]);
  EXPECT_EQ(blocks.ref_count(a->block_table[0]), 2);
  EXPECT_EQ(blocks.counters().prefix_hits, 2u);
}

TEST(SchedulerTest, RemoteKvJoinsRunningOrIsRecomputedFirst) {
  BlockManager blocks(16, 16);
  Scheduler sched({8, 256}, blocks);
  auto a = sequence_of(1, 20), b = sequence_of(2, 20, 100), c = sequence_of(3, 5, 300);
  for (Sequence* s : {a.get(), b.get()}) {
    ASSERT_TRUE(blocks.ensure_capacity(s->block_table, 20));
    sched.add_remote(s);
  }
  EXPECT_EQ(sched.num_waiting(), 2);
  EXPECT_FALSE(sched.has_work());  // nothing to compute until their KV arrives
  EXPECT_TRUE(sched.schedule().seqs.empty());
  // a's prompt KV arrived (and the first token the prefill sampled): it decodes at once.
  a->num_computed = 20;
  a->tokens.push_back(7);
  sched.remote_done(a.get(), true);
  EXPECT_EQ(a->state, SeqState::kRunning);
  // b's read failed: its blocks go back and it is recomputed before a later arrival.
  sched.add(c.get());
  const int free_before = blocks.num_free();
  sched.remote_done(b.get(), false);
  EXPECT_TRUE(b->block_table.empty());
  EXPECT_EQ(b->state, SeqState::kWaiting);
  EXPECT_EQ(blocks.num_free(), free_before + 2);
  SchedulerOutput out = sched.schedule();
  EXPECT_EQ(ids_of(out), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(out.seqs[0].n_tokens, 1);
  EXPECT_EQ(out.seqs[1].n_tokens, 20);
  EXPECT_TRUE(out.seqs[1].need_logits);
}

}  // namespace
}  // namespace baton
