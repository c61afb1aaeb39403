#include "xfer/types.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace baton::xfer {

Json MemoryDesc::to_json() const {
  return {{"agent", agent}, {"region", region}, {"address", address}, {"length", length},
          {"kind", kind == MemoryKind::kCuda ? "cuda" : "host"}, {"device", device}, {"keys", keys}};
}

Result<MemoryDesc> MemoryDesc::from_json(const Json& j) {
  MemoryDesc d;
  const std::string what = "memory descriptor";
  if (!j.is_object()) return make_error(what, ": expected an object");
  BATON_ASSIGN_OR_RETURN(d.agent, json_get<std::string>(j, "agent", what));
  BATON_ASSIGN_OR_RETURN(d.region, json_get<uint64_t>(j, "region", what));
  BATON_ASSIGN_OR_RETURN(d.address, json_get<uint64_t>(j, "address", what));
  BATON_ASSIGN_OR_RETURN(d.length, json_get<uint64_t>(j, "length", what));
  BATON_ASSIGN_OR_RETURN(std::string kind, json_get_or<std::string>(j, "kind", "host", what));
  if (kind != "host" && kind != "cuda") return make_error(what, ": unknown kind '", kind, "'");
  d.kind = kind == "cuda" ? MemoryKind::kCuda : MemoryKind::kHost;
  BATON_ASSIGN_OR_RETURN(d.device, json_get_or<int>(j, "device", 0, what));
  if (auto it = j.find("keys"); it != j.end() && it->is_object()) d.keys = *it;
  return d;
}

Json AgentDesc::to_json() const { return {{"name", name}, {"host", host}, {"port", port}, {"transports", transports}}; }

Result<AgentDesc> AgentDesc::from_json(const Json& j) {
  AgentDesc d;
  const std::string what = "agent descriptor";
  if (!j.is_object()) return make_error(what, ": expected an object");
  BATON_ASSIGN_OR_RETURN(d.name, json_get<std::string>(j, "name", what));
  BATON_ASSIGN_OR_RETURN(d.host, json_get<std::string>(j, "host", what));
  BATON_ASSIGN_OR_RETURN(d.port, json_get<int>(j, "port", what));
  BATON_ASSIGN_OR_RETURN(d.transports, json_get_or<std::vector<std::string>>(j, "transports", {}, what));
  if (d.port <= 0 || d.port > 65535) return make_error(what, ": bad port ", d.port);
  return d;
}

std::vector<TransferOp> coalesce(const std::vector<TransferOp>& ops) {
  std::vector<TransferOp> out;
  coalesce(ops, out);
  return out;
}

void coalesce(const std::vector<TransferOp>& ops, std::vector<TransferOp>& out) {
  out.clear();
  for (const TransferOp& op : ops)
    if (op.length) out.push_back(op);
  // In the order of the peer's memory (a sequence's blocks come back from a free list tail first,
  // so a request's block ids often run downwards): runs in either direction then merge.
  const auto by_remote = [](const TransferOp& a, const TransferOp& b) {
    return a.remote_region != b.remote_region ? a.remote_region < b.remote_region : a.remote_offset < b.remote_offset;
  };
  if (!std::is_sorted(out.begin(), out.end(), by_remote)) std::stable_sort(out.begin(), out.end(), by_remote);
  size_t n = 0;
  for (const TransferOp& op : out) {
    if (n) {
      TransferOp& last = out[n - 1];
      if (last.local_region == op.local_region && last.remote_region == op.remote_region &&
          last.local_offset + last.length == op.local_offset && last.remote_offset + last.length == op.remote_offset) {
        last.length += op.length;
        continue;
      }
    }
    out[n++] = op;
  }
  out.resize(n);
}

std::string to_hex(const void* data, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out(2 * n, '0');
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  return out;
}

Result<std::string> from_hex(const std::string& hex) {
  if (hex.size() % 2) return make_error("odd-length hex string");
  std::string out(hex.size() / 2, '\0');
  auto val = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = val(hex[2 * i]), lo = val(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return make_error("invalid hex string");
    out[i] = static_cast<char>(hi * 16 + lo);
  }
  return out;
}

std::string new_capability() {
  unsigned char bytes[16];
  for (size_t got = 0; got < sizeof bytes;) {
    const ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    // No entropy from the OS is a broken machine, not an input error: a guessable capability
    // must never be handed out.
    if (n < 0) throw std::runtime_error(std::string("getrandom: ") + std::strerror(errno));
    got += static_cast<size_t>(n);
  }
  return to_hex(bytes, sizeof bytes);
}

}  // namespace baton::xfer
