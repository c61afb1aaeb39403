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

// An agent with one registered region between guard bytes.
struct Target {
  std::unique_ptr<baton::xfer::Agent> agent;
  std::vector<char> region = std::vector<char>(4096 + 128, 'g');  // [64 guard][4096][64 guard]

  explicit Target(const std::string& token) {
    baton::xfer::Agent::Config c;
    c.name = token.empty() ? "fuzz-target" : "fuzz-trusted";
    c.token = token;
    c.transports = {"tcp"};
    c.timeout = std::chrono::milliseconds(200);
    auto a = baton::xfer::Agent::create(c);
    assert(a.ok());
    agent = std::move(*a);
    auto r = agent->register_memory(region.data() + 64, 4096);
    assert(r.ok() && r->region == 1);
  }
  void drive(const uint8_t* data, size_t size) {
    const baton::xfer::AgentDesc d = agent->describe();
    baton::fuzz::send_and_drain(d.host, d.port, data, size, std::chrono::milliseconds(200));
    for (int i = 0; i < 64; ++i) assert(region[i] == 'g' && region[64 + 4096 + i] == 'g');
  }
};

// Every input goes to both: one without a token, whose region's first half is granted to the
// capability the corpus's hellos present (the rest is refused as not granted), and one with the
// token "fuzz-token", whose trusted peers may also write.
struct Targets {
  Target capability{""}, trusted{"fuzz-token"};
  Targets() { capability.agent->grant("fuzz-capability", {{1, 0, 2048}}); }
};

Targets& targets() {
  static Targets* t = [] {
    baton::log::set_level(baton::log::Level::kOff);  // every hostile peer is refused: that is expected
    return new Targets;
  }();
  return *t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Targets& t = targets();
  t.capability.drive(data, size);
  t.trusted.drive(data, size);
  return 0;
}
