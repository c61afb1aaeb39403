#include "engine/block_manager.h"

#include <gtest/gtest.h>

#include <numeric>

namespace baton {
namespace {

std::vector<int> iota_tokens(int n, int start = 0) {
  std::vector<int> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

TEST(BlockManagerTest, AccountingStaysExact) {
  BlockManager m(10, 16);
  std::vector<int32_t> a, b;
  EXPECT_TRUE(m.ensure_capacity(a, 17));  // 2 blocks
  EXPECT_EQ(a.size(), 2u);
  EXPECT_TRUE(m.ensure_capacity(a, 32));  // still 2
  EXPECT_EQ(a.size(), 2u);
  EXPECT_TRUE(m.ensure_capacity(b, 16 * 8));
  EXPECT_EQ(m.num_free(), 0);
  EXPECT_FALSE(m.ensure_capacity(a, 33));  // no room: unchanged
  EXPECT_EQ(a.size(), 2u);
  EXPECT_EQ(m.num_free() + m.num_used(), m.num_total());
  m.release(b);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(m.num_free(), 8);
  m.release(a);
  EXPECT_EQ(m.num_free(), 10);
}

TEST(BlockManagerTest, SharedPrefixIsReusedAndRefCounted) {
  BlockManager m(16, 4);
  auto tokens = iota_tokens(10);  // 2 full blocks + 2 tokens
  std::vector<int32_t> a;
  std::vector<uint64_t> ha;
  EXPECT_EQ(m.take_cached_prefix(tokens, a, ha), 0);
  ASSERT_TRUE(m.ensure_capacity(a, 10));
  m.publish_full_blocks(tokens, 10, a, ha);
  EXPECT_EQ(ha.size(), 2u);

  std::vector<int32_t> b;
  std::vector<uint64_t> hb;
  EXPECT_EQ(m.take_cached_prefix(tokens, b, hb), 8);
  EXPECT_EQ(b, std::vector<int32_t>(a.begin(), a.begin() + 2));
  EXPECT_EQ(m.ref_count(a[0]), 2);
  EXPECT_EQ(m.counters().prefix_hits, 2u);

  // A different second block shares only the first.
  auto other = tokens;
  other[5] = 99;
  std::vector<int32_t> c;
  std::vector<uint64_t> hc;
  EXPECT_EQ(m.take_cached_prefix(other, c, hc), 4);

  m.release(a);
  m.release(b);
  m.release(c);
  EXPECT_EQ(m.num_free(), 16);
  // Released but cached: still reusable until recycled.
  std::vector<int32_t> d;
  std::vector<uint64_t> hd;
  EXPECT_EQ(m.take_cached_prefix(tokens, d, hd), 8);
  m.release(d);
}

TEST(BlockManagerTest, AlwaysLeavesOneTokenToCompute) {
  BlockManager m(8, 4);
  auto tokens = iota_tokens(8);  // exactly 2 blocks
  std::vector<int32_t> a;
  std::vector<uint64_t> ha;
  ASSERT_TRUE(m.ensure_capacity(a, 8));
  m.publish_full_blocks(tokens, 8, a, ha);
  std::vector<int32_t> b;
  std::vector<uint64_t> hb;
  EXPECT_EQ(m.take_cached_prefix(tokens, b, hb), 4);  // the last block is recomputed for logits
  m.release(a);
  m.release(b);
}

TEST(BlockManagerTest, CachedBlocksAreRecycledWhenNeeded) {
  BlockManager m(4, 4);
  auto tokens = iota_tokens(16);
  std::vector<int32_t> a;
  std::vector<uint64_t> ha;
  ASSERT_TRUE(m.ensure_capacity(a, 16));
  m.publish_full_blocks(tokens, 16, a, ha);
  m.release(a);
  EXPECT_EQ(m.num_free(), 4);
  std::vector<int32_t> b;
  ASSERT_TRUE(m.ensure_capacity(b, 16));  // takes every block, evicting the cached ones
  EXPECT_EQ(m.counters().evictions, 4u);
  m.release(b);
  std::vector<int32_t> c;
  std::vector<uint64_t> hc;
  EXPECT_EQ(m.take_cached_prefix(tokens, c, hc), 0);  // nothing of the old prefix is left
}

}  // namespace
}  // namespace baton
