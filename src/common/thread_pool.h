// A fixed pool of worker threads for data-parallel loops in kernels (STYLE.md 7: the one pool).
//
// `run(n, fn)` calls fn(i) for every i in [0, n) on the workers and the calling thread and
// returns when all calls have finished. One `run` at a time per pool: the engine loop owns its
// pool. Workers spin briefly between jobs, since a decode step issues many small jobs, and then
// sleep on a condition variable.
#pragma once

#include <cstdint>
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace baton {

class ThreadPool {
 public:
  // n_threads counts the calling thread; 0 means one per hardware thread.
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int n_tasks, const std::function<void(int)>& fn);

  // Splits [0, n) into at most size() contiguous ranges of at least min_chunk items and calls
  // fn(begin, end) for each.
  template <class F>
  void parallel_for(size_t n, size_t min_chunk, F&& fn) {
    if (n == 0) return;
    size_t chunks = std::min<size_t>(size(), std::max<size_t>(1, n / std::max<size_t>(1, min_chunk)));
    if (chunks <= 1) {
      fn(size_t{0}, n);
      return;
    }
    size_t per = (n + chunks - 1) / chunks;
    run(static_cast<int>(chunks), [&](int c) {
      size_t begin = static_cast<size_t>(c) * per;
      size_t end = std::min(n, begin + per);
      if (begin < end) fn(begin, end);
    });
  }

 private:
  void worker_loop();
  void drain();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> next_task_{0};
  std::atomic<int> tasks_done_{0};
  std::atomic<int> active_workers_{0};  // workers inside drain(); run() waits for 0
  int n_tasks_ = 0;
  const std::function<void(int)>* fn_ = nullptr;
  bool stop_ = false;
};

}  // namespace baton
