// GGUF: the reader on the shared stories260K file, GGUF weights as HF weights (names, dims,
// rotary un-permutation), and garbled files.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "models/gguf_file.h"
#include "models/gguf_quants.h"
#include "models/gguf_weights.h"
#include "models/weight_source.h"
#include "tests/models/model_files_util.h"
#include "tests/test_util.h"

namespace headwise::models {
namespace {

using testing::GgufBuilder;
using testing::TempDir;

std::string Stories260k() {
  return headwise::testing::SharedDir() + "/models/stories260k-gguf/stories260K.gguf";
}

// convert_hf_to_gguf.py's LlamaModel.permute, transcribed index by index from its numpy:
//   w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
// Element [h, a, b, c] of the swapped view (shape [n_head, half, 2, cols]) is element
// [h, b, a, c] of the reshaped input (shape [n_head, 2, half, cols]).
std::vector<float> PythonPermute(const std::vector<float>& w, int64_t rows, int64_t cols,
                                 int n_head) {
  const int64_t half = rows / n_head / 2;
  std::vector<float> out(w.size());
  int64_t flat = 0;  // row-major walk over the swapped view = the output's memory order
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t a = 0; a < half; ++a) {
      for (int64_t b = 0; b < 2; ++b) {
        for (int64_t c = 0; c < cols; ++c) {
          out[flat++] = w[((h * 2 + b) * half + a) * cols + c];
        }
      }
    }
  }
  return out;
}

std::vector<float> RandomVector(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST_CASE("gguf: stories260K metadata", "[models][gguf]") {
  auto f = GgufFile::Open(Stories260k());
  REQUIRE(f.ok());
  const GgufFile& g = **f;
  CHECK(g.version() == 3);
  CHECK(g.alignment() == 32);
  CHECK(g.GetString("general.architecture").value() == "llama");
  CHECK(g.GetInt("llama.block_count").value() == 5);
  CHECK(g.GetInt("tokenizer.ggml.padding_token_id").value() == 4294967295);
  CHECK(g.GetFloat("llama.attention.layer_norm_rms_epsilon").value() == Approx(1e-5));
  CHECK(g.GetFloat("llama.block_count").value() == 5.0);  // ints widen to float
  CHECK(g.GetString("tokenizer.ggml.model").value() == "llama");
  auto tokens = g.GetStringArray("tokenizer.ggml.tokens");
  REQUIRE(tokens.ok());
  CHECK(tokens->size() == 512);
  CHECK((*tokens)[0] == "<unk>");
  CHECK(g.GetFloatArray("tokenizer.ggml.scores")->size() == 512);
  CHECK(g.GetIntArray("tokenizer.ggml.token_type")->size() == 512);
  CHECK(g.GetArraySize("tokenizer.ggml.tokens").value() == 512);
  CHECK(g.Has("tokenizer.ggml.bos_token_id"));
  CHECK_FALSE(g.Has("tokenizer.chat_template"));

  auto missing = g.GetString("tokenizer.chat_template");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK_THAT(missing.status().message(), Catch::Contains("'tokenizer.chat_template'"));
  auto wrong = g.GetInt("general.architecture");
  REQUIRE_FALSE(wrong.ok());
  CHECK_THAT(wrong.status().message(),
             Catch::Contains("'general.architecture' is string, expected an integer"));
  CHECK_FALSE(g.GetBool("llama.block_count").ok());
  CHECK_FALSE(g.GetStringArray("tokenizer.ggml.scores").ok());

  REQUIRE(g.tensors().size() == 2 + 1 + 5 * 9);
  const GgufTensorInfo* q = g.FindTensor("blk.0.attn_q.weight");
  REQUIRE(q != nullptr);
  CHECK(q->dims == std::vector<int64_t>{64, 64});
  CHECK(q->type == static_cast<uint32_t>(GgmlType::kF32));
  CHECK(q->num_bytes == 64 * 64 * 4);
}

TEST_CASE("gguf: stories260K config from metadata", "[models][gguf][config]") {
  auto f = GgufFile::Open(Stories260k());
  REQUIRE(f.ok());
  auto c = ParseGgufConfig(**f);
  REQUIRE(c.ok());
  CHECK(c->architecture == Architecture::kLlama);
  CHECK(c->architecture_name == "llama");
  CHECK(c->vocab_size == 512);
  CHECK(c->hidden_size == 64);
  CHECK(c->intermediate_size == 172);
  CHECK(c->num_layers == 5);
  CHECK(c->num_heads == 8);
  CHECK(c->num_kv_heads == 4);
  CHECK(c->head_dim == 8);
  CHECK(c->max_position_embeddings == 2048);
  CHECK(c->rms_norm_eps == Approx(1e-5));
  CHECK(c->rope_theta == 10000.0);
  CHECK_FALSE(c->tie_word_embeddings);  // output.weight is present
  CHECK_FALSE(c->attention_bias);
  CHECK(c->bos_token_id == 1);
  CHECK(c->eos_token_ids == std::vector<int>{2});
}

TEST_CASE("gguf: every stories260K weight loads in HF layout", "[models][gguf]") {
  auto files = OpenModel(Stories260k(), LoadFormat::kAuto);
  REQUIRE(files.ok());
  CHECK(files->format == "gguf");
  REQUIRE(files->gguf != nullptr);
  const GgufFile& g = *files->gguf;
  for (const WeightSpec& w : ExpectedWeights(files->config)) {
    INFO(w.name);
    REQUIRE(files->weights->Has(w.name));
    auto t = files->weights->Load(w.name, w.shape);
    REQUIRE(t.ok());
    REQUIRE(t->shape.rank == static_cast<int>(w.shape.size()));
    for (size_t i = 0; i < w.shape.size(); ++i) CHECK(t->shape.dims[i] == w.shape[i]);
    const GgufTensorInfo* info = g.FindTensor(*HfToGgufName(w.name));
    REQUIRE(info != nullptr);
    const auto* raw = reinterpret_cast<const float*>(info->data);
    const bool rotary =
        w.name.find("q_proj") != std::string::npos || w.name.find("k_proj") != std::string::npos;
    if (!rotary) {
      CHECK(t->data == raw);  // F32: zero-copy alias of the mapping
      continue;
    }
    // HF row h*D + s*D/2 + j came from GGUF row h*D + 2j + s.
    const int64_t rows = w.shape[0], cols = w.shape[1], d = files->config.head_dim;
    int mismatches = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t h = r / d, s = (r % d) / (d / 2), j = r % (d / 2);
      const int64_t src = h * d + 2 * j + s;
      if (std::memcmp(t->data + r * cols, raw + src * cols, cols * sizeof(float)) != 0) {
        ++mismatches;
      }
    }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("gguf: un-permutation is the exact inverse of convert_hf_to_gguf's permute",
          "[models][gguf][rotary]") {
  struct Case {
    int64_t rows, cols;
    int heads;
  };
  // Q of 8 heads of 16, K of 2 KV heads of 16, a bias (cols 1), Llama-3-like head_dim 128.
  for (const Case& c : {Case{128, 24, 8}, Case{32, 24, 2}, Case{128, 1, 8}, Case{512, 3, 4}}) {
    INFO(c.rows << "x" << c.cols << " heads " << c.heads);
    const std::vector<float> hf = RandomVector(static_cast<size_t>(c.rows * c.cols), 42);
    const std::vector<float> gguf = PythonPermute(hf, c.rows, c.cols, c.heads);
    REQUIRE(gguf != hf);
    std::vector<float> back(hf.size());
    UnpermuteRotaryRows(gguf.data(), back.data(), c.rows, c.cols, c.heads);
    CHECK(back == hf);
    std::vector<float> forward(hf.size());
    PermuteRotaryRows(hf.data(), forward.data(), c.rows, c.cols, c.heads);
    CHECK(forward == gguf);
  }
}

TEST_CASE("gguf: HF to GGUF tensor names", "[models][gguf]") {
  CHECK(HfToGgufName("model.embed_tokens.weight") == "token_embd.weight");
  CHECK(HfToGgufName("model.norm.weight") == "output_norm.weight");
  CHECK(HfToGgufName("lm_head.weight") == "output.weight");
  CHECK(HfToGgufName("model.layers.12.self_attn.q_proj.weight") == "blk.12.attn_q.weight");
  CHECK(HfToGgufName("model.layers.0.self_attn.k_proj.bias") == "blk.0.attn_k.bias");
  CHECK(HfToGgufName("model.layers.1.self_attn.v_proj.weight") == "blk.1.attn_v.weight");
  CHECK(HfToGgufName("model.layers.1.self_attn.o_proj.weight") == "blk.1.attn_output.weight");
  CHECK(HfToGgufName("model.layers.2.mlp.gate_proj.weight") == "blk.2.ffn_gate.weight");
  CHECK(HfToGgufName("model.layers.2.mlp.up_proj.weight") == "blk.2.ffn_up.weight");
  CHECK(HfToGgufName("model.layers.2.mlp.down_proj.weight") == "blk.2.ffn_down.weight");
  CHECK(HfToGgufName("model.layers.3.input_layernorm.weight") == "blk.3.attn_norm.weight");
  CHECK(HfToGgufName("model.layers.3.post_attention_layernorm.weight") == "blk.3.ffn_norm.weight");
  CHECK_FALSE(HfToGgufName("model.layers.x.mlp.up_proj.weight"));
  CHECK_FALSE(HfToGgufName("model.layers.1.mlp.up_proj.scale"));
  CHECK_FALSE(HfToGgufName("model.rotary_emb.inv_freq"));
}

// A tiny Llama GGUF written from scratch: 1 layer, hidden 32, 4 heads of 8, 2 KV heads,
// vocabulary 16, tied. Q/K stored permuted as convert_hf_to_gguf.py does; Q in F16.
struct TinyGguf {
  std::map<std::string, std::vector<float>> hf;  // the HF-layout values each tensor must load as
  GgufBuilder builder;

  explicit TinyGguf(const std::string& arch = "llama", uint32_t q_type = 1,
                    float rope_theta = 10000.0f) {
    builder.AddString("general.architecture", arch);
    builder.AddU32(arch + ".context_length", 128);
    builder.AddU32(arch + ".embedding_length", 32);
    builder.AddU32(arch + ".block_count", 1);
    builder.AddU32(arch + ".feed_forward_length", 64);
    builder.AddU32(arch + ".attention.head_count", 4);
    builder.AddU32(arch + ".attention.head_count_kv", 2);
    builder.AddF32(arch + ".attention.layer_norm_rms_epsilon", 1e-5f);
    builder.AddF32(arch + ".rope.freq_base", rope_theta);
    builder.AddStringArray("tokenizer.ggml.tokens", std::vector<std::string>(16, "t"));
    uint32_t seed = 1;
    auto add = [&](const std::string& hf_name, const std::string& gguf_name, int64_t rows,
                   int64_t cols, int permute_heads, uint32_t type) {
      std::vector<float> v = RandomVector(static_cast<size_t>(rows * cols), seed++);
      if (type == 1) {  // F16: keep values exactly representable
        for (float& x : v) x = std::round(x * 64) / 64;
      }
      hf[hf_name] = v;
      if (permute_heads > 0) v = PythonPermute(v, rows, cols, permute_heads);
      std::vector<uint64_t> dims = cols > 1 ? std::vector<uint64_t>{uint64_t(cols), uint64_t(rows)}
                                            : std::vector<uint64_t>{uint64_t(rows)};
      std::string bytes;
      if (type == 1) {
        for (float x : v) {
          // float -> half for values k/64 with |k| < 2^10: exact.
          uint32_t bits;
          std::memcpy(&bits, &x, 4);
          const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
          uint16_t h = sign;
          if (x != 0) {
            const int exp = static_cast<int>((bits >> 23) & 0xff) - 127 + 15;
            h = static_cast<uint16_t>(sign | (exp << 10) | ((bits >> 13) & 0x3ff));
          }
          testing::Append(&bytes, h);
        }
      } else {
        bytes = testing::FloatBytes(v);
      }
      builder.AddTensor(gguf_name, dims, type, bytes);
    };
    const bool llama = arch == "llama";
    add("model.embed_tokens.weight", "token_embd.weight", 16, 32, 0, 0);
    add("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight", 32, 1, 0, 0);
    add("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", 32, 32, llama ? 4 : 0,
        q_type);
    add("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", 16, 32, llama ? 2 : 0, 0);
    add("model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight", 16, 32, 0, 0);
    add("model.layers.0.self_attn.q_proj.bias", "blk.0.attn_q.bias", 32, 1, llama ? 4 : 0, 0);
    add("model.layers.0.self_attn.k_proj.bias", "blk.0.attn_k.bias", 16, 1, llama ? 2 : 0, 0);
    add("model.layers.0.self_attn.v_proj.bias", "blk.0.attn_v.bias", 16, 1, 0, 0);
    add("model.layers.0.self_attn.o_proj.weight", "blk.0.attn_output.weight", 32, 32, 0, 0);
    add("model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight", 32, 1, 0, 0);
    add("model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight", 64, 32, 0, 0);
    add("model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight", 64, 32, 0, 0);
    add("model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight", 32, 64, 0, 0);
    add("model.norm.weight", "output_norm.weight", 32, 1, 0, 0);
  }
};

void CheckTinyGgufRoundTrip(const std::string& arch) {
  TempDir dir;
  TinyGguf tiny(arch);
  const std::string path = dir.File("tiny.gguf");
  testing::WriteFileBytes(path, tiny.builder.Build());
  auto files = OpenModel(path, LoadFormat::kAuto);
  REQUIRE(files.ok());
  const ModelConfig& c = files->config;
  CHECK(c.tie_word_embeddings);
  CHECK(c.attention_bias);
  CHECK(c.vocab_size == 16);
  CHECK(c.head_dim == 8);
  for (const WeightSpec& w : ExpectedWeights(c)) {
    INFO(w.name);
    auto t = files->weights->Load(w.name, w.shape);
    REQUIRE(t.ok());
    const std::vector<float>& want = tiny.hf.at(w.name);
    CHECK(std::vector<float>(t->data, t->data + want.size()) == want);
  }
  // Tied: the output projection is served by the embedding.
  REQUIRE(files->weights->Has("lm_head.weight"));
  auto head = files->weights->Load("lm_head.weight", {16, 32});
  REQUIRE(head.ok());
  CHECK(std::vector<float>(head->data, head->data + 16 * 32) ==
        tiny.hf.at("model.embed_tokens.weight"));
}

TEST_CASE("gguf: llama file with permuted Q/K (F16 and F32) and biases loads as HF",
          "[models][gguf][rotary]") {
  CheckTinyGgufRoundTrip("llama");
}

TEST_CASE("gguf: qwen2 file is not un-permuted", "[models][gguf]") {
  CheckTinyGgufRoundTrip("qwen2");
}

// convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors: per-frequency divisors for llama3
// rope scaling, as Llama-3.1/3.2 GGUF files carry them.
std::vector<float> Llama3RopeFactors(double theta, int head_dim, double factor) {
  const double low_freq_factor = 1, high_freq_factor = 4, old_context_len = 8192;
  const double low_freq_wavelen = old_context_len / low_freq_factor;
  const double high_freq_wavelen = old_context_len / high_freq_factor;
  std::vector<float> factors;
  for (int i = 0; i < head_dim; i += 2) {
    const float freq = static_cast<float>(1.0 / std::pow(theta, static_cast<double>(i) / head_dim));
    const double wavelen = 2 * M_PI / freq;
    if (wavelen < high_freq_wavelen) {
      factors.push_back(1);
    } else if (wavelen > low_freq_wavelen) {
      factors.push_back(static_cast<float>(factor));
    } else {
      const double smooth =
          (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      factors.push_back(static_cast<float>(1 / ((1 - smooth) / factor + smooth)));
    }
  }
  return factors;
}

TEST_CASE("gguf: llama3 rope scaling recovered from rope_freqs.weight", "[models][gguf][rope]") {
  // theta 4e5 with head_dim 8 puts frequencies 0 and 1 in llama3's high band (unchanged),
  // 2 in the medium band (smoothed: wavelength ~3974) and 3 in the low band (divided).
  for (double factor : {8.0, 32.0}) {
    INFO("factor " << factor);
    TempDir dir;
    TinyGguf tiny("llama", 1, 4e5f);
    const std::vector<float> rope = Llama3RopeFactors(4e5f, 8, factor);
    REQUIRE(rope[2] > 1);
    REQUIRE(rope[2] < factor);
    tiny.builder.AddTensor("rope_freqs.weight", {4}, 0, testing::FloatBytes(rope));
    testing::WriteFileBytes(dir.File("r.gguf"), tiny.builder.Build());
    auto files = OpenModel(dir.File("r.gguf"), LoadFormat::kAuto);
    REQUIRE(files.ok());
    const RopeScaling& rs = files->config.rope_scaling;
    CHECK(rs.type == RopeScaling::Type::kLlama3);
    CHECK(rs.factor == factor);
    CHECK(rs.original_max_position_embeddings == 8192);
    ModelConfig plain = files->config;
    plain.rope_scaling = RopeScaling{};
    const std::vector<float> f0 = RopeInverseFrequencies(plain);
    const std::vector<float> f1 = RopeInverseFrequencies(files->config);
    for (int i = 0; i < 4; ++i) CHECK(f1[i] == Approx(f0[i] / rope[i]).epsilon(1e-6));
  }

  TempDir dir;
  TinyGguf tiny("llama", 1, 4e5f);
  tiny.builder.AddTensor("rope_freqs.weight", {4}, 0, testing::FloatBytes({1, 2, 3, 4}));
  testing::WriteFileBytes(dir.File("odd.gguf"), tiny.builder.Build());
  auto files = OpenModel(dir.File("odd.gguf"), LoadFormat::kAuto);
  REQUIRE_FALSE(files.ok());
  CHECK(files.status().code() == StatusCode::kUnimplemented);
  CHECK_THAT(files.status().message(), Catch::Contains("rope_freqs.weight"));
}

// --- bad input ---

Status OpenStatus(const std::string& path) {
  auto f = GgufFile::Open(path);
  return f.ok() ? Status::Ok() : f.status();
}

std::string PatchedStories(size_t offset, const void* bytes, size_t n) {
  std::string data = testing::ReadFileBytes(Stories260k());
  REQUIRE(offset + n <= data.size());
  std::memcpy(data.data() + offset, bytes, n);
  return data;
}

TEST_CASE("gguf bad: missing path", "[models][gguf][bad]") {
  Status s = OpenStatus("/nonexistent/model.gguf");
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK_THAT(s.message(), Catch::Contains("/nonexistent/model.gguf"));
  auto m = OpenModel("/nonexistent/model.gguf", LoadFormat::kAuto);
  REQUIRE_FALSE(m.ok());
  CHECK(m.status().code() == StatusCode::kNotFound);
  CHECK_THAT(m.status().message(), Catch::Contains("/nonexistent/model.gguf"));
}

TEST_CASE("gguf bad: truncated file", "[models][gguf][bad]") {
  TempDir dir;
  const std::string full = testing::ReadFileBytes(Stories260k());
  const std::string path = dir.File("cut.gguf");
  struct Cut {
    size_t size;
    const char* expect;
  };
  // Inside the magic, the counts, a key, the token array, the tensor infos, the data.
  for (const Cut& cut :
       {Cut{3, "too short for the magic"}, Cut{12, "truncated"}, Cut{40, "truncated"},
        Cut{2000, "truncated"}, Cut{13000, "truncated"}, Cut{full.size() - 1, "beyond file size"},
        Cut{full.size() / 2, "beyond file size"}}) {
    INFO("cut at " << cut.size);
    testing::WriteFileBytes(path, full.substr(0, cut.size));
    Status s = OpenStatus(path);
    REQUIRE_FALSE(s.ok());
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(s.message(), Catch::Contains(path) && Catch::Contains(cut.expect));
  }
}

TEST_CASE("gguf bad: bad magic", "[models][gguf][bad]") {
  TempDir dir;
  testing::WriteFileBytes(dir.File("m.gguf"), PatchedStories(0, "GGML", 4));
  Status s = OpenStatus(dir.File("m.gguf"));
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("bad magic"));
  // OpenModel recognizes .gguf by extension and reports the same.
  auto m = OpenModel(dir.File("m.gguf"), LoadFormat::kAuto);
  REQUIRE_FALSE(m.ok());
  CHECK_THAT(m.status().message(), Catch::Contains("bad magic"));
}

TEST_CASE("gguf bad: wrong version", "[models][gguf][bad]") {
  TempDir dir;
  const uint32_t version = 99;
  testing::WriteFileBytes(dir.File("v.gguf"), PatchedStories(4, &version, 4));
  Status s = OpenStatus(dir.File("v.gguf"));
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK_THAT(s.message(), Catch::Contains("unsupported GGUF version 99"));
}

TEST_CASE("gguf bad: absurd tensor and key/value counts", "[models][gguf][bad]") {
  TempDir dir;
  const uint64_t huge = uint64_t{1} << 60;
  testing::WriteFileBytes(dir.File("t.gguf"), PatchedStories(8, &huge, 8));
  Status s = OpenStatus(dir.File("t.gguf"));
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("tensor count 1152921504606846976 is impossible"));

  testing::WriteFileBytes(dir.File("k.gguf"), PatchedStories(16, &huge, 8));
  s = OpenStatus(dir.File("k.gguf"));
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("key/value count 1152921504606846976 is impossible"));
}

TEST_CASE("gguf bad: absurd string length", "[models][gguf][bad]") {
  TempDir dir;
  const uint64_t huge = ~uint64_t{0} - 3;  // would wrap a naive pos + len check
  testing::WriteFileBytes(dir.File("s.gguf"), PatchedStories(24, &huge, 8));
  Status s = OpenStatus(dir.File("s.gguf"));
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("metadata key #0") && Catch::Contains("past the end"));
}

TEST_CASE("gguf bad: absurd array length and unknown value type", "[models][gguf][bad]") {
  TempDir dir;
  {
    GgufBuilder b;
    b.AddStringArray("tokenizer.ggml.tokens", {"a", "b"});
    std::string bytes = b.Build();
    // key: u64 len + 21 chars, u32 type, u32 element type, then the u64 count.
    const size_t count_at = 24 + 8 + 21 + 4 + 4;
    const uint64_t huge = uint64_t{1} << 62;
    std::memcpy(bytes.data() + count_at, &huge, 8);
    testing::WriteFileBytes(dir.File("a.gguf"), bytes);
    Status s = OpenStatus(dir.File("a.gguf"));
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(s.message(),
               Catch::Contains("tokenizer.ggml.tokens") && Catch::Contains("does not fit"));
  }
  {
    GgufBuilder b;
    b.AddU32("general.alignment", 32);
    std::string bytes = b.Build();
    const uint32_t bad_type = 77;
    std::memcpy(bytes.data() + 24 + 8 + 17, &bad_type, 4);
    testing::WriteFileBytes(dir.File("u.gguf"), bytes);
    Status s = OpenStatus(dir.File("u.gguf"));
    CHECK_THAT(s.message(), Catch::Contains("'general.alignment' has unknown value type 77"));
  }
}

TEST_CASE("gguf bad: arrays nested 100,000 deep are refused, not recursed into",
          "[models][gguf][bad][limits]") {
  // A guard (this already held): the reader's recursion stops at 4 levels.
  std::string bytes = "GGUF";
  testing::Append<uint32_t>(&bytes, 3);
  testing::Append<uint64_t>(&bytes, 0);  // tensors
  testing::Append<uint64_t>(&bytes, 1);  // key/values
  const std::string key = "general.deep";
  testing::Append<uint64_t>(&bytes, key.size());
  bytes += key;
  testing::Append<uint32_t>(&bytes, 9);  // array
  for (int i = 0; i < 100000; ++i) {
    testing::Append<uint32_t>(&bytes, 9);  // of arrays
    testing::Append<uint64_t>(&bytes, 1);
  }
  testing::Append<uint32_t>(&bytes, 4);
  testing::Append<uint64_t>(&bytes, 0);
  TempDir dir;
  testing::WriteFileBytes(dir.File("deep.gguf"), bytes);
  Status s = OpenStatus(dir.File("deep.gguf"));
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("'general.deep': arrays nested deeper than 4"));
}

TEST_CASE("gguf bad: tensor data beyond the file, too many dims, bad alignment",
          "[models][gguf][bad]") {
  TempDir dir;
  {
    GgufBuilder b;
    b.AddTensor("w", {1u << 20, 1u << 20}, 0, "");  // 4 TiB claimed, none present
    testing::WriteFileBytes(dir.File("big.gguf"), b.Build());
    Status s = OpenStatus(dir.File("big.gguf"));
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(s.message(),
               Catch::Contains("tensor 'w' data range") && Catch::Contains("beyond file size"));
  }
  {
    GgufBuilder b;
    b.AddTensor("w", {1, 1, 1, 1, 1}, 0, "abcd");
    testing::WriteFileBytes(dir.File("dims.gguf"), b.Build());
    CHECK_THAT(OpenStatus(dir.File("dims.gguf")).message(),
               Catch::Contains("tensor 'w' has 5 dimensions"));
  }
  {
    GgufBuilder b;
    b.AddTensor("w", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, "");
    testing::WriteFileBytes(dir.File("ovf.gguf"), b.Build());
    CHECK_THAT(OpenStatus(dir.File("ovf.gguf")).message(),
               Catch::Contains("tensor 'w' element count overflows"));
  }
  {
    GgufBuilder b;
    b.AddU32("general.alignment", 3);
    testing::WriteFileBytes(dir.File("al.gguf"), b.Build());
    CHECK_THAT(OpenStatus(dir.File("al.gguf")).message(),
               Catch::Contains("general.alignment must be a positive power of two"));
  }
  {
    GgufBuilder b;
    b.AddTensor("w", {33}, 2, std::string(18, '\0'));  // Q4_0 rows must be multiples of 32
    testing::WriteFileBytes(dir.File("blk.gguf"), b.Build());
    CHECK_THAT(OpenStatus(dir.File("blk.gguf")).message(),
               Catch::Contains("tensor 'w' of type Q4_0 has rows of 33 elements"));
  }
}

TEST_CASE("gguf bad: unknown ggml tensor type 99", "[models][gguf][bad]") {
  TempDir dir;
  TinyGguf tiny("llama", /*q_type=*/99);
  testing::WriteFileBytes(dir.File("t99.gguf"), tiny.builder.Build());
  // The metadata stays readable (the tokenizer may still want it)...
  auto f = GgufFile::Open(dir.File("t99.gguf"));
  REQUIRE(f.ok());
  CHECK((*f)->FindTensor("blk.0.attn_q.weight")->data == nullptr);
  // ...but the model does not open.
  auto m = OpenModel(dir.File("t99.gguf"), LoadFormat::kAuto);
  REQUIRE_FALSE(m.ok());
  CHECK(m.status().code() == StatusCode::kUnimplemented);
  CHECK_THAT(m.status().message(),
             Catch::Contains("blk.0.attn_q.weight") && Catch::Contains("ggml type 99 (unknown)"));
}

TEST_CASE("gguf bad: unsupported but known ggml type is named", "[models][gguf][bad]") {
  TempDir dir;
  GgufBuilder b;
  b.AddTensor("w", {256}, 16, std::string(66, '\0'));  // IQ2_XXS: one block
  testing::WriteFileBytes(dir.File("iq.gguf"), b.Build());
  auto f = GgufFile::Open(dir.File("iq.gguf"));
  REQUIRE(f.ok());
  std::vector<float> out(256);
  const GgufTensorInfo& t = (*f)->tensors()[0];
  Status s = DequantizeGgml(t.type, t.data, t.num_bytes, t.num_elements, out.data());
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK_THAT(s.message(), Catch::Contains("IQ2_XXS"));
}

TEST_CASE("gguf bad: unknown architecture", "[models][gguf][bad]") {
  TempDir dir;
  TinyGguf tiny("gpt2");
  testing::WriteFileBytes(dir.File("gpt2.gguf"), tiny.builder.Build());
  auto m = OpenModel(dir.File("gpt2.gguf"), LoadFormat::kAuto);
  REQUIRE_FALSE(m.ok());
  CHECK(m.status().code() == StatusCode::kUnimplemented);
  CHECK_THAT(m.status().message(), Catch::Contains("architecture 'gpt2'"));
}

TEST_CASE("gguf bad: tensor shape contradicts the metadata", "[models][gguf][bad]") {
  TempDir dir;
  TinyGguf tiny;
  tiny.builder.AddU32("llama.feed_forward_length", 48);  // duplicate key: rejected
  testing::WriteFileBytes(dir.File("dup.gguf"), tiny.builder.Build());
  CHECK_THAT(OpenStatus(dir.File("dup.gguf")).message(),
             Catch::Contains("duplicate metadata key 'llama.feed_forward_length'"));

  // stories260K with feed_forward_length 172 -> 173 (the u32 value right after its key).
  const std::string full = testing::ReadFileBytes(Stories260k());
  const std::string key = "llama.feed_forward_length";
  const size_t at = full.find(key);
  REQUIRE(at != std::string::npos);
  const uint32_t ffn = 173;
  testing::WriteFileBytes(dir.File("ffn.gguf"), PatchedStories(at + key.size() + 4, &ffn, 4));
  auto m = OpenModel(dir.File("ffn.gguf"), LoadFormat::kAuto);
  REQUIRE_FALSE(m.ok());
  CHECK(m.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(m.status().message(), Catch::Contains("model.layers.0.mlp.gate_proj.weight") &&
                                       Catch::Contains("[172, 64]") &&
                                       Catch::Contains("[173, 64]"));
}

}  // namespace
}  // namespace headwise::models

namespace headwise::models {
namespace {

// Random corruption of the header region (key/values and tensor infos): whatever the reader
// makes of it, it must return a status or a model whose every weight loads, never crash or
// read out of bounds (run under ASan to see the latter).
TEST_CASE("gguf bad: random header corruption is handled", "[models][gguf][bad]") {
  TempDir dir;
  const std::string full = testing::ReadFileBytes(Stories260k());
  std::mt19937 rng(123);
  const std::string path = dir.File("fuzz.gguf");
  int opened = 0;
  for (int iter = 0; iter < 300; ++iter) {
    std::string bytes = full;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      const size_t at = rng() % 14176;  // the header ends where the data section starts
      bytes[at] = static_cast<char>(rng() % 3 == 0 ? 0xff : rng());
    }
    if (rng() % 4 == 0) bytes.resize(rng() % bytes.size());
    testing::WriteFileBytes(path, bytes);
    auto files = OpenModel(path, LoadFormat::kAuto);
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
