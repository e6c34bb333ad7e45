// A KV layout: how every (layer, KV head) of a model keeps its keys under one attention policy,
// one kernels::KvRetention per head in the policy file's own words (storage, sink, window,
// positions, compensation). The engine turns each policy it serves into one layout
// (engine/attention_setup.h); the KV cache serves several layouts from one pool of pages, and
// every sequence runs one of them (kvcache/kv_cache.h).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "kernels/backend.h"

namespace headwise::kvcache {

using kernels::KvRetention;

// What the host does for a layout's offload heads (storage offload, decode retrieve:
// RetrievalAttention, ALGORITHMS.md §5; kvcache/offload_tier.h runs it). One rule per layout,
// like its compaction rule.
struct OffloadRule {
  enum class Index { kRoarGraph, kHnsw, kExact };
  Index index = Index::kRoarGraph;
  int top_k = 100;         // keys retrieved per search
  bool per_q_head = true;  // a set per query head; else one with the group's mean query
  // With per_q_head and RoarGraph: one traversal of the graph for the group's queries
  // (RoarGraph::SearchGroup: a pool per query, each key read and scored once for all of them),
  // each query head taking its own top_k; else a search per query head.
  bool group_search = false;
  int knn_per_query = 100;  // RoarGraph: exact neighbours per training query [N_q]
  int max_degree = 35;      // RoarGraph [M]; HNSW M
  int build_list = 500;     // RoarGraph candidate list [L]; HNSW ef_construction
  int search_list = 128;    // search queue [L_pq]; HNSW ef (raised to top_k)
  int train_stride = 1;     // every train_stride-th prompt position's queries train the index

  friend bool operator==(const OffloadRule&, const OffloadRule&) = default;
};

struct KvLayout {
  std::string name;  // the attention policy's name
  int num_layers = 0;
  int num_kv_heads = 0;
  std::vector<KvRetention> heads;  // [layer * num_kv_heads + kv_head]
  // Decode-time selection (kernels::KvSelect), [layer * num_kv_heads + kv_head]; empty when no
  // head selects (every head decodes densely). Set indices (KvSelect::set) count from 0 over the
  // layout, one per layer whose heads choose a set.
  std::vector<kernels::KvSelect> selects;
  // A sequence's decode step selects once the sequence holds more than this many keys (the
  // policies' dense_if_len_le); shorter ones decode densely.
  int select_min_len = 0;
  // The host's rule for the offload heads; set exactly when some head offloads.
  std::optional<OffloadRule> offload;

  // Every head full storage: dense attention.
  static KvLayout Dense(int num_layers, int num_kv_heads, std::string name = "dense");

  const KvRetention& At(int layer, int kv_head) const {
    return heads[static_cast<size_t>(layer * num_kv_heads + kv_head)];
  }
  KvRetention& At(int layer, int kv_head) {
    return heads[static_cast<size_t>(layer * num_kv_heads + kv_head)];
  }
  // Heads of one storage kind, over the whole model.
  int CountStorage(kernels::KvStorage storage) const;
  // Heads whose keys live in comp blocks and are dropped after the prompt (compress_once and
  // offload: KvRetention::compacts()).
  int CountCompacting() const;
  // Every head keeps every token: such sequences share prefix-cached pages.
  bool all_full() const { return CountStorage(kernels::kStorageFull) == num_layers * num_kv_heads; }
  // Every head a ring with re-indexed positions (StreamingLLM): a sequence never grows.
  bool all_reindexed_rings() const;
  // The rule of the ring heads, and of the compacting (compress-once or offload) heads: one each
  // per layout (a ring's pages are shared by its heads; compaction happens once per sequence).
  // Default-constructed (full storage) when the layout has none.
  KvRetention ring() const;
  KvRetention compress() const;

  bool selects_any() const { return !selects.empty(); }
  bool selects_pages() const;   // some head's decode is kDecodePages
  int num_select_sets() const;  // distinct KvSelect::set values
  // The largest KvSelect::budget (the state's set width).
  int max_select_budget() const;
  const kernels::KvSelect& SelectAt(int layer, int kv_head) const {
    return selects[static_cast<size_t>(layer * num_kv_heads + kv_head)];
  }

  // Shape, value ranges, and the one-rule-per-kind restriction; errors name the layer and head.
  Status Validate(int num_layers, int num_kv_heads) const;

 private:
  Status ValidateSelects() const;
};

}  // namespace headwise::kvcache
