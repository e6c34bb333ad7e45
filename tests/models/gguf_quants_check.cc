// Compares headwise's dequantization of every tensor of a GGUF file with the f32 tensor of the
// same name in a reference GGUF file (written by tests/python/models_gguf_quants.py from
// gguf-py's dequantize). Prints "OK <name> <type>" per matching tensor; exits 1 on any mismatch.
//
//   gguf_quants_check QUANTIZED.gguf REFERENCE.gguf
//   gguf_quants_check --type-sizes      (prints id:block_size:type_size of every known type)
//   gguf_quants_check --model MODEL.gguf REFERENCE.gguf
//       opens MODEL.gguf with OpenModel and compares every weight it serves (HF names and
//       layout) with the f32 tensor of that HF name in REFERENCE.gguf
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "models/gguf_file.h"
#include "models/gguf_quants.h"
#include "models/weight_source.h"

using headwise::models::CanDequantizeGgml;
using headwise::models::DequantizeGgml;
using headwise::models::FindGgmlType;
using headwise::models::GgmlType;
using headwise::models::GgmlTypeName;
using headwise::models::GgufFile;

namespace {

int CheckModel(const char* model_path, const char* reference_path) {
  auto files = headwise::models::OpenModel(model_path, headwise::models::LoadFormat::kAuto);
  auto reference = GgufFile::Open(reference_path);
  if (!files.ok() || !reference.ok()) {
    std::fprintf(stderr, "open failed: %s %s\n", files.status().ToString().c_str(),
                 reference.status().ToString().c_str());
    return 1;
  }
  int failures = 0;
  for (const auto& w : headwise::models::ExpectedWeights(files->config)) {
    const auto* ref = (*reference)->FindTensor(w.name);
    const std::vector<int64_t> ref_shape =
        ref ? std::vector<int64_t>(ref->dims.rbegin(), ref->dims.rend()) : std::vector<int64_t>{};
    if (ref == nullptr || ref->type != 0 || ref_shape != w.shape) {
      std::printf("FAIL %s: no f32 reference of the expected shape\n", w.name.c_str());
      ++failures;
      continue;
    }
    auto t = files->weights->Load(w.name, w.shape);
    if (!t.ok()) {
      std::printf("FAIL %s: %s\n", w.name.c_str(), t.status().ToString().c_str());
      ++failures;
      continue;
    }
    if (std::memcmp(t->data, ref->data, ref->num_bytes) != 0) {
      std::printf("FAIL %s: values differ from the reference\n", w.name.c_str());
      ++failures;
      continue;
    }
    std::printf("OK %s\n", w.name.c_str());
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--type-sizes") == 0) {
    for (uint32_t id = 0; id < 64; ++id) {
      if (const auto* t = FindGgmlType(id)) {
        std::printf("%u:%lld:%lld\n", id, static_cast<long long>(t->block_size),
                    static_cast<long long>(t->type_size));
      }
    }
    return 0;
  }
  if (argc == 4 && std::strcmp(argv[1], "--model") == 0) return CheckModel(argv[2], argv[3]);
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s QUANTIZED.gguf REFERENCE.gguf | --type-sizes\n", argv[0]);
    return 2;
  }
  auto quantized = GgufFile::Open(argv[1]);
  auto reference = GgufFile::Open(argv[2]);
  if (!quantized.ok() || !reference.ok()) {
    std::fprintf(stderr, "open failed: %s %s\n", quantized.status().ToString().c_str(),
                 reference.status().ToString().c_str());
    return 1;
  }
  int failures = 0;
  for (const auto& t : (*quantized)->tensors()) {
    const auto* ref = (*reference)->FindTensor(t.name);
    if (ref == nullptr || ref->type != static_cast<uint32_t>(GgmlType::kF32) ||
        ref->num_elements != t.num_elements || ref->dims != t.dims) {
      std::printf("FAIL %s: no f32 reference of the same shape\n", t.name.c_str());
      ++failures;
      continue;
    }
    if (!CanDequantizeGgml(t.type)) {
      std::printf("FAIL %s: type %s not supported\n", t.name.c_str(), GgmlTypeName(t.type).c_str());
      ++failures;
      continue;
    }
    std::unique_ptr<float[]> out(new float[t.num_elements]);
    // Two threads on a multi-block tensor exercise the split as well.
    headwise::Status s = DequantizeGgml(t.type, t.data, t.num_bytes, t.num_elements, out.get(), 2);
    if (!s.ok()) {
      std::printf("FAIL %s: %s\n", t.name.c_str(), s.ToString().c_str());
      ++failures;
      continue;
    }
    int64_t bad = 0;
    double worst = 0;
    for (int64_t i = 0; i < t.num_elements; ++i) {
      float want;
      std::memcpy(&want, ref->data + 4 * i, 4);
      const float got = out[i];
      const double err = std::fabs(static_cast<double>(got) - want);
      // Exact, up to 1e-6 relative for a different float evaluation order.
      if (!(err <= 1e-6 * std::fabs(static_cast<double>(want))) && !(got == want)) {
        if (bad < 5) {
          std::printf("  %s[%lld]: got %.9g want %.9g\n", t.name.c_str(), static_cast<long long>(i),
                      got, want);
        }
        ++bad;
      }
      if (want != 0) worst = std::max(worst, err / std::fabs(static_cast<double>(want)));
    }
    if (bad != 0) {
      std::printf("FAIL %s %s: %lld of %lld values differ\n", t.name.c_str(),
                  GgmlTypeName(t.type).c_str(), static_cast<long long>(bad),
                  static_cast<long long>(t.num_elements));
      ++failures;
    } else {
      std::printf("OK %s %s (%lld values, max rel err %.3g)\n", t.name.c_str(),
                  GgmlTypeName(t.type).c_str(), static_cast<long long>(t.num_elements), worst);
    }
  }
  return failures == 0 ? 0 : 1;
}
