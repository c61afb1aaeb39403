// The control channel's gathered send and scattered receive (Socket::send_all / recv_all over
// a vector of iovec): every byte arrives in order whatever the parts' sizes and however the
// kernel splits the calls, and a peer that goes away is an error, not a hang.
#include "xfer/socket.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <climits>
#include <random>
#include <thread>

namespace baton::xfer {
namespace {

std::pair<Socket, Socket> socket_pair() {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  return {Socket(fds[0]), Socket(fds[1])};
}

// Cuts [0, total) into parts of random sizes (zero-length ones included) over `buf`.
std::vector<iovec> cut(std::vector<uint8_t>& buf, std::mt19937& rng, size_t max_part) {
  std::vector<iovec> parts;
  std::uniform_int_distribution<size_t> len(0, max_part);
  for (size_t at = 0; at < buf.size();) {
    const size_t n = std::min(len(rng), buf.size() - at);
    parts.push_back({buf.data() + at, n});
    at += n;
  }
  return parts;
}

TEST(XferSocketTest, GatheredSendAndScatteredReceiveMoveEveryByteInOrder) {
  auto [a, b] = socket_pair();
  std::mt19937 rng(5);
  // More parts than IOV_MAX, and parts larger than the socket buffer (partial sendmsg).
  std::vector<uint8_t> src(8 << 20), dst(src.size(), 0);
  for (auto& x : src) x = static_cast<uint8_t>(rng());
  auto send_parts = cut(src, rng, 3000);
  send_parts.insert(send_parts.begin() + 10, iovec{src.data(), 0});
  ASSERT_GT(send_parts.size(), size_t{IOV_MAX});
  auto recv_parts = cut(dst, rng, 1 << 20);  // other boundaries than the sender's
  Status sent;
  std::thread sender([&, &a = a] {
    sent = a.send_all(send_parts);
    a.shutdown();  // a receiver that wants more than was sent fails instead of waiting
  });
  const Status got = b.recv_all(recv_parts);
  sender.join();
  ASSERT_TRUE(sent.ok()) << sent.message();
  ASSERT_TRUE(got.ok()) << got.message();
  EXPECT_TRUE(src == dst);
}

TEST(XferSocketTest, PeerClosingMidReceiveIsAnError) {
  auto [a, b] = socket_pair();
  std::vector<uint8_t> half(1000, 7), buf(2000, 0);
  std::vector<iovec> send_parts{{half.data(), half.size()}};
  ASSERT_TRUE(a.send_all(send_parts).ok());
  a = Socket();  // closed after half of what the reader waits for
  std::vector<iovec> recv_parts{{buf.data(), 500}, {buf.data() + 500, 1500}};
  const Status st = b.recv_all(recv_parts);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("peer closed the connection"), std::string::npos) << st.message();
  EXPECT_EQ(buf[999], 7);  // what did arrive is in place
}

TEST(XferSocketTest, SendingToAClosedPeerIsAnError) {
  auto [a, b] = socket_pair();
  b = Socket();
  std::vector<uint8_t> data(1 << 20, 1);
  std::vector<iovec> parts{{data.data(), data.size()}};
  const Status st = a.send_all(parts);  // MSG_NOSIGNAL: an error, not SIGPIPE
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("send to peer failed"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace baton::xfer
