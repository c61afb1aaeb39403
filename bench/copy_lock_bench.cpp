// What a lock around a same-host read costs: a 16 KiB memcpy (the transfer engine's single-range
// read over shared memory) timed alone and inside the locks a read takes today (the session's
// std::mutex, the agent's std::shared_mutex read-locked) and inside a spinlock released by a plain
// store. A locked instruction right after the copy waits for the copy's stores to drain, which is
// why the lock's price after a copy is above its price alone (bench/RESULTS.md, issue #5).
//   build/bench/copy-lock-bench [bytes] [iterations]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>

int main(int argc, char** argv) {
  const size_t bytes = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 16384;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 500000;
  if (bytes == 0 || iters <= 0) {
    std::fprintf(stderr, "usage: copy-lock-bench [bytes > 0] [iterations > 0]\n");
    return 2;
  }
  char* from = static_cast<char*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096));
  char* to = static_cast<char*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096));
  std::memset(from, 1, bytes);
  std::memset(to, 2, bytes);
  std::mutex mutex;
  std::shared_mutex rw;
  std::atomic<bool> spin{false};
  std::atomic<int> counter{0};
  const char* names[] = {"memcpy alone", "+ one atomic add after", "+ std::mutex", "+ std::shared_mutex (shared)",
                         "+ both (as a read today)", "+ spinlock, store-release unlock"};
  // The VM's speed drifts: the modes take turns, round after round, and each keeps its best round.
  constexpr int kModes = 6, kRounds = 9;
  double best[kModes];
  std::fill(best, best + kModes, 1e30);
  for (int round = 0; round < kRounds; ++round) {
    for (int mode = 0; mode < kModes; ++mode) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) {
        if (mode == 2 || mode == 4) mutex.lock();
        if (mode == 3 || mode == 4) rw.lock_shared();
        if (mode == 5)
          while (spin.exchange(true, std::memory_order_acquire)) {
          }
        std::memcpy(to, from, bytes);
        asm volatile("" ::: "memory");  // keep the copy
        if (mode == 1) counter.fetch_add(1, std::memory_order_relaxed);
        if (mode == 5) spin.store(false, std::memory_order_release);
        if (mode == 3 || mode == 4) rw.unlock_shared();
        if (mode == 2 || mode == 4) mutex.unlock();
      }
      best[mode] = std::min(best[mode], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  std::printf("| around a %zu-byte memcpy | ns per copy (best of %d rounds) | GB/s |\n|---|---|---|\n", bytes, kRounds);
  for (int mode = 0; mode < kModes; ++mode)
    std::printf("| %s | %.1f | %.1f |\n", names[mode], best[mode] / iters * 1e9, double(bytes) * iters / best[mode] / 1e9);
  std::free(from);
  std::free(to);
  return 0;
}
