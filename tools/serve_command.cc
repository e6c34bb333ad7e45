// `headwise serve MODEL`: the OpenAI-compatible HTTP server over one engine.
#include <fmt/ranges.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "core/file_io.h"
#include "core/metrics.h"
#include "engine/engine.h"
#include "engine/generation_config.h"
#include "engine/model_loader.h"
#include "kernels/backend_factory.h"
#include "server/grpc_server.h"
#include "server/http_server.h"
#include "tokenizer/chat_renderer.h"
#include "tools/commands.h"
#include "tools/engine_flags.h"
#include "tools/flags.h"

namespace headwise::tools {
namespace {

constexpr const char* kServeUsage = R"(usage: headwise serve MODEL [options]    (or --model MODEL)

Serves MODEL (a Hugging Face directory or a .gguf file) over the OpenAI HTTP API:
/v1/completions, /v1/chat/completions, /v1/models, /v1/arms, /tokenize, /detokenize, /health,
/metrics.

  --host HOST                 address to listen on (default 127.0.0.1)
  --port N                    port (default 8000; 0 picks a free one, printed at startup)
  --grpc-port N               also serve the gRPC API (proto/headwise/v1/headwise.proto) on
                              this port of --host (0 picks a free one, printed at startup);
                              off unless given
  --served-model-name NAME    name clients use as "model" (repeatable; default: MODEL)
  --api-key KEY               require "Authorization: Bearer KEY" on /v1 routes
                              (default: $HEADWISE_API_KEY)
  --max-model-len N           context length (default: the model's)
  --max-num-seqs N            sequences running at once (default 64)
  --max-num-batched-tokens N  tokens per engine step (default 2048)
  --max-waiting N             queued requests beyond this get 503 (default 1024)
  --kv-cache-memory BYTES     KV cache budget, e.g. 512M or 2G
  --cpu-kv-memory BYTES       host memory for offload heads' KV and indexes (RetrievalAttention
                              policies; default: half of the machine's memory)
  --num-kv-pages N            KV pages of 16 tokens per (layer, KV head); overrides the budget
  --gpu-memory-utilization F  share of GPU memory for weights, activations and KV (default 0.9)
  --no-prefix-caching         do not reuse the KV of shared prompt prefixes
  --attention-policy FILE     attn-policy/v1 file (configs/README.md); default: dense
  --arms FILE                 A/B arms: several attention policies in one engine, a request's
                              arm picked by its X-Headwise-Arm-Key header or "user" field
                              (headwise-arms/v1 file, configs/README.md); not with
                              --attention-policy
  --chat-template FILE        Jinja chat template instead of the model's
  --generation-config auto|vllm|FOLDER
                              default sampling parameters of requests that omit them: auto
                              (default): the model's generation_config.json (beside a .gguf
                              file); vllm: none, the engine's own; or FOLDER's
                              generation_config.json (its max_new_tokens also caps max_tokens)
  --override-generation-config JSON
                              applied on top, e.g. '{"temperature": 0.2, "top_p": 0.9}'; keys:
                              temperature, top_p, top_k, min_p, repetition_penalty,
                              max_new_tokens (which also caps max_tokens); null removes one
  --device cpu|cuda           backend (default cpu)
  --enforce-eager             run decode steps eagerly instead of replaying CUDA graphs
  --threads N                 CPU threads (default: all)
  --tensor-parallel-size N    shard the model over N devices (default 1): N GPUs of this host
                              (NCCL), or N CPU ranks; attention and KV heads, MLP columns and
                              the vocabulary split N ways (N must divide the KV heads)
  --load-format auto|dummy    dummy: seeded random weights from config.json alone
  --seed N                    seed of dummy weights (default 0)
  --tokenizer PATH            tokenizer to use instead of the model's own
  --max-body-bytes BYTES      request body limit, as sent and as inflated (default 16M)
  --max-connections N         open connections; beyond it: 503 and close (default 4096)
  --http-threads N            threads that parse requests and tokenize prompts (default 8);
                              connections and streams take no thread of their own
  --header-timeout S          a request's head must arrive within S seconds (default 10)
  --body-timeout S            longest pause inside a request body (default 30)
  --keep-alive-timeout S      idle connections close after S seconds (default 5)
  --shutdown-timeout S        on SIGTERM/SIGINT, running requests get S seconds to end and
                              be written before connections are cut (default 5); a second
                              signal exits at once
)";

int Fail(const Status& s) {
  std::fprintf(stderr, "headwise: error: %s\n", s.message().c_str());
  std::fflush(stderr);
  return s.code() == StatusCode::kInternal ? 1 : 2;
}

std::mutex g_server_mu;
server::HttpServer* g_server = nullptr;  // guarded by g_server_mu

// SIGINT/SIGTERM are blocked in every thread and taken here, so that no engine or HTTP thread
// is interrupted mid-step: the first signal stops the server gracefully, a second one exits.
void SignalLoop(sigset_t set) {
  int count = 0;
  while (true) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    spdlog::info("signal {}: shutting down", sig);
    if (++count > 1) std::_Exit(1);
    std::lock_guard<std::mutex> lock(g_server_mu);
    if (g_server == nullptr) std::_Exit(0);  // still loading: nothing to drain
    g_server->Stop();
  }
}

}  // namespace

int RunServe(int argc, char** argv) {
  // Before any thread exists, so that every thread inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is an error return, not a kill

  spdlog::set_default_logger(spdlog::stderr_color_mt("headwise"));
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  spdlog::set_level(spdlog::level::info);

  // MODEL comes first, as in `vllm serve MODEL [options]`; the flag parser takes the rest.
  std::vector<char*> args(argv, argv + argc);
  std::string model_path = TakeLeadingArgument(args);
  FlagParser flags(static_cast<int>(args.size()), args.data());
  if (flags.Has("help")) {
    std::fputs(kServeUsage, stdout);
    return 0;
  }
  server::ServerOptions options;
  engine::EngineConfig config;
  std::string chat_template_path, device = "cpu", load_format = "auto", tokenizer_path, kv_memory,
                                  body_limit, api_key, arms_path;
  std::vector<std::string> names;
  bool no_prefix_caching = false, enforce_eager = false;
  int threads = 0, tensor_parallel_size = 1;
  int64_t seed = 0;
  std::string model_flag;
  flags.String("model", model_flag);
  server::http::TransportOptions& transport = options.transport;
  flags.String("host", transport.host);
  flags.Int("port", transport.port);
  int grpc_port = -1;  // off
  flags.Int("grpc-port", grpc_port);
  flags.StringList("served-model-name", names);
  flags.String("api-key", api_key);
  flags.Int("max-model-len", config.max_model_len);
  flags.Int("max-num-seqs", config.max_num_seqs);
  flags.Int("max-num-batched-tokens", config.max_num_batched_tokens);
  flags.Int("max-waiting", config.max_waiting);
  flags.String("kv-cache-memory", kv_memory);
  std::string cpu_kv_memory;
  flags.String("cpu-kv-memory", cpu_kv_memory);
  flags.Int("num-kv-pages", config.num_kv_pages);
  float gpu_memory_utilization = static_cast<float>(config.gpu_memory_utilization);
  flags.Float("gpu-memory-utilization", gpu_memory_utilization);
  config.gpu_memory_utilization = gpu_memory_utilization;
  flags.Bool("no-prefix-caching", no_prefix_caching);
  flags.String("attention-policy", config.attention_policy);
  flags.String("arms", arms_path);
  flags.String("chat-template", chat_template_path);
  engine::GenerationConfigFlags generation_flags;
  flags.String("generation-config", generation_flags.generation_config);
  flags.String("override-generation-config", generation_flags.override_generation_config);
  flags.String("device", device);
  flags.Int("threads", threads);
  flags.Int("tensor-parallel-size", tensor_parallel_size);
  flags.String("load-format", load_format);
  flags.Bool("enforce-eager", enforce_eager);
  flags.Int64("seed", seed);
  flags.String("tokenizer", tokenizer_path);
  flags.String("max-body-bytes", body_limit);
  flags.Int("http-threads", transport.worker_threads);
  flags.Int("max-connections", transport.max_connections);
  float header_timeout = 10, body_timeout = 30, keep_alive_timeout = 5, shutdown_timeout = 5;
  flags.Float("header-timeout", header_timeout);
  flags.Float("body-timeout", body_timeout);
  flags.Float("keep-alive-timeout", keep_alive_timeout);
  flags.Float("shutdown-timeout", shutdown_timeout);
  if (Status s = flags.Finish(); !s.ok()) return Fail(s);
  for (const auto& [flag, v, out] :
       {std::tuple{"header-timeout", header_timeout, &transport.header_timeout},
        {"body-timeout", body_timeout, &transport.body_timeout},
        {"keep-alive-timeout", keep_alive_timeout, &transport.keep_alive_timeout},
        {"shutdown-timeout", shutdown_timeout, &options.shutdown_timeout}}) {
    if (!(v > 0.0f && v <= 86400.0f)) {
      return Fail(InvalidArgument("--{} must be in (0, 86400] seconds, got {}", flag, v));
    }
    *out = std::chrono::milliseconds(static_cast<int64_t>(v * 1000.0f));
  }

  if (model_path.empty()) {
    return Fail(
        InvalidArgument("expected MODEL as the first argument (see headwise serve --help)"));
  }
  if (load_format != "auto" && load_format != "dummy") {
    return Fail(InvalidArgument("--load-format must be auto or dummy, got '{}'", load_format));
  }
  if (transport.port < 0 || transport.port > 65535) {
    return Fail(InvalidArgument("--port must be in [0, 65535], got {}", transport.port));
  }
  if (grpc_port < -1 || grpc_port > 65535) {  // -1: not given, off
    return Fail(InvalidArgument("--grpc-port must be in [0, 65535], got {}", grpc_port));
  }
  // The engine's own limits are checked by Engine::Start (InFlagTerms names the flag).
  for (const auto& [flag, v] : {std::pair{"http-threads", transport.worker_threads},
                                {"max-connections", transport.max_connections}}) {
    if (v < 1) return Fail(InvalidArgument("--{} must be >= 1, got {}", flag, v));
  }
  if (!arms_path.empty()) {
    if (!config.attention_policy.empty()) {
      return Fail(InvalidArgument(
          "--arms and --attention-policy exclude each other: give each arm its policy in the "
          "arms file"));
    }
    auto arms = engine::LoadArmsFile(arms_path);
    if (!arms.ok()) return Fail(arms.status().WithContext("--arms"));
    options.arms = *arms;
    config.arms = arms->arms;
  }
  if (!kv_memory.empty()) {
    auto bytes = ParseBytes("kv-cache-memory", kv_memory);
    if (!bytes.ok()) return Fail(bytes.status());
    config.kv_cache_bytes = *bytes;
  }
  if (!cpu_kv_memory.empty()) {
    auto bytes = ParseBytes("cpu-kv-memory", cpu_kv_memory);
    if (!bytes.ok()) return Fail(bytes.status());
    config.cpu_kv_bytes = *bytes;
  }
  if (!body_limit.empty()) {
    auto b = ParseBytes("max-body-bytes", body_limit);
    if (!b.ok()) return Fail(b.status());
    transport.limits.max_body_bytes = static_cast<size_t>(*b);
  }
  // Before the model loads: a bad generation config is refused at once.
  auto generation_defaults = engine::LoadGenerationDefaults(model_path, generation_flags);
  if (!generation_defaults.ok()) return Fail(generation_defaults.status());
  std::string chat_template;
  if (!chat_template_path.empty()) {
    auto text = ReadSmallFile(chat_template_path, kMaxConfigFileBytes, "chat template");
    if (!text.ok()) return Fail(text.status().WithContext("--chat-template"));
    chat_template = std::move(text).value();
  }
  if (api_key.empty()) {
    if (const char* env = std::getenv("HEADWISE_API_KEY"); env && *env) api_key = env;
  }
  options.api_key = api_key;
  options.served_model_names = names.empty() ? std::vector<std::string>{model_path} : names;
  options.model_path = model_path;
  config.enable_prefix_caching = !no_prefix_caching;

  std::thread(SignalLoop, sigs).detach();

  spdlog::info("loading {} ({} weights, {} threads)", model_path, load_format,
               threads > 0 ? std::to_string(threads) : std::string("all"));
  const auto t0 = std::chrono::steady_clock::now();
  auto ranks = engine::CreateRankGroup(device, tensor_parallel_size, threads);
  if (!ranks.ok()) return Fail(InFlagTerms(ranks.status()));
  engine::LoadOptions load;
  load.format = load_format == "dummy" ? models::LoadFormat::kDummy : models::LoadFormat::kAuto;
  load.dummy_seed = static_cast<uint64_t>(seed);
  load.tokenizer_path = tokenizer_path;
  auto loaded = engine::LoadModel(model_path, load, ranks->devices());
  if (!loaded.ok()) return Fail(loaded.status());
  config.enforce_eager = enforce_eager;
  if (!loaded->tokenizer) {
    return Fail(InvalidArgument("{}: no tokenizer found; pass --tokenizer PATH", model_path));
  }
  const auto& mc = loaded->model->config();
  spdlog::info("loaded {} ({}, {} layers, hidden {}, vocab {}) in {:.2f} s", model_path,
               loaded->format, mc.num_layers, mc.hidden_size, mc.vocab_size,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  // The generation config's eos_token_id ends generation too (vLLM adds it to the stop tokens).
  if (Status s = generation_defaults->AddEosTokenIds(mc.vocab_size, loaded->eos_token_ids);
      !s.ok()) {
    return Fail(s);
  }
  spdlog::info("end-of-generation tokens: {}", fmt::join(loaded->eos_token_ids, ", "));
  if (generation_defaults->has_sampling_defaults()) {
    // vLLM says so too: a client that sends nothing samples as the model's makers advise.
    spdlog::info("{}; a request that omits one gets it (--generation-config vllm: none)",
                 generation_defaults->Describe());
  } else {
    spdlog::info("{}: a request that omits one gets the engine's own (temperature 1, top_p 1)",
                 generation_defaults->Describe());
  }
  options.generation_defaults = *generation_defaults;

  // The chat template is checked before the engine starts: a broken one is a startup error.
  if (chat_template.empty()) chat_template = loaded->chat_template;
  auto chat = tokenizer::ChatRenderer::ForTokenizer(chat_template, *loaded->tokenizer);
  if (!chat.ok()) return Fail(chat.status());
  if (!(*chat)->has_template()) {
    spdlog::warn(
        "the model has no chat template: /v1/chat/completions answers 400 "
        "(pass --chat-template FILE)");
  }

  // One registry for the process: the engine's metrics and the server's HTTP counters.
  auto metrics = std::make_shared<MetricsRegistry>();
  auto engine = engine::Engine::Start(std::move(*loaded), std::move(*ranks), config, metrics);
  if (!engine.ok()) return Fail(InFlagTerms(engine.status()));
  spdlog::info("engine started: max_model_len {}, {} KV pages, max {} sequences, prefix caching {}",
               (*engine)->limits().max_model_len, (*engine)->Stats().kv_pages_total,
               config.max_num_seqs, config.enable_prefix_caching ? "on" : "off");
  if (!options.arms.arms.empty()) {
    spdlog::info("{} A/B arms from {}; requests {} name their arm", options.arms.arms.size(),
                 arms_path, options.arms.allow_override ? "may" : "may not");
  }

  int port = 0;
  {
    server::HttpServer http(**engine, **chat, *metrics, options);
    auto bound = http.Bind();
    if (!bound.ok()) return Fail(bound.status());
    port = *bound;
    {
      std::lock_guard<std::mutex> lock(g_server_mu);
      g_server = &http;
    }
    std::printf("headwise: listening on http://%s:%d\n", transport.host.c_str(), port);
    std::unique_ptr<server::GrpcServer> grpc;
    if (grpc_port >= 0) {
      grpc = std::make_unique<server::GrpcServer>(http, *metrics,
                                                  server::GrpcOptions{transport.host, grpc_port});
      auto grpc_bound = grpc->Start();
      if (!grpc_bound.ok()) return Fail(grpc_bound.status());
      std::printf("headwise: gRPC listening on %s:%d\n", transport.host.c_str(), *grpc_bound);
    }
    std::fflush(stdout);
    http.Run();
    if (grpc) grpc->Stop();
    std::lock_guard<std::mutex> lock(g_server_mu);
    g_server = nullptr;
    spdlog::info("HTTP server stopped");
  }
  engine->reset();  // ends the engine thread; unfinished requests end with "abort"
  spdlog::info("shut down cleanly");
  return 0;
}

}  // namespace headwise::tools
