// libFuzzer target: the P/D control messages a peer or the network can send us. The first byte
// picks the parser: proxy registrations (msgpack, as the ZMQ socket receives them), the KV layout
// of a handshake, transfer-engine agent and region descriptions, and --kv-transfer-config.
// Every input gets a result or an error: no crash, no exception.
#include <cassert>
#include <cstdint>
#include <string>

#include "disagg/kv_layout.h"
#include "disagg/kv_transfer_config.h"
#include "proxy/instance_table.h"
#include "xfer/types.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace baton;
  if (size == 0) return 0;
  const uint8_t kind = data[0] % 4;
  std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (kind) {
    case 0: {
      static proxy::InstanceTable table;
      auto m = parse_msgpack(rest, "registration");
      if (!m.ok()) return 0;
      auto now = proxy::Clock::now();
      (void)table.update(*m, "peer", false, now);
      (void)table.update(*m, "other peer", false, now);  // refused or a no-op, never a second entry
      auto got = table.acquire('P', {}, 5);
      if (got) table.release(got->id, 5, false);
      (void)table.evict(now + std::chrono::hours(1), std::chrono::seconds(10));
      assert(table.snapshot().empty());
      break;
    }
    case 1: {
      Json j = Json::parse(rest, nullptr, false);
      if (j.is_discarded()) return 0;
      auto l = KvLayout::from_json(j);
      if (l.ok()) {
        for (int r = 0; r < l->tp_size; ++r) {
          auto [b, e] = l->heads_of(r);
          assert(0 <= b && b < e && e <= l->num_kv_heads);
        }
        KvLayout one = *l;
        one.tp_size = 1;
        if (l->tp_size <= 64)
          for (int r = 0; r < l->tp_size; ++r) (void)plan_head_slices(one, *l, r);
        (void)l->compatible_with(one);
      }
      break;
    }
    case 2: {
      Json j = Json::parse(rest, nullptr, false);
      if (j.is_discarded()) return 0;
      (void)xfer::AgentDesc::from_json(j);
      auto m = xfer::MemoryDesc::from_json(j);
      if (m.ok()) (void)xfer::MemoryDesc::from_json(m->to_json());
      break;
    }
    case 3:
      (void)KvTransferConfig::parse(rest);
      break;
  }
  return 0;
}
