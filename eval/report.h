// What `headwise eval` measured, and its reports: one JSON file with everything (every sample's
// answer under every policy, so runs can be merged and re-scored) and a Markdown report of tables.
//
// Accuracy is per (policy, task, length) and per depth, with a Wilson 95% interval; each policy
// after the first gets its difference to the first (the reference, normally dense) with a paired
// 95% interval (eval/scoring.h), marked where the first is below 50% accuracy: there a policy is
// not judged against it. Per policy: the KV bytes one sequence holds after a prompt of each
// length, the wall time and speeds of its part of the run, and the teacher-forced log-likelihood
// of a natural document per position bucket.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "eval/scoring.h"

namespace headwise::eval {

struct RunHeader {
  std::string model;         // as given on the command line
  std::string weights_hash;  // models::LlamaModel::weights_hash, hex
  int64_t model_bytes = 0;
  std::string device, commit, command, date, haystack, prompt_form, prompts_hash;
  uint64_t seed = 0;
  int max_model_len = 0, max_num_seqs = 0, max_num_batched_tokens = 0;
  std::vector<int> lengths;
  std::vector<double> depths;
  std::vector<std::string> tasks;
  int samples = 0;  // per (task, length)
  // Requests run under the first policy before any timing (discarded): the engine's first work
  // pays one-time costs (allocations, cuBLAS set-up) that would bias the first policy's speeds.
  int warmup = 0;
};

struct LogLikelihoodBucket {
  int begin = 0, end = 0;  // positions of the predicted tokens, [begin, end)
  int64_t tokens = 0;
  double sum_logprob = 0;
  double mean() const { return tokens > 0 ? sum_logprob / static_cast<double>(tokens) : 0.0; }
};

struct PolicyRecord {
  std::string name;           // as --policies named it
  std::string file;           // "" for the model's own policy (dense without one)
  std::string engine_policy;  // the policy set's name, as the engine reports it
  std::string hash;           // of the file's bytes (engine/arms.h PolicyFileHash)
  // Prompt tokens -> KV bytes one sequence holds after it in the pool (eval/kv_footprint.h
  // KvBytesHeld), and what the policy retains (KvBytesRetained), at the same lengths.
  std::vector<std::pair<int, int64_t>> kv_bytes;
  std::vector<std::pair<int, int64_t>> kv_retained;
  double wall_s = 0;  // this policy's requests, first to last
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double decode_s = 0;        // summed over requests: first token to last
  int64_t decode_tokens = 0;  // tokens after each request's first
  double compaction_s = 0;    // the engine thread's, during this policy's requests (ArmRun)
  std::vector<LogLikelihoodBucket> loglik;
  int loglik_chunk = 0;  // prefill chunk of the teacher-forced pass
};

struct SampleRecord {
  std::string task;
  int length = 0, index = 0;
  double depth = 0, needle_depth = 0;
  int prompt_tokens = 0;
  std::string query;
  std::vector<std::string> expected;
};

struct Outcome {
  std::string answer;  // cleaned (CleanAnswer)
  int found = 0, expected = 0;
  int completion_tokens = 0;
  std::string finish_reason;
  bool correct() const { return found == expected; }
};

struct EvalResults {
  RunHeader header;
  std::vector<PolicyRecord> policies;
  std::vector<SampleRecord> samples;
  std::vector<std::vector<Outcome>> outcomes;  // [policy][sample]
};

// One table cell: a policy on the samples of one (task, length), or of one depth of it.
struct Cell {
  size_t policy = 0;
  std::string task;
  int length = 0;
  std::optional<double> depth;  // absent: all depths
  int n = 0, correct = 0;
  double partial = 0;  // RULER's score: mean fraction of expected values found
  double mean_prompt_tokens = 0;
  Interval ci;
  double accuracy() const { return n > 0 ? static_cast<double>(correct) / n : 0.0; }
  // Against the first policy on the same samples (policy 0 has diff 0).
  double diff = 0;
  Interval diff_ci;
  bool first_below_half = false;
};

// Cells in the order of header.tasks, header.lengths (then depths), then policies. By depth:
// one cell per requested depth that has samples.
std::vector<Cell> Cells(const EvalResults& r, bool by_depth);

nlohmann::ordered_json ToJson(const EvalResults& r);
// Reads what ToJson wrote (the aggregates are recomputed, not read).
StatusOr<EvalResults> FromJson(const nlohmann::json& j);
std::string ToMarkdown(const EvalResults& r);
// PREFIX.json and PREFIX.md.
Status WriteReport(const EvalResults& r, const std::string& prefix);

// Runs of the same model, policies (names and file hashes) and seed over different tasks or
// lengths, as one: their samples side by side, each policy's times and token counts summed, its
// KV bytes joined by length, its log-likelihood from the first run that has one. InvalidArgument
// when they differ, or when a sample (task, length, index) is in two.
StatusOr<EvalResults> Merge(std::vector<EvalResults> runs);

}  // namespace headwise::eval
