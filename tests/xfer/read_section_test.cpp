// The lock-free read sides that copies in place rely on: wait_for_readers() must not return
// while a section that could see the old state is open, and memory freed after it must never be
// touched by a reader.
#include "xfer/read_section.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace baton::xfer {
namespace {

using namespace std::chrono_literals;

// Opens a section on its own thread and holds it until release().
class HeldSection {
 public:
  explicit HeldSection(int depth = 1) {
    thread_ = std::thread([this, depth] {
      std::vector<std::unique_ptr<ReadSection>> sections;
      for (int i = 0; i < depth; ++i) sections.push_back(std::make_unique<ReadSection>());
      if (depth > 1) sections.pop_back();  // an inner section ends: the outer ones still hold
      inside_ = true;
      while (!release_) std::this_thread::sleep_for(1ms);
    });
    while (!inside_) std::this_thread::sleep_for(1ms);
  }
  void release() {
    release_ = true;
    thread_.join();
  }

 private:
  std::atomic<bool> inside_{false}, release_{false};
  std::thread thread_;
};

// wait_for_readers() on another thread; done() says whether it has returned.
class Waiter {
 public:
  Waiter()
      : thread_([this] {
          wait_for_readers();
          done_ = true;
        }) {}
  ~Waiter() { thread_.join(); }
  bool done() const { return done_; }

 private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

TEST(ReadSectionTest, WaitForReadersWaitsForAnOpenSection) {
  HeldSection reader(2);  // two nested sections, the inner one already closed
  {
    Waiter w;
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(w.done()) << "wait_for_readers returned while a section was open";
    reader.release();
    for (int i = 0; i < 2000 && !w.done(); ++i) std::this_thread::sleep_for(1ms);
    EXPECT_TRUE(w.done());
  }
  // Nothing open: it returns at once (a reader's later sections do not hold it).
  Waiter again;
  for (int i = 0; i < 2000 && !again.done(); ++i) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(again.done());
}

// Readers keep dereferencing a published object while a writer replaces it, marks the old one
// dead after wait_for_readers() and frees it: no reader may ever see a dead (or freed) object.
TEST(ReadSectionTest, ReplacedObjectsAreNeverSeenAfterTheWait) {
  constexpr uint64_t kLive = 0x1111222233334444ull, kDead = 0xdeadull;
  struct Node {
    std::atomic<uint64_t> state{kLive};
  };
  std::atomic<Node*> published{new Node};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0}, bad{0};
  std::vector<std::thread> readers;
  // Two readers and this writer: more threads than CI's two cores would make each wait last a
  // scheduler time slice (a reader preempted inside its section).
  for (int t = 0; t < 2; ++t)
    readers.emplace_back([&] {
      for (uint64_t k = 0; !stop; ++k) {
        {
          ReadSection s;
          Node* n = published.load(std::memory_order_seq_cst);
          // A section as long as a copy (~1 us): a writer that did not wait for it would mark
          // the object dead while it is being read.
          for (int i = 0; i < 512; ++i)
            if (n->state.load(std::memory_order_relaxed) != kLive) ++bad;
          ++reads;
        }
        if (k % 256 == 0) std::this_thread::yield();
      }
    });
  while (reads < 1000) std::this_thread::yield();  // both readers are running
  // Replacements go on until the readers have completed enough sections while they ran. How
  // many replacements that takes depends on the scheduler (with other processes on the cores
  // the readers may get no time slice for many milliseconds), so the loop is bounded by a
  // deadline, not a count; a writer that finds the readers stalled yields its core to them.
  constexpr uint64_t kSectionsDuring = 2000;
  const uint64_t before = reads;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  uint64_t replaced = 0, seen = before;
  while ((replaced < 2000 || reads - before < kSectionsDuring) && std::chrono::steady_clock::now() < deadline) {
    Node* old = published.exchange(new Node, std::memory_order_seq_cst);
    wait_for_readers();
    old->state = kDead;
    delete old;
    if (++replaced % 64 == 0) {
      if (reads == seen) std::this_thread::yield();
      seen = reads;
    }
  }
  const uint64_t during = reads - before;
  stop = true;
  for (auto& t : readers) t.join();
  delete published.load();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GE(replaced, 2000u);
  EXPECT_GE(during, kSectionsDuring)
      << "the readers completed too few sections in 60 s of replacements: nothing was checked";
}

// Threads come and go: each takes a slot on its first section; their slots are reused and a
// waiter is not held by threads that have exited.
TEST(ReadSectionTest, ExitedThreadsDoNotHoldWaiters) {
  for (int i = 0; i < 200; ++i) std::thread([] { ReadSection s; }).join();
  Waiter w;
  for (int i = 0; i < 2000 && !w.done(); ++i) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(w.done());
}

}  // namespace
}  // namespace baton::xfer
