// The proxy's view of the fleet: prefill ("P") and decode ("D") instances that registered over
// ZMQ, when each was last heard from, and the work each has in flight. Routing picks the
// instance with the least outstanding tokens; an instance silent for longer than the eviction
// age is dropped and comes back with its next heartbeat.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/result.h"

namespace baton::proxy {

using Clock = std::chrono::steady_clock;

struct Instance {
  std::string id;  // "host:port" of its HTTP API
  char role = 'P';
  std::string host;
  int port = 0;
  Json info;  // the registration message (model, tp_size, kv_layout, ...)
  Clock::time_point last_seen;
  int64_t outstanding_tokens = 0;
  int64_t in_flight = 0;
  uint64_t routed = 0;
  uint64_t failures = 0;
};

class InstanceTable {
 public:
  // A registration or heartbeat. Accepts ours ({"type": "register", "role": "P"|"D",
  // "http_address": "ip:port", ...}) and vLLM/ATOM-style ({"type": "P"|"D", "http_address"}).
  // {"type": "unregister"} removes the instance at once (clean shutdown).
  // Returns true when the instance is new (or came back).
  Result<bool> update(const Json& message, Clock::time_point now);
  // Drops instances not heard from since now - max_age; returns their ids.
  std::vector<std::string> evict(Clock::time_point now, Clock::duration max_age);

  // Least outstanding tokens among instances of `role` not in `exclude`; charges `cost` to it.
  std::optional<Instance> acquire(char role, const std::set<std::string>& exclude, int64_t cost);
  // Returns the cost charged by acquire(); `failed` counts a failure against the instance.
  void release(const std::string& id, int64_t cost, bool failed);
  // Drops an instance that could not be reached; its next heartbeat brings it back.
  void drop(const std::string& id);

  std::vector<Instance> snapshot() const;
  int count(char role) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, Instance> instances_;
};

}  // namespace baton::proxy
