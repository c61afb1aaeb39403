#include "proxy/relay_plan.h"

#include <gtest/gtest.h>

namespace baton::proxy {
namespace {

TEST(RelayPlanTest, PrefillGetsOneTokenAndDecodeTheOriginalWithParams) {
  auto plan =
      plan_relay(R"({"prompt":"hi","max_tokens":20,"stream":true,"stream_options":{"include_usage":true}})", false);
  ASSERT_TRUE(plan.ok()) << plan.error();
  Json p = Json::parse(plan->prefill_body);
  EXPECT_EQ(p["max_tokens"], 1);
  EXPECT_EQ(p["stream"], false);
  EXPECT_FALSE(p.contains("stream_options"));
  EXPECT_EQ(p["kv_transfer_params"]["do_remote_decode"], true);
  EXPECT_EQ(plan->decode_cost, plan->prompt_cost + 20);
  Json d = Json::parse(decode_body(*plan, {{"transfer_id", "t1"}}));
  EXPECT_EQ(d["max_tokens"], 20);
  EXPECT_EQ(d["stream"], true);
  EXPECT_EQ(d["kv_transfer_params"]["transfer_id"], "t1");
}

TEST(RelayPlanTest, DeepNestingIsRefusedBeforeAnythingRecursesOnIt) {
  // 100,000 levels (the issue's body) overflowed the stack when the prefill body was dumped.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  for (const std::string& body : {deep, R"({"prompt":)" + deep + "}"}) {
    auto plan = plan_relay(body, false);
    ASSERT_FALSE(plan.ok());
    EXPECT_NE(plan.error().find("nested deeper than"), std::string::npos) << plan.error();
  }
  // Within the limit is fine.
  const std::string ok = R"({"prompt":"a","x":)" + std::string(100, '[') + std::string(100, ']') + "}";
  EXPECT_TRUE(plan_relay(ok, false).ok());
}

TEST(RelayPlanTest, ClientErrorsAreMessages) {
  EXPECT_FALSE(plan_relay("{not json", false).ok());
  EXPECT_FALSE(plan_relay("[1]", true).ok());
  auto huge = plan_relay(R"({"prompt":"a","max_tokens":9223372036854775807})", false);
  ASSERT_TRUE(huge.ok());
  EXPECT_GT(huge->decode_cost, 0);  // saturated, not overflowed
}

TEST(RelayPlanTest, PrefillAnswerMustCarryKvTransferParams) {
  auto ok = kv_params_of(R"({"choices":[],"kv_transfer_params":{"transfer_id":"x"}})");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ((*ok)["transfer_id"], "x");
  EXPECT_FALSE(kv_params_of(R"({"choices":[]})").ok());
  EXPECT_FALSE(kv_params_of(std::string(5000, '[')).ok());
}

}  // namespace
}  // namespace baton::proxy
