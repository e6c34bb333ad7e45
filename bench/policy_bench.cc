// What an attention policy buys on one model: KV bytes per token, the longest context and the
// most concurrent sequences that fit a fixed KV memory budget (the cache's own admission:
// sequences are reserved in a real cache of that size), and decode step latency against the
// bytes a step must read, each policy against the first one given (dense) in the same run.
//
// usage: hw_bench_policy MODEL --policies NAME=FILE,NAME=FILE,... [--load-format dummy]
//                        [--contexts 32768,65536,131072] [--batches 1,4] [--budget-gb 60]
//                        [--chunk 2048] [--tokens 16] [--device cuda]
// --chunk is the most tokens a step writes per sequence (the server's max_num_batched_tokens):
// rings hold sink + window + chunk tokens. Decode contexts are not prefilled: the pages are
// reserved and read as they are, which costs the same as real keys.
// Prints one JSON object per line: roofline (copy bandwidth), policy (bytes per token),
// capacity (per context: most sequences; longest single context), decode (per batch x context).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/attention_setup.h"
#include "engine/model_loader.h"
#include "kernels/backend_factory.h"
#include "tools/flags.h"

namespace hw = headwise;
using hw::DType;
using hw::bench::Emit;
using hw::bench::Split;
using hw::kernels::Backend;
using hw::kernels::Buffer;

namespace {

// Bytes one sequence keeps, as the cache counts them (KvCache::PagesForSequence): full and
// compress-once heads grow with the context, rings are fixed. Rings come from the one pool per
// sequence, so n sequences need n times one sequence's pages.
struct Footprint {
  hw::kvcache::KvCacheConfig config;  // page size and chunk (rings hold sink + window + chunk)
  hw::kvcache::KvLayout layout;
  size_t page_bytes = 0;
  int ring_heads = 0;  // ring KV heads over all layers
  int sink = 0, window = 0;

  // Pages of one logical page (page_size tokens) of every head that grows: full and compress-once.
  int GrowingPagesPerBlock() const {
    return layout.CountStorage(hw::kernels::kStorageFull) +
           layout.CountStorage(hw::kernels::kStorageCompressOnce);
  }
  double FullBytesPerToken() const {
    return static_cast<double>(GrowingPagesPerBlock()) * static_cast<double>(page_bytes) /
           config.page_size;
  }
  // Pages one sequence of `tokens` tokens needs, rings included.
  int64_t SequencePages(int64_t tokens) const {
    return hw::kvcache::KvCache::PagesForSequence(config, layout, static_cast<int>(tokens));
  }
  double SequenceBytes(int64_t tokens) const {
    return static_cast<double>(SequencePages(tokens)) * static_cast<double>(page_bytes);
  }
  // What a sequence holds before its first token: its rings (with compress-once heads too, the
  // alignment of their blocks below the rings, as PagesForSequence counts it).
  double RingBytes() const { return SequenceBytes(0); }
  int64_t Pages(int64_t seqs, int64_t tokens) const { return seqs * SequencePages(tokens); }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: hw_bench_policy MODEL --policies NAME=FILE,... [...]\n");
    return 2;
  }
  const std::string model_path = argv[1];
  hw::tools::FlagParser flags(argc - 1, argv + 1);
  std::string device = "cuda", load_format = "auto", policies_s, contexts_s = "32768,65536,131072",
              batches_s = "1,4";
  int budget_gb = 60;
  int chunk = 2048, tokens = 16;
  flags.String("device", device);
  flags.String("load-format", load_format);
  flags.String("policies", policies_s);
  flags.String("contexts", contexts_s);
  flags.String("batches", batches_s);
  flags.Int("budget-gb", budget_gb);
  flags.Int("chunk", chunk);
  flags.Int("tokens", tokens);
  const auto fail = [](const std::string& what) {
    std::fprintf(stderr, "hw_bench_policy: error: %s\n", what.c_str());
    return 2;
  };
  if (auto s = flags.Finish(); !s.ok()) return fail(s.message());
  if (policies_s.empty()) return fail("--policies NAME=FILE,... is required");
  auto created = hw::kernels::CreateBackend(device, 0);
  if (!created.ok()) return fail(created.status().message());
  auto backend = std::move(created).value();
  Backend& be = *backend;
  hw::engine::LoadOptions options;
  if (load_format == "dummy") options.format = hw::models::LoadFormat::kDummy;
  auto loaded = hw::engine::LoadModel(model_path, options, be);
  if (!loaded.ok()) return fail(loaded.status().message());
  auto& model = *loaded->model;
  const auto& c = model.config();
  const std::vector<int> contexts = hw::bench::ParseIntList(contexts_s),
                         batches = hw::bench::ParseIntList(batches_s);

  const double copy_bw = hw::bench::CopyBandwidth(be, 6);
  Emit(fmt::format(R"({{"kind": "roofline", "copy_gb_s": {:.1f}, "weight_bytes": {}}})",
                   copy_bw / 1e9, model.weight_bytes()));

  // (batch, context) -> dense step seconds and bytes, from the first policy.
  std::map<std::pair<int, int>, std::pair<double, double>> baseline;
  std::map<int, double> baseline_kv;  // context -> first policy's KV bytes of one sequence
  const double budget = budget_gb * 1e9;
  bool first = true;
  for (const auto& entry : Split(policies_s, ',')) {
    const auto eq = entry.find('=');
    if (eq == std::string::npos) return fail("--policies entries are NAME=FILE: " + entry);
    const std::string name = entry.substr(0, eq), file = entry.substr(eq + 1);
    auto set = hw::engine::LoadAttentionPolicy(file, c, model_path, model.weights_hash());
    if (!set.ok()) return fail(set.status().message());
    auto layout = hw::engine::KvLayoutFor(*set);
    if (!layout.ok()) return fail(layout.status().message());

    Footprint fp;
    fp.config = hw::engine::KvConfigFor(c, 0, set->page_size, chunk);
    fp.layout = std::move(layout).value();
    fp.page_bytes = hw::kvcache::KvCache::PageBytes(fp.config, be.kv_dtype());
    fp.ring_heads = fp.layout.CountStorage(hw::kernels::kStorageRing);
    fp.sink = fp.layout.ring().sink;
    fp.window = fp.layout.ring().window;
    // A cache of `pages` pages serving this policy (rings from the same pool).
    const auto create_cache = [&](int64_t pages) {
      hw::kvcache::KvCacheConfig config = fp.config;
      config.num_pages = static_cast<int>(pages);
      return hw::engine::CreateKvCache({fp.layout}, config, be);
    };
    // K and V of one token of one KV head.
    const double head_token_bytes = static_cast<double>(fp.page_bytes) / fp.config.page_size;
    Emit(fmt::format(
        R"({{"kind": "policy", "policy": "{}", "file": "{}", "ring_kv_heads": {}, "kv_heads": {}, )"
        R"("sink": {}, "window": {}, "chunk": {}, "full_bytes_per_token": {:.0f}, )"
        R"("ring_bytes_per_sequence": {:.0f}}})",
        name, file, fp.ring_heads, c.num_layers * c.num_kv_heads, fp.sink, fp.window, chunk,
        fp.FullBytesPerToken(), fp.RingBytes()));

    // --- capacity under the budget, by the cache's own admission ---
    const int budget_pages = static_cast<int>(budget / static_cast<double>(fp.page_bytes));
    // Admits `seqs` sequences of `tokens` each in a cache of the budget, each taking its rings
    // from the pool as it is reserved (as the server's sequences do).
    const auto admits = [&](int seqs, int tokens_each) {
      auto cache = create_cache(budget_pages);
      if (!cache.ok()) return false;
      std::vector<hw::kvcache::SequenceKv> held;
      held.reserve(static_cast<size_t>(seqs));
      for (int s = 0; s < seqs; ++s) {
        held.emplace_back(**cache);
        if (!held.back().Reserve(tokens_each).ok()) return false;
      }
      return true;
    };
    for (int context : contexts) {
      int lo = 0, hi = 1;
      while (admits(hi, context) && hi < (1 << 16)) hi *= 2;
      while (hi - lo > 1) {  // admits(lo) holds, admits(hi) does not
        const int mid = (lo + hi) / 2;
        (admits(mid, context) ? lo : hi) = mid;
      }
      Emit(fmt::format(R"({{"kind": "capacity", "policy": "{}", "budget_gb": {}, "context": {}, )"
                       R"("max_sequences": {}, "kv_bytes_per_sequence": {:.0f}}})",
                       name, budget_gb, context, lo, fp.SequenceBytes(context)));
      if (first) baseline_kv[context] = fp.SequenceBytes(context);
    }
    // The longest single context: bounded by the budget unless no head grows.
    if (fp.GrowingPagesPerBlock() == 0) {
      Emit(fmt::format(
          R"({{"kind": "longest", "policy": "{}", "budget_gb": {}, "tokens": null, )"
          R"("note": "no KV head grows with the context: memory is flat at any length"}})",
          name, budget_gb));
    } else {
      int lo = 0, hi = 1 << 12;
      while (admits(1, hi) && hi < (1 << 30)) hi *= 2;
      while (hi - lo > fp.config.page_size) {
        const int mid = lo + (hi - lo) / 2;
        (admits(1, mid) ? lo : hi) = mid;
      }
      Emit(fmt::format(R"({{"kind": "longest", "policy": "{}", "budget_gb": {}, "tokens": {}}})",
                       name, budget_gb, lo));
    }

    // --- decode steps ---
    for (int batch : batches) {
      for (int context : contexts) {
        const int total = context + tokens + 4;
        const double need = static_cast<double>(fp.Pages(batch, total)) * fp.page_bytes;
        if (need + 4e9 > static_cast<double>(be.DeviceMemory().free_bytes)) {
          Emit(fmt::format(
              R"({{"kind": "decode", "policy": "{}", "batch": {}, "context": {}, "skipped": )"
              R"("does not fit: {:.1f} GB of KV, {:.1f} GB free"}})",
              name, batch, context, need / 1e9,
              static_cast<double>(be.DeviceMemory().free_bytes) / 1e9));
          continue;
        }
        auto cache = create_cache(fp.Pages(batch, total));
        if (!cache.ok()) return fail(cache.status().message());
        std::vector<hw::kvcache::SequenceKv> seqs;
        seqs.reserve(static_cast<size_t>(batch));
        for (int s = 0; s < batch; ++s) {
          seqs.emplace_back(**cache);
          if (auto st = seqs.back().Reserve(total); !st.ok()) return fail(st.message());
        }
        hw::engine::ModelRunner runner(model, **cache);
        const double ms = hw::bench::MedianDecodeStep(runner, seqs, context, tokens) * 1e3;
        // What a step must read: the weights, every full head's keys and values of the context,
        // each ring head's sinks and window.
        const double attended_ring = std::min<double>(context, fp.sink + fp.window + 1);
        const double bytes = static_cast<double>(model.weight_bytes()) +
                             batch * (fp.FullBytesPerToken() * context +
                                      fp.ring_heads * head_token_bytes * attended_ring);
        std::string vs_first;
        if (first) {
          baseline[{batch, context}] = {ms, bytes};
        } else if (auto it = baseline.find({batch, context}); it != baseline.end()) {
          const double speedup = it->second.first / ms, allowed = it->second.second / bytes;
          vs_first = fmt::format(
              R"(, "speedup": {:.3f}, "bytes_allow": {:.3f}, "fraction_of_allowed": {:.3f})",
              speedup, allowed, speedup / allowed);
        }
        Emit(fmt::format(
            R"({{"kind": "decode", "policy": "{}", "batch": {}, "context": {}, "ms": {:.3f}, )"
            R"("bytes": {:.0f}, "roofline_ms": {:.3f}, "fraction_of_roofline": {:.3f}{}}})",
            name, batch, context, ms, bytes, bytes / copy_bw * 1e3, bytes / copy_bw * 1e3 / ms,
            vs_first));
      }
    }
    if (!first) {
      for (int context : contexts) {
        const double kv = fp.SequenceBytes(context);
        Emit(fmt::format(
            R"({{"kind": "kv_ratio", "policy": "{}", "context": {}, "kv_bytes": {:.0f}, )"
            R"("first_policy_kv_bytes": {:.0f}, "less_kv_x": {:.3f}}})",
            name, context, kv, baseline_kv[context], baseline_kv[context] / kv));
      }
    }
    first = false;
  }
  return 0;
}
