#include <gtest/gtest.h>

#include <atomic>
#include <numeric>

#include "common/cli.h"
#include "common/json.h"
#include "common/log.h"
#include "common/thread_pool.h"
#include "common/utf8.h"

namespace baton {
namespace {

TEST(Utf8Test, ValidationAndLossy) {
  EXPECT_TRUE(utf8::is_valid("héllo 日本 🤖"));
  EXPECT_EQ(utf8::find_invalid(std::string("ab\xc3", 3)), 2u);
  EXPECT_FALSE(utf8::is_valid("\xed\xa0\x80"));  // surrogate
  EXPECT_FALSE(utf8::is_valid("\xc0\xaf"));      // overlong
  EXPECT_EQ(utf8::lossy("a\xffz"), "a\xEF\xBF\xBDz");
  EXPECT_EQ(utf8::lossy("\xe2\x82"), "\xEF\xBF\xBD");  // one U+FFFD for a cut sequence
}

TEST(Utf8Test, IncompleteSuffix) {
  EXPECT_EQ(utf8::incomplete_suffix("abc"), 0u);
  EXPECT_EQ(utf8::incomplete_suffix("ab\xe6\x97"), 2u);
  EXPECT_EQ(utf8::incomplete_suffix("ab\xe6\x97\xa5"), 0u);
  EXPECT_EQ(utf8::incomplete_suffix("\xf0\x9f\xa4"), 3u);
}

TEST(ThreadPoolTest, ParallelForCoversEveryIndexOnce) {
  ThreadPool pool(4);
  for (size_t n : {0ul, 1ul, 7ul, 1000ul, 100003ul}) {
    std::vector<std::atomic<int>> hits(n);
    for (int rep = 0; rep < 3; ++rep)
      pool.parallel_for(n, 1, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
      });
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 3) << i;
  }
}

TEST(ThreadPoolTest, ManySmallJobsInARow) {
  ThreadPool pool(3);
  std::atomic<long> sum{0};
  for (int job = 0; job < 2000; ++job) pool.run(5, [&](int i) { sum.fetch_add(i); });
  EXPECT_EQ(sum.load(), 2000L * 10);
}

TEST(ArgParserTest, ParsesAliasesAndReportsErrors) {
  std::string dtype = "auto";
  int tp = 1;
  bool flag = false;
  ArgParser p("prog", "test");
  p.add({"--kv_cache_dtype", "--kv-cache-dtype"}, &dtype, "kv dtype");
  p.add({"-tp", "--tensor-parallel-size"}, &tp, "tp");
  p.add_flag({"--ignore-eos"}, &flag, "flag");
  const char* ok[] = {"prog", "--kv_cache_dtype", "fp8", "-tp", "8", "--ignore-eos"};
  ASSERT_TRUE(p.parse(6, ok).ok());
  EXPECT_EQ(dtype, "fp8");
  EXPECT_EQ(tp, 8);
  EXPECT_TRUE(flag);
  const char* eq[] = {"prog", "--kv-cache-dtype=bf16"};
  ASSERT_TRUE(p.parse(2, eq).ok());
  EXPECT_EQ(dtype, "bf16");
  const char* bad_int[] = {"prog", "-tp", "eight"};
  EXPECT_EQ(p.parse(3, bad_int).message(), "-tp: 'eight' is not an integer");
  const char* unknown[] = {"prog", "--nope"};
  EXPECT_EQ(p.parse(2, unknown).message(), "unknown argument '--nope' (see --help)");
  const char* missing[] = {"prog", "-tp"};
  EXPECT_EQ(p.parse(2, missing).message(), "-tp: missing value");
}

}  // namespace
}  // namespace baton

namespace baton {
namespace {

// Integers read from untrusted JSON must be exact and in range: nlohmann's own conversion of a
// float such as 1e28 to an integer type is undefined behaviour (the fuzzers found it in the
// safetensors header and in peers' memory descriptors).
TEST(JsonGetTest, IntegersAreExactAndInRange) {
  const Json j = parse_json(R"({"a": 3, "b": 3.0, "c": 1e28, "d": -1, "e": 2.5, "f": [1, 2.0, 7],
                                "g": [1, 1e28], "h": 18446744073709551615, "i": "3", "k": 2147483648})",
                            "doc")
                     .value();
  EXPECT_EQ(json_get<uint64_t>(j, "a", "doc").value(), 3u);
  EXPECT_EQ(json_get<uint64_t>(j, "b", "doc").value(), 3u);
  EXPECT_FALSE(json_get<uint64_t>(j, "c", "doc").ok());
  EXPECT_FALSE(json_get<uint64_t>(j, "d", "doc").ok());
  EXPECT_EQ(json_get<int64_t>(j, "d", "doc").value(), -1);
  EXPECT_FALSE(json_get<int>(j, "e", "doc").ok());
  EXPECT_EQ(json_get<std::vector<uint64_t>>(j, "f", "doc").value(), (std::vector<uint64_t>{1, 2, 7}));
  auto g = json_get<std::vector<uint64_t>>(j, "g", "doc");
  ASSERT_FALSE(g.ok());
  EXPECT_NE(g.error().find("not an integer in range"), std::string::npos) << g.error();
  EXPECT_EQ(json_get<uint64_t>(j, "h", "doc").value(), UINT64_MAX);
  EXPECT_FALSE(json_get<int64_t>(j, "h", "doc").ok());
  EXPECT_FALSE(json_get<int>(j, "i", "doc").ok());
  EXPECT_FALSE(json_get<int>(j, "k", "doc").ok());
  EXPECT_EQ(json_get<int64_t>(j, "k", "doc").value(), 2147483648);
}

TEST(ParseJsonTest, DepthIsLimitedWhileParsing) {
  auto nested = [](int levels) { return std::string(levels, '[') + std::string(levels, ']'); };
  EXPECT_TRUE(parse_json(nested(kMaxJsonDepth), "doc").ok());
  auto deep = parse_json(nested(kMaxJsonDepth + 1), "doc");
  ASSERT_FALSE(deep.ok());
  EXPECT_EQ(deep.error(), "doc: JSON nested deeper than 128 levels");
  // The issue's body: refused at level 129, long before the end; objects count as levels too.
  EXPECT_FALSE(parse_json(R"({"prompt":)" + nested(100000) + "}", "doc").ok());
  EXPECT_FALSE(parse_json(nested(3), "doc", 2).ok());
  std::string objects;
  for (int i = 0; i < 200; ++i) objects += R"({"a":)";
  objects += '1';
  objects.append(200, '}');
  EXPECT_FALSE(parse_json(objects, "doc").ok());
  // Brackets inside strings are text, not levels.
  EXPECT_TRUE(parse_json(R"({"s":")" + std::string(1000, '[') + R"("})", "doc").ok());
}

TEST(ParseJsonTest, ErrorsSayWhere) {
  auto bad = parse_json(R"({"a": tru})", "config.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().rfind("config.json: invalid JSON at byte ", 0), 0u) << bad.error();
  EXPECT_FALSE(parse_json("{} trailing", "doc").ok());
  EXPECT_FALSE(parse_json("", "doc").ok());
  const Json j = parse_json(R"({"b": [1, {"c": null}], "a": "x"})", "doc").value();
  EXPECT_EQ(j.dump(), R"({"b":[1,{"c":null}],"a":"x"})");  // keys keep their order
}

// parse_json builds its own DOM (an index per large object); it must equal nlohmann's, key order
// and repeated keys (first position, last value) included, on both sides of the index threshold.
TEST(ParseJsonTest, DomEqualsNlohmannsOnLargeObjectsAndRepeatedKeys) {
  for (int keys : {3, 15, 16, 17, 40, 5000}) {
    std::string text = "{";
    for (int i = 0; i < keys; ++i) text += "\"k" + std::to_string((i * 7919) % keys) + "\": [" + std::to_string(i) + ", {}],";
    text += R"("k1": "again", "nested": {"x": {"y": [true, null, 2.5, -3, 18446744073709551615]}}, "k0": 0})";
    const Json want = Json::parse(text);
    const Json got = parse_json(text, "doc").value();
    EXPECT_EQ(got, want) << keys << " keys";
    EXPECT_EQ(got.dump(), want.dump()) << keys << " keys";
    EXPECT_EQ(got["k1"], "again");
    EXPECT_EQ(got.size(), static_cast<size_t>(std::max(keys, 2)) + 1);
  }
  const std::vector<uint8_t> bin = Json::to_msgpack(Json{{"b", Json::binary({1, 2, 3}, 7)}, {"u", Json::binary({4})}});
  const Json m = parse_msgpack(std::string_view(reinterpret_cast<const char*>(bin.data()), bin.size()), "m").value();
  EXPECT_EQ(m["b"].get_binary(), Json::binary_t({1, 2, 3}, 7));
  EXPECT_FALSE(m["u"].get_binary().has_subtype());
}

TEST(ParseMsgpackTest, RoundTripAndDepthLimit) {
  const Json m = {{"type", "register"}, {"role", "D"}, {"tp_size", 2}, {"layout", {{"heads", {1, 2}}}}};
  const std::vector<uint8_t> bytes = Json::to_msgpack(m);
  const std::string packed(bytes.begin(), bytes.end());
  EXPECT_EQ(parse_msgpack(packed, "msg").value(), m);
  EXPECT_FALSE(parse_msgpack(packed + "x", "msg").ok());  // one whole document
  EXPECT_FALSE(parse_msgpack(packed.substr(0, packed.size() - 1), "msg").ok());
  // 0x91: an array of one element. The MessagePack reader recurses per level: 100,000 levels are
  // refused at level 129 instead of overflowing the stack.
  std::string deep(100000, '\x91');
  deep += '\xc0';
  auto r = parse_msgpack(deep, "msg");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), "msg: MessagePack nested deeper than 128 levels");
}

TEST(ThrottleTest, OneLinePerIntervalWithTheCountHeldBack) {
  log::Throttle t(std::chrono::milliseconds(1000));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(t.admit(t0), 0u);
  for (int i = 1; i <= 5000; ++i) EXPECT_FALSE(t.admit(t0 + std::chrono::microseconds(i * 100)));
  EXPECT_EQ(t.admit(t0 + std::chrono::milliseconds(1000)), 5000u);
  EXPECT_FALSE(t.admit(t0 + std::chrono::milliseconds(1500)));
  EXPECT_EQ(t.admit(t0 + std::chrono::milliseconds(2500)), 1u);
}

}  // namespace
}  // namespace baton
