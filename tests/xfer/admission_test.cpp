// Who an agent lets in and what they may touch (agent.h, "Who may connect"): without a
// deployment token only holders of a live capability, each seeing only its grant; hellos are
// taken with a deadline, a bounded number at a time and without a thread each; an accept loop
// out of file descriptors backs off instead of spinning.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <numeric>
#include <thread>
#include <vector>

#include "xfer/agent.h"

namespace baton::xfer {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Agent> make_agent(const std::string& name, const std::string& token = "",
                                  std::chrono::milliseconds timeout = 10s) {
  Agent::Config c;
  c.name = name;
  c.transports = {"tcp"};  // the owner serves (and checks) every range
  c.token = token;
  c.timeout = timeout;
  c.hello_timeout = 300ms;
  c.capability_session_idle = 300ms;
  auto a = Agent::create(c);
  EXPECT_TRUE(a.ok()) << (a.ok() ? "" : a.error());
  return a.ok() ? std::move(*a) : nullptr;
}

// The owner's memory: `n` bytes whose value is their offset's low byte, and a local
// destination of the same size for reads. Deregistered before it is freed (deregistration waits
// for reads being served from it).
struct Pool {
  Agent &owner, &reader;
  std::vector<uint8_t> src, dst;
  MemoryDesc remote, local;
  Pool(Agent& o, Agent& r, size_t n) : owner(o), reader(r), src(n), dst(n, 0) {
    std::iota(src.begin(), src.end(), uint8_t{0});
    remote = *owner.register_memory(src.data(), n);
    local = *reader.register_memory(dst.data(), n);
  }
  ~Pool() {
    EXPECT_TRUE(owner.deregister_memory(remote.region).ok());
    EXPECT_TRUE(reader.deregister_memory(local.region).ok());
  }
  Status read(Session& s, uint64_t offset, uint64_t len) {
    auto id = s.read({{local.region, offset, remote.region, offset, len}});
    if (!id.ok()) return make_error(id.error());
    return s.wait(*id);
  }
};

int thread_count() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  return -1;
}

int raw_connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

TEST(CapabilityTest, WithoutATokenOnlyALiveCapabilityIsAdmitted) {
  auto owner = make_agent("owner"), reader = make_agent("reader");
  Pool pool(*owner, *reader, 4096);
  auto none = reader->connect(owner->describe());
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().find("no live capability"), std::string::npos) << none.error();
  EXPECT_FALSE(reader->connect(owner->describe(), new_capability()).ok()) << "a capability never granted";

  const std::string cap = new_capability();
  owner->grant(cap, {{pool.remote.region, 1024, 1024}});
  auto s = reader->connect(owner->describe(), cap);
  ASSERT_TRUE(s.ok()) << s.error();
  EXPECT_TRUE(pool.read(**s, 1024, 1024).ok());
  EXPECT_TRUE(std::equal(pool.dst.begin() + 1024, pool.dst.begin() + 2048, pool.src.begin() + 1024));
  // Outside the grant, or only partly inside: the owner refuses, and no byte moves.
  // (Past the grant's end too: an offset beyond it must not wrap the length check around.)
  for (auto [off, len] : {std::pair<uint64_t, uint64_t>{0, 1024}, {2048, 1024}, {512, 1024}, {1536, 1024}, {3000, 100},
                          {2560, 512}, {4095, 1}}) {
    std::fill(pool.dst.begin(), pool.dst.end(), 0);
    Status st = pool.read(**s, off, len);
    ASSERT_FALSE(st.ok()) << off << "+" << len;
    EXPECT_NE(st.message().find("not granted"), std::string::npos) << st.message();
    EXPECT_TRUE(std::all_of(pool.dst.begin(), pool.dst.end(), [](uint8_t b) { return b == 0; }));
  }
  // Revoked: reads stop on the open session, and no new session is admitted.
  owner->revoke(cap);
  EXPECT_FALSE(pool.read(**s, 1024, 1024).ok());
  auto other = make_agent("other");
  EXPECT_FALSE(other->connect(owner->describe(), cap).ok());
}

TEST(CapabilityTest, ASessionSeesOnlyTheRegionsItsCapabilitiesName) {
  auto owner = make_agent("owner"), reader = make_agent("reader");
  Pool a(*owner, *reader, 4096), b(*owner, *reader, 4096);
  const std::string cap_a = new_capability(), cap_b = new_capability();
  owner->grant(cap_a, {{a.remote.region, 0, 4096}});
  owner->grant(cap_b, {{b.remote.region, 0, 4096}});
  auto s = reader->connect(owner->describe(), cap_a);
  ASSERT_TRUE(s.ok()) << s.error();
  auto regions = (*s)->remote_regions();
  ASSERT_EQ(regions.size(), 1u);
  EXPECT_EQ(regions[0].region, a.remote.region);
  EXPECT_FALSE(b.read(**s, 0, 4096).ok()) << "a region the session was never shown";
  // A later transfer's capability, presented on the open session, shows its region too.
  ASSERT_TRUE((*s)->authorize(cap_b, b.remote.region).ok());
  EXPECT_EQ((*s)->remote_regions().size(), 2u);
  EXPECT_TRUE(b.read(**s, 0, 4096).ok());
  EXPECT_EQ(b.dst, b.src);
}

TEST(CapabilityTest, AnUnknownCapabilityOnAnOpenSessionGrantsNothing) {
  auto owner = make_agent("owner"), reader = make_agent("reader", "", 500ms);
  Pool a(*owner, *reader, 4096), b(*owner, *reader, 4096);
  const std::string cap = new_capability();
  owner->grant(cap, {{a.remote.region, 0, 4096}});
  auto s = reader->connect(owner->describe(), cap);
  ASSERT_TRUE(s.ok()) << s.error();
  Status st = (*s)->authorize(new_capability(), b.remote.region);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("grants no access"), std::string::npos) << st.message();
  EXPECT_FALSE(b.read(**s, 0, 4096).ok());
  EXPECT_TRUE(a.read(**s, 0, 4096).ok()) << "the session itself is still good";
}

// A raw connection that has sent a hello with `capability`; the owner's first answer's type.
int raw_hello(int port, const std::string& capability, MsgType* answer) {
  const int fd = raw_connect(port);
  if (fd < 0) return -1;
  const std::string payload = "{\"agent\":\"raw\",\"version\":2,\"capability\":\"" + capability + "\"}";
  FrameHeader h{MsgType::kHello, 0, 0, payload.size()};
  (void)!::send(fd, &h, sizeof h, MSG_NOSIGNAL);
  (void)!::send(fd, payload.data(), payload.size(), MSG_NOSIGNAL);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  FrameHeader got{};
  *answer = ::recv(fd, &got, sizeof got, MSG_WAITALL) == ssize_t(sizeof got) ? got.type : MsgType{0};
  return fd;
}

// Admission is for the transfers a capability names, not for good: once they are revoked, an
// idle session is closed; and one capability (any HTTP client of a prefill can get one) opens
// a bounded number of sessions.
TEST(CapabilityTest, SessionsWithoutTheTokenAreBoundedAndEndAfterTheirGrants) {
  auto owner = make_agent("owner");
  std::vector<uint8_t> mem(4096);
  auto region = owner->register_memory(mem.data(), mem.size());
  const std::string cap = new_capability();
  owner->grant(cap, {{region->region, 0, 4096}});
  const int port = owner->describe().port;
  std::vector<int> fds;
  for (size_t i = 0; i < Agent::kMaxCapabilitySessions; ++i) {
    MsgType answer;
    fds.push_back(raw_hello(port, cap, &answer));
    ASSERT_EQ(answer, MsgType::kWelcome) << i;
  }
  MsgType answer;
  const int extra = raw_hello(port, cap, &answer);
  EXPECT_EQ(answer, MsgType::kRefused) << "one capability opened more sessions than the bound";
  ::close(extra);
  EXPECT_EQ(owner->served_connections(), Agent::kMaxCapabilitySessions);
  // Still granted: idle sessions stay. Revoked: each is closed once it idles.
  std::this_thread::sleep_for(600ms);
  EXPECT_EQ(owner->served_connections(), Agent::kMaxCapabilitySessions);
  owner->revoke(cap);
  size_t closed = 0;
  for (int fd : fds) {
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) {  // the welcome's payload, then the end (5 s timeout)
    }
    closed += n == 0;
    ::close(fd);
  }
  EXPECT_EQ(closed, fds.size());
  EXPECT_TRUE(owner->deregister_memory(region->region).ok());
}

// A KV transfer grants one range per block and layer; a read coalesced over adjacent blocks
// spans several of them and must still be inside the grant, while a gap is not.
TEST(CapabilityTest, AdjacentGrantedRangesServeOneCoalescedRead) {
  auto owner = make_agent("owner"), reader = make_agent("reader");
  Pool pool(*owner, *reader, 8192);
  const std::string cap = new_capability();
  owner->grant(cap, {{pool.remote.region, 2048, 512},
                     {pool.remote.region, 1024, 512},
                     {pool.remote.region, 1536, 512},
                     {pool.remote.region, 4096, 512}});
  auto s = reader->connect(owner->describe(), cap);
  ASSERT_TRUE(s.ok()) << s.error();
  EXPECT_TRUE(pool.read(**s, 1024, 1536).ok());
  EXPECT_FALSE(pool.read(**s, 1024, 3584).ok()) << "[2560, 4096) was never granted";
  EXPECT_TRUE(pool.read(**s, 4096, 512).ok());
}

TEST(CapabilityTest, WritesNeedTheTokenAndAWritableAgent) {
  auto owner = make_agent("owner"), reader = make_agent("reader");
  Pool pool(*owner, *reader, 4096);
  const std::string cap = new_capability();
  owner->grant(cap, {{pool.remote.region, 0, 4096}});
  auto s = reader->connect(owner->describe(), cap);
  ASSERT_TRUE(s.ok()) << s.error();
  auto w = (*s)->write({{pool.local.region, 0, pool.remote.region, 0, 4096}});
  ASSERT_FALSE(w.ok()) << "a capability grants reads only";
  for (size_t i = 0; i < pool.src.size(); ++i) ASSERT_EQ(pool.src[i], uint8_t(i));

  // Trusted (the token), but the owner takes no writes (as KV pools are served).
  std::vector<uint8_t> mem(4096, 7), mine(4096, 9);  // outlive the agents
  Agent::Config c;
  c.name = "read-only";
  c.transports = {"tcp"};
  c.token = "t";
  c.remote_writes = false;
  auto ro = Agent::create(c);
  ASSERT_TRUE(ro.ok()) << ro.error();
  auto trusted = make_agent("trusted", "t");
  auto rm = (*ro)->register_memory(mem.data(), mem.size());
  auto lm = trusted->register_memory(mine.data(), mine.size());
  auto t = trusted->connect((*ro)->describe());
  ASSERT_TRUE(t.ok()) << t.error();
  auto tw = (*t)->write({{lm->region, 0, rm->region, 0, 4096}});
  ASSERT_FALSE(tw.ok());
  EXPECT_NE(tw.error().find("takes no writes"), std::string::npos) << tw.error();
  EXPECT_TRUE(std::all_of(mem.begin(), mem.end(), [](uint8_t b) { return b == 7; }));
  auto r = (*t)->read({{lm->region, 0, rm->region, 0, 4096}});
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_TRUE((*t)->wait(*r).ok()) << "reads are served as before";
  EXPECT_EQ(mine, mem);
}

// Connections that never say hello: each is closed by its deadline or when newer ones crowd it
// out, none gets a thread, and a real peer still gets in during the flood.
TEST(AdmissionTest, SilentConnectionsAreBoundedAndCostNoThread) {
  auto owner = make_agent("owner"), reader = make_agent("reader");
  Pool pool(*owner, *reader, 4096);
  const std::string cap = new_capability();
  owner->grant(cap, {{pool.remote.region, 0, 4096}});
  const int port = owner->describe().port;
  const int threads_before = thread_count();
  std::vector<int> fds;
  for (int i = 0; i < 300; ++i) {
    const int fd = raw_connect(port);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    fds.push_back(fd);
  }
  auto s = reader->connect(owner->describe(), cap);
  ASSERT_TRUE(s.ok()) << s.error();
  EXPECT_TRUE(pool.read(**s, 0, 4096).ok());
  EXPECT_LE(thread_count(), threads_before + 2) << "threads for connections that never authenticated";
  EXPECT_EQ(owner->served_connections(), 1u);
  // Each is closed by the owner: crowded out at once, or at its hello deadline.
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  size_t closed = 0;
  for (int fd : fds) {
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char c;
    closed += ::recv(fd, &c, 1, 0) == 0;
    ::close(fd);
  }
  EXPECT_LT(std::chrono::steady_clock::now(), deadline);
  EXPECT_EQ(closed, fds.size());
  // Every silent one went by one of the two ways (how many each depends on the scheduler: under
  // a sanitizer the 300 connects outlast the hello deadline), the reader by admission.
  const Agent::AdmissionStats st = owner->admission_stats();
  EXPECT_EQ(st.admitted, 1u);
  EXPECT_EQ(st.overflowed + st.timed_out, 300u);
}

TEST(AdmissionTest, AHelloTooLargeOrOfAnotherTypeIsDropped) {
  auto owner = make_agent("owner");
  const int port = owner->describe().port;
  for (MsgType type : {MsgType::kReadRequest, MsgType::kHello}) {
    const int fd = raw_connect(port);
    ASSERT_GE(fd, 0);
    FrameHeader h{type, 0, 0, type == MsgType::kHello ? uint64_t{1} << 20 : 24};
    ASSERT_EQ(::send(fd, &h, sizeof h, MSG_NOSIGNAL), ssize_t(sizeof h));
    char c;
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    EXPECT_EQ(::recv(fd, &c, 1, 0), 0) << "the owner closes it without reading more";
    ::close(fd);
  }
  for (int i = 0; i < 100 && owner->admission_stats().refused < 2; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(owner->admission_stats().refused, 2u);
}

// Out of file descriptors, accept() fails until one is freed; the loop must wait, not spin.
TEST(AdmissionTest, OutOfFileDescriptorsTheAcceptLoopBacksOff) {
  Agent::Config c;
  c.name = "owner";
  c.transports = {"tcp"};
  c.hello_timeout = 30s;  // nothing the agent holds is freed while the test runs
  auto owner = Agent::create(c);
  ASSERT_TRUE(owner.ok()) << owner.error();
  const int port = (*owner)->describe().port;
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  std::vector<int> fds;
  {
    // This process's descriptors run out: the test takes every one left, then gives one back
    // for a connection, which the agent then cannot accept until the limit is raised again.
    struct Restore {
      rlimit limit;
      ~Restore() { setrlimit(RLIMIT_NOFILE, &limit); }
    } restore{old};
    const int lowest_free = ::dup(0);
    ASSERT_GE(lowest_free, 0);
    ::close(lowest_free);
    rlimit low = old;
    low.rlim_cur = static_cast<rlim_t>(lowest_free) + 16;
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
    for (int fd; (fd = ::dup(0)) >= 0;) fds.push_back(fd);
    ASSERT_FALSE(fds.empty());
    ::close(fds.back());
    fds.pop_back();
    const int pending = raw_connect(port);
    ASSERT_GE(pending, 0) << std::strerror(errno);
    fds.push_back(pending);
    std::this_thread::sleep_for(1500ms);
  }
  const uint64_t errors = (*owner)->admission_stats().accept_errors;
  for (int fd : fds) ::close(fd);
  EXPECT_GE(errors, 1u) << "accept never ran out of descriptors: nothing was checked";
  EXPECT_LE(errors, 15u) << "the accept loop retried without backing off";
  // Descriptors back: it accepts again (a capability-less hello is refused, which also proves
  // the connection was taken).
  auto reader = make_agent("reader");
  auto s = reader->connect((*owner)->describe());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().find("no live capability"), std::string::npos) << s.error();
}

}  // namespace
}  // namespace baton::xfer
