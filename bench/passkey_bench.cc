// Passkey retrieval accuracy of attention policies on one model (the task of Landmark Attention
// and LongLoRA): a 5-digit pass key hidden at a known depth in repeated filler text, the model
// asked for it at the end, greedy decoding, correct when the key's digits appear in the answer.
// The model is loaded once; every (policy, length, sample) runs through it, each policy on its own
// KV cache sized for one sequence of the longest prompt. The prompts are the same for every
// policy (deterministic from --seed), so the accuracy differences are paired.
//
// usage: hw_bench_passkey MODEL --policies NAME=FILE,... [--lengths 1024,2048,4096,8192]
//                         [--samples 50] [--prefill-chunk 2048] [--device cuda|cpu] [--seed 1]
//                         [--max-new-tokens 10] [--prompt-form raw|chat] [--threads N]
//                         [--per-sample]
// --lengths are prompt lengths in tokens (filler trimmed by words to land just under each; a
// length beyond the model's context less --max-new-tokens is lowered to it, and said so).
// --prompt-form raw (default) is plain completion ending in "The pass key is"; chat wraps the task
// as a user message in the model's chat template and starts the answer with "The pass key is".
// Raw is the default because SmolLM2-135M-Instruct retrieves more keys with it (CPU, dense, 1K
// tokens, the same 10 samples: raw 10/10, chat 8/10; in chat form it sometimes answers with a
// filler sentence).
// Rings attend densely within the first prefill chunk (configs/README.md), so with the default
// --prefill-chunk 2048 the prompt of a length <= 2048 is prefilled densely on every head and the
// answer's first token comes from that dense pass; ring heads restrict only the decode steps. A
// smaller chunk makes the prefill sparse too.
// Prints one JSON object per line: header, prompts (per length: the actual token counts),
// policy (its ring heads), cell (per policy x length: accuracy, samples, mean prompt tokens, wall
// seconds), sample (with --per-sample), and last vs_first (per policy: accuracy minus the first
// policy's at each length, judged only where the first policy scores at least 50%).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/attention_setup.h"
#include "engine/generator.h"
#include "engine/model_loader.h"
#include "kernels/backend_factory.h"
#include "tokenizer/chat_renderer.h"
#include "tools/flags.h"

namespace hw = headwise;
using hw::bench::Emit;
using hw::bench::Now;
using hw::bench::Split;

namespace {

constexpr const char* kIntro =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n";
constexpr const char* kFiller =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
constexpr const char* kQuestion = "What is the pass key?";
constexpr const char* kAnswerStart = "The pass key is";

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20) {
      out += fmt::format("\\u{:04x}", ch);
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

// Builds the task's token ids: the intro, `num_words` words of filler with the needle at the
// sentence boundary nearest `depth` (0 = first, 1 = last), the question and the answer's start.
class PromptBuilder {
 public:
  PromptBuilder(const hw::tokenizer::Tokenizer& tok, const hw::tokenizer::ChatRenderer* chat)
      : tok_(tok), chat_(chat), words_(Split(kFiller, ' ')) {}

  hw::StatusOr<std::vector<int32_t>> Build(int num_words, double depth,
                                           const std::string& passkey) const {
    // Sentence boundaries: before word 0 and after every word ending a sentence.
    int at = 0;
    double best = 1e30;
    for (int w = 0; w <= num_words; ++w) {
      if (w > 0 && Word(w - 1).back() != '.') continue;
      const double d = std::abs(w - depth * num_words);
      if (d < best) best = d, at = w;
    }
    std::string haystack;
    for (int w = 0; w <= num_words; ++w) {
      if (w == at) {
        if (!haystack.empty()) haystack += ' ';
        haystack += fmt::format("The pass key is {0}. Remember it. {0} is the pass key.", passkey);
      }
      if (w == num_words) break;
      haystack += ' ';
      haystack += Word(w);
    }
    if (haystack.front() == ' ') haystack.erase(0, 1);
    const std::string task = kIntro + haystack + "\n" + kQuestion;
    if (chat_ == nullptr) return tok_.Encode(task + " " + kAnswerStart, true);
    auto rendered = chat_->Render({{"user", task, ""}}, /*add_generation_prompt=*/true, {});
    if (!rendered.ok()) return rendered.status();
    // A chat rendering carries its own BOS (as `headwise generate --chat` encodes it).
    return tok_.Encode(*rendered + kAnswerStart, false);
  }

  // The most filler words whose prompt is at most `target` tokens (the needle at mid depth).
  hw::StatusOr<int> WordsFor(int target) const {
    int lo = 0, hi = std::max(target, 1);  // every word is at least one token
    auto none = Build(0, 0.5, "12345");
    if (!none.ok()) return none.status();
    if (static_cast<int>(none->size()) > target) {
      return hw::InvalidArgument("length {} is shorter than the prompt without filler ({} tokens)",
                                 target, none->size());
    }
    while (hi - lo > 1) {  // Build(lo) fits, Build(hi) does not
      const int mid = (lo + hi) / 2;
      auto ids = Build(mid, 0.5, "12345");
      if (!ids.ok()) return ids.status();
      (static_cast<int>(ids->size()) <= target ? lo : hi) = mid;
    }
    return lo;
  }

 private:
  const std::string& Word(int w) const { return words_[static_cast<size_t>(w) % words_.size()]; }

  const hw::tokenizer::Tokenizer& tok_;
  const hw::tokenizer::ChatRenderer* chat_;
  std::vector<std::string> words_;
};

struct Sample {
  std::vector<int32_t> ids;
  std::string passkey;
  double depth = 0;
};

struct LengthSet {
  int requested = 0, target = 0;
  std::vector<Sample> samples;
};

struct PolicyRun {
  std::string name, file;
  hw::engine::attention::PolicySet set;
  std::unique_ptr<hw::kvcache::KvCache> cache;
  std::map<int, double> accuracy;  // requested length -> accuracy
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: hw_bench_passkey MODEL --policies NAME=FILE,... [...]\n");
    return 2;
  }
  const std::string model_path = argv[1];
  hw::tools::FlagParser flags(argc - 1, argv + 1);
  std::string device = "cuda", policies_s, lengths_s = "1024,2048,4096,8192", form = "raw";
  int samples = 50, prefill_chunk = 2048, max_new_tokens = 10, threads = 0;
  int64_t seed = 1;
  bool per_sample = false;
  flags.String("device", device);
  flags.String("policies", policies_s);
  flags.String("lengths", lengths_s);
  flags.String("prompt-form", form);
  flags.Int("samples", samples);
  flags.Int("prefill-chunk", prefill_chunk);
  flags.Int("max-new-tokens", max_new_tokens);
  flags.Int("threads", threads);
  flags.Int64("seed", seed);
  flags.Bool("per-sample", per_sample);
  const auto fail = [](const std::string& what) {
    std::fprintf(stderr, "hw_bench_passkey: error: %s\n", what.c_str());
    return 2;
  };
  if (auto s = flags.Finish(); !s.ok()) return fail(s.message());
  if (policies_s.empty()) return fail("--policies NAME=FILE,... is required");
  if (samples < 1) return fail("--samples must be >= 1");
  if (prefill_chunk < 1) return fail("--prefill-chunk must be >= 1");
  if (max_new_tokens < 1) return fail("--max-new-tokens must be >= 1");
  if (form != "raw" && form != "chat") {
    return fail("--prompt-form must be raw or chat, got '" + form + "'");
  }
  std::vector<int> lengths;
  for (const auto& x : Split(lengths_s, ',')) {
    auto v = hw::tools::ParseInt(x);
    if (!v.ok() || *v < 1) return fail("--lengths takes positive integers, got '" + x + "'");
    lengths.push_back(static_cast<int>(*v));
  }
  if (lengths.empty()) return fail("--lengths is empty");
  std::vector<std::pair<std::string, std::string>> policy_files;
  for (const auto& entry : Split(policies_s, ',')) {
    const auto eq = entry.find('=');
    if (eq == std::string::npos || eq == 0)
      return fail("--policies entries are NAME=FILE: " + entry);
    policy_files.emplace_back(entry.substr(0, eq), entry.substr(eq + 1));
  }

  auto created = hw::kernels::CreateBackend(device, threads);
  if (!created.ok()) return fail(created.status().message());
  auto backend = std::move(created).value();
  hw::engine::LoadOptions options;
  auto loaded = hw::engine::LoadModel(model_path, options, *backend);
  if (!loaded.ok()) return fail(loaded.status().message());
  auto& model = *loaded->model;
  const auto& c = model.config();
  if (!loaded->tokenizer) return fail(model_path + ": no tokenizer found");
  const auto& tok = *loaded->tokenizer;

  std::unique_ptr<hw::tokenizer::ChatRenderer> renderer;
  if (form == "chat") {
    auto r = hw::tokenizer::ChatRenderer::ForTokenizer(loaded->chat_template, tok);
    if (!r.ok()) return fail(r.status().message());
    if (!(*r)->has_template())
      return fail(model_path + ": --prompt-form chat, but no chat template");
    renderer = std::move(r).value();
  }
  const PromptBuilder builder(tok, renderer.get());

  // Every policy is loaded (and below given its cache) before anything runs: a policy the
  // engine refuses stops the benchmark here, never runs as dense, and never after the others
  // have spent their minutes.
  std::vector<PolicyRun> runs;
  for (const auto& [name, file] : policy_files) {
    PolicyRun run;
    run.name = name;
    run.file = file;
    auto set = hw::engine::LoadAttentionPolicy(file, c, model_path, model.weights_hash());
    if (!set.ok()) return fail(fmt::format("policy {}: {}", name, set.status().message()));
    run.set = std::move(set).value();
    if (auto layout = hw::engine::KvLayoutFor(run.set); !layout.ok()) {
      return fail(fmt::format("policy {}: {}", name, layout.status().message()));
    }
    runs.push_back(std::move(run));
  }

  // The prompts, shared by every policy.
  std::vector<LengthSet> sets;
  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  std::uniform_int_distribution<int> digits(10000, 99999);
  const int context = c.max_position_embeddings > 0 ? c.max_position_embeddings : 1 << 30;
  int longest = 0;
  const double t_prompts = Now();
  for (int length : lengths) {
    LengthSet set;
    set.requested = length;
    set.target = std::min(length, context - max_new_tokens);
    auto words = builder.WordsFor(set.target);
    if (!words.ok()) return fail(fmt::format("length {}: {}", length, words.status().message()));
    for (int i = 0; i < samples; ++i) {
      Sample s;
      s.passkey = std::to_string(digits(rng));
      s.depth = samples > 1 ? static_cast<double>(i) / (samples - 1) : 0.5;
      // The key's digits or its depth may cost a token more than the probe: drop words to fit.
      for (int w = *words; w >= 0; --w) {
        auto ids = builder.Build(w, s.depth, s.passkey);
        if (!ids.ok()) return fail(ids.status().message());
        s.ids = std::move(ids).value();
        if (static_cast<int>(s.ids.size()) <= set.target) break;
      }
      longest = std::max(longest, static_cast<int>(s.ids.size()));
      set.samples.push_back(std::move(s));
    }
    sets.push_back(std::move(set));
  }
  const double prompt_s = Now() - t_prompts;

  for (auto& run : runs) {
    const std::string& name = run.name;
    auto layout = hw::engine::KvLayoutFor(run.set);
    if (!layout.ok()) return fail(fmt::format("policy {}: {}", name, layout.status().message()));
    // Sized as `headwise generate` sizes its cache: one sequence, rings for its chunks.
    const int needed = longest + max_new_tokens;
    hw::kvcache::KvCacheConfig kv = hw::engine::KvConfigFor(c, 0, run.set.page_size, prefill_chunk);
    kv.num_pages = hw::kvcache::KvCache::PagesForSequence(kv, *layout, needed);
    std::vector<hw::kvcache::KvLayout> layouts;
    layouts.push_back(std::move(layout).value());
    auto cache = hw::engine::CreateKvCache(std::move(layouts), kv, *backend);
    if (!cache.ok()) return fail(fmt::format("policy {}: {}", name, cache.status().message()));
    run.cache = std::move(cache).value();
  }

  std::string lengths_json, policies_json;
  for (int l : lengths) lengths_json += (lengths_json.empty() ? "" : ", ") + std::to_string(l);
  for (const auto& [name, file] : policy_files) {
    policies_json +=
        fmt::format("{}{{\"name\": {}, \"file\": {}}}", policies_json.empty() ? "" : ", ",
                    JsonString(name), JsonString(file));
  }
  Emit(fmt::format(
      R"({{"kind": "header", "device": "{}", "model": {}, "num_layers": {}, "num_kv_heads": {}, )"
      R"("max_position_embeddings": {}, "prompt_form": "{}", "lengths": [{}], "samples": {}, )"
      R"("seed": {}, "prefill_chunk": {}, "max_new_tokens": {}, "policies": [{}], )"
      R"("prompt_build_s": {:.2f}}})",
      device, JsonString(model_path), c.num_layers, c.num_kv_heads, c.max_position_embeddings, form,
      lengths_json, samples, seed, prefill_chunk, max_new_tokens, policies_json, prompt_s));
  for (const auto& set : sets) {
    size_t lo = set.samples[0].ids.size(), hi = lo, sum = 0;
    for (const auto& s : set.samples) {
      lo = std::min(lo, s.ids.size());
      hi = std::max(hi, s.ids.size());
      sum += s.ids.size();
    }
    std::string note;
    if (set.target < set.requested) {
      note = fmt::format(R"(, "note": "lowered to the model's context ({}) less max_new_tokens")",
                         c.max_position_embeddings);
    }
    Emit(fmt::format(R"({{"kind": "prompts", "length": {}, "target_tokens": {}, "min_tokens": {}, )"
                     R"("mean_tokens": {:.1f}, "max_tokens": {}{}}})",
                     set.requested, set.target, lo, static_cast<double>(sum) / set.samples.size(),
                     hi, note));
  }

  hw::engine::SamplingParams params;
  params.temperature = 0.0f;
  params.max_tokens = max_new_tokens;
  for (auto& run : runs) {
    int ring_heads = 0, sink = 0, window = 0;
    for (int l = 0; l < c.num_layers; ++l) {
      for (int h = 0; h < c.num_kv_heads; ++h) {
        const auto& p = run.set.At(l, h);
        if (p.storage != hw::engine::attention::StorageKind::kFull) {
          ++ring_heads;
          sink = p.sink;
          window = p.window;
        }
      }
    }
    Emit(fmt::format(R"({{"kind": "policy", "policy": {}, "file": {}, "set_name": {}, )"
                     R"("ring_kv_heads": {}, "kv_heads": {}, "sink": {}, "window": {}}})",
                     JsonString(run.name), JsonString(run.file), JsonString(run.set.name),
                     ring_heads, c.num_layers * c.num_kv_heads, sink, window));
    hw::engine::Generator generator(model, *run.cache, &tok, loaded->eos_token_ids);
    for (const auto& set : sets) {
      int correct = 0;
      double prefill_s = 0, decode_s = 0;
      size_t tokens = 0;
      const double t0 = Now();
      for (size_t i = 0; i < set.samples.size(); ++i) {
        const Sample& s = set.samples[i];
        auto result = generator.Generate(s.ids, params, prefill_chunk);
        if (!result.ok()) {
          return fail(fmt::format("policy {}, length {}, sample {}: {}", run.name, set.requested, i,
                                  result.status().message()));
        }
        const bool ok = result->text.find(s.passkey) != std::string::npos;
        correct += ok;
        prefill_s += result->prefill_seconds;
        decode_s += result->decode_seconds;
        tokens += s.ids.size();
        if (per_sample) {
          Emit(fmt::format(
              R"({{"kind": "sample", "policy": {}, "length": {}, "sample": {}, "depth": {:.3f}, )"
              R"("passkey": "{}", "prompt_tokens": {}, "correct": {}, "output": {}}})",
              JsonString(run.name), set.requested, i, s.depth, s.passkey, s.ids.size(),
              ok ? "true" : "false", JsonString(result->text)));
        }
      }
      const double wall = Now() - t0, n = static_cast<double>(set.samples.size());
      run.accuracy[set.requested] = correct / n;
      Emit(fmt::format(
          R"({{"kind": "cell", "policy": {}, "length": {}, "samples": {}, "correct": {}, )"
          R"("accuracy": {:.4f}, "mean_prompt_tokens": {:.1f}, "wall_s": {:.2f}, )"
          R"("prefill_s": {:.2f}, "decode_s": {:.2f}}})",
          JsonString(run.name), set.requested, set.samples.size(), correct, correct / n,
          static_cast<double>(tokens) / n, wall, prefill_s, decode_s));
    }
  }

  // Against the first policy (dense): differences at every length; the verdict (within 2
  // points) only where the first policy itself retrieves at least half the keys.
  const PolicyRun& first = runs.front();
  for (const auto& run : runs) {
    std::string diffs, judged, skipped;
    double worst = 0;
    bool any = false;
    for (int l : lengths) {
      const double d = run.accuracy.at(l) - first.accuracy.at(l);
      diffs += fmt::format("{}\"{}\": {:.4f}", diffs.empty() ? "" : ", ", l, d);
      if (first.accuracy.at(l) >= 0.5) {
        judged += (judged.empty() ? "" : ", ") + std::to_string(l);
        worst = any ? std::min(worst, d) : d;
        any = true;
      } else {
        skipped += (skipped.empty() ? "" : ", ") + std::to_string(l);
      }
    }
    Emit(fmt::format(
        R"({{"kind": "vs_first", "policy": {}, "first": {}, "diff": {{{}}}, )"
        R"("judged_lengths": [{}], "first_below_50pct_lengths": [{}], "worst_judged_diff": {}, )"
        R"("within_2_points": {}}})",
        JsonString(run.name), JsonString(first.name), diffs, judged, skipped,
        any ? fmt::format("{:.4f}", worst) : "null",
        any ? (worst >= -0.02 - 1e-9 ? "true" : "false") : "null"));
  }
  return 0;
}
