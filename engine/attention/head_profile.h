// Head profiling, `headwise profile-heads`: RazorAttention echo/induction scores (ALGORITHMS.md
// §3.1) and Retrieval-Head retrieval scores (§4.1), computed with our own forward pass.
//
// The model's attention observer (models::LlamaModel::set_attention_observer) hands over each
// layer's post-RoPE queries and the paged KV cache after the layer's attention ran. The
// probabilities of every query head are recomputed here from them: for a query token at
// position p, P[j] = softmax_j(scale * q · k_j) over its sequence's keys j = 0..p (causal, GQA:
// query head h reads KV head h / (Hq / Hkv)), keys read through the block table as
// kernels/backend.h lays them out. The rows are computed on the host in f32: on the CPU backend
// from its own tensors, on a device backend from host copies of q and of the key pages the
// step reads (bf16 there), made after each layer's attention.
//
// Deterministic: inputs come from fixed seeds (splitmix64), sums run in a fixed order (per
// head, by position; threads split heads, never a sum), ties go to the lowest index, and the
// JSON writes shortest round-trip numbers. Two runs give byte-identical files.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"
#include "engine/attention/policy.h"
#include "kernels/backend.h"
#include "models/llama_model.h"
#include "tokenizer/tokenizer.h"

namespace headwise::engine::attention {

/// A value per (layer, head): [num_layers][heads].
using HeadMatrix = std::vector<std::vector<double>>;

// ---------------------------------------------------------------------------------------------
// Pieces (pure, unit-tested in tests/engine/head_profile_test.cc)

/// Receives one attention row: query token `token` of the step (row of q), query head `head`,
/// its position `pos`, and probs[j] for keys j = 0..pos (probs.size() == pos + 1).
using AttentionRowFn =
    std::function<void(int64_t token, int head, int32_t pos, std::span<const float> probs)>;

/// Recomputes the attention probabilities of every non-padding query token and query head of
/// one observed layer and hands each row to `fn`. q [T, Hq, D] f32 host; pool and batch as the
/// observer gets them (host). With threads > 1, query heads are split across threads: `fn` runs
/// concurrently for different heads, and in token order for each head. Ring tables and
/// non-host tensors are refused.
Status ForEachAttentionRow(const Tensor& q, const kernels::KvPoolView& pool,
                           const kernels::PagedAttentionBatch& batch, float scale, int threads,
                           const AttentionRowFn& fn);

/// splitmix64: the generator behind every seeded choice here.
uint64_t SplitMix64(uint64_t& state);

/// RazorAttention's token range: the paper's [10000, 12500) when the vocabulary holds it, else
/// the same top slice of a small vocabulary, [floor(0.8 V), V) (continuous at V = 12500).
std::pair<int32_t, int32_t> DefaultRazorRange(int vocab_size);

/// [BOS] + R repeated `repetitions` times, R = `length` ids drawn with replacement, each
/// lo + SplitMix64(state) mod (hi - lo), state starting at `seed`. No BOS when `bos` is empty.
std::vector<int32_t> RazorTokens(std::optional<int32_t> bos, int length, int repetitions,
                                 int32_t lo, int32_t hi, uint64_t seed);

/// Echo and induction mass per (layer, query head). Masks come from token identity: for query
/// position i, echo positions E(i) = {j < i : token[j] == token[i]}, induction positions
/// {j + 1 : j in E(i)}. Only queries at i >= first_scored count (repetitions 2..); each score is
/// the sum of P[i][j] over the mask divided by S * S (S = tokens.size()): the mean over the
/// S x S matrix, as the reference implementations compute it.
class RazorScorer {
 public:
  RazorScorer(std::span<const int32_t> tokens, int32_t first_scored, int num_layers, int num_heads);
  /// Safe to call concurrently for different (layer, head) cells.
  void AddRow(int layer, int head, int32_t pos, std::span<const float> probs);
  HeadMatrix Echo() const { return Normalized(echo_); }
  HeadMatrix Induction() const { return Normalized(induction_); }

 private:
  HeadMatrix Normalized(const HeadMatrix& sums) const;

  std::vector<std::vector<int32_t>> echo_positions_;  // [i] -> E(i), ascending
  int32_t first_scored_;
  double num_cells_;  // S * S
  HeadMatrix echo_, induction_;
};

/// KV-head scores: the max over each KV head's GQA group of `group` query heads.
HeadMatrix MaxOverGroups(const HeadMatrix& query_scores, int group);

/// RazorAttention's selection over all layers at once: the top ceil(induction_ratio * n) KV
/// heads by induction score, united with the top ceil(echo_ratio * n) by echo score (n = all KV
/// heads of the model; equal scores rank the lower (layer, head) first). [layer] -> KV heads,
/// ascending.
std::vector<std::vector<int>> SelectRazorHeads(const HeadMatrix& kv_induction,
                                               const HeadMatrix& kv_echo, double induction_ratio,
                                               double echo_ratio);

/// Index of the largest probability, the lowest index on ties.
int32_t TopKey(std::span<const float> probs);

/// One decode step's copy-paste events (§4.1): for each (layer, query head) whose top key j
/// (top_key[layer][head]) lies in the needle span [needle_begin, needle_end) with
/// prompt[j] == generated, score[layer][head] += 1 / (needle_end - needle_begin).
void CountCopyPaste(const std::vector<std::vector<int32_t>>& top_key,
                    std::span<const int32_t> prompt, int32_t needle_begin, int32_t needle_end,
                    int32_t generated, HeadMatrix& score);

/// Retrieval_Head's find_needle_idx: the first window of needle.size() prompt tokens whose
/// token set holds more than 90% of the needle's distinct tokens, as [begin, end). Tokenizers
/// that merge across the needle's edges (TinyStories' "." + " The") can keep every window
/// under 90%: then, in the first window with the most overlap, if that holds at least half of
/// the needle's distinct tokens, the run from its first to its last needle token; else
/// {-1, -1}.
std::pair<int32_t, int32_t> FindNeedleSpan(std::span<const int32_t> prompt,
                                           std::span<const int32_t> needle);

/// ROUGE-1 recall of `reference` in `response` with rouge_score's default tokenization
/// (lowercase, runs of [a-z0-9]; no stemming): clipped unigram matches / reference unigrams
/// (0 for an empty reference).
double UnigramRecall(std::string_view reference, std::string_view response);

// ---------------------------------------------------------------------------------------------
// Runs on a model

struct RazorOptions {
  int length = 500;  // R; the paper uses 2500 (input 10 001 tokens)
  int repetitions = 4;
  uint64_t seed = 20240721;
  int32_t token_lo = -1, token_hi = -1;  // -1: DefaultRazorRange
  double induction_ratio = 0.14;
  double echo_ratio = 0.01;
  int prefill_chunk = 512;
  int threads = 0;  // 0: hardware concurrency
};

struct RazorProfile {
  RazorOptions options;  // with the token range resolved
  std::optional<int32_t> bos;
  std::vector<int32_t> tokens;
  HeadMatrix echo, induction;           // [layer][query head]
  HeadMatrix kv_echo, kv_induction;     // [layer][KV head]
  std::vector<std::vector<int>> heads;  // selected: [layer] -> KV heads
};

/// One prefill of RazorTokens(bos, ...) with the observer on.
StatusOr<RazorProfile> ProfileRazor(models::LlamaModel& model, std::optional<int32_t> bos,
                                    const RazorOptions& options);

struct RetrievalOptions {
  std::vector<int> context_lengths{256, 448};  // prompt tokens, about
  int num_depths = 5;                          // needle depths linspace(0, 100, num_depths) %
  int max_new_tokens = 12;
  uint64_t seed = 20240423;
  double min_recall = 0.5;  // a sample counts when UnigramRecall(answer, response) > this
  int prefill_chunk = 512;
  int threads = 0;
};

struct RetrievalSample {
  int context_length = 0;  // asked for
  double depth = 0.0;      // percent
  int prompt_tokens = 0;
  int32_t needle_begin = -1, needle_end = -1;
  std::string answer, response;
  double recall = 0.0;
  bool accepted = false;
};

struct RetrievalProfile {
  RetrievalOptions options;
  std::vector<RetrievalSample> samples;
  // [layer][query head] -> the head's retrieval score in each accepted sample, in sample order.
  std::vector<std::vector<std::vector<double>>> scores;
};

/// The passkey haystack ("The grass is green. ..."), a needle "The special magic number is
/// NNNNN." at each depth, the question; prefill of prompt[:-1], then greedy decoding of up to
/// max_new_tokens tokens (stopping after an end-of-sequence token or one whose text holds a
/// newline) with the observer on, counting copy-paste events.
StatusOr<RetrievalProfile> ProfileRetrieval(models::LlamaModel& model,
                                            const tokenizer::Tokenizer& tok,
                                            std::span<const int32_t> eos_ids,
                                            const RetrievalOptions& options);

/// The profile files (profile_file.h's schema; `identity` from the model).
nlohmann::ordered_json RazorProfileJson(const RazorProfile& profile, const ModelShape& identity);
nlohmann::ordered_json RetrievalProfileJson(const RetrievalProfile& profile,
                                            const ModelShape& identity);

}  // namespace headwise::engine::attention
