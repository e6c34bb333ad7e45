// The Llama-family forward pass (Llama 2/3, Mistral, Qwen2, SmolLM2, TinyStories), written
// once against kernels::Backend: the layer math of one step, a batch of sequences of different
// lengths (prefill chunks and decode steps mixed) over the paged KV cache. Packing steps, block
// tables and graph capture are the engine's model runner's (engine/model_runner.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "core/status.h"
#include "kernels/backend.h"
#include "kernels/communicator.h"
#include "models/model_config.h"
#include "models/weight_source.h"

namespace headwise::models {

// One step's inputs as the layers read them, on the backend's device. The engine's model runner
// (engine/model_runner.h) packs them from its batch and the KV cache's tables; the model only
// computes.
struct StepInputs {
  Tensor ids;          // i32 [T]: token ids
  Tensor token_seq;    // i32 [T]: batch index of each token's sequence
  Tensor token_pos;    // i32 [T]: position of each token; negative: padding
  Tensor query_start;  // i32 [S + 1]: sequence s owns tokens [query_start[s], query_start[s + 1])
  Tensor logit_rows;   // i32 [R]: the tokens whose logits are returned, in order
  int max_query_len = 1;
  kernels::KvPoolView pool;
  std::span<const kernels::BlockTable> layer_tables;  // one per layer
  // Decode-time selection (kernels::SelectDecodeBatch), when the cache has selecting heads:
  // per layer the selection operations that run (kernels::SelectOp bits of its heads, over the
  // layouts; kSelectOpScorePages also keeps its page bounds up to date); the sequences' decode
  // rows and lengths; the state; and the scores' width.
  std::span<const char> select_ops;  // empty: no selection
  Tensor seq_token;                  // i32 [S]
  Tensor seq_len;                    // i32 [S]
  kernels::SelectState select_state;
  int select_max_len = 0;
  // Offload heads (kernels::OffloadDecodeBatch, with seq_token and seq_len above), when the step
  // has sequences of layouts that offload: per layer whether some layout offloads there; the
  // host's half in two calls: offload_send with the layer's post-RoPE queries q [T, Hq, D] before
  // PagedAttention (it queues their copy to the host), then offload_host after it (it waits for
  // the copy alone, so PagedAttention runs on the device meanwhile; keeps the prompt's training
  // queries; writes offload_out / offload_lse, [S, Hq, D] and [S, Hq] f32 on the device, for the
  // sequences that retrieve); then OffloadAttention merges. The host works inside the step, so
  // such steps run eagerly.
  std::span<const char> offload_layers;  // empty: none
  std::function<void(const Tensor& q)> offload_send;
  std::function<void(int layer)> offload_host;
  Tensor offload_out, offload_lse;
};

// Tensor parallelism (Megatron-style), the share of rank `rank` of `size`: query heads, KV heads
// (so their pages and policies) and MLP columns [rank * n / size, (rank + 1) * n / size) of each
// (QKV and gate/up by output rows, o_proj and down by input columns), and the vocabulary rows
// [rank * Vs, (rank + 1) * Vs), Vs = ceil(V / size), of the embedding and the LM head (the last
// rank's share padded with zero rows). Partial sums meet in an all-reduce after the embedding,
// o_proj and down; rank 0 gathers the logits. Every rank runs every step with the same inputs.
struct ModelShard {
  int rank = 0;
  int size = 1;
  kernels::Communicator* comm = nullptr;  // needed when size > 1
};

class LlamaModel;

// Sets a model's attention observer (LlamaModel::set_attention_observer) for a scope and clears it
// on every path out.
class ScopedAttentionObserver {
 public:
  ScopedAttentionObserver(LlamaModel& model,
                          std::function<void(int, const Tensor&, const kernels::KvPoolView&,
                                             const kernels::PagedAttentionBatch&)>
                              observer);
  ~ScopedAttentionObserver();
  ScopedAttentionObserver(const ScopedAttentionObserver&) = delete;
  ScopedAttentionObserver& operator=(const ScopedAttentionObserver&) = delete;

 private:
  LlamaModel& model_;
};

class LlamaModel {
 public:
  // InvalidArgument when the shard cannot split the model (heads, KV heads or the intermediate
  // size not divisible by its size, with the numbers).
  static StatusOr<std::unique_ptr<LlamaModel>> Load(const ModelConfig& config,
                                                    WeightSource& weights,
                                                    kernels::Backend& backend,
                                                    const ModelShard& shard = {});
  // Why `config` cannot be split over `size` ranks, or Ok.
  static Status CheckShardable(const ModelConfig& config, int size);

  // The whole model's shape; a rank's share of it is num_heads() etc.
  const ModelConfig& config() const { return config_; }
  const ModelShard& shard() const { return shard_; }
  int num_heads() const { return config_.num_heads / shard_.size; }
  int num_kv_heads() const { return config_.num_kv_heads / shard_.size; }
  int intermediate_size() const { return config_.intermediate_size / shard_.size; }
  kernels::Backend& backend() const { return *backend_; }
  // Bytes of weights as the backend stores them (this rank's), for roofline figures.
  size_t weight_bytes() const { return weight_bytes_; }
  // Fingerprint of the weights as loaded (models/weight_hash.h says what it covers).
  uint64_t weights_hash() const { return weights_hash_; }

  // Sees each layer's attention inputs after its keys are written and its attention ran: the
  // layer, its post-RoPE queries q [T, Hq, D], the KV pool and the step's batch (tables and
  // positions), all on the backend's device and valid only during the call. Used offline
  // (engine/attention/head_profile.h); unset (the default) costs nothing. While set, the runner
  // runs every step eagerly (no graph replay).
  using AttentionObserver =
      std::function<void(int layer, const Tensor& q, const kernels::KvPoolView& pool,
                         const kernels::PagedAttentionBatch& batch)>;
  void set_attention_observer(AttentionObserver observer) { observer_ = std::move(observer); }
  bool has_attention_observer() const { return static_cast<bool>(observer_); }
  // Called after each operation Run issues, with the operation's name ("qkv", "attention",
  // "select_topk", ...; the same name in every layer): a benchmark synchronizes there to time
  // each kind of operation (bench/policy_bench.cc --op-times). Unset (the default) costs a branch
  // per operation; while set, the runner runs every step eagerly.
  using OpTimer = std::function<void(const char* op)>;
  void set_op_timer(OpTimer timer) { op_timer_ = std::move(timer); }
  bool has_op_timer() const { return static_cast<bool>(op_timer_); }

  // Grows the activations and logits to hold a step of num_tokens tokens and num_rows logit
  // rows, and the selection scores to score_elems floats; true when buffers moved (work recorded
  // against the old ones must be recorded again).
  bool EnsureWorkspace(int64_t num_tokens, int64_t num_rows, int64_t score_elems = 0);
  // Issues the forward pass of one step (the workspace must hold it) and returns the logits
  // [R, V] f32 on the device: the first R rows of logits(), valid until the next Run. Ranks
  // other than 0 return an empty tensor (rank 0 gathers the logits).
  Tensor Run(const StepInputs& step);
  // The logits buffer's first `rows` rows (what a replayed recording of Run wrote); rank 0.
  Tensor logits(int64_t rows) const { return logits_.view().Rows(0, rows); }

 private:
  struct Layer {
    kernels::Buffer input_norm, qkv, qkv_bias, o_proj, post_norm, gate_up, down;
  };

  LlamaModel(const ModelConfig& config, kernels::Backend& backend, const ModelShard& shard)
      : config_(config), backend_(&backend), shard_(shard) {}
  Status LoadWeights(WeightSource& weights);
  // Rows of the vocabulary this rank holds (ModelShard) and the first one.
  int64_t vocab_rows() const { return (config_.vocab_size + shard_.size - 1) / shard_.size; }
  int64_t vocab_first() const { return vocab_rows() * shard_.rank; }

  ModelConfig config_;
  kernels::Backend* backend_;
  ModelShard shard_;
  std::vector<Layer> layers_;
  kernels::Buffer embed_, final_norm_, lm_head_, inv_freq_;
  size_t weight_bytes_ = 0;
  uint64_t weights_hash_ = 0;
  AttentionObserver observer_;
  OpTimer op_timer_;
  // Reused across steps, grown to the largest batch seen: no allocation per step.
  struct Workspace {
    int64_t tokens = 0;
    kernels::Buffer residual, normed, qkv, q, attn, proj, gate_up, mlp, last;
  };
  Workspace workspace_;
  kernels::Buffer logits_;        // rank 0: [rows, V]
  kernels::Buffer shard_logits_;  // with several ranks: this rank's columns [rows, vocab_rows()]
  kernels::Buffer scores_;  // f32, decode-time selection's logits (StepInputs::select_max_len)
};

}  // namespace headwise::models
