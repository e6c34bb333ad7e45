// profile-heads on the CUDA backend against the CPU backend: the attention rows are recomputed on
// the host from copies of the GPU's bf16 q and K pages, so the scores agree within bf16 error.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>

#include "engine/attention/head_profile.h"
#include "engine/model_loader.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/gpu_under_test.h"
#include "tests/test_util.h"

namespace headwise::engine::attention {
namespace {

double MaxAbsDiff(const HeadMatrix& a, const HeadMatrix& b) {
  REQUIRE(a.size() == b.size());
  double d = 0;
  for (size_t l = 0; l < a.size(); ++l) {
    REQUIRE(a[l].size() == b[l].size());
    for (size_t h = 0; h < a[l].size(); ++h) d = std::max(d, std::abs(a[l][h] - b[l][h]));
  }
  return d;
}

double MaxValue(const HeadMatrix& a) {
  double m = 0;
  for (const auto& row : a) {
    for (double v : row) m = std::max(m, v);
  }
  return m;
}

// Razor scores on both backends; `length` R: the scored positions are repetitions 2..4, S = 3R.
struct RazorPair {
  RazorProfile cpu, gpu;
  double scored;  // S: a score is a mean of attention probabilities over S x S cells, <= 1/S
};

// One model loaded on the CPU backend and on the GPU under test.
struct OnBoth {
  std::unique_ptr<kernels::Backend> cpu_backend = kernels::CreateCpuBackend(0),
                                    gpu_backend = testing::CreateGpuUnderTest();
  LoadedModel cpu, gpu;

  explicit OnBoth(const std::string& path) {
    auto on_cpu = LoadModel(path, LoadOptions{}, *cpu_backend);
    auto on_gpu = LoadModel(path, LoadOptions{}, *gpu_backend);
    REQUIRE(on_cpu.ok());
    REQUIRE(on_gpu.ok());
    cpu = std::move(*on_cpu);
    gpu = std::move(*on_gpu);
  }
};

RazorPair ProfileRazorOnBoth(const std::string& path, int length) {
  OnBoth m(path);
  RazorOptions razor;
  razor.length = length;
  razor.prefill_chunk = 64;  // several chunks: keys of earlier chunks come from the pool
  auto rc = ProfileRazor(*m.cpu.model, m.cpu.tokenizer->bos_id(), razor);
  auto rg = ProfileRazor(*m.gpu.model, m.gpu.tokenizer->bos_id(), razor);
  REQUIRE(rc.ok());
  REQUIRE(rg.ok());
  return {*std::move(rc), *std::move(rg), 3.0 * length};
}

TEST_CASE("Razor and retrieval profiles on CUDA match the CPU backend's", "[cuda]") {
  const std::string path = testing::SharedDir() + "/models/tinystories-656k";
  {
    // This 2-layer model does almost no induction or echo (max ~1.6e-5 and 8e-5 on the CPU
    // against a ceiling of 1/S = 3.3e-3): the scores are near-uniform attention, and bf16 moves
    // them by up to ~1.7e-5 (H100, 2026-12-07). So this is a bound against the ceiling, not
    // against the (noise-sized) maximum; the signal-bearing comparison is the Qwen case below.
    const RazorPair r = ProfileRazorOnBoth(path, 100);
    REQUIRE(MaxValue(r.cpu.induction) > 1e-7);
    REQUIRE(MaxValue(r.cpu.echo) > 1e-7);
    CHECK(MaxAbsDiff(r.cpu.echo, r.gpu.echo) <= 0.02 / r.scored);
    CHECK(MaxAbsDiff(r.cpu.induction, r.gpu.induction) <= 0.02 / r.scored);
  }

  const OnBoth m(path);
  RetrievalOptions retrieval;
  retrieval.context_lengths = {200};
  retrieval.num_depths = 3;
  retrieval.min_recall = -1;  // count every sample, so that both score the same samples
  auto tc = ProfileRetrieval(*m.cpu.model, *m.cpu.tokenizer, m.cpu.eos_token_ids, retrieval);
  auto tg = ProfileRetrieval(*m.gpu.model, *m.gpu.tokenizer, m.gpu.eos_token_ids, retrieval);
  REQUIRE(tc.ok());
  REQUIRE(tg.ok());
  REQUIRE(tc->samples.size() == tg->samples.size());
  // Greedy outputs may part at a near-tie in bf16; where they agree, the copy-paste events
  // (each step's top key per head) agree too, unless two keys tie within bf16 error.
  int same = 0;
  for (size_t i = 0; i < tc->samples.size(); ++i) {
    same += tc->samples[i].response == tg->samples[i].response;
  }
  WARN("retrieval samples with equal greedy output: " << same << " of " << tc->samples.size());
  CHECK(same >= static_cast<int>(tc->samples.size()) - 1);
  REQUIRE(tc->scores.size() == tg->scores.size());
  double mean_diff = 0, any_score = 0;
  int cells = 0;
  for (size_t l = 0; l < tc->scores.size(); ++l) {
    for (size_t h = 0; h < tc->scores[l].size(); ++h) {
      REQUIRE(tc->scores[l][h].size() == tg->scores[l][h].size());
      for (size_t i = 0; i < tc->scores[l][h].size(); ++i) {
        mean_diff += std::abs(tc->scores[l][h][i] - tg->scores[l][h][i]);
        any_score = std::max(any_score, tc->scores[l][h][i]);
        ++cells;
      }
    }
  }
  mean_diff /= std::max(cells, 1);
  WARN("retrieval scores: mean |CPU - CUDA| " << mean_diff << " over " << cells << " cells");
  CHECK(mean_diff <= 0.02);
}

// A model with real induction and echo heads, so that a fault in the host view of the GPU's q and
// K pages (a page, head or position mapped wrong) moves the scores by far more than bf16 does.
// Run by name where HEADWISE_QWEN_GGUF points at the 0.5B (scripts/device/qwen-checks.sh).
TEST_CASE("Razor profile on CUDA matches the CPU backend's on Qwen2.5-Coder-0.5B", "[.][qwen05]") {
  const char* path = std::getenv("HEADWISE_QWEN_GGUF");
  REQUIRE(path != nullptr);
  const RazorPair r = ProfileRazorOnBoth(path, 200);
  const double induction = MaxValue(r.cpu.kv_induction), echo = MaxValue(r.cpu.kv_echo);
  WARN("max KV-head induction " << induction << ", echo " << echo << " (ceiling 1/S "
                                << 1 / r.scored << "); |CPU - CUDA|: induction "
                                << MaxAbsDiff(r.cpu.kv_induction, r.gpu.kv_induction) << ", echo "
                                << MaxAbsDiff(r.cpu.kv_echo, r.gpu.kv_echo));
  REQUIRE(induction > 0.2 / r.scored);  // real signal: a fifth of the ceiling
  // H100, 2026-12-07: with the host view copying only layer 0's pages (the fault this case
  // found) |CPU - CUDA| was 99.5% of the largest induction score; fixed, 10.4% (induction) and
  // 14.4% (echo): the bf16 model's activations drift from the f32 one's over 24 layers. The
  // bound sits between the two.
  CHECK(MaxAbsDiff(r.cpu.kv_induction, r.gpu.kv_induction) <= 0.3 * induction);
  CHECK(MaxAbsDiff(r.cpu.kv_echo, r.gpu.kv_echo) <= 0.3 * std::max(echo, 0.2 / r.scored));
}

}  // namespace
}  // namespace headwise::engine::attention
