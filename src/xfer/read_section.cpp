#include "xfer/read_section.h"

#include <cassert>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace baton::xfer {
namespace {

// Every slot ever claimed (never freed, so a scan never meets freed memory) and those whose
// threads have exited, for reuse.
struct Registry {
  std::mutex m;
  std::deque<detail::ReaderSlot> slots;
  std::vector<detail::ReaderSlot*> free;
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: threads may exit after static destruction
  return *r;
}

// Gives the thread's slot back when the thread exits.
struct SlotReturn {
  bool armed = false;
  ~SlotReturn() {
    if (!armed || !detail::tl_reader_slot) return;
    Registry& r = registry();
    std::lock_guard lock(r.m);
    r.free.push_back(detail::tl_reader_slot);
    detail::tl_reader_slot = nullptr;
  }
};
thread_local SlotReturn tl_return;

}  // namespace

detail::ReaderSlot* detail::claim_reader_slot() {
  Registry& r = registry();
  std::lock_guard lock(r.m);
  ReaderSlot* s = nullptr;
  if (!r.free.empty()) {
    s = r.free.back();
    r.free.pop_back();
  } else {
    s = &r.slots.emplace_back();
  }
  tl_return.armed = true;
  tl_reader_slot = s;
  return s;
}

void wait_for_readers() {
  assert(!detail::tl_reader_slot || !(detail::tl_reader_slot->seq.load() & 1));  // not from inside a section
  // Orders the caller's unpublishing store before the scan below.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  Registry& r = registry();
  std::lock_guard lock(r.m);  // readers never take it once they hold a slot
  for (detail::ReaderSlot& s : r.slots) {
    const uint64_t v = s.seq.load(std::memory_order_seq_cst);
    if (!(v & 1)) continue;
    // Inside a section that may have seen the old state: wait until it leaves (a later section
    // of the same thread starts after the unpublishing and cannot see it).
    for (int spins = 0; s.seq.load(std::memory_order_acquire) == v; ++spins)
      if (spins > 64) std::this_thread::yield();
  }
}

}  // namespace baton::xfer
