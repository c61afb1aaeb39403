// The proxy's view of the fleet: prefill ("P") and decode ("D") instances that registered over
// ZMQ, when each was last heard from, and the work each has in flight. Routing picks the
// instance with the least outstanding tokens, ties going to the one admitted first; an instance
// silent for longer than the eviction age is dropped and comes back with its next heartbeat.
//
// Who may speak for an address: the connection (ZMQ routing id) that registered it. Its
// heartbeats refresh the entry and its `unregister` removes it; the same messages for that
// address from any other connection are refused until the entry is evicted (silent for the
// eviction age: a restarted instance, which connects anew, is admitted then). A message that
// carried the proxy's deployment token is trusted from any connection and moves the binding to
// it (a restarted instance that holds the token is admitted at once). Refusals keep no state:
// a flood of them costs nothing here.
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
  Json info;              // the registration's known fields (model, tp_size, kv_layout, ...), never its token
  std::string peer;       // routing id of the connection that speaks for it (never shown: see above)
  uint64_t admitted = 0;  // admission order: routing ties go to the instance serving longest
  Clock::time_point last_seen;
  bool reachable = true;  // false once a connection to it failed, until it heartbeats again
  int64_t outstanding_tokens = 0;
  int64_t in_flight = 0;
  uint64_t routed = 0;
  uint64_t failures = 0;
};

// What a registration message did to the table.
enum class Update {
  kAdmitted,      // routable now and was not before (new, back, a new role), or a new connection took it over
  kRefreshed,     // a heartbeat of a routable instance
  kUnregistered,  // removed at its owner's request
  kUnknown,       // an unregister for an address not in the table: nothing to do
  kNotOwner,      // refused: another connection speaks for this address
  kTableFull,     // refused: max_instances are registered
};
const char* update_name(Update u);

class InstanceTable {
 public:
  explicit InstanceTable(size_t max_instances = 1024) : max_instances_(max_instances) {}

  // A registration, heartbeat or unregistration from the connection `peer`; `trusted`: the
  // message carried the deployment token. Accepts ours ({"type": "register", "role": "P"|"D",
  // "http_address": "ip:port", ...}) and vLLM/ATOM-style ({"type": "P"|"D", "http_address"});
  // {"type": "unregister"} removes the instance at once (clean shutdown). An error: the message
  // is malformed.
  Result<Update> update(const Json& message, const std::string& peer, bool trusted, Clock::time_point now);
  // Drops instances not heard from since now - max_age; returns their ids.
  std::vector<std::string> evict(Clock::time_point now, Clock::duration max_age);

  // Least outstanding tokens among reachable instances of `role` not in `exclude` (ties: the
  // earliest admitted); charges `cost` to it.
  std::optional<Instance> acquire(char role, const std::set<std::string>& exclude, int64_t cost);
  // Returns the cost charged by acquire(); `failed` counts a failure against the instance.
  void release(const std::string& id, int64_t cost, bool failed);
  // Takes an instance that could not be reached out of routing. It stays bound to its
  // connection: its next heartbeat brings it back, and no other connection can claim the
  // address meanwhile.
  void drop(const std::string& id);

  std::vector<Instance> snapshot() const;
  // Reachable instances of `role`.
  int count(char role) const;

 private:
  const size_t max_instances_;
  mutable std::mutex mutex_;
  std::map<std::string, Instance> instances_;
  uint64_t admissions_ = 0;
};

}  // namespace baton::proxy
