// `headwise profile-heads`: per-head retrieval / RazorAttention scores of a model, computed with
// our own forward pass on either backend (engine/attention/head_profile.h), written as a
// head-profile file that attention policies can reference (engine/attention/profile_file.h).
#include <spdlog/spdlog.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "engine/attention/head_profile.h"
#include "engine/attention/profile_file.h"
#include "engine/model_loader.h"
#include "kernels/backend_factory.h"
#include "tools/commands.h"
#include "tools/flags.h"

namespace headwise::tools {
namespace {

constexpr const char* kUsage =
    R"(usage: headwise profile-heads MODEL --method razor|retrieval --out FILE [options]

Scores every attention head of MODEL with our own engine and writes a
head-profile file carrying the model's identity (layer and head counts, a hash of the weights);
an attention policy's head_list (razor) or head_scores (retrieval) assignment can name it, and
the policy loader refuses it for any other model (configs/README.md).

  --method razor            RazorAttention (ALGORITHMS.md 3.1): one prefill of [BOS] + R x 4,
                            echo / induction scores per head, selected KV heads under "heads"
  --method retrieval        Retrieval-Head (4.1): passkey needles in a haystack, greedy decoding,
                            copy-paste scores per query head under "scores"
  --out FILE                where to write the profile (JSON)
  --device cpu|cuda         where the model runs (default cpu); the attention rows are always
                            recomputed on the CPU in f32, from copies of the GPU's bf16 q and K
  --threads N               CPU threads (default: all)
  --prefill-chunk N         prefill chunk size in tokens (default 512)
  --seed N                  seed of the razor tokens / the passkeys (defaults 20240721 / 20240423)
  --load-format auto|dummy  dummy: seeded random weights from config.json alone (timing runs)
  --tokenizer PATH          tokenizer to use instead of the model's own (retrieval)
razor:
  --razor-length R          length of the repeated block (default 500; the paper uses 2500)
  --repetitions N           copies of the block (default 4)
  --token-range LO:HI       token ids drawn from [LO, HI) (default [10000, 12500), or
                            [0.8 V, V) for vocabularies V < 12500)
  --induction-ratio F       share of KV heads selected by induction score (default 0.14)
  --echo-ratio F            share of KV heads selected by echo score (default 0.01)
  --save-input FILE         also write the input token ids (a JSON list)
retrieval:
  --context-lengths A,B,..  prompt lengths in tokens, about (default 256,448)
  --depths K                needle depths linspace(0, 100, K) percent (default 5)
  --max-new-tokens N        greedy tokens per sample at most (default 12)
  --min-recall F            a sample counts when the answer's ROUGE-1 recall exceeds F
                            (default 0.5; below 0 counts every sample, for tests)
)";

int Fail(const Status& s) {
  std::fprintf(stderr, "headwise: error: %s\n", s.message().c_str());
  return s.code() == StatusCode::kInternal ? 1 : 2;
}

StatusOr<std::vector<int>> ParseIntList(const std::string& text, const char* flag) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    auto v = ParseInt(item);
    if (!v.ok() || *v < 1)
      return InvalidArgument("--{}: '{}' is not a positive integer", flag, item);
    out.push_back(static_cast<int>(*v));
  }
  if (out.empty()) return InvalidArgument("--{}: expected a comma-separated list", flag);
  return out;
}

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return NotFound("{}: cannot open for writing", path);
  out << text << '\n';
  out.close();
  if (!out) return Internal("{}: write failed", path);
  return Status::Ok();
}

}  // namespace

int RunProfileHeads(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  // MODEL comes first, as with `headwise serve MODEL`; the flag parser takes the rest.
  std::vector<char*> args(argv, argv + argc);
  std::string model_path = TakeLeadingArgument(args);
  FlagParser flags(static_cast<int>(args.size()), args.data());
  if (flags.Has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  std::string method, out_path, load_format = "auto", tokenizer_path, token_range, save_input;
  std::string device = "cpu";
  std::string context_lengths = "256,448";
  int threads = 0, prefill_chunk = 512;
  int64_t seed = -1;
  engine::attention::RazorOptions razor;
  engine::attention::RetrievalOptions retrieval;
  std::string induction_ratio_text, echo_ratio_text, min_recall_text;
  flags.String("method", method);
  flags.String("out", out_path);
  flags.Int("threads", threads);
  flags.String("device", device);
  flags.Int("prefill-chunk", prefill_chunk);
  flags.Int64("seed", seed);
  flags.String("load-format", load_format);
  flags.String("tokenizer", tokenizer_path);
  flags.Int("razor-length", razor.length);
  flags.Int("repetitions", razor.repetitions);
  flags.String("token-range", token_range);
  flags.String("induction-ratio", induction_ratio_text);
  flags.String("echo-ratio", echo_ratio_text);
  flags.String("save-input", save_input);
  flags.String("context-lengths", context_lengths);
  flags.Int("depths", retrieval.num_depths);
  flags.Int("max-new-tokens", retrieval.max_new_tokens);
  flags.String("min-recall", min_recall_text);
  if (Status s = flags.Finish(); !s.ok()) return Fail(s);
  if (model_path.empty()) {
    return Fail(InvalidArgument("expected a MODEL path first (headwise profile-heads --help)"));
  }
  if (method != "razor" && method != "retrieval") {
    return Fail(InvalidArgument("--method must be razor or retrieval, got '{}'", method));
  }
  if (out_path.empty()) return Fail(InvalidArgument("--out is required"));
  if (load_format != "auto" && load_format != "dummy") {
    return Fail(InvalidArgument("--load-format must be auto or dummy, got '{}'", load_format));
  }
  for (auto [text, value, flag] :
       {std::tuple(&induction_ratio_text, &razor.induction_ratio, "induction-ratio"),
        std::tuple(&echo_ratio_text, &razor.echo_ratio, "echo-ratio")}) {
    if (text->empty()) continue;
    auto v = ParseFloat(*text);
    if (!v.ok() || *v < 0 || *v > 1) {
      return Fail(InvalidArgument("--{} must be a fraction in [0, 1], got '{}'", flag, *text));
    }
    *value = *v;
  }
  razor.threads = retrieval.threads = threads;
  razor.prefill_chunk = retrieval.prefill_chunk = prefill_chunk;
  if (seed >= 0) razor.seed = retrieval.seed = static_cast<uint64_t>(seed);
  if (!token_range.empty()) {
    const size_t colon = token_range.find(':');
    auto lo = ParseInt(token_range.substr(0, colon));
    auto hi = colon == std::string::npos ? lo : ParseInt(token_range.substr(colon + 1));
    if (colon == std::string::npos || !lo.ok() || !hi.ok()) {
      return Fail(InvalidArgument("--token-range expects LO:HI, got '{}'", token_range));
    }
    razor.token_lo = static_cast<int32_t>(*lo);
    razor.token_hi = static_cast<int32_t>(*hi);
  }
  if (!min_recall_text.empty()) {
    auto v = ParseFloat(min_recall_text);
    if (!v.ok()) return Fail(v.status().WithContext("--min-recall"));
    retrieval.min_recall = *v;
  }
  auto lengths = ParseIntList(context_lengths, "context-lengths");
  if (!lengths.ok()) return Fail(lengths.status());
  retrieval.context_lengths = *lengths;

  auto created = kernels::CreateBackend(device, threads);
  if (!created.ok()) return Fail(created.status());
  std::unique_ptr<kernels::Backend> backend = std::move(created).value();
  engine::LoadOptions options;
  options.format = load_format == "dummy" ? models::LoadFormat::kDummy : models::LoadFormat::kAuto;
  options.tokenizer_path = tokenizer_path;
  auto loaded = engine::LoadModel(model_path, options, *backend);
  if (!loaded.ok()) return Fail(loaded.status());
  models::LlamaModel& model = *loaded->model;
  const models::ModelConfig& c = model.config();
  const engine::attention::ModelShape identity{c.num_layers, c.num_heads, c.num_kv_heads,
                                               model.weights_hash()};

  nlohmann::ordered_json doc;
  if (method == "razor") {
    // The tokenizer's BOS, else config.json's (dummy weights come without a tokenizer).
    std::optional<int32_t> bos;
    if (loaded->tokenizer) {
      bos = loaded->tokenizer->bos_id();
    } else if (c.bos_token_id >= 0) {
      bos = c.bos_token_id;
    }
    auto profile = engine::attention::ProfileRazor(model, bos, razor);
    if (!profile.ok()) return Fail(profile.status());
    doc = engine::attention::RazorProfileJson(*profile, identity);
    if (!save_input.empty()) {
      if (Status s = WriteText(save_input, nlohmann::json(profile->tokens).dump()); !s.ok()) {
        return Fail(s);
      }
    }
  } else {
    if (!loaded->tokenizer) {
      return Fail(InvalidArgument("{}: no tokenizer found; pass --tokenizer PATH", model_path));
    }
    auto profile = engine::attention::ProfileRetrieval(model, *loaded->tokenizer,
                                                       loaded->eos_token_ids, retrieval);
    if (!profile.ok()) return Fail(profile.status());
    doc = engine::attention::RetrievalProfileJson(*profile, identity);
  }
  const std::string text = doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (Status s = WriteText(out_path, text); !s.ok()) return Fail(s);
  std::fprintf(stderr, "wrote %s (%s profile; model %s)\n", out_path.c_str(), method.c_str(),
               engine::attention::FormatIdentity(identity).c_str());
  return 0;
}

}  // namespace headwise::tools
