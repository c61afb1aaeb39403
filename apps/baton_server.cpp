// baton-server: the engine behind an OpenAI-compatible HTTP API. Flags follow vLLM and ATOM:
//   baton-server --model DIR [--host 0.0.0.0] [--port 8000] [--block-size 16] [-tp 1]
//     [--kv_cache_dtype auto|bf16|fp8] [--max-num-seqs 256] [--max-model-len N]
//     [--served-model-name NAME] [--api-key KEY] [--kv-transfer-config JSON]
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>

#include "backend/backend.h"
#include "common/cli.h"
#include "common/log.h"
#include "disagg/kv_connector.h"
#include "disagg/kv_transfer_config.h"
#include "disagg/registration.h"
#include "engine/engine.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "server/http.h"
#include "server/openai_server.h"
#include "xfer/topology.h"

namespace {

struct Options {
  std::string model;
  baton::BackendOptions backend;
  std::string host = "0.0.0.0";
  int port = 8000;
  int max_num_seqs = 256;
  int max_model_len = 0;
  int max_num_batched_tokens = 2048;
  std::string served_model_name;
  std::string api_key;
  std::string metrics_key;
  int max_concurrent_requests = 4096;
  std::string kv_transfer_config;
  std::string log_level = "info";
  int http_threads = 2;
  size_t max_body_bytes = size_t{32} << 20;
  bool no_prefix_caching = false;
  bool no_warmup = false;
};

volatile std::sig_atomic_t g_stop = 0;

bool is_loopback(const std::string& host) {
  return host.rfind("127.", 0) == 0 || host == "::1" || host == "localhost";
}

// One line per open door at start, with how to close it.
void warn_about_exposure(const Options& o, const baton::KvTransferConfig& kv) {
  using namespace baton;
  if (kv.role != KvRole::kColocated && kv.token.empty())
    log::warn(
        "no \"token\" in --kv-transfer-config: the proxy accepts this instance's registration from anyone "
        "on the network, and the KV transfer plane relies on per-transfer capabilities alone (over TCP a peer "
        "reads only blocks it was handed; over UCX or cuda_ipc, the KV region they are in). Set the same "
        "token on the proxy (--token) and every instance, and keep the transfer ports on an isolated network");
  if (o.api_key.empty() && !is_loopback(o.host))
    log::warn("no --api-key while listening on ", o.host,
              ": anyone who reaches this server may send requests and read /metrics; set --api-key (and "
              "--metrics-key for a scraper)");
}

baton::Status run(int argc, char** argv) {
  using namespace baton;
  Options o;
  ArgParser args("baton-server", "Serve a Hugging Face model over an OpenAI-compatible HTTP API.");
  add_backend_flags(args, o.backend);
  args.add({"--model"}, &o.model, "model directory (config.json, *.safetensors, tokenizer.json)");
  args.add({"--host"}, &o.host, "listening address");
  args.add({"--port"}, &o.port, "HTTP port (in a P/D role, http_port in --kv-transfer-config wins)");
  args.add({"--max-num-seqs"}, &o.max_num_seqs, "most requests in a batch");
  args.add({"--max-model-len"}, &o.max_model_len, "context length (0: the model's)");
  args.add({"--max-num-batched-tokens"}, &o.max_num_batched_tokens, "token budget of one step (chunked prefill)");
  args.add({"--served-model-name"}, &o.served_model_name, "model name in the API (default: the directory's name)");
  args.add({"--api-key"}, &o.api_key, "require 'Authorization: Bearer KEY' for the API and /metrics");
  args.add(
      {"--metrics-key"}, &o.metrics_key,
      "also open /metrics to 'Authorization: Bearer KEY', without the counters that reveal which prompts were sent");
  args.add({"--max-concurrent-requests"}, &o.max_concurrent_requests, "requests in flight at most; more get 429");
  args.add({"--kv-transfer-config"}, &o.kv_transfer_config, "P/D role as JSON (kv_role, proxy_ip, proxy_ping_port, http_port)");
  args.add({"--log-level"}, &o.log_level, "debug, info, warning, error");
  args.add({"--http-threads"}, &o.http_threads, "threads serving HTTP connections");
  args.add({"--max-body-bytes"}, &o.max_body_bytes, "largest request body accepted (413 above)");
  args.add_flag({"--no-enable-prefix-caching"}, &o.no_prefix_caching, "turn prefix caching off");
  args.add_flag({"--no-warmup"}, &o.no_warmup,
                "CUDA: prepare each decode graph when its batch size first runs, not before serving");
  BATON_RETURN_IF_ERROR(args.parse(argc, argv));
  if (args.help_requested()) return {};
  BATON_ASSIGN_OR_RETURN(log::Level level, log::parse_level(o.log_level));
  log::set_level(level);
  if (o.model.empty()) return make_error("--model is required (a Hugging Face model directory)");
  if (!std::filesystem::is_directory(o.model)) return make_error("--model ", o.model, ": not a directory");
  if (o.backend.tp_size < 1) return make_error("-tp must be at least 1");
  BATON_ASSIGN_OR_RETURN(KvTransferConfig kv, KvTransferConfig::parse(o.kv_transfer_config));
  if (kv.http_port) o.port = *kv.http_port;
  const bool pd = kv.role != KvRole::kColocated;
  warn_about_exposure(o, kv);
  // The address peers use to reach us: ours if we listen on one, else our route to the proxy.
  const std::string advertise = pd && (o.host == "0.0.0.0" || o.host.empty()) ? local_address_towards(kv.proxy_ip) : o.host;

  // P/D: one transfer agent per TP rank; each rank's KV pool is allocated (and registered) by it.
  // Declared before the engine: the pools must outlive it.
  std::vector<std::unique_ptr<xfer::Agent>> agents;
  std::vector<xfer::MemoryDesc> kv_regions;
  std::string engine_id;
  if (pd) {
    char suffix[17];
    std::snprintf(suffix, sizeof suffix, "%016llx", static_cast<unsigned long long>(std::random_device{}()) << 32 ^
                                                        static_cast<unsigned long long>(std::random_device{}()));
    engine_id = std::string(kv.role == KvRole::kProducer ? "prefill-" : "decode-") + suffix;
    BATON_ASSIGN_OR_RETURN(const DeviceSpec spec, parse_device(o.backend.device));
    if (kv.ucx_net_devices.size() > 1 && kv.ucx_net_devices.size() != static_cast<size_t>(o.backend.tp_size))
      return make_error("--kv-transfer-config: ucx_net_devices has ", kv.ucx_net_devices.size(),
                        " entries for -tp ", o.backend.tp_size, " (one for all ranks, or one per rank)");
    for (int r = 0; r < o.backend.tp_size; ++r) {
      xfer::Agent::Config ac;
      ac.name = engine_id + "-r" + std::to_string(r);
      ac.host = advertise;
      ac.port = kv.handshake_port == 0 ? 0 : kv.handshake_port + r;
      ac.token = kv.token;
      ac.remote_writes = false;  // peers read KV pools; nobody writes into them
      BATON_ASSIGN_OR_RETURN(ac.transports, xfer::Agent::Config::transports_named(kv.transport));
      ac.ucx_net_devices = kv.ucx_net_devices_for(r);
      if (ac.ucx_net_devices.empty() && spec.cuda) {
        // The RDMA NICs nearest this rank's GPU; none (no RDMA here): UCX's default.
        if (auto bus = xfer::cuda_pci_bus_id(spec.first_gpu + r); bus.ok())
          ac.ucx_net_devices = xfer::nearest_rdma_devices(*bus);
      }
      if (!ac.ucx_net_devices.empty()) log::info("rank ", r, ": UCX net devices ", ac.ucx_net_devices);
      BATON_ASSIGN_OR_RETURN(auto agent, xfer::Agent::create(ac));
      agents.push_back(std::move(agent));
    }
    kv_regions.resize(agents.size());
    // Host pools come from the agent (UCX can map them for peers); a GPU backend allocates its
    // pools on its devices, and they are registered below as GPU memory (cuda_ipc on one host).
    if (o.backend.device == "cpu") o.backend.kv_allocator = [&agents, &kv_regions](int rank, size_t n) -> Result<void*> {
      if (rank < 0 || rank >= static_cast<int>(agents.size())) return make_error("no transfer agent for rank ", rank);
      BATON_ASSIGN_OR_RETURN(auto mem, agents[rank]->allocate_memory(n));
      kv_regions[rank] = mem.second;
      return mem.first;
    };
  }

  const auto t0 = std::chrono::steady_clock::now();
  log::info("loading model from ", o.model);
  std::shared_ptr<const Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat_template;
  if (std::filesystem::exists(std::filesystem::path(o.model) / "tokenizer.json")) {
    BATON_ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::load(o.model));
    tokenizer = std::make_shared<const Tokenizer>(std::move(t));
    auto tmpl = ChatTemplate::load(o.model);
    if (tmpl.ok()) {
      chat_template.emplace(std::move(*tmpl));
    } else {
      log::warn("no usable chat template (", tmpl.error(), "); /v1/chat/completions will refuse requests");
    }
  } else {
    log::warn(o.model, " has no tokenizer.json: prompts must be token ids");
  }
  if (o.backend.device == "cpu" && o.backend.kv_cache_bytes == 0) o.backend.kv_cache_bytes = size_t{1} << 30;
  BATON_ASSIGN_OR_RETURN(auto backend, create_backend(o.model, o.backend));
  EngineConfig ec;
  ec.max_num_seqs = o.max_num_seqs;
  ec.max_model_len = o.max_model_len;
  ec.max_num_batched_tokens = o.max_num_batched_tokens;
  ec.enable_prefix_caching = !o.no_prefix_caching;
  BATON_ASSIGN_OR_RETURN(auto engine, Engine::create(std::move(backend), tokenizer, ec));
  log::info("model loaded in ", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
            " s; max model length ", engine->max_model_len());
  if (!o.no_warmup) {
    const auto w0 = std::chrono::steady_clock::now();
    // A failed warm-up costs only its head start: each size is prepared at first use as before.
    const Result<int> warmed = engine->warm_up();
    if (!warmed.ok())
      log::warn("decode graph warm-up failed (", warmed.error(), "); batch sizes are prepared at first use");
    else if (*warmed > 0)
      log::info("decode graphs for ", *warmed, " batch sizes prepared in ",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count(), " s");
  }

  ApiServerConfig api;
  std::string base = std::filesystem::path(o.model).lexically_normal().filename().string();
  if (base.empty()) base = std::filesystem::path(o.model).lexically_normal().parent_path().filename().string();
  api.served_model_names = {o.served_model_name.empty() ? base : o.served_model_name};
  if (o.served_model_name.empty() && o.model != base) api.served_model_names.push_back(o.model);
  api.api_key = o.api_key;
  api.metrics_key = o.metrics_key;
  if (o.max_concurrent_requests < 1) return make_error("--max-concurrent-requests must be at least 1");
  api.max_concurrent_requests = o.max_concurrent_requests;
  OpenAiServer openai_server(*engine, tokenizer, std::move(chat_template), api);
  std::unique_ptr<KvConnector> connector;
  KvLayout layout;
  if (pd) {
    layout = describe_kv_layout(*engine, api.served_model_names[0]);
    std::vector<RankKv> ranks;
    for (int r = 0; r < engine->tp_size(); ++r) {
      const KvMemory mem = engine->kv_memory(r);
      if (mem.device >= 0) {
        BATON_ASSIGN_OR_RETURN(kv_regions[r], agents[r]->register_memory(mem.base, mem.total_bytes,
                                                                         xfer::MemoryKind::kCuda, mem.device));
      }
      ranks.push_back({agents[r].get(), kv_regions[r], mem});
    }
    connector = std::make_unique<KvConnector>(*engine, kv.role, engine_id, layout, std::move(ranks), kv.kv_timeout_s);
    openai_server.set_kv_connector(connector.get());
    KvConnector* c = connector.get();
    Metrics& m = openai_server.metrics();
    m.add_gauge("baton:kv_transfers_total", "Requests whose prompt KV was read from a prefill.",
                [c] { return double(c->stats().transfers_ok); }, true);
    m.add_gauge("baton:kv_transfer_failures_total", "KV reads that failed (the prompt was recomputed).",
                [c] { return double(c->stats().transfers_failed); }, true);
    m.add_gauge("baton:kv_transfer_seconds_total", "Time spent reading prompt KV, summed over requests.",
                [c] { return c->stats().read_seconds; }, true);
    m.add_gauge("baton:kv_transfer_bytes_total", "Prompt KV bytes read from prefills.",
                [c] { return double(c->stats().bytes_read); }, true);
    m.add_gauge("baton:kv_held_transfers", "Finished prefills whose blocks wait to be read.",
                [c] { return double(c->stats().held); });
    m.add_gauge("baton:kv_released_by_reader_total", "Held prefills freed after the decode side read them.",
                [c] { return double(c->stats().released_by_reader); }, true);
    m.add_gauge("baton:kv_released_by_timeout_total", "Held prefills freed by kv_timeout_s.",
                [c] { return double(c->stats().released_by_timeout); }, true);
    // The transfer plane's door: peers refused at the handshake (no live capability or token,
    // bad hello), silent ones closed, and accepts that failed (out of file descriptors).
    using Admission = xfer::Agent::AdmissionStats;
    auto summed = [&agents](uint64_t (*pick)(const Admission&)) {  // over every rank's agent
      return [&agents, pick] {
        uint64_t n = 0;
        for (const auto& a : agents) n += pick(a->admission_stats());
        return double(n);
      };
    };
    m.add_gauge("baton:kv_peers_admitted_total", "Transfer-plane peers admitted (capability or token).",
                summed([](const Admission& s) { return s.admitted; }), true);
    m.add_gauge("baton:kv_peers_refused_total", "Transfer-plane hellos refused (no live capability or token).",
                summed([](const Admission& s) { return s.refused; }), true);
    m.add_gauge("baton:kv_peers_dropped_total", "Transfer-plane connections closed before a hello.",
                summed([](const Admission& s) { return s.timed_out + s.overflowed; }), true);
    m.add_gauge("baton:kv_accept_errors_total", "Transfer-plane accepts that failed (out of file descriptors).",
                summed([](const Admission& s) { return s.accept_errors; }), true);
  }

  http::ServerConfig hc;
  hc.host = o.host;
  hc.port = o.port;
  hc.threads = o.http_threads;
  hc.max_body_bytes = o.max_body_bytes;
  http::Server server(hc);
  openai_server.install(server);
  engine->start();
  BATON_RETURN_IF_ERROR(server.start());
  // The port line is machine-read by tests and scripts (with --port 0 the OS picks the port).
  std::printf("baton-server listening on %s:%d serving '%s'\n", o.host.c_str(), server.port(), api.served_model_names[0].c_str());
  std::fflush(stdout);

  std::unique_ptr<Registrar> registrar;
  if (pd) {
    const std::string http_address = advertise + ":" + std::to_string(server.port());
    const xfer::AgentDesc a0 = agents[0]->describe();
    Json hello = {{"type", "register"},
                  {"role", kv.role == KvRole::kProducer ? "P" : "D"},
                  {"http_address", http_address},
                  {"handshake_address", a0.host + ":" + std::to_string(a0.port)},
                  {"engine_id", engine_id},
                  {"tp_size", engine->tp_size()},
                  {"dp_size", 1},
                  {"model", api.served_model_names[0]},
                  {"kv_layout", layout.to_json()}};
    if (!kv.token.empty()) hello["token"] = kv.token;  // the proxy ignores registrations without it
    const std::string endpoint = "tcp://" + kv.proxy_ip + ":" + std::to_string(kv.proxy_ping_port);
    const auto heartbeat = std::chrono::milliseconds(static_cast<int64_t>(kv.heartbeat_s * 1000));
    BATON_ASSIGN_OR_RETURN(registrar, Registrar::start(endpoint, hello, heartbeat));
    Json goodbye = {{"type", "unregister"}, {"http_address", http_address}};
    if (!kv.token.empty()) goodbye["token"] = kv.token;
    registrar->set_goodbye(goodbye);
    log::info(kv_role_name(kv.role), " ", engine_id, " registers with the proxy at ", endpoint, " as ", http_address);
  }

  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  std::signal(SIGPIPE, SIG_IGN);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  log::info("shutting down");
  registrar.reset();  // the proxy stops routing to us first
  engine->stop();  // every open request gets a final event
  server.stop();
  return {};
}

}  // namespace

int main(int argc, char** argv) { return baton::run_main("baton-server", argc, argv, run); }
