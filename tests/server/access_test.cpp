#include "server/access.h"

#include <gtest/gtest.h>

#include "server/metrics.h"

namespace baton::http {
namespace {

Request with_bearer(const std::string& key) {
  Request r;
  if (!key.empty()) r.set(beast::http::field::authorization, "Bearer " + key);
  return r;
}

TEST(AccessTest, NoKeysOpenEverything) {
  AccessKeys none;
  EXPECT_EQ(api_access(with_bearer(""), none), Access::kApi);
  EXPECT_EQ(metrics_access(with_bearer(""), none), Access::kApi);
}

TEST(AccessTest, ApiKeyGuardsApiAndMetrics) {
  AccessKeys keys{"k3y", ""};
  EXPECT_EQ(api_access(with_bearer(""), keys), Access::kNone);
  EXPECT_EQ(api_access(with_bearer("wrong"), keys), Access::kNone);
  EXPECT_EQ(api_access(with_bearer("k3"), keys), Access::kNone);
  EXPECT_EQ(api_access(with_bearer("k3y"), keys), Access::kApi);
  EXPECT_EQ(metrics_access(with_bearer(""), keys), Access::kNone);
  EXPECT_EQ(metrics_access(with_bearer("k3y"), keys), Access::kApi);
  Request basic;
  basic.set(beast::http::field::authorization, "Basic k3y");
  EXPECT_EQ(api_access(basic, keys), Access::kNone);
}

TEST(AccessTest, MetricsKeyOpensMetricsOnly) {
  AccessKeys keys{"k3y", "scrape"};
  EXPECT_EQ(metrics_access(with_bearer("scrape"), keys), Access::kMetrics);
  EXPECT_EQ(api_access(with_bearer("scrape"), keys), Access::kNone);
  EXPECT_EQ(metrics_access(with_bearer("k3y"), keys), Access::kApi);
  // A metrics key without an API key guards /metrics and leaves the API open.
  AccessKeys metrics_only{"", "scrape"};
  EXPECT_EQ(metrics_access(with_bearer(""), metrics_only), Access::kNone);
  EXPECT_EQ(metrics_access(with_bearer("scrape"), metrics_only), Access::kMetrics);
  EXPECT_EQ(api_access(with_bearer(""), metrics_only), Access::kApi);
}

TEST(AccessTest, SecretsEqual) {
  EXPECT_TRUE(secrets_equal("abc", "abc"));
  EXPECT_FALSE(secrets_equal("abc", "abd"));
  EXPECT_FALSE(secrets_equal("abc", "abcd"));
  EXPECT_TRUE(secrets_equal("", ""));
}

TEST(MetricsTest, PromptRevealingValuesOnlyForApiUsers) {
  Metrics m;
  m.add_gauge(
      "baton:public_total", "p", [] { return 1.0; }, true);
  m.add_gauge(
      "baton:prefix_cache_hit_blocks_total", "h", [] { return 7.0; }, true, /*reveals_prompts=*/true);
  const std::string full = m.render(true), scraper = m.render(false);
  EXPECT_NE(full.find("baton:prefix_cache_hit_blocks_total 7"), std::string::npos);
  EXPECT_EQ(scraper.find("prefix_cache_hit_blocks"), std::string::npos);
  EXPECT_NE(scraper.find("baton:public_total 1"), std::string::npos);
}

}  // namespace
}  // namespace baton::http
