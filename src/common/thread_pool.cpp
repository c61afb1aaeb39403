#include "common/thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace baton {
namespace {
inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}
constexpr int kSpinIterations = 20000;
}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::drain() {
  int done_here = 0;
  for (;;) {
    int i = next_task_.fetch_add(1, std::memory_order_relaxed);
    if (i >= n_tasks_) break;
    (*fn_)(i);
    ++done_here;
  }
  if (done_here > 0 && tasks_done_.fetch_add(done_here, std::memory_order_acq_rel) + done_here == n_tasks_) {
    std::lock_guard lock(mutex_);
    done_cv_.notify_all();
  }
}

void ThreadPool::run(int n_tasks, const std::function<void(int)>& fn) {
  if (n_tasks <= 0) return;
  if (workers_.empty() || n_tasks == 1) {
    for (int i = 0; i < n_tasks; ++i) fn(i);
    return;
  }
  {
    // A worker that woke late for the previous job may still be inside drain(), reading its
    // fields; wait for it to leave before they change.
    std::unique_lock lock(mutex_);
    done_cv_.wait(lock, [&] { return active_workers_.load(std::memory_order_acquire) == 0; });
    fn_ = &fn;
    n_tasks_ = n_tasks;
    next_task_.store(0, std::memory_order_relaxed);
    tasks_done_.store(0, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  drain();
  auto finished = [&] { return tasks_done_.load(std::memory_order_acquire) == n_tasks; };
  for (int spin = 0; spin < kSpinIterations; ++spin) {
    if (finished()) return;
    cpu_relax();
  }
  std::unique_lock lock(mutex_);
  done_cv_.wait(lock, finished);
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    bool woke = false;
    for (int spin = 0; spin < kSpinIterations; ++spin) {
      if (generation_.load(std::memory_order_acquire) != seen) {
        woke = true;
        break;
      }
      cpu_relax();
    }
    if (!woke) {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    }
    std::unique_lock lock(mutex_);
    seen = generation_.load(std::memory_order_acquire);
    if (stop_) return;
    active_workers_.fetch_add(1, std::memory_order_acq_rel);
    lock.unlock();
    drain();
    if (active_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard guard(mutex_);
      done_cv_.notify_all();
    }
  }
}

}  // namespace baton
