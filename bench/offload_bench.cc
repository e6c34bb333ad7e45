// RetrievalAttention's speed through the engine (issue 17's table at 128K): prompts of random token
// ids are prefilled and then decode --tokens tokens each, under an offload policy and under dense
// attention in the same process (A/B arms of one engine: 0 dense, 1 the policy), so both share the
// weights, the clock and the machine's state. For each (arm, batch) one JSON line:
//   ttft_first_s  submit to the first token of the first request served: its prefill, and for
//                 offload also the compaction (the span copied to the host, the index build's
//                 exact search on the device); ttft_s: the median over the batch (later requests
//                 queue behind earlier prefills)
//   compaction_s  engine-thread time compacting, per request (headwise_kv_compaction_seconds_total)
//   build_s       the index build on the host's threads, per request (headwise_offload_index_*);
//                 the request decodes once it is done
//   step_ms, tok_s  the decode window where every request of the batch decodes (from the last
//                 request's third token to the first request's last): the median gap between a
//                 request's tokens, and the tokens of all requests per second
//   device_kv_bytes  KV pages the arm held in that window, in bytes; host_bytes: the offload
//                 tier's (headwise_offload_host_bytes)
//   retrieve_calls, retrieve_ms_per_call  the host's part of the offload arm's decode steps over
//                 the cell (OffloadTier::Retrieve: one call per offload layer and step, which the
//                 device waits for); scanned_frac: the keys its searches scored / the keys held
// Requests prefill one after another (chunked prefill), so a batch needs --tokens well above the
// steps that the later prefills take, or there is no common window (reported as an error).
// Dense batches that do not fit the device at once are left out (--dense-batches, default 1).
//
// usage: hw_bench_offload MODEL --policy FILE [--load-format dummy] [--device cuda]
//                         [--context 131072] [--batches 1,4] [--dense-batches 1] [--tokens 256]
//                         [--chunk 8192] [--cpu-kv-memory-gb 0] [--seed 1] [--enforce-eager]
// Every time is wall time on the host, as a client of the engine sees it.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "engine/engine.h"
#include "engine/model_loader.h"
#include "kernels/backend_factory.h"
#include "tools/flags.h"

namespace hw = headwise;
using hw::bench::Emit;
using hw::bench::Median;
using hw::bench::Now;

namespace {

struct RequestTimes {
  double submitted = 0;
  std::vector<double> token_at;  // arrival of each generated token
  std::string error;
};

struct Cell {
  std::vector<RequestTimes> requests;
  double device_kv_pages = 0, host_bytes = 0;
  double compaction_s = 0, build_s = 0, builds = 0;  // metric deltas over the cell
  // The host's part of the decode steps (metric deltas): OffloadTier::Retrieve calls, their time,
  // and the keys their searches scored against the keys the searched heads held.
  double retrieve_calls = 0, retrieve_s = 0, keys_scanned = 0, keys_over = 0;
};

// Runs `batch` requests of `arm` at once, each prompt `context` random ids, and times them.
Cell RunBatch(hw::engine::Engine& engine, int arm, int batch, int context, int tokens,
              uint32_t seed) {
  hw::MetricsRegistry& metrics = engine.metrics();
  // The counters the cell reports, as (field, metric): each field starts at minus the counter's
  // value and gets the value at the end added, so it holds the increase over the cell.
  Cell cell;
  const std::pair<double*, const char*> counters[] = {
      {&cell.compaction_s, "headwise_kv_compaction_seconds_total"},
      {&cell.build_s, "headwise_offload_index_build_seconds_total"},
      {&cell.builds, "headwise_offload_index_builds_total"},
      {&cell.retrieve_calls, "headwise_offload_retrieve_calls_total"},
      {&cell.retrieve_s, "headwise_offload_retrieve_seconds_total"},
      {&cell.keys_scanned, "headwise_offload_keys_scanned_total"},
      {&cell.keys_over, "headwise_offload_keys_searched_over_total"}};
  for (const auto& [field, name] : counters) *field = -metrics.Value(name);
  cell.requests.resize(static_cast<size_t>(batch));
  const int vocab = engine.limits(arm).vocab_size;
  std::vector<std::thread> readers;
  std::vector<int> tokens_seen(static_cast<size_t>(batch), 0);
  std::mutex mu;
  std::condition_variable cv;
  for (int r = 0; r < batch; ++r) {
    std::mt19937 rng(seed + static_cast<uint32_t>(r) * 7919u);
    std::uniform_int_distribution<int> id(3, vocab - 1);  // clear of the usual special ids
    hw::engine::EngineRequest request;
    request.arm = arm;
    request.prompt_ids.resize(static_cast<size_t>(context));
    for (int32_t& t : request.prompt_ids) t = id(rng);
    request.params.temperature = 0.0f;
    request.params.max_tokens = tokens;
    request.params.ignore_eos = true;
    request.detokenize = false;
    RequestTimes& times = cell.requests[static_cast<size_t>(r)];
    times.submitted = Now();
    auto stream = engine.Submit(std::move(request));
    if (!stream.ok()) {
      times.error = stream.status().ToString();
      tokens_seen[static_cast<size_t>(r)] = tokens + 1;
      continue;
    }
    readers.emplace_back([&, r, s = std::move(stream).value()]() mutable {
      RequestTimes& t = cell.requests[static_cast<size_t>(r)];
      for (;;) {
        auto out = s->Next(std::chrono::minutes(20));
        if (!out) {
          t.error = "no output for 20 minutes";
          break;
        }
        const double now = Now();
        for (size_t i = 0; i < out->token_ids.size(); ++i) t.token_at.push_back(now);
        if (out->finished) {
          if (out->finish_reason == hw::engine::FinishReason::kError) t.error = out->error;
          break;
        }
        std::lock_guard lock(mu);
        tokens_seen[static_cast<size_t>(r)] = static_cast<int>(t.token_at.size());
        cv.notify_all();
      }
      std::lock_guard lock(mu);
      tokens_seen[static_cast<size_t>(r)] = tokens + 1;  // done, whatever happened
      cv.notify_all();
    });
  }
  // The memory the batch holds while every request decodes: once each has its third token (or
  // has ended).
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] {
      return std::all_of(tokens_seen.begin(), tokens_seen.end(), [](int n) { return n >= 3; });
    });
    const std::string arm_name = engine.arms()[static_cast<size_t>(arm)].name;
    cell.device_kv_pages = metrics.Value("headwise_arm_kv_pages_used", {{"arm", arm_name}});
    cell.host_bytes = metrics.Value("headwise_offload_host_bytes");
  }
  for (auto& t : readers) t.join();
  for (const auto& [field, name] : counters) *field += metrics.Value(name);
  return cell;
}

std::string Report(const Cell& cell, const std::string& arm, int batch, int context, int tokens,
                   double page_bytes) {
  std::string error;
  std::vector<const RequestTimes*> done;
  for (const RequestTimes& r : cell.requests) {
    if (r.error.empty() && static_cast<int>(r.token_at.size()) == tokens) {
      done.push_back(&r);
    } else if (error.empty()) {
      error = r.error.empty() ? fmt::format("{} of {} tokens", r.token_at.size(), tokens) : r.error;
    }
  }
  const auto head = fmt::format(R"({{"kind": "cell", "arm": "{}", "batch": {}, "context": {}, )"
                                R"("tokens": {}, "ok": {})",
                                arm, batch, context, tokens, done.size());
  if (done.size() != cell.requests.size()) return head + fmt::format(R"(, "error": "{}"}})", error);
  std::vector<double> ttft;
  double window_begin = 0, window_end = 1e300;
  for (const RequestTimes* r : done) {
    ttft.push_back(r->token_at[0] - r->submitted);
    window_begin = std::max(window_begin, r->token_at[2]);
    window_end = std::min(window_end, r->token_at.back());
  }
  std::vector<double> gaps;
  double window_tokens = 0;
  for (const RequestTimes* r : done) {
    for (size_t i = 1; i < r->token_at.size(); ++i) {
      if (r->token_at[i - 1] < window_begin || r->token_at[i] > window_end) continue;
      gaps.push_back(r->token_at[i] - r->token_at[i - 1]);
      window_tokens += 1;
    }
  }
  const auto n = static_cast<double>(done.size());
  std::string line =
      head + fmt::format(R"(, "ttft_first_s": {:.3f}, "ttft_s": {:.3f}, "compaction_s": {:.3f}, )"
                         R"("build_s": {:.3f}, "device_kv_bytes": {:.0f}, "host_bytes": {:.0f})",
                         *std::min_element(ttft.begin(), ttft.end()), Median(ttft),
                         cell.compaction_s / n, cell.builds > 0 ? cell.build_s / cell.builds : 0.0,
                         cell.device_kv_pages * page_bytes, cell.host_bytes);
  if (gaps.size() < 2 * done.size()) {
    return line + R"(, "error": "no common decode window: raise --tokens"})";
  }
  line +=
      fmt::format(R"(, "step_ms": {:.2f}, "tok_s": {:.1f}, "window_s": {:.2f})", 1e3 * Median(gaps),
                  window_tokens / (window_end - window_begin), window_end - window_begin);
  if (cell.retrieve_calls > 0) {
    line += fmt::format(R"(, "retrieve_calls": {:.0f}, "retrieve_ms_per_call": {:.3f}, )"
                        R"("scanned_frac": {:.4f})",
                        cell.retrieve_calls, 1e3 * cell.retrieve_s / cell.retrieve_calls,
                        cell.keys_over > 0 ? cell.keys_scanned / cell.keys_over : 0.0);
  }
  return line + "}";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: hw_bench_offload MODEL --policy FILE [...]\n");
    return 2;
  }
  const std::string model_path = argv[1];
  hw::tools::FlagParser flags(argc - 1, argv + 1);
  std::string device = "cuda", load_format = "auto", policy, batches_s = "1,4",
              dense_batches_s = "1";
  int context = 131072, tokens = 256, chunk = 8192, cpu_kv_gb = 0, seed = 1;
  bool enforce_eager = false;
  flags.String("device", device);
  flags.String("load-format", load_format);
  flags.String("policy", policy);
  flags.String("batches", batches_s);
  flags.String("dense-batches", dense_batches_s);
  flags.Int("context", context);
  flags.Int("tokens", tokens);
  flags.Int("chunk", chunk);
  flags.Int("cpu-kv-memory-gb", cpu_kv_gb);
  flags.Int("seed", seed);
  flags.Bool("enforce-eager", enforce_eager);
  const auto fail = [](const std::string& what) {
    std::fprintf(stderr, "hw_bench_offload: error: %s\n", what.c_str());
    return 2;
  };
  if (auto s = flags.Finish(); !s.ok()) return fail(s.message());
  if (policy.empty()) return fail("--policy FILE is required");
  if (tokens < 3) return fail("--tokens must be at least 3 (a step time needs a third token)");
  auto created = hw::kernels::CreateBackend(device, 0);
  if (!created.ok()) return fail(created.status().message());
  auto backend = std::move(created).value();
  hw::engine::LoadOptions options;
  if (load_format == "dummy") options.format = hw::models::LoadFormat::kDummy;
  const double t_load = Now();
  auto loaded = hw::engine::LoadModel(model_path, options, *backend);
  if (!loaded.ok()) return fail(loaded.status().message());
  const auto& mc = loaded->model->config();
  hw::engine::EngineConfig config;
  config.max_model_len = context + tokens;
  config.max_num_batched_tokens = chunk;
  config.max_num_seqs = 64;
  config.page_size = 16;
  config.cpu_kv_bytes = int64_t{cpu_kv_gb} << 30;
  config.enforce_eager = enforce_eager;
  config.enable_prefix_caching = false;
  config.arms = {{"dense", "", 1.0}, {"offload", policy, 1.0}};
  const double page_bytes = 2.0 * config.page_size * mc.head_dim *
                            static_cast<double>(hw::DTypeSize(backend->kv_dtype()));
  auto engine = hw::engine::Engine::Start(std::move(loaded).value(), std::move(backend), config);
  if (!engine.ok()) return fail(engine.status().ToString());
  Emit(fmt::format(R"({{"kind": "setup", "model": "{}", "policy": "{}", "context": {}, )"
                   R"("layers": {}, "kv_heads": {}, "head_dim": {}, "load_s": {:.1f}, )"
                   R"("pool_pages": {}, "host_budget_limited": {}}})",
                   model_path, policy, context, mc.num_layers, mc.num_kv_heads, mc.head_dim,
                   Now() - t_load, (*engine)->Stats().kv_pages_total,
                   (*engine)->limits(1).host_limited));
  // A short warm-up request per arm: graph capture and first-touch allocations are not timed.
  for (int arm : {0, 1}) RunBatch(**engine, arm, 1, 256, 4, 99);
  uint32_t next_seed = static_cast<uint32_t>(seed);
  for (int b : hw::bench::ParseIntList(dense_batches_s)) {
    Emit(Report(RunBatch(**engine, 0, b, context, tokens, next_seed), "dense", b, context, tokens,
                page_bytes));
    next_seed += 1000;
  }
  for (int b : hw::bench::ParseIntList(batches_s)) {
    Emit(Report(RunBatch(**engine, 1, b, context, tokens, next_seed), "offload", b, context, tokens,
                page_bytes));
    next_seed += 1000;
  }
  return 0;
}
