// Internals that agent.cpp, agent_serve.cpp and session.cpp share: the wire form of a transfer
// request's ops, the protocol version of the hello, moving ranges over the control connection
// (TCP path) and republishing the range tables of copies in place. Not part of the public API.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "xfer/session.h"
#include "xfer/socket.h"
#include "xfer/transport.h"
#include "xfer/types.h"

namespace baton::xfer::detail {

struct WireOp {
  uint64_t region, offset, length;
};

std::string pack_ops(const std::vector<TransferOp>& ops);
Result<std::vector<WireOp>> unpack_ops(const std::string& payload);

// 2: hellos carry a capability; kAuthorize; the welcome says whether the agent takes writes.
inline constexpr int kProtocolVersion = 2;

// Publishes `next` for copies in place and frees the table it replaces once none can use it.
void republish(std::atomic<const RangeTable*>& table, const RangeTable* next);

// Sends `parts` (headers) followed by the ranges' bytes; GPU ranges are copied to the host
// through `stage` by `t` first. A failed copy leaves the stream short: the caller must drop the
// connection.
Status send_ranges(Socket& socket, std::vector<iovec> parts, const std::vector<LocalRange>& ranges, RmaTransport* t,
                   StagingBuffer& stage);

// Receives the ranges' bytes; GPU ranges arrive in `stage` and are copied on by `t`. A socket
// error is returned; a failed copy is left in *copy_error while the rest of the bytes are still
// taken off the socket (the stream stays in step). `progress` is stamped after every piece of
// at most kStageBytes, so that a long answer that keeps arriving is not taken for a stall.
Status recv_ranges(Socket& socket, const std::vector<LocalRange>& ranges, RmaTransport* t, StagingBuffer& stage,
                   std::string* copy_error, std::atomic<Clock::rep>& progress);

// Reads and drops n bytes (an answer whose destination is gone).
Status drain(Socket& socket, uint64_t n);

}  // namespace baton::xfer::detail
