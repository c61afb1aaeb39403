// The P/D KV connector (DESIGN.md section 1): what turns an engine into a prefill (kv_producer)
// or a decode (kv_consumer) instance.
//
// Producer: a request with kv_transfer_params {do_remote_decode: true} runs with hold_kv; when
// it finishes, its blocks stay pinned under a transfer id, and the response carries the
// kv_transfer_params the decode side needs (engine id, per-rank agents and KV regions, block
// ids, layout, first token, and remote_capability: the secret that lets the decode's agents
// read exactly these blocks, granted on every rank's agent). The blocks are freed, and the
// capability revoked, when the decode side notifies that it has read them (or gave up; the
// notification must carry the capability), or after kv_timeout_s.
//
// Consumer: a request with {do_remote_prefill: true, ...those params} waits in the engine's
// remote-KV state; once its destination blocks are allocated, every local TP rank reads its own
// head slice of every layer from the prefill's ranks (coalesced, all ranks in flight at once),
// then the prefill is notified and the engine decodes from the prefill's first token. If the
// reads fail, the engine recomputes the prompt locally; the request is not lost.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/json.h"
#include "disagg/kv_layout.h"
#include "disagg/kv_transfer_config.h"
#include "engine/engine.h"
#include "xfer/agent.h"

namespace baton {

// One TP rank's KV pool as peers see it.
struct RankKv {
  xfer::Agent* agent = nullptr;
  xfer::MemoryDesc region;
  KvMemory memory;
};

struct ConnectorStats {
  uint64_t transfers_ok = 0;
  uint64_t transfers_failed = 0;  // decode side: reads that failed (the prompt was recomputed)
  uint64_t bytes_read = 0;
  double read_seconds = 0;        // sum over transfers, from blocks allocated to KV in place
  uint64_t held = 0;              // prefill side: transfers whose blocks are pinned now
  uint64_t released_by_reader = 0;
  uint64_t released_by_timeout = 0;
};

// This engine's KV cache as peers must see it.
KvLayout describe_kv_layout(Engine& engine, const std::string& model_name);

class KvConnector {
 public:
  // `layout` describes this instance's cache (tp_size = ranks.size()); `engine_id` is unique per
  // instance (it names the agents).
  KvConnector(Engine& engine, KvRole role, std::string engine_id, KvLayout layout, std::vector<RankKv> ranks,
              double kv_timeout_s);
  ~KvConnector();

  KvRole role() const { return role_; }
  const KvLayout& layout() const { return layout_; }
  const std::string& engine_id() const { return engine_id_; }

  // Producer: the request asks to keep its KV for a remote decode.
  static bool wants_remote_decode(const Json& kv_transfer_params);
  // Producer, from the request's output callback (engine loop): pins the finished request's
  // blocks under a new transfer id and returns the params for the decode side.
  Json on_prefill_finished(const RequestOutput& final_output, int num_prompt_tokens, uint64_t prompt_digest);
  // Producer: frees a pinned transfer now (its decode side has read it, or will not: the proxy
  // found no decode). `capability` must be the transfer's (remote_capability). False if it was
  // released already, is unknown, or the capability is not its own.
  bool release_transfer(const std::string& transfer_id, const std::string& capability);
  // A digest of the prompt's token ids: the decode side checks that it computes the same prompt.
  static uint64_t prompt_digest(const std::vector<int>& prompt);

  // Consumer: the request's KV comes from a prefill.
  static bool wants_remote_prefill(const Json& kv_transfer_params);
  // Checks the params against this instance (layout, prompt) and arms the request to wait for
  // remote KV. An error is the client's (or the deployment's) and names the problem.
  Status prepare_remote_prefill(Request& request, const Json& kv_transfer_params);
  // Consumer: the request will not run here (refused before reaching the engine): tells the
  // prefill to free its blocks now rather than at its timeout.
  void release_remote(const Json& kv_transfer_params);

  ConnectorStats stats() const;

 private:
  struct Held {
    uint64_t seq_id;
    std::chrono::steady_clock::time_point deadline;
    std::string capability;  // granted on every rank's agent for this transfer's blocks
  };
  // Producer: frees a held transfer's blocks and revokes its capability (under mutex_).
  void release_locked(std::map<std::string, Held>::iterator it);
  struct Remote;  // a prefill's kv_transfer_params, parsed once per request
  struct ReadJob {
    uint64_t seq_id;
    std::vector<int32_t> dst_blocks;  // empty: nothing to read, only tell the prefill to let go
    std::shared_ptr<const Remote> remote;
  };

  void on_notification(const std::string& message);
  void reaper_loop();
  void worker_loop();
  // Reads one request's KV; true when every byte is in place.
  bool read_kv(const ReadJob& job, std::string* error);
  void tell_prefill(const Remote& remote, bool ok);
  void queue(ReadJob job);

  Engine& engine_;
  KvRole role_;
  std::string engine_id_;
  KvLayout layout_;
  std::vector<RankKv> ranks_;
  double kv_timeout_s_;

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;
  uint64_t next_transfer_ = 1;
  std::map<std::string, Held> held_;  // transfer id -> pinned request (producer)
  std::deque<ReadJob> jobs_;          // consumer
  ConnectorStats stats_;
  std::vector<std::thread> threads_;
};

}  // namespace baton
