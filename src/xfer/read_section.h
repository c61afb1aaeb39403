// Lock-free read sides for the transfer engine's in-place copies (DESIGN.md section 2).
//
// A read from a peer's region mapped into this process (shared memory on one host) is a plain
// memcpy. It must not race with the local region's deregistration or the mapping's removal,
// yet a lock around the copy costs a locked instruction after it, which waits for the copy's
// stores to drain (bench/RESULTS.md, issue #5). Instead each thread announces its copies in a
// slot of its own: entering a ReadSection is one fenced store before the copy, leaving it a
// plain release store after it. Whoever takes something away that a copy may be using (a
// region table, a mapping, memory) first unpublishes it, then calls wait_for_readers(), which
// returns once every section that could have seen it has ended; then it frees it.
//
//   reader:  ReadSection s; t = table.load(seq_cst); check; memcpy; (s ends)
//   writer:  old = table.exchange(next, seq_cst); wait_for_readers(); delete old;
//
// Sections nest (an inner one does nothing). A thread inside a section must not call
// wait_for_readers() (it would wait for itself), nor block on a lock a writer holds.
#pragma once

#include <atomic>
#include <cstdint>

namespace baton::xfer {

namespace detail {
struct alignas(64) ReaderSlot {
  std::atomic<uint64_t> seq{0};  // odd while its thread is inside a section
};
ReaderSlot* claim_reader_slot();  // this thread's slot, registered on first use
inline thread_local ReaderSlot* tl_reader_slot = nullptr;
}  // namespace detail

class ReadSection {
 public:
  ReadSection() {
    slot_ = detail::tl_reader_slot ? detail::tl_reader_slot : detail::claim_reader_slot();
    seq_ = slot_->seq.load(std::memory_order_relaxed);
    if (seq_ & 1) {  // nested: the outer section covers this one
      slot_ = nullptr;
      return;
    }
    // seq_cst: this store is ordered before the loads of whatever the section then reads.
    slot_->seq.store(++seq_, std::memory_order_seq_cst);
  }
  ~ReadSection() {
    if (slot_) slot_->seq.store(seq_ + 1, std::memory_order_release);
  }
  ReadSection(const ReadSection&) = delete;
  ReadSection& operator=(const ReadSection&) = delete;

 private:
  detail::ReaderSlot* slot_;
  uint64_t seq_;
};

// Returns once every ReadSection of any thread that was open when it was called has ended.
void wait_for_readers();

}  // namespace baton::xfer
