// Synthetic long-context tasks in the style of RULER (Hsieh et al. 2024, "RULER: What's the Real
// Context Size of Your Long-Context Language Models?"), with its templates, needles and answer
// prefixes: needles of text hidden in a natural-text haystack (eval/haystack.h), the question at
// the end, the answer begun for the model.
//
//   niah_single        one key, one 7-digit number (a passkey); RULER's niah_single_2
//   niah_single_uuid   one key, one UUID; niah_single_3
//   niah_multikey      four keys with a number each, one asked; niah_multikey_1
//   niah_multivalue    one key with four numbers, all asked; niah_multivalue
//   vt                 variable tracking: a chain VAR A = 12345, VAR B = VAR A, ... (5 names) and
//                      a one-shot example before it, as RULER gives; all names asked
//
// A prompt is the task's text as one user message in the model's chat template (as RULER runs
// instruct models), followed by the answer prefix ("The special magic number for X mentioned in
// the provided text is"); or, in raw form, the text, a newline and the prefix. Its length is in
// the model's tokens: the filler is trimmed, by whole sentences, until prompt + max_new_tokens
// is at most the requested length (RULER's rule), landing just under it.
//
// The depth of a sample places the needle that is asked about (the first of several values, the
// first link of a chain) at that fraction of the filler's tokens, at the nearest sentence
// boundary; other needles (distractor keys, further values, the chain's later links, after the
// first) go to random depths. Everything random comes from one generator seeded by (seed, task,
// length, sample index), so a sample does not depend on which others are built, or in what order.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "eval/haystack.h"
#include "tokenizer/chat_renderer.h"
#include "tokenizer/tokenizer.h"

namespace headwise::eval {

enum class TaskKind {
  kNiahSingle,
  kNiahSingleUuid,
  kNiahMultikey,
  kNiahMultivalue,
  kVariableTracking
};

struct TaskInfo {
  TaskKind kind;
  std::string_view name;
  int max_new_tokens;  // enough for the answer with some slack; --max-new-tokens overrides
  std::string_view summary;
};

// Every task, in the order reports list them.
const std::vector<TaskInfo>& AllTasks();
// InvalidArgument naming the known tasks when `name` is none of them.
StatusOr<TaskInfo> FindTask(std::string_view name);

// One prompt, and what a correct answer holds.
struct Sample {
  std::string task;
  int length = 0;           // requested: prompt + max_new_tokens <= length
  int index = 0;            // within (task, length)
  double depth = 0;         // requested depth of the asked needle, in [0, 1]
  double needle_depth = 0;  // where it landed: filler tokens before it / filler tokens (estimated)
  std::string query;        // the key asked about (the value, for variable tracking)
  std::vector<std::string> expected;  // every one must appear in the answer
  std::vector<int32_t> prompt_ids;
  int max_new_tokens = 0;
  int filler_sentences = 0;
};

// A deterministic generator (SplitMix64): the same on every platform and standard library, which
// std::uniform_int_distribution is not.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next();
  // Uniform in [0, n), n > 0 (rejection sampling, no modulo bias).
  uint64_t Below(uint64_t n);
  double Unit();  // uniform in [0, 1)

 private:
  uint64_t state_;
};

// The seed of one sample's generator.
uint64_t SampleSeed(uint64_t seed, std::string_view task, int length, int index);

class TaskBuilder {
 public:
  // `chat` null: raw prompts (the text, a newline, the answer prefix, after the tokenizer's BOS).
  // All three must outlive the builder. Build may be called from several threads at once.
  TaskBuilder(const Haystack& haystack, const tokenizer::Tokenizer& tok,
              const tokenizer::ChatRenderer* chat);

  // Sample `index` of `task` at `length` tokens with its asked needle at `depth`.
  // InvalidArgument when the prompt without filler does not fit `length` less max_new_tokens.
  StatusOr<Sample> Build(const TaskInfo& task, int length, int max_new_tokens, double depth,
                         uint64_t seed, int index) const;

  // Tokens of sentence i as it stands in the filler (after a space): summed to size the filler.
  int SentenceTokens(size_t i) const;

  struct Needle {
    std::string text;
    double depth = 0;
  };
  // The task's text around its context, and its needles, before the filler is sized.
  struct Parts {
    std::string before, after;  // the user message is before + context + after
    std::string answer_prefix;
    std::vector<Needle> needles;  // needles[0] is the one asked about
    std::string query;
    std::vector<std::string> expected;
    size_t filler_start = 0;  // the haystack sentence the filler starts at
  };
  Parts MakeParts(const TaskInfo& task, double depth, Rng& rng) const;
  // The prompt's text with `num_sentences` filler sentences; `asked_at` gets the asked needle's
  // depth in the filler (by SentenceTokens).
  StatusOr<std::string> Render(const Parts& parts, int num_sentences, double* asked_at) const;

 private:
  std::vector<int32_t> Encode(const std::string& prompt) const;
  // The context: the filler's sentences with the needles at their depths.
  std::string Context(const Parts& parts, int num_sentences, double* asked_at) const;

  const Haystack& haystack_;
  const tokenizer::Tokenizer& tok_;
  const tokenizer::ChatRenderer* chat_;
  mutable std::unique_ptr<std::atomic<int32_t>[]> sentence_tokens_;  // -1: not counted yet
};

// A hash of the samples' prompts (token ids), answers, tasks, lengths and depths, in order, as
// "fnv1a64:" and 16 hex digits: runs whose prompts are the same print the same hash.
std::string PromptsHash(const std::vector<Sample>& samples);

}  // namespace headwise::eval
