// A GGUF file through GgufFile::Open, then what the model loader reads from it: every
// metadata value through the typed getters, the model config (ParseGgufConfig), the embedded
// vocabulary and tokenizer (engine::LoadTokenizerFor), and each tensor's data dequantized.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/model_loader.h"
#include "models/gguf_file.h"
#include "models/gguf_quants.h"
#include "models/model_config.h"
#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace headwise::models;

void ReadMetadata(const GgufFile& gguf) {
  for (const auto& [key, value] : gguf.metadata()) {
    if (gguf.Find(key) != &value) __builtin_trap();
    (void)gguf.GetString(key);
    (void)gguf.GetInt(key);
    (void)gguf.GetFloat(key);
    (void)gguf.GetBool(key);
    (void)gguf.GetStringArray(key);
    (void)gguf.GetFloatArray(key);
    (void)gguf.GetIntArray(key);
    (void)gguf.GetArraySize(key);
  }
}

void ReadTensors(const GgufFile& gguf) {
  // Tensor data lies inside the input, so this is bounded by the input size; the cap only
  // keeps a tensor of many zero-byte elements from allocating much.
  constexpr int64_t kMaxElements = int64_t{1} << 20;
  std::vector<float> out;
  for (const GgufTensorInfo& t : gguf.tensors()) {
    if (gguf.FindTensor(t.name) == nullptr) __builtin_trap();
    if (t.data == nullptr || !CanDequantizeGgml(t.type)) continue;
    if (t.num_elements < 0 || t.num_elements > kMaxElements) continue;
    // Never a null output, as the loader's buffers are not: memcpy(nullptr, src, 0) for an
    // empty F32 tensor is UB (tests/fuzz/crashes-pending/gguf/, for models/ to settle).
    out.resize(static_cast<size_t>(std::max<int64_t>(t.num_elements, 1)));
    (void)DequantizeGgml(t.type, t.data, t.num_bytes, t.num_elements, out.data(),
                         /*max_threads=*/1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The loaders take a path; LoadTokenizerFor recognises GGUF by the extension.
  static headwise::fuzz::InputFile input("model.gguf");
  const std::string& path = input.Write(data, size);
  auto gguf = GgufFile::Open(path);
  if (!gguf.ok()) {
    (void)gguf.status().ToString();
    return 0;
  }
  ReadMetadata(**gguf);
  ReadTensors(**gguf);
  if (auto config = ParseGgufConfig(**gguf); config.ok()) {
    (void)RopeInverseFrequencies(*config);
  }
  if (auto tok = headwise::engine::LoadTokenizerFor(path); tok.ok()) {
    const auto ids = (*tok)->Encode("Hello world <s>", true);
    (void)(*tok)->Decode(ids, false);
  }
  return 0;
}
