// The transfer engine: correctness of reads and writes over each transport, every refusal, and
// peers that die or stall.
#include "xfer/agent.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <thread>

#include "common/json.h"
#include "xfer/pattern.h"
#include "xfer/transport.h"
#if BATON_HAS_CUDA
#include <cuda_runtime.h>
#endif

extern char** environ;

namespace baton::xfer {
namespace {

using namespace std::chrono_literals;

// The tests' transport parameter: "tcp", or "ucx" for the default set.
std::vector<std::string> transports_for(const std::string& t) {
  return *Agent::Config::transports_named(t == "tcp" ? "tcp" : "auto");
}

// Agents here share a deployment token (trusted peers) unless a test says otherwise: sessions
// without it need a capability (CapabilityTest).
constexpr const char* kTestToken = "test-deployment-token";

std::unique_ptr<Agent> make_agent(const std::string& name, const std::string& transport,
                                  const std::string& token = kTestToken, std::chrono::milliseconds timeout = 10s) {
  Agent::Config c;
  c.name = name;
  c.transports = transports_for(transport);
  c.token = token;
  c.timeout = timeout;
  auto a = Agent::create(c);
  EXPECT_TRUE(a.ok()) << (a.ok() ? "" : a.error());
  return a.ok() ? std::move(*a) : nullptr;
}

// Random bytes, eight per draw (the 1 GiB test fills 2 GiB; the sanitizer builds run it at -O0).
void fill(std::vector<uint8_t>& v, unsigned seed) {
  std::mt19937_64 rng(seed);
  size_t i = 0;
  for (; i + 8 <= v.size(); i += 8) {
    const uint64_t w = rng();
    std::memcpy(v.data() + i, &w, 8);
  }
  for (; i < v.size(); ++i) v[i] = static_cast<uint8_t>(rng());
}

// Position-sensitive 64-bit hash, 8 bytes at a time (sizes here are multiples of 8).
uint64_t checksum(const uint8_t* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 1099511628211ull;
    h ^= h >> 29;
  }
  for (size_t i = n & ~size_t{7}; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Ops of KV-block-like sizes (2 KiB .. 4 MiB) that tile [0, total) in a shuffled order.
std::vector<TransferOp> mixed_ops(uint64_t local_region, uint64_t remote_region, uint64_t total, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<TransferOp> ops;
  for (uint64_t off = 0; off < total;) {
    uint64_t len = std::min<uint64_t>(total - off, 2048ull << (rng() % 12));  // 2 KiB .. 4 MiB
    ops.push_back({local_region, off, remote_region, off, len});
    off += len;
  }
  std::shuffle(ops.begin(), ops.end(), rng);  // no accidental coalescing
  return ops;
}

class XferTest : public ::testing::TestWithParam<std::string> {};

TEST_P(XferTest, ReadsAndWritesMoveExactBytes) {
  const std::string transport = GetParam();
  auto owner = make_agent("owner", transport), reader = make_agent("reader", transport);
  ASSERT_TRUE(owner && reader);
  const size_t n = 24 << 20;
  std::vector<uint8_t> src(n), dst(n, 0), back(n, 0);
  fill(src, 1);
  auto rs = owner->register_memory(src.data(), n);
  auto rd = reader->register_memory(dst.data(), n);
  auto rb = reader->register_memory(back.data(), n);
  ASSERT_TRUE(rs.ok() && rd.ok() && rb.ok());
  auto session = reader->connect(owner->describe());
  ASSERT_TRUE(session.ok()) << session.error();
  EXPECT_EQ((*session)->transport(), transport == "tcp" ? "tcp" : "ucx");

  auto id = (*session)->read(mixed_ops(rd->region, rs->region, n, 2));
  ASSERT_TRUE(id.ok()) << id.error();
  ASSERT_TRUE((*session)->wait(*id).ok());
  EXPECT_EQ(checksum(dst.data(), n), checksum(src.data(), n));

  // Write a different pattern into the owner's memory, then read it back.
  fill(back, 3);
  const uint64_t want = checksum(back.data(), n);
  auto w = (*session)->write(mixed_ops(rb->region, rs->region, n, 4));
  ASSERT_TRUE(w.ok()) << w.error();
  ASSERT_TRUE((*session)->wait(*w).ok());
  EXPECT_EQ(checksum(src.data(), n), want);

  // The session is cached and reused.
  auto again = reader->connect(owner->describe());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->get(), session->get());
}

TEST_P(XferTest, OutOfBoundsUnknownRegionAndDeregisteredAreRefused) {
  const std::string transport = GetParam();
  auto owner = make_agent("owner", transport), reader = make_agent("reader", transport);
  std::vector<uint8_t> src(1 << 20, 7), dst(1 << 20, 0), canary(4096, 0xAB);
  auto rs = owner->register_memory(src.data(), src.size());
  auto rd = reader->register_memory(dst.data(), dst.size());
  auto session = reader->connect(owner->describe());
  ASSERT_TRUE(session.ok());
  auto& s = **session;

  auto oob = s.read({{rd->region, 0, rs->region, src.size() - 100, 200}});
  ASSERT_FALSE(oob.ok());
  EXPECT_NE(oob.error().find("outside region"), std::string::npos) << oob.error();
  auto local_oob = s.read({{rd->region, dst.size() - 10, rs->region, 0, 100}});
  ASSERT_FALSE(local_oob.ok());
  EXPECT_NE(local_oob.error().find("local"), std::string::npos);
  auto unknown = s.read({{rd->region, 0, 999, 0, 100}});
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().find("no region 999"), std::string::npos);
  EXPECT_TRUE(std::all_of(dst.begin(), dst.end(), [](uint8_t b) { return b == 0; })) << "a refused read wrote data";

  ASSERT_TRUE(owner->deregister_memory(rs->region).ok());
  EXPECT_FALSE(owner->deregister_memory(rs->region).ok());
  // The owner tells the session; a read after that is refused on the reader.
  for (int i = 0; i < 200 && !s.remote_regions().empty(); ++i) std::this_thread::sleep_for(5ms);
  auto gone = s.read({{rd->region, 0, rs->region, 0, 100}});
  ASSERT_FALSE(gone.ok());
  EXPECT_NE(gone.error().find("revoked"), std::string::npos) << gone.error();
}

TEST_P(XferTest, OwnerChecksEvenWhenTheReaderDoesNot) {
  // A reader with a stale descriptor (bigger than the region) is stopped by the owner (TCP) or
  // by its own descriptor check: either way the transfer fails and nothing outside moves.
  const std::string transport = GetParam();
  auto owner = make_agent("owner", transport), reader = make_agent("reader", transport);
  std::vector<uint8_t> src(8192, 1), dst(65536, 0);
  auto rs = owner->register_memory(src.data(), 4096);  // only the first half is granted
  auto rd = reader->register_memory(dst.data(), dst.size());
  auto session = reader->connect(owner->describe());
  ASSERT_TRUE(session.ok());
  auto r = (*session)->read({{rd->region, 0, rs->region, 0, 8192}});
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(std::all_of(dst.begin(), dst.end(), [](uint8_t b) { return b == 0; }));
}

TEST_P(XferTest, WrongTokenIsRefusedAtHandshake) {
  const std::string transport = GetParam();
  auto owner = make_agent("owner", transport, "deploy-secret");
  auto good = make_agent("good", transport, "deploy-secret");
  auto bad = make_agent("bad", transport, "guess");
  auto none = make_agent("none", transport, "");
  EXPECT_TRUE(good->connect(owner->describe()).ok());
  auto refused = bad->connect(owner->describe());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().find("wrong or missing deployment token"), std::string::npos) << refused.error();
  EXPECT_FALSE(none->connect(owner->describe()).ok());
}

TEST_P(XferTest, NotifyArrivesAfterEarlierTransfers) {
  const std::string transport = GetParam();
  auto owner = make_agent("owner", transport), reader = make_agent("reader", transport);
  std::vector<uint8_t> src(4 << 20), dst(4 << 20);
  fill(src, 9);
  auto rs = owner->register_memory(src.data(), src.size());
  auto rd = reader->register_memory(dst.data(), dst.size());
  auto session = reader->connect(owner->describe());
  ASSERT_TRUE(session.ok());
  std::atomic<bool> data_was_complete{false};
  std::atomic<int> notes{0};
  owner->set_notification_handler([&](const std::string& peer, const std::string& msg) {
    EXPECT_EQ(peer, "reader");
    EXPECT_EQ(msg, "done:42");
    // Over TCP the reader may still be receiving: only RMA completes reader-side first.
    if (transport != "tcp") data_was_complete = checksum(dst.data(), dst.size()) == checksum(src.data(), src.size());
    ++notes;
  });
  auto id = (*session)->read(mixed_ops(rd->region, rs->region, src.size(), 5));
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE((*session)->notify("done:42").ok());  // issued before waiting: must still be ordered
  ASSERT_TRUE((*session)->wait(*id).ok());
  for (int i = 0; i < 400 && notes == 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(notes.load(), 1);
  if (transport != "tcp") {
    EXPECT_TRUE(data_was_complete.load());  // RMA: reader-side completion first
  }
}

TEST_P(XferTest, ManySessionsAtOnce) {
  const std::string transport = GetParam();
  const size_t n = 8 << 20;
  std::vector<uint8_t> src(n);  // outlives the agent that registered it (its serving threads)
  fill(src, 11);
  auto owner = make_agent("owner", transport);
  auto rs = owner->register_memory(src.data(), n);
  const uint64_t want = checksum(src.data(), n);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 6; ++t)
    threads.emplace_back([&, t] {
      auto reader = make_agent("reader" + std::to_string(t), transport);
      std::vector<uint8_t> dst(n);
      auto rd = reader->register_memory(dst.data(), n);
      auto s = reader->connect(owner->describe());
      if (!s.ok() || !rd.ok()) return;
      for (int rep = 0; rep < 3; ++rep) {
        auto id = (*s)->read(mixed_ops(rd->region, rs->region, n, 100 + t * 10 + rep));
        if (!id.ok() || !(*s)->wait(*id).ok()) return;
        if (checksum(dst.data(), n) != want) return;
      }
      ++ok;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 6);
}

TEST_P(XferTest, AllocatedSharedRegionsMoveExactBytes) {
  const std::string transport = GetParam();
  auto owner = make_agent("owner", transport), reader = make_agent("reader", transport);
  const size_t n = 8 << 20;
  auto src = owner->allocate_memory(n);
  auto dst = reader->allocate_memory(n);
  ASSERT_TRUE(src.ok() && dst.ok());
  auto* s8 = static_cast<uint8_t*>(src->first);
  for (size_t i = 0; i < n; ++i) s8[i] = static_cast<uint8_t>(i * 7 + (i >> 11));
  auto session = reader->connect(owner->describe());
  ASSERT_TRUE(session.ok());
  auto id = (*session)->read(mixed_ops(dst->second.region, src->second.region, n, 8));
  ASSERT_TRUE(id.ok()) << id.error();
  ASSERT_TRUE((*session)->wait(*id).ok());
  EXPECT_EQ(checksum(static_cast<uint8_t*>(dst->first), n), checksum(s8, n));
  EXPECT_TRUE(owner->deregister_memory(src->second.region).ok());
}

// The same refusals when both ends are shared regions (over UCX a batch of them is copied in
// place, without the locks the other paths take): nothing moves and the error names the cause.
TEST_P(XferTest, SharedRegionRefusals) {
  const std::string transport = GetParam();
  auto owner = make_agent("owner", transport), reader = make_agent("reader", transport);
  const size_t n = 1 << 20;
  auto src = owner->allocate_memory(n);
  auto dst = reader->allocate_memory(n);
  auto other = reader->allocate_memory(n);
  ASSERT_TRUE(src.ok() && dst.ok() && other.ok());
  std::memset(src->first, 7, n);
  auto* d8 = static_cast<uint8_t*>(dst->first);
  std::memset(d8, 0, n);
  auto session = reader->connect(owner->describe());
  ASSERT_TRUE(session.ok());
  auto& s = **session;
  const uint64_t rs = src->second.region, rd = dst->second.region;

  auto oob = s.read({{rd, 0, rs, 0, 4096}, {rd, 4096, rs, n - 100, 200}});  // the first op is fine
  ASSERT_FALSE(oob.ok());
  EXPECT_NE(oob.error().find("outside region"), std::string::npos) << oob.error();
  auto local_oob = s.read({{rd, n - 10, rs, 0, 100}});
  ASSERT_FALSE(local_oob.ok());
  EXPECT_NE(local_oob.error().find("local"), std::string::npos) << local_oob.error();
  auto unknown = s.read({{rd, 0, 999, 0, 100}});
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().find("no region 999"), std::string::npos) << unknown.error();
  auto wrap = s.read({{rd, 0, rs, ~uint64_t{0} - 10, 100}});
  ASSERT_FALSE(wrap.ok());
  EXPECT_TRUE(std::all_of(d8, d8 + n, [](uint8_t b) { return b == 0; })) << "a refused read wrote data";

  // A read into a region the reader deregistered is refused (another of its regions still reads).
  auto fine = s.read({{rd, 0, rs, 0, 4096}});
  ASSERT_TRUE(fine.ok()) << fine.error();
  ASSERT_TRUE(s.wait(*fine).ok());
  EXPECT_EQ(d8[0], 7);
  ASSERT_TRUE(reader->deregister_memory(rd).ok());
  auto local_gone = s.read({{rd, 0, rs, 0, 4096}});
  ASSERT_FALSE(local_gone.ok());
  EXPECT_NE(local_gone.error().find("local"), std::string::npos) << local_gone.error();
  auto still = s.read({{other->second.region, 0, rs, 0, 4096}});
  ASSERT_TRUE(still.ok()) << still.error();
  ASSERT_TRUE(s.wait(*still).ok());
  EXPECT_EQ(static_cast<uint8_t*>(other->first)[4095], 7);

  // The owner revokes its region: once the session has heard, reads and writes are refused.
  ASSERT_TRUE(owner->deregister_memory(rs).ok());
  for (int i = 0; i < 200 && !s.remote_regions().empty(); ++i) std::this_thread::sleep_for(5ms);
  auto gone = s.read({{other->second.region, 0, rs, 0, 100}});
  ASSERT_FALSE(gone.ok());
  EXPECT_NE(gone.error().find("revoked"), std::string::npos) << gone.error();
  auto gone_w = s.write({{other->second.region, 0, rs, 0, 100}});
  ASSERT_FALSE(gone_w.ok());
}

// Reads keep running on several threads while the reader deregisters its destination, and
// while the owner revokes the source (the reader then unmaps it): every read either completes or
// fails with a clear error, and no copy touches memory after it is gone (it would fault: the
// regions are mappings that deregistration unmaps).
TEST_P(XferTest, SharedReadsRacingDeregistration) {
  const std::string transport = GetParam();
  auto owner = make_agent("owner", transport), reader = make_agent("reader", transport);
  const size_t n = 1 << 20, chunk = 64 << 10;  // 16 chunks: 5 for each of 3 threads
  auto session = reader->connect(owner->describe());
  ASSERT_TRUE(session.ok());
  auto& s = **session;
  const int rounds = transport == "tcp" ? 8 : 40;
  uint64_t ok_reads = 0, refused = 0;
  for (int round = 0; round < rounds; ++round) {
    const bool revoke_source = round % 2 == 1;
    auto src = owner->allocate_memory(n);
    auto dst = reader->allocate_memory(n);
    ASSERT_TRUE(src.ok() && dst.ok());
    ASSERT_TRUE(s.refresh_regions().ok());  // the session learns of src now
    std::atomic<int> started{0};
    std::atomic<uint64_t> good{0}, bad{0};
    std::vector<std::string> errors(3);
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t)
      threads.emplace_back([&, t] {
        for (uint64_t i = 0;; ++i) {
          const uint64_t off = (t * 5 + i % 5) * chunk;  // each thread its own part of dst
          auto id = s.read({{dst->second.region, off, src->second.region, off, chunk}});
          Status st = id.ok() ? s.wait(*id) : Status(make_error(id.error()));
          if (!st.ok()) {
            errors[t] = st.message();
            ++bad;
            return;
          }
          ++good;
          if (i == 4) ++started;
        }
      });
    while (started < 3) std::this_thread::yield();
    if (revoke_source) {
      ASSERT_TRUE(owner->deregister_memory(src->second.region).ok());
    } else {
      ASSERT_TRUE(reader->deregister_memory(dst->second.region).ok());
    }
    for (auto& t : threads) t.join();
    // (Over TCP the owner may refuse before the session has heard: "not registered".)
    for (const std::string& e : errors)
      EXPECT_TRUE(revoke_source
                      ? e.find("revoked") != std::string::npos || e.find("not registered") != std::string::npos
                      : e.find("local") != std::string::npos)
          << e;
    ok_reads += good, refused += bad;
    if (revoke_source) {
      ASSERT_TRUE(reader->deregister_memory(dst->second.region).ok());
    } else {
      ASSERT_TRUE(owner->deregister_memory(src->second.region).ok());
    }
  }
  EXPECT_EQ(refused, 3u * rounds);
  EXPECT_GE(ok_reads, 15u * rounds);
}

// A read still in flight when the reader deregisters its destination (UCX without cross-memory
// attach: gets are emulated by shared-memory messages that the owner's progress thread answers):
// deregister_memory returns only once it has finished, so the memory may be freed then.
TEST(XferDeregisterTest, DeregisteringADestinationWaitsForReadsIntoIt) {
  auto owner = make_agent("owner", "ucx"), reader = make_agent("reader", "ucx");
  const size_t n = 64 << 20;
  std::vector<uint8_t> src(n), dst(n);
  fill(src, 21);
  auto rs = owner->register_memory(src.data(), n);
  ASSERT_TRUE(rs.ok());
  ::setenv("BATON_XFER_NO_CMA", "1", 1);  // read when the session is made
  auto s = reader->connect(owner->describe());
  ::unsetenv("BATON_XFER_NO_CMA");
  ASSERT_TRUE(s.ok()) << s.error();
  if ((*s)->transport() != "ucx") GTEST_SKIP() << "UCX is not available";
  int in_flight = 0;
  for (unsigned round = 0; round < 3; ++round) {
    std::fill(dst.begin(), dst.end(), 0);
    auto rd = reader->register_memory(dst.data(), n);
    ASSERT_TRUE(rd.ok());
    auto id = (*s)->read(mixed_ops(rd->region, rs->region, n, 50 + round));
    ASSERT_TRUE(id.ok()) << id.error();
    in_flight += (*s)->poll(*id) == TransferState::kPending;
    ASSERT_TRUE(reader->deregister_memory(rd->region).ok());
    EXPECT_NE((*s)->poll(*id), TransferState::kPending) << "deregister_memory returned with a read into it in flight";
    EXPECT_TRUE((*s)->wait(*id).ok());
    EXPECT_EQ(checksum(dst.data(), n), checksum(src.data(), n));
  }
  EXPECT_GT(in_flight, 0) << "no read was in flight when its destination was deregistered: nothing was checked";
}

// Without "tcp" in its transports (--kv-transfer-config "transport": "ucx") an agent never moves
// bytes over TCP: a peer UCX cannot reach is refused at connect, and without UCX the agent is not
// created; a peer with UCX is read as usual.
TEST(XferTransportTest, UcxOnlyNeverFallsBackToTcp) {
  Agent::Config c;
  c.name = "strict";
  c.token = kTestToken;
  c.transports = {"ucx", "cuda_ipc"};
  auto strict = Agent::create(c);
  if (!strict.ok() && strict.error().find("UCX unavailable") != std::string::npos) GTEST_SKIP() << strict.error();
  ASSERT_TRUE(strict.ok()) << strict.error();
  auto tcp_peer = make_agent("tcp-peer", "tcp"), ucx_peer = make_agent("ucx-peer", "ucx");
  auto refused = (*strict)->connect(tcp_peer->describe());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().find("the peer has no UCX"), std::string::npos) << refused.error();
  EXPECT_NE(refused.error().find("TCP is not allowed"), std::string::npos) << refused.error();

  std::vector<uint8_t> src(1 << 20), dst(1 << 20, 0);
  fill(src, 31);
  auto rs = ucx_peer->register_memory(src.data(), src.size());
  auto rd = (*strict)->register_memory(dst.data(), dst.size());
  ASSERT_TRUE(rs.ok() && rd.ok());
  auto s = (*strict)->connect(ucx_peer->describe());
  ASSERT_TRUE(s.ok()) << s.error();
  EXPECT_EQ((*s)->transport(), "ucx");
  auto id = (*s)->read(mixed_ops(rd->region, rs->region, src.size(), 31));
  ASSERT_TRUE(id.ok()) << id.error();
  ASSERT_TRUE((*s)->wait(*id).ok());
  EXPECT_EQ(dst, src);

  ::setenv("BATON_XFER_NO_UCX", "1", 1);
  c.name = "strict-without-ucx";
  auto none = Agent::create(c);
  // The variable is named only where it took UCX away.
  Agent::Config gpu_only = c;
  gpu_only.name = "gpu-only";
  gpu_only.transports = {"cuda_ipc"};
  auto neither = Agent::create(gpu_only);
  ::unsetenv("BATON_XFER_NO_UCX");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().find("BATON_XFER_NO_UCX"), std::string::npos) << none.error();
  ASSERT_FALSE(neither.ok());
  EXPECT_NE(neither.error().find("neither ucx nor tcp"), std::string::npos) << neither.error();
  EXPECT_EQ(neither.error().find("BATON_XFER_NO_UCX"), std::string::npos) << neither.error();
}

// Stands in for cuda_ipc where there is no GPU: its "GPU" regions are host memory. By default
// every peer is on another host (connect fails), so GPU ranges take the TCP path, staged through
// host buffers; with same_host set, agents of this process connect and copy each other's "GPU"
// regions directly, as cuda_ipc does. It counts what it staged and can be told to fail copies.
class StagingDouble : public RmaTransport {
 public:
  struct Counters {
    std::atomic<uint64_t> to_host{0}, from_host{0}, direct{0};
    std::atomic<int> fail_copies{0};  // the next this many copies fail
    bool same_host = false;
  };
  explicit StagingDouble(Counters* c) : c_(c) {}
  const char* name() const override { return "cuda_ipc"; }
  Result<std::string> register_region(uint64_t, void*, size_t, MemoryKind kind) override {
    if (kind != MemoryKind::kCuda) return make_error("GPU memory only");
    return std::string("{}");
  }
  void deregister_region(uint64_t) override {}
  std::string address() const override { return "a host of its own"; }
  Result<std::unique_ptr<RmaEndpoint>> connect(const std::string&) override {
    if (!c_->same_host) return make_error("cuda_ipc needs both agents on one host");
    return std::unique_ptr<RmaEndpoint>(std::make_unique<Endpoint>(c_));
  }
  Status copy_to_host(void* host, const void* src, size_t n) override {
    if (c_->fail_copies.fetch_sub(1) > 0) return make_error("device lost");
    std::memcpy(host, src, n);
    c_->to_host += n;
    return {};
  }
  Status copy_from_host(void* dst, const void* host, size_t n) override {
    if (c_->fail_copies.fetch_sub(1) > 0) return make_error("device lost");
    std::memcpy(dst, host, n);
    c_->from_host += n;
    return {};
  }

 private:
  // The peer's "GPU" regions, read and written in place (both agents live in this process).
  class Endpoint : public RmaEndpoint {
   public:
    explicit Endpoint(Counters* c) : c_(c) {}
    Status add_region(const MemoryDesc& remote) override {
      if (remote.kind != MemoryKind::kCuda) return make_error("region ", remote.region, " is not GPU memory");
      regions_.insert(remote.region);
      return {};
    }
    void remove_region(uint64_t region) override { regions_.erase(region); }
    Result<uint64_t> start(const std::vector<RmaOp>& ops, bool write) override {
      for (const RmaOp& op : ops)
        if (!regions_.count(op.remote_region))
          return make_error("no CUDA IPC key for remote region ", op.remote_region);
      for (const RmaOp& op : ops) {
        auto* remote = reinterpret_cast<void*>(op.remote_address);
        write ? std::memcpy(remote, op.local, op.length) : std::memcpy(op.local, remote, op.length);
        c_->direct += op.length;
      }
      return kDone;
    }
    TransferState poll(uint64_t, std::string*) override { return TransferState::kDone; }
    void release(uint64_t) override {}

   private:
    Counters* c_;
    std::set<uint64_t> regions_;
  };
  Counters* c_;
};

std::unique_ptr<Agent> make_staging_agent(const std::string& name, const std::string& transport,
                                          StagingDouble::Counters* c) {
  Agent::Config cfg;
  cfg.name = name;
  cfg.token = kTestToken;
  cfg.transports = transports_for(transport);
  if (c->same_host) cfg.transports.insert(cfg.transports.begin(), "cuda_ipc");  // (tcp alone leaves it out)
  cfg.gpu_transport = [c]() -> Result<std::unique_ptr<RmaTransport>> {
    return std::unique_ptr<RmaTransport>(std::make_unique<StagingDouble>(c));
  };
  auto a = Agent::create(cfg);
  EXPECT_TRUE(a.ok()) << (a.ok() ? "" : a.error());
  return a.ok() ? std::move(*a) : nullptr;
}

// GPU memory of agents on different hosts (no cuda_ipc between them), told to use TCP alone
// ("transport": "tcp"), moves over TCP, staged through host memory on each side: GPU -> host,
// GPU -> GPU, host and GPU ranges in one batch, ranges larger than the staging buffer, and writes.
TEST(XferStagingTest, GpuMemoryOfAnotherHostIsStagedOverTcp) {
  const std::string transport = "tcp";
  StagingDouble::Counters oc, rc;
  auto owner = make_staging_agent("owner", transport, &oc), reader = make_staging_agent("reader", transport, &rc);
  ASSERT_TRUE(owner && reader);
  const size_t n = 24 << 20;
  std::vector<uint8_t> src(n), host_dst(n, 0), gpu_dst(n, 0);
  fill(src, 21);
  auto rs = owner->register_memory(src.data(), n, MemoryKind::kCuda);
  auto rh = reader->register_memory(host_dst.data(), n);
  auto rg = reader->register_memory(gpu_dst.data(), n, MemoryKind::kCuda);
  ASSERT_TRUE(rs.ok() && rh.ok() && rg.ok());
  auto session = reader->connect(owner->describe());
  ASSERT_TRUE(session.ok()) << session.error();
  auto read = [&](const std::vector<TransferOp>& ops) {
    auto id = (*session)->read(ops);
    ASSERT_TRUE(id.ok()) << id.error();
    Status st = (*session)->wait(*id);
    ASSERT_TRUE(st.ok()) << st.message();
  };
  // Owner's GPU -> reader's host: only the owner stages.
  read(mixed_ops(rh->region, rs->region, n, 3));
  EXPECT_EQ(checksum(host_dst.data(), n), checksum(src.data(), n));
  EXPECT_EQ(oc.to_host.load(), n);
  EXPECT_EQ(rc.from_host.load(), 0u);
  // GPU -> GPU, one 9 MiB range (more than a staging buffer) and the rest in pieces.
  std::vector<TransferOp> ops{{rg->region, 0, rs->region, 0, 9 << 20}};
  for (const TransferOp& op : mixed_ops(rg->region, rs->region, n - (9 << 20), 4))
    ops.push_back(
        {op.local_region, op.local_offset + (9 << 20), op.remote_region, op.remote_offset + (9 << 20), op.length});
  read(ops);
  EXPECT_EQ(checksum(gpu_dst.data(), n), checksum(src.data(), n));
  EXPECT_EQ(rc.from_host.load(), n);
  // One batch into host and GPU ranges alternately.
  std::fill(host_dst.begin(), host_dst.end(), 0);
  std::fill(gpu_dst.begin(), gpu_dst.end(), 0);
  std::vector<TransferOp> mixed = mixed_ops(rh->region, rs->region, n, 5);
  for (size_t i = 0; i < mixed.size(); i += 2) mixed[i].local_region = rg->region;
  read(mixed);
  for (const TransferOp& op : mixed) {
    const uint8_t* got = (op.local_region == rg->region ? gpu_dst.data() : host_dst.data()) + op.local_offset;
    ASSERT_EQ(checksum(got, op.length), checksum(src.data() + op.remote_offset, op.length)) << op.local_offset;
  }
  // Writes: reader's GPU -> owner's GPU, then read back into the host.
  fill(gpu_dst, 22);
  auto w = (*session)->write(mixed_ops(rg->region, rs->region, n, 6));
  ASSERT_TRUE(w.ok()) << w.error();
  ASSERT_TRUE((*session)->wait(*w).ok());
  EXPECT_EQ(checksum(src.data(), n), checksum(gpu_dst.data(), n));
  // Bounds are still checked on both sides.
  EXPECT_FALSE((*session)->read({{rg->region, 0, rs->region, n - 8, 64}}).ok());
}

// On one host GPU ranges move directly (cuda_ipc), which reaches only the peer's GPU regions: a
// batch that also reads the peer's host memory into GPU memory takes the staged TCP path.
TEST(XferStagingTest, BatchesWithPeerHostMemoryLeaveCudaIpcForStaging) {
  const std::string transport = "tcp";
  const size_t n = 4 << 20;
  // Declared before the agents, so they outlive the owner's serving thread, which sends from them.
  std::vector<uint8_t> gpu_src(n), host_src(n), dst(2 * n, 0);
  StagingDouble::Counters oc, rc;
  oc.same_host = rc.same_host = true;
  auto owner = make_staging_agent("owner", transport, &oc), reader = make_staging_agent("reader", transport, &rc);
  ASSERT_TRUE(owner && reader);
  fill(gpu_src, 31);
  fill(host_src, 32);
  auto rg = owner->register_memory(gpu_src.data(), n, MemoryKind::kCuda);
  auto rh = owner->register_memory(host_src.data(), n);
  auto rd = reader->register_memory(dst.data(), 2 * n, MemoryKind::kCuda);
  ASSERT_TRUE(rg.ok() && rh.ok() && rd.ok());
  auto session = reader->connect(owner->describe());
  ASSERT_TRUE(session.ok()) << session.error();
  // GPU to GPU: directly.
  auto id = (*session)->read(mixed_ops(rd->region, rg->region, n, 33));
  ASSERT_TRUE(id.ok()) << id.error();
  ASSERT_TRUE((*session)->wait(*id).ok());
  EXPECT_EQ(checksum(dst.data(), n), checksum(gpu_src.data(), n));
  EXPECT_EQ(rc.direct.load(), n);
  EXPECT_EQ(oc.to_host.load() + rc.from_host.load(), 0u);
  // The peer's GPU and host memory in one batch: staged over TCP.
  std::fill(dst.begin(), dst.end(), 0);
  std::vector<TransferOp> ops = mixed_ops(rd->region, rg->region, n, 34);
  for (const TransferOp& op : mixed_ops(rd->region, rh->region, n, 35))
    ops.push_back({op.local_region, op.local_offset + n, op.remote_region, op.remote_offset, op.length});
  id = (*session)->read(ops);
  ASSERT_TRUE(id.ok()) << id.error();
  Status st = (*session)->wait(*id);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(checksum(dst.data(), n), checksum(gpu_src.data(), n));
  EXPECT_EQ(checksum(dst.data() + n, n), checksum(host_src.data(), n));
  EXPECT_EQ(rc.from_host.load(), 2 * n);
  EXPECT_EQ(oc.to_host.load(), n);
}

// A failed staging copy on the reader fails that transfer with the copy's error; the session
// stays in step and moves the next batch. One on the owner drops the session; a new one works.
TEST(XferStagingTest, FailedStagingCopiesAreErrors) {
  const std::string transport = "tcp";
  StagingDouble::Counters oc, rc;
  auto owner = make_staging_agent("owner", transport, &oc), reader = make_staging_agent("reader", transport, &rc);
  ASSERT_TRUE(owner && reader);
  const size_t n = 12 << 20;
  std::vector<uint8_t> src(n), dst(n, 0);
  fill(src, 23);
  auto rs = owner->register_memory(src.data(), n, MemoryKind::kCuda);
  auto rd = reader->register_memory(dst.data(), n, MemoryKind::kCuda);
  ASSERT_TRUE(rs.ok() && rd.ok());
  auto session = reader->connect(owner->describe());
  ASSERT_TRUE(session.ok()) << session.error();
  rc.fail_copies = 1;
  auto id = (*session)->read(mixed_ops(rd->region, rs->region, n, 7));
  ASSERT_TRUE(id.ok()) << id.error();
  Status st = (*session)->wait(*id);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("device lost"), std::string::npos) << st.message();
  id = (*session)->read(mixed_ops(rd->region, rs->region, n, 8));
  ASSERT_TRUE(id.ok()) << id.error();
  ASSERT_TRUE((*session)->wait(*id).ok());
  EXPECT_EQ(checksum(dst.data(), n), checksum(src.data(), n));

  oc.fail_copies = 1;
  id = (*session)->read(mixed_ops(rd->region, rs->region, n, 9));
  ASSERT_TRUE(id.ok()) << id.error();
  EXPECT_FALSE((*session)->wait(*id).ok());
  EXPECT_TRUE((*session)->broken());
  auto again = reader->connect(owner->describe());
  ASSERT_TRUE(again.ok()) << again.error();
  std::fill(dst.begin(), dst.end(), 0);
  id = (*again)->read(mixed_ops(rd->region, rs->region, n, 10));
  ASSERT_TRUE(id.ok()) << id.error();
  ASSERT_TRUE((*again)->wait(*id).ok());
  EXPECT_EQ(checksum(dst.data(), n), checksum(src.data(), n));
}

// By default (UCX allowed) GPU memory never takes the staged TCP path: what neither cuda_ipc
// nor UCX can reach (here: the double's GPU regions of another host, which UCX without CUDA did
// not register) is refused with an error that says how to stage it; nothing is copied. On one
// host the double's GPU regions are still read directly.
TEST(XferStagingTest, AgentsWithUcxNeverStageGpuMemory) {
  const size_t n = 1 << 20;
  std::vector<uint8_t> src(n), dst(n, 0);
  fill(src, 41);
  for (bool same_host : {false, true}) {
    StagingDouble::Counters oc, rc;
    oc.same_host = rc.same_host = same_host;
    auto owner = make_staging_agent("owner", "ucx", &oc), reader = make_staging_agent("reader", "ucx", &rc);
    ASSERT_TRUE(owner && reader);
    auto rs = owner->register_memory(src.data(), n, MemoryKind::kCuda);
    auto rd = reader->register_memory(dst.data(), n, MemoryKind::kCuda);
    ASSERT_TRUE(rs.ok() && rd.ok());
    auto session = reader->connect(owner->describe());
    ASSERT_TRUE(session.ok()) << session.error();
    auto id = (*session)->read(mixed_ops(rd->region, rs->region, n, 42));
    if (same_host) {
      ASSERT_TRUE(id.ok()) << id.error();
      ASSERT_TRUE((*session)->wait(*id).ok());
      EXPECT_EQ(dst, src);
      EXPECT_EQ(rc.direct.load(), n);
    } else {
      ASSERT_FALSE(id.ok());
      EXPECT_NE(id.error().find("out of reach"), std::string::npos) << id.error();
      EXPECT_NE(id.error().find("\"transport\": \"tcp\""), std::string::npos) << id.error();
    }
    EXPECT_EQ(oc.to_host.load() + rc.from_host.load(), 0u) << "same host: " << same_host;
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, XferTest, ::testing::Values("tcp", "ucx"));

TEST(XferCoalesceTest, ContiguousOpsMerge) {
  std::vector<TransferOp> ops = {{1, 0, 2, 100, 10}, {1, 10, 2, 110, 10}, {1, 20, 2, 200, 10}, {1, 30, 3, 210, 10}};
  auto c = coalesce(ops);
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c[0].length, 20u);
  EXPECT_EQ(c[1].remote_offset, 200u);
  // Blocks listed last to first (ids handed out from a free list's tail) merge as well.
  std::vector<TransferOp> down;
  for (uint64_t b = 8; b-- > 0;) down.push_back({1, 1000 + 16 * b, 2, 5000 + 16 * b, 16});
  down.push_back({1, 0, 2, 0, 16});  // and a range apart
  c = coalesce(down);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].remote_offset, 0u);
  EXPECT_EQ(c[1].local_offset, 1000u);
  EXPECT_EQ(c[1].remote_offset, 5000u);
  EXPECT_EQ(c[1].length, 128u);
  // Adjacent on one side only: not merged.
  c = coalesce({{1, 0, 2, 16, 16}, {1, 16, 2, 0, 16}});
  EXPECT_EQ(c.size(), 2u);
}

// ---- against a peer process -------------------------------------------------------------------

struct PeerProcess {
  pid_t pid = -1;
  AgentDesc agent;
  MemoryDesc region;

  static std::optional<PeerProcess> spawn(std::vector<std::string> args) {
    int out[2];
    if (pipe(out) != 0) return std::nullopt;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    std::string bin = std::string(BATON_BINARY_DIR) + "/tests/xfer_peer";
    if (std::find(args.begin(), args.end(), "--token") == args.end()) args.insert(args.end(), {"--token", kTestToken});
    args.insert(args.begin(), bin);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    PeerProcess p;
    const int spawned = posix_spawn(&p.pid, bin.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (spawned != 0) return std::nullopt;
    close(out[1]);
    FILE* f = fdopen(out[0], "r");
    char line[8192];
    // The peer's description is its first JSON line; UCX logs to stdout too (warnings, or all of
    // it at UCX_LOG_LEVEL=debug), so other lines are skipped.
    bool got = false;
    while (!got && fgets(line, sizeof line, f) != nullptr) got = line[0] == '{';
    fclose(f);
    if (!got) return std::nullopt;
    Json j = Json::parse(line);
    p.agent = *AgentDesc::from_json(j["agent"]);
    p.region = *MemoryDesc::from_json(j["region"]);
    return p;
  }
  void kill(int sig = SIGKILL) {
    if (pid > 0) ::kill(pid, sig);
  }
  void kill_and_reap() {  // returns once the process is gone
    kill();
    if (pid > 0) waitpid(pid, nullptr, 0);
    pid = -1;
  }
  ~PeerProcess() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  PeerProcess() = default;
  PeerProcess(PeerProcess&& o) noexcept : pid(o.pid), agent(o.agent), region(o.region) { o.pid = -1; }
};

uint64_t pattern_checksum(size_t bytes, int64_t seed) {
  std::vector<uint64_t> buf = testing::pattern(bytes, seed);
  return checksum(reinterpret_cast<const uint8_t*>(buf.data()), bytes);
}

TEST_P(XferTest, OneGibReadAndWrittenAcrossProcessesWithChecksums) {
  const std::string transport = GetParam();
  // The ASan run moves 256 MiB each way: the same ops and code paths, a quarter of the 28 s.
  const size_t n = std::getenv("BATON_SANITIZER_RUN") ? size_t{256} << 20 : size_t{1} << 30;
  auto peer = PeerProcess::spawn({"--bytes", std::to_string(n), "--transports", transport, "--seed", "5"});
  ASSERT_TRUE(peer);
  auto reader = make_agent("reader", transport);
  std::vector<uint8_t> dst(n);
  auto rd = reader->register_memory(dst.data(), n);
  auto s = reader->connect(peer->agent);
  ASSERT_TRUE(s.ok()) << s.error();
  auto id = (*s)->read(mixed_ops(rd->region, peer->region.region, n, 21));
  ASSERT_TRUE(id.ok()) << id.error();
  ASSERT_TRUE((*s)->wait(*id, 60s).ok());
  EXPECT_EQ(checksum(dst.data(), n), pattern_checksum(n, 5));

  // Write 1 GiB of another pattern into the peer, read it back into a second buffer.
  std::vector<uint8_t> src(n), back(n, 0);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = (i * 0x9E3779B97F4A7C15ull) ^ 0xABCDEF;
    std::memcpy(src.data() + i, &v, 8);
  }
  auto rsrc = reader->register_memory(src.data(), n);
  auto rback = reader->register_memory(back.data(), n);
  ASSERT_TRUE(rsrc.ok() && rback.ok());
  auto w = (*s)->write(mixed_ops(rsrc->region, peer->region.region, n, 22));
  ASSERT_TRUE(w.ok()) << w.error();
  ASSERT_TRUE((*s)->wait(*w, 60s).ok());
  auto r2 = (*s)->read(mixed_ops(rback->region, peer->region.region, n, 23));
  ASSERT_TRUE(r2.ok());
  ASSERT_TRUE((*s)->wait(*r2, 60s).ok());
  EXPECT_EQ(checksum(back.data(), n), checksum(src.data(), n));
  ASSERT_TRUE((*s)->notify("exit").ok());
}

TEST_P(XferTest, PeerKilledMidBatchFailsWithinTheTimeout) {
  const std::string transport = GetParam();
  // Reads of a same-host peer's ordinary memory finish inside read() through cross-memory attach
  // (PeerKilledIsAnErrorThroughCma); UCX's own get/put keeps batches in flight when the peer dies.
  ::setenv("BATON_XFER_NO_CMA", "1", 1);
  const size_t n = size_t{512} << 20;
  auto peer = PeerProcess::spawn({"--bytes", std::to_string(n), "--transports", transport});
  ASSERT_TRUE(peer);
  auto reader = make_agent("reader", transport, kTestToken, 3s);
  std::vector<uint8_t> dst(n);
  auto rd = reader->register_memory(dst.data(), n);
  auto s = reader->connect(peer->agent);
  ASSERT_TRUE(s.ok());
  std::vector<TransferId> ids;
  for (int rep = 0; rep < 8; ++rep) {
    auto id = (*s)->read(mixed_ops(rd->region, peer->region.region, n, 30 + rep));
    if (id.ok()) ids.push_back(*id);
  }
  peer->kill();
  const auto t0 = Clock::now();
  int failed = 0;
  for (TransferId id : ids) failed += !(*s)->wait(id).ok();
  const auto took = Clock::now() - t0;
  EXPECT_GT(failed, 0) << "no transfer noticed the dead peer";
  EXPECT_LT(took, 3s * 8 + 2s);
  // A new peer process and a new session work.
  auto peer2 = PeerProcess::spawn({"--bytes", std::to_string(1 << 20), "--transports", transport, "--name", "peer2"});
  ASSERT_TRUE(peer2);
  auto s2 = reader->connect(peer2->agent);
  ASSERT_TRUE(s2.ok()) << s2.error();
  EXPECT_EQ((*s2)->transport(), transport) << "the dead peer took UCX away from new sessions";
  auto id2 = (*s2)->read({{rd->region, 0, peer2->region.region, 0, 1 << 20}});
  ASSERT_TRUE(id2.ok());
  EXPECT_TRUE((*s2)->wait(*id2).ok());
}

// Same host, ordinary registered memory, UCX: the reader copies through CMA, one system call per
// batch, with exact bytes. A read of a peer that has died is an error at once, and a new session
// to a new peer works.
TEST(XferCmaTest, PeerKilledIsAnErrorThroughCma) {
  const size_t n = size_t{64} << 20;
  auto peer = PeerProcess::spawn({"--bytes", std::to_string(n), "--transports", "ucx"});
  ASSERT_TRUE(peer);
  auto reader = make_agent("reader", "ucx", kTestToken, 3s);
  std::vector<uint8_t> dst(n);
  auto rd = reader->register_memory(dst.data(), n);
  auto s = reader->connect(peer->agent);
  ASSERT_TRUE(s.ok());
  auto id = (*s)->read(mixed_ops(rd->region, peer->region.region, n, 50));
  ASSERT_TRUE(id.ok()) << id.error();
  // Copied inside read() (through UCX the 64 MiB would still be moving).
  EXPECT_EQ((*s)->poll(*id), TransferState::kDone) << "the batch did not go through CMA";
  ASSERT_TRUE((*s)->wait(*id).ok());
  EXPECT_EQ(checksum(dst.data(), n), pattern_checksum(n, 1));  // xfer_peer's default seed
  peer->kill_and_reap();
  const auto t0 = Clock::now();
  auto after = (*s)->read(mixed_ops(rd->region, peer->region.region, n, 51));
  Status st = after.ok() ? (*s)->wait(*after) : Status(Error{after.error()});
  ASSERT_FALSE(st.ok());
  EXPECT_LT(Clock::now() - t0, 3s + 2s);
  // The control connection's close usually reports it first; else the CMA copy fails (ESRCH).
  EXPECT_TRUE(st.message().find("broken") != std::string::npos || st.message().find("process") != std::string::npos)
      << st.message();
  auto peer2 = PeerProcess::spawn({"--bytes", std::to_string(1 << 20), "--transports", "ucx", "--name", "peer2"});
  ASSERT_TRUE(peer2);
  auto s2 = reader->connect(peer2->agent);
  ASSERT_TRUE(s2.ok()) << s2.error();
  EXPECT_EQ((*s2)->transport(), "ucx") << "the dead peer took UCX away from new sessions";
  auto id2 = (*s2)->read({{rd->region, 0, peer2->region.region, 0, 1 << 20}});
  ASSERT_TRUE(id2.ok()) << id2.error();
  EXPECT_TRUE((*s2)->wait(*id2).ok());
}

// The UCX endpoint trusts a peer's pid for cross-memory attach only when the cookie the peer
// published in its address reads back from that pid: with a forged cookie (as if the pid named
// some other process) the endpoint stays on UCX's own get, and the bytes still arrive.
TEST(XferCmaTest, ForgedCookieFallsBackToUcx) {
  auto owner = create_ucx_transport(), reader = create_ucx_transport();
  if (!owner.ok() || !reader.ok()) GTEST_SKIP() << "UCX is not available";
  std::vector<uint8_t> src(1 << 20), dst(src.size());
  fill(src, 11);
  auto key = (*owner)->register_region(1, src.data(), src.size(), MemoryKind::kHost);
  ASSERT_TRUE(key.ok()) << key.error();
  MemoryDesc d;
  d.agent = "owner";
  d.region = 1;
  d.address = reinterpret_cast<uintptr_t>(src.data());
  d.length = src.size();
  d.keys = Json{{"ucx", *key}};
  const std::string genuine = (*owner)->address();
  ASSERT_NE(genuine.find(";cma="), std::string::npos) << "the address carries no CMA details";
  std::string forged = genuine;
  forged.back() = forged.back() == '0' ? '1' : '0';  // the cookie's last hex digit
  for (const bool forge : {false, true}) {
    SCOPED_TRACE(forge ? "forged cookie" : "genuine cookie");
    auto ep = (*reader)->connect(forge ? forged : genuine);
    ASSERT_TRUE(ep.ok()) << ep.error();
    ASSERT_TRUE((*ep)->add_region(d).ok());
    std::fill(dst.begin(), dst.end(), 0);
    auto h = (*ep)->start({{dst.data(), d.address, d.region, src.size()}}, false);
    ASSERT_TRUE(h.ok()) << h.error();
    if (!forge) {
      EXPECT_EQ(*h, RmaEndpoint::kDone);  // copied by CMA inside start()
    } else {
      EXPECT_NE(*h, RmaEndpoint::kDone);
      TransferState st = TransferState::kPending;
      for (const auto t0 = Clock::now(); st == TransferState::kPending && Clock::now() - t0 < 10s;) {
        (*ep)->progress();
        st = (*ep)->poll(*h, nullptr);
      }
      EXPECT_EQ(st, TransferState::kDone);
      (*ep)->release(*h);
    }
    EXPECT_EQ(dst, src);
  }
  (*owner)->deregister_region(1);
}

TEST_P(XferTest, StalledPeerTimesOut) {
  const std::string transport = GetParam();
  const size_t n = size_t{256} << 20;
  auto peer = PeerProcess::spawn({"--bytes", std::to_string(n), "--transports", transport});
  ASSERT_TRUE(peer);
  auto reader = make_agent("reader", transport, kTestToken, 2s);
  // With UCX a timed-out get may still land after the owner resumes (see agent.h): the
  // destination outlives the test, as a KV pool outlives its transfers.
  static std::vector<uint8_t> dst;
  dst.assign(n, 0);
  auto rd = reader->register_memory(dst.data(), n);
  auto s = reader->connect(peer->agent);
  ASSERT_TRUE(s.ok());
  peer->kill(SIGSTOP);  // alive but silent
  auto id = (*s)->read(mixed_ops(rd->region, peer->region.region, n, 40));
  const auto t0 = Clock::now();
  Status st = id.ok() ? (*s)->wait(*id) : Status(Error{id.error()});
  const auto took = Clock::now() - t0;
  peer->kill(SIGCONT);
  EXPECT_TRUE((*s)->broken() || st.ok());
  if (transport == "tcp") {
    EXPECT_FALSE(st.ok());  // the owner must serve TCP reads
    EXPECT_LT(took, 5s);
  } else {
    // Shared-memory RMA needs no help from the owner: a stopped owner may still be read.
    EXPECT_LT(took, 5s);
  }
}

// A read in flight from an owner that stopped answering (UCX without cross-memory attach needs
// the owner's progress thread) when the reader deregisters its destination: deregister_memory
// gives up on it after the agent's timeout, fails its session and says that the memory must be
// kept (UCX may still deliver the answer once the owner resumes); the read is an error. While it
// waits, the agent's other work goes on: registering memory does not wait for the timeout.
TEST(XferDeregisterTest, StalledReadIntoADeregisteredDestinationFailsItsSession) {
  const size_t n = size_t{64} << 20;
  // Without UCX's cma transport, which reads a stopped process's memory as well as a running
  // one's (one-sided), so that the stopped peer does stall the read.
  ::setenv("UCX_TLS", "^cma", 1);
  auto peer = PeerProcess::spawn({"--bytes", std::to_string(n), "--transports", "ucx"});
  ASSERT_TRUE(peer);
  std::vector<uint8_t> dst(n);  // outlives the agent, as deregister_memory's error asks
  auto reader = make_agent("reader", "ucx", kTestToken, 1s);
  ::unsetenv("UCX_TLS");
  auto rd = reader->register_memory(dst.data(), n);
  ASSERT_TRUE(rd.ok());
  ::setenv("BATON_XFER_NO_CMA", "1", 1);
  auto s = reader->connect(peer->agent);
  ::unsetenv("BATON_XFER_NO_CMA");
  ASSERT_TRUE(s.ok()) << s.error();
  if ((*s)->transport() != "ucx") GTEST_SKIP() << "UCX is not available";
  peer->kill(SIGSTOP);
  auto id = (*s)->read(mixed_ops(rd->region, peer->region.region, n, 60));
  ASSERT_TRUE(id.ok()) << id.error();
  ASSERT_EQ((*s)->poll(*id), TransferState::kPending);
  Status st;
  std::atomic<bool> returned{false};
  const auto t0 = Clock::now();
  Clock::duration took{};
  std::thread deregistering([&] {
    st = reader->deregister_memory(rd->region);
    took = Clock::now() - t0;
    returned = true;
  });
  const auto listed = [&] {
    for (const MemoryDesc& d : reader->regions())
      if (d.region == rd->region) return true;
    return false;
  };
  while (listed()) std::this_thread::sleep_for(1ms);  // it is waiting for the read now
  std::vector<uint8_t> other(4096);
  auto ro = reader->register_memory(other.data(), other.size());
  const bool registered_after = returned;
  deregistering.join();
  peer->kill(SIGCONT);
  ASSERT_TRUE(ro.ok()) << ro.error();
  EXPECT_FALSE(registered_after) << "register_memory waited for deregister_memory's wait for the stalled read";
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("keep the memory"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find(peer->agent.name), std::string::npos) << st.message();
  EXPECT_LT(took, 5s);
  EXPECT_TRUE((*s)->broken());
  Status read = (*s)->wait(*id);
  ASSERT_FALSE(read.ok());
  EXPECT_NE(read.message().find("deregistered"), std::string::npos) << read.message();
  // The failed session leaves UCX usable: a new peer gets a UCX session that reads.
  ::setenv("UCX_TLS", "^cma", 1);
  auto peer2 = PeerProcess::spawn({"--bytes", std::to_string(1 << 20), "--transports", "ucx", "--name", "peer2"});
  ::unsetenv("UCX_TLS");
  ASSERT_TRUE(peer2);
  auto s2 = reader->connect(peer2->agent);
  ASSERT_TRUE(s2.ok()) << s2.error();
  EXPECT_EQ((*s2)->transport(), "ucx") << "the stalled peer took UCX away from new sessions";
  auto id2 = (*s2)->read({{ro->region, 0, peer2->region.region, 0, other.size()}});
  ASSERT_TRUE(id2.ok()) << id2.error();
  EXPECT_TRUE((*s2)->wait(*id2).ok());
}

// The timeout is for a peer that stopped sending: a read that takes longer than it but keeps
// arriving completes (over TCP, 512 MiB take ~0.2 s here against a 100 ms timeout).
TEST(XferTimeoutTest, LongReadThatKeepsArrivingIsNotAStall) {
  auto owner = make_agent("owner", "tcp"), reader = make_agent("reader", "tcp");
  ASSERT_TRUE(owner && reader);
  const size_t n = size_t{512} << 20;
  std::vector<uint8_t> src(n), dst(n, 0);
  for (size_t i = 0; i < n; i += 4096) src[i] = static_cast<uint8_t>(i >> 12);
  auto rs = owner->register_memory(src.data(), n);
  auto rd = reader->register_memory(dst.data(), n);
  ASSERT_TRUE(rs.ok() && rd.ok());
  auto session = reader->connect(owner->describe());
  ASSERT_TRUE(session.ok()) << session.error();
  auto id = (*session)->read({{rd->region, 0, rs->region, 0, n}});
  ASSERT_TRUE(id.ok()) << id.error();
  Status st = (*session)->wait(*id, 100ms);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(checksum(dst.data(), n), checksum(src.data(), n));
}

#if BATON_HAS_CUDA
// GPU memory of another process, read into our GPU memory through cuda_ipc (GPU machines only).
TEST(CudaIpcTest, ReadsGpuMemoryOfAnotherProcess) {
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) GTEST_SKIP() << "no CUDA device";
  const size_t n = size_t{256} << 20;
  auto peer = PeerProcess::spawn({"--bytes", std::to_string(n), "--cuda", "--seed", "9"});
  ASSERT_TRUE(peer);
  ASSERT_EQ(peer->region.kind, MemoryKind::kCuda);
  auto reader = make_agent("reader", "ucx");
  void* dst = nullptr;
  ASSERT_EQ(cudaMalloc(&dst, n), cudaSuccess);
  auto rd = reader->register_memory(dst, n, MemoryKind::kCuda);
  ASSERT_TRUE(rd.ok()) << rd.error();
  auto s = reader->connect(peer->agent);
  ASSERT_TRUE(s.ok()) << s.error();
  auto id = (*s)->read(mixed_ops(rd->region, peer->region.region, n, 77));
  ASSERT_TRUE(id.ok()) << id.error();
  ASSERT_TRUE((*s)->wait(*id, 30s).ok());
  std::vector<uint8_t> host(n);
  ASSERT_EQ(cudaMemcpy(host.data(), dst, n, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(checksum(host.data(), n), pattern_checksum(n, 9));
  // Eight batches in flight at once (only the newest goes without an event), waited for newest
  // first, then polled until done in issue order.
  ASSERT_EQ(cudaMemset(dst, 0, n), cudaSuccess);
  const std::vector<TransferOp> all = mixed_ops(rd->region, peer->region.region, n, 78);
  std::vector<TransferId> ids;
  for (size_t b = 0; b < 8; ++b) {
    std::vector<TransferOp> part(all.begin() + all.size() * b / 8, all.begin() + all.size() * (b + 1) / 8);
    auto pid = (*s)->read(part);
    ASSERT_TRUE(pid.ok()) << pid.error();
    ids.push_back(*pid);
  }
  ASSERT_TRUE((*s)->wait(ids.back(), 30s).ok());
  ids.pop_back();
  for (TransferId t : ids) {
    std::string err;
    TransferState st;
    while ((st = (*s)->poll(t, &err)) == TransferState::kPending) std::this_thread::yield();
    ASSERT_EQ(st, TransferState::kDone) << err;
    ASSERT_TRUE((*s)->wait(t, 30s).ok());
  }
  ASSERT_EQ(cudaMemcpy(host.data(), dst, n, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(checksum(host.data(), n), pattern_checksum(n, 9));
  // Out of bounds is refused before any copy.
  EXPECT_FALSE((*s)->read({{rd->region, 0, peer->region.region, n - 16, 64}}).ok());
  ASSERT_TRUE((*s)->notify("exit").ok());
  cudaFree(dst);
}

// GPU memory of another process read by UCX alone (no cuda_ipc transport of ours on either side),
// GPU memory into GPU memory: as UCX picks on one host (its own cuda_ipc), and as between hosts
// without RDMA (UCX_TLS=tcp,cuda_copy: UCX's tcp, its cuda_copy pipelining on both sides). With
// RDMA verbs UCX takes the same path through ucp_get_nbx on the same keys.
TEST(UcxGpuTest, ReadsGpuMemoryOfAnotherProcessThroughUcx) {
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) GTEST_SKIP() << "no CUDA device";
  const size_t n = size_t{64} << 20;
  for (const char* tls : {"", "tcp,cuda_copy"}) {
    SCOPED_TRACE(std::string("UCX_TLS=") + tls);
    if (*tls) ::setenv("UCX_TLS", tls, 1);
    auto peer = PeerProcess::spawn({"--bytes", std::to_string(n), "--cuda", "--seed", "11", "--transports", "ucx-only"});
    Agent::Config c;
    c.name = "reader";
    c.token = kTestToken;
    c.transports = {"ucx"};
    auto reader = Agent::create(c);
    ::unsetenv("UCX_TLS");
    ASSERT_TRUE(peer);
    ASSERT_TRUE(reader.ok()) << reader.error();
    ASSERT_EQ(peer->region.kind, MemoryKind::kCuda);
    ASSERT_TRUE(peer->region.keys.contains("ucx")) << "the peer's UCX did not register its GPU memory";
    EXPECT_FALSE(peer->region.keys.contains("cuda_ipc"));
    void* dst = nullptr;
    ASSERT_EQ(cudaMalloc(&dst, n), cudaSuccess);
    ASSERT_EQ(cudaMemset(dst, 0, n), cudaSuccess);
    auto rd = (*reader)->register_memory(dst, n, MemoryKind::kCuda);
    ASSERT_TRUE(rd.ok()) << rd.error();
    auto s = (*reader)->connect(peer->agent);
    ASSERT_TRUE(s.ok()) << s.error();
    EXPECT_EQ((*s)->transport(), "ucx");
    // Many gets in flight (ranges of 2 KiB .. 4 MiB), then a batch of single 16 KiB blocks.
    auto id = (*s)->read(mixed_ops(rd->region, peer->region.region, n, 79));
    ASSERT_TRUE(id.ok()) << id.error();
    ASSERT_TRUE((*s)->wait(*id, 60s).ok());
    std::vector<uint8_t> host(n);
    ASSERT_EQ(cudaMemcpy(host.data(), dst, n, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(checksum(host.data(), n), pattern_checksum(n, 11));
    EXPECT_FALSE((*s)->read({{rd->region, 0, peer->region.region, n - 16, 64}}).ok());
    ASSERT_TRUE((*s)->notify("exit").ok());
    ASSERT_TRUE((*reader)->deregister_memory(rd->region).ok());
    cudaFree(dst);
  }
}
#endif

}  // namespace
}  // namespace baton::xfer
