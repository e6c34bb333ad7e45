// Teacher forcing: the log-probability a model gives each next token of a text, the text's own
// tokens fed through in prefill chunks (StreamingLLM's perplexity setting). The second quality
// signal of `headwise eval` beside the tasks: a policy that drops keys shows it as lower
// log-likelihood at the positions past what it keeps. Also used by bench/streaming.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "core/status.h"
#include "engine/attention/policy.h"
#include "engine/model_runner.h"
#include "eval/report.h"
#include "kernels/backend.h"
#include "models/llama_model.h"

namespace headwise::eval {

// log-softmax of `logits` at `id`, over the finite logits (in double); adds the non-finite ones
// to `nonfinite`.
double LogSoftmaxAt(std::span<const float> logits, int32_t id, int64_t& nonfinite);

// Runs `ids` through `runner` as the sequence `seq` (empty, with room for ids.size() tokens) in
// chunks of `chunk` tokens, and calls on_token(i, logprob, nonfinite) for i = 1 .. n-1 in order:
// the log-probability of ids[i] after ids[0..i), and the count of non-finite logits in its row.
// Rows are reduced on up to `threads` threads (0: all cores, at most 16).
void TeacherForce(engine::ModelRunner& runner, const kvcache::SequenceKv& seq,
                  std::span<const int32_t> ids, int chunk, int threads,
                  const std::function<void(size_t i, double logprob, int64_t nonfinite)>& on_token);

// The log-probabilities of ids[1..n) under `policy` (engine/attention_setup.h's
// LoadAttentionPolicy), on a KV cache of its own sized for this one sequence, freed on return.
StatusOr<std::vector<double>> ScoreTokens(models::LlamaModel& model, kernels::Backend& backend,
                                          const engine::attention::PolicySet& policy,
                                          std::span<const int32_t> ids, int chunk, int threads);

// Mean log-probability by the position of the predicted token: buckets [0, first), [first,
// 2 first), [2 first, 4 first), ... up to the last position. logprobs[k] predicts position k + 1.
std::vector<LogLikelihoodBucket> Buckets(const std::vector<double>& logprobs, int first);

}  // namespace headwise::eval
