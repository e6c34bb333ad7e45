// The model runner: turns a batch of sequences (prefill chunks and decode steps mixed, each under
// its own KV layout) into one step of the model. It packs the step's integer inputs and the KV
// cache's block tables into one host array and one upload, hands the layers their tables, and
// replays captured graphs for decode steps where the backend can capture. The model computes;
// the cache says where keys live; the runner owns the step (nano-vllm's model_runner.py).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "engine/rank_threads.h"
#include "kvcache/kv_cache.h"
#include "models/llama_model.h"

namespace headwise::engine {

// One sequence's share of a step: `tokens` at positions start_pos, start_pos + 1, ... Its
// SequenceKv must hold room for start_pos + tokens.size() tokens, and the cache must hold its K/V
// for positions [0, start_pos).
struct BatchEntry {
  const kvcache::SequenceKv* kv = nullptr;
  std::span<const int32_t> tokens;
  int start_pos = 0;
  bool all_logits = false;  // logits for every token; otherwise for the last one only
};

class ModelRunner {
 public:
  ModelRunner(models::LlamaModel& model, kvcache::KvCache& cache);
  // Tensor parallelism: ranks[r] is rank r's share of the model (models::ModelShard), on the
  // backend of the cache's rank r. Every step runs on all ranks at once (engine/rank_threads.h),
  // from the one packed step; the logits are rank 0's.
  ModelRunner(std::vector<models::LlamaModel*> ranks, kvcache::KvCache& cache);

  // Rank 0's share of the model (the whole model without tensor parallelism): its backend
  // holds the logits and samples.
  models::LlamaModel& model() const { return *ranks_.front().model; }
  kvcache::KvCache& cache() const { return cache_; }
  int num_ranks() const { return static_cast<int>(ranks_.size()); }

  // Runs the batch and returns logits [R, V] f32 on rank 0's device, R = the entries'
  // logit rows in order. The view stays valid until the next Forward.
  Tensor Forward(std::span<const BatchEntry> batch);
  // Forward, then the logits copied to the host.
  std::vector<float> ForwardToHost(std::span<const BatchEntry> batch);

  // Decode steps replay captured graphs where the backend can capture (default on); off runs
  // every step eagerly (--enforce-eager).
  void set_use_graphs(bool on) { use_graphs_ = on; }
  // The batch sizes decode graphs are captured for: a batch runs in the smallest bucket that
  // holds it, padded; 0 when it is larger than every bucket (eager).
  static int GraphBatchBucket(int num_seqs);

 private:
  // A step's integer inputs, host side: token ids, sequences, positions, query ranges and logit
  // rows, then the cache's block tables (StepTables::AppendTo), uploaded as one array.
  // With decode-time selection, each sequence's decode row and length follow the logit rows
  // (StepInputs::seq_token, seq_len), and the tables carry the selecting slots.
  struct Step {
    std::vector<int32_t> data;
    int64_t num_tokens = 0, num_rows = 0;
    int num_seqs = 0, max_query_len = 1;
    kvcache::StepTables tables;
    size_t tables_offset = 0;
    int select_max_len = 0;  // 0: the cache does not select
    int select_heads = 0;    // query heads, with selection
    int64_t score_elems() const { return int64_t{num_seqs} * select_heads * select_max_len; }
    // Some sequence runs a layout with offload heads: the step runs eagerly, with the host tier.
    bool offload = false;
    // Prompt tokens of offload sequences not yet compacted whose queries train the index (every
    // train_stride-th position of a RoarGraph layout).
    struct TrainToken {
      int64_t token;
      int32_t slot, pos;
    };
    std::vector<TrainToken> train;
    std::vector<int32_t> seq_token;  // [S]: each sequence's last query row (retrieval's q row)
    // Offload steps: the q rows the host reads (the training tokens', then seq_token), uploaded
    // with the step; only they cross to the host.
    int64_t num_host_rows = 0;
  };
  struct DecodeGraph {
    kernels::Buffer data;  // the graph reads its inputs here; refreshed before each replay
    std::unique_ptr<kernels::CapturedOps> ops;
  };
  // What each tensor-parallel rank runs a step with, on its backend.
  struct Rank {
    models::LlamaModel* model = nullptr;
    int index = 0;
    kernels::Buffer data;  // the eager steps' inputs
    std::vector<kernels::BlockTable> layer_tables;
    std::map<std::pair<int, int>, DecodeGraph> graphs;  // by (batch bucket, table width)
  };

  // Pads to pad_seqs sequences (extra ones are one padding token each at position -1) and
  // pad_blocks table columns.
  Step Pack(std::span<const BatchEntry> batch, int pad_seqs, int pad_blocks) const;
  void Upload(const Rank& rank, const Step& step, kernels::Buffer& data);
  // Issues rank's forward pass of `step`, whose inputs are in `data` on its backend.
  Tensor Run(Rank& rank, const Step& step, const kernels::Buffer& data);
  // The host tier's part of an offload layer: the q rows the host reads gathered on the device
  // and their copy queued (StepInputs::offload_send); then, once they are over, the training
  // queries kept and the retrieving sequences' (o, lse) uploaded (StepInputs::offload_host).
  void OffloadSend(const Tensor& host_rows, const Tensor& q);
  void OffloadLayer(const Step& step, int layer);

  std::vector<Rank> ranks_;
  kvcache::KvCache& cache_;
  std::unique_ptr<RankThreads> threads_;
  std::vector<char> select_ops_;      // per layer (KvCache::layer_select_ops)
  std::vector<char> offload_layers_;  // per layer (KvCache::layer_offloads)
  // Offload steps: the host's results on the device, and host scratch.
  kernels::Buffer offload_out_, offload_lse_, offload_q_;
  Tensor offload_q_sent_;  // the rows of offload_q_ the last OffloadSend queued
  std::vector<float> q_host_, out_host_, lse_host_;
  bool use_graphs_ = true;
};

}  // namespace headwise::engine
