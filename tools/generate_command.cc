// `headwise generate`: one prompt through one model, the completion on stdout, speed on stderr.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/attention_setup.h"
#include "engine/generation_config.h"
#include "engine/generator.h"
#include "engine/model_loader.h"
#include "kernels/backend_factory.h"
#include "tokenizer/chat_renderer.h"
#include "tools/commands.h"
#include "tools/flags.h"

namespace headwise::tools {
namespace {

constexpr const char* kUsage = R"(usage: headwise generate --model PATH --prompt TEXT [options]

  --model PATH              Hugging Face model directory, .gguf file, or (with
                            --load-format dummy) a directory holding config.json
  --prompt TEXT             the prompt
  --chat                    wrap the prompt as a user message in the model's chat template
  --system TEXT             system message for --chat
  --load-format auto|dummy  dummy: seeded random weights from config.json alone
  --tokenizer PATH          tokenizer to use instead of the model's own
  --max-tokens N            tokens to generate (default: the generation config's
                            max_new_tokens, else 64)
  --temperature T           0 = greedy (default: the generation config's, else 0)
  --top-k K  --top-p P  --min-p P  --repetition-penalty R
                            (default: the generation config's, else off)
  --presence-penalty P  --frequency-penalty F
  --generation-config auto|vllm|FOLDER
                            defaults of the sampling flags not given: auto (default): the
                            model's generation_config.json (beside a .gguf file); vllm:
                            none; or FOLDER's (its max_new_tokens also caps --max-tokens)
  --override-generation-config JSON
                            applied on top, e.g. '{"temperature": 0.2}' (headwise serve
                            --help lists the keys)
  --seed N                  seed of the sampler (same seed, same output)
  --stop TEXT               stop string (repeatable); not printed
  --stop-token-id ID        stop token id (repeatable)
  --logit-bias ID=BIAS      additive logit bias (repeatable)
  --ignore-eos              keep going past end-of-sequence tokens
  --logprobs K              print each token's logprob and K alternatives to stderr
  --no-special              do not add BOS/special tokens to the prompt
  --device cpu|cuda         backend (default cpu)
  --enforce-eager           run decode steps eagerly instead of replaying CUDA graphs
  --threads N               CPU threads (default: all)
  --tensor-parallel-size N  shard the model over N devices (default 1; headwise serve --help)
  --prefill-chunk N         prefill chunk size in tokens (default 512)
  --kv-pages N              KV pages of 16 tokens (default: enough for the request)
  --attention-policy FILE   attn-policy/v1 file (configs/README.md); default: dense.
                            With every head a re-indexed ring (StreamingLLM) the
                            output may run past the model's context, as long as
                            sink + window + prefill chunk fits it
)";

int Fail(const Status& s) {
  std::fprintf(stderr, "headwise: error: %s\n", s.message().c_str());
  return s.code() == StatusCode::kInternal ? 1 : 2;
}

// Which sampling flags the command line gave: those keep their value over the defaults.
struct SamplingFlagsGiven {
  bool temperature, top_k, top_p, min_p, repetition_penalty;
};

void ApplyDefaults(const engine::GenerationDefaults& defaults, const SamplingFlagsGiven& given,
                   engine::SamplingParams& params) {
  engine::SamplingParams d = params;
  defaults.ApplyTo(d);
  if (!given.temperature) params.temperature = d.temperature;
  if (!given.top_k) params.top_k = d.top_k;
  if (!given.top_p) params.top_p = d.top_p;
  if (!given.min_p) params.min_p = d.min_p;
  if (!given.repetition_penalty) params.repetition_penalty = d.repetition_penalty;
}

}  // namespace

int RunGenerate(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  FlagParser flags(argc, argv);
  if (flags.Has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  std::string model_path, prompt, load_format = "auto", tokenizer_path, system, device = "cpu";
  bool chat = false, ignore_eos = false, no_special = false, enforce_eager = false;
  int threads = 0, prefill_chunk = 512, kv_pages = 0, tensor_parallel_size = 1;
  std::string attention_policy_path;
  engine::SamplingParams params;
  params.temperature = 0.0f;
  params.max_tokens = 64;
  int64_t seed = -1;
  std::vector<std::string> stops, stop_ids, biases;

  flags.String("model", model_path);
  flags.String("prompt", prompt);
  flags.Bool("chat", chat);
  flags.String("system", system);
  flags.String("load-format", load_format);
  flags.String("tokenizer", tokenizer_path);
  flags.Int("max-tokens", params.max_tokens);
  flags.Float("temperature", params.temperature);
  flags.Int("top-k", params.top_k);
  flags.Float("top-p", params.top_p);
  flags.Float("min-p", params.min_p);
  flags.Float("repetition-penalty", params.repetition_penalty);
  flags.Float("presence-penalty", params.presence_penalty);
  flags.Float("frequency-penalty", params.frequency_penalty);
  flags.Int64("seed", seed);
  flags.StringList("stop", stops);
  flags.StringList("stop-token-id", stop_ids);
  flags.StringList("logit-bias", biases);
  flags.Bool("ignore-eos", ignore_eos);
  flags.Int("logprobs", params.logprobs);
  flags.Bool("no-special", no_special);
  flags.Int("threads", threads);
  flags.Int("tensor-parallel-size", tensor_parallel_size);
  flags.String("device", device);
  flags.Bool("enforce-eager", enforce_eager);
  flags.Int("prefill-chunk", prefill_chunk);
  flags.Int("kv-pages", kv_pages);
  flags.String("attention-policy", attention_policy_path);
  engine::GenerationConfigFlags generation_flags;
  flags.String("generation-config", generation_flags.generation_config);
  flags.String("override-generation-config", generation_flags.override_generation_config);
  // The sampling flags given on the command line win over the generation config, as a
  // request's own fields do in the server.
  const bool max_tokens_given = flags.Has("max-tokens");
  SamplingFlagsGiven given{flags.Has("temperature"), flags.Has("top-k"), flags.Has("top-p"),
                           flags.Has("min-p"), flags.Has("repetition-penalty")};
  if (Status s = flags.Finish(); !s.ok()) return Fail(s);
  if (model_path.empty()) return Fail(InvalidArgument("--model is required"));
  if (prompt.empty()) return Fail(InvalidArgument("--prompt is required"));
  if (load_format != "auto" && load_format != "dummy") {
    return Fail(InvalidArgument("--load-format must be auto or dummy, got '{}'", load_format));
  }
  params.stop = stops;
  params.ignore_eos = ignore_eos;
  if (seed >= 0) params.seed = static_cast<uint64_t>(seed);
  for (const auto& s : stop_ids) {
    auto id = ParseInt(s);
    if (!id.ok()) return Fail(id.status().WithContext("--stop-token-id"));
    params.stop_token_ids.push_back(static_cast<int32_t>(*id));
  }
  for (const auto& b : biases) {
    const size_t eq = b.find('=');
    if (eq == std::string::npos)
      return Fail(InvalidArgument("--logit-bias expects ID=BIAS, got '{}'", b));
    auto id = ParseInt(b.substr(0, eq));
    auto bias = ParseFloat(b.substr(eq + 1));
    if (!id.ok() || !bias.ok())
      return Fail(InvalidArgument("--logit-bias expects ID=BIAS, got '{}'", b));
    params.logit_bias[static_cast<int32_t>(*id)] = static_cast<float>(*bias);
  }

  auto defaults = engine::LoadGenerationDefaults(model_path, generation_flags);
  if (!defaults.ok()) return Fail(defaults.status());
  ApplyDefaults(*defaults, given, params);
  params.max_tokens = defaults->ResolveMaxTokens(
      max_tokens_given ? std::optional<int>(params.max_tokens) : std::nullopt, /*chat=*/true,
      params.max_tokens);
  if (defaults->has_sampling_defaults()) {
    std::fprintf(stderr, "headwise: %s\n", defaults->Describe().c_str());
  }

  auto ranks = engine::CreateRankGroup(device, tensor_parallel_size, threads);
  if (!ranks.ok()) return Fail(ranks.status());
  engine::LoadOptions options;
  options.format = load_format == "dummy" ? models::LoadFormat::kDummy : models::LoadFormat::kAuto;
  options.tokenizer_path = tokenizer_path;
  auto loaded = engine::LoadModel(model_path, options, ranks->devices());
  if (!loaded.ok()) return Fail(loaded.status());
  if (!loaded->tokenizer) {
    return Fail(InvalidArgument("{}: no tokenizer found; pass --tokenizer PATH", model_path));
  }
  const tokenizer::Tokenizer& tok = *loaded->tokenizer;
  if (Status s =
          defaults->AddEosTokenIds(loaded->model->config().vocab_size, loaded->eos_token_ids);
      !s.ok()) {
    return Fail(s);
  }
  auto policy = engine::LoadAttentionPolicy(attention_policy_path, loaded->model->config(),
                                            model_path, loaded->model->weights_hash());
  if (!policy.ok()) return Fail(policy.status());

  std::string text = prompt;
  if (chat) {
    std::vector<tokenizer::ChatMessage> messages;
    if (!system.empty()) messages.push_back({"system", system, ""});
    messages.push_back({"user", prompt, ""});
    auto renderer = tokenizer::ChatRenderer::ForTokenizer(loaded->chat_template, tok);
    if (!renderer.ok()) return Fail(renderer.status());
    auto rendered = (*renderer)->Render(messages, /*add_generation_prompt=*/true, {});
    if (!rendered.ok()) return Fail(rendered.status());
    text = *rendered;
  }
  // A chat rendering already carries its BOS, like transformers' apply_chat_template.
  const std::vector<int32_t> ids = tok.Encode(text, !no_special && !chat);

  const int needed = static_cast<int>(ids.size()) + params.max_tokens;
  const int page_size = policy->page_size;
  const int chunk = std::max(prefill_chunk, 1);
  auto layout = engine::KvLayoutFor(*policy);
  if (!layout.ok()) return Fail(layout.status());
  kvcache::KvCacheConfig kv = engine::KvConfigFor(loaded->model->config(), 0, page_size, chunk);
  kv.num_ranks = ranks->size();
  kv.num_pages = kv_pages > 0 ? kv_pages : kvcache::KvCache::PagesForSequence(kv, *layout, needed);
  std::vector<kvcache::KvLayout> layouts;
  layouts.push_back(std::move(layout).value());
  auto cache = engine::CreateKvCache(std::move(layouts), kv, ranks->devices().backends);
  if (!cache.ok()) return Fail(cache.status());
  engine::Generator generator(loaded->ranks(), **cache, &tok, loaded->eos_token_ids);
  generator.set_use_graphs(!enforce_eager);
  auto result = generator.Generate(ids, params, prefill_chunk, [](std::string_view delta) {
    std::fwrite(delta.data(), 1, delta.size(), stdout);
    std::fflush(stdout);
  });
  if (!result.ok()) return Fail(result.status());
  std::fputc('\n', stdout);
  std::fflush(stdout);

  if (params.logprobs >= 0) {
    for (const auto& t : result->tokens) {
      std::string alts;
      for (const auto& [id, lp] : t.top_logprobs) alts += fmt::format(" {}:{:.4f}", id, lp);
      std::fprintf(stderr, "token %d logprob %.4f top:%s\n", t.id, t.logprob, alts.c_str());
    }
  }
  const size_t n_out = result->output_ids.size();
  std::fprintf(stderr,
               "prompt: %zu tokens, %.1f tokens/s; generation: %zu tokens, %.1f tokens/s; "
               "finish: %s\n",
               ids.size(), result->prefill_seconds > 0 ? ids.size() / result->prefill_seconds : 0.0,
               n_out, result->decode_seconds > 0 ? n_out / result->decode_seconds : 0.0,
               std::string(engine::FinishReasonName(result->finish_reason)).c_str());
  return 0;
}

}  // namespace headwise::tools
