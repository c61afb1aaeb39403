#include "disagg/kv_transfer_config.h"

#include "common/json.h"

namespace baton {

const char* kv_role_name(KvRole r) {
  switch (r) {
    case KvRole::kColocated: return "colocated";
    case KvRole::kProducer: return "kv_producer";
    case KvRole::kConsumer: return "kv_consumer";
  }
  return "?";
}

Result<KvTransferConfig> KvTransferConfig::parse(const std::string& text) {
  KvTransferConfig c;
  if (text.empty()) return c;
  const std::string what = "--kv-transfer-config";
  BATON_ASSIGN_OR_RETURN(Json j, parse_json(text, what));
  if (!j.is_object()) return make_error(what, ": expected a JSON object");
  static const char* known[] = {"kv_role", "proxy_ip", "proxy_ping_port", "http_port", "http_prt", "handshake_port",
                                "transport", "kv_timeout_s", "heartbeat_s", "token", "kv_connector", "kv_buffer_device", "kv_rank",
                                "kv_parallel_size", "kv_port", "kv_ip", "kv_connector_extra_config", "ucx_net_devices"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (std::find(std::begin(known), std::end(known), it.key()) == std::end(known))
      return make_error(what, ": unknown key '", it.key(), "'");
  BATON_ASSIGN_OR_RETURN(std::string role, json_get_or<std::string>(j, "kv_role", "", what));
  if (role.empty() || role == "colocated") {
    c.role = KvRole::kColocated;
  } else if (role == "kv_producer") {
    c.role = KvRole::kProducer;
  } else if (role == "kv_consumer") {
    c.role = KvRole::kConsumer;
  } else {
    return make_error(what, ": kv_role '", role, "' is not one of kv_producer, kv_consumer");
  }
  BATON_ASSIGN_OR_RETURN(c.proxy_ip, json_get_or<std::string>(j, "proxy_ip", "", what));
  BATON_ASSIGN_OR_RETURN(c.proxy_ping_port, json_get_or<int>(j, "proxy_ping_port", c.proxy_ping_port, what));
  for (const char* key : {"http_port", "http_prt"}) {  // ATOM's config spells it http_prt
    if (j.contains(key) && !j[key].is_null()) {
      BATON_ASSIGN_OR_RETURN(int port, json_get<int>(j, key, what));
      c.http_port = port;
    }
  }
  BATON_ASSIGN_OR_RETURN(c.handshake_port, json_get_or<int>(j, "handshake_port", 0, what));
  BATON_ASSIGN_OR_RETURN(c.transport, json_get_or<std::string>(j, "transport", c.transport, what));
  BATON_ASSIGN_OR_RETURN(c.kv_timeout_s, json_get_or<double>(j, "kv_timeout_s", c.kv_timeout_s, what));
  BATON_ASSIGN_OR_RETURN(c.heartbeat_s, json_get_or<double>(j, "heartbeat_s", c.heartbeat_s, what));
  if (!(c.heartbeat_s > 0)) return make_error(what, ": heartbeat_s must be positive");
  if (c.transport != "auto" && c.transport != "tcp" && c.transport != "ucx")
    return make_error(what, ": transport '", c.transport, "' is not one of auto, ucx, tcp");
  BATON_ASSIGN_OR_RETURN(c.token, json_get_or<std::string>(j, "token", "", what));
  if (j.contains("ucx_net_devices") && j["ucx_net_devices"].is_string()) {
    c.ucx_net_devices = {j["ucx_net_devices"].get<std::string>()};
  } else {
    BATON_ASSIGN_OR_RETURN(c.ucx_net_devices,
                           json_get_or<std::vector<std::string>>(j, "ucx_net_devices", {}, what));
  }
  for (const std::string& d : c.ucx_net_devices)
    if (d.empty() || d.find_first_of(" \t\n") != std::string::npos)
      return make_error(what, ": ucx_net_devices entry '", d, "' is not a UCX device list (e.g. \"mlx5_0:1\")");
  auto port_ok = [](int p) { return p >= 0 && p <= 65535; };
  if (!port_ok(c.proxy_ping_port) || (c.http_port && !port_ok(*c.http_port)) || !port_ok(c.handshake_port))
    return make_error(what, ": ports must be in 0..65535");
  if (c.kv_timeout_s <= 0) return make_error(what, ": kv_timeout_s must be positive");
  if (c.role != KvRole::kColocated && c.proxy_ip.empty())
    return make_error(what, ": kv_role '", role, "' needs proxy_ip (the proxy's address)");
  return c;
}

std::string KvTransferConfig::ucx_net_devices_for(int rank) const {
  if (ucx_net_devices.empty()) return "";
  if (ucx_net_devices.size() == 1) return ucx_net_devices[0];
  return rank >= 0 && rank < static_cast<int>(ucx_net_devices.size()) ? ucx_net_devices[rank] : "";
}

}  // namespace baton
