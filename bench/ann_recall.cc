// hw_bench_ann: recall@k of the KV-cache ANN indexes (kvcache/ann: exact search, RoarGraph,
// HNSW) on a real model's keys and queries, per layer (issue 17: "at least 0.9 while scanning at
// most 3% of the keys" on Qwen2.5-Coder-0.5B at 16K-32K).
//
// usage: hw_bench_ann MODEL [--lengths 4096,...] [--device cpu|cuda] [--threads N]
//          [--haystack FILE] [--task niah_multikey] [--depth 0.5] [--seed 1]
//          [--prompt-form chat|raw] [--decode-steps 32] [--train-stride 1] [--prefill-chunk 2048]
//          [--sink 128] [--window 512] [--top-k 100] [--queues 100,128,...] [--efs 100,...]
//          [--mean-ks 100,200] [--no-hnsw] [--group-search] [--layers 0,5,12-23]
//          [--parallel-heads P] [--train-top backend|host]
//          [--target 0.9] [--markdown FILE]
//
// Per length: a prompt of about that many tokens from the long-context harness (eval/tasks.h:
// the task's sample 0 with its needle at --depth, in the haystack of --haystack, in chat form as
// `headwise eval` builds it), prefilled and then decoded greedily for --decode-steps steps with
// bench/ann_capture.h capturing every layer's post-RoPE queries and, at the end, the prompt's
// keys. Then per (layer, KV head), bench/ann_recall_eval.h: indexed keys = the prompt minus its
// first --sink and last --window positions (the static set RetrievalAttention keeps on the GPU);
// truth = exact top --top-k of each decode query over them; RoarGraph (paper parameters, the
// group's prompt queries at every --train-stride-th position as training queries) searched at
// each --queues capacity, HNSW (M 16, ef_construction 200) at each --efs; GQA searched per query
// head, as the union of a group's per-head results, once with the group-mean query at each
// --mean-ks k, and with --group-search as one traversal for the whole group
// (RoarGraph::SearchGroup).
//
// RoarGraph's step 1 (each training query's exact top keys) runs where --train-top says: backend
// (the default with --device cuda) is the engine's way, Backend::TopKeys on the device, one unit
// at a time; host (the default on the CPU) is the build's own CPU search.
//
// Work: the (layer, KV head) units run --parallel-heads at a time (default: the model's KV heads),
// each building and searching on threads / parallel-heads threads; a layer's captures are freed
// once its units are measured. hnswlib searches one query at a time per index.
//
// Output: JSON lines on stdout, flushed as they come (a killed run keeps what it printed):
//   run    per length: prompt, decode, timings, memory of the captures
//   build  per (layer, KV head): keys, training queries, truth / build seconds, graph edges
//   head   per (layer, KV head, index, mode, search_k, setting): recall (mean and min over the
//          test queries and the group's heads), scanned fraction, searches, microseconds each
//   layer  the same, over the layer's KV heads
//   model  the same, over the measured layers
//   reach  per (layer or "all", index, mode, search_k): the smallest setting whose mean recall
//          reaches --target, with its scanned fraction (setting null when none does)
//   done   per length: wall seconds
// and, with --markdown, a summary per length (rewritten after each length): the smallest setting
// reaching the target per layer, and each series' recall and scanned fraction per layer.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/ann_capture.h"
#include "bench/ann_recall_eval.h"
#include "bench/bench_util.h"
#include "engine/model_loader.h"
#include "eval/haystack.h"
#include "eval/tasks.h"
#include "kernels/backend_factory.h"
#include "kernels/host_copy.h"
#include "tokenizer/chat_renderer.h"
#include "tools/flags.h"

namespace hw = headwise;
namespace ann = headwise::bench::ann;
using hw::bench::Emit;
using hw::bench::Now;
using hw::bench::Split;
using Json = nlohmann::ordered_json;

namespace {

std::string DefaultHaystack() {
  const char* cache = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  return (cache && *cache ? std::string(cache) : std::string(home ? home : ".") + "/.cache") +
         "/headwise/haystack/austen.txt";
}

hw::StatusOr<std::vector<size_t>> ParseSizes(const std::string& flag, const std::string& s,
                                             size_t min) {
  std::vector<size_t> out;
  for (const std::string& x : Split(s, ',')) {
    auto v = hw::tools::ParseInt(x);
    if (!v.ok() || *v < static_cast<int64_t>(min)) {
      return hw::InvalidArgument("--{} takes integers >= {}, got '{}'", flag, min, x);
    }
    out.push_back(static_cast<size_t>(*v));
  }
  return out;
}

Json SettingJson(const ann::SettingResult& r) {
  Json j;
  j["index"] = r.index;
  j["mode"] = r.mode;
  j["search_k"] = r.search_k;
  j["setting"] = r.setting;
  j["recall"] = r.recall;
  j["recall_min"] = r.recall_min;
  j["scanned_frac"] = r.scanned_frac;
  j["searches"] = r.searches;
  j["searches_per_step"] = r.searches_per_step;
  if (r.mode == "per_head_union") j["union_size"] = r.union_size;
  j["search_us"] = r.search_us;
  return j;
}

std::string SeriesName(const ann::SettingResult& r) {
  if (r.mode == "group_mean") return fmt::format("{} {} k={}", r.index, r.mode, r.search_k);
  return fmt::format("{} {}", r.index, r.mode);
}

std::string SettingName(const ann::SettingResult& r) {
  if (r.index == "roargraph") return fmt::format("queue {}", r.setting);
  if (r.index == "hnsw") return fmt::format("ef {}", r.setting);
  return "all keys";
}

// "0.912 / 2.10%": mean recall and scanned fraction.
std::string Cell(const ann::SettingResult& r) {
  return fmt::format("{:.3f} / {:.2f}%", r.recall, 100.0 * r.scanned_frac);
}

std::string ReachCell(std::span<const ann::SettingResult> series, double target) {
  if (auto i = ann::FirstReaching(series, target)) {
    return fmt::format("{}: {}", SettingName(series[*i]), Cell(series[*i]));
  }
  // None reaches it: the best recall there was.
  size_t best = 0;
  for (size_t i = 1; i < series.size(); ++i) {
    if (series[i].recall > series[best].recall) best = i;
  }
  return fmt::format("none (best {}: {})", SettingName(series[best]), Cell(series[best]));
}

// Emits the reach rows of one set of settings.
void EmitReach(const Json& base, std::span<const ann::SettingResult> settings, double target) {
  for (auto [b, e] : ann::Series(settings)) {
    const std::span<const ann::SettingResult> series = settings.subspan(b, e - b);
    Json j = base;
    j["kind"] = "reach";
    j["index"] = series[0].index;
    j["mode"] = series[0].mode;
    j["search_k"] = series[0].search_k;
    j["target"] = target;
    if (auto i = ann::FirstReaching(series, target)) {
      j["setting"] = series[*i].setting;
      j["recall"] = series[*i].recall;
      j["scanned_frac"] = series[*i].scanned_frac;
    } else {
      j["setting"] = nullptr;
    }
    Emit(j.dump());
  }
}

struct LengthReport {
  Json run;
  std::vector<int> layers;                                  // measured, ascending
  std::map<int, std::vector<ann::SettingResult>> by_layer;  // mean over KV heads
  std::vector<ann::SettingResult> overall;
  double roar_build_s = 0, hnsw_build_s = 0, truth_s = 0;  // means per KV head
  int unit_threads = 1;
};

std::string Markdown(const std::vector<LengthReport>& reports, double target) {
  std::ostringstream md;
  for (const LengthReport& r : reports) {
    const Json& run = r.run;
    md << fmt::format("## {} tokens: {}\n\n", run["prompt_tokens"].get<int>(),
                      run["model"].get<std::string>());
    md << fmt::format(
        "Prompt: {} (`{}`, depth {}, {} form), {} tokens; {} greedy decode steps, whose queries "
        "are the test queries (answer: {}). Static set: first {} and last {} positions; indexed "
        "keys per KV head: {}. Top-k {}. Training queries per KV head: {} (stride {}). Device "
        "{}.\n\n",
        run["task"].get<std::string>(), run["haystack"].get<std::string>(),
        run["depth"].get<double>(), run["prompt_form"].get<std::string>(),
        run["prompt_tokens"].get<int>(), run["decode_steps"].get<int>(),
        Json(run["generated"].get<std::string>()).dump(), run["sink"].get<int>(),
        run["window"].get<int>(), run["indexed_keys"].get<int>(), run["top_k"].get<int>(),
        run["train_queries_per_kv_head"].get<int>(), run["train_stride"].get<int>(),
        run["device"].get<std::string>());
    md << fmt::format(
        "Time: prefill {:.1f} s, decode {:.1f} s; per KV head (on {} threads): exact truth "
        "{:.2f} s, RoarGraph build {:.2f} s, HNSW build {:.2f} s.\n\n",
        run["prefill_s"].get<double>(), run["decode_s"].get<double>(), r.unit_threads, r.truth_s,
        r.roar_build_s, r.hnsw_build_s);

    // Exact per-head search is recall 1 by definition: left out of the tables (not of the JSON).
    std::vector<std::pair<size_t, size_t>> series;
    for (auto [b, e] : ann::Series(r.overall)) {
      if (r.overall[b].index != "exact" || r.overall[b].mode == "group_mean")
        series.push_back({b, e});
    }
    md << fmt::format("### Smallest setting with mean recall >= {} (recall / scanned)\n\n", target);
    md << "| layer |";
    for (auto [b, e] : series) md << " " << SeriesName(r.overall[b]) << " |";
    md << "\n|---|";
    for (size_t i = 0; i < series.size(); ++i) md << "---|";
    md << "\n";
    auto reach_row = [&](const std::string& name, const std::vector<ann::SettingResult>& s) {
      md << "| " << name << " |";
      for (auto [b, e] : series) {
        md << " " << ReachCell(std::span(s).subspan(b, e - b), target) << " |";
      }
      md << "\n";
    };
    for (int l : r.layers) reach_row(std::to_string(l), r.by_layer.at(l));
    reach_row("all", r.overall);
    md << "\n";

    md << "### Recall / scanned fraction per layer at each setting\n\n";
    for (const auto& [first, last] : series) {
      const size_t b = first, e = last;  // the row lambda below captures them
      if (r.overall[b].index == "exact") continue;
      md << "#### " << SeriesName(r.overall[b]) << "\n\n| layer |";
      for (size_t i = b; i < e; ++i) md << " " << r.overall[i].setting << " |";
      md << "\n|---|";
      for (size_t i = b; i < e; ++i) md << "---|";
      md << "\n";
      auto row = [&](const std::string& name, const std::vector<ann::SettingResult>& s) {
        md << "| " << name << " |";
        for (size_t i = b; i < e; ++i) md << " " << Cell(s[i]) << " |";
        md << "\n";
      };
      for (int l : r.layers) row(std::to_string(l), r.by_layer.at(l));
      row("all", r.overall);
      md << "\n";
    }
    md << "Exact search (every indexed key) with the group-mean query: the ceiling of group_mean "
          "searches; scanned fractions count the inner products (distances for HNSW, upper "
          "layers included, so they can exceed 100%) over the indexed keys.";
    md << "\n\n";
  }
  return md.str();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "usage: hw_bench_ann MODEL [--lengths 4096,...] [...] (see the source)\n");
    return 2;
  }
  const std::string model_path = argv[1];
  hw::tools::FlagParser flags(argc - 1, argv + 1);
  std::string device = "cpu", lengths_s = "4096", haystack_path, task_s = "niah_multikey";
  std::string form = "chat", queues_s, efs_s, mean_ks_s, layers_s, markdown_path;
  int threads = 0, decode_steps = 32, train_stride = 1, prefill_chunk = 2048, sink = 128;
  int window = 512, top_k = 100, parallel_heads = 0;
  int64_t seed = 1;
  float depth = 0.5f;
  std::string target_s = "0.9", train_top_s;
  bool no_hnsw = false, group_search = false;
  flags.String("device", device);
  flags.String("lengths", lengths_s);
  flags.String("haystack", haystack_path);
  flags.String("task", task_s);
  flags.String("prompt-form", form);
  flags.String("queues", queues_s);
  flags.String("efs", efs_s);
  flags.String("mean-ks", mean_ks_s);
  flags.String("layers", layers_s);
  flags.String("markdown", markdown_path);
  flags.Int("threads", threads);
  flags.Int("decode-steps", decode_steps);
  flags.Int("train-stride", train_stride);
  flags.Int("prefill-chunk", prefill_chunk);
  flags.Int("sink", sink);
  flags.Int("window", window);
  flags.Int("top-k", top_k);
  flags.Int("parallel-heads", parallel_heads);
  flags.Int64("seed", seed);
  flags.Float("depth", depth);
  flags.String("target", target_s);
  flags.Bool("no-hnsw", no_hnsw);
  flags.Bool("group-search", group_search);
  flags.String("train-top", train_top_s);
  const auto fail = [](const std::string& what) {
    std::fprintf(stderr, "hw_bench_ann: error: %s\n", what.c_str());
    return 2;
  };
  if (auto s = flags.Finish(); !s.ok()) return fail(s.message());
  if (decode_steps < 1 || train_stride < 1 || prefill_chunk < 1 || top_k < 1 || sink < 0 ||
      window < 0 || parallel_heads < 0) {
    return fail(
        "--decode-steps, --train-stride, --prefill-chunk and --top-k must be >= 1, --sink, "
        "--window and --parallel-heads >= 0");
  }
  if (form != "chat" && form != "raw") return fail("--prompt-form is chat or raw");
  if (depth < 0 || depth > 1) return fail("--depth is in [0, 1]");
  const auto target_v = hw::tools::ParseFloat(target_s);
  if (!target_v.ok() || *target_v <= 0 || *target_v > 1) return fail("--target is in (0, 1]");
  const double target = *target_v;
  auto task = hw::eval::FindTask(task_s);
  if (!task.ok()) return fail(task.status().WithContext("--task").message());
  std::vector<int> lengths;
  for (const std::string& x : Split(lengths_s, ',')) {
    auto v = hw::tools::ParseInt(x);
    if (!v.ok() || *v < 1) return fail("--lengths takes positive token counts, got '" + x + "'");
    lengths.push_back(static_cast<int>(*v));
  }
  if (lengths.empty()) return fail("--lengths is empty");

  ann::SweepOptions sweep;
  sweep.top_k = static_cast<size_t>(top_k);
  sweep.mean_ks = {sweep.top_k, 2 * sweep.top_k};
  sweep.hnsw = !no_hnsw;
  sweep.group_search = group_search;
  for (auto [flag, text, out] :
       {std::tuple{"queues", &queues_s, &sweep.queues}, std::tuple{"efs", &efs_s, &sweep.efs},
        std::tuple{"mean-ks", &mean_ks_s, &sweep.mean_ks}}) {
    if (text->empty()) continue;
    auto v = ParseSizes(flag, *text, 1);
    if (!v.ok()) return fail(v.status().message());
    *out = *v;
    std::sort(out->begin(), out->end());
  }
#ifndef HEADWISE_HAVE_HNSWLIB
  sweep.hnsw = false;
  std::fprintf(stderr, "hw_bench_ann: built without hnswlib: no HNSW baseline\n");
#endif

  if (haystack_path.empty()) haystack_path = DefaultHaystack();
  auto haystack = hw::eval::Haystack::Load(haystack_path);
  if (!haystack.ok()) {
    return fail(haystack.status()
                    .WithContext("--haystack (scripts/make-haystack.sh builds the default)")
                    .message());
  }

  auto created = hw::kernels::CreateBackend(device, threads);
  if (!created.ok()) return fail(created.status().message());
  auto backend = std::move(created).value();
  auto loaded = hw::engine::LoadModel(model_path, {}, *backend);
  if (!loaded.ok()) return fail(loaded.status().message());
  if (train_top_s.empty()) train_top_s = device == "cuda" ? "backend" : "host";
  if (train_top_s != "backend" && train_top_s != "host") {
    return fail("--train-top must be backend or host, got '" + train_top_s + "'");
  }
  std::mutex backend_mu;  // units run in parallel; the backend takes one at a time
  if (train_top_s == "backend") {
    hw::kernels::Backend& be = *backend;
    sweep.train_top = [&be, &backend_mu](const ann::MatrixView& keys, const ann::MatrixView& train,
                                         size_t k) -> hw::StatusOr<std::vector<uint32_t>> {
      std::lock_guard lock(backend_mu);
      const auto rows = static_cast<int64_t>(train.rows), n = static_cast<int64_t>(keys.rows),
                 d = static_cast<int64_t>(keys.dim);
      hw::kernels::Buffer q = be.Allocate(be.activation_dtype(), {rows, d});
      hw::kernels::Buffer kb = be.Allocate(be.kv_dtype(), {n, d});
      hw::kernels::Buffer ids = be.Allocate(hw::DType::kI32, {rows, static_cast<int64_t>(k)});
      std::vector<uint16_t> raw;
      HW_RETURN_IF_ERROR(hw::kernels::CopyFromHostF32(be, q.view(), train.data, raw));
      HW_RETURN_IF_ERROR(hw::kernels::CopyFromHostF32(be, kb.view(), keys.data, raw));
      be.TopKeys(q.view(), kb.view(), ids.view());
      std::vector<int32_t> host(static_cast<size_t>(rows) * k);
      be.CopyToHost(host.data(), ids.view(), host.size() * sizeof(int32_t));
      return std::vector<uint32_t>(host.begin(), host.end());
    };
  }
  auto& model = *loaded->model;
  const auto& c = model.config();
  if (!loaded->tokenizer) return fail(model_path + ": no tokenizer found");
  const auto& tok = *loaded->tokenizer;
  std::unique_ptr<hw::tokenizer::ChatRenderer> chat;
  if (form == "chat") {
    auto r = hw::tokenizer::ChatRenderer::ForTokenizer(loaded->chat_template, tok);
    if (!r.ok()) return fail(r.status().message());
    if (!(*r)->has_template()) return fail(model_path + ": no chat template; --prompt-form raw");
    chat = std::move(r).value();
  }
  const hw::eval::TaskBuilder builder(*haystack, tok, chat.get());

  std::vector<int> layers;
  if (layers_s.empty()) {
    for (int l = 0; l < c.num_layers; ++l) layers.push_back(l);
  } else {
    for (const std::string& x : Split(layers_s, ',')) {
      // A layer or a range "a-b" (both included).
      const size_t dash = x.find('-', 1);
      auto lo = hw::tools::ParseInt(x.substr(0, dash));
      auto hi = dash == std::string::npos ? lo : hw::tools::ParseInt(x.substr(dash + 1));
      if (!lo.ok() || !hi.ok() || *lo < 0 || *hi < *lo || *hi >= c.num_layers) {
        return fail(fmt::format("--layers takes layers or ranges a-b in 0..{}, got '{}'",
                                c.num_layers - 1, x));
      }
      for (int64_t l = *lo; l <= *hi; ++l) layers.push_back(static_cast<int>(l));
    }
    std::sort(layers.begin(), layers.end());
    layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
  }
  const int total_threads =
      threads > 0 ? threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const int units_at_once =
      std::max(1, parallel_heads > 0 ? parallel_heads : std::min(c.num_kv_heads, total_threads));
  const int unit_threads = std::max(1, total_threads / units_at_once);
  sweep.threads = unit_threads;

  std::vector<LengthReport> reports;
  for (int length : lengths) {
    const double t_length = Now();
    auto sample = builder.Build(*task, length, decode_steps, depth, static_cast<uint64_t>(seed), 0);
    if (!sample.ok())
      return fail(sample.status().WithContext(fmt::format("length {}", length)).message());
    const std::vector<int32_t>& prompt = sample->prompt_ids;
    const int L = static_cast<int>(prompt.size());
    const ann::IndexedRange range = ann::IndexedPositions(L, sink, window);
    if (static_cast<size_t>(range.size()) < sweep.top_k) {
      return fail(
          fmt::format("length {}: {} indexed keys (prompt {} - sink {} - window {}) is "
                      "fewer than top-k {}",
                      length, range.size(), L, sink, window, top_k));
    }
    ann::CaptureOptions co;
    co.decode_steps = decode_steps;
    co.train_stride = train_stride;
    co.prefill_chunk = prefill_chunk;
    std::fprintf(stderr, "length %d: prompt %d tokens; captures %.2f GB; prefill and decode...\n",
                 length, L, static_cast<double>(ann::CaptureBytes(c, L, co)) / 1e9);
    auto captured = ann::CaptureRun(model, prompt, co);
    if (!captured.ok()) return fail(captured.status().message());
    ann::RunCapture& run = *captured;
    // Layers not measured are dropped at once.
    for (int l = 0; l < c.num_layers; ++l) {
      if (!std::binary_search(layers.begin(), layers.end(), l)) {
        run.layers[static_cast<size_t>(l)].Release();
      }
    }

    LengthReport report;
    report.layers = layers;
    report.unit_threads = unit_threads;
    Json& rj = report.run;
    rj["kind"] = "run";
    rj["length"] = length;
    rj["model"] = model_path;
    rj["device"] = std::string(backend->name());
    rj["task"] = task->name;
    rj["haystack"] = haystack_path;
    rj["depth"] = depth;
    rj["seed"] = seed;
    rj["prompt_form"] = form;
    rj["prompt_tokens"] = L;
    rj["decode_steps"] = decode_steps;
    rj["generated"] = tok.Decode(run.generated, true);
    rj["expected"] = sample->expected;
    rj["num_layers"] = c.num_layers;
    rj["num_heads"] = c.num_heads;
    rj["num_kv_heads"] = c.num_kv_heads;
    rj["head_dim"] = c.head_dim;
    rj["sink"] = sink;
    rj["window"] = window;
    rj["indexed_keys"] = range.size();
    rj["top_k"] = top_k;
    rj["train_stride"] = train_stride;
    rj["train_queries_per_kv_head"] =
        run.layers.empty() ? 0 : run.group() * ((L + train_stride - 1) / train_stride);
    rj["test_queries_per_kv_head"] = run.group() * decode_steps;
    rj["prefill_s"] = run.prefill_s;
    rj["decode_s"] = run.decode_s;
    rj["keys_s"] = run.keys_s;
    rj["capture_bytes"] = ann::CaptureBytes(c, L, co);
    rj["threads"] = total_threads;
    rj["parallel_heads"] = units_at_once;
    rj["unit_threads"] = unit_threads;
    Emit(rj.dump());
    std::fprintf(stderr, "length %d: prefill %.1f s, decode %.1f s; answer %s\n", length,
                 run.prefill_s, run.decode_s, rj["generated"].dump().c_str());

    // The (layer, KV head) units, measured units_at_once at a time.
    struct Unit {
      int layer, kv_head;
    };
    std::vector<Unit> units;
    for (int l : layers)
      for (int h = 0; h < c.num_kv_heads; ++h) units.push_back({l, h});
    std::vector<ann::HeadResult> results(units.size());
    std::map<int, int> pending;  // layer -> units not finished
    for (const Unit& u : units) ++pending[u.layer];
    std::mutex mu;
    std::atomic<size_t> next{0};
    hw::Status error = hw::Status::Ok();
    auto worker = [&] {
      for (size_t i; (i = next.fetch_add(1)) < units.size();) {
        {
          std::lock_guard<std::mutex> lock(mu);
          if (!error.ok()) return;
        }
        const Unit u = units[i];
        auto r = ann::EvaluateHead(ann::HeadInputFor(run, u.layer, u.kv_head, range), sweep);
        std::lock_guard<std::mutex> lock(mu);
        if (!r.ok()) {
          error = r.status().WithContext(fmt::format("layer {} KV head {}", u.layer, u.kv_head));
          return;
        }
        results[i] = std::move(r).value();
        const ann::HeadResult& hr = results[i];
        Json base;
        base["length"] = length;
        base["layer"] = u.layer;
        base["kv_head"] = u.kv_head;
        Json b = base;
        b["kind"] = "build";
        b["num_keys"] = hr.num_keys;
        b["num_train"] = hr.num_train;
        b["num_tests"] = hr.num_tests;
        b["threads"] = unit_threads;
        b["truth_s"] = hr.truth_s;
        b["roargraph_build_s"] = hr.roar_build_s;
        b["roargraph_edges"] = hr.roar_edges;
        b["hnsw_build_s"] = hr.hnsw_build_s;
        Emit(b.dump());
        for (const ann::SettingResult& s : hr.settings) {
          Json j = base;
          j["kind"] = "head";
          j.update(SettingJson(s));
          Emit(j.dump());
        }
        if (--pending[u.layer] == 0) {
          // The layer is done: its mean over KV heads, and its captures go.
          std::vector<std::vector<ann::SettingResult>> parts;
          for (size_t k = 0; k < units.size(); ++k) {
            if (units[k].layer == u.layer) parts.push_back(results[k].settings);
          }
          auto mean = ann::MeanOver(parts);
          if (!mean.ok()) {
            error = mean.status();
            return;
          }
          Json lb;
          lb["length"] = length;
          lb["layer"] = u.layer;
          for (const ann::SettingResult& s : *mean) {
            Json j = lb;
            j["kind"] = "layer";
            j.update(SettingJson(s));
            Emit(j.dump());
          }
          EmitReach(lb, *mean, target);
          report.by_layer[u.layer] = std::move(mean).value();
          run.layers[static_cast<size_t>(u.layer)].Release();
          std::fprintf(stderr, "length %d: layer %d done (%.0f s)\n", length, u.layer,
                       Now() - t_length);
        }
      }
    };
    std::vector<std::thread> pool;
    for (int w = 1; w < units_at_once; ++w) pool.emplace_back(worker);
    worker();
    for (auto& t : pool) t.join();
    if (!error.ok()) return fail(error.message());

    std::vector<std::vector<ann::SettingResult>> all;
    for (const ann::HeadResult& hr : results) {
      all.push_back(hr.settings);
      report.truth_s += hr.truth_s / static_cast<double>(results.size());
      report.roar_build_s += hr.roar_build_s / static_cast<double>(results.size());
      report.hnsw_build_s += hr.hnsw_build_s / static_cast<double>(results.size());
    }
    auto overall = ann::MeanOver(all);
    if (!overall.ok()) return fail(overall.status().message());
    report.overall = std::move(overall).value();
    Json mb;
    mb["length"] = length;
    for (const ann::SettingResult& s : report.overall) {
      Json j = mb;
      j["kind"] = "model";
      j.update(SettingJson(s));
      Emit(j.dump());
    }
    mb["layer"] = "all";
    EmitReach(mb, report.overall, target);
    Json done;
    done["kind"] = "done";
    done["length"] = length;
    done["wall_s"] = Now() - t_length;
    done["roargraph_build_s_mean"] = report.roar_build_s;
    done["hnsw_build_s_mean"] = report.hnsw_build_s;
    done["truth_s_mean"] = report.truth_s;
    Emit(done.dump());
    reports.push_back(std::move(report));
    if (!markdown_path.empty()) {
      std::ofstream out(markdown_path);
      out << Markdown(reports, target);
      if (!out) return fail("cannot write " + markdown_path);
    }
  }
  if (markdown_path.empty()) std::fputs(Markdown(reports, target).c_str(), stderr);
  return 0;
}
