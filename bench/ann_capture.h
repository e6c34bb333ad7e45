// The real keys and queries hw_bench_ann measures the ANN indexes on: one prompt run through a
// model on a dense KV cache (prefill in chunks, then greedy decode steps), with the model's
// attention observer (models::LlamaModel::set_attention_observer) copying each layer's post-RoPE
// queries to the host as f32:
//   training queries: the prompt's queries at positions 0, s, 2s, ... (s = train_stride);
//   test queries: the decode steps' queries, at positions L, L + 1, ... (L = prompt length);
// and, after the last step, the prompt's keys [0, L) of every (layer, KV head) read from the
// cache's pages (SequenceKv::Page). A dense layout stores keys post-RoPE (kernels/backend.h:
// only re-indexed ring heads store them unrotated), so queries and keys are the vectors whose
// inner products attention ranks. On a device backend q and the key pages are copied to the host
// and converted (bf16 / f16 to f32), as engine/attention/head_profile.cc does.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "bench/ann_recall_eval.h"
#include "core/status.h"
#include "models/llama_model.h"

namespace headwise::bench::ann {

struct CaptureOptions {
  int decode_steps = 32;  // test queries per query head
  int train_stride = 1;   // keep every s-th prompt query as a training query
  int prefill_chunk = 2048;
};

// One layer's captures, host f32, head-major so that a GQA group's rows are contiguous.
struct LayerCapture {
  int num_train = 0;         // rows per query head: ceil(L / train_stride)
  int num_test = 0;          // rows per query head: decode steps
  std::vector<float> train;  // [Hq, num_train, D]: row i is position i * train_stride
  std::vector<float> test;   // [Hq, num_test, D]: row i is position L + i
  std::vector<float> keys;   // [Hkv, L, D]
  size_t bytes() const { return (train.size() + test.size() + keys.size()) * sizeof(float); }
  // Drops the captures (what hw_bench_ann does once a layer is measured).
  void Release();
};

struct RunCapture {
  int prompt_len = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0, train_stride = 1;
  // The decode steps' input tokens in order (the first from the prompt's logits), then the last
  // step's greedy output: decode_steps + 1 tokens.
  std::vector<int32_t> generated;
  std::vector<LayerCapture> layers;
  double prefill_s = 0, decode_s = 0, keys_s = 0;

  int group() const { return num_heads / num_kv_heads; }
  // Keys of (layer, KV head) at positions [r.begin, r.end).
  MatrixView Keys(int layer, int kv_head, IndexedRange r) const;
  MatrixView Train(int layer, int query_head) const;
  MatrixView Test(int layer, int query_head) const;
};

// Bytes the captures of a run will hold (all layers), to say so before a long run.
size_t CaptureBytes(const models::ModelConfig& c, int prompt_len, const CaptureOptions& o);

// Runs `prompt` and captures. `also` (may be empty) is called after the capture's own work in
// every observer call, with the same arguments: tests check the capture against what the model
// saw. Errors: an empty prompt, prompt + decode steps beyond the model's context, bad options, a
// backend whose q or KV dtype it cannot convert.
StatusOr<RunCapture> CaptureRun(models::LlamaModel& model, std::span<const int32_t> prompt,
                                const CaptureOptions& options,
                                const models::LlamaModel::AttentionObserver& also = {});

// One KV head's inputs for EvaluateHead: the keys of `r`, the training queries of the KV head's
// query heads (group rows, contiguous) and their test queries.
HeadInput HeadInputFor(const RunCapture& run, int layer, int kv_head, IndexedRange r);

}  // namespace headwise::bench::ann
