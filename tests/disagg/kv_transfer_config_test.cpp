// --kv-transfer-config's ucx_net_devices: one list for every rank, or one per rank; bad entries
// are refused with the key named.
#include "disagg/kv_transfer_config.h"

#include <gtest/gtest.h>

namespace baton {
namespace {

TEST(KvTransferConfigTest, UcxNetDevicesForEveryRankOrPerRank) {
  auto all = KvTransferConfig::parse(R"({"ucx_net_devices": "mlx5_0:1,mlx5_1:1"})");
  ASSERT_TRUE(all.ok()) << all.error();
  EXPECT_EQ(all->ucx_net_devices_for(0), "mlx5_0:1,mlx5_1:1");
  EXPECT_EQ(all->ucx_net_devices_for(3), "mlx5_0:1,mlx5_1:1");
  auto per_rank = KvTransferConfig::parse(R"({"ucx_net_devices": ["mlx5_0:1", "mlx5_3:1"]})");
  ASSERT_TRUE(per_rank.ok()) << per_rank.error();
  EXPECT_EQ(per_rank->ucx_net_devices_for(0), "mlx5_0:1");
  EXPECT_EQ(per_rank->ucx_net_devices_for(1), "mlx5_3:1");
  auto none = KvTransferConfig::parse(R"({"transport": "ucx"})");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->ucx_net_devices_for(0), "");
  for (const char* bad : {R"({"ucx_net_devices": ""})", R"({"ucx_net_devices": ["mlx5_0:1 mlx5_1:1"]})",
                          R"({"ucx_net_devices": 3})"}) {
    auto r = KvTransferConfig::parse(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.error().find("ucx_net_devices"), std::string::npos) << r.error();
  }
}

}  // namespace
}  // namespace baton
