// Generation defaults (engine/generation_config.h): the merge of a generation_config.json with
// --override-generation-config as vLLM does it, the checks that refuse a bad file or value at
// startup, and where --generation-config looks for the file.
#include "engine/generation_config.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

namespace headwise::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Mode = GenerationConfigMode;

StatusOr<GenerationDefaults> Merge(Mode mode, const json& file, const json& over = nullptr) {
  return MergeGenerationConfig(mode, file, "/m/generation_config.json", over);
}

// The message of a refused merge ("" when it was accepted).
std::string Refusal(Mode mode, const json& file, const json& over = nullptr) {
  auto r = Merge(mode, file, over);
  return r.ok() ? "" : r.status().message();
}

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// A fresh directory under the temp dir, removed at scope end.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "hw-genconfig-XXXXXX").string();
    REQUIRE(mkdtemp(t.data()) != nullptr);
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path Write(const std::string& name, const std::string& text) const {
    const fs::path p = path / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p;
  }
};

const json kQwenLike = json::parse(R"({
  "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
  "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.7,
  "top_p": 0.8, "top_k": 20, "transformers_version": "4.43.1"})");

TEST_CASE("a file's sampling keys become defaults and its other keys are ignored", "[engine]") {
  auto d = Merge(Mode::kAuto, kQwenLike);
  REQUIRE(d.ok());
  CHECK(d->temperature == 0.7f);
  CHECK(d->top_p == 0.8f);
  CHECK(d->top_k == 20);
  CHECK(d->repetition_penalty == 1.05f);
  CHECK_FALSE(d->min_p);
  CHECK_FALSE(d->max_tokens);
  CHECK_FALSE(d->max_tokens_cap);
  CHECK(d->eos_token_ids == std::vector<int32_t>{151645, 151643});
  CHECK(d->file == "/m/generation_config.json");
  CHECK(d->has_sampling_defaults());
  CHECK(d->SamplingJson() == json::parse(R"({"temperature": 0.7, "top_p": 0.8, "top_k": 20,
                        "repetition_penalty": 1.05})"));

  // ApplyTo sets exactly the fields that have a default.
  SamplingParams p;
  p.presence_penalty = 0.5f;
  d->ApplyTo(p);
  CHECK(p.temperature == 0.7f);
  CHECK(p.top_k == 20);
  CHECK(p.min_p == 0.0f);
  CHECK(p.presence_penalty == 0.5f);

  // A file without sampling keys (SmolLM2-135M-Instruct's) gives none; one eos id is a list.
  auto smol = Merge(Mode::kAuto, json::parse(R"({"_from_model_config": true, "bos_token_id": 1,
      "eos_token_id": 2, "pad_token_id": 2, "transformers_version": "4.42.3"})"));
  REQUIRE(smol.ok());
  CHECK_FALSE(smol->has_sampling_defaults());
  CHECK(smol->eos_token_ids == std::vector<int32_t>{2});
  // Null values are absent (vLLM reads `get(key) is not None`).
  auto nulls = Merge(Mode::kAuto, json::parse(R"({"temperature": null, "eos_token_id": null})"));
  REQUIRE(nulls.ok());
  CHECK_FALSE(nulls->has_sampling_defaults());
  CHECK(nulls->eos_token_ids.empty());
}

TEST_CASE("the override wins over the file, and null removes a default", "[engine]") {
  auto d = Merge(Mode::kAuto, kQwenLike,
                 json::parse(R"({"temperature": 0.2, "top_k": null, "min_p": 0.05})"));
  REQUIRE(d.ok());
  CHECK(d->temperature == 0.2f);
  CHECK_FALSE(d->top_k);
  CHECK(d->min_p == 0.05f);
  CHECK(d->top_p == 0.8f);  // untouched keys keep the file's value
  CHECK(d->overridden);
  // Without a file the override alone counts.
  auto alone = Merge(Mode::kAuto, nullptr, json::parse(R"({"temperature": 0})"));
  REQUIRE(alone.ok());
  CHECK(alone->temperature == 0.0f);
  CHECK(alone->file.empty());
  CHECK(Contains(alone->Describe(), "--override-generation-config"));
}

TEST_CASE("vllm mode ignores the file's sampling keys but keeps its eos ids", "[engine]") {
  auto d = Merge(Mode::kVllm, kQwenLike);
  REQUIRE(d.ok());
  CHECK_FALSE(d->has_sampling_defaults());
  CHECK(d->eos_token_ids == std::vector<int32_t>{151645, 151643});
  CHECK(Contains(d->Describe(), "--generation-config vllm"));
  // Not used, so not checked: a bad sampling value does not stop a vllm-mode start.
  CHECK(Merge(Mode::kVllm, json::parse(R"({"temperature": "hot"})")).ok());
  // The override still applies on top of nothing.
  auto o = Merge(Mode::kVllm, kQwenLike, json::parse(R"({"top_p": 0.5})"));
  REQUIRE(o.ok());
  CHECK(o->top_p == 0.5f);
  CHECK_FALSE(o->temperature);
}

TEST_CASE("max_new_tokens: a chat default, and a cap when a folder or the override sets it",
          "[engine]") {
  const json file = json::parse(R"({"max_new_tokens": 100})");
  auto a = Merge(Mode::kAuto, file);
  REQUIRE(a.ok());
  CHECK(a->max_tokens == 100);
  CHECK_FALSE(a->max_tokens_cap);
  CHECK(a->ResolveMaxTokens(std::nullopt, /*chat=*/true, 4000) == 100);
  CHECK(a->ResolveMaxTokens(std::nullopt, /*chat=*/false, 16) == 16);  // completions keep 16
  CHECK(a->ResolveMaxTokens(500, true, 4000) == 500);                  // a default, not a cap

  auto f = Merge(Mode::kFolder, file);
  REQUIRE(f.ok());
  CHECK(f->max_tokens_cap == 100);
  CHECK(f->ResolveMaxTokens(500, true, 4000) == 100);
  CHECK(f->ResolveMaxTokens(std::nullopt, false, 16) == 16);

  auto o = Merge(Mode::kAuto, file, json::parse(R"({"max_new_tokens": 40})"));
  REQUIRE(o.ok());
  CHECK(o->max_tokens == 40);
  CHECK(o->max_tokens_cap == 40);
  CHECK(o->ResolveMaxTokens(500, true, 4000) == 40);
  CHECK(o->ResolveMaxTokens(std::nullopt, false, 16) == 16);
  CHECK(o->SamplingJson()["max_tokens_cap"] == 40);
}

TEST_CASE("bad files and values are refused, naming the file or flag and the key", "[engine]") {
  const std::string f = "/m/generation_config.json: ";
  CHECK(Refusal(Mode::kAuto, json::array()) ==
        "/m/generation_config.json: a generation config must be a JSON object, got []");
  CHECK(Refusal(Mode::kAuto, json::parse(R"({"temperature": "hot"})")) ==
        f + "temperature must be a number, got \"hot\"");
  CHECK(Refusal(Mode::kAuto, json::parse(R"({"temperature": true})")) ==
        f + "temperature must be a number, got true");
  CHECK(Refusal(Mode::kAuto, json::parse(R"({"temperature": 3})")) ==
        f + "temperature must be in [0, 2], got 3");
  CHECK(Refusal(Mode::kAuto, json::parse(R"({"top_p": 0})")) ==
        f + "top_p must be in (0, 1], got 0");
  CHECK(Refusal(Mode::kAuto, json::parse(R"({"top_k": 2.5})")) ==
        f + "top_k must be an integer, got 2.5");
  CHECK(Refusal(Mode::kAuto, json::parse(R"({"top_k": -2})")) ==
        f + "top_k must be -1, 0 or positive, got -2");
  CHECK(Refusal(Mode::kAuto, json::parse(R"({"min_p": 1.5})")) ==
        f + "min_p must be in [0, 1], got 1.5");
  CHECK(Refusal(Mode::kAuto, json::parse(R"({"repetition_penalty": 0})")) ==
        f + "repetition_penalty must be in (0, 100], got 0");
  CHECK(Contains(Refusal(Mode::kAuto, json::parse(R"({"max_new_tokens": 0})")),
                 f + "max_new_tokens must be an integer in [1, "));
  CHECK(Contains(Refusal(Mode::kAuto, json::parse(R"({"max_new_tokens": 1e12})")),
                 f + "max_new_tokens must be an integer"));
  CHECK(Contains(Refusal(Mode::kAuto, json::parse(R"({"eos_token_id": [2, -1]})")),
                 f + "eos_token_id must be an integer in [0, "));
  CHECK(Refusal(Mode::kAuto, json::parse(R"({"eos_token_id": "</s>"})")) ==
        f + "eos_token_id must be a token id or a list of them, got \"</s>\"");
  // eos_token_id is checked in every mode, since every mode uses it.
  CHECK(Contains(Refusal(Mode::kVllm, json::parse(R"({"eos_token_id": [true]})")),
                 "eos_token_id must be a token id"));

  const std::string o = "--override-generation-config: ";
  CHECK(Refusal(Mode::kAuto, nullptr, json::parse(R"({"temprature": 0.5})")) ==
        o + "unknown key 'temprature'; the keys taken are temperature, top_p, top_k, min_p, "
            "repetition_penalty and max_new_tokens");
  CHECK(Refusal(Mode::kAuto, nullptr, json::parse(R"({"do_sample": false})")) != "");
  CHECK(Refusal(Mode::kAuto, nullptr, json::parse(R"({"temperature": -1})")) ==
        o + "temperature must be in [0, 2], got -1");
  CHECK(Refusal(Mode::kAuto, nullptr, json::parse("[0.5]")) ==
        o + "expects a JSON object such as '{\"temperature\": 0.5}', got [0.5]");
  // A long bad value is cut short in the message.
  const std::string long_value(500, 'x');
  const std::string m = Refusal(Mode::kAuto, json{{"temperature", long_value}});
  CHECK(Contains(m, "..."));
  CHECK(m.size() < 200);
}

TEST_CASE("eos ids join the model's, inside its vocabulary", "[engine]") {
  auto d = Merge(Mode::kAuto, json::parse(R"({"eos_token_id": [7, 2]})"));
  REQUIRE(d.ok());
  std::vector<int32_t> eos = {2, 5};
  REQUIRE(d->AddEosTokenIds(10, eos).ok());
  CHECK(eos == std::vector<int32_t>{2, 5, 7});
  std::vector<int32_t> small = {2};
  Status s = d->AddEosTokenIds(7, small);
  CHECK(s.message() == "/m/generation_config.json: eos_token_id 7 is outside the vocabulary of 7");
}

TEST_CASE("where --generation-config looks for the file", "[engine]") {
  TempDir dir;
  const std::string gguf = dir.Write("model.gguf", "GGUF").string();
  GenerationConfigFlags flags;  // auto

  SECTION("auto: none beside the model is no error") {
    auto d = LoadGenerationDefaults(gguf, flags);
    REQUIRE(d.ok());
    CHECK(d->file.empty());
    CHECK_FALSE(d->has_sampling_defaults());
    CHECK(Contains(d->Describe(), "no generation_config.json beside the model"));
  }
  SECTION("auto: beside a .gguf file, and in a model directory") {
    const fs::path file = dir.Write("generation_config.json", R"({"temperature": 0.3})");
    auto d = LoadGenerationDefaults(gguf, flags);
    REQUIRE(d.ok());
    CHECK(d->temperature == 0.3f);
    CHECK(d->file == file.string());
    auto in_dir = LoadGenerationDefaults(dir.path.string(), flags);
    REQUIRE(in_dir.ok());
    CHECK(in_dir->temperature == 0.3f);
    CHECK(Contains(in_dir->Describe(), "default sampling parameters from " + file.string()));
  }
  SECTION("auto: a bad file stops the start, naming it") {
    const fs::path file = dir.Write("generation_config.json", "{\"temperature\": ");
    auto d = LoadGenerationDefaults(gguf, flags);
    REQUIRE_FALSE(d.ok());
    CHECK(Contains(d.status().message(), file.string() + ": invalid JSON"));
  }
  SECTION("auto: a file over the size limit is not read") {
    dir.Write("generation_config.json",
              "{\"x\": \"" + std::string(kMaxGenerationConfigBytes, 'a') + "\"}");
    auto d = LoadGenerationDefaults(gguf, flags);
    REQUIRE_FALSE(d.ok());
    CHECK(Contains(d.status().message(), "over the limit of 1048576 for a generation_config.json"));
  }
  SECTION("auto: a directory of that name is refused, not skipped") {
    fs::create_directories(dir.path / "generation_config.json");
    auto d = LoadGenerationDefaults(gguf, flags);
    REQUIRE_FALSE(d.ok());
    CHECK(Contains(d.status().message(), "is a directory"));
  }
  SECTION("vllm: the file's eos ids only") {
    dir.Write("generation_config.json", R"({"temperature": 0.3, "eos_token_id": 9})");
    flags.generation_config = "vllm";
    auto d = LoadGenerationDefaults(gguf, flags);
    REQUIRE(d.ok());
    CHECK_FALSE(d->temperature);
    CHECK(d->eos_token_ids == std::vector<int32_t>{9});
  }
  SECTION("a folder: its file, which must exist") {
    dir.Write("generation_config.json", R"({"temperature": 0.3})");
    TempDir other;
    other.Write("generation_config.json", R"({"temperature": 0.9, "max_new_tokens": 8})");
    flags.generation_config = other.path.string();
    auto d = LoadGenerationDefaults(gguf, flags);
    REQUIRE(d.ok());
    CHECK(d->temperature == 0.9f);
    CHECK(d->max_tokens_cap == 8);

    TempDir empty;
    flags.generation_config = empty.path.string();
    auto missing = LoadGenerationDefaults(gguf, flags);
    REQUIRE_FALSE(missing.ok());
    CHECK(missing.status().message() ==
          "--generation-config: " + empty.path.string() + " holds no generation_config.json");
    flags.generation_config = (empty.path / "nope").string();
    auto not_dir = LoadGenerationDefaults(gguf, flags);
    REQUIRE_FALSE(not_dir.ok());
    CHECK(Contains(not_dir.status().message(), "is not a folder"));
    flags.generation_config = "";
    CHECK_FALSE(LoadGenerationDefaults(gguf, flags).ok());
  }
  SECTION("the override as text: bad JSON is refused, naming the flag") {
    flags.override_generation_config = "{temperature: 1}";
    auto d = LoadGenerationDefaults(gguf, flags);
    REQUIRE_FALSE(d.ok());
    CHECK(Contains(d.status().message(), "--override-generation-config: invalid JSON"));
    flags.override_generation_config = R"({"top_k": 5})";
    auto ok = LoadGenerationDefaults(gguf, flags);
    REQUIRE(ok.ok());
    CHECK(ok->top_k == 5);
  }
}

TEST_CASE("the committed generation configs of get-model.sh's models load", "[engine]") {
  // configs/models/<name>/generation_config.json is what get-model.sh puts beside each GGUF.
  const std::string root = HEADWISE_SOURCE_DIR;
  for (const char* name :
       {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"}) {
    CAPTURE(name);
    GenerationConfigFlags flags;
    flags.generation_config = root + "/configs/models/" + name;
    auto d = LoadGenerationDefaults("unused", flags);
    REQUIRE(d.ok());
    CHECK_FALSE(d->eos_token_ids.empty());
  }
}

}  // namespace
}  // namespace headwise::engine
