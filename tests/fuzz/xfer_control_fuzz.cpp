// libFuzzer target: the transfer engine's control channel as a hostile peer drives it. Each
// input is sent as raw bytes on a fresh TCP connection to a live Agent (handshake frames, read
// and write requests with arbitrary regions, offsets and lengths, notifications, garbage); the
// agent must answer or drop the connection, never crash, and never touch memory outside its one
// registered region (ASan watches the guard bytes around it). The region was granted in part to
// a capability the corpus's hellos present; without a token, no other hello gets in.
#include <cassert>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/log.h"
#include "fuzz_socket.h"
#include "xfer/agent.h"

namespace {

struct Target {
  std::unique_ptr<baton::xfer::Agent> agent;
  std::vector<char> region = std::vector<char>(4096 + 128, 'g');  // [64 guard][4096][64 guard]
};

Target& target() {
  static Target t = [] {
    Target t;
    baton::log::set_level(baton::log::Level::kOff);  // every hostile peer is refused: that is expected
    baton::xfer::Agent::Config c;
    c.name = "fuzz-target";
    c.transports = {"tcp"};
    c.timeout = std::chrono::milliseconds(200);
    auto a = baton::xfer::Agent::create(c);
    assert(a.ok());
    t.agent = std::move(*a);
    auto r = t.agent->register_memory(t.region.data() + 64, 4096);
    assert(r.ok() && r->region == 1);
    // The corpus's hellos present this capability: reads of the first half are served, the
    // rest are refused as not granted.
    t.agent->grant("fuzz-capability", {{1, 0, 2048}});
    return t;
  }();
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace baton::xfer;
  Target& t = target();
  const AgentDesc d = t.agent->describe();
  baton::fuzz::send_and_drain(d.host, d.port, data, size, std::chrono::milliseconds(200));
  for (int i = 0; i < 64; ++i) assert(t.region[i] == 'g' && t.region[64 + 4096 + i] == 'g');
  return 0;
}
