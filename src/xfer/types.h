// The transfer engine's vocabulary: registered regions, agents, transfer batches.
// Nothing here knows about models or KV caches: it moves byte ranges.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/result.h"

namespace baton::xfer {

enum class MemoryKind { kHost, kCuda };

// A registered region as a peer sees it. Serialisable: it travels in handshakes and in
// application messages (e.g. a prefill's kv_transfer_params).
struct MemoryDesc {
  std::string agent;      // owner
  uint64_t region = 0;    // owner's id for the region (ids are never reused)
  uint64_t address = 0;   // owner's virtual address (used by RMA transports)
  uint64_t length = 0;
  MemoryKind kind = MemoryKind::kHost;
  int device = 0;          // CUDA device for kCuda
  Json keys = Json::object();  // transport keys, e.g. {"ucx": "<hex rkey>"}

  Json to_json() const;
  static Result<MemoryDesc> from_json(const Json& j);
};

// How to reach an agent: its control endpoint and what it can speak.
struct AgentDesc {
  std::string name;
  std::string host;
  int port = 0;
  std::vector<std::string> transports;  // e.g. {"ucx", "tcp"}

  Json to_json() const;
  static Result<AgentDesc> from_json(const Json& j);
};

// One range of a batch: bytes [remote_offset, +length) of a peer's region <-> bytes
// [local_offset, +length) of one of ours.
struct TransferOp {
  uint64_t local_region = 0;
  uint64_t local_offset = 0;
  uint64_t remote_region = 0;
  uint64_t remote_offset = 0;
  uint64_t length = 0;
};

// Bytes [offset, +length) of one of an agent's regions, granted to holders of a capability.
struct GrantRange {
  uint64_t region = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
};

// A new unguessable capability (128 random bits from the OS, hex).
std::string new_capability();

using TransferId = uint64_t;

enum class TransferState { kPending, kDone, kFailed };

// Merges ops whose local and remote ranges are both adjacent (contiguous KV blocks become one
// range, whichever order the blocks were listed in); the result is in the order of the peer's
// memory. The ranges of a batch must not overlap: the order they move in is not kept (UCX
// completes gets in any order).
std::vector<TransferOp> coalesce(const std::vector<TransferOp>& ops);
void coalesce(const std::vector<TransferOp>& ops, std::vector<TransferOp>& out);  // into out (cleared first)

std::string to_hex(const void* data, size_t n);
Result<std::string> from_hex(const std::string& hex);

}  // namespace baton::xfer
