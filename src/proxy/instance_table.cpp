#include "proxy/instance_table.h"

#include <algorithm>

#include "common/log.h"

namespace baton::proxy {

namespace {

std::optional<char> parse_role(const std::string& s) {
  if (s == "P" || s == "prefill" || s == "kv_producer") return 'P';
  if (s == "D" || s == "decode" || s == "kv_consumer") return 'D';
  return std::nullopt;
}

// What /instances shows of a registration: the fields instances send, each small, never the
// token. The rest of a sender's message is not kept (a registration is a few hundred bytes;
// 64 KiB of nested maps would parse into megabytes a table entry).
Json listed_info(const Json& m) {
  Json info = Json::object();
  for (const char* key : {"type", "role", "http_address", "handshake_address", "engine_id", "tp_size", "dp_size",
                          "model", "kv_layout"}) {
    auto it = m.find(key);
    if (it == m.end()) continue;
    if (it->is_object() ? it->dump(-1, ' ', false, Json::error_handler_t::replace).size() <= 16384
                        : !it->is_array() && (!it->is_string() || it->get_ref<const std::string&>().size() <= 256))
      info[key] = *it;
  }
  return info;
}

}  // namespace

const char* update_name(Update u) {
  switch (u) {
    case Update::kAdmitted:
      return "admitted";
    case Update::kRefreshed:
      return "refreshed";
    case Update::kUnregistered:
      return "unregistered";
    case Update::kUnknown:
      return "unknown";
    case Update::kNotOwner:
      return "not the owner";
    case Update::kTableFull:
      return "table full";
  }
  return "?";
}

Result<Update> InstanceTable::update(const Json& m, const std::string& peer, bool trusted, Clock::time_point now) {
  if (!m.is_object()) return make_error("registration: the message is not a map");
  const std::string what = "registration";
  BATON_ASSIGN_OR_RETURN(std::string addr, json_get<std::string>(m, "http_address", what));
  // A host name and port in printable ASCII: the address is logged and listed, and a sender's
  // bytes must not forge log lines or grow the table's entries.
  if (addr.size() > 262 || !std::all_of(addr.begin(), addr.end(), [](char c) { return c > 0x20 && c < 0x7f; }))
    return make_error(what, ": http_address is not a host:port");
  const size_t colon = addr.rfind(':');
  if (colon == std::string::npos || colon == 0) return make_error(what, ": http_address '", addr, "' is not host:port");
  int port = 0;
  try {
    port = std::stoi(addr.substr(colon + 1));
  } catch (...) {
  }
  if (port <= 0 || port > 65535) return make_error(what, ": http_address '", addr, "' has no valid port");
  // A type that is not a string is no type (value() would throw on it).
  const std::string type = m.contains("type") && m["type"].is_string() ? m["type"].get<std::string>() : "";
  std::optional<char> role = parse_role(type);
  if (!role && m.contains("role") && m["role"].is_string()) role = parse_role(m["role"].get<std::string>());
  if (type != "unregister" && !role) return make_error(what, ": no role (type or role must be P or D)");

  // Joins and leaves are logged, at most 10 a second: without a token anyone may churn them.
  static log::Throttle joins(std::chrono::milliseconds(100));
  std::lock_guard lock(mutex_);
  auto it = instances_.find(addr);
  if (it != instances_.end() && !trusted && it->second.peer != peer) return Update::kNotOwner;
  if (type == "unregister") {
    if (it == instances_.end()) return Update::kUnknown;
    instances_.erase(it);
    joins.info("proxy: ", addr, " unregistered");
    return Update::kUnregistered;
  }
  const bool fresh = it == instances_.end() || it->second.role != *role;
  if (it == instances_.end() && instances_.size() >= max_instances_) return Update::kTableFull;
  if (fresh) {
    Instance in;
    in.id = addr;
    in.role = *role;
    in.host = addr.substr(0, colon);
    in.port = port;
    in.admitted = ++admissions_;
    it = instances_.insert_or_assign(addr, std::move(in)).first;
    joins.info("proxy: ", *role == 'P' ? "prefill " : "decode ", addr, " registered");
  }
  Instance& in = it->second;
  const bool back = !in.reachable;
  // Only a trusted message gets here from another connection: a restarted token holder.
  const bool rebound = !fresh && in.peer != peer;
  if (rebound) joins.info("proxy: ", addr, " registered again from a new connection");
  in.reachable = true;
  in.peer = peer;
  in.info = listed_info(m);
  in.last_seen = now;
  return fresh || back || rebound ? Update::kAdmitted : Update::kRefreshed;
}

std::vector<std::string> InstanceTable::evict(Clock::time_point now, Clock::duration max_age) {
  std::vector<std::string> out;
  std::lock_guard lock(mutex_);
  for (auto it = instances_.begin(); it != instances_.end();) {
    if (now - it->second.last_seen > max_age) {
      log::warn("proxy: ", it->first, " missed its heartbeats; evicted");
      out.push_back(it->first);
      it = instances_.erase(it);
    } else {
      ++it;
    }
  }
  return out;
}

std::optional<Instance> InstanceTable::acquire(char role, const std::set<std::string>& exclude, int64_t cost) {
  std::lock_guard lock(mutex_);
  Instance* best = nullptr;
  for (auto& [id, in] : instances_) {
    if (in.role != role || !in.reachable || exclude.count(id)) continue;
    // Ties go to the instance admitted first: one that just registered (perhaps a rogue one on
    // a network without a token) takes no traffic from idle instances that have been serving.
    if (!best || in.outstanding_tokens < best->outstanding_tokens ||
        (in.outstanding_tokens == best->outstanding_tokens && in.admitted < best->admitted))
      best = &in;
  }
  if (!best) return std::nullopt;
  best->outstanding_tokens += cost;
  ++best->in_flight;
  ++best->routed;
  Instance out;  // what the caller routes by (not the registration message: this runs per request)
  out.id = best->id;
  out.role = best->role;
  out.host = best->host;
  out.port = best->port;
  out.admitted = best->admitted;
  out.outstanding_tokens = best->outstanding_tokens;
  out.in_flight = best->in_flight;
  out.routed = best->routed;
  return out;
}

void InstanceTable::release(const std::string& id, int64_t cost, bool failed) {
  std::lock_guard lock(mutex_);
  auto it = instances_.find(id);
  if (it == instances_.end()) return;
  // An instance evicted and re-admitted meanwhile starts from zero: never go below it.
  it->second.outstanding_tokens = std::max<int64_t>(0, it->second.outstanding_tokens - cost);
  it->second.in_flight = std::max<int64_t>(0, it->second.in_flight - 1);
  if (failed) ++it->second.failures;
}

void InstanceTable::drop(const std::string& id) {
  std::lock_guard lock(mutex_);
  auto it = instances_.find(id);
  if (it == instances_.end() || !it->second.reachable) return;
  it->second.reachable = false;
  log::warn("proxy: ", id, " is unreachable; not routed to until it heartbeats again");
}

std::vector<Instance> InstanceTable::snapshot() const {
  std::lock_guard lock(mutex_);
  std::vector<Instance> out;
  for (const auto& [id, in] : instances_) out.push_back(in);
  return out;
}

int InstanceTable::count(char role) const {
  std::lock_guard lock(mutex_);
  int n = 0;
  for (const auto& [id, in] : instances_) n += in.role == role && in.reachable;
  return n;
}

}  // namespace baton::proxy
