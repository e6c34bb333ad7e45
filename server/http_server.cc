#include "server/http_server.h"

#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_set>

#include "engine/chat_renderer.h"
#include "engine/engine.h"
#include "server/openai_api.h"
#include "tokenizer/tokenizer.h"

namespace headwise::server {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How long one wait for engine events lasts before the client's socket is checked again: an
// abort reaches the engine within this plus one engine step.
constexpr milliseconds kPollInterval{20};

const std::set<std::string>& KnownRoutes() {
  static const auto* routes = new std::set<std::string>{
      "/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics",
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

void ReplyJson(httplib::Response& res, int status, const Json& body) {
  res.status = status;
  res.set_content(DumpJson(body), "application/json");
}

void ReplyError(httplib::Response& res, const ApiError& e) {
  ReplyJson(res, e.status, ErrorBody(e));
  if (e.status == 503) res.set_header("Retry-After", "1");
}

// cpp-httplib 0.11.4 gives handlers no access to their connection, yet a request whose client
// has gone must be aborted (PEERS.md §3, item 6). The connection is found once per generation
// request by its addresses among this process's sockets; it stays open (and the fd ours) for as
// long as the handler and its content provider run.
std::string NumericHost(const sockaddr_storage& addr, socklen_t len, int& port) {
  char host[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host, sizeof(host), nullptr, 0,
                  NI_NUMERICHOST) != 0) {
    return "";
  }
  port = addr.ss_family == AF_INET6 ? ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port)
                                    : ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
  return host;
}

// Calls fn(fd, peer host, peer port, local port) for each connected socket of this process
// until it returns true.
template <typename Fn>
void ForEachConnectedSocket(Fn fn) {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return;
  const int own = dirfd(dir);
  while (dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == own) continue;
    struct stat st;
    if (fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage peer{}, local{};
    socklen_t peer_len = sizeof(peer), local_len = sizeof(local);
    if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
        getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &local_len) != 0) {
      continue;
    }
    int peer_port = -1, local_port = -1;
    const std::string peer_host = NumericHost(peer, peer_len, peer_port);
    NumericHost(local, local_len, local_port);
    if (fn(static_cast<int>(fd), peer_host, peer_port, local_port)) break;
  }
  closedir(dir);
}

int FindConnectionFd(const httplib::Request& req) {
  int found = -1;
  ForEachConnectedSocket([&](int fd, const std::string& peer_host, int peer_port, int local_port) {
    if (peer_port != req.remote_port || local_port != req.local_port ||
        peer_host != req.remote_addr) {
      return false;
    }
    found = fd;
    return true;
  });
  return found;
}

// Shuts the read side of every accepted connection of the server on `local_port`: a worker
// waiting for the next keep-alive request then sees end-of-file and closes the connection.
void ShutdownClientSockets(int local_port) {
  if (local_port <= 0) return;
  ForEachConnectedSocket([&](int fd, const std::string&, int, int port) {
    if (port == local_port) shutdown(fd, SHUT_RD);
    return false;
  });
}

// True when the client has closed or reset its end. Data waiting to be read (a pipelined next
// request) does not count.
bool PeerGone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  if (p.revents & POLLIN) {
    char c;
    return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
  }
  return false;
}

int64_t UnixNow() {
  return static_cast<int64_t>(std::time(nullptr));
}

// One engine request behind a choice.
struct Child {
  int index = 0;  // the choice index: prompt_index * n + i
  int prompt_index = 0;
  std::unique_ptr<engine::RequestStream> stream;
  bool finished = false;
  std::string finish_reason;
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

// A whole API request: one child per (prompt, n). Counted in `active` while it lives, so that
// shutdown can wait for running requests to end with their final chunks.
struct Job {
  explicit Job(std::atomic<int>& active) : active_(active) { ++active_; }
  ~Job() {
    children.clear();  // aborts what is still running before the count drops
    --active_;
  }
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  ApiKind kind = ApiKind::kCompletion;
  std::string id;
  int64_t created = 0;
  std::string model;
  GenerationRequest request;
  std::vector<std::string> prompt_texts;  // for echo
  std::vector<std::vector<int32_t>> prompt_ids;
  std::vector<Child> children;
  int fd = -1;
  bool aborted = false;
  Clock::time_point abort_time;
  std::atomic<int>& active_;

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

// Gathers the children's events, waiting up to `wait` when none is ready.
std::vector<std::pair<size_t, engine::RequestOutput>> Poll(Job& job, milliseconds wait) {
  std::vector<std::pair<size_t, engine::RequestOutput>> events;
  auto drain = [&] {
    for (size_t i = 0; i < job.children.size(); ++i) {
      Child& c = job.children[i];
      while (!c.finished) {
        auto ev = c.stream->Next(milliseconds(0));
        if (!ev) break;
        Apply(c, *ev);
        events.emplace_back(i, std::move(*ev));
      }
    }
  };
  drain();
  if (!events.empty()) return events;
  for (size_t i = 0; i < job.children.size(); ++i) {
    Child& c = job.children[i];
    if (c.finished) continue;
    if (auto ev = c.stream->Next(wait)) {
      Apply(c, *ev);
      events.emplace_back(i, std::move(*ev));
      drain();
    }
    break;
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

}  // namespace

class HttpServer::Impl {
 public:
  Impl(engine::Engine& engine, const engine::ChatRenderer& chat, ServerOptions options)
      : engine_(engine), tok_(*engine.model().tokenizer), chat_(chat), opts_(std::move(options)) {
    vocab_size_ = engine.model().model->config().vocab_size;
    max_model_len_ = engine.Stats().max_model_len;
    if (max_model_len_ <= 0) max_model_len_ = engine.config().max_model_len;
    if (max_model_len_ <= 0)
      max_model_len_ = engine.model().model->config().max_position_embeddings;
    // The engine refuses requests larger than its whole KV pool; defaults stay inside it.
    const int pool_tokens = engine.Stats().max_tokens_in_pool;
    default_context_ = pool_tokens > 0 ? std::min(max_model_len_, pool_tokens) : max_model_len_;
    // StreamingLLM caches run past the context (engine::MaxSequenceTokens).
    request_limit_ = static_cast<int>(
        std::clamp<int64_t>(engine.Stats().max_sequence_tokens, max_model_len_, INT_MAX));
    auto& m = engine_.metrics();
    m.DeclareCounter("headwise_http_requests_total",
                     "HTTP requests answered, by route and status code");
    m.DeclareCounter("headwise_api_requests_total",
                     "Generation requests accepted by the engine, by API and attention policy");
    m.DeclareCounter("headwise_client_disconnects_total",
                     "Generation requests aborted because their client went away, by API");
    SetUp();
  }

  StatusOr<int> Bind() {
    int port = opts_.port;
    if (port == 0) {
      port = svr_.bind_to_any_port(opts_.host);
      if (port < 0) return InvalidArgument("cannot listen on {} (any port)", opts_.host);
    } else if (!svr_.bind_to_port(opts_.host, port)) {
      return InvalidArgument("cannot listen on {}:{} (address in use or not available)", opts_.host,
                             port);
    }
    bound_port_ = port;
    return port;
  }

  void Run() {
    run_started_ = true;
    if (!stopping_) svr_.listen_after_bind();
    running_done_ = true;
  }

  void Stop() {
    stopping_ = true;
    // Running requests see stopping_, abort their engine requests and end with a final
    // "abort" chunk (streams) or a 503; give them a moment to do so before closing.
    // A handler returns before its response is written, and once the read side of a connection
    // is shut cpp-httplib no longer writes to it: wait for the writes too, or a 503 is lost.
    const auto grace_end = Clock::now() + std::chrono::seconds(3);
    while ((active_jobs_ > 0 || NumUnwritten() > 0) && Clock::now() < grace_end)
      std::this_thread::sleep_for(milliseconds(10));
    // listen_after_bind() may not have started yet; retry until it has returned. Idle
    // keep-alive connections would hold the worker threads (and so Run()) for the whole
    // keep-alive timeout; their read side is shut so that they close at once.
    while (run_started_ && !running_done_) {
      svr_.stop();
      ShutdownClientSockets(bound_port_);
      if (running_done_) break;
      std::this_thread::sleep_for(milliseconds(20));
    }
  }

 private:
  void SetUp() {
    const int threads = std::max(8, opts_.http_threads);
    svr_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    svr_.set_payload_max_length(opts_.max_body_bytes);
    // cpp-httplib's default also sets SO_REUSEPORT, which lets a second server share a port
    // that is in use and take half of its connections; a busy port must be a startup error.
    svr_.set_socket_options([](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    svr_.set_keep_alive_timeout(opts_.keep_alive_seconds);
    svr_.set_read_timeout(30, 0);
    svr_.set_write_timeout(30, 0);

    svr_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard<std::mutex> lock(unwritten_mu_);
        unwritten_.insert(&req);
      }
      if (opts_.api_key.empty() || req.path.rfind("/v1/", 0) != 0) {
        return httplib::Server::HandlerResponse::Unhandled;
      }
      const std::string auth = req.get_header_value("Authorization");
      const std::string want = "Bearer " + opts_.api_key;
      // Constant time over the expected length: the key's prefix is not revealed by timing.
      bool ok = auth.size() == want.size();
      unsigned diff = 0;
      for (size_t i = 0; i < want.size(); ++i) diff |= (i < auth.size() ? auth[i] : 0) ^ want[i];
      ok = ok && diff == 0;
      if (ok) return httplib::Server::HandlerResponse::Unhandled;
      ReplyError(res, ApiError{401,
                               auth.empty() ? "missing API key: send 'Authorization: Bearer KEY'"
                                            : "incorrect API key provided",
                               "invalid_request_error", "", "invalid_api_key"});
      res.set_header("WWW-Authenticate", "Bearer");
      return httplib::Server::HandlerResponse::Handled;
    });

    svr_.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                       httplib::Response& res) {
      if (!res.body.empty() || res.content_provider_) {
        return httplib::Server::HandlerResponse::Unhandled;
      }
      if (res.status == 404 && KnownRoutes().count(req.path)) {
        const std::string allow = AllowedMethods(req.path);
        ReplyError(res, ApiError{405,
                                 fmt::format("method {} is not allowed on {}; use {}", req.method,
                                             req.path, allow),
                                 "invalid_request_error", "", "method_not_allowed"});
        res.set_header("Allow", allow);
      } else if (res.status == 404) {
        ReplyError(res, NotFoundError(fmt::format("Invalid URL ({} {})", req.method, req.path), "",
                                      "unknown_url"));
      } else if (res.status == 413) {
        ReplyError(res, ApiError{413,
                                 fmt::format("the request body is over the limit of {} bytes",
                                             opts_.max_body_bytes),
                                 "invalid_request_error", "", "request_too_large"});
      } else if (res.status < 500) {
        ReplyError(res,
                   ApiError{res.status, "malformed HTTP request", "invalid_request_error", "", ""});
      } else {
        ReplyError(res, ApiError{res.status, "internal server error", "server_error", "", ""});
      }
      return httplib::Server::HandlerResponse::Handled;
    }));

    svr_.set_exception_handler(
        [](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
          std::string what = "unknown exception";
          try {
            if (ep) std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          spdlog::error("{} {}: {}", req.method, req.path, what);
          ReplyError(res, ApiError{500, "internal server error: " + what, "server_error", "", ""});
        });

    // cpp-httplib logs a response once it has been written (or its write failed).
    svr_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      {
        std::lock_guard<std::mutex> lock(unwritten_mu_);
        unwritten_.erase(&req);
      }
      engine_.metrics().Increment(
          "headwise_http_requests_total", 1.0,
          {{"route", RouteLabel(req.path)}, {"status", std::to_string(res.status)}});
      spdlog::info("{} {} {}", req.method, req.path, res.status);
    });

    svr_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      Guarded(res, [&] { HandleGeneration(ApiKind::kCompletion, req, res); });
    });
    svr_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      Guarded(res, [&] { HandleGeneration(ApiKind::kChat, req, res); });
    });
    svr_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      Json data = Json::array();
      for (const auto& name : opts_.served_model_names) data.push_back(ModelCard(name));
      ReplyJson(res, 200, Json{{"object", "list"}, {"data", std::move(data)}});
    });
    svr_.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      const std::string name = req.matches[1];
      for (const auto& served : opts_.served_model_names) {
        if (served == name) return ReplyJson(res, 200, ModelCard(name));
      }
      ReplyError(res, ModelNotFound(name));
    });
    svr_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      if (stopping_) {
        return ReplyError(res,
                          ApiError{503, "the server is shutting down", "server_error", "", ""});
      }
      if (!engine_.Stats().alive) {
        return ReplyError(res,
                          ApiError{503, "the engine thread has stopped", "server_error", "", ""});
      }
      res.status = 200;
    });
    svr_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.status = 200;
      res.set_content(engine_.metrics().RenderPrometheus(),
                      "text/plain; version=0.0.4; charset=utf-8");
    });
    svr_.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
      Guarded(res, [&] { HandleTokenize(req, res); });
    });
    svr_.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
      Guarded(res, [&] { HandleDetokenize(req, res); });
    });
  }

  template <typename F>
  void Guarded(httplib::Response& res, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      spdlog::error("handler: {}", e.what());
      ReplyError(res, ApiError{500, std::string("internal server error: ") + e.what(),
                               "server_error", "", ""});
    }
  }

  Json ModelCard(const std::string& name) const {
    return Json{{"id", name},
                {"object", "model"},
                {"created", started_},
                {"owned_by", "headwise"},
                {"root", opts_.model_path},
                {"parent", nullptr},
                {"max_model_len", max_model_len_}};
  }

  static ApiError ModelNotFound(const std::string& name) {
    return NotFoundError(fmt::format("The model `{}` does not exist.", name), "model",
                         "model_not_found");
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

  void HandleTokenize(const httplib::Request& req, httplib::Response& res) {
    Json body;
    TokenizeRequest tr;
    if (auto e = ParseJsonObject(req.body, body)) return ReplyError(res, *e);
    if (auto e = ParseTokenizeRequest(body, tr)) return ReplyError(res, *e);
    std::string model;
    if (auto e = ResolveModel(tr.model, model)) return ReplyError(res, *e);
    std::string text = tr.prompt;
    if (tr.chat) {
      auto rendered = chat_.Render(tr.messages, tr.add_generation_prompt, tr.chat_template_kwargs);
      if (!rendered.ok())
        return ReplyError(res, BadRequest(rendered.status().message(), "messages"));
      text = *rendered;
    }
    const std::vector<int32_t> ids = tok_.Encode(text, tr.add_special_tokens);
    ReplyJson(res, 200,
              Json{{"count", ids.size()},
                   {"max_model_len", max_model_len_},
                   {"tokens", ids},
                   {"token_strs", nullptr}});
  }

  void HandleDetokenize(const httplib::Request& req, httplib::Response& res) {
    Json body;
    DetokenizeRequest dr;
    if (auto e = ParseJsonObject(req.body, body)) return ReplyError(res, *e);
    if (auto e = ParseDetokenizeRequest(body, dr)) return ReplyError(res, *e);
    std::string model;
    if (auto e = ResolveModel(dr.model, model)) return ReplyError(res, *e);
    for (int32_t id : dr.tokens) {
      if (id < 0 || id >= tok_.vocab_size()) {
        return ReplyError(res, BadRequest(fmt::format("'tokens': token id {} is outside the "
                                                      "vocabulary of {}",
                                                      id, tok_.vocab_size()),
                                          "tokens"));
      }
    }
    ReplyJson(res, 200, Json{{"prompt", tok_.Decode(dr.tokens, false)}});
  }

  void HandleGeneration(ApiKind kind, const httplib::Request& req, httplib::Response& res) {
    if (stopping_) {
      return ReplyError(res, ApiError{503, "the server is shutting down", "server_error", "", ""});
    }
    Json body;
    if (auto e = ParseJsonObject(req.body, body)) return ReplyError(res, *e);
    auto job = std::make_shared<Job>(active_jobs_);
    job->kind = kind;
    GenerationRequest& gr = job->request;
    auto parse_error =
        kind == ApiKind::kChat ? ParseChatRequest(body, gr) : ParseCompletionRequest(body, gr);
    if (parse_error) return ReplyError(res, *parse_error);
    if (auto e = ResolveModel(gr.model, job->model)) return ReplyError(res, *e);

    // Prompts to token ids.
    if (kind == ApiKind::kChat) {
      auto rendered = chat_.Render(gr.messages, gr.add_generation_prompt, gr.chat_template_kwargs);
      if (!rendered.ok()) {
        return ReplyError(res, BadRequest(rendered.status().message(), "messages"));
      }
      job->prompt_ids.push_back(tok_.Encode(*rendered, gr.add_special_tokens));
      job->prompt_texts.push_back(std::move(*rendered));
    } else {
      for (const auto& p : gr.prompts) {
        if (p.is_ids) {
          if (auto e = ValidatePromptIds(p.ids, vocab_size_, "prompt")) return ReplyError(res, *e);
          job->prompt_ids.push_back(p.ids);
          job->prompt_texts.push_back(gr.echo ? tok_.Decode(p.ids, false) : "");
        } else {
          job->prompt_ids.push_back(tok_.Encode(p.text, gr.add_special_tokens));
          job->prompt_texts.push_back(p.text);
        }
      }
    }
    const std::string what = kind == ApiKind::kChat ? "messages" : "prompt";
    std::vector<int> max_tokens(job->prompt_ids.size());
    for (size_t i = 0; i < job->prompt_ids.size(); ++i) {
      if (auto e = ValidatePromptIds(job->prompt_ids[i], vocab_size_, what)) {
        return ReplyError(res, *e);
      }
      const int prompt_len = static_cast<int>(job->prompt_ids[i].size());
      if (auto e = ResolveMaxTokens(gr, prompt_len, request_limit_, max_tokens[i])) {
        return ReplyError(res, *e);
      }
      // Without max_tokens a request fills the context (or the pool); one already past it (a
      // StreamingLLM cache) gets a context's worth of new tokens.
      if (!gr.max_tokens) {
        max_tokens[i] =
            std::min(max_tokens[i], prompt_len < default_context_ ? default_context_ - prompt_len
                                                                  : default_context_);
      }
    }
    gr.params.max_tokens = max_tokens[0];
    if (auto e = ValidateParams(gr.params, vocab_size_)) return ReplyError(res, *e);

    // One engine request per (prompt, n); child i of a seeded request gets seed + i (vLLM).
    for (size_t p = 0; p < job->prompt_ids.size(); ++p) {
      for (int i = 0; i < gr.n; ++i) {
        engine::EngineRequest er;
        er.prompt_ids = job->prompt_ids[p];
        er.params = gr.params;
        er.params.max_tokens = max_tokens[p];
        if (gr.params.seed) er.params.seed = *gr.params.seed + static_cast<uint64_t>(i);
        auto stream = engine_.Submit(std::move(er));
        if (!stream.ok()) {
          // The children already queued are aborted as `job` goes out of scope.
          return ReplyError(res, ErrorFromStatus(stream.status()));
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
    engine_.metrics().Increment("headwise_api_requests_total", 1.0,
                                {{"api", kind == ApiKind::kChat ? "chat" : "completions"},
                                 {"attention_policy", engine_.attention_policy()}});
    job->id = NewResponseId(kind);
    job->created = UnixNow();
    job->fd = FindConnectionFd(req);
    if (job->fd < 0) spdlog::warn("{}: connection not found; disconnects go unnoticed", job->id);

    if (gr.stream) {
      res.status = 200;
      res.set_header("Cache-Control", "no-cache");
      res.set_header("X-Accel-Buffering", "no");
      res.set_chunked_content_provider(
          "text/event-stream",
          [this, job](size_t, httplib::DataSink& sink) { return StreamStep(*job, sink); },
          [job](bool) {
            // Streams end here in every case (done, write failure, shutdown): dropping the
            // children aborts any that are still running.
            job->children.clear();
          });
      return;
    }
    Collect(*job, res);
  }

  void CountDisconnect(const Job& job) {
    engine_.metrics().Increment("headwise_client_disconnects_total", 1.0,
                                {{"api", job.kind == ApiKind::kChat ? "chat" : "completions"}});
    spdlog::info("{}: client disconnected; request aborted", job.id);
  }

  // A non-streaming request: waits for every child, checking the client between waits.
  void Collect(Job& job, httplib::Response& res) {
    while (!job.AllFinished()) {
      if (stopping_) job.AbortAll();
      Poll(job, kPollInterval);
      if (!job.aborted && PeerGone(job.fd)) {
        job.AbortAll();
        CountDisconnect(job);
        job.children.clear();  // the client cannot read an answer; free the pages now
        return ReplyError(
            res, ApiError{499, "client closed the request", "invalid_request_error", "", ""});
      }
      if (job.aborted && Clock::now() - job.abort_time > std::chrono::seconds(5)) break;
    }
    const bool shutting_down = stopping_;
    std::vector<ChoiceResult> choices;
    for (auto& c : job.children) {
      if (c.finish_reason == "error" || (!c.finished && !shutting_down)) {
        return ReplyError(res,
                          ApiError{500, "generation failed: " + c.error, "server_error", "", ""});
      }
      if (c.finish_reason == "abort" || !c.finished) {
        return ReplyError(res,
                          ApiError{503, "the server is shutting down", "server_error", "", ""});
      }
      ChoiceResult r;
      r.index = c.index;
      r.finish_reason = c.finish_reason;
      r.text = (job.kind == ApiKind::kCompletion && job.request.echo)
                   ? job.prompt_texts[c.prompt_index] + c.text
                   : c.text;
      if (job.request.logprobs) {
        r.logprobs = job.kind == ApiKind::kChat
                         ? ChatLogprobs(tok_, c.tokens, job.request.top_logprobs, c.prev_token)
                         : CompletionLogprobs(tok_, c.tokens, job.request.top_logprobs,
                                              c.text_offset, c.prev_token);
      }
      choices.push_back(std::move(r));
    }
    const UsageInfo usage = JobUsage(job);
    ReplyJson(res, 200,
              job.kind == ApiKind::kChat
                  ? ChatResponse(job.id, job.created, job.model, choices, usage,
                                 engine_.attention_policy())
                  : CompletionResponse(job.id, job.created, job.model, choices, usage,
                                       engine_.attention_policy()));
  }

  // One turn of a streaming response: waits briefly for events and writes their chunks.
  // Returning false ends the response (client gone).
  bool StreamStep(Job& job, httplib::DataSink& sink) {
    if (PeerGone(job.fd)) {
      job.AbortAll();
      CountDisconnect(job);
      return false;
    }
    if (stopping_) job.AbortAll();
    if (job.aborted && Clock::now() - job.abort_time > std::chrono::seconds(5)) return false;
    const GenerationRequest& gr = job.request;
    std::string out;
    for (auto& c : job.children) {
      if (c.started) continue;
      c.started = true;
      if (job.kind == ApiKind::kChat) {
        out += SseEvent(StreamChunk(job.kind, job.id, job.created, job.model, c.index, true, "",
                                    nullptr, "", gr.include_usage));
      } else if (gr.echo && !job.prompt_texts[c.prompt_index].empty()) {
        out +=
            SseEvent(StreamChunk(job.kind, job.id, job.created, job.model, c.index, false,
                                 job.prompt_texts[c.prompt_index], nullptr, "", gr.include_usage));
      }
    }
    for (auto& [i, ev] : Poll(job, kPollInterval)) {
      Child& c = job.children[i];
      if (!ev.text.empty() || (gr.logprobs && !ev.tokens.empty())) {
        Json logprobs = nullptr;
        if (gr.logprobs) {
          logprobs = job.kind == ApiKind::kChat
                         ? ChatLogprobs(tok_, ev.tokens, gr.top_logprobs, c.prev_token)
                         : CompletionLogprobs(tok_, ev.tokens, gr.top_logprobs, c.text_offset,
                                              c.prev_token);
        }
        out += SseEvent(StreamChunk(job.kind, job.id, job.created, job.model, c.index, false,
                                    ev.text, logprobs, "", gr.include_usage));
      }
      if (ev.finished) {
        if (ev.finish_reason == "error") {
          out += SseEvent(
              ErrorBody(ApiError{500, "generation failed: " + ev.error, "server_error", "", ""}));
        } else {
          out += SseEvent(StreamChunk(job.kind, job.id, job.created, job.model, c.index, false, "",
                                      nullptr, ev.finish_reason, gr.include_usage,
                                      engine_.attention_policy()));
        }
      }
    }
    const bool done = job.AllFinished();
    if (done) {
      if (gr.include_usage) {
        out += SseEvent(UsageChunk(job.kind, job.id, job.created, job.model, JobUsage(job),
                                   engine_.attention_policy()));
      }
      out += kSseDone;
    }
    // An empty write would end cpp-httplib's chunked stream early.
    if (!out.empty() && !sink.write(out.data(), out.size())) {
      job.AbortAll();
      CountDisconnect(job);
      return false;
    }
    if (done) sink.done();
    return true;
  }

  engine::Engine& engine_;
  const tokenizer::Tokenizer& tok_;
  const engine::ChatRenderer& chat_;
  ServerOptions opts_;
  httplib::Server svr_;
  int vocab_size_ = 0;
  int max_model_len_ = 0;
  int default_context_ = 0;  // what a request without max_tokens may fill
  int request_limit_ = 0;    // prompt + max_tokens allowed (max_sequence_tokens)
  int64_t started_ = UnixNow();
  std::atomic<bool> stopping_{false};
  std::atomic<bool> run_started_{false};
  std::atomic<int> active_jobs_{0};
  // Requests routed whose response is not written yet (the logger runs after the write).
  std::mutex unwritten_mu_;
  std::unordered_set<const httplib::Request*> unwritten_;
  size_t NumUnwritten() {
    std::lock_guard<std::mutex> lock(unwritten_mu_);
    return unwritten_.size();
  }
  int bound_port_ = -1;
  std::atomic<bool> running_done_{false};
};

HttpServer::HttpServer(engine::Engine& engine, const engine::ChatRenderer& chat,
                       ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, chat, std::move(options))) {}
HttpServer::~HttpServer() = default;
StatusOr<int> HttpServer::Bind() {
  return impl_->Bind();
}
void HttpServer::Run() {
  impl_->Run();
}
void HttpServer::Stop() {
  impl_->Stop();
}

}  // namespace headwise::server
