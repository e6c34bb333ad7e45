// The CPU backend against Hugging Face transformers: logits and greedy text of real and seeded
// random models, from golden files that scripts/goldens/make_goldens.py made on the GPU machine.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/attention_setup.h"
#include "engine/generator.h"
#include "engine/model_loader.h"
#include "engine/model_runner.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/test_util.h"
#include "tokenizer/chat_renderer.h"

namespace headwise::engine {
namespace {

namespace fs = std::filesystem;

std::string ResolveModel(const std::string& where) {
  if (where.rfind("shared:", 0) == 0) return testing::SharedDir() + "/" + where.substr(7);
  if (where.rfind("repo:", 0) == 0) return testing::SourcePath(where.substr(5));
  // Models that scripts/get-model.sh fetches: the variable scripts/test.sh sets, else the cache.
  struct Fetched {
    const char* name;
    const char* env;
    const char* file;
  };
  static constexpr Fetched kFetched[] = {
      {"smollm2-135m-instruct", "HEADWISE_SMOLLM2_GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf"},
      {"qwen2.5-coder-0.5b-instruct", "HEADWISE_QWEN05_GGUF",
       "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"},
  };
  for (const auto& f : kFetched) {
    if (where != f.name) continue;
    if (const char* env = std::getenv(f.env); env && *env) return env;
    const char* cache = std::getenv("XDG_CACHE_HOME");
    const std::string base = cache && *cache ? cache : std::string(std::getenv("HOME")) + "/.cache";
    return base + "/headwise/models/" + f.name + "/" + f.file;
  }
  return where;
}

std::vector<float> ReadF32(const fs::path& path, size_t count) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::vector<float> v(count);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(float)));
  REQUIRE(in.gcount() == static_cast<std::streamsize>(count * sizeof(float)));
  return v;
}

struct Golden {
  std::string name;
  nlohmann::json meta;
  fs::path dir;
};

std::vector<Golden> AllGoldens() {
  std::vector<Golden> out;
  const fs::path dir = testing::SourcePath("tests/golden");
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".json") continue;
    std::ifstream in(entry.path());
    out.push_back({entry.path().stem().string(), nlohmann::json::parse(in), dir});
  }
  std::sort(out.begin(), out.end(),
            [](const Golden& a, const Golden& b) { return a.name < b.name; });
  return out;
}

TEST_CASE("Logits and greedy text equal transformers'", "[golden]") {
  const auto goldens = AllGoldens();
  REQUIRE(goldens.size() >= 8);
  for (const auto& g : goldens) {
    DYNAMIC_SECTION(g.name) {
      const std::string model_path = ResolveModel(g.meta["model"].get<std::string>());
      INFO("model " << model_path << " (fetch it with scripts/get-model.sh " << g.meta["model"]
                    << ")");
      REQUIRE(fs::exists(model_path));
      auto backend = kernels::CreateCpuBackend(0);
      auto loaded = LoadModel(model_path, LoadOptions{}, *backend);
      INFO(loaded.status().ToString());
      REQUIRE(loaded.ok());
      auto& model = *loaded->model;
      const auto& cfg = model.config();

      const auto prompt = g.meta["prompt_ids"].get<std::vector<int32_t>>();
      if (g.meta["prompt"].is_string() && loaded->tokenizer) {
        // The prompt ids come from transformers' tokenizer; ours must agree.
        const bool chat =
            g.meta["prompt"].get<std::string>().find("<|im_start|>") != std::string::npos;
        CHECK(loaded->tokenizer->Encode(g.meta["prompt"].get<std::string>(), !chat) == prompt);
      }
      const auto positions = g.meta["logits_positions"].get<std::vector<int>>();
      const auto shape = g.meta["logits_shape"].get<std::vector<size_t>>();
      REQUIRE(shape[1] == static_cast<size_t>(cfg.vocab_size));
      const auto ref =
          ReadF32(g.dir / g.meta["logits_file"].get<std::string>(), shape[0] * shape[1]);

      // One pass over the prompt, and the same prompt in chunks of 7 tokens.
      for (size_t chunk : {prompt.size(), size_t{7}}) {
        kvcache::KvCache cache(
            KvConfigFor(model.config(), static_cast<int>((prompt.size() + 15) / 16) *
                                            cfg.num_layers * cfg.num_kv_heads),
            kvcache::KvLayout::Dense(cfg.num_layers, cfg.num_kv_heads), *backend);
        kvcache::SequenceKv kv(cache);
        REQUIRE(kv.Reserve(static_cast<int>(prompt.size())).ok());
        std::vector<float> logits;
        for (size_t start = 0; start < prompt.size(); start += chunk) {
          const size_t n = std::min(chunk, prompt.size() - start);
          BatchEntry e{&kv, std::span<const int32_t>(prompt).subspan(start, n),
                       static_cast<int>(start), true};
          auto part = ModelRunner(model, cache).ForwardToHost(std::span<const BatchEntry>(&e, 1));
          logits.insert(logits.end(), part.begin(), part.end());
        }
        const size_t vocab = shape[1];
        double max_diff = 0, lo = INFINITY, hi = -INFINITY;
        for (size_t r = 0; r < positions.size(); ++r) {
          for (size_t v = 0; v < vocab; ++v) {
            const double want = ref[r * vocab + v];
            const double got = logits[static_cast<size_t>(positions[r]) * vocab + v];
            max_diff = std::max(max_diff, std::abs(want - got));
            lo = std::min(lo, want);
            hi = std::max(hi, want);
          }
        }
        INFO("chunk " << chunk << ": max |diff| " << max_diff << ", logit range " << hi - lo);
        CHECK(max_diff <= 1e-4 * (hi - lo));
      }

      const auto greedy = g.meta["greedy_ids"].get<std::vector<int32_t>>();
      if (!greedy.empty()) {
        REQUIRE(loaded->tokenizer);
        const int total = static_cast<int>(prompt.size() + greedy.size());
        kvcache::KvCache cache(
            KvConfigFor(model.config(), (total + 15) / 16 * cfg.num_layers * cfg.num_kv_heads),
            kvcache::KvLayout::Dense(cfg.num_layers, cfg.num_kv_heads), *backend);
        SamplingParams params;
        params.temperature = 0.0f;
        params.max_tokens = static_cast<int>(greedy.size());
        Generator generator(model, cache, loaded->tokenizer.get(), loaded->eos_token_ids);
        auto result = generator.Generate(prompt, params);
        REQUIRE(result.ok());
        CHECK(result->output_ids == greedy);
        // transformers decodes the generated ids alone (no prompt context).
        CHECK(loaded->tokenizer->Decode(result->output_ids, true) ==
              g.meta["greedy_text"].get<std::string>());
      }
    }
  }
}

// The chat renderer of a golden's model, from its own chat template and tokenizer.
std::unique_ptr<tokenizer::ChatRenderer> RendererOf(const std::string& model) {
  const std::string model_path = ResolveModel(model);
  REQUIRE(fs::exists(model_path));
  auto backend = kernels::CreateCpuBackend(1);
  auto loaded = LoadModel(model_path, LoadOptions{}, *backend);
  REQUIRE(loaded.ok());
  auto renderer = tokenizer::ChatRenderer::ForTokenizer(loaded->chat_template, *loaded->tokenizer);
  REQUIRE(renderer.ok());
  return std::move(renderer).value();
}

TEST_CASE("Chat rendering equals transformers' apply_chat_template", "[golden]") {
  // The golden's prompt is what transformers rendered from SmolLM2's own template for one user
  // message (default system prompt included).
  std::ifstream in(testing::SourcePath("tests/golden/smollm2-135m-instruct.json"));
  const auto meta = nlohmann::json::parse(in);
  const auto renderer = RendererOf("smollm2-135m-instruct");
  auto rendered = renderer->Render({{"user", "What is the capital of France?", ""}}, true, {});
  REQUIRE(rendered.ok());
  CHECK(*rendered == meta["prompt"].get<std::string>());
}

TEST_CASE("Qwen2.5-Coder's chat template with tools renders as transformers' does", "[golden]") {
  // The GGUF's ChatML template with a system prompt, an earlier turn and a function tool
  // (passed as the template variable `tools`, as vLLM does for a request's tools).
  std::ifstream in(testing::SourcePath("tests/golden/qwen2.5-coder-0.5b-instruct.json"));
  const auto meta = nlohmann::ordered_json::parse(in);
  const auto renderer = RendererOf("qwen2.5-coder-0.5b-instruct");
  const auto& case_ = meta["chat_with_tools"];
  std::vector<tokenizer::ChatMessage> messages;
  for (const auto& m : case_["messages"]) {
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>(), ""});
  }
  nlohmann::ordered_json kwargs = {{"tools", case_["tools"]}};
  auto rendered = renderer->Render(messages, true, kwargs);
  REQUIRE(rendered.ok());
  CHECK(*rendered == case_["text"].get<std::string>());
  // Without tools: the default system prompt, as in the golden's prompt.
  auto plain = renderer->Render({{"user", meta["chat_messages"][0]["content"], ""}}, true, {});
  REQUIRE(plain.ok());
  CHECK(*plain == meta["prompt"].get<std::string>());
}

}  // namespace
}  // namespace headwise::engine
