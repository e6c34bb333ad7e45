// What an Engine is started with: batch limits, the KV pool's size (or the memory budget it comes
// from), prefix caching and the attention policies (one, or A/B arms). Engine::Start checks every
// field and names the one at fault (Status::field), so a front end can report it in its own words
// (a CLI flag).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/arms.h"

namespace headwise::engine {

struct EngineConfig {
  int max_num_seqs = 64;              // sequences running at once
  int max_num_batched_tokens = 2048;  // tokens per step (decode tokens + prefill chunks)
  int max_model_len = 0;              // 0: the model's max_position_embeddings
  int max_waiting = 1024;             // queued requests beyond this are refused
  // The KV pool's size, from the first of these that is set (memory_budget.h, KvPagesForConfig):
  // pages of page_size tokens per (layer, KV head); else a budget of bytes; else, on a GPU, the
  // share of device memory for weights, activations and KV pages together, the KV cache getting
  // what the others leave; else (on the CPU) room for four requests of max_model_len tokens.
  int num_kv_pages = 0;
  int64_t kv_cache_bytes = 0;
  double gpu_memory_utilization = 0.9;
  int page_size = 16;
  // Host memory for offload heads' keys, values and indexes (kvcache/offload_tier.h), a budget of
  // its own: a request is admitted when its prompt's share fits beside the running ones'. 0: half
  // of the machine's physical memory.
  int64_t cpu_kv_bytes = 0;
  bool enable_prefix_caching = true;
  bool enforce_eager = false;    // no captured graphs: every step runs eagerly
  std::string attention_policy;  // an attn-policy/v1 file (engine/attention/policy.h); "": dense
  // A/B arms (engine/arms.h): each runs its own attention policy in this one engine, and a
  // request names its arm (EngineRequest::arm). Empty: one arm running attention_policy; both
  // set: refused.
  std::vector<Arm> arms;
};

}  // namespace headwise::engine
