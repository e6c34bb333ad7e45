// What an attention policy buys on one model: KV bytes per token, the longest context and the
// most concurrent sequences that fit a fixed KV memory budget (the cache's own admission:
// sequences are reserved in a real cache of that size), and decode step latency against the
// bytes a step must read, each policy against the first one given (dense) in the same run.
//
// usage: hw_bench_policy MODEL --policies NAME=FILE,NAME=FILE,... [--load-format dummy]
//                        [--contexts 32768,65536,131072] [--batches 1,4] [--budget-gb 60]
//                        [--chunk 2048] [--tokens 16] [--device cuda] [--skip-capacity]
//                        [--enforce-eager] [--op-times N]
// --chunk is the most tokens a step writes per sequence (the server's max_num_batched_tokens):
// rings hold sink + window + chunk tokens. Decode contexts are not prefilled: the pages are
// reserved and filled with random keys and values (and Quest's page bounds with random bounds),
// which costs what reading real keys costs and lets decode-time selection choose scattered keys
// as it would on real ones (unfilled memory would tie every score and hand each set the lowest
// positions, one contiguous run).
//
// Decode steps are timed as hw_bench_gpu times them (bench_util.h TimeDecodeSteps: the engine's
// ModelRunner, CUDA graphs where it captures, the same warm-up and clock), so the first policy's
// dense step is the GPU benchmark's dense step. For each (batch, context) every policy runs in
// turn, the first one first, so the baseline and the policies share the machine's state.
// Policies with decode-time selection (KvLayout::selects): every sequence gets a selection slot,
// steps select once the sequence is longer than the layout's select_min_len ("selects" says
// whether they did; "sets_chosen" reads the selection state back after the run), and the bytes a
// step must read follow bench/step_bytes.h. Recycled Attention: `--tokens` is rounded up to whole
// refresh periods and "ms" is their mean (refresh steps read every key, the others the set), the
// bytes the average over a period; "refresh_ms" / "reuse_ms" are the medians of each kind.
//
// --op-times N: after each decode row, N more steps run eagerly with the backend synchronized
// after every operation (LlamaModel::set_op_timer), and an "op_times" row says where a step's time
// goes: milliseconds per step of each kind of operation, summed over layers. Synchronizing adds
// each launch's latency, so the row explains a step; it does not time one.
//
// Prints one JSON object per line: roofline (copy bandwidth), policy (bytes per token,
// selection), capacity (per context: most sequences; longest single context), decode (per batch
// x context x policy), op_times (with --op-times), kv_ratio.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "bench/step_bytes.h"
#include "engine/attention_setup.h"
#include "engine/model_loader.h"
#include "kernels/backend_factory.h"
#include "tools/flags.h"

namespace hw = headwise;
using hw::DType;
using hw::Tensor;
using hw::bench::Emit;
using hw::bench::Split;
using hw::kernels::Backend;

namespace {

// Bytes one sequence keeps, as the cache counts them (KvCache::PagesForSequence): full and
// compress-once heads grow with the context, rings are fixed. Rings come from the one pool per
// sequence, so n sequences need n times one sequence's pages.
struct Footprint {
  hw::kvcache::KvCacheConfig config;  // page size and chunk (rings hold sink + window + chunk)
  hw::kvcache::KvLayout layout;
  size_t page_bytes = 0;  // with Quest's page bounds when the layout selects pages
  int ring_heads = 0;     // ring KV heads over all layers
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

  // Device memory decode-time selection takes besides the pages for `seqs` sequences of up to
  // `tokens` keys, as the engine counts it (engine.cc): the selection state of one slot per
  // sequence and the f32 logits of every (sequence, query head, key), twice (buffers double).
  // `config` with select_slots = seqs.
  double SelectionBytes(const hw::kvcache::KvCacheConfig& slots_config, int64_t seqs,
                        int64_t tokens) const {
    if (!layout.selects_any()) return 0;
    const int64_t keys = (tokens + config.page_size - 1) / config.page_size * config.page_size;
    return static_cast<double>(
               hw::kvcache::KvCache::SelectStateBytes(slots_config, std::span(&layout, 1))) +
           2.0 * static_cast<double>(seqs) * config.num_q_heads * static_cast<double>(keys) * 4;
  }
};

// One policy of the run.
struct Arm {
  std::string name, file;
  Footprint fp;
  hw::bench::StepBytes bytes;
};

// Fills `t` with values uniform in [-1, 1) of its dtype: a pattern of a few million values
// (whose length is no multiple of a page, so pages of a pool hold different values) copied from
// the host once and doubled on the device.
void FillRandom(Backend& be, const Tensor& t, uint32_t seed) {
  if (t.data == nullptr) return;  // an empty view (no page bounds)
  const int64_t n = t.numel();
  const size_t size = hw::DTypeSize(t.dtype);
  // 8-element aligned (the device copies stay 16-byte aligned), and 8 x an odd number: a page
  // of 16 x 128 values repeats only every 524799 pages.
  const int64_t len = std::min<int64_t>(n, (int64_t{1} << 22) + 4088);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<char> host(static_cast<size_t>(len) * size);
  for (int64_t i = 0; i < len; ++i) {
    const float x = dist(rng);
    if (t.dtype == DType::kF32) {
      std::memcpy(host.data() + i * 4, &x, 4);
    } else {
      HW_CHECK(t.dtype == DType::kBF16, "filling a {} pool", hw::DTypeName(t.dtype));
      const uint16_t h = hw::F32ToBF16(x);
      std::memcpy(host.data() + i * 2, &h, 2);
    }
  }
  char* base = static_cast<char*>(t.data);
  const auto view = [&](int64_t first, int64_t count) {
    return Tensor(base + first * static_cast<int64_t>(size), t.dtype, t.device, {count});
  };
  be.CopyFromHost(view(0, len), host.data(), host.size());
  for (int64_t filled = len; filled < n;) {
    const int64_t count = std::min(filled, n - filled);
    be.CopyOnDevice(view(filled, count), view(0, count), static_cast<size_t>(count) * size);
    filled += count;
  }
}

void FillPool(Backend& be, const hw::kernels::KvPoolView& pool) {
  FillRandom(be, pool.k, 1);
  FillRandom(be, pool.v, 2);
  FillRandom(be, pool.kmin, 3);  // Quest's bounds: random too, so pages score apart
  FillRandom(be, pool.kmax, 4);
  be.Synchronize();
}

std::vector<int32_t> ReadI32(Backend& be, const Tensor& t) {
  std::vector<int32_t> host(static_cast<size_t>(t.numel()));
  if (!host.empty()) be.CopyToHost(host.data(), t, host.size() * sizeof(int32_t));
  return host;
}

// Sets per query head (granularity q_head): the distinct keys of a KV head's group over the
// entries of its query heads' sets, for the sets of `slot` (1: disjoint sets, each query head
// reads keys no other does, as step_bytes.h counts them; 1 / group: the same set for all), or -1
// when no head keeps such sets.
double QHeadSetsDistinct(Backend& be, const hw::kernels::SelectState& state,
                         const hw::kvcache::KvLayout& layout, int slot, int num_q_heads) {
  const int sets = layout.num_select_sets(), group = num_q_heads / layout.num_kv_heads;
  std::vector<char> per_q(static_cast<size_t>(sets), 0);
  for (const hw::kernels::KvSelect& k : layout.selects) {
    if (k.set >= 0 && k.per_q_head != 0) per_q[static_cast<size_t>(k.set)] = 1;
  }
  if (std::find(per_q.begin(), per_q.end(), 1) == per_q.end()) return -1;
  const int width = state.budget();
  const std::vector<int32_t> positions = ReadI32(be, state.positions.Rows(slot, 1)),
                             counts = ReadI32(be, state.counts.Rows(slot, 1));
  int64_t distinct = 0, entries = 0;
  for (int s = 0; s < sets; ++s) {
    if (per_q[static_cast<size_t>(s)] == 0) continue;
    for (int h = 0; h < layout.num_kv_heads; ++h) {
      std::vector<int32_t> keys;
      for (int g = 0; g < group; ++g) {
        const int64_t row = int64_t{s} * num_q_heads + int64_t{h} * group + g;
        const int count = std::clamp(counts[static_cast<size_t>(row)], 0, width);
        const auto first = positions.begin() + row * width;
        keys.insert(keys.end(), first, first + count);
      }
      entries += static_cast<int64_t>(keys.size());
      std::sort(keys.begin(), keys.end());
      distinct += std::unique(keys.begin(), keys.end()) - keys.begin();
    }
  }
  return entries == 0 ? -1 : static_cast<double>(distinct) / static_cast<double>(entries);
}

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
  int chunk = 2048, tokens = 16, op_steps = 0;
  bool skip_capacity = false, enforce_eager = false;
  flags.String("device", device);
  flags.String("load-format", load_format);
  flags.String("policies", policies_s);
  flags.String("contexts", contexts_s);
  flags.String("batches", batches_s);
  flags.Int("budget-gb", budget_gb);
  flags.Int("chunk", chunk);
  flags.Int("tokens", tokens);
  flags.Bool("skip-capacity", skip_capacity);
  flags.Bool("enforce-eager", enforce_eager);
  flags.Int("op-times", op_steps);
  const auto fail = [](const std::string& what) {
    std::fprintf(stderr, "hw_bench_policy: error: %s\n", what.c_str());
    return 2;
  };
  if (auto s = flags.Finish(); !s.ok()) return fail(s.message());
  if (policies_s.empty()) return fail("--policies NAME=FILE,... is required");
  if (tokens < 1) return fail("--tokens must be at least 1");
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
  const double weight_bytes = static_cast<double>(model.weight_bytes());

  const double copy_bw = hw::bench::CopyBandwidth(be, 6);
  Emit(fmt::format(R"({{"kind": "roofline", "copy_gb_s": {:.1f}, "weight_bytes": {}}})",
                   copy_bw / 1e9, model.weight_bytes()));

  // --- the policies: footprint, selection, capacity under the budget ---
  std::vector<Arm> arms;
  std::map<int, double> baseline_kv;  // context -> first policy's KV bytes of one sequence
  const double budget = budget_gb * 1e9;
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
    fp.page_bytes =
        hw::kvcache::KvCache::PageBytes(fp.config, be.kv_dtype(), fp.layout.selects_pages());
    fp.ring_heads = fp.layout.CountStorage(hw::kernels::kStorageRing);
    fp.sink = fp.layout.ring().sink;
    fp.window = fp.layout.ring().window;
    const hw::bench::StepShape shape{c.num_heads, c.num_kv_heads, c.head_dim, set->page_size,
                                     static_cast<int>(hw::DTypeSize(be.kv_dtype()))};
    arms.push_back(Arm{name, file, fp, hw::bench::StepBytes(fp.layout, shape)});
    const Arm& arm = arms.back();
    const bool first = arms.size() == 1;
    Emit(fmt::format(
        R"({{"kind": "policy", "policy": "{}", "file": "{}", "ring_kv_heads": {}, "kv_heads": {}, )"
        R"("sink": {}, "window": {}, "chunk": {}, "full_bytes_per_token": {:.0f}, )"
        R"("ring_bytes_per_sequence": {:.0f}, "selects": {}, "select_min_len": {}, )"
        R"("select_sets": {}, "max_select_budget": {}, "refresh_period": {}, )"
        R"("similarity_refresh": {}}})",
        name, file, fp.ring_heads, c.num_layers * c.num_kv_heads, fp.sink, fp.window, chunk,
        fp.FullBytesPerToken(), fp.RingBytes(), fp.layout.selects_any(), fp.layout.select_min_len,
        fp.layout.num_select_sets(), fp.layout.max_select_budget(), arm.bytes.refresh_period(),
        arm.bytes.has_similarity_refresh()));
    for (int context : contexts) {
      if (first) baseline_kv[context] = fp.SequenceBytes(context);
    }
    if (skip_capacity) continue;

    // Admits `seqs` sequences of `tokens` each in a cache of the budget (less the selection
    // state and logits the engine sets aside for them), each taking its rings from the pool as
    // it is reserved (as the server's sequences do).
    const auto admits = [&](int seqs, int tokens_each) {
      hw::kvcache::KvCacheConfig config = fp.config;
      if (fp.layout.selects_any()) config.select_slots = seqs;
      const double pages = (budget - fp.SelectionBytes(config, seqs, tokens_each)) /
                           static_cast<double>(fp.page_bytes);
      if (pages < 1) return false;
      config.num_pages = static_cast<int>(pages);
      auto cache = hw::engine::CreateKvCache({fp.layout}, config, be);
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
  }

  // --- decode steps: per (batch, context), every policy in turn, the first one first ---
  for (int batch : batches) {
    for (int context : contexts) {
      double base_ms = 0, base_bytes = 0;  // the first policy's step here; 0 when it did not run
      for (size_t a = 0; a < arms.size(); ++a) {
        const Arm& arm = arms[a];
        const Footprint& fp = arm.fp;
        const int period = arm.bytes.refresh_period();
        hw::bench::DecodeTiming timing;
        timing.steps = (tokens + period - 1) / period * period;  // whole refresh periods
        // --op-times steps go on after the timed ones (a recycled set knows when it was chosen).
        const int total = context + timing.TokensToReserve() + (op_steps > 0 ? op_steps + 2 : 0);
        hw::kvcache::KvCacheConfig config = fp.config;
        config.num_pages = static_cast<int>(fp.Pages(batch, total));
        if (fp.layout.selects_any()) config.select_slots = batch;  // every sequence selects
        const double need = static_cast<double>(config.num_pages) * fp.page_bytes +
                            fp.SelectionBytes(config, batch, total);
        const double free = static_cast<double>(be.DeviceMemory().free_bytes);
        if (need + 4e9 > free) {
          Emit(fmt::format(
              R"({{"kind": "decode", "policy": "{}", "batch": {}, "context": {}, "skipped": )"
              R"("does not fit: {:.1f} GB of KV and selection state, {:.1f} GB free"}})",
              arm.name, batch, context, need / 1e9, free / 1e9));
          continue;
        }
        auto cache = hw::engine::CreateKvCache({fp.layout}, config, be);
        if (!cache.ok()) return fail(cache.status().message());
        FillPool(be, (*cache)->pool_view());
        std::vector<hw::kvcache::SequenceKv> seqs;
        seqs.reserve(static_cast<size_t>(batch));
        for (int s = 0; s < batch; ++s) {
          seqs.emplace_back(**cache);
          if (auto st = seqs.back().Reserve(total); !st.ok()) return fail(st.message());
        }
        hw::engine::ModelRunner runner(model, **cache);
        runner.set_use_graphs(!enforce_eager);
        const bool graphs = !enforce_eager && be.SupportsCapture() &&
                            hw::engine::ModelRunner::GraphBatchBucket(batch) > 0;
        const hw::bench::DecodeSteps steps =
            hw::bench::TimeDecodeSteps(runner, seqs, context, timing);
        // Keys of the first timed step (its query included): the bytes of the steps timed.
        const int first_keys = context + steps.warmup + 1;
        std::string fields;
        double ms;
        if (period > 1) {
          // Step g of the sequence (g from 0, warm-up included) refreshes when g % period == 0.
          std::vector<double> refresh_s, reuse_s;
          for (size_t t = 0; t < steps.step_s.size(); ++t) {
            ((steps.warmup + static_cast<int>(t)) % period == 0 ? refresh_s : reuse_s)
                .push_back(steps.step_s[t]);
          }
          ms = steps.mean() * 1e3;
          fields += fmt::format(
              R"(, "ms_stat": "mean of {} refresh periods", "refresh_ms": {:.3f}, "reuse_ms": {:.3f})",
              timing.steps / period, hw::bench::Median(refresh_s) * 1e3,
              reuse_s.empty() ? 0.0 : hw::bench::Median(reuse_s) * 1e3);
        } else {
          ms = steps.median() * 1e3;
          fields += R"(, "ms_stat": "median")";
        }
        // The middle timed step's keys; a refresh period from the first timed step's.
        const int bytes_keys = period > 1 ? first_keys : first_keys + timing.steps / 2;
        const hw::bench::SequenceStepBytes seq =
            period > 1 ? arm.bytes.PeriodAverage(bytes_keys) : arm.bytes.At(bytes_keys);
        // The selection state after the run, read back: every set of the first sequence chosen
        // during it, and (recycle) the steps since the last refresh as the stride rule says.
        if (seq.selects) {
          const hw::kernels::SelectState state = (*cache)->select_state();
          const int sets = fp.layout.num_select_sets();
          const int slot = seqs[0].select_slot();
          const std::vector<int32_t> chosen = ReadI32(be, state.chosen_len),
                                     since = ReadI32(be, state.steps);
          int chosen_here = 0;
          for (int s = 0; s < sets; ++s) {
            if (chosen[static_cast<size_t>(slot * sets + s)] > context) ++chosen_here;
          }
          fields += fmt::format(R"(, "sets_chosen": {}, "sets": {})", chosen_here, sets);
          if (const double distinct = QHeadSetsDistinct(be, state, fp.layout, slot, c.num_heads);
              distinct >= 0) {
            fields += fmt::format(R"(, "q_head_sets_distinct": {:.3f})", distinct);
          }
          if (period > 1) {
            const int last = steps.warmup + timing.steps - 1;  // the last step's g
            bool as_expected = true;
            for (int s = 0; s < sets; ++s) {
              const auto sel_it =
                  std::find_if(fp.layout.selects.begin(), fp.layout.selects.end(),
                               [&](const hw::kernels::KvSelect& k) { return k.set == s; });
              if (sel_it == fp.layout.selects.end() ||
                  sel_it->decode != hw::kernels::kDecodeRecycle) {
                continue;
              }
              as_expected = as_expected && since[static_cast<size_t>(slot * sets + s)] ==
                                               last % std::max(1, sel_it->refresh_every);
            }
            fields += fmt::format(R"(, "refresh_as_expected": {})", as_expected);
          }
        }
        const double bytes = weight_bytes + batch * seq.total();
        if (a == 0) {
          base_ms = ms;
          base_bytes = bytes;
        } else if (base_ms > 0) {
          const double speedup = base_ms / ms, allowed = base_bytes / bytes;
          fields += fmt::format(
              R"(, "speedup": {:.3f}, "bytes_allow": {:.3f}, "fraction_of_allowed": {:.3f})",
              speedup, allowed, speedup / allowed);
        }
        Emit(fmt::format(
            R"({{"kind": "decode", "policy": "{}", "batch": {}, "context": {}, "graphs": {}, )"
            R"("warmup_steps": {}, "steps": {}, "ms": {:.3f}{}, "selects": {}, "keys": {}, )"
            R"("bytes": {:.0f}, )"
            R"("kv_bytes": {:.0f}, "selection_bytes": {:.0f}, "roofline_ms": {:.3f}, )"
            R"("fraction_of_roofline": {:.3f}}})",
            arm.name, batch, context, graphs, steps.warmup, timing.steps, ms, fields, seq.selects,
            bytes_keys, bytes, batch * seq.kv, batch * seq.selection, bytes / copy_bw * 1e3,
            bytes / copy_bw * 1e3 / ms));
        if (op_steps > 0) {
          // Where the time goes: eager steps, synchronized after each operation.
          std::map<std::string, double> op_s;
          double last = hw::bench::Now();
          model.set_op_timer([&](const char* op) {
            be.Synchronize();
            const double now = hw::bench::Now();
            op_s[op] += now - last;
            last = now;
          });
          hw::bench::DecodeTiming op_timing;
          op_timing.steps = op_steps;
          op_timing.warmup_steps = op_timing.warmup_max = 1;
          op_timing.warmup_s = 0;
          const double t0 = hw::bench::Now();
          last = t0;
          const hw::bench::DecodeSteps op_run = hw::bench::TimeDecodeSteps(
              runner, seqs, context + steps.warmup + timing.steps, op_timing);
          model.set_op_timer(nullptr);
          // The warm-up step's operations count too: per step over all steps run.
          const double n = static_cast<double>(op_run.warmup + op_timing.steps);
          std::string ops;
          double total = 0;
          for (const auto& [op, sec] : op_s) {
            ops += fmt::format(R"({}"{}": {:.3f})", ops.empty() ? "" : ", ", op, sec / n * 1e3);
            total += sec;
          }
          Emit(fmt::format(
              R"({{"kind": "op_times", "policy": "{}", "batch": {}, "context": {}, "steps": {}, )"
              R"("step_ms": {:.3f}, "ops_ms": {{{}}}}})",
              arm.name, batch, context, n, total / n * 1e3, ops));
        }
      }
    }
  }

  for (size_t a = 1; a < arms.size(); ++a) {
    for (int context : contexts) {
      const double kv = arms[a].fp.SequenceBytes(context);
      Emit(
          fmt::format(R"({{"kind": "kv_ratio", "policy": "{}", "context": {}, "kv_bytes": {:.0f}, )"
                      R"("first_policy_kv_bytes": {:.0f}, "less_kv_x": {:.3f}}})",
                      arms[a].name, context, kv, baseline_kv[context], baseline_kv[context] / kv));
    }
  }
  return 0;
}
