// --kv-transfer-config: the JSON that puts a server into a P/D role, with ATOM's keys
// (kv_role, proxy_ip, proxy_ping_port, http_port, and ATOM's spelling http_prt) plus ours.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace baton {

enum class KvRole { kColocated, kProducer, kConsumer };
const char* kv_role_name(KvRole r);

struct KvTransferConfig {
  KvRole role = KvRole::kColocated;
  std::string proxy_ip;            // where the proxy's registration socket is
  int proxy_ping_port = 36367;
  std::optional<int> http_port;    // overrides --port in a P/D role
  int handshake_port = 0;          // 0: any free port
  // auto (UCX when both sides have it, else TCP); ucx (UCX or cuda_ipc only: no UCX is a startup
  // error, a peer without it a failed handoff); tcp
  std::string transport = "auto";
  double kv_timeout_s = 120;       // prefill keeps unread blocks this long
  double heartbeat_s = 2;          // registration refresh interval (the proxy evicts after ~5 missed)
  std::string token;               // deployment token (registration and transfer handshakes)
  // The NICs UCX may use (UCX_NET_DEVICES syntax, "mlx5_0:1"): one entry for every rank, or one
  // per TP rank (rank r uses entry r). Empty: each rank takes the RDMA NICs nearest its GPU on
  // the PCIe tree (xfer/topology.h), or UCX's default where there are none.
  std::vector<std::string> ucx_net_devices;
  // Rank r's entry ("" when none is configured).
  std::string ucx_net_devices_for(int rank) const;

  // Parses the JSON text ("" -> colocated). Unknown keys are refused, so that typos are seen.
  static Result<KvTransferConfig> parse(const std::string& json_text);
};

}  // namespace baton
