// Decode speed of one model on the CPU backend, as tokens/s and as a fraction of the memory
// bandwidth bound measured in the same run: a decode step must read every weight and the KV
// cache of the context once, so it cannot beat (weight bytes + KV bytes) / read bandwidth.
//
// usage: hw_bench_decode MODEL [--context N] [--tokens N] [--threads N] [--load-format dummy]
//                        [--device cpu|cuda]
// --bandwidth-gbs replaces the measured host read bandwidth in the bound (for a GPU, whose
// copy bandwidth this program does not measure).
// Prints one JSON object on stdout.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <thread>
#include <vector>

#include "engine/attention_setup.h"
#include "engine/model_loader.h"
#include "engine/model_runner.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/thread_pool.h"
#include "tools/flags.h"

namespace hw = headwise;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best of several passes of a threaded sum over `bytes` of memory: the read bandwidth the
// decode step competes for, measured with the same number of threads.
double ReadBandwidth(size_t bytes, int threads) {
  std::vector<float> data(bytes / sizeof(float));
  std::iota(data.begin(), data.end(), 0.0f);
  hw::kernels::cpu::ThreadPool pool(threads);
  double best = 0;
  std::vector<double> sums(static_cast<size_t>(threads) * 8);
  for (int rep = 0; rep < 7; ++rep) {
    const double t0 = Now();
    pool.ParallelFor(threads, static_cast<int64_t>(bytes), [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const size_t n = data.size() / static_cast<size_t>(threads);
        const float* p = data.data() + static_cast<size_t>(t) * n;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (size_t i = 0; i + 8 <= n; i += 8)
          for (int k = 0; k < 8; ++k) acc[k] += p[i + static_cast<size_t>(k)];
        sums[static_cast<size_t>(t) * 8] =
            acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
      }
    });
    best = std::max(best, static_cast<double>(bytes) / (Now() - t0));
  }
  if (sums[0] == -1.0) std::puts("");  // keeps the sums alive
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: hw_bench_decode MODEL [--context N] [--tokens N] [--threads N] "
                 "[--load-format dummy]\n");
    return 2;
  }
  const std::string model_path = argv[1];
  hw::tools::FlagParser flags(argc - 1, argv + 1);
  int context = 128, tokens = 64, threads = 0;
  float bandwidth_gbs = 0;  // > 0: use this bound instead of measuring host memory
  std::string load_format = "auto", device = "cpu";
  flags.Int("context", context);
  flags.Int("tokens", tokens);
  flags.Int("threads", threads);
  flags.String("load-format", load_format);
  flags.String("device", device);
  flags.Float("bandwidth-gbs", bandwidth_gbs);
  if (auto s = flags.Finish(); !s.ok()) {
    std::fprintf(stderr, "hw_bench_decode: error: %s\n", s.message().c_str());
    return 2;
  }
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  auto created = hw::kernels::CreateBackend(device, threads);
  if (!created.ok()) {
    std::fprintf(stderr, "hw_bench_decode: error: %s\n", created.status().message().c_str());
    return 2;
  }
  auto backend = std::move(created).value();
  hw::engine::LoadOptions options;
  if (load_format == "dummy") options.format = hw::models::LoadFormat::kDummy;
  auto loaded = hw::engine::LoadModel(model_path, options, *backend);
  if (!loaded.ok()) {
    std::fprintf(stderr, "hw_bench_decode: error: %s\n", loaded.status().message().c_str());
    return 2;
  }
  auto& model = *loaded->model;
  const auto& c = model.config();
  const int total = context + tokens;
  const auto layout = hw::kvcache::KvLayout::Dense(c.num_layers, c.num_kv_heads);
  hw::kvcache::KvCacheConfig kv_config = hw::engine::KvConfigFor(c, 0);
  kv_config.num_pages = hw::kvcache::KvCache::PagesForSequence(kv_config, layout, total);
  hw::kvcache::KvCache cache(kv_config, layout, *backend);
  hw::engine::ModelRunner runner(model, cache);
  hw::kvcache::SequenceKv kv(cache);
  if (!kv.Reserve(total).ok()) return 1;

  // Prefill `context` tokens of a fixed pattern, then time single-token decode steps.
  std::vector<int32_t> prompt(static_cast<size_t>(context));
  for (int i = 0; i < context; ++i) prompt[static_cast<size_t>(i)] = (i * 7919 + 13) % c.vocab_size;
  hw::engine::BatchEntry prefill{&kv, prompt, 0, false};
  const double p0 = Now();
  auto logits = runner.ForwardToHost(std::span<const hw::engine::BatchEntry>(&prefill, 1));
  const double prefill_s = Now() - p0;
  // Bandwidth before and after the timed steps, the best counted: this machine is shared, and
  // a bound taken in a slow moment would flatter the ratio.
  const bool measure = bandwidth_gbs <= 0;
  double bandwidth = measure ? ReadBandwidth(size_t{1} << 30, threads) : bandwidth_gbs * 1e9;

  std::vector<double> step_s;
  int32_t next = 0;
  for (int i = 0; i < tokens; ++i) {
    next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    hw::engine::BatchEntry e{&kv, std::span<const int32_t>(&next, 1), context + i, false};
    const double t0 = Now();
    logits = runner.ForwardToHost(std::span<const hw::engine::BatchEntry>(&e, 1));
    step_s.push_back(Now() - t0);
  }
  std::sort(step_s.begin(), step_s.end());
  const double median = step_s[step_s.size() / 2];

  if (measure) bandwidth = std::max(bandwidth, ReadBandwidth(size_t{1} << 30, threads));
  const double kv_bytes = 2.0 * (context + tokens / 2.0) * c.num_layers * c.num_kv_heads *
                          c.head_dim * static_cast<double>(hw::DTypeSize(backend->kv_dtype()));
  const double bytes = static_cast<double>(model.weight_bytes()) + kv_bytes;
  const double bound = bytes / bandwidth;
  std::printf(
      "%s\n",
      fmt::format(
          R"({{"model": "{}", "threads": {}, "context": {}, "decode_tokens": {}, )"
          R"("prefill_tokens_per_s": {:.1f}, "decode_ms_median": {:.3f}, "decode_tokens_per_s": {:.2f}, )"
          R"("weight_bytes": {}, "kv_bytes_mean": {:.0f}, "read_bandwidth_gb_s": {:.2f}, )"
          R"("roofline_ms": {:.3f}, "fraction_of_roofline": {:.3f}}})",
          model_path, threads, context, tokens, context / prefill_s, median * 1e3, 1.0 / median,
          model.weight_bytes(), kv_bytes, bandwidth / 1e9, bound * 1e3, bound / median)
          .c_str());
  return 0;
}
