// `headwise eval MODEL`: the long-context quality harness (eval/): RULER-style tasks at several
// lengths and depths, run batched through one engine whose A/B arms are the policies compared,
// scored with Wilson intervals, plus the teacher-forced log-likelihood of a natural document.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/file_io.h"
#include "engine/arms.h"
#include "engine/attention_setup.h"
#include "engine/engine.h"
#include "eval/engine_run.h"
#include "eval/haystack.h"
#include "eval/kv_footprint.h"
#include "eval/log_likelihood.h"
#include "eval/report.h"
#include "eval/tasks.h"
#include "tokenizer/chat_renderer.h"
#include "tools/commands.h"
#include "tools/engine_flags.h"
#include "tools/flags.h"

namespace headwise::tools {
namespace {

constexpr const char* kUsage = R"(usage: headwise eval MODEL --out PREFIX [options]
       headwise eval --merge A.json,B.json,... --out PREFIX

Long-context quality of attention policies (eval/tasks.h): RULER-style tasks (Hsieh et al.
2024) in a natural-text haystack, every policy on the same prompts as an A/B arm of one engine,
batched, greedy. Writes PREFIX.json (everything, every answer) and PREFIX.md (tables): accuracy
per (policy, task, length) and per depth with Wilson 95% intervals, the difference to the first
policy with a paired interval (flagged where the first is below 50%), per policy the KV bytes one
sequence holds, its wall time and speeds, and the teacher-forced log-likelihood of the haystack's
opening per position bucket.

  --policies NAME=FILE,...    policies to compare, the first the reference; NAME alone or NAME=
                              is the model's own policy (dense for a GGUF file)
  --arms FILE                 or a headwise-arms/v1 file (configs/README.md); weights ignored
  --tasks LIST                niah_single,niah_single_uuid,niah_multikey,niah_multivalue,vt
                              (default: all)
  --lengths LIST              prompt + answer lengths in tokens (default 4096,8192,16384,32768)
  --depths LIST|N             depths of the asked needle in [0, 1], or N evenly spaced
                              (default 5: 0,0.25,0.5,0.75,1); sample i gets depth i mod N
  --samples N                 samples per (task, length) (default 50)
  --seed N                    seed of the prompts (default 1): the same seed, the same prompts
  --max-new-tokens N          tokens to generate (default: per task, 24 to 64)
  --haystack FILE             filler text (default: scripts/make-haystack.sh's cached file)
  --prompt-form chat|raw      chat: the task as a user message in the model's chat template
                              (default); raw: the text, a newline and the answer prefix
  --loglik-tokens N           tokens of the log-likelihood document (default: the longest
                              length; 0: none)
  --loglik-chunk N            its prefill chunk (default: --max-num-batched-tokens)
  --loglik-bucket N           first position bucket; later ones double (default 1024)
  --max-in-flight N           requests submitted at once (default 4 x --max-num-seqs)
  --warmup N                  the first N prompts run under the first policy before any timing,
                              untimed (default 8; 0 with --prefix-caching, whose cache they
                              would fill): the engine's one-time costs stay out of the speeds
  --prefix-caching            reuse the KV of shared prompt prefixes (default off: every policy
                              computes its prompts itself, so its wall time is its own)
  --commit TEXT               commit to report (default: git describe of the current directory)
  --out PREFIX                write PREFIX.json and PREFIX.md (required)
  --merge A.json,...          merge results of runs over other tasks or lengths instead
 engine (as headwise serve):
  --device cpu|cuda  --threads N  --max-model-len N  --max-num-seqs N  --max-num-batched-tokens N
  --kv-cache-memory BYTES  --cpu-kv-memory BYTES  --num-kv-pages N  --gpu-memory-utilization F
  --tensor-parallel-size N  --enforce-eager
  --tokenizer PATH
)";

int Fail(const Status& s) {
  std::fprintf(stderr, "headwise: error: %s\n", s.message().c_str());
  std::fflush(stderr);
  return s.code() == StatusCode::kInternal ? 1 : 2;
}

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// The first line a command prints, "" when it fails.
std::string CommandOutput(const std::string& command) {
  std::string out;
  if (FILE* p = popen(command.c_str(), "r")) {
    std::array<char, 512> buf{};
    if (std::fgets(buf.data(), buf.size(), p)) out = buf.data();
    pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::string DeviceName(const std::string& device) {
  if (device == "cuda") {
    const std::string gpu =
        CommandOutput("nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null");
    return gpu.empty() ? "cuda" : "cuda (" + gpu + ")";
  }
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      return fmt::format("cpu ({}, {} threads)", line.substr(line.find(':') + 2),
                         std::thread::hardware_concurrency());
    }
  }
  return device;
}

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string CommandLine(int argc, char** argv) {
  std::string out = "headwise";
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    const bool plain = !a.empty() && a.find_first_of(" \t\n'\"\\$`|&;<>()*?") == std::string::npos;
    out += ' ';
    out += plain ? a : "'" + a + "'";
  }
  return out;
}

StatusOr<std::vector<double>> ParseDepths(const std::string& s) {
  std::vector<double> out;
  if (s.find(',') == std::string::npos && s.find('.') == std::string::npos) {
    HW_ASSIGN_OR_RETURN(const int64_t n, ParseInt(s));
    if (n < 1 || n > 1000) return InvalidArgument("--depths: a count in [1, 1000], got {}", n);
    if (n == 1) return std::vector<double>{0.5};
    for (int64_t i = 0; i < n; ++i)
      out.push_back(static_cast<double>(i) / static_cast<double>(n - 1));
    return out;
  }
  for (const std::string& x : SplitList(s)) {
    auto v = ParseFloat(x);
    if (!v.ok() || *v < 0 || *v > 1)
      return InvalidArgument("--depths takes values in [0, 1], got '{}'", x);
    out.push_back(*v);
  }
  if (out.empty()) return InvalidArgument("--depths is empty");
  return out;
}

int RunMerge(const std::string& files, const std::string& out_prefix) {
  std::vector<eval::EvalResults> runs;
  for (const std::string& path : SplitList(files)) {
    auto text = ReadSmallFile(path, size_t{1} << 30, "eval results file");
    if (!text.ok()) return Fail(text.status());
    nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
    if (j.is_discarded()) return Fail(InvalidArgument("{}: not JSON", path));
    auto r = eval::FromJson(j);
    if (!r.ok()) return Fail(r.status().WithContext(path));
    runs.push_back(std::move(r).value());
  }
  auto merged = eval::Merge(std::move(runs));
  if (!merged.ok()) return Fail(merged.status());
  if (Status s = eval::WriteReport(*merged, out_prefix); !s.ok()) return Fail(s);
  std::printf("wrote %s.json and %s.md\n", out_prefix.c_str(), out_prefix.c_str());
  return 0;
}

}  // namespace

int RunEval(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  std::vector<char*> args(argv, argv + argc);
  const std::string model_path = TakeLeadingArgument(args);
  FlagParser flags(static_cast<int>(args.size()), args.data());
  if (flags.Has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  EngineFlags engine_flags;
  engine_flags.config.enable_prefix_caching = false;
  engine_flags.Register(flags);
  std::string policies_s, arms_path, tasks_s, lengths_s = "4096,8192,16384,32768", depths_s = "5",
                                              haystack_path, form = "chat", out_prefix, commit,
                                              merge;
  int samples = 50, max_new_tokens = 0, loglik_tokens = -1, loglik_chunk = 0, loglik_bucket = 1024,
      max_in_flight = 0, warmup = 8;
  int64_t seed = 1;
  bool prefix_caching = false;
  flags.String("policies", policies_s);
  flags.String("arms", arms_path);
  flags.String("tasks", tasks_s);
  flags.String("lengths", lengths_s);
  flags.String("depths", depths_s);
  flags.Int("samples", samples);
  flags.Int64("seed", seed);
  flags.Int("max-new-tokens", max_new_tokens);
  flags.String("haystack", haystack_path);
  flags.String("prompt-form", form);
  flags.Int("loglik-tokens", loglik_tokens);
  flags.Int("loglik-chunk", loglik_chunk);
  flags.Int("loglik-bucket", loglik_bucket);
  flags.Int("max-in-flight", max_in_flight);
  flags.Int("warmup", warmup);
  flags.Bool("prefix-caching", prefix_caching);
  flags.String("commit", commit);
  flags.String("out", out_prefix);
  flags.String("merge", merge);
  if (Status s = flags.Finish(); !s.ok()) return Fail(s);
  if (Status s = engine_flags.Finish(); !s.ok()) return Fail(s);
  if (out_prefix.empty()) return Fail(InvalidArgument("--out PREFIX is required"));
  if (!merge.empty()) {
    if (!model_path.empty()) return Fail(InvalidArgument("--merge takes no MODEL"));
    return RunMerge(merge, out_prefix);
  }
  if (model_path.empty()) {
    return Fail(InvalidArgument("expected MODEL as the first argument (see headwise eval --help)"));
  }
  engine::EngineConfig& config = engine_flags.config;
  config.enable_prefix_caching = prefix_caching;
  if (samples < 1) return Fail(InvalidArgument("--samples must be >= 1, got {}", samples));
  if (max_new_tokens < 0) return Fail(InvalidArgument("--max-new-tokens must be >= 0"));
  if (warmup < 0) return Fail(InvalidArgument("--warmup must be >= 0, got {}", warmup));
  if (loglik_bucket < 1) return Fail(InvalidArgument("--loglik-bucket must be >= 1"));
  if (form != "chat" && form != "raw") {
    return Fail(InvalidArgument("--prompt-form must be chat or raw, got '{}'", form));
  }

  // Policies: --policies NAME=FILE,... or an arms file, one arm each.
  std::vector<engine::Arm> arms;
  if (!arms_path.empty() && !policies_s.empty()) {
    return Fail(InvalidArgument("--policies and --arms exclude each other"));
  }
  if (!arms_path.empty()) {
    auto loaded_arms = engine::LoadArmsFile(arms_path);
    if (!loaded_arms.ok()) return Fail(loaded_arms.status().WithContext("--arms"));
    arms = loaded_arms->arms;
  } else {
    for (const std::string& entry : SplitList(policies_s.empty() ? "dense" : policies_s)) {
      const size_t eq = entry.find('=');
      engine::Arm arm;
      arm.name = entry.substr(0, eq);
      if (eq != std::string::npos) arm.policy_path = entry.substr(eq + 1);
      if (arm.name.empty())
        return Fail(InvalidArgument("--policies entries are NAME=FILE: '{}'", entry));
      arms.push_back(arm);
    }
  }
  for (engine::Arm& a : arms) a.weight = 1.0;

  std::vector<eval::TaskInfo> tasks;
  if (tasks_s.empty()) {
    tasks = eval::AllTasks();
  } else {
    for (const std::string& name : SplitList(tasks_s)) {
      auto t = eval::FindTask(name);
      if (!t.ok()) return Fail(t.status().WithContext("--tasks"));
      tasks.push_back(*t);
    }
  }
  std::vector<int> lengths;
  for (const std::string& x : SplitList(lengths_s)) {
    auto v = ParseInt(x);
    if (!v.ok() || *v < 1 || *v > (1 << 24)) {
      return Fail(InvalidArgument("--lengths takes positive token counts, got '{}'", x));
    }
    lengths.push_back(static_cast<int>(*v));
  }
  if (lengths.empty()) return Fail(InvalidArgument("--lengths is empty"));
  auto depths = ParseDepths(depths_s);
  if (!depths.ok()) return Fail(depths.status());

  if (haystack_path.empty()) {
    const char* cache = std::getenv("XDG_CACHE_HOME");
    const char* home = std::getenv("HOME");
    haystack_path =
        (cache && *cache ? std::string(cache) : std::string(home ? home : ".") + "/.cache") +
        "/headwise/haystack/austen.txt";
  }
  auto haystack = eval::Haystack::Load(haystack_path);
  if (!haystack.ok()) {
    return Fail(
        haystack.status().WithContext("--haystack (scripts/make-haystack.sh builds the default)"));
  }

  std::fprintf(stderr, "loading %s on %s\n", model_path.c_str(), engine_flags.device.c_str());
  auto loaded = LoadModelOnBackend(model_path, engine_flags);
  if (!loaded.ok()) return Fail(loaded.status());
  engine::RankGroup ranks = std::move(loaded->ranks);
  engine::LoadedModel model = std::move(loaded->model);
  const models::ModelConfig& mc = model.model->config();
  const int context = config.max_model_len > 0 ? config.max_model_len : mc.max_position_embeddings;
  for (int l : lengths) {
    if (l > context) {
      return Fail(
          InvalidArgument("--lengths: {} is over the context served ({} tokens; "
                          "--max-model-len)",
                          l, context));
    }
  }
  const tokenizer::Tokenizer& tok = *model.tokenizer;
  std::unique_ptr<tokenizer::ChatRenderer> chat;
  if (form == "chat") {
    auto r = tokenizer::ChatRenderer::ForTokenizer(model.chat_template, tok);
    if (!r.ok()) return Fail(r.status());
    if (!(*r)->has_template()) {
      return Fail(InvalidArgument("{}: no chat template; pass --prompt-form raw", model_path));
    }
    chat = std::move(r).value();
  }

  // The prompts, shared by every policy; built on all cores (each sample from its own seed).
  const double t_prompts =
      std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  const eval::TaskBuilder builder(*haystack, tok, chat.get());
  struct Work {
    eval::TaskInfo task;
    int length, index;
  };
  std::vector<Work> work;
  for (const eval::TaskInfo& t : tasks)
    for (int l : lengths)
      for (int i = 0; i < samples; ++i) work.push_back({t, l, i});
  std::vector<eval::Sample> prompts(work.size());
  std::vector<Status> errors(work.size());
  {
    std::atomic<size_t> next{0};
    const unsigned n_threads = std::max(1u, std::min(32u, std::thread::hardware_concurrency()));
    std::vector<std::thread> pool;
    for (unsigned w = 0; w < n_threads; ++w) {
      pool.emplace_back([&] {
        for (size_t k; (k = next.fetch_add(1)) < work.size();) {
          const Work& wk = work[k];
          const double depth = (*depths)[static_cast<size_t>(wk.index) % depths->size()];
          auto s = builder.Build(wk.task, wk.length,
                                 max_new_tokens > 0 ? max_new_tokens : wk.task.max_new_tokens,
                                 depth, static_cast<uint64_t>(seed), wk.index);
          if (s.ok()) {
            prompts[k] = std::move(s).value();
          } else {
            errors[k] = s.status();
          }
        }
      });
    }
    for (std::thread& t : pool) t.join();
  }
  for (const Status& s : errors)
    if (!s.ok()) return Fail(s);
  const std::string prompts_hash = eval::PromptsHash(prompts);
  std::fprintf(
      stderr, "%zu prompts built in %.1f s; prompts hash %s\n", prompts.size(),
      std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count() -
          t_prompts,
      prompts_hash.c_str());

  eval::EvalResults results;
  eval::RunHeader& h = results.header;
  h.model = model_path;
  h.weights_hash = fmt::format("{:016x}", model.model->weights_hash());
  {
    size_t bytes = 0;
    if (auto fd = OpenRegularFile(model_path, &bytes); fd.ok()) {
      close(*fd);
      h.model_bytes = static_cast<int64_t>(bytes);
    }
  }
  h.device = DeviceName(engine_flags.device);
  h.commit = !commit.empty() ? commit : CommandOutput("git describe --always --dirty 2>/dev/null");
  if (h.commit.empty()) h.commit = "unknown";
  h.command = CommandLine(argc, argv);
  h.date = UtcNow();
  h.seed = static_cast<uint64_t>(seed);
  h.haystack = haystack_path;
  h.prompt_form = form;
  h.prompts_hash = prompts_hash;
  h.max_model_len = context;
  h.max_num_seqs = config.max_num_seqs;
  h.max_num_batched_tokens = config.max_num_batched_tokens;
  h.lengths = lengths;
  h.depths = *depths;
  for (const eval::TaskInfo& t : tasks) h.tasks.emplace_back(t.name);
  h.samples = samples;
  h.warmup = prefix_caching ? 0 : std::min(warmup, static_cast<int>(prompts.size()));
  for (const eval::Sample& s : prompts) {
    results.samples.push_back({s.task, s.length, s.index, s.depth, s.needle_depth,
                               static_cast<int>(s.prompt_ids.size()), s.query, s.expected});
  }

  // Per policy, before the engine takes the model: its KV bytes at each length, and the
  // teacher-forced log-likelihood on a cache of its own (freed before the engine's pool).
  if (loglik_tokens < 0) {
    // The log-likelihood pass runs on one rank (eval::ScoreTokens): off by default over several.
    loglik_tokens = ranks.size() > 1 ? 0 : *std::max_element(lengths.begin(), lengths.end());
  }
  if (loglik_tokens > 0 && ranks.size() > 1) {
    return Fail(InvalidArgument(
        "--loglik-tokens: the log-likelihood pass runs on one rank, not --tensor-parallel-size {}",
        ranks.size()));
  }
  if (loglik_chunk <= 0) loglik_chunk = config.max_num_batched_tokens;
  std::vector<int32_t> document;
  if (loglik_tokens > 0) {
    if (loglik_tokens > context) {
      return Fail(InvalidArgument("--loglik-tokens {} is over the context served ({})",
                                  loglik_tokens, context));
    }
    // Bytes enough for the tokens (no token is longer than 64 bytes of this text in practice).
    const std::string& text = haystack->text();
    document = tok.Encode(
        std::string_view(text).substr(0, std::min<size_t>(text.size(), size_t(loglik_tokens) * 64)),
        true);
    if (static_cast<int>(document.size()) < loglik_tokens) {
      return Fail(InvalidArgument("the haystack has only {} tokens, --loglik-tokens {}",
                                  document.size(), loglik_tokens));
    }
    document.resize(static_cast<size_t>(loglik_tokens));
  }
  const kvcache::KvCacheConfig kv_shape =
      engine::KvConfigFor(mc, 0, config.page_size, config.max_num_batched_tokens);
  const DType kv_dtype = model.model->backend().kv_dtype();
  for (const engine::Arm& arm : arms) {
    eval::PolicyRecord rec;
    rec.name = arm.name;
    rec.file = arm.policy_path;
    const std::string path =
        arm.policy_path.empty() ? engine::ModelPolicyFile(model.path) : arm.policy_path;
    auto policy = engine::LoadAttentionPolicy(path, mc, model.path, model.model->weights_hash());
    if (!policy.ok()) return Fail(policy.status().WithContext(fmt::format("policy {}", arm.name)));
    auto layout = engine::KvLayoutFor(*policy);
    if (!layout.ok()) return Fail(layout.status().WithContext(fmt::format("policy {}", arm.name)));
    for (int l : lengths) {
      rec.kv_bytes.emplace_back(l, eval::KvBytesHeld(*layout, kv_shape, kv_dtype, l));
      rec.kv_retained.emplace_back(l, eval::KvBytesRetained(*layout, kv_shape, kv_dtype, l));
    }
    if (!document.empty()) {
      const auto t0 = std::chrono::steady_clock::now();
      auto lp = eval::ScoreTokens(*model.model, model.model->backend(), *policy, document,
                                  loglik_chunk, engine_flags.threads);
      if (!lp.ok())
        return Fail(lp.status().WithContext(fmt::format("log-likelihood, policy {}", arm.name)));
      rec.loglik = eval::Buckets(*lp, loglik_bucket);
      rec.loglik_chunk = loglik_chunk;
      double sum = 0;
      for (double x : *lp) sum += x;
      std::fprintf(stderr, "log-likelihood %s: %zu tokens, mean %.4f, %.1f s\n", arm.name.c_str(),
                   lp->size(), sum / static_cast<double>(lp->size()),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    results.policies.push_back(std::move(rec));
  }

  config.arms = arms;
  if (max_in_flight <= 0) max_in_flight = 4 * config.max_num_seqs;
  config.max_waiting = std::max(config.max_waiting, max_in_flight);
  auto engine = engine::Engine::Start(std::move(model), std::move(ranks), config);
  if (!engine.ok()) return Fail(InFlagTerms(engine.status()));
  std::fprintf(stderr, "engine: max_model_len %d, %d KV pages, %d sequences at once\n",
               (*engine)->limits().max_model_len, (*engine)->Stats().kv_pages_total,
               config.max_num_seqs);
  if (h.warmup > 0) {
    const std::vector<eval::Sample> first(prompts.begin(), prompts.begin() + h.warmup);
    auto run = eval::RunSamples(**engine, 0, first, max_in_flight, nullptr);
    if (!run.ok()) return Fail(run.status().WithContext("warm-up"));
    std::fprintf(stderr, "warm-up: %d requests under %s, %.1f s (not counted)\n", h.warmup,
                 arms.front().name.c_str(), run->wall_s);
  }
  for (size_t a = 0; a < arms.size(); ++a) {
    const engine::ArmInfo& info = (*engine)->arms()[a];
    eval::PolicyRecord& rec = results.policies[a];
    rec.engine_policy = info.policy;
    rec.hash = info.policy_hash;
    std::fprintf(stderr, "policy %s (%s, %s): %zu requests\n", rec.name.c_str(),
                 info.policy.c_str(), info.policy_hash.c_str(), prompts.size());
    size_t last_pct = 0;
    auto run = eval::RunSamples(
        **engine, static_cast<int>(a), prompts, max_in_flight, [&](size_t done, size_t total) {
          const size_t pct = done * 10 / total;
          if (pct == last_pct) return;
          last_pct = pct;
          std::fprintf(stderr, "  %s: %zu/%zu\n", rec.name.c_str(), done, total);
        });
    if (!run.ok()) return Fail(run.status().WithContext(fmt::format("policy {}", rec.name)));
    rec.wall_s = run->wall_s;
    rec.prompt_tokens = run->prompt_tokens;
    rec.generated_tokens = run->generated_tokens;
    rec.decode_s = run->decode_s;
    rec.decode_tokens = run->decode_tokens;
    rec.compaction_s = run->compaction_s;
    results.outcomes.push_back(std::move(run->outcomes));
    std::fprintf(stderr, "  %s: %.1f s, %.0f prompt tok/s\n", rec.name.c_str(), rec.wall_s,
                 rec.wall_s > 0 ? static_cast<double>(rec.prompt_tokens) / rec.wall_s : 0.0);
  }
  engine->reset();

  if (Status s = eval::WriteReport(results, out_prefix); !s.ok()) return Fail(s);
  std::printf("prompts hash: %s\n", prompts_hash.c_str());
  for (const eval::Cell& c : eval::Cells(results, false)) {
    std::printf("%-12s %-18s %6d  %5.1f%% (%d/%d)\n", results.policies[c.policy].name.c_str(),
                c.task.c_str(), c.length, 100.0 * c.accuracy(), c.correct, c.n);
  }
  std::printf("wrote %s.json and %s.md\n", out_prefix.c_str(), out_prefix.c_str());
  return 0;
}

}  // namespace headwise::tools
