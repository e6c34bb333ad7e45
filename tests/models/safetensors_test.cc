// safetensors and Hugging Face directories: TinyStories as shipped, sharded copies, f16/bf16,
// and broken files.
#include "models/safetensors.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "core/dtype.h"
#include "core/json_file.h"
#include "models/weight_source.h"
#include "tests/models/model_files_util.h"
#include "tests/test_util.h"

namespace headwise::models {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::SafetensorsBuilder;
using testing::TempDir;

std::string TinyStoriesDir() {
  return headwise::testing::SharedDir() + "/models/tinystories-656k";
}

// A copy of TinyStories' config.json, edited by `edit`, beside `weights` in `dir`.
void WriteModelDir(const TempDir& dir, const std::string& weights,
                   const std::function<void(json&)>& edit = nullptr) {
  auto config = ReadJsonFile(TinyStoriesDir() + "/config.json");
  REQUIRE(config.ok());
  if (edit) edit(*config);
  testing::WriteFileBytes(dir.File("config.json"), config->dump(2));
  testing::WriteFileBytes(dir.File("model.safetensors"), weights);
}

Status OpenStatus(const std::string& path) {
  auto m = OpenModel(path, LoadFormat::kAuto);
  return m.ok() ? Status::Ok() : m.status();
}

TEST_CASE("safetensors: TinyStories loads with the config's shapes", "[models][safetensors]") {
  auto files = OpenModel(TinyStoriesDir(), LoadFormat::kAuto);
  REQUIRE(files.ok());
  CHECK(files->format == "safetensors");
  CHECK(files->config.vocab_size == 2048);
  CHECK(files->config.tie_word_embeddings);
  auto raw = SafetensorsFile::Open(TinyStoriesDir() + "/model.safetensors");
  REQUIRE(raw.ok());
  const auto expected = ExpectedWeights(files->config);
  CHECK(expected.size() == 1 + 2 * 9 + 1);  // tied: no lm_head among the expected
  for (const WeightSpec& w : expected) {
    INFO(w.name);
    REQUIRE(files->weights->Has(w.name));
    auto t = files->weights->Load(w.name, w.shape);
    REQUIRE(t.ok());
    REQUIRE(t->shape.rank == static_cast<int>(w.shape.size()));
    for (size_t i = 0; i < w.shape.size(); ++i) CHECK(t->shape.dims[i] == w.shape[i]);
    // F32 is aliased in place: the pointer is into the mapping, which the keepalive holds.
    const std::string stored = w.name == "model.embed_tokens.weight" ? "lm_head.weight" : w.name;
    const SafetensorsTensor* st = (*raw)->Find(stored);
    REQUIRE(st != nullptr);
    CHECK(std::memcmp(t->data, st->data, st->num_bytes) == 0);
    CHECK(t->keepalive != nullptr);
  }
  // The file stores only lm_head.weight; the tied embedding is served from it.
  CHECK(files->weights->Has("lm_head.weight"));
  CHECK_FALSE(files->weights->Has("model.layers.2.mlp.up_proj.weight"));
}

TEST_CASE("safetensors: a sharded copy with an index loads the same tensors",
          "[models][safetensors]") {
  TempDir dir;
  auto src = SafetensorsFile::Open(TinyStoriesDir() + "/model.safetensors");
  REQUIRE(src.ok());
  SafetensorsBuilder shard[2];
  json weight_map = json::object();
  int i = 0;
  for (const auto& [name, t] : (*src)->tensors()) {
    const int s = i++ % 2;
    shard[s].Add(name, t.dtype, t.shape,
                 std::string(reinterpret_cast<const char*>(t.data), t.num_bytes));
    weight_map[name] = fmt::format("model-0000{}-of-00002.safetensors", s + 1);
  }
  fs::copy_file(TinyStoriesDir() + "/config.json", dir.File("config.json"));
  testing::WriteFileBytes(dir.File("model-00001-of-00002.safetensors"), shard[0].Build());
  testing::WriteFileBytes(dir.File("model-00002-of-00002.safetensors"), shard[1].Build());
  testing::WriteFileBytes(
      dir.File("model.safetensors.index.json"),
      json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump());
  auto files = OpenModel(dir.path().string(), LoadFormat::kAuto);
  REQUIRE(files.ok());
  for (const WeightSpec& w : ExpectedWeights(files->config)) {
    INFO(w.name);
    auto t = files->weights->Load(w.name, w.shape);
    REQUIRE(t.ok());
    const std::string stored = w.name == "model.embed_tokens.weight" ? "lm_head.weight" : w.name;
    const SafetensorsTensor* st = (*src)->Find(stored);
    CHECK(std::memcmp(t->data, st->data, st->num_bytes) == 0);
  }

  SECTION("an index entry whose shard lacks the tensor") {
    weight_map["model.extra.weight"] = "model-00001-of-00002.safetensors";
    testing::WriteFileBytes(dir.File("model.safetensors.index.json"),
                            json{{"weight_map", weight_map}}.dump());
    Status s = OpenStatus(dir.path().string());
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(s.message(), Catch::Contains("'model.extra.weight'"));
  }
  SECTION("an index naming a missing shard") {
    weight_map["model.norm.weight"] = "model-00003-of-00002.safetensors";
    testing::WriteFileBytes(dir.File("model.safetensors.index.json"),
                            json{{"weight_map", weight_map}}.dump());
    Status s = OpenStatus(dir.path().string());
    CHECK(s.code() == StatusCode::kNotFound);
    CHECK_THAT(s.message(), Catch::Contains("model-00003-of-00002.safetensors"));
  }
  SECTION("an index naming a shard outside the directory") {
    weight_map["model.norm.weight"] = "../elsewhere.safetensors";
    testing::WriteFileBytes(dir.File("model.safetensors.index.json"),
                            json{{"weight_map", weight_map}}.dump());
    CHECK_THAT(OpenStatus(dir.path().string()).message(), Catch::Contains("outside the model"));
  }
  SECTION("a garbled index") {
    testing::WriteFileBytes(dir.File("model.safetensors.index.json"), "{\"weight_map\": {");
    CHECK_THAT(OpenStatus(dir.path().string()).message(),
               Catch::Contains("model.safetensors.index.json: invalid JSON"));
  }
}

TEST_CASE("safetensors: F16 and BF16 convert to f32", "[models][safetensors]") {
  TempDir dir;
  const std::vector<float> values = {0.0f, 1.0f, -2.5f, 0.099975586f, 65504.0f, -0.000061035156f};
  std::string f16, bf16;
  for (float v : values) {
    // Values chosen exactly representable in both formats' reach (f16: bits via the F32->BF16
    // helper would round, so encode f16 by hand from the known bit patterns).
    testing::Append(&bf16, F32ToBF16(v));
  }
  for (uint16_t h : {0x0000, 0x3c00, 0xc100, 0x2e66, 0x7bff, 0x8400}) testing::Append(&f16, h);
  SafetensorsBuilder b;
  b.Add("h", "F16", {2, 3}, f16);
  b.Add("b", "BF16", {6}, bf16);
  testing::WriteFileBytes(dir.File("x.safetensors"), b.Build());
  auto f = SafetensorsFile::Open(dir.File("x.safetensors"));
  REQUIRE(f.ok());
  auto h = (*f)->ToF32(*(*f)->Find("h"));
  REQUIRE(h.ok());
  CHECK(h->shape.rank == 2);
  CHECK(h->shape.dims[0] == 2);
  for (size_t i = 0; i < values.size(); ++i) CHECK(h->data[i] == values[i]);
  auto bt = (*f)->ToF32(*(*f)->Find("b"));
  REQUIRE(bt.ok());
  for (size_t i = 0; i < values.size(); ++i) {
    CHECK(bt->data[i] == BF16ToF32(F32ToBF16(values[i])));
  }
}

// --- bad input ---

TEST_CASE("safetensors bad: missing path", "[models][safetensors][bad]") {
  Status s = OpenStatus("/nonexistent/model-dir");
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK_THAT(s.message(), Catch::Contains("/nonexistent/model-dir"));

  TempDir empty;
  s = OpenStatus(empty.path().string());
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK_THAT(s.message(), Catch::Contains("no config.json"));

  fs::copy_file(TinyStoriesDir() + "/config.json", empty.File("config.json"));
  s = OpenStatus(empty.path().string());
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK_THAT(s.message(), Catch::Contains("no model.safetensors"));
}

TEST_CASE("safetensors bad: header length beyond the file", "[models][safetensors][bad]") {
  TempDir dir;
  std::string bytes = testing::ReadFileBytes(TinyStoriesDir() + "/model.safetensors");
  const uint64_t huge = bytes.size();  // header would need bytes.size() + 8
  std::memcpy(bytes.data(), &huge, 8);
  WriteModelDir(dir, bytes);
  Status s = OpenStatus(dir.path().string());
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("model.safetensors: header length") &&
                              Catch::Contains(fmt::format("beyond file size {}", bytes.size())));

  WriteModelDir(dir, bytes.substr(0, 5));
  CHECK_THAT(OpenStatus(dir.path().string()).message(), Catch::Contains("5 bytes, too short"));
}

TEST_CASE("safetensors bad: deep JSON in the header, config.json and index",
          "[models][safetensors][bad][limits]") {
  // nlohmann copies recursively: 100,000 levels used to overflow the stack. Now each file is
  // refused by the depth pre-scan, naming it.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  TempDir dir;
  std::string header = "{\"__metadata__\": {}, \"deep\": " + deep + "}";
  std::string bytes;
  testing::Append<uint64_t>(&bytes, header.size());
  WriteModelDir(dir, bytes + header);
  Status s = OpenStatus(dir.path().string());
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("model.safetensors header: JSON nested deeper than the "
                                          "limit of 128 levels"));

  const std::string weights = testing::ReadFileBytes(TinyStoriesDir() + "/model.safetensors");
  WriteModelDir(dir, weights);
  testing::WriteFileBytes(dir.File("config.json"), deep);
  s = OpenStatus(dir.path().string());
  CHECK_THAT(s.message(), Catch::Contains("config.json: JSON nested deeper"));

  WriteModelDir(dir, weights);
  testing::WriteFileBytes(dir.File("model.safetensors.index.json"),
                          "{\"weight_map\": " + deep + "}");
  s = OpenStatus(dir.path().string());
  CHECK_THAT(s.message(), Catch::Contains("model.safetensors.index.json: JSON nested deeper"));

  // config.json that is not a regular file is refused by name, not read.
  std::filesystem::remove(dir.File("model.safetensors.index.json"));
  std::filesystem::remove(dir.File("config.json"));
  std::filesystem::create_directory(dir.File("config.json"));
  s = OpenStatus(dir.path().string());
  CHECK_THAT(s.message(), Catch::Contains("config.json: is a directory, not a regular file"));
}

TEST_CASE("safetensors bad: tensor data beyond the file", "[models][safetensors][bad]") {
  TempDir dir;
  const std::string bytes = testing::ReadFileBytes(TinyStoriesDir() + "/model.safetensors");
  WriteModelDir(dir, bytes.substr(0, bytes.size() - 100));
  Status s = OpenStatus(dir.path().string());
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("model.safetensors: tensor '") &&
                              Catch::Contains("data range") && Catch::Contains("truncated"));
}

TEST_CASE("safetensors bad: garbled header JSON", "[models][safetensors][bad]") {
  TempDir dir;
  std::string bytes = testing::ReadFileBytes(TinyStoriesDir() + "/model.safetensors");
  bytes[8 + 20] = '\x01';  // a control character inside the first key
  WriteModelDir(dir, bytes);
  Status s = OpenStatus(dir.path().string());
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("model.safetensors header: invalid JSON"));

  SafetensorsBuilder b;
  b.header() = json::array();
  WriteModelDir(dir, b.Build());
  CHECK_THAT(OpenStatus(dir.path().string()).message(), Catch::Contains("expected an object"));

  SafetensorsBuilder c;
  c.AddF32("model.norm.weight", {4}, {1, 2, 3, 4});
  c.header()["model.norm.weight"]["data_offsets"] = {8, 4};
  WriteModelDir(dir, c.Build());
  CHECK_THAT(OpenStatus(dir.path().string()).message(), Catch::Contains("reversed"));

  c.header()["model.norm.weight"]["data_offsets"] = {0, 12};  // 3 floats for shape [4]
  WriteModelDir(dir, c.Build());
  CHECK_THAT(OpenStatus(dir.path().string()).message(),
             Catch::Contains("'model.norm.weight'") && Catch::Contains("need 16 bytes"));

  c.header()["model.norm.weight"]["shape"] = {-4};
  WriteModelDir(dir, c.Build());
  CHECK_THAT(OpenStatus(dir.path().string()).message(), Catch::Contains("not a non-negative"));
}

TEST_CASE("safetensors bad: unknown architecture", "[models][safetensors][bad]") {
  TempDir dir;
  WriteModelDir(dir, testing::ReadFileBytes(TinyStoriesDir() + "/model.safetensors"),
                [](json& c) { c["architectures"] = {"MambaForCausalLM"}; });
  Status s = OpenStatus(dir.path().string());
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK_THAT(s.message(), Catch::Contains("MambaForCausalLM") && Catch::Contains("config.json"));
}

TEST_CASE("safetensors bad: unsupported dtype I8", "[models][safetensors][bad]") {
  TempDir dir;
  auto src = SafetensorsFile::Open(TinyStoriesDir() + "/model.safetensors");
  REQUIRE(src.ok());
  SafetensorsBuilder b;
  for (const auto& [name, t] : (*src)->tensors()) {
    if (name == "model.norm.weight") {
      b.Add(name, "I8", t.shape, std::string(static_cast<size_t>(t.num_elements), '\x01'));
    } else {
      b.Add(name, t.dtype, t.shape,
            std::string(reinterpret_cast<const char*>(t.data), t.num_bytes));
    }
  }
  WriteModelDir(dir, b.Build());
  Status s = OpenStatus(dir.path().string());
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK_THAT(s.message(), Catch::Contains("'model.norm.weight' has dtype I8"));

  // The same holds for a dtype no one has heard of.
  SafetensorsBuilder x;
  x.Add("w", "Q9_Z", {2}, "ab");
  testing::WriteFileBytes(dir.File("x.safetensors"), x.Build());
  auto f = SafetensorsFile::Open(dir.File("x.safetensors"));
  REQUIRE(f.ok());
  auto t = (*f)->ToF32(*(*f)->Find("w"));
  REQUIRE_FALSE(t.ok());
  CHECK(t.status().code() == StatusCode::kUnimplemented);
  CHECK_THAT(t.status().message(), Catch::Contains("dtype Q9_Z"));
}

TEST_CASE("safetensors bad: tensor shape contradicts the config", "[models][safetensors][bad]") {
  TempDir dir;
  WriteModelDir(dir, testing::ReadFileBytes(TinyStoriesDir() + "/model.safetensors"),
                [](json& c) { c["intermediate_size"] = 512; });
  Status s = OpenStatus(dir.path().string());
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("'model.layers.0.mlp.gate_proj.weight' has shape "
                                          "[384, 128], expected [512, 128]"));

  // Load() itself refuses a shape other than the file's.
  auto files = OpenModel(TinyStoriesDir(), LoadFormat::kAuto);
  REQUIRE(files.ok());
  auto t = files->weights->Load("model.norm.weight", {64});
  REQUIRE_FALSE(t.ok());
  CHECK_THAT(t.status().message(),
             Catch::Contains("'model.norm.weight' has shape [128], expected [64]"));
}

TEST_CASE("safetensors bad: a missing tensor is named", "[models][safetensors][bad]") {
  TempDir dir;
  auto src = SafetensorsFile::Open(TinyStoriesDir() + "/model.safetensors");
  REQUIRE(src.ok());
  SafetensorsBuilder b;
  for (const auto& [name, t] : (*src)->tensors()) {
    if (name == "model.layers.1.self_attn.v_proj.weight") continue;
    b.Add(name, t.dtype, t.shape, std::string(reinterpret_cast<const char*>(t.data), t.num_bytes));
  }
  WriteModelDir(dir, b.Build());
  Status s = OpenStatus(dir.path().string());
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK_THAT(s.message(), Catch::Contains("'model.layers.1.self_attn.v_proj.weight' not found"));
}

TEST_CASE("safetensors bad: garbled config.json", "[models][safetensors][bad]") {
  TempDir dir;
  WriteModelDir(dir, testing::ReadFileBytes(TinyStoriesDir() + "/model.safetensors"));
  testing::WriteFileBytes(dir.File("config.json"), "{\"architectures\": [\"LlamaForCausalLM\",");
  Status s = OpenStatus(dir.path().string());
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("config.json: invalid JSON"));
}

}  // namespace
}  // namespace headwise::models

namespace headwise::models {
namespace {

// The seeded random checkpoints the golden-logit tests use (tests/golden/models): Llama with
// llama3 rope, sharded Llama, Mistral MQA in f16, Qwen2 with biases in bf16.
TEST_CASE("safetensors: golden checkpoints open and every weight loads", "[models][safetensors]") {
  struct Case {
    const char* dir;
    Architecture arch;
    bool tied, bias;
    RopeScaling::Type rope;
    int kv_heads;
  };
  for (const Case& c :
       {Case{"llama-gqa-rope3", Architecture::kLlama, false, false, RopeScaling::Type::kLlama3, 2},
        Case{"llama-sharded", Architecture::kLlama, true, false, RopeScaling::Type::kNone, 4},
        Case{"mistral-mqa-f16", Architecture::kMistral, false, false, RopeScaling::Type::kNone, 1},
        Case{"qwen2-bias-bf16", Architecture::kQwen2, true, true, RopeScaling::Type::kNone, 2}}) {
    INFO(c.dir);
    auto files =
        OpenModel(headwise::testing::SourcePath(std::string("tests/golden/models/") + c.dir),
                  LoadFormat::kAuto);
    REQUIRE(files.ok());
    CHECK(files->config.architecture == c.arch);
    CHECK(files->config.tie_word_embeddings == c.tied);
    CHECK(files->config.attention_bias == c.bias);
    CHECK(files->config.rope_scaling.type == c.rope);
    CHECK(files->config.num_kv_heads == c.kv_heads);
    for (const WeightSpec& w : ExpectedWeights(files->config)) {
      INFO(w.name);
      auto t = files->weights->Load(w.name, w.shape);
      REQUIRE(t.ok());
      int64_t finite = 0;
      for (int64_t i = 0; i < t->shape.numel(); ++i) finite += std::isfinite(t->data[i]);
      CHECK(finite == t->shape.numel());
    }
  }
}

}  // namespace
}  // namespace headwise::models

namespace headwise::models {
namespace {

TEST_CASE("safetensors bad: random header corruption is handled", "[models][safetensors][bad]") {
  TempDir dir;
  const std::string full = testing::ReadFileBytes(TinyStoriesDir() + "/model.safetensors");
  uint64_t header_len = 0;
  std::memcpy(&header_len, full.data(), 8);
  std::mt19937 rng(321);
  int opened = 0;
  for (int iter = 0; iter < 300; ++iter) {
    std::string bytes = full;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      const size_t at = rng() % (8 + header_len);
      bytes[at] = static_cast<char>(rng() % 2 ? "0123456789\"[]{},:"[rng() % 17] : rng());
    }
    if (rng() % 4 == 0) bytes.resize(rng() % bytes.size());
    WriteModelDir(dir, bytes);
    auto files = OpenModel(dir.path().string(), LoadFormat::kAuto);
    if (!files.ok()) {
      CHECK_FALSE(files.status().message().empty());
      continue;
    }
    ++opened;
    for (const WeightSpec& w : ExpectedWeights(files->config)) {
      CHECK(files->weights->Load(w.name, w.shape).ok());
    }
  }
  WARN(opened << " of 300 corrupted files still opened");
}

}  // namespace
}  // namespace headwise::models
