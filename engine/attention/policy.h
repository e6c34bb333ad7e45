// Attention-policy files (schema attn-policy/v1, ALGORITHMS.md §10): named policies, each a
// storage / positions / decode / prefill rule, assigned to every (layer, KV head) of a model.
// This module parses and validates a file against a model's shape and resolves the assignment
// into one policy per (layer, KV head); the KV cache and the attention path consume the result.
//
// Supported now: storage full | ring | compress_once (sink_recent with the compensation token) |
// offload (below), positions original | reindex, decode dense | retained | select | consume,
// prefill dense |
// retained with first_chunk_dense, dense_if_len_le; assignment by default, layer lists, a
// DuoAttention full_attention_heads.tsv with global-quantile binarisation, a RazorAttention head
// list and Retrieval-Head scores with a threshold. Fields the schema defines for later methods
// (evict, offload, token_vote, ...) are refused with a message that says so; unknown fields are
// errors.
//
// Decode-time selection (decode mode select / consume; kernels::KvSelect says what a step
// attends). A select policy's decode.selection:
//   method        exact_logits (TidalDecode), recycle (Recycled Attention), page_minmax (Quest);
//                 token_vote, ann, cluster: not supported by this build
//   budget        keys a selecting step attends, at most (>= 1), always-included keys counted
//   unit          token, or page for page_minmax (and only for it); default from the method
//   granularity   kv_head (default) | q_head (a set per query head); layer: not supported
//   group_reduce  sum_softmax | sum_logits | max for kv_head (default sum_softmax; page_minmax:
//                 sum_logits or max, default sum_logits), none for q_head (its default)
//   always_include {sink, recent, current, last_page, since_last_refresh}: current must be true
//                 (the current token is always attended; with recent 0 the tail is it alone);
//                 last_page only for page_minmax, where it is true (default) and recent is 0;
//                 since_last_refresh only for recycle
//   refresh       {every_steps (>= 1; 1 for exact_logits and page_minmax), similarity {metric
//                 "cos", threshold in (-1, 1), enabled (default true)} (recycle only)}
//   publish       the channel of an exact_logits set (required there, refused elsewhere)
//   pool: refused; query_rope_position: "actual" only.
// decode.attend_selected_in_this_layer: false (default; exact_logits and recycle), true is not
// supported. A consume policy's decode.consume names a channel; every (layer, KV head) it is
// assigned to must have an exact_logits policy publishing that channel on the same KV head at
// an earlier layer (it reads the latest such layer's set). Selecting policies need storage full,
// positions original and prefill dense. Token unit: budget > sink + max(recent, 1); page unit:
// budget and sink multiples of kv_cache.page_size and budget >= sink + 2 pages. Page_minmax
// needs kv_cache.page_metadata ["kmin", "kmax"] (any order), and the field is refused when no
// policy selects pages; kmean and count are not supported. The selecting heads of one layer share
// method, granularity and (recycle) refresh rule. dense_if_len_le of a select policy defaults to
// its budget, a consume policy inherits its publisher's, and all selecting policies of a file must
// end with one value. prefill.seed_selection_from_last_prompt_token (recycle only) is accepted,
// true or false: the first decode step has no set yet, so it attends densely and chooses one: the
// seeding, one step later and from that step's query.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace headwise::engine::attention {

enum class StorageKind { kFull, kRing, kCompressOnce, kOffload };
enum class Positions { kOriginal, kReindex };
enum class DecodeMode { kDense, kRetained, kSelect, kConsume };

// decode.selection (ALGORITHMS.md §10.2; kernels::KvSelect states what a selecting step
// attends). Methods: exact_logits (TidalDecode: a set from this layer's logits, published for
// later layers), recycle (Recycled Attention: a set kept across steps, chosen anew every
// refresh_every steps or when the query drifts) and page_minmax (Quest: pages by their key
// bounds, every step); ann is the offload storage's retrieval (above), not a set on the device.
enum class SelectionMethod { kExactLogits, kRecycle, kPageMinmax, kAnn };
enum class SelectionGranularity { kKvHead, kQHead };
enum class GroupReduce { kSumSoftmax, kSumLogits, kMax, kNone };
struct Selection {
  SelectionMethod method = SelectionMethod::kExactLogits;
  int budget = 0;          // keys attended per step, at most, always-included ones counted
  bool page_unit = false;  // unit page (page_minmax); else token
  SelectionGranularity granularity = SelectionGranularity::kKvHead;
  GroupReduce group_reduce = GroupReduce::kSumSoftmax;  // kNone with granularity q_head
  // always_include: sink tokens, the last `recent` tokens (the current one counts: current true
  // with recent 0 is recent 1), the last page (page_minmax), and for recycle the tokens added
  // since the set was chosen.
  int sink = 0;
  int recent = 0;
  bool current = true;
  bool last_page = false;
  bool since_last_refresh = false;
  int refresh_every_steps = 1;
  bool refresh_by_similarity = false;  // refresh.similarity given and enabled (metric cos)
  double similarity_threshold = 0.0;   // refresh when cos(q, q when chosen) is below this
  std::string publish;                 // exact_logits: the channel later layers consume
};
enum class PrefillMode { kDense, kRetained };

// storage.offload.index: the nearest-neighbour index over a KV head's offloaded keys
// (kvcache/ann): RoarGraph (RetrievalAttention's attention-aware graph, trained with the prompt's
// own queries), the HNSW baseline, or exact search (the reference).
enum class AnnIndexType { kRoarGraph, kHnsw, kExact };
struct OffloadIndex {
  AnnIndexType type = AnnIndexType::kRoarGraph;
  int knn_per_query = 100;    // roargraph: exact neighbours per training query [N_q]
  int max_degree = 35;        // roargraph [M]; hnsw M
  int build_list = 500;       // roargraph candidate list [L]; hnsw ef_construction
  int search_list = 128;      // search queue capacity [L_pq]; hnsw ef (at least the budget)
  int train_stride = 1;       // roargraph: every train_stride-th prompt query trains the index
  bool group_search = false;  // roargraph: one traversal for a GQA group's queries (search group)
};

struct Policy {
  std::string name;
  StorageKind storage = StorageKind::kFull;
  int sink = 0;    // ring / compress_once / offload (gpu_static.sink): first tokens kept
  int window = 0;  // ring / compress_once / offload (gpu_static.recent): most recent tokens kept
  // compress_once: one extra token, the mean K and V of the dropped span; with count weighting
  // its logit carries log(number dropped).
  bool compensation = false;
  bool compensation_by_count = true;
  Positions positions = Positions::kOriginal;
  DecodeMode decode = DecodeMode::kDense;
  PrefillMode prefill = PrefillMode::kDense;
  bool first_chunk_dense = false;
  int dense_if_len_le = 0;  // sequences this short attend densely (0: never)
  Selection selection;      // decode select
  OffloadIndex offload;     // storage offload
  std::string consume;      // decode consume: the channel read

  // Tokens a sequence keeps for a head of this policy, at most; -1: all of them.
  int64_t MaxRetainedTokens() const;
};

struct ModelShape {
  int num_layers = 0;
  int num_heads = 0;  // query heads
  int num_kv_heads = 0;
  // models::LlamaModel::weights_hash() of the loaded model; 0 when unknown (then head-profile
  // files are checked against the counts only, profile_file.h).
  uint64_t weights_hash = 0;
};

enum class RopeStorage { kPostRope, kPreRope, kAuto };

struct PolicySet {
  std::string name;  // reported with each response and in metrics labels
  int page_size = 16;
  RopeStorage rope_storage = RopeStorage::kAuto;
  std::vector<Policy> policies;               // in name order
  std::vector<std::vector<int>> head_policy;  // [layer][kv_head] -> index into policies

  const Policy& At(int layer, int kv_head) const {
    return policies[static_cast<size_t>(
        head_policy[static_cast<size_t>(layer)][static_cast<size_t>(kv_head)])];
  }
  // KV heads per policy over the whole model, in policy order.
  std::vector<int> HeadCounts() const;
  bool IsDense() const;
};

// Every head dense, full storage: what runs without a policy file.
PolicySet DensePolicySet(const ModelShape& shape);

// Reads and validates a policy file; artefact paths inside it (pattern files, head lists) are
// relative to the file's directory. The set's name is the file's "name" field, else its stem.
StatusOr<PolicySet> LoadPolicyFile(const std::string& path, const ModelShape& shape);
// Same from JSON text; base_dir resolves artefact paths, default_name names the set.
StatusOr<PolicySet> ParsePolicy(const std::string& json_text, const ModelShape& shape,
                                const std::string& base_dir, const std::string& default_name);

// DuoAttention binarisation (duo_attn/utils.py sparsify_attention_heads) made deterministic:
// gates clipped to [0, 1]; the ceil(sparsity * (n - 1)) lowest gates of all n heads become
// streaming (false), the rest retrieval (true), which is the count numpy's quantile threshold
// gives for distinct gates. Equal gates are ordered by (layer, head): the earlier head becomes
// streaming first. sparsity >= 1: all streaming; <= 0: none.
std::vector<std::vector<bool>> BinarizeGates(const std::vector<std::vector<double>>& gates,
                                             double sparsity);

}  // namespace headwise::engine::attention
