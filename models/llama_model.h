// The Llama-family forward pass (Llama 2/3, Mistral, Qwen2, SmolLM2, TinyStories), written
// once against kernels::Backend. It runs a batch of sequences of different lengths — prefill
// chunks and decode steps mixed — through the paged KV cache.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "core/status.h"
#include "kernels/backend.h"
#include "kvcache/kv_cache.h"
#include "models/model_config.h"
#include "models/weight_source.h"

namespace headwise::models {

// One sequence's share of a forward pass: `tokens` at positions start_pos, start_pos + 1, ...
// Its SequenceKv must already hold room for start_pos + tokens.size() tokens, and the cache
// must hold this sequence's K/V for positions [0, start_pos).
struct BatchEntry {
  const kvcache::SequenceKv* kv = nullptr;
  std::span<const int32_t> tokens;
  int start_pos = 0;
  bool all_logits = false;  // logits for every token; otherwise for the last one only
};

class LlamaModel {
 public:
  static StatusOr<std::unique_ptr<LlamaModel>> Load(const ModelConfig& config,
                                                    WeightSource& weights,
                                                    kernels::Backend& backend);

  const ModelConfig& config() const { return config_; }
  kernels::Backend& backend() const { return *backend_; }
  kvcache::KvCacheConfig KvConfig(int num_pages, int page_size = 16) const;
  // Bytes of weights as the backend stores them, for roofline figures.
  size_t weight_bytes() const { return weight_bytes_; }
  // Fingerprint of the weights as loaded (models/weight_hash.h says what it covers).
  uint64_t weights_hash() const { return weights_hash_; }

  // Sees each layer's attention inputs after its keys are written and its attention ran: the
  // layer, its post-RoPE queries q [T, Hq, D], the KV pool and the step's batch (tables and
  // positions), all on the backend's device and valid only during the call. Used offline
  // (engine/attention/head_profile.h); unset (the default) costs nothing. While set, every
  // step runs eagerly (no graph replay).
  using AttentionObserver =
      std::function<void(int layer, const Tensor& q, const kernels::KvPoolView& pool,
                         const kernels::PagedAttentionBatch& batch)>;
  void set_attention_observer(AttentionObserver observer) { observer_ = std::move(observer); }

  // Runs the batch and returns logits [R, V] on the backend's device, R = the entries' logit
  // rows in order. The view stays valid until the next Forward.
  Tensor Forward(std::span<const BatchEntry> batch, kvcache::KvCache& cache);
  // Forward, then the logits copied to the host.
  std::vector<float> ForwardToHost(std::span<const BatchEntry> batch, kvcache::KvCache& cache);

  // Decode steps replay captured graphs where the backend can capture (default on);
  // off runs every step eagerly (--enforce-eager).
  void set_use_graphs(bool on) { use_graphs_ = on; }
  // The batch sizes decode graphs are captured for: a batch runs in the smallest bucket that
  // holds it, padded; 0 when it is larger than every bucket (eager).
  static int GraphBatchBucket(int num_seqs);

 private:
  struct Layer {
    kernels::Buffer input_norm, qkv, qkv_bias, o_proj, post_norm, gate_up, down;
  };

  // A step's integer metadata, host side, in the layout Run reads.
  struct StepMeta {
    std::vector<int32_t> data;
    int64_t num_tokens = 0, num_rows = 0;
    int num_seqs = 0, max_blocks = 1, max_query_len = 1;
    bool rings = false;     // the cache has ring heads: ring table and head flags follow
    bool compress = false;  // compress-once heads: compaction points, comp table, head flags follow
    bool reindex = false;   // some ring heads re-index positions: their flags follow per layer
  };
  struct DecodeGraph {
    kernels::Buffer meta;  // the graph reads its metadata here; refreshed before each replay
    std::unique_ptr<kernels::CapturedOps> ops;
  };

  LlamaModel(const ModelConfig& config, kernels::Backend& backend)
      : config_(config), backend_(&backend) {}
  Status LoadWeights(WeightSource& weights);
  // Pads to pad_seqs sequences (extra ones are one padding token each) and pad_blocks table
  // columns.
  StepMeta BuildMeta(std::span<const BatchEntry> batch, const kvcache::KvCache& cache, int pad_seqs,
                     int pad_blocks) const;
  // Grows activations and logits to hold the step; true when buffers moved.
  bool EnsureWorkspace(int64_t num_tokens, int64_t num_rows);
  void Upload(const StepMeta& m, kernels::Buffer& meta);
  // Issues the forward pass of the step whose metadata is in `meta`; returns the logits view.
  Tensor Run(const StepMeta& m, const kernels::Buffer& meta, kvcache::KvCache& cache);

  ModelConfig config_;
  kernels::Backend* backend_;
  std::vector<Layer> layers_;
  kernels::Buffer embed_, final_norm_, lm_head_, inv_freq_;
  size_t weight_bytes_ = 0;
  uint64_t weights_hash_ = 0;
  AttentionObserver observer_;
  // Reused across steps, grown to the largest batch seen: no allocation per step.
  struct Workspace {
    int64_t tokens = 0;
    kernels::Buffer residual, normed, qkv, q, attn, proj, gate_up, mlp, last;
  };
  Workspace workspace_;
  kernels::Buffer meta_;    // the step's integer metadata (ids, positions, block table)
  kernels::Buffer logits_;  // storage behind the last Forward's result
  bool use_graphs_ = true;
  std::map<std::pair<int, int>, DecodeGraph> graphs_;  // by (batch bucket, table width)
  uint64_t graphs_cache_id_ = 0;                       // the KvCache graphs_ were recorded against
};

}  // namespace headwise::models
