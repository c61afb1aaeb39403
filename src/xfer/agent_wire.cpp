// The shared internals of agent_wire.h: packing transfer requests, moving ranges over the
// control connection (GPU ranges staged through a host buffer) and republishing range tables.
#include "xfer/agent_wire.h"

#include <algorithm>
#include <cstring>

#include "xfer/read_section.h"

namespace baton::xfer::detail {
namespace {

// GPU ranges on the TCP path move through a host buffer of this size, one piece at a time.
constexpr size_t kStageBytes = size_t{4} << 20;

Status ensure_stage(RmaTransport* t, StagingBuffer& stage) {
  if (stage) return {};
  if (!t) return make_error("GPU memory without a GPU transport to stage it");
  BATON_ASSIGN_OR_RETURN(stage, t->staging_buffer(kStageBytes));
  return {};
}

}  // namespace

std::string pack_ops(const std::vector<TransferOp>& ops) {
  std::string out(ops.size() * sizeof(WireOp), '\0');
  for (size_t i = 0; i < ops.size(); ++i) {
    WireOp w{ops[i].remote_region, ops[i].remote_offset, ops[i].length};
    std::memcpy(out.data() + i * sizeof(WireOp), &w, sizeof w);
  }
  return out;
}

Result<std::vector<WireOp>> unpack_ops(const std::string& payload) {
  if (payload.size() % sizeof(WireOp) != 0) return make_error("malformed transfer request");
  std::vector<WireOp> ops(payload.size() / sizeof(WireOp));
  if (!ops.empty()) std::memcpy(ops.data(), payload.data(), payload.size());  // (empty: data() may be null)
  return ops;
}

void republish(std::atomic<const RangeTable*>& table, const RangeTable* next) {
  const RangeTable* old = table.exchange(next, std::memory_order_seq_cst);
  wait_for_readers();
  delete old;
}

Status send_ranges(Socket& socket, std::vector<iovec> parts, const std::vector<LocalRange>& ranges, RmaTransport* t,
                   StagingBuffer& stage) {
  for (const LocalRange& r : ranges) {
    if (!r.gpu) {
      parts.push_back({r.ptr, r.length});
      continue;
    }
    BATON_RETURN_IF_ERROR(ensure_stage(t, stage));
    for (uint64_t off = 0; off < r.length; off += kStageBytes) {
      const size_t k = std::min<uint64_t>(kStageBytes, r.length - off);
      BATON_RETURN_IF_ERROR(t->copy_to_host(stage.get(), r.ptr + off, k));
      parts.push_back({stage.get(), k});
      BATON_RETURN_IF_ERROR(socket.send_all(parts));  // the stage is reused next
      parts.clear();
    }
  }
  return parts.empty() ? Status{} : socket.send_all(parts);
}

Status recv_ranges(Socket& socket, const std::vector<LocalRange>& ranges, RmaTransport* t, StagingBuffer& stage,
                   std::string* copy_error, std::atomic<Clock::rep>& progress) {
  std::vector<iovec> parts;
  uint64_t pending = 0;  // bytes in parts
  auto flush = [&]() -> Status {
    if (parts.empty()) return {};
    BATON_RETURN_IF_ERROR(socket.recv_all(parts));
    progress = Clock::now().time_since_epoch().count();
    parts.clear();
    pending = 0;
    return {};
  };
  for (const LocalRange& r : ranges) {
    if (!r.gpu) {
      for (uint64_t off = 0; off < r.length;) {
        const uint64_t k = std::min<uint64_t>(r.length - off, kStageBytes - pending);
        parts.push_back({r.ptr + off, k});
        off += k;
        pending += k;
        if (pending == kStageBytes) BATON_RETURN_IF_ERROR(flush());
      }
      continue;
    }
    BATON_RETURN_IF_ERROR(flush());
    if (Status st = ensure_stage(t, stage); !st.ok()) return st;  // cannot even drain: drop the connection
    for (uint64_t off = 0; off < r.length; off += kStageBytes) {
      const size_t k = std::min<uint64_t>(kStageBytes, r.length - off);
      BATON_RETURN_IF_ERROR(socket.recv_all(stage.get(), k));
      progress = Clock::now().time_since_epoch().count();
      if (!copy_error->empty()) continue;
      if (Status st = t->copy_from_host(r.ptr + off, stage.get(), k); !st.ok()) *copy_error = st.message();
    }
  }
  return flush();
}

Status drain(Socket& socket, uint64_t n) {
  std::vector<std::byte> sink(std::min<uint64_t>(n, 64 << 10));
  for (uint64_t left = n; left > 0;) {
    const size_t k = std::min<uint64_t>(left, sink.size());
    BATON_RETURN_IF_ERROR(socket.recv_all(sink.data(), k));
    left -= k;
  }
  return {};
}

}  // namespace baton::xfer::detail
