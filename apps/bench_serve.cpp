// baton-bench serve: a serving benchmark against any OpenAI-compatible server (baton-server,
// baton-proxy, vLLM, llama.cpp's server), in the manner of `vllm bench serve`.
//   Requests come from a random dataset (input/output length ranges, a shared-prefix ratio) or a
//   JSONL/JSON file of prompts or ShareGPT conversations; they arrive as a Poisson process at
//   --request-rate (or all at once: inf), at most --max-concurrency in flight, after a warm-up.
//   Every request streams; the tool times the first token (TTFT), each later chunk (ITL), the
//   whole request (E2E) and derives TPOT, then prints a table, writes JSON and a PNG of the
//   latency CDFs (gnuplot). Goodput counts the requests that meet every --slo.
//   It cross-checks what it measures: with return_token_ids (vLLM's field, which baton serves)
//   the tokens streamed must add up to usage.completion_tokens for every request; a request that
//   fails or disagrees is counted and printed, never dropped.
// baton-bench report: one table (markdown) and one PNG from several serve results (a sweep of
//   request rates, colocated vs P/D).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "apps/bench_commands.h"
#include "common/cli.h"
#include "common/json.h"
#include "model/tokenizer.h"
#include "server/http_client.h"

namespace baton {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using Clock = std::chrono::steady_clock;


// ---- statistics ----

// Linear interpolation between closest ranks (numpy's default), on sorted values.
double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank)), hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - static_cast<double>(lo));
}

// mean, median, std, min, max and the asked percentiles of values given in seconds, as ms.
Json summary_ms(std::vector<double> v, const std::vector<uint64_t>& percentiles) {
  Json s = Json::object();
  s["count"] = v.size();
  if (v.empty()) return s;
  for (double& x : v) x *= 1e3;
  std::sort(v.begin(), v.end());
  double sum = 0, sq = 0;
  for (double x : v) sum += x;
  const double mean = sum / static_cast<double>(v.size());
  for (double x : v) sq += (x - mean) * (x - mean);
  s["mean"] = mean;
  s["median"] = percentile(v, 50);
  s["std"] = std::sqrt(sq / static_cast<double>(v.size()));
  s["min"] = v.front();
  s["max"] = v.back();
  for (uint64_t p : percentiles) {
    std::string key = "p";
    key += std::to_string(p);
    s[key] = percentile(v, static_cast<double>(p));
  }
  return s;
}

// ---- SLOs: "ttft=200ms,tpot=50ms,e2e=2s" ----

Result<double> parse_duration_s(const std::string& text, const std::string& what) {
  size_t unit = text.find_first_not_of("0123456789.");
  if (unit == 0 || unit == std::string::npos)
    return make_error(what, ": '", text, "' needs a number and a unit (us, ms or s)");
  double v = 0;
  try {
    v = std::stod(text.substr(0, unit));
  } catch (...) {
    return make_error(what, ": '", text, "' is not a number");
  }
  const std::string u = text.substr(unit);
  if (u == "s") return v;
  if (u == "ms") return v / 1e3;
  if (u == "us") return v / 1e6;
  return make_error(what, ": unknown unit '", u, "' (us, ms or s)");
}

Result<std::map<std::string, double>> parse_slo(const std::string& text) {
  std::map<std::string, double> slo;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos) return make_error("--slo: '", item, "' is not metric=value (e.g. ttft=200ms)");
    const std::string key = item.substr(0, eq);
    if (key != "ttft" && key != "tpot" && key != "itl" && key != "e2e")
      return make_error("--slo: unknown metric '", key, "' (ttft, tpot, itl, e2e)");
    BATON_ASSIGN_OR_RETURN(slo[key], parse_duration_s(item.substr(eq + 1), "--slo " + key));
  }
  return slo;
}

// ---- plots (gnuplot, a Debian package: gnuplot-nox) ----

Status run_gnuplot(const std::string& script, const std::filesystem::path& dir) {
  const auto path = dir / "plot.gp";
  std::ofstream(path) << script;
  const std::string cmd = "gnuplot '" + path.string() + "' 2>'" + (dir / "gnuplot.log").string() + "'";
  if (std::system(cmd.c_str()) != 0) {
    std::ifstream log(dir / "gnuplot.log");
    std::string first;
    std::getline(log, first);
    return make_error("gnuplot failed (is it installed? apt-get install gnuplot-nox): ", first);
  }
  return {};
}

std::filesystem::path temp_dir(const std::string& tag) {
  auto dir = std::filesystem::temp_directory_path() / ("baton-bench-" + tag + "-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

// ---- requests ----

struct RequestSpec {
  std::string text;      // a text prompt (or the chat user message)
  std::vector<int> ids;  // a token-id prompt (completions), used when text is empty
  Json messages;         // a whole conversation (chat), when the dataset has one
  int input_tokens = 0;  // as the dataset made it (0: unknown until usage comes back)
  int max_tokens = 0;
};

struct RequestResult {
  bool ok = false;
  std::string error;
  double start_s = 0;  // since the measured phase began
  double ttft_s = -1, e2e_s = 0;
  std::vector<double> itl_s;  // gaps between chunks after the first
  int streamed_tokens = 0, prompt_tokens = 0, completion_tokens = -1;
  bool usage_missing = false;  // counted from the stream (a server that sends no usage)
  double tpot_s() const {
    return completion_tokens > 1 ? (e2e_s - ttft_s) / (completion_tokens - 1) : -1;
  }
};

struct Target {
  std::string host;
  int port = 0;
  std::string path_prefix;  // from --base-url
  std::string endpoint;
  std::string model;
  std::string authorization;
  bool chat = false;
  bool token_ids = true;
  bool ignore_eos = true;
  double temperature = 0;
  Json extra_body = Json::object();  // merged into every request (--extra-body)
  std::chrono::milliseconds timeout{600000};
};

std::string request_body(const Target& t, const RequestSpec& r) {
  Json b = Json::object();
  if (!t.model.empty()) b["model"] = t.model;
  if (t.chat) {
    b["messages"] = !r.messages.is_null() ? r.messages : Json::array({{{"role", "user"}, {"content", r.text}}});
  } else if (!r.text.empty()) {
    b["prompt"] = r.text;
  } else {
    b["prompt"] = r.ids;
  }
  b["max_tokens"] = r.max_tokens;
  b["temperature"] = t.temperature;
  b["stream"] = true;
  b["stream_options"] = {{"include_usage", true}};
  if (t.ignore_eos) b["ignore_eos"] = true;
  if (t.token_ids) b["return_token_ids"] = true;
  for (const auto& [k, v] : t.extra_body.items()) b[k] = v;
  return b.dump();
}

// The message of an OpenAI error body, or the body's start.
std::string error_message(const std::string& body) {
  auto j = parse_json(body, "error");
  if (j.ok() && j->is_object() && j->contains("error")) {
    const Json& e = (*j)["error"];
    if (e.is_object() && e.contains("message") && e["message"].is_string()) return e["message"].get<std::string>();
    if (e.is_string()) return e.get<std::string>();
  }
  return body.substr(0, 200);
}

// One streamed request: SSE events are parsed as they arrive and each chunk that carries
// tokens is timed.
awaitable<void> run_request(const Target& t, const RequestSpec& spec, RequestResult& res, Clock::time_point t0) {
  const auto sent = Clock::now();
  res.start_s = std::chrono::duration<double>(sent - t0).count();
  http::ClientCall call(co_await asio::this_coro::executor);
  auto fail = [&](std::string e) { res.ok = false, res.error = std::move(e); };
  Status st = co_await call.start(t.host, t.port, "POST", t.path_prefix + t.endpoint, request_body(t, spec),
                                  std::chrono::milliseconds(10000), t.timeout, t.authorization);
  if (!st.ok()) co_return fail(st.message());
  if (call.status() != 200) {
    auto body = co_await call.read_all(t.timeout);
    co_return fail("HTTP " + std::to_string(call.status()) + ": " + (body.ok() ? error_message(*body) : body.error()));
  }
  std::string buf;
  std::optional<Clock::time_point> last;
  bool done = false, usage_seen = false;
  while (!done) {
    auto piece = co_await call.next(t.timeout);
    if (!piece.ok()) co_return fail(piece.error());
    if (piece->empty()) break;  // the body ended
    const auto now = Clock::now();
    buf += *piece;
    size_t end;
    while ((end = buf.find("\n\n")) != std::string::npos) {
      std::string event = buf.substr(0, end);
      buf.erase(0, end + 2);
      if (event.rfind("data:", 0) != 0) continue;  // comments, keep-alives
      std::string data = event.substr(5);
      if (!data.empty() && data[0] == ' ') data.erase(0, 1);
      if (data == "[DONE]") {
        done = true;
        break;
      }
      auto j = parse_json(data, "stream chunk");
      if (!j.ok() || !j->is_object()) co_return fail("unparsable stream chunk: " + data.substr(0, 120));
      if (j->contains("error")) co_return fail("error in stream: " + error_message(data));
      if (auto u = j->find("usage"); u != j->end() && u->is_object()) {
        res.prompt_tokens = u->value("prompt_tokens", 0);
        res.completion_tokens = u->value("completion_tokens", -1);
        usage_seen = true;
      }
      auto cs = j->find("choices");
      if (cs == j->end() || !cs->is_array() || cs->empty() || !(*cs)[0].is_object()) continue;
      const Json& c = (*cs)[0];
      int n = 0;
      if (auto ids = c.find("token_ids"); ids != c.end() && ids->is_array()) {
        n = static_cast<int>(ids->size());
      } else if (!t.token_ids) {
        // A server without token ids: a chunk with text is one token (also an empty text, as
        // servers that stream one chunk per token send for a partial UTF-8 character), except
        // a chat delta that only opens the message (role) or a chunk that only finishes it.
        const Json* text = nullptr;
        bool opens = false;
        if (auto d = c.find("delta"); d != c.end() && d->is_object() && d->contains("content")) {
          text = &(*d)["content"];
          opens = d->contains("role");
        }
        if (auto tx = c.find("text"); tx != c.end()) text = &*tx;
        const bool finishing = c.contains("finish_reason") && !c["finish_reason"].is_null();
        const bool empty = !text || !text->is_string() || text->get<std::string>().empty();
        n = text && text->is_string() && (!empty || (!finishing && !opens)) ? 1 : 0;
      }
      if (n == 0) continue;
      res.streamed_tokens += n;
      if (!last) {
        res.ttft_s = std::chrono::duration<double>(now - sent).count();
      } else {
        res.itl_s.push_back(std::chrono::duration<double>(now - *last).count());
      }
      last = now;
    }
  }
  res.e2e_s = seconds_since(sent);
  if (!done) co_return fail("the stream ended without [DONE]");
  if (!usage_seen && t.token_ids) co_return fail("no usage in the stream (stream_options.include_usage ignored?)");
  if (!usage_seen) {  // a server without usage in streams (--no-token-ids): count what came
    res.completion_tokens = res.streamed_tokens;
    res.prompt_tokens = spec.input_tokens;
    res.usage_missing = true;
  }
  if (res.ttft_s < 0 && res.completion_tokens > 0) co_return fail("usage counts tokens but none was streamed");
  if (t.token_ids && res.streamed_tokens != res.completion_tokens)
    co_return fail("streamed " + std::to_string(res.streamed_tokens) + " tokens but usage.completion_tokens is " +
                   std::to_string(res.completion_tokens));
  res.ok = true;
}

// At most n coroutines past acquire() at once; a waiter sleeps on a timer that release() cancels.
class AsyncSemaphore {
 public:
  explicit AsyncSemaphore(size_t n) : free_(n) {}
  awaitable<void> acquire() {
    if (free_ > 0) {
      --free_;
      co_return;
    }
    asio::steady_timer timer(co_await asio::this_coro::executor, asio::steady_timer::time_point::max());
    waiters_.push_back(&timer);
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));  // the slot is handed over
  }
  void release() {
    if (waiters_.empty()) {
      ++free_;
      return;
    }
    waiters_.front()->cancel();
    waiters_.pop_front();
  }

 private:
  size_t free_;
  std::deque<asio::steady_timer*> waiters_;
};

// ---- datasets ----

struct DatasetOptions {
  std::string name = "random", path;
  int input_len = 256, output_len = 64;
  double range_ratio = 0, prefix_ratio = 0;
  int token_lo = 3, token_hi = 259;  // ids every vocabulary we serve has (byte tokens)
  bool text_prompts = false;         // random prompts sent as text (servers that take no token ids)
  uint64_t seed = 0;
};

int draw_len(std::mt19937_64& rng, int len, double ratio) {
  const int lo = std::max(1, static_cast<int>(std::floor(len * (1 - ratio))));
  const int hi = std::max(lo, static_cast<int>(std::ceil(len * (1 + ratio))));
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

Result<std::vector<RequestSpec>> random_dataset(const DatasetOptions& o, size_t n, const Tokenizer* tok, bool chat) {
  if ((chat || o.text_prompts) && !tok)
    return make_error("--dataset random with text prompts (a chat endpoint or --text-prompts) needs --tokenizer DIR");
  std::mt19937_64 rng(o.seed);
  int lo = o.token_lo, hi = o.token_hi;
  if (tok) lo = 0, hi = tok->vocab_size();
  auto draw_token = [&] {
    for (;;) {
      int id = std::uniform_int_distribution<int>(lo, hi - 1)(rng);
      if (!tok || !tok->is_special(id)) return id;
    }
  };
  std::vector<int> prefix(static_cast<size_t>(std::lround(o.prefix_ratio * o.input_len)));
  for (int& id : prefix) id = draw_token();
  std::vector<RequestSpec> out(n);
  for (RequestSpec& r : out) {
    const int in = std::max<int>(draw_len(rng, o.input_len, o.range_ratio), static_cast<int>(prefix.size()) + 1);
    r.ids = prefix;
    while (static_cast<int>(r.ids.size()) < in) r.ids.push_back(draw_token());
    r.input_tokens = in;
    r.max_tokens = draw_len(rng, o.output_len, o.range_ratio);
    if (chat || o.text_prompts) {
      r.text = tok->decode(r.ids);
      r.ids.clear();
    }
  }
  return out;
}

std::string content_text(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  std::string s;
  if (v.is_array())
    for (const Json& part : v)
      if (part.is_object() && part.value("type", "") == "text" && part.contains("text") && part["text"].is_string())
        s += part["text"].get<std::string>();
  return s;
}

// One dataset record: {"prompt": ...}, {"messages": [...]} or ShareGPT {"conversations": [{"from",
// "value"}]}; an optional "max_tokens"/"output_len" sets the output length, else the reply's
// token count (ShareGPT, with --tokenizer), else --random-output-len.
Result<RequestSpec> file_record(const Json& j, const DatasetOptions& o, const Tokenizer* tok, bool chat, size_t line) {
  const std::string where = o.path + ":" + std::to_string(line);
  if (!j.is_object()) return make_error(where, ": a record must be a JSON object");
  RequestSpec r;
  std::string reply;
  if (auto p = j.find("prompt"); p != j.end()) {
    if (!p->is_string()) return make_error(where, ": 'prompt' must be a string");
    r.text = p->get<std::string>();
  } else if (auto m = j.find("messages"); m != j.end()) {
    if (!m->is_array() || m->empty()) return make_error(where, ": 'messages' must be a non-empty list");
    for (const Json& msg : *m) {
      if (!msg.is_object() || !msg.contains("role") || !msg["role"].is_string())
        return make_error(where, ": each message needs a 'role'");
    }
    r.messages = *m;
    for (const Json& msg : *m)
      if (msg["role"] == "user" && r.text.empty()) r.text = content_text(msg.value("content", Json()));
    if (!chat) r.messages = nullptr;  // completions: the first user message is the prompt
  } else if (auto c = j.find("conversations"); c != j.end() && c->is_array()) {
    for (size_t i = 0; i < c->size(); ++i) {
      const Json& turn = (*c)[i];
      if (!turn.is_object()) continue;
      const std::string from = turn.value("from", turn.value("role", ""));
      if ((from == "human" || from == "user") && r.text.empty()) {
        r.text = content_text(turn.value("value", turn.value("content", Json())));
        if (i + 1 < c->size() && (*c)[i + 1].is_object())
          reply = content_text((*c)[i + 1].value("value", (*c)[i + 1].value("content", Json())));
      }
    }
  } else {
    return make_error(where, ": a record needs 'prompt', 'messages' or 'conversations'");
  }
  if (r.text.empty() && r.messages.is_null()) return make_error(where, ": the record has no user text");
  r.max_tokens = o.output_len;
  if (j.contains("max_tokens") || j.contains("output_len")) {
    const Json& m = j.contains("max_tokens") ? j["max_tokens"] : j["output_len"];
    if (!m.is_number_integer() || m.get<int64_t>() < 1) return make_error(where, ": max_tokens must be a positive integer");
    r.max_tokens = static_cast<int>(m.get<int64_t>());
  } else if (!reply.empty() && tok) {
    auto ids = tok->encode(reply, false);
    if (ids.ok() && !ids->empty()) r.max_tokens = static_cast<int>(ids->size());
  }
  if (tok && !r.text.empty()) {
    auto ids = tok->encode(r.text, false);
    if (ids.ok()) r.input_tokens = static_cast<int>(ids->size());
  }
  return r;
}

Result<std::vector<RequestSpec>> file_dataset(const DatasetOptions& o, size_t n, const Tokenizer* tok, bool chat) {
  std::ifstream f(o.path);
  if (!f) return make_error("--dataset-path: cannot open '", o.path, "'");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  std::vector<RequestSpec> all;
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {  // a JSON array (ShareGPT's files)
    BATON_ASSIGN_OR_RETURN(Json arr, parse_json(text, o.path));
    for (size_t i = 0; i < arr.size(); ++i) {
      BATON_ASSIGN_OR_RETURN(RequestSpec r, file_record(arr[i], o, tok, chat, i + 1));
      all.push_back(std::move(r));
    }
  } else {  // JSONL
    std::stringstream lines(text);
    std::string line;
    for (size_t no = 1; std::getline(lines, line); ++no) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      BATON_ASSIGN_OR_RETURN(Json j, parse_json(line, o.path + ":" + std::to_string(no)));
      BATON_ASSIGN_OR_RETURN(RequestSpec r, file_record(j, o, tok, chat, no));
      all.push_back(std::move(r));
    }
  }
  if (all.empty()) return make_error(o.path, ": no records");
  std::mt19937_64 rng(o.seed);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<RequestSpec> out;
  for (size_t i = 0; i < n; ++i) out.push_back(all[i % all.size()]);  // cycles through a short file
  return out;
}

// ---- the run ----

struct Progress {
  size_t total = 0, done = 0, failed = 0;
  bool tty = false;
  Clock::time_point t0;
  void update(bool final = false) {
    if (!tty) return;
    const int width = 30;
    const int filled = total ? static_cast<int>(width * done / total) : width;
    std::fprintf(stderr, "\r[%s%s] %zu/%zu  failed %zu  %.1f s", std::string(filled, '=').c_str(),
                 std::string(width - filled, ' ').c_str(), done, total, failed, seconds_since(t0));
    if (final) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }
};

Result<Target> parse_target(const std::string& base_url, const std::string& endpoint) {
  std::string rest = base_url;
  if (rest.rfind("http://", 0) == 0) {
    rest = rest.substr(7);
  } else if (rest.find("://") != std::string::npos) {
    return make_error("--base-url: only http:// is supported ('", base_url, "')");
  }
  Target t;
  const size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  if (slash != std::string::npos) t.path_prefix = rest.substr(slash);
  while (!t.path_prefix.empty() && t.path_prefix.back() == '/') t.path_prefix.pop_back();
  const size_t colon = hostport.rfind(':');
  t.host = colon == std::string::npos ? hostport : hostport.substr(0, colon);
  if (t.host == "localhost") t.host = "127.0.0.1";
  try {
    t.port = colon == std::string::npos ? 80 : std::stoi(hostport.substr(colon + 1));
  } catch (...) {
    return make_error("--base-url: bad port in '", base_url, "'");
  }
  if (t.port <= 0 || t.port > 65535) return make_error("--base-url: bad port in '", base_url, "'");
  boost::system::error_code ec;
  asio::ip::make_address(t.host, ec);
  if (ec) {  // a host name: resolved once, here (IPv4 first)
    asio::io_context io;
    asio::ip::tcp::resolver resolver(io);
    auto found = resolver.resolve(t.host, std::to_string(t.port), ec);
    if (ec || found.empty()) return make_error("--base-url: cannot resolve host '", t.host, "' (", ec.message(), ")");
    t.host = found.begin()->endpoint().address().to_string();
    for (const auto& e : found)
      if (e.endpoint().address().is_v4()) {
        t.host = e.endpoint().address().to_string();
        break;
      }
  }
  if (endpoint != "/v1/completions" && endpoint != "/v1/chat/completions")
    return make_error("--endpoint must be /v1/completions or /v1/chat/completions");
  t.endpoint = endpoint;
  t.chat = endpoint == "/v1/chat/completions";
  return t;
}

// The first served model's name (GET /v1/models), or empty.
awaitable<std::string> served_model(const Target& t) {
  http::ClientCall call(co_await asio::this_coro::executor);
  auto st = co_await call.start(t.host, t.port, "GET", t.path_prefix + "/v1/models", "", std::chrono::milliseconds(5000),
                                std::chrono::milliseconds(10000), t.authorization);
  if (!st.ok() || call.status() != 200) co_return std::string();
  auto body = co_await call.read_all(std::chrono::milliseconds(10000));
  if (!body.ok()) co_return std::string();
  auto j = parse_json(*body, "/v1/models");
  if (!j.ok() || !j->is_object() || !(*j)["data"].is_array() || (*j)["data"].empty()) co_return std::string();
  const Json& m = (*j)["data"][0];
  co_return m.is_object() && m.contains("id") && m["id"].is_string() ? m["id"].get<std::string>() : std::string();
}

Status plot_cdfs(const std::vector<RequestResult>& results, const std::string& png, const std::string& title) {
  const auto dir = temp_dir("serve");
  std::vector<std::pair<std::string, std::vector<double>>> series = {{"TTFT", {}}, {"TPOT", {}}, {"ITL", {}}, {"E2E", {}}};
  for (const RequestResult& r : results) {
    if (!r.ok) continue;
    if (r.ttft_s >= 0) series[0].second.push_back(r.ttft_s * 1e3);
    if (r.tpot_s() >= 0) series[1].second.push_back(r.tpot_s() * 1e3);
    for (double x : r.itl_s) series[2].second.push_back(x * 1e3);
    series[3].second.push_back(r.e2e_s * 1e3);
  }
  std::ostringstream gp;
  gp << "set terminal pngcairo size 1200,900 font ',10'\nset output '" << png << "'\n"
     << "set multiplot layout 2,2 title '" << title << "'\nset grid\nset key off\nset ylabel 'cumulative fraction'\n"
     << "set yrange [0:1]\n";
  for (auto& [name, v] : series) {
    std::sort(v.begin(), v.end());
    const auto file = dir / (name + ".dat");
    std::ofstream f(file);
    for (size_t i = 0; i < v.size(); ++i) f << v[i] << " " << static_cast<double>(i + 1) / v.size() << "\n";
    gp << "set title '" << name << " CDF (" << v.size() << (name == "ITL" ? " gaps" : " requests") << ")'\n"
       << "set xlabel '" << name << " (ms)'\n";
    if (v.empty()) {
      gp << "set xrange [0:1]\nplot 2 notitle\nset autoscale x\n";
    } else {
      gp << "plot '" << file.string() << "' using 1:2 with steps lw 2\n";
    }
  }
  gp << "unset multiplot\n";
  Status st = run_gnuplot(gp.str(), dir);
  std::filesystem::remove_all(dir);
  return st;
}

std::string iso_now() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

}  // namespace

Status serve_bench(int argc, char** argv) {
  std::string base_url = "http://127.0.0.1:8000", endpoint = "/v1/completions", model, tokenizer_dir, rate_s = "inf",
              slo_s, json_path, plot_path, label, api_key, percentiles_s = "50,90,99", extra_body;
  DatasetOptions ds;
  size_t num_prompts = 100, warmup = 0, max_concurrency = 0;
  double burstiness = 1.0, timeout_s = 600, temperature = 0;
  bool no_token_ids = false, use_eos = false;
  ArgParser args("baton-bench serve", "Serving benchmark against an OpenAI-compatible server: TTFT, TPOT, ITL, E2E, "
                                      "throughput and goodput under a request rate.");
  args.add({"--base-url"}, &base_url, "server or proxy, http://HOST:PORT");
  args.add({"--endpoint"}, &endpoint, "/v1/completions or /v1/chat/completions");
  args.add({"--model"}, &model, "model name to send (default: the server's first, from /v1/models)");
  args.add({"--tokenizer"}, &tokenizer_dir, "HF model dir or tokenizer.json: random prompts from its vocabulary "
                                            "(needed for chat), dataset lengths counted with it");
  args.add({"--dataset"}, &ds.name, "random or file");
  args.add({"--dataset-path"}, &ds.path, "JSONL (or JSON array) of {prompt}, {messages} or ShareGPT {conversations}");
  args.add({"--random-input-len"}, &ds.input_len, "prompt tokens (random)");
  args.add({"--random-output-len"}, &ds.output_len, "max_tokens (random; default for file records)");
  args.add({"--random-range-ratio"}, &ds.range_ratio, "lengths uniform in len*(1-r)..len*(1+r)");
  args.add({"--random-prefix-ratio"}, &ds.prefix_ratio, "fraction of each prompt that is a prefix all share");
  args.add_flag({"--text-prompts"}, &ds.text_prompts, "send random prompts as text (decoded with --tokenizer), "
                                                     "for servers that take no token ids");
  args.add({"--seed"}, &ds.seed, "dataset and arrival seed (a server with prefix caching has seen the prompts "
                                  "of an earlier run with the same seed)");
  args.add({"--num-prompts"}, &num_prompts, "measured requests");
  args.add({"--warmup"}, &warmup, "requests sent (and waited for) before measuring");
  args.add({"--request-rate"}, &rate_s, "requests per second (Poisson arrivals) or inf (all at once)");
  args.add({"--burstiness"}, &burstiness, "gamma shape of the gaps (1 = Poisson)");
  args.add({"--max-concurrency"}, &max_concurrency, "most requests in flight (0: no limit)");
  args.add({"--slo"}, &slo_s, "goodput SLOs, e.g. ttft=200ms,tpot=50ms,e2e=5s");
  args.add({"--percentiles"}, &percentiles_s, "percentiles to report");
  args.add({"--temperature"}, &temperature, "sampling temperature");
  args.add_flag({"--use-eos"}, &use_eos, "let requests stop at EOS (default: ignore_eos, exact output lengths)");
  args.add_flag({"--no-token-ids"}, &no_token_ids, "do not ask for return_token_ids (servers without it): a "
                                                   "chunk with text counts as one token, and a stream without "
                                                   "usage is counted from its chunks");
  args.add({"--extra-body"}, &extra_body, "JSON object merged into every request (e.g. '{\"logit_bias\": {\"2\": -100}}')");
  args.add({"--api-key"}, &api_key, "Bearer token");
  args.add({"--timeout-s"}, &timeout_s, "per request: the wait for the header and between chunks");
  args.add({"--label"}, &label, "a name for this run in the JSON (e.g. colocated, pd)");
  args.add({"--result-json", "--json"}, &json_path, "write the results here");
  args.add({"--plot"}, &plot_path, "write latency CDFs here (PNG, gnuplot)");
  BATON_RETURN_IF_ERROR(args.parse(argc, argv));
  if (args.help_requested()) return {};

  if (!(timeout_s > 0 && timeout_s <= 86400)) return make_error("--timeout-s must be in (0, 86400]");
  BATON_ASSIGN_OR_RETURN(Target target, parse_target(base_url, endpoint));
  target.token_ids = !no_token_ids;
  target.ignore_eos = !use_eos;
  target.temperature = temperature;
  target.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  if (!api_key.empty()) target.authorization = "Bearer " + api_key;
  if (!extra_body.empty()) {
    auto j = parse_json(extra_body, "--extra-body");
    if (!j.ok() || !j->is_object()) return make_error("--extra-body must be a JSON object");
    target.extra_body = *j;
  }
  double rate = 0;  // 0: inf
  if (rate_s != "inf") {
    try {
      rate = std::stod(rate_s);
    } catch (...) {
      return make_error("--request-rate: '", rate_s, "' is not a number or inf");
    }
    if (!(rate > 0)) return make_error("--request-rate must be > 0 or inf");
  }
  if (!(burstiness > 0)) return make_error("--burstiness must be > 0");
  if (num_prompts == 0) return make_error("--num-prompts must be at least 1");
  if (ds.input_len < 1 || ds.output_len < 1) return make_error("--random-input-len and --random-output-len must be >= 1");
  if (ds.range_ratio < 0 || ds.range_ratio >= 1) return make_error("--random-range-ratio must be in [0, 1)");
  if (ds.prefix_ratio < 0 || ds.prefix_ratio >= 1) return make_error("--random-prefix-ratio must be in [0, 1)");
  std::map<std::string, double> slo;
  if (!slo_s.empty()) {
    BATON_ASSIGN_OR_RETURN(slo, parse_slo(slo_s));
  }
  BATON_ASSIGN_OR_RETURN(auto percentiles, parse_uint_list(percentiles_s, "--percentiles"));
  for (uint64_t p : percentiles)
    if (p > 100) return make_error("--percentiles: ", p, " is over 100");

  std::optional<Tokenizer> tok;
  if (!tokenizer_dir.empty()) {
    BATON_ASSIGN_OR_RETURN(tok, Tokenizer::load(tokenizer_dir));
  }
  std::vector<RequestSpec> specs;
  const size_t total = warmup + num_prompts;
  if (ds.name == "random") {
    BATON_ASSIGN_OR_RETURN(specs, random_dataset(ds, total, tok ? &*tok : nullptr, target.chat));
  } else if (ds.name == "file") {
    if (ds.path.empty()) return make_error("--dataset file needs --dataset-path");
    BATON_ASSIGN_OR_RETURN(specs, file_dataset(ds, total, tok ? &*tok : nullptr, target.chat));
  } else {
    return make_error("--dataset must be random or file");
  }

  asio::io_context io;
  if (model.empty()) {
    asio::co_spawn(io, [&]() -> awaitable<void> { model = co_await served_model(target); }, asio::detached);
    io.run();
    io.restart();
  }
  target.model = model;

  std::vector<RequestResult> results(total);
  AsyncSemaphore slots(max_concurrency ? max_concurrency : total);
  Progress progress;
  progress.tty = isatty(2);
  std::mt19937_64 rng(ds.seed ^ 0x9e3779b97f4a7c15ULL);
  std::gamma_distribution<double> gap(burstiness, rate > 0 ? 1.0 / (rate * burstiness) : 1.0);
  Clock::time_point t0;
  double duration = 0;

  auto one = [&](size_t i, size_t& pending) -> awaitable<void> {
    co_await slots.acquire();
    co_await run_request(target, specs[i], results[i], t0);
    slots.release();
    if (i >= warmup) {
      ++progress.done;
      if (!results[i].ok) ++progress.failed;
      progress.update();
      duration = std::max(duration, seconds_since(t0));
    }
    --pending;
  };
  auto driver = [&]() -> awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer timer(ex);
    size_t pending = 0;
    auto wait_all = [&]() -> awaitable<void> {
      while (pending > 0) {
        timer.expires_after(std::chrono::milliseconds(5));
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      }
    };
    t0 = Clock::now();
    for (size_t i = 0; i < warmup; ++i, ++pending) asio::co_spawn(ex, one(i, pending), asio::detached);
    co_await wait_all();
    if (warmup) std::fprintf(stderr, "warm-up: %zu requests done\n", warmup);
    t0 = Clock::now();
    progress.total = num_prompts;
    progress.t0 = t0;
    auto next_at = t0;
    for (size_t i = warmup; i < total; ++i, ++pending) {
      if (rate > 0 && i > warmup) {  // the first request goes at once, each later one after a gap
        next_at += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
        timer.expires_at(next_at);
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      }
      asio::co_spawn(ex, one(i, pending), asio::detached);
    }
    co_await wait_all();
  };
  asio::co_spawn(io, driver(), asio::detached);
  io.run();
  progress.update(true);

  // ---- metrics ----
  std::vector<double> ttft, tpot, itl, e2e;
  size_t completed = 0, failed = 0, good = 0;
  int64_t in_tokens = 0, out_tokens = 0;
  std::map<std::string, size_t> failure_counts;
  Json reqs = Json::array();
  for (size_t i = warmup; i < total; ++i) {
    const RequestResult& r = results[i];
    Json row = {{"ok", r.ok},
                {"start_s", r.start_s},
                {"prompt_tokens", r.prompt_tokens},
                {"completion_tokens", r.completion_tokens},
                {"streamed_tokens", r.streamed_tokens},
                {"usage_missing", r.usage_missing},
                {"ttft_ms", r.ttft_s >= 0 ? Json(r.ttft_s * 1e3) : Json(nullptr)},
                {"tpot_ms", r.tpot_s() >= 0 ? Json(r.tpot_s() * 1e3) : Json(nullptr)},
                {"e2e_ms", r.e2e_s * 1e3}};
    if (!r.ok) {
      ++failed;
      row["error"] = r.error;
      ++failure_counts[r.error.substr(0, 160)];
      reqs.push_back(row);
      continue;
    }
    ++completed;
    in_tokens += r.prompt_tokens;
    out_tokens += r.completion_tokens;
    if (r.ttft_s >= 0) ttft.push_back(r.ttft_s);
    if (r.tpot_s() >= 0) tpot.push_back(r.tpot_s());
    itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
    e2e.push_back(r.e2e_s);
    bool meets = true;
    for (const auto& [k, v] : slo) {
      if (k == "ttft" && r.ttft_s > v) meets = false;
      if (k == "tpot" && r.tpot_s() > v) meets = false;
      if (k == "e2e" && r.e2e_s > v) meets = false;
      if (k == "itl")
        for (double x : r.itl_s) meets = meets && x <= v;
    }
    if (meets) ++good;
    reqs.push_back(row);
  }
  duration = std::max(duration, 1e-9);
  Json out = {{"schema", "baton-bench-serve/1"},
              {"date", iso_now()},
              {"label", label},
              {"base_url", base_url},
              {"endpoint", endpoint},
              {"model", model},
              {"dataset",
               {{"name", ds.name},
                {"path", ds.path},
                {"input_len", ds.input_len},
                {"output_len", ds.output_len},
                {"range_ratio", ds.range_ratio},
                {"prefix_ratio", ds.prefix_ratio},
                {"seed", ds.seed}}},
              {"request_rate", rate > 0 ? Json(rate) : Json("inf")},
              {"burstiness", burstiness},
              {"max_concurrency", max_concurrency ? Json(max_concurrency) : Json(nullptr)},
              {"num_prompts", num_prompts},
              {"warmup", warmup},
              {"ignore_eos", target.ignore_eos},
              {"token_check", target.token_ids},
              {"duration_s", duration},
              {"completed", completed},
              {"failed", failed},
              {"failures", Json::object()},
              {"total_input_tokens", in_tokens},
              {"total_output_tokens", out_tokens},
              {"request_throughput", completed / duration},
              {"output_throughput", out_tokens / duration},
              {"total_token_throughput", (in_tokens + out_tokens) / duration},
              {"goodput", nullptr},
              {"ttft_ms", summary_ms(ttft, percentiles)},
              {"tpot_ms", summary_ms(tpot, percentiles)},
              {"itl_ms", summary_ms(itl, percentiles)},
              {"e2e_ms", summary_ms(e2e, percentiles)},
              {"requests", reqs}};
  for (const auto& [msg, n] : failure_counts) out["failures"][msg] = n;
  if (!slo.empty()) {
    Json s = Json::object();
    for (const auto& [k, v] : slo) s[k + "_ms"] = v * 1e3;
    out["goodput"] = {{"slo", s}, {"good_requests", good}, {"requests_per_s", good / duration},
                      {"fraction", static_cast<double>(good) / num_prompts}};
  }

  // ---- the table ----
  std::printf("============ Serving Benchmark Result ============\n");
  if (!label.empty()) std::printf("%-40s %s\n", "Label:", label.c_str());
  std::printf("%-40s %s%s\n", "Target:", base_url.c_str(), endpoint.c_str());
  std::printf("%-40s %s\n", "Request rate (req/s):", rate_s.c_str());
  std::printf("%-40s %s\n", "Max concurrency:", max_concurrency ? std::to_string(max_concurrency).c_str() : "none");
  std::printf("%-40s %zu\n", "Successful requests:", completed);
  std::printf("%-40s %zu\n", "Failed requests:", failed);
  std::printf("%-40s %.2f\n", "Benchmark duration (s):", duration);
  std::printf("%-40s %lld\n", "Total input tokens:", static_cast<long long>(in_tokens));
  std::printf("%-40s %lld\n", "Total generated tokens:", static_cast<long long>(out_tokens));
  std::printf("%-40s %.2f\n", "Request throughput (req/s):", completed / duration);
  if (!slo.empty()) std::printf("%-40s %.2f\n", ("Request goodput (req/s, " + slo_s + "):").c_str(), good / duration);
  std::printf("%-40s %.2f\n", "Output token throughput (tok/s):", out_tokens / duration);
  std::printf("%-40s %.2f\n", "Total token throughput (tok/s):", (in_tokens + out_tokens) / duration);
  for (const auto& [key, name] : std::vector<std::pair<std::string, std::string>>{
           {"ttft_ms", "Time to First Token"}, {"tpot_ms", "Time per Output Token (excl. 1st token)"},
           {"itl_ms", "Inter-token Latency"}, {"e2e_ms", "End-to-end Latency"}}) {
    std::printf("%s\n", ("---------------" + name + "---------------").c_str());
    const Json& s = out[key];
    if (s["count"] == 0) {
      std::printf("%-40s -\n", "(no samples)");
      continue;
    }
    std::printf("%-40s %.2f\n", ("Mean " + key.substr(0, key.size() - 3) + " (ms):").c_str(), s["mean"].get<double>());
    std::printf("%-40s %.2f\n", ("Median " + key.substr(0, key.size() - 3) + " (ms):").c_str(), s["median"].get<double>());
    for (uint64_t p : percentiles)
      std::printf("%-40s %.2f\n", ("P" + std::to_string(p) + " " + key.substr(0, key.size() - 3) + " (ms):").c_str(),
                  s["p" + std::to_string(p)].get<double>());
  }
  if (failed) {
    std::printf("---------------Failures---------------\n");
    for (const auto& [msg, n] : failure_counts) std::printf("%6zu x %s\n", n, msg.c_str());
  }
  std::printf("==================================================\n");
  std::fflush(stdout);

  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << out.dump(2) << "\n";
    if (!f) return make_error(json_path, ": write failed");
  }
  if (!plot_path.empty()) {
    std::string title = "baton-bench serve " + (label.empty() ? std::string() : label + ", ") + "rate " + rate_s +
                        ", " + std::to_string(completed) + " ok / " + std::to_string(failed) + " failed";
    BATON_RETURN_IF_ERROR(plot_cdfs({results.begin() + static_cast<ptrdiff_t>(warmup), results.end()}, plot_path, title));
  }
  if (completed == 0) return make_error("every request failed (first: ", results[warmup].error, ")");
  return {};
}

// baton-bench report: one comparison from several serve results.
Status report_bench(int argc, char** argv) {
  std::string table_path, plot_path, title = "baton-bench serve sweep";
  ArgParser args("baton-bench report", "Compares baton-bench serve results (JSON files) by label and request rate: "
                                       "a markdown table and a PNG.");
  args.add({"--table"}, &table_path, "write the markdown table here (default: stdout only)");
  args.add({"--plot"}, &plot_path, "write the PNG here");
  args.add({"--title"}, &title, "plot title");
  std::vector<std::string> files;
  std::vector<const char*> flag_argv{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) == 0) {
      flag_argv.push_back(argv[i]);
      if (a != "--help" && a.find('=') == std::string::npos && i + 1 < argc) flag_argv.push_back(argv[++i]);
    } else {
      files.push_back(a);
    }
  }
  BATON_RETURN_IF_ERROR(args.parse(static_cast<int>(flag_argv.size()), flag_argv.data()));
  if (args.help_requested()) return {};
  if (files.empty()) return make_error("give the serve result files (JSON) to compare");

  // label -> rows sorted by rate (inf last).
  std::map<std::string, std::vector<Json>> by_label;
  for (const std::string& f : files) {
    std::ifstream in(f);
    if (!in) return make_error(f, ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    BATON_ASSIGN_OR_RETURN(Json j, parse_json(ss.str(), f));
    if (!j.is_object() || j.value("schema", "") != "baton-bench-serve/1")
      return make_error(f, ": not a baton-bench serve result");
    by_label[j.value("label", "")].push_back(j);
  }
  auto rate_key = [](const Json& j) { return j["request_rate"].is_number() ? j["request_rate"].get<double>() : 1e300; };
  auto rate_name = [](const Json& j) {
    if (!j["request_rate"].is_number()) return std::string("inf");
    char b[32];
    std::snprintf(b, sizeof b, "%g", j["request_rate"].get<double>());
    return std::string(b);
  };
  std::vector<std::string> rates;  // every rate seen, in order
  for (auto& [label, rows] : by_label) {
    std::sort(rows.begin(), rows.end(), [&](const Json& a, const Json& b) { return rate_key(a) < rate_key(b); });
  }
  std::map<double, std::string> rate_names;
  for (auto& [label, rows] : by_label)
    for (const Json& r : rows) rate_names[rate_key(r)] = rate_name(r);
  for (auto& [k, name] : rate_names) rates.push_back(name);

  auto num = [](const Json& s, const char* k) { return s.contains(k) && s[k].is_number() ? s[k].get<double>() : NAN; };
  std::ostringstream md;
  md << "| label | rate (req/s) | ok | failed | req/s | output tok/s | TTFT p50 (ms) | TTFT p99 | TPOT p50 (ms) | "
        "TPOT p99 | ITL p50 (ms) | E2E p50 (ms) | goodput (req/s) |\n"
     << "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  char line[512];
  for (auto& [label, rows] : by_label)
    for (const Json& r : rows) {
      char good[32] = "-";
      if (r["goodput"].is_object()) std::snprintf(good, sizeof good, "%.2f", r["goodput"]["requests_per_s"].get<double>());
      std::snprintf(line, sizeof line, "| %s | %s | %lld | %lld | %.2f | %.1f | %.1f | %.1f | %.2f | %.2f | %.2f | %.1f | %s |\n",
                    label.c_str(), rate_name(r).c_str(),
                    r["completed"].get<long long>(), r["failed"].get<long long>(), r["request_throughput"].get<double>(),
                    r["output_throughput"].get<double>(), num(r["ttft_ms"], "median"), num(r["ttft_ms"], "p99"),
                    num(r["tpot_ms"], "median"), num(r["tpot_ms"], "p99"), num(r["itl_ms"], "median"),
                    num(r["e2e_ms"], "median"), good);
      md << line;
    }
  std::printf("%s", md.str().c_str());
  if (!table_path.empty()) {
    std::ofstream f(table_path);
    f << md.str();
    if (!f) return make_error(table_path, ": write failed");
  }
  if (plot_path.empty()) return {};

  // One data file per label: rate index, rate name and the plotted figures.
  const auto dir = temp_dir("report");
  std::ostringstream gp;
  gp << "set terminal pngcairo size 1400,1000 font ',10'\nset output '" << plot_path << "'\n"
     << "set multiplot layout 2,2 title '" << title << "'\nset grid\nset key top left\nset xlabel 'request rate (req/s)'\n"
     << "set xrange [-0.5:" << rates.size() - 0.5 << "]\nset xtics (";
  for (size_t i = 0; i < rates.size(); ++i) gp << (i ? ", " : "") << "'" << rates[i] << "' " << i;
  gp << ")\n";
  std::vector<std::pair<std::string, std::string>> files_by_label;
  for (auto& [label, rows] : by_label) {
    const auto file = dir / ("s" + std::to_string(files_by_label.size()) + ".dat");
    std::ofstream f(file);
    for (const Json& r : rows) {
      const size_t x = std::find(rates.begin(), rates.end(), rate_name(r)) - rates.begin();
      const double good = r["goodput"].is_object() ? r["goodput"]["requests_per_s"].get<double>() : NAN;
      f << x << " " << r["output_throughput"].get<double>() << " " << num(r["ttft_ms"], "median") << " "
        << num(r["ttft_ms"], "p99") << " " << num(r["tpot_ms"], "median") << " " << num(r["tpot_ms"], "p99") << " "
        << (std::isnan(good) ? r["request_throughput"].get<double>() : good) << "\n";
    }
    files_by_label.emplace_back(label.empty() ? "(no label)" : label, file.string());
  }
  auto panel = [&](const std::string& t, const std::string& ylabel, std::vector<std::pair<int, std::string>> cols) {
    gp << "set title '" << t << "'\nset ylabel '" << ylabel << "'\nplot ";
    bool first = true;
    for (auto& [label, file] : files_by_label)
      for (auto& [col, suffix] : cols) {
        gp << (first ? "" : ", ") << "'" << file << "' using 1:" << col << " with linespoints lw 2 title '" << label
           << suffix << "'";
        first = false;
      }
    gp << "\n";
  };
  panel("Output token throughput", "tokens/s", {{2, ""}});
  panel("TTFT", "ms", {{3, " p50"}, {4, " p99"}});
  panel("TPOT", "ms", {{5, " p50"}, {6, " p99"}});
  panel("Goodput (request throughput without --slo)", "requests/s", {{7, ""}});
  gp << "unset multiplot\n";
  Status st = run_gnuplot(gp.str(), dir);
  std::filesystem::remove_all(dir);
  return st;
}

}  // namespace baton
