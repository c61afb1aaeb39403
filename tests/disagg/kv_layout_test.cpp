#include "disagg/kv_layout.h"

#include <gtest/gtest.h>

#include <cstring>

namespace baton {
namespace {

KvLayout layout(int tp, int kv_heads = 4) {
  KvLayout l;
  l.model = std::string("tiny-model");
  l.dtype = "bf16";
  l.block_size = 4;
  l.num_layers = 2;
  l.num_kv_heads = kv_heads;
  l.head_dim = 8;
  l.tp_size = tp;
  return l;
}

// A block of the whole model ([2][kv_heads][bs][D] bytes), each byte naming its (kv, head).
std::vector<uint8_t> global_block(const KvLayout& l) {
  const size_t hb = static_cast<size_t>(l.block_size) * l.head_dim * l.elem_bytes();
  std::vector<uint8_t> g(2 * l.num_kv_heads * hb);
  for (int kv = 0; kv < 2; ++kv)
    for (int h = 0; h < l.num_kv_heads; ++h)
      for (size_t i = 0; i < hb; ++i) g[(kv * l.num_kv_heads + h) * hb + i] = static_cast<uint8_t>(kv * 100 + h * 10 + i % 7);
  return g;
}

// Rank r's part of the global block, laid out [2][local heads][bs][D].
std::vector<uint8_t> rank_block(const KvLayout& l, int r) {
  const size_t hb = static_cast<size_t>(l.block_size) * l.head_dim * l.elem_bytes();
  auto g = global_block(l);
  auto [b, e] = l.heads_of(r);
  std::vector<uint8_t> out(l.block_bytes(r));
  for (int kv = 0; kv < 2; ++kv)
    for (int h = b; h < e; ++h)
      std::memcpy(&out[(kv * (e - b) + (h - b)) * hb], &g[(kv * l.num_kv_heads + h) * hb], hb);
  return out;
}

TEST(KvLayoutTest, HeterogeneousTpPlansRebuildEveryRanksSlice) {
  for (auto [ptp, dtp, heads] : std::vector<std::tuple<int, int, int>>{
           {1, 1, 4}, {2, 2, 4}, {2, 1, 4}, {1, 2, 4}, {4, 2, 4}, {2, 4, 4}, {1, 8, 4}, {8, 2, 4}, {2, 8, 2}}) {
    SCOPED_TRACE(concat("P tp ", ptp, " -> D tp ", dtp, ", kv heads ", heads));
    KvLayout src = layout(ptp, heads), dst = layout(dtp, heads);
    for (int d = 0; d < dtp; ++d) {
      std::vector<uint8_t> got(dst.block_bytes(d), 0xEE);
      for (const SliceCopy& c : plan_head_slices(src, dst, d)) {
        auto s = rank_block(src, c.src_rank);
        ASSERT_LE(c.src_offset + c.bytes, s.size());
        ASSERT_LE(c.dst_offset + c.bytes, got.size());
        std::memcpy(&got[c.dst_offset], &s[c.src_offset], c.bytes);
      }
      EXPECT_EQ(got, rank_block(dst, d)) << "dst rank " << d;
    }
  }
}

TEST(KvLayoutTest, SameTpIsOneRunPerKAndV) {
  auto plan = plan_head_slices(layout(2), layout(2), 1);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].src_rank, 1);
  EXPECT_EQ(plan[0].bytes + plan[1].bytes, layout(2).block_bytes(1));
}

TEST(KvLayoutTest, MismatchesAreRefusedNamingTheField) {
  KvLayout a = layout(1), b = layout(2);
  EXPECT_TRUE(a.compatible_with(b).ok());  // tp may differ
  b.dtype = "fp8_e4m3";
  EXPECT_EQ(a.compatible_with(b).message(), "KV layout mismatch: kv cache dtype is bf16 here but fp8_e4m3 on the peer");
  b = layout(1);
  b.block_size = 32;
  EXPECT_NE(a.compatible_with(b).message().find("block size"), std::string::npos);
  b = layout(1);
  b.head_dim = 16;
  EXPECT_NE(a.compatible_with(b).message().find("head_dim"), std::string::npos);
  b = layout(1);
  b.model = "other";
  EXPECT_NE(a.compatible_with(b).message().find("model"), std::string::npos);
  auto round = KvLayout::from_json(a.to_json());
  ASSERT_TRUE(round.ok());
  EXPECT_TRUE(a.compatible_with(*round).ok());
  Json bad = a.to_json();
  bad["tp_size"] = 3;
  EXPECT_FALSE(KvLayout::from_json(bad).ok());
}

}  // namespace
}  // namespace baton
