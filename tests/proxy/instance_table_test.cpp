#include "proxy/instance_table.h"

#include <gtest/gtest.h>

namespace baton::proxy {
namespace {

using std::chrono::seconds;

Json registration(const std::string& addr, const std::string& role = "D") {
  return {{"type", "register"}, {"role", role}, {"http_address", addr}};
}
Json goodbye(const std::string& addr) {
  return {{"type", "unregister"}, {"http_address", addr}};
}

TEST(InstanceTableTest, AddressBelongsToTheConnectionThatRegisteredIt) {
  InstanceTable t;
  const auto now = Clock::now();
  ASSERT_EQ(*t.update(registration("10.0.0.1:8000"), "real", false, now), Update::kAdmitted);
  EXPECT_EQ(*t.update(registration("10.0.0.1:8000"), "real", false, now), Update::kRefreshed);
  // Another connection can neither refresh it, change its role, nor unregister it.
  EXPECT_EQ(*t.update(registration("10.0.0.1:8000"), "rogue", false, now + seconds(5)), Update::kNotOwner);
  EXPECT_EQ(*t.update(registration("10.0.0.1:8000", "P"), "rogue", false, now), Update::kNotOwner);
  EXPECT_EQ(*t.update(goodbye("10.0.0.1:8000"), "rogue", false, now), Update::kNotOwner);
  ASSERT_EQ(t.count('D'), 1);
  EXPECT_EQ(t.count('P'), 0);
  // The forged heartbeat at +5 s did not keep the entry alive: it was last seen at `now`.
  EXPECT_EQ(t.evict(now + seconds(11), seconds(10)), std::vector<std::string>{"10.0.0.1:8000"});
  // The owner's own goodbye is honoured.
  ASSERT_EQ(*t.update(registration("10.0.0.2:8000"), "real", false, now), Update::kAdmitted);
  EXPECT_EQ(*t.update(goodbye("10.0.0.2:8000"), "real", false, now), Update::kUnregistered);
  EXPECT_EQ(*t.update(goodbye("10.0.0.2:8000"), "real", false, now), Update::kUnknown);
  EXPECT_TRUE(t.snapshot().empty());
}

TEST(InstanceTableTest, RestartOnTheSameAddressIsAdmittedOnceTheOldEntryIsEvicted) {
  InstanceTable t;
  const auto t0 = Clock::now();
  ASSERT_EQ(*t.update(registration("10.0.0.1:8000"), "before-restart", false, t0), Update::kAdmitted);
  // Killed: its connection is gone and it sends nothing. The restarted process connects anew.
  EXPECT_EQ(*t.update(registration("10.0.0.1:8000"), "after-restart", false, t0 + seconds(3)), Update::kNotOwner);
  EXPECT_EQ(t.evict(t0 + seconds(9), seconds(10)).size(), 0u);
  EXPECT_EQ(t.evict(t0 + seconds(11), seconds(10)).size(), 1u);
  EXPECT_EQ(*t.update(registration("10.0.0.1:8000"), "after-restart", false, t0 + seconds(11)), Update::kAdmitted);
  // Now bound to the new connection.
  EXPECT_EQ(*t.update(goodbye("10.0.0.1:8000"), "before-restart", false, t0 + seconds(11)), Update::kNotOwner);
}

TEST(InstanceTableTest, TheTokenIsTrustedFromAnyConnectionAndMovesTheBinding) {
  InstanceTable t;
  const auto now = Clock::now();
  ASSERT_EQ(*t.update(registration("10.0.0.1:8000"), "old", true, now), Update::kAdmitted);
  // A restarted instance holding the token is admitted at once, and its connection owns it now.
  EXPECT_EQ(*t.update(registration("10.0.0.1:8000"), "new", true, now), Update::kAdmitted);
  EXPECT_EQ(*t.update(registration("10.0.0.1:8000"), "new", true, now), Update::kRefreshed);
  EXPECT_EQ(*t.update(goodbye("10.0.0.1:8000"), "old", false, now), Update::kNotOwner);
  EXPECT_EQ(*t.update(goodbye("10.0.0.1:8000"), "new", false, now), Update::kUnregistered);
}

TEST(InstanceTableTest, TiesGoToTheInstanceAdmittedFirst) {
  InstanceTable t;
  const auto now = Clock::now();
  // Address order is the reverse of admission order, so the map's order cannot decide.
  ASSERT_TRUE(t.update(registration("10.0.0.9:8000"), "a", false, now).ok());
  ASSERT_TRUE(t.update(registration("10.0.0.1:8000"), "b", false, now).ok());
  for (int i = 0; i < 5; ++i) {  // idle: every request goes to the oldest
    auto got = t.acquire('D', {}, 10);
    ASSERT_TRUE(got);
    EXPECT_EQ(got->id, "10.0.0.9:8000");
    t.release(got->id, 10, false);
  }
  // Busy: least outstanding work wins, whatever the age.
  auto first = t.acquire('D', {}, 10);
  auto second = t.acquire('D', {}, 10);
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->id, "10.0.0.9:8000");
  EXPECT_EQ(second->id, "10.0.0.1:8000");
}

TEST(InstanceTableTest, RoutesToTheLeastOutstandingTokensOfTheRole) {
  InstanceTable t;
  const auto now = Clock::now();
  ASSERT_TRUE(t.update(registration("10.0.0.1:8000", "P"), "p", false, now).ok());
  ASSERT_TRUE(t.update(registration("10.0.0.2:8000"), "d1", false, now).ok());
  ASSERT_TRUE(t.update(registration("10.0.0.3:8000"), "d2", false, now).ok());
  EXPECT_EQ(t.count('P'), 1);
  EXPECT_EQ(t.count('D'), 2);
  auto prefill = t.acquire('P', {}, 500);  // the only prefill, however loaded
  ASSERT_TRUE(prefill);
  EXPECT_EQ(prefill->id, "10.0.0.1:8000");
  EXPECT_EQ(t.acquire('P', {}, 500)->id, "10.0.0.1:8000");
  // Decodes by outstanding tokens, whatever the prefill carries: d1 takes 100, then d2 takes the
  // requests until it carries more than d1.
  std::vector<std::string> order;
  for (int64_t cost : {100, 30, 30, 50, 10}) order.push_back(t.acquire('D', {}, cost)->id);
  EXPECT_EQ(order, (std::vector<std::string>{"10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.3:8000", "10.0.0.3:8000",
                                             "10.0.0.2:8000"}));
  // d1 carries 110 in two requests, d2 110 in three; what acquire returned is the state after.
  auto next = t.acquire('D', {}, 1);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->id, "10.0.0.2:8000");  // a tie: the first admitted
  EXPECT_EQ(next->outstanding_tokens, 111);
  EXPECT_EQ(next->in_flight, 3);
  EXPECT_EQ(next->routed, 3u);
  // Finished work is given back: d2 is the lighter one once 30 returns, d1 once its 100 does.
  t.release("10.0.0.3:8000", 30, false);
  EXPECT_EQ(t.acquire('D', {}, 0)->id, "10.0.0.3:8000");
  t.release("10.0.0.2:8000", 100, false);
  EXPECT_EQ(t.acquire('D', {}, 0)->id, "10.0.0.2:8000");
}

TEST(InstanceTableTest, RetriesSkipTheExcludedInstances) {
  InstanceTable t;
  const auto now = Clock::now();
  ASSERT_TRUE(t.update(registration("10.0.0.1:8000"), "a", false, now).ok());
  ASSERT_TRUE(t.update(registration("10.0.0.2:8000"), "b", false, now).ok());
  auto first = t.acquire('D', {}, 10);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->id, "10.0.0.1:8000");
  t.release(first->id, 10, true);
  // The retry goes elsewhere even though the failed one is idle again.
  auto retry = t.acquire('D', {first->id}, 10);
  ASSERT_TRUE(retry);
  EXPECT_EQ(retry->id, "10.0.0.2:8000");
  EXPECT_FALSE(t.acquire('D', {"10.0.0.1:8000", "10.0.0.2:8000"}, 10));
  EXPECT_FALSE(t.acquire('P', {}, 10)) << "no prefill is registered";
}

TEST(InstanceTableTest, ReleaseCountsFailuresAndNeverGoesBelowZero) {
  InstanceTable t;
  const auto now = Clock::now();
  ASSERT_TRUE(t.update(registration("10.0.0.1:8000"), "a", false, now).ok());
  ASSERT_TRUE(t.acquire('D', {}, 40));
  t.release("10.0.0.1:8000", 40, /*failed=*/true);
  ASSERT_TRUE(t.acquire('D', {}, 40));
  t.release("10.0.0.1:8000", 40, /*failed=*/false);
  t.release("10.0.0.1:8000", 40, false);  // once too often
  t.release("10.9.9.9:8000", 40, true);   // not in the table: nothing to do
  std::vector<Instance> s = t.snapshot();
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].failures, 1u);
  EXPECT_EQ(s[0].routed, 2u);
  EXPECT_EQ(s[0].outstanding_tokens, 0);
  EXPECT_EQ(s[0].in_flight, 0);
  // Work charged before an eviction returns to the re-admitted entry, which started from zero.
  ASSERT_TRUE(t.acquire('D', {}, 70));
  ASSERT_EQ(t.evict(now + seconds(11), seconds(10)).size(), 1u);
  ASSERT_EQ(*t.update(registration("10.0.0.1:8000"), "a", false, now + seconds(11)), Update::kAdmitted);
  t.release("10.0.0.1:8000", 70, false);
  s = t.snapshot();
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].outstanding_tokens, 0);
  EXPECT_EQ(s[0].in_flight, 0);
}

TEST(InstanceTableTest, HeartbeatsKeepAnInstanceAndSilenceEvictsIt) {
  InstanceTable t;
  const auto t0 = Clock::now();
  ASSERT_TRUE(t.update(registration("10.0.0.1:8000"), "flaky", false, t0).ok());
  ASSERT_TRUE(t.update(registration("10.0.0.2:8000"), "steady", false, t0).ok());
  ASSERT_TRUE(t.update(registration("10.0.0.3:8000", "P"), "prefill", false, t0).ok());
  EXPECT_EQ(t.acquire('D', {}, 0)->id, "10.0.0.1:8000");  // idle: ties go to the first admitted
  EXPECT_EQ(*t.update(registration("10.0.0.2:8000"), "steady", false, t0 + seconds(8)), Update::kRefreshed);
  EXPECT_EQ(*t.update(registration("10.0.0.3:8000", "P"), "prefill", false, t0 + seconds(8)), Update::kRefreshed);
  EXPECT_TRUE(t.evict(t0 + seconds(10), seconds(10)).empty()) << "silent exactly the eviction age: kept";
  EXPECT_EQ(t.evict(t0 + seconds(12), seconds(10)), std::vector<std::string>{"10.0.0.1:8000"});
  EXPECT_EQ(t.count('D'), 1);
  EXPECT_EQ(t.acquire('D', {}, 0)->id, "10.0.0.2:8000");
  // Its next heartbeat brings it back as a newcomer: ties now go to the one that kept serving.
  EXPECT_EQ(*t.update(registration("10.0.0.1:8000"), "flaky", false, t0 + seconds(13)), Update::kAdmitted);
  EXPECT_EQ(t.count('D'), 2);
  EXPECT_EQ(t.acquire('D', {}, 0)->id, "10.0.0.2:8000");
  // Every role is evicted alike; an instance taken out of routing is evicted when silent too.
  t.drop("10.0.0.1:8000");
  const std::vector<std::string> gone = t.evict(t0 + seconds(30), seconds(10));
  EXPECT_EQ(std::set<std::string>(gone.begin(), gone.end()),
            (std::set<std::string>{"10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"}));
  EXPECT_TRUE(t.snapshot().empty());
  EXPECT_FALSE(t.acquire('D', {}, 0));
  EXPECT_FALSE(t.acquire('P', {}, 0));
}

TEST(InstanceTableTest, EachRoleSpellingRoutesAsItsRole) {
  InstanceTable t;
  const auto now = Clock::now();
  int port = 8000;
  for (const auto& [message_type, role] :
       std::vector<std::pair<Json, char>>{{{{"type", "P"}}, 'P'},
                                          {{{"type", "D"}}, 'D'},
                                          {{{"type", "register"}, {"role", "prefill"}}, 'P'},
                                          {{{"type", "register"}, {"role", "kv_consumer"}}, 'D'},
                                          {{{"type", "register"}, {"role", "kv_producer"}}, 'P'},
                                          {{{"type", "register"}, {"role", "decode"}}, 'D'}}) {
    Json m = message_type;
    const std::string addr = "10.0.0.1:" + std::to_string(port++);
    m["http_address"] = addr;
    ASSERT_EQ(*t.update(m, addr, false, now), Update::kAdmitted) << m.dump();
    auto got = t.acquire(role, {}, 1000);  // the new one is the idle one of its role
    ASSERT_TRUE(got) << m.dump();
    EXPECT_EQ(got->id, addr);
  }
  EXPECT_EQ(t.count('P'), 3);
  EXPECT_EQ(t.count('D'), 3);
  // The owner changing its role moves it to the other pool.
  ASSERT_EQ(*t.update(registration("10.0.0.1:8001", "P"), "10.0.0.1:8001", false, now), Update::kAdmitted);
  EXPECT_EQ(t.count('P'), 4);
  EXPECT_EQ(t.count('D'), 2);
}

TEST(InstanceTableTest, DroppedInstanceKeepsItsAddressUntilItsOwnerHeartbeats) {
  InstanceTable t;
  const auto now = Clock::now();
  ASSERT_TRUE(t.update(registration("10.0.0.1:8000"), "real", false, now).ok());
  t.drop("10.0.0.1:8000");
  EXPECT_EQ(t.count('D'), 0);
  EXPECT_FALSE(t.acquire('D', {}, 1));
  EXPECT_EQ(*t.update(registration("10.0.0.1:8000"), "rogue", false, now), Update::kNotOwner);
  EXPECT_EQ(*t.update(registration("10.0.0.1:8000"), "real", false, now), Update::kAdmitted);
  EXPECT_EQ(t.count('D'), 1);
}

TEST(InstanceTableTest, RefusalsKeepNoStateAndTheTableIsBounded) {
  InstanceTable t(/*max_instances=*/3);
  const auto now = Clock::now();
  ASSERT_TRUE(t.update(registration("10.0.0.1:8000"), "real", false, now).ok());
  for (int i = 0; i < 10000; ++i) {
    const std::string addr = "10.1." + std::to_string(i / 250) + "." + std::to_string(i % 250) + ":9000";
    const Update u = *t.update(registration(addr), "flood-" + std::to_string(i), false, now);
    EXPECT_EQ(u, i < 2 ? Update::kAdmitted : Update::kTableFull) << i;
    (void)t.update(goodbye("10.0.0.1:8000"), "flood-" + std::to_string(i), false, now);
  }
  EXPECT_EQ(t.snapshot().size(), 3u);
  EXPECT_EQ(t.count('D'), 3);  // the real one is still there
  // A known address still refreshes when the table is full.
  EXPECT_EQ(*t.update(registration("10.0.0.1:8000"), "real", false, now), Update::kRefreshed);
}

TEST(InstanceTableTest, MalformedMessagesAreErrors) {
  InstanceTable t;
  const auto now = Clock::now();
  EXPECT_FALSE(t.update(Json::array(), "p", false, now).ok());
  EXPECT_FALSE(t.update({{"type", "register"}, {"role", "D"}}, "p", false, now).ok());
  EXPECT_FALSE(t.update(registration("nohost"), "p", false, now).ok());
  EXPECT_FALSE(t.update(registration("h:99999"), "p", false, now).ok());
  EXPECT_FALSE(t.update(registration("h:80", "X"), "p", false, now).ok());
  // An address is logged and listed: no control bytes (forged log lines), no spaces, no essays.
  EXPECT_FALSE(t.update(registration("h\nW forged line:80"), "p", false, now).ok());
  EXPECT_FALSE(t.update(registration("h\x01:80"), "p", false, now).ok());
  EXPECT_FALSE(t.update(registration(std::string(300, 'h') + ":80"), "p", false, now).ok());
  EXPECT_TRUE(t.snapshot().empty());
}

// A table entry keeps the fields instances send, each small; the rest of a sender's message
// (megabytes once parsed, at 64 KiB of msgpack) is not kept, and routing copies none of it.
TEST(InstanceTableTest, EntriesKeepOnlyTheKnownSmallFields) {
  InstanceTable t;
  Json m = registration("10.0.0.1:8000");
  m["model"] = "tiny";
  m["tp_size"] = 2;
  m["kv_layout"] = {{"dtype", "fp8"}};
  m["padding"] = Json::array();
  for (int i = 0; i < 1000; ++i) m["padding"].push_back(Json::object());
  m["engine_id"] = std::string(10000, 'e');
  ASSERT_TRUE(t.update(m, "p", false, Clock::now()).ok());
  const Json info = t.snapshot()[0].info;
  EXPECT_EQ(info.value("model", ""), "tiny");
  EXPECT_EQ(info.value("tp_size", 0), 2);
  EXPECT_TRUE(info.contains("kv_layout"));
  EXPECT_FALSE(info.contains("padding"));
  EXPECT_FALSE(info.contains("engine_id")) << "a 10,000-byte string";
  auto routed = t.acquire('D', {}, 1);
  ASSERT_TRUE(routed);
  EXPECT_EQ(routed->id, "10.0.0.1:8000");
  EXPECT_TRUE(routed->info.is_null());
}

TEST(InstanceTableTest, InfoNeverShowsTheToken) {
  InstanceTable t;
  Json m = registration("10.0.0.1:8000");
  m["token"] = "secret";
  ASSERT_TRUE(t.update(m, "p", true, Clock::now()).ok());
  EXPECT_FALSE(t.snapshot()[0].info.contains("token"));
}

}  // namespace
}  // namespace baton::proxy
