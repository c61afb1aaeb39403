#include "disagg/kv_connector.h"

#include "common/log.h"
#include "common/secret.h"

namespace baton {

namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

uint64_t KvConnector::prompt_digest(const std::vector<int>& prompt) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the token ids
  for (int t : prompt) {
    for (int b = 0; b < 4; ++b) {
      h ^= static_cast<uint32_t>(t) >> (8 * b) & 0xff;
      h *= 1099511628211ull;
    }
  }
  return h;
}

namespace {

bool flag(const Json& params, const char* key) {
  if (!params.is_object()) return false;
  auto it = params.find(key);
  return it != params.end() && it->is_boolean() && it->get<bool>();
}

}  // namespace

KvLayout describe_kv_layout(Engine& engine, const std::string& model_name) {
  const ModelConfig& c = engine.model_config();
  const KvCacheSpec& kv = engine.kv_spec();
  KvLayout l;
  l.model = model_name;
  l.dtype = kv_dtype_name(kv.dtype);
  l.block_size = kv.block_size;
  l.num_layers = c.num_layers;
  l.num_kv_heads = c.num_kv_heads;
  l.head_dim = c.head_dim;
  l.tp_size = engine.tp_size();
  l.k_scales = kv.k_scales;
  l.v_scales = kv.v_scales;
  return l;
}

// A prefill instance as its kv_transfer_params describe it.
struct KvConnector::Remote {
  KvLayout layout;
  struct Rank {
    xfer::AgentDesc agent;
    uint64_t region = 0;
    uint64_t layer_bytes = 0;
    uint64_t block_bytes = 0;
  };
  std::vector<Rank> ranks;
  std::vector<int32_t> block_ids;
  std::string transfer_id;
  std::string capability;  // empty from a prefill that hands out none (then the token must admit us)
  int first_token = -1;

  static Result<Remote> parse(const Json& p) {
    const std::string what = "kv_transfer_params";
    if (!p.is_object()) return make_error(what, " must be an object");
    Remote r;
    auto layout = p.find("kv_layout");
    if (layout == p.end()) return make_error(what, ": kv_layout is missing (it comes from a baton prefill)");
    BATON_ASSIGN_OR_RETURN(r.layout, KvLayout::from_json(*layout));
    BATON_ASSIGN_OR_RETURN(r.block_ids, json_get<std::vector<int32_t>>(p, "remote_block_ids", what));
    BATON_ASSIGN_OR_RETURN(r.transfer_id, json_get<std::string>(p, "transfer_id", what));
    BATON_ASSIGN_OR_RETURN(r.first_token, json_get<int>(p, "first_token", what));
    BATON_ASSIGN_OR_RETURN(r.capability, json_get_or<std::string>(p, "remote_capability", "", what));
    auto ranks = p.find("remote_ranks");
    if (ranks == p.end() || !ranks->is_array() || static_cast<int>(ranks->size()) != r.layout.tp_size)
      return make_error(what, ": remote_ranks must list one entry per prefill rank (", r.layout.tp_size, ")");
    for (const Json& j : *ranks) {
      Rank k;
      auto agent = j.find("agent");
      if (agent == j.end()) return make_error(what, ": remote_ranks entry without agent");
      BATON_ASSIGN_OR_RETURN(k.agent, xfer::AgentDesc::from_json(*agent));
      BATON_ASSIGN_OR_RETURN(k.region, json_get<uint64_t>(j, "region", what));
      BATON_ASSIGN_OR_RETURN(k.layer_bytes, json_get<uint64_t>(j, "layer_bytes", what));
      BATON_ASSIGN_OR_RETURN(k.block_bytes, json_get<uint64_t>(j, "block_bytes", what));
      r.ranks.push_back(std::move(k));
    }
    return r;
  }
};

KvConnector::KvConnector(Engine& engine, KvRole role, std::string engine_id, KvLayout layout, std::vector<RankKv> ranks,
                         double kv_timeout_s)
    : engine_(engine),
      role_(role),
      engine_id_(std::move(engine_id)),
      layout_(std::move(layout)),
      ranks_(std::move(ranks)),
      kv_timeout_s_(kv_timeout_s) {
  if (role_ == KvRole::kProducer) {
    for (RankKv& r : ranks_)
      r.agent->set_notification_handler([this](const std::string&, const std::string& msg) { on_notification(msg); });
    threads_.emplace_back([this] { reaper_loop(); });
  } else if (role_ == KvRole::kConsumer) {
    // Reads block on the network, so a few run at once; each one keeps all ranks busy.
    for (int i = 0; i < 4; ++i) threads_.emplace_back([this] { worker_loop(); });
  }
}

KvConnector::~KvConnector() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  for (RankKv& r : ranks_)
    if (role_ == KvRole::kProducer) r.agent->set_notification_handler(nullptr);
}

bool KvConnector::wants_remote_decode(const Json& p) { return flag(p, "do_remote_decode"); }
bool KvConnector::wants_remote_prefill(const Json& p) { return flag(p, "do_remote_prefill"); }

ConnectorStats KvConnector::stats() const {
  std::lock_guard lock(mutex_);
  ConnectorStats s = stats_;
  s.held = held_.size();
  return s;
}

// ---- producer ----

Json KvConnector::on_prefill_finished(const RequestOutput& out, int num_prompt_tokens, uint64_t prompt_digest) {
  // The capability covers this transfer's blocks in every layer of each rank's pool, and
  // nothing else: a decode handed these params can read these blocks alone (README: one-sided
  // transports reach the whole region).
  const std::string capability = xfer::new_capability();
  std::vector<xfer::GrantRange> ranges;
  for (const RankKv& rank : ranks_) {
    ranges.clear();
    for (int l = 0; l < layout_.num_layers; ++l)
      for (int32_t b : out.kv_block_ids)
        ranges.push_back({rank.region.region, l * rank.memory.layer_bytes + uint64_t(b) * rank.memory.block_bytes,
                          rank.memory.block_bytes});
    rank.agent->grant(capability, ranges);
  }
  std::string transfer_id;
  {
    std::lock_guard lock(mutex_);
    transfer_id = engine_id_ + "-" + std::to_string(next_transfer_++);
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(kv_timeout_s_));
    held_[transfer_id] = Held{out.seq_id, deadline, capability};
  }
  cv_.notify_all();
  Json ranks = Json::array();
  for (size_t r = 0; r < ranks_.size(); ++r)
    ranks.push_back({{"agent", ranks_[r].agent->describe().to_json()},
                     {"region", ranks_[r].region.region},
                     {"layer_bytes", ranks_[r].memory.layer_bytes},
                     {"block_bytes", ranks_[r].memory.block_bytes}});
  const xfer::AgentDesc rank0 = ranks_[0].agent->describe();
  // ATOM's and vLLM's key names first, then what our decode side reads.
  return {{"do_remote_prefill", true},
          {"do_remote_decode", false},
          {"remote_engine_id", engine_id_},
          {"remote_host", rank0.host},
          {"remote_handshake_port", rank0.port},
          {"remote_block_ids", out.kv_block_ids},
          {"remote_tp_size", layout_.tp_size},
          {"transfer_id", transfer_id},
          {"remote_capability", capability},
          {"first_token", out.token_ids.empty() ? -1 : out.token_ids.back()},
          {"prompt_tokens", num_prompt_tokens},
          {"prompt_digest", xfer::to_hex(&prompt_digest, sizeof prompt_digest)},
          {"remote_ranks", ranks},
          {"kv_layout", layout_.to_json()}};
}

void KvConnector::on_notification(const std::string& message) {
  static log::Throttle malformed;
  auto parsed = parse_json(message, "notification");  // (with the depth limit: peers are not trusted)
  const Json j = parsed.ok() ? std::move(*parsed) : Json();
  if (!j.is_object() || !j.contains("transfer_id") || !j["transfer_id"].is_string()) {
    malformed.warn("KV connector: ignoring a malformed notification");
    return;
  }
  const std::string capability =
      j.contains("capability") && j["capability"].is_string() ? j["capability"].get<std::string>() : "";
  release_transfer(j["transfer_id"].get<std::string>(), capability);
}

bool KvConnector::release_transfer(const std::string& transfer_id, const std::string& capability) {
  static log::Throttle forged;
  std::lock_guard lock(mutex_);
  auto it = held_.find(transfer_id);
  if (it == held_.end()) return false;  // already released (read, timeout) or unknown
  // Only whoever was handed the transfer may let it go: transfer ids are not secret.
  if (!secrets_equal(capability, it->second.capability)) {
    forged.warn("KV connector: ignoring a release of transfer ", it->first, " without its capability");
    return false;
  }
  ++stats_.released_by_reader;
  release_locked(it);
  return true;
}

void KvConnector::release_locked(std::map<std::string, Held>::iterator it) {
  for (RankKv& r : ranks_) r.agent->revoke(it->second.capability);
  engine_.release_held(it->second.seq_id);
  held_.erase(it);
}

void KvConnector::reaper_loop() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    auto next = Clock::now() + std::chrono::seconds(1);
    for (auto it = held_.begin(); it != held_.end();) {
      if (it->second.deadline <= Clock::now()) {
        log::warn("KV connector: transfer ", it->first, " was not read within ", kv_timeout_s_, " s; freeing its blocks");
        ++stats_.released_by_timeout;
        release_locked(it++);
      } else {
        next = std::min(next, it->second.deadline);
        ++it;
      }
    }
    cv_.wait_until(lock, next);
  }
}

// ---- consumer ----

void KvConnector::queue(ReadJob job) {
  {
    std::lock_guard lock(mutex_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void KvConnector::release_remote(const Json& params) {
  if (role_ != KvRole::kConsumer) return;
  auto remote = Remote::parse(params);
  if (remote.ok()) queue(ReadJob{0, {}, std::make_shared<const Remote>(std::move(*remote))});
}

Status KvConnector::prepare_remote_prefill(Request& request, const Json& params) {
  BATON_ASSIGN_OR_RETURN(Remote parsed, Remote::parse(params));
  auto remote = std::make_shared<const Remote>(std::move(parsed));
  auto release_only = [this, &remote] { queue(ReadJob{0, {}, remote}); };
  if (Status s = layout_.compatible_with(remote->layout); !s.ok()) {
    release_only();
    return s;
  }
  const int prompt_len = static_cast<int>(request.prompt.size());
  const size_t need = static_cast<size_t>((prompt_len + layout_.block_size - 1) / layout_.block_size);
  // From the request body: a wrong type counts as missing (the prompt is then computed here).
  const bool has_count = params.contains("prompt_tokens") && params["prompt_tokens"].is_number_integer();
  const int remote_prompt = has_count ? params["prompt_tokens"].get<int>() : -1;
  const bool has_digest = params.contains("prompt_digest") && params["prompt_digest"].is_string();
  const uint64_t digest = prompt_digest(request.prompt);
  const bool same_prompt = remote_prompt == prompt_len && has_digest &&
                           params["prompt_digest"].get<std::string>() == xfer::to_hex(&digest, sizeof digest);
  if (!same_prompt || remote->block_ids.size() < need) {
    // The prefill saw another prompt (a different tokenizer or template): its KV is no use.
    log::warn("request ", request.request_id, ": the prefill computed ", remote_prompt, " prompt tokens, here ",
              prompt_len, "; computing the prompt locally");
    release_only();
    return {};
  }
  request.wait_for_remote_kv = true;
  request.on_remote_blocks = [this, remote](uint64_t seq_id, const std::vector<int32_t>& blocks) {
    queue(ReadJob{seq_id, blocks, remote});
  };
  return {};
}

void KvConnector::worker_loop() {
  for (;;) {
    ReadJob job;
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    if (job.dst_blocks.empty()) {  // nothing to read: just let the prefill free its blocks
      tell_prefill(*job.remote, false);
      continue;
    }
    const auto t0 = Clock::now();
    std::string error;
    const bool ok = read_kv(job, &error);
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!ok) log::warn("KV read for sequence ", job.seq_id, " failed (", error, "); recomputing its prompt locally");
    tell_prefill(*job.remote, ok);
    {
      std::lock_guard lock(mutex_);
      if (ok) {
        ++stats_.transfers_ok;
        stats_.read_seconds += seconds;
        size_t bytes = 0;
        for (const RankKv& r : ranks_) bytes += r.memory.block_bytes;
        stats_.bytes_read += bytes * job.dst_blocks.size() * layout_.num_layers;
      } else {
        ++stats_.transfers_failed;
      }
    }
    engine_.remote_kv_ready(job.seq_id, ok, job.remote->first_token);
  }
}

bool KvConnector::read_kv(const ReadJob& job, std::string* error) {
  const Remote* remote = job.remote.get();
  const int n_blocks = static_cast<int>(job.dst_blocks.size());
  struct InFlight {
    std::shared_ptr<xfer::Session> session;
    xfer::TransferId id;
  };
  std::vector<InFlight> in_flight;
  // Every local rank issues its reads before any waits: ranks move their slices in parallel.
  for (size_t r = 0; r < ranks_.size(); ++r) {
    const RankKv& dst = ranks_[r];
    const std::vector<SliceCopy> plan = plan_head_slices(remote->layout, layout_, static_cast<int>(r));
    std::map<int, std::vector<xfer::TransferOp>> by_src;
    for (int l = 0; l < layout_.num_layers; ++l)
      for (int b = 0; b < n_blocks; ++b)
        for (const SliceCopy& s : plan) {
          const Remote::Rank& src = remote->ranks[s.src_rank];
          by_src[s.src_rank].push_back(
              {dst.region.region, l * dst.memory.layer_bytes + job.dst_blocks[b] * dst.memory.block_bytes + s.dst_offset,
               src.region, l * src.layer_bytes + static_cast<uint64_t>(remote->block_ids[b]) * src.block_bytes + s.src_offset,
               s.bytes});
        }
    for (auto& [s, ops] : by_src) {
      auto session = dst.agent->connect(remote->ranks[s].agent, remote->capability);
      if (!session.ok()) {
        *error = session.error();
        break;
      }
      if (!remote->capability.empty()) {
        if (Status st = (*session)->authorize(remote->capability, remote->ranks[s].region); !st.ok()) {
          *error = st.message();
          break;
        }
      }
      auto id = (*session)->read(xfer::coalesce(ops));
      if (!id.ok()) {
        *error = id.error();
        break;
      }
      in_flight.push_back({*session, *id});
    }
    if (!error->empty()) break;
  }
  for (InFlight& f : in_flight) {  // wait for all, even after a failure: the blocks must be quiet
    Status s = f.session->wait(f.id);
    if (!s.ok() && error->empty()) *error = s.message();
  }
  return error->empty();
}

void KvConnector::tell_prefill(const Remote& remote, bool ok) {
  auto session = ranks_[0].agent->connect(remote.ranks[0].agent, remote.capability);
  if (!session.ok()) {
    log::warn("KV connector: cannot reach prefill ", remote.ranks[0].agent.name, " to release transfer ",
              remote.transfer_id, " (", session.error(), "); it frees the blocks by timeout");
    return;
  }
  const Json msg = {{"transfer_id", remote.transfer_id}, {"capability", remote.capability}, {"ok", ok}};
  if (Status s = (*session)->notify(msg.dump()); !s.ok())
    log::warn("KV connector: notifying prefill failed: ", s.message());
}

}  // namespace baton
