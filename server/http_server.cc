#include "server/http_server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <mutex>
#include <set>
#include <thread>

#include "engine/engine.h"
#include "server/openai_api.h"
#include "tokenizer/chat_renderer.h"
#include "tokenizer/tokenizer.h"

namespace headwise::server {
namespace {

using Clock = std::chrono::steady_clock;
using http::Exchange;
using std::chrono::milliseconds;

// The pump's longest sleep when no engine event wakes it: a client that disconnects is noticed
// within this (plus one engine step before its pages are free).
constexpr milliseconds kPollInterval{20};
// How long an aborted request may take to report its end before its response is cut.
constexpr std::chrono::seconds kAbortGrace{5};

const std::set<std::string>& KnownRoutes() {
  static const auto* routes = new std::set<std::string>{
      "/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/arms", "/health", "/metrics",
      "/tokenize",       "/detokenize"};
  return *routes;
}

std::string AllowedMethods(const std::string& path) {
  if (path == "/v1/completions" || path == "/v1/chat/completions" || path == "/tokenize" ||
      path == "/detokenize") {
    return "POST";
  }
  return "GET";
}

std::string RouteLabel(const std::string& path) {
  if (KnownRoutes().count(path)) return path;
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{model}";
  return "other";
}

// Routes open without the API key: probes and scrapes from inside the deployment.
bool IsOpenRoute(const std::string& path) {
  return path == "/health" || path == "/metrics";
}

void ReplyJson(Exchange& ex, int status, const Json& body, http::Headers headers = {}) {
  ex.Reply(status, "application/json", DumpJson(body), std::move(headers));
}

void ReplyError(Exchange& ex, const ApiError& e, http::Headers headers = {}) {
  if (e.status == 503) headers.emplace_back("Retry-After", "1");
  ReplyJson(ex, e.status, ErrorBody(e), std::move(headers));
}

ApiError ShuttingDown() {
  return ApiError{503, "the server is shutting down", "server_error", "", ""};
}

int64_t UnixNow() {
  return static_cast<int64_t>(std::time(nullptr));
}

const tokenizer::Tokenizer& TokenizerOf(const engine::Engine& engine) {
  HW_CHECK(engine.tokenizer() != nullptr, "the HTTP server needs an engine with a tokenizer");
  return *engine.tokenizer();
}

// The arms the server assigns: the engine's, with the weights and override setting of the arms
// file (the one-arm case: weight 1, no override).
engine::ArmsConfig ServedArms(const engine::Engine& engine, const engine::ArmsConfig& file) {
  const std::vector<engine::ArmInfo>& arms = engine.arms();
  HW_CHECK(file.arms.empty() || file.arms.size() == arms.size(),
           "the server's arms differ from the engine's");
  engine::ArmsConfig served;
  served.allow_override = file.allow_override;
  for (size_t i = 0; i < arms.size(); ++i) {
    const double weight = file.arms.empty() ? 1.0 : file.arms[i].weight;
    HW_CHECK(file.arms.empty() || file.arms[i].name == arms[i].name,
             "the server's arms differ from the engine's");
    served.arms.push_back(engine::Arm{arms[i].name, arms[i].policy_path, weight});
  }
  return served;
}

// The longest request any arm accepts: what a text prompt is checked against before it is
// tokenized when its arm is not yet known (/tokenize).
int MaxSequenceTokens(const engine::Engine& engine) {
  int most = 0;
  for (size_t a = 0; a < engine.arms().size(); ++a) {
    most = std::max(most, engine.limits(static_cast<int>(a)).max_sequence_tokens);
  }
  return most;
}

// An arm's name as a header value: bytes outside visible ASCII (and '%') percent-encoded, so that
// a policy's name, which names the arm of a one-arm server, cannot break the response head.
std::string HeaderValue(std::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if (c > 0x20 && c < 0x7F && c != '%') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

constexpr const char* kArmHeader = "X-Headwise-Arm";
constexpr std::string_view kArmKeyHeader = "x-headwise-arm-key";  // lower-cased as parsed

// One engine request behind a choice.
struct Child {
  int index = 0;  // the choice index: prompt_index * n + i
  int prompt_index = 0;
  std::unique_ptr<engine::RequestStream> stream;
  bool finished = false;
  engine::FinishReason finish_reason = engine::FinishReason::kStop;  // when finished
  std::string error;
  std::string text;
  std::vector<engine::SampledToken> tokens;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
  // Streaming state.
  bool started = false;
  int64_t text_offset = 0;
  int32_t prev_token = -1;
};

// A whole API request: one child per (prompt, n), and the exchange its answer goes to.
struct Job {
  ApiKind kind = ApiKind::kCompletion;
  std::shared_ptr<Exchange> exchange;
  std::string id;
  int64_t created = 0;
  std::string model;
  GenerationRequest request;
  int arm = 0;                                // every child runs on this arm
  const engine::ArmInfo* arm_info = nullptr;  // the engine's, which outlives the job
  std::vector<std::string> prompt_texts;      // for echo
  std::vector<std::vector<int32_t>> prompt_ids;
  std::vector<Child> children;
  bool aborted = false;
  Clock::time_point abort_time;

  bool AllFinished() const {
    for (const auto& c : children) {
      if (!c.finished) return false;
    }
    return true;
  }
  void AbortAll() {
    if (aborted) return;
    aborted = true;
    abort_time = Clock::now();
    for (auto& c : children) {
      if (!c.finished && c.stream) c.stream->Abort();
    }
  }
};

void Apply(Child& c, const engine::RequestOutput& ev) {
  c.text += ev.text;
  c.tokens.insert(c.tokens.end(), ev.tokens.begin(), ev.tokens.end());
  if (ev.prompt_tokens > 0) c.prompt_tokens = ev.prompt_tokens;
  c.completion_tokens = std::max(c.completion_tokens, ev.completion_tokens);
  c.cached_tokens = std::max(c.cached_tokens, ev.cached_tokens);
  if (ev.finished) {
    c.finished = true;
    c.finish_reason = ev.finish_reason;
    c.error = ev.error;
  }
}

// The children's events that are ready, without waiting.
std::vector<std::pair<size_t, engine::RequestOutput>> Poll(Job& job) {
  std::vector<std::pair<size_t, engine::RequestOutput>> events;
  for (size_t i = 0; i < job.children.size(); ++i) {
    Child& c = job.children[i];
    while (!c.finished) {
      auto ev = c.stream->Next(milliseconds(0));
      if (!ev) break;
      Apply(c, *ev);
      events.emplace_back(i, std::move(*ev));
    }
  }
  return events;
}

UsageInfo JobUsage(const Job& job) {
  UsageInfo u;
  std::vector<bool> counted(job.prompt_ids.size(), false);
  for (const auto& c : job.children) {
    u.completion_tokens += c.completion_tokens;
    if (!counted[c.prompt_index]) {
      counted[c.prompt_index] = true;
      u.prompt_tokens += c.prompt_tokens > 0
                             ? c.prompt_tokens
                             : static_cast<int>(job.prompt_ids[c.prompt_index].size());
      u.cached_tokens += c.cached_tokens;
    }
  }
  return u;
}

// Wakes the pump. Shared with the engine's output callbacks, which may outlive the server.
struct PumpSignal {
  std::mutex mu;
  std::condition_variable cv;
  bool pending = false;
  void Notify() {
    {
      std::lock_guard<std::mutex> lock(mu);
      pending = true;
    }
    cv.notify_one();
  }
};

}  // namespace

class HttpServer::Impl {
 public:
  Impl(engine::Engine& engine, const tokenizer::ChatRenderer& chat, MetricsRegistry& metrics,
       ServerOptions options)
      : engine_(engine),
        limits_(engine.limits()),
        max_sequence_tokens_(MaxSequenceTokens(engine)),
        tok_(TokenizerOf(engine)),
        chat_(chat),
        metrics_(metrics),
        opts_(std::move(options)),
        arms_(ServedArms(engine, opts_.arms)),
        assigner_(arms_) {
    auto& m = metrics_;
    m.DeclareCounter("headwise_http_requests_total",
                     "HTTP requests answered, by route and status code");
    m.DeclareCounter(
        "headwise_api_requests_total",
        "Generation requests accepted by the engine, by API, arm, attention policy and front end");
    m.DeclareCounter("headwise_client_disconnects_total",
                     "Generation requests aborted because their client went away, by API and front "
                     "end");
    if (tok_.max_token_bytes() > 0) {
      spdlog::info("prompts over {} bytes are refused before tokenizing ({} tokens x {} bytes)",
                   static_cast<int64_t>(max_sequence_tokens_) * tok_.max_token_bytes(),
                   max_sequence_tokens_, tok_.max_token_bytes());
    } else {
      spdlog::info(
          "the tokenizer gives no bound on the bytes of a token: prompt texts are limited "
          "by --max-body-bytes alone");
    }
    transport_ = std::make_unique<http::Transport>(
        opts_.transport, [this](std::shared_ptr<Exchange> ex) { Handle(std::move(ex)); },
        [this](const http::Request& req, int status) {
          metrics_.Increment("headwise_http_requests_total", 1.0,
                             {{"route", RouteLabel(req.path)}, {"status", std::to_string(status)}});
          spdlog::info("{} {} {}", req.method.empty() ? "-" : req.method,
                       req.path.empty() ? "-" : req.path, status);
        });
  }

  StatusOr<int> Bind() { return transport_->Bind(); }

  void Run() {
    std::thread pump([this] { PumpLoop(); });
    transport_->Run();
    // In-process requests (the gRPC front end's) have no connection for the transport to drain:
    // the pump ends them (Stop aborted them) until the shutdown deadline.
    const auto deadline = Clock::now() + opts_.shutdown_timeout;
    while (pump_jobs_.load() > 0 && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pump_stop_ = true;
    signal_->Notify();
    pump.join();
  }

  void Stop() {
    stopping_ = true;
    signal_->Notify();  // the pump aborts what is running
    transport_->Stop(opts_.shutdown_timeout);
  }

  // ---- Routing (worker threads, and in-process callers) -------------------------------------

  void Handle(std::shared_ptr<Exchange> ex) {
    const http::Request& req = ex->request();
    if (!opts_.api_key.empty() && !IsOpenRoute(req.path) && !Authorized(req)) {
      const bool missing = req.Header("authorization").empty();
      return ReplyError(*ex,
                        ApiError{401,
                                 missing ? "missing API key: send 'Authorization: Bearer KEY'"
                                         : "incorrect API key provided",
                                 "invalid_request_error", "", "invalid_api_key"},
                        {{"WWW-Authenticate", "Bearer"}});
    }
    const std::string& path = req.path;
    const bool known = KnownRoutes().count(path) > 0 || path.rfind("/v1/models/", 0) == 0;
    if (!known) {
      return ReplyError(*ex, NotFoundError(fmt::format("Invalid URL ({} {})", req.method, path), "",
                                           "unknown_url"));
    }
    const std::string allow = AllowedMethods(path);
    if (req.method != allow) {
      return ReplyError(
          *ex,
          ApiError{405,
                   fmt::format("method {} is not allowed on {}; use {}", req.method, path, allow),
                   "invalid_request_error", "", "method_not_allowed"},
          {{"Allow", allow}});
    }
    try {
      if (path == "/v1/completions") return HandleGeneration(ApiKind::kCompletion, std::move(ex));
      if (path == "/v1/chat/completions") return HandleGeneration(ApiKind::kChat, std::move(ex));
      if (path == "/v1/models") return HandleModels(*ex);
      if (path == "/v1/arms") return HandleArms(*ex);
      if (path == "/health") return HandleHealth(*ex);
      if (path == "/metrics") {
        return ex->Reply(200, "text/plain; version=0.0.4; charset=utf-8",
                         metrics_.RenderPrometheus());
      }
      if (path == "/tokenize") return HandleTokenize(*ex);
      if (path == "/detokenize") return HandleDetokenize(*ex);
      return HandleModel(*ex, path.substr(std::string("/v1/models/").size()));
    } catch (const std::exception& e) {
      spdlog::error("{} {}: {}", req.method, path, e.what());
      if (!ex->responded()) {
        ReplyError(*ex, ApiError{500, std::string("internal server error: ") + e.what(),
                                 "server_error", "", ""});
      }
    }
  }

 private:
  bool Authorized(const http::Request& req) const {
    const std::string_view auth = req.Header("authorization");
    const std::string want = "Bearer " + opts_.api_key;
    // Constant time over the expected length: the key's prefix is not revealed by timing.
    unsigned diff = auth.size() == want.size() ? 0 : 1;
    for (size_t i = 0; i < want.size(); ++i) diff |= (i < auth.size() ? auth[i] : 0) ^ want[i];
    return diff == 0;
  }

  Json ModelCard(const std::string& name) const {
    return Json{{"id", name},
                {"object", "model"},
                {"created", started_},
                {"owned_by", "headwise"},
                {"root", opts_.model_path},
                {"parent", nullptr},
                {"max_model_len", limits_.max_model_len}};
  }

  static ApiError ModelNotFound(const std::string& name) {
    return NotFoundError(fmt::format("The model `{}` does not exist.", name), "model",
                         "model_not_found");
  }

  void HandleModels(Exchange& ex) {
    Json data = Json::array();
    for (const auto& name : opts_.served_model_names) data.push_back(ModelCard(name));
    ReplyJson(ex, 200, Json{{"object", "list"}, {"data", std::move(data)}});
  }

  void HandleArms(Exchange& ex) {
    std::vector<double> weights;
    for (const engine::Arm& arm : arms_.arms) weights.push_back(arm.weight);
    ReplyJson(ex, 200, ArmsList(engine_.arms(), weights, arms_.allow_override));
  }

  // The arm of a generation request: the one it names (when the arms file allows it), else by
  // its key (the X-Headwise-Arm-Key header, else "user"; empty ones count as none), else in
  // turn. A request without a key may land on either arm, so clients that compare arms send one.
  std::optional<ApiError> AssignArm(const http::Request& req, const GenerationRequest& gr,
                                    int& arm) const {
    std::optional<std::string_view> key;
    if (const std::string_view header = req.Header(kArmKeyHeader); !header.empty()) {
      key = header;
    } else if (gr.user && !gr.user->empty()) {
      key = *gr.user;
    }
    std::optional<std::string_view> named;
    if (gr.arm) named = *gr.arm;
    if (named && opts_.arms.arms.empty()) {
      return BadRequest(fmt::format("'{}': this server runs one arm, \"{}\"; choosing arms needs "
                                    "an arms file (--arms) that allows it",
                                    kArmOverrideField, engine_.arms().front().name),
                        std::string(kArmOverrideField));
    }
    auto assigned = assigner_.Assign(key, named, kArmOverrideField);
    if (!assigned.ok()) {
      return BadRequest(assigned.status().message(), std::string(kArmOverrideField));
    }
    arm = *assigned;
    return std::nullopt;
  }

  void HandleModel(Exchange& ex, const std::string& name) {
    for (const auto& served : opts_.served_model_names) {
      if (served == name) return ReplyJson(ex, 200, ModelCard(name));
    }
    ReplyError(ex, ModelNotFound(name));
  }

  void HandleHealth(Exchange& ex) {
    if (stopping_) return ReplyError(ex, ShuttingDown());
    if (!engine_.Stats().alive) {
      return ReplyError(ex, ApiError{503, "the engine thread has stopped", "server_error", "", ""});
    }
    ex.Reply(200, "", "");
  }

  // The served name a request's "model" field picks; empty picks the first.
  std::optional<ApiError> ResolveModel(const std::string& asked, std::string& name) const {
    if (asked.empty()) {
      name = opts_.served_model_names.front();
      return std::nullopt;
    }
    for (const auto& served : opts_.served_model_names) {
      if (served == asked) {
        name = asked;
        return std::nullopt;
      }
    }
    return ModelNotFound(asked);
  }

  // A text that cannot fit the longest request is refused before tokenizing it: the tokenizer's
  // working memory grows with the text (a 16 MiB prompt took 350 MB and 6 s of a worker).
  // `max_sequence_tokens`: the request's arm's, or the most of any arm before it has one.
  std::optional<ApiError> CheckTextCost(const std::string& text, std::string_view param,
                                        int max_sequence_tokens) const {
    return CheckPromptTextSize(tok_.MinTokens(text), text.size(), max_sequence_tokens, param);
  }

  void HandleTokenize(Exchange& ex) {
    Json body;
    TokenizeRequest tr;
    if (auto e = ParseJsonObject(ex.request().body, body)) return ReplyError(ex, *e);
    if (auto e = ParseTokenizeRequest(body, tr)) return ReplyError(ex, *e);
    std::string model;
    if (auto e = ResolveModel(tr.model, model)) return ReplyError(ex, *e);
    std::string text = tr.prompt;
    if (tr.chat) {
      auto rendered = chat_.Render(tr.messages, tr.add_generation_prompt, tr.chat_template_kwargs);
      if (!rendered.ok())
        return ReplyError(ex, BadRequest(rendered.status().message(), "messages"));
      text = *rendered;
    }
    if (auto e = CheckTextCost(text, tr.chat ? "messages" : "prompt", max_sequence_tokens_)) {
      return ReplyError(ex, *e);
    }
    const std::vector<int32_t> ids = tok_.Encode(text, tr.add_special_tokens);
    ReplyJson(ex, 200,
              Json{{"count", ids.size()},
                   {"max_model_len", limits_.max_model_len},
                   {"tokens", ids},
                   {"token_strs", nullptr}});
  }

  void HandleDetokenize(Exchange& ex) {
    Json body;
    DetokenizeRequest dr;
    if (auto e = ParseJsonObject(ex.request().body, body)) return ReplyError(ex, *e);
    if (auto e = ParseDetokenizeRequest(body, dr)) return ReplyError(ex, *e);
    std::string model;
    if (auto e = ResolveModel(dr.model, model)) return ReplyError(ex, *e);
    for (int32_t id : dr.tokens) {
      if (id < 0 || id >= tok_.vocab_size()) {
        return ReplyError(ex, BadRequest(fmt::format("'tokens': token id {} is outside the "
                                                     "vocabulary of {}",
                                                     id, tok_.vocab_size()),
                                         "tokens"));
      }
    }
    ReplyJson(ex, 200, Json{{"prompt", tok_.Decode(dr.tokens, false)}});
  }

  void HandleGeneration(ApiKind kind, std::shared_ptr<Exchange> ex) {
    if (stopping_) return ReplyError(*ex, ShuttingDown());
    Json body;
    if (auto e = ParseJsonObject(ex->request().body, body)) return ReplyError(*ex, *e);
    auto job = std::make_shared<Job>();
    job->kind = kind;
    job->exchange = ex;
    GenerationRequest& gr = job->request;
    const engine::GenerationDefaults& defaults = opts_.generation_defaults;
    auto parse_error = kind == ApiKind::kChat ? ParseChatRequest(body, gr, defaults)
                                              : ParseCompletionRequest(body, gr, defaults);
    if (parse_error) return ReplyError(*ex, *parse_error);
    // Before tokenizing: the parameters' ranges (max_tokens is checked again once resolved, by
    // the engine's Submit).
    if (auto e = ValidateParams(gr.params, limits_.vocab_size)) return ReplyError(*ex, *e);
    if (auto e = ResolveModel(gr.model, job->model)) return ReplyError(*ex, *e);
    if (auto e = AssignArm(ex->request(), gr, job->arm)) return ReplyError(*ex, *e);
    job->arm_info = &engine_.arms()[static_cast<size_t>(job->arm)];
    // Lengths are the arm's: one whose every head is a re-indexed ring runs past the context.
    const engine::EngineLimits& limits = engine_.limits(job->arm);

    // Prompts to token ids.
    if (kind == ApiKind::kChat) {
      auto rendered = chat_.Render(gr.messages, gr.add_generation_prompt, gr.chat_template_kwargs);
      if (!rendered.ok())
        return ReplyError(*ex, BadRequest(rendered.status().message(), "messages"));
      if (auto e = CheckTextCost(*rendered, "messages", limits.max_sequence_tokens)) {
        return ReplyError(*ex, *e);
      }
      job->prompt_ids.push_back(tok_.Encode(*rendered, gr.add_special_tokens));
      job->prompt_texts.push_back(std::move(*rendered));
    } else {
      for (const auto& p : gr.prompts) {
        if (p.is_ids) {
          if (auto e = ValidatePromptIds(p.ids, limits.vocab_size, "prompt")) {
            return ReplyError(*ex, *e);
          }
          job->prompt_ids.push_back(p.ids);
          job->prompt_texts.push_back(gr.echo ? tok_.Decode(p.ids, false) : "");
        } else {
          if (auto e = CheckTextCost(p.text, "prompt", limits.max_sequence_tokens)) {
            return ReplyError(*ex, *e);
          }
          job->prompt_ids.push_back(tok_.Encode(p.text, gr.add_special_tokens));
          job->prompt_texts.push_back(p.text);
        }
      }
    }
    const std::string what = kind == ApiKind::kChat ? "messages" : "prompt";
    std::vector<int> max_tokens(job->prompt_ids.size());
    for (size_t i = 0; i < job->prompt_ids.size(); ++i) {
      if (auto e = ValidatePromptIds(job->prompt_ids[i], limits.vocab_size, what)) {
        return ReplyError(*ex, *e);
      }
      const int prompt_len = static_cast<int>(job->prompt_ids[i].size());
      if (auto e = ResolveMaxTokens(gr, prompt_len, limits.max_sequence_tokens, max_tokens[i],
                                    defaults)) {
        return ReplyError(*ex, *e);
      }
      // Without max_tokens a request fills the context (or the pool); one already past it (a
      // StreamingLLM cache) gets a context's worth of new tokens.
      if (!gr.max_tokens) {
        const int context = limits.default_context;
        max_tokens[i] =
            std::min(max_tokens[i], prompt_len < context ? context - prompt_len : context);
      }
    }

    // One engine request per (prompt, n); child i of a seeded request gets seed + i (vLLM).
    for (size_t p = 0; p < job->prompt_ids.size(); ++p) {
      for (int i = 0; i < gr.n; ++i) {
        engine::EngineRequest er;
        er.arm = job->arm;
        er.prompt_ids = job->prompt_ids[p];
        er.params = gr.params;
        er.params.max_tokens = max_tokens[p];
        if (gr.params.seed) er.params.seed = *gr.params.seed + static_cast<uint64_t>(i);
        er.on_output = [signal = signal_] { signal->Notify(); };
        auto stream = engine_.Submit(std::move(er));
        if (!stream.ok()) {
          // The children already queued are aborted as `job` goes out of scope.
          return ReplyError(*ex, ErrorFromStatus(stream.status()));
        }
        Child c;
        c.index = static_cast<int>(p) * gr.n + i;
        c.prompt_index = static_cast<int>(p);
        c.stream = std::move(*stream);
        c.prev_token = job->prompt_ids[p].back();
        if (kind == ApiKind::kCompletion && gr.echo) {
          c.text_offset = CountCodePoints(job->prompt_texts[p]);
        }
        job->children.push_back(std::move(c));
      }
    }
    metrics_.Increment("headwise_api_requests_total", 1.0,
                       {{"api", kind == ApiKind::kChat ? "chat" : "completions"},
                        {"arm", job->arm_info->name},
                        {"attention_policy", job->arm_info->policy},
                        {"frontend", std::string(ex->frontend())}});
    job->id = NewResponseId(kind);
    job->created = UnixNow();
    if (gr.stream) {
      ex->StartStream(200, "text/event-stream",
                      {{"Cache-Control", "no-cache"},
                       {"X-Accel-Buffering", "no"},
                       {kArmHeader, HeaderValue(job->arm_info->name)}});
    }
    {
      std::lock_guard<std::mutex> lock(jobs_mu_);
      new_jobs_.push_back(std::move(job));
      ++pump_jobs_;
    }
    signal_->Notify();
  }

  // ---- The pump (one thread): engine events to clients ------------------------------------

  void PumpLoop() {
    std::vector<std::shared_ptr<Job>> jobs;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(signal_->mu);
        signal_->cv.wait_for(lock, kPollInterval,
                             [&] { return signal_->pending || pump_stop_.load(); });
        signal_->pending = false;
      }
      {
        std::lock_guard<std::mutex> lock(jobs_mu_);
        for (auto& j : new_jobs_) jobs.push_back(std::move(j));
        new_jobs_.clear();
      }
      if (pump_stop_) break;
      const bool stopping = stopping_;
      std::erase_if(jobs, [&](const std::shared_ptr<Job>& job) {
        if (stopping) job->AbortAll();
        return job->request.stream ? !StreamStep(*job) : !CollectStep(*job);
      });
      std::lock_guard<std::mutex> lock(jobs_mu_);
      pump_jobs_ = jobs.size() + new_jobs_.size();
    }
    // The transport has stopped: whatever is left has no client to answer. Dropping the jobs
    // aborts their engine requests.
    std::lock_guard<std::mutex> lock(jobs_mu_);
    new_jobs_.clear();
  }

  void CountDisconnect(const Job& job) {
    metrics_.Increment("headwise_client_disconnects_total", 1.0,
                       {{"api", job.kind == ApiKind::kChat ? "chat" : "completions"},
                        {"frontend", std::string(job.exchange->frontend())}});
    spdlog::info("{}: client disconnected; request aborted", job.id);
  }

  // A client gone before its request finished: abort it (its pages are freed within a step).
  bool ClientGone(Job& job) {
    if (!job.exchange->gone()) return false;
    if (!job.AllFinished()) {
      job.AbortAll();
      CountDisconnect(job);
    }
    // Recorded as 499 (nginx's "client closed request"); nothing reaches the client.
    if (!job.exchange->responded()) {
      ReplyError(*job.exchange,
                 ApiError{499, "client closed the request", "invalid_request_error", "", ""});
    }
    return true;
  }

  // A non-streaming request: answers once every child has finished. False: done with it.
  bool CollectStep(Job& job) {
    if (ClientGone(job)) return false;
    Poll(job);
    if (!job.AllFinished()) {
      if (job.aborted && Clock::now() - job.abort_time > kAbortGrace) {
        ReplyError(*job.exchange, ShuttingDown());
        return false;
      }
      return true;
    }
    std::vector<ChoiceResult> choices;
    for (auto& c : job.children) {
      if (c.finish_reason == engine::FinishReason::kError) {
        ReplyError(*job.exchange,
                   ApiError{500, "generation failed: " + c.error, "server_error", "", ""});
        return false;
      }
      if (c.finish_reason == engine::FinishReason::kAbort) {
        ReplyError(*job.exchange, ShuttingDown());
        return false;
      }
      ChoiceResult r;
      r.index = c.index;
      r.finish_reason = FinishReasonString(c.finish_reason);
      r.text = (job.kind == ApiKind::kCompletion && job.request.echo)
                   ? job.prompt_texts[c.prompt_index] + c.text
                   : c.text;
      if (job.request.token_ids) {
        r.token_ids.emplace();
        for (const engine::SampledToken& t : c.tokens) r.token_ids->push_back(t.id);
      }
      if (job.request.logprobs) {
        r.logprobs = job.kind == ApiKind::kChat
                         ? ChatLogprobs(tok_, c.tokens, job.request.top_logprobs, c.prev_token)
                         : CompletionLogprobs(tok_, c.tokens, job.request.top_logprobs,
                                              c.text_offset, c.prev_token);
      }
      choices.push_back(std::move(r));
    }
    const UsageInfo usage = JobUsage(job);
    const engine::ArmInfo& arm = *job.arm_info;
    ReplyJson(*job.exchange, 200,
              job.kind == ApiKind::kChat
                  ? ChatResponse(job.id, job.created, job.model, choices, usage, arm)
                  : CompletionResponse(job.id, job.created, job.model, choices, usage, arm),
              {{kArmHeader, HeaderValue(arm.name)}});
    return false;
  }

  // Writes what a streaming request produced since the last turn. False: done with it.
  bool StreamStep(Job& job) {
    if (ClientGone(job)) return false;
    if (job.aborted && Clock::now() - job.abort_time > kAbortGrace) {
      job.exchange->End();
      return false;
    }
    const GenerationRequest& gr = job.request;
    const engine::ArmInfo& arm = *job.arm_info;
    std::string out;
    for (auto& c : job.children) {
      if (c.started) continue;
      c.started = true;
      if (job.kind == ApiKind::kChat) {
        out += SseEvent(StreamChunk(job.kind, job.id, job.created, job.model, c.index, true, "",
                                    nullptr, "", gr.include_usage, arm));
      } else if (gr.echo && !job.prompt_texts[c.prompt_index].empty()) {
        out += SseEvent(StreamChunk(job.kind, job.id, job.created, job.model, c.index, false,
                                    job.prompt_texts[c.prompt_index], nullptr, "", gr.include_usage,
                                    arm));
      }
    }
    for (auto& [i, ev] : Poll(job)) {
      Child& c = job.children[i];
      if (!ev.text.empty() || ((gr.logprobs || gr.token_ids) && !ev.tokens.empty())) {
        std::vector<int32_t> ids;
        for (const engine::SampledToken& t : ev.tokens) ids.push_back(t.id);
        Json logprobs = nullptr;
        if (gr.logprobs) {
          logprobs = job.kind == ApiKind::kChat
                         ? ChatLogprobs(tok_, ev.tokens, gr.top_logprobs, c.prev_token)
                         : CompletionLogprobs(tok_, ev.tokens, gr.top_logprobs, c.text_offset,
                                              c.prev_token);
        }
        out += SseEvent(StreamChunk(job.kind, job.id, job.created, job.model, c.index, false,
                                    ev.text, logprobs, "", gr.include_usage, arm,
                                    gr.token_ids ? &ids : nullptr));
      }
      if (ev.finished) {
        if (ev.finish_reason == engine::FinishReason::kError) {
          out += SseEvent(
              ErrorBody(ApiError{500, "generation failed: " + ev.error, "server_error", "", ""}));
        } else {
          out += SseEvent(StreamChunk(job.kind, job.id, job.created, job.model, c.index, false, "",
                                      nullptr, FinishReasonString(ev.finish_reason),
                                      gr.include_usage, arm));
        }
      }
    }
    const bool done = job.AllFinished();
    if (done) {
      if (gr.include_usage) {
        out += SseEvent(UsageChunk(job.kind, job.id, job.created, job.model, JobUsage(job), arm));
      }
      out += kSseDone;
    }
    if (!job.exchange->Write(out)) {
      ClientGone(job);
      return false;
    }
    if (done) job.exchange->End();
    return !done;
  }

  engine::Engine& engine_;
  const engine::EngineLimits limits_;  // arm 0's: vocab_size and max_model_len are every arm's
  const int max_sequence_tokens_;
  const tokenizer::Tokenizer& tok_;
  const tokenizer::ChatRenderer& chat_;
  MetricsRegistry& metrics_;
  ServerOptions opts_;
  const engine::ArmsConfig arms_;  // the engine's arms with the file's weights
  const engine::ArmAssigner assigner_;
  std::unique_ptr<http::Transport> transport_;
  int64_t started_ = UnixNow();
  std::atomic<bool> stopping_{false};
  std::atomic<bool> pump_stop_{false};
  std::atomic<size_t> pump_jobs_{0};  // requests the pump carries (Run waits for them at the end)
  std::shared_ptr<PumpSignal> signal_ = std::make_shared<PumpSignal>();
  std::mutex jobs_mu_;
  std::vector<std::shared_ptr<Job>> new_jobs_;  // handed from the workers to the pump
};

HttpServer::HttpServer(engine::Engine& engine, const tokenizer::ChatRenderer& chat,
                       MetricsRegistry& metrics, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, chat, metrics, std::move(options))) {}
HttpServer::~HttpServer() = default;
StatusOr<int> HttpServer::Bind() {
  return impl_->Bind();
}
void HttpServer::Run() {
  impl_->Run();
}
void HttpServer::HandleInProcess(std::shared_ptr<http::Exchange> exchange) {
  impl_->Handle(std::move(exchange));
}
void HttpServer::Stop() {
  impl_->Stop();
}

}  // namespace headwise::server
