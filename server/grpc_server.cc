#include "server/grpc_server.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <iterator>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "headwise/v1/headwise.grpc.pb.h"
#include "server/http_server.h"
#include "server/openai_api.h"

namespace headwise::server {
namespace {

namespace pb = headwise::v1;

// An exchange whose request comes from an RPC: a whole response stays here for the RPC to map;
// a stream's chunks are queued for the RPC's thread (Take), which writes them to its client.
class InProcessExchange final : public http::Exchange {
 public:
  // `context`: the RPC whose cancellation means the client has gone; null: none.
  InProcessExchange(http::Request request, const grpc::ServerContext* context)
      : Exchange(std::move(request)), context_(context) {}

  void Reply(int status, std::string_view, std::string body, http::Headers) override {
    std::lock_guard lock(mu_);
    if (responded()) return;
    status_ = status;
    body_ = std::move(body);
    ended_ = true;
    cv_.notify_all();
  }
  void StartStream(int status, std::string_view, http::Headers) override {
    std::lock_guard lock(mu_);
    if (responded()) return;
    status_ = status;
    streaming_ = true;
    cv_.notify_all();
  }
  bool Write(std::string_view chunk) override {
    if (gone()) return false;
    std::lock_guard lock(mu_);
    body_ += chunk;
    cv_.notify_all();
    return true;
  }
  void End() override {
    std::lock_guard lock(mu_);
    ended_ = true;
    cv_.notify_all();
  }
  bool gone() const override { return context_ != nullptr && context_->IsCancelled(); }
  std::string_view frontend() const override { return "grpc"; }

  // Waits up to `wait` for the response to begin or the stream to grow, then moves what arrived
  // to the end of `out`. True once the response is complete.
  bool Take(std::string& out, std::chrono::milliseconds wait) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, wait, [&] { return ended_ || !body_.empty(); });
    out += body_;
    body_.clear();
    return ended_;
  }
  // After Take returned true, or for a handler that replied at once.
  int answered_status() {
    std::lock_guard lock(mu_);
    return status_;
  }
  bool streaming() {
    std::lock_guard lock(mu_);
    return streaming_;
  }

 private:
  const grpc::ServerContext* context_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string body_;  // a whole response, or the stream's chunks not yet taken
  bool streaming_ = false;
  bool ended_ = false;
};

// The gRPC code of a REST error: its HTTP status, and for a 503 its OpenAI "code" (a full queue,
// "server_overloaded", is the client's to retry later; otherwise the server is shutting down).
grpc::StatusCode CodeOf(int http_status, std::string_view error_code) {
  switch (http_status) {
    case 400:
    case 405:
    case 413:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case 401:
      return grpc::StatusCode::UNAUTHENTICATED;
    case 404:
      return grpc::StatusCode::NOT_FOUND;
    case 503:
      return error_code == "server_overloaded" ? grpc::StatusCode::RESOURCE_EXHAUSTED
                                               : grpc::StatusCode::UNAVAILABLE;
    default:
      return grpc::StatusCode::INTERNAL;
  }
}

}  // namespace

class GrpcServer::Service final : public pb::Headwise::Service {
 public:
  explicit Service(HttpServer& http) : http_(http) {}

  grpc::Status ListModels(grpc::ServerContext* context, const pb::ListModelsRequest*,
                          pb::ListModelsResponse* out) override {
    return Call(*context, "/v1/models", "", [&](const Json& body) {
      for (const Json& m : body.at("data")) {
        pb::Model* model = out->add_data();
        model->set_id(m.at("id").get<std::string>());
        model->set_created(m.at("created").get<int64_t>());
        model->set_owned_by(m.at("owned_by").get<std::string>());
        model->set_root(m.at("root").get<std::string>());
        model->set_max_model_len(m.at("max_model_len").get<int32_t>());
      }
    });
  }

  grpc::Status ListArms(grpc::ServerContext* context, const pb::ListArmsRequest*,
                        pb::ListArmsResponse* out) override {
    return Call(*context, "/v1/arms", "", [&](const Json& body) {
      for (const Json& a : body.at("data")) {
        pb::Arm* arm = out->add_data();
        arm->set_name(a.at("name").get<std::string>());
        arm->set_attention_policy(a.at("attention_policy").get<std::string>());
        if (!a.at("policy_path").is_null()) {
          arm->set_policy_path(a.at("policy_path").get<std::string>());
        }
        arm->set_policy_hash(a.at("policy_hash").get<std::string>());
        arm->set_weight(a.at("weight").get<double>());
      }
      out->set_allow_override(body.at("allow_override").get<bool>());
    });
  }

  grpc::Status Tokenize(grpc::ServerContext* context, const pb::TokenizeRequest* in,
                        pb::TokenizeResponse* out) override {
    Json request = Json::object();
    if (!in->model().empty()) request["model"] = in->model();
    if (in->messages_size() > 0) {
      if (!in->prompt().empty()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "give either 'prompt' or 'messages', not both");
      }
      request["messages"] = Messages(in->messages());
      if (in->has_add_generation_prompt()) {
        request["add_generation_prompt"] = in->add_generation_prompt();
      }
    } else {
      request["prompt"] = in->prompt();
    }
    if (in->has_add_special_tokens()) request["add_special_tokens"] = in->add_special_tokens();
    return Call(*context, "/tokenize", DumpJson(request), [&](const Json& body) {
      out->set_count(body.at("count").get<int32_t>());
      out->set_max_model_len(body.at("max_model_len").get<int32_t>());
      for (const Json& id : body.at("tokens")) out->add_tokens(id.get<int32_t>());
    });
  }

  grpc::Status Detokenize(grpc::ServerContext* context, const pb::DetokenizeRequest* in,
                          pb::DetokenizeResponse* out) override {
    Json request{{"tokens", std::vector<int32_t>(in->tokens().begin(), in->tokens().end())}};
    if (!in->model().empty()) request["model"] = in->model();
    return Call(*context, "/detokenize", DumpJson(request),
                [&](const Json& body) { out->set_prompt(body.at("prompt").get<std::string>()); });
  }

  grpc::Status Generate(grpc::ServerContext* context, const pb::GenerateRequest* in,
                        grpc::ServerWriter<pb::GenerateResponse>* writer) override {
    Json body = Json::object();
    if (in->has_token_ids()) {
      body["prompt"] =
          std::vector<int32_t>(in->token_ids().ids().begin(), in->token_ids().ids().end());
    } else {
      body["prompt"] = in->text();
    }
    if (in->has_logprobs()) body["logprobs"] = in->logprobs();
    if (in->has_echo()) body["echo"] = in->echo();
    if (in->has_add_special_tokens()) body["add_special_tokens"] = in->add_special_tokens();
    return Stream(*context, "/v1/completions", CommonFields(*in, std::move(body)), *writer);
  }

  grpc::Status Chat(grpc::ServerContext* context, const pb::ChatRequest* in,
                    grpc::ServerWriter<pb::ChatResponse>* writer) override {
    Json body{{"messages", Messages(in->messages())}};
    if (in->has_logprobs()) body["logprobs"] = in->logprobs();
    if (in->has_top_logprobs()) body["top_logprobs"] = in->top_logprobs();
    if (in->has_add_generation_prompt()) {
      body["add_generation_prompt"] = in->add_generation_prompt();
    }
    if (in->has_chat_template_kwargs()) {
      std::string json;
      if (!google::protobuf::util::MessageToJsonString(in->chat_template_kwargs(), &json).ok()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "'chat_template_kwargs' does not convert to JSON");
      }
      body["chat_template_kwargs"] = Json::parse(json);
    }
    return Stream(*context, "/v1/chat/completions", CommonFields(*in, std::move(body)), *writer);
  }

  // Called when the server stops: streams still running end UNAVAILABLE (a stopped server does
  // not always mark its calls cancelled before it waits for their handlers).
  void Stopping() { stopping_ = true; }

  // Whether GET /health answers 200: the engine runs and the server is not stopping.
  bool Healthy() {
    auto exchange = std::make_shared<InProcessExchange>(Request("GET", "/health", ""), nullptr);
    http_.HandleInProcess(exchange);
    return exchange->answered_status() == 200;
  }

 private:
  // How often a streaming RPC looks for its client's cancellation while nothing arrives.
  static constexpr std::chrono::milliseconds kPoll{50};

  static grpc::Status ShuttingDown() {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
  }

  static http::Request Request(std::string method, std::string path, std::string body) {
    http::Request request;
    request.method = std::move(method);
    request.target = path;
    request.path = std::move(path);
    request.body = std::move(body);
    request.headers.emplace_back("content-type", "application/json");
    return request;
  }

  // The REST request of an RPC, handed to the HTTP server's handlers: "authorization" metadata
  // travels as the same header.
  std::shared_ptr<InProcessExchange> Start(grpc::ServerContext& context, std::string path,
                                           std::string body) {
    std::string method = body.empty() ? "GET" : "POST";
    http::Request request = Request(std::move(method), std::move(path), std::move(body));
    const auto& metadata = context.client_metadata();
    if (auto it = metadata.find("authorization"); it != metadata.end()) {
      request.headers.emplace_back("authorization",
                                   std::string(it->second.data(), it->second.size()));
    }
    auto exchange = std::make_shared<InProcessExchange>(std::move(request), &context);
    http_.HandleInProcess(exchange);
    // A handler that kept no reference will never answer: the RPC must not wait for it (a
    // transport exchange answers 500 when dropped unanswered; this is the same rule).
    if (exchange.use_count() == 1) {
      exchange->Reply(500, "",
                      DumpJson(ErrorBody(ApiError{500, "internal server error: no response",
                                                  "server_error", "", ""})),
                      {});
    }
    return exchange;
  }

  // A REST error answer (status, OpenAI error body) as a gRPC status; the field it names goes
  // in the "headwise-error-param" trailer.
  static grpc::Status ErrorStatus(grpc::ServerContext& context, int status,
                                  const std::string& body) {
    const Json answer = Json::parse(body, nullptr, /*allow_exceptions=*/false);
    std::string message = "no response", code, param;
    if (answer.is_object() && answer.contains("error") && answer["error"].is_object()) {
      const Json& error = answer["error"];
      message = error.value("message", message);
      if (error.contains("code") && error["code"].is_string()) code = error["code"];
      if (error.contains("param") && error["param"].is_string()) param = error["param"];
    }
    if (!param.empty()) context.AddTrailingMetadata("headwise-error-param", param);
    return grpc::Status(CodeOf(status, code), message);
  }

  // Runs a REST request with a whole answer; a 200 goes to `fill`.
  template <typename Fill>
  grpc::Status Call(grpc::ServerContext& context, std::string path, std::string body, Fill&& fill) {
    auto exchange = Start(context, std::move(path), std::move(body));
    std::string answer;
    while (!exchange->Take(answer, kPoll)) {
    }
    const int status = exchange->answered_status();
    if (status != 200) return ErrorStatus(context, status, answer);
    const Json parsed = Json::parse(answer, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded()) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "the REST answer is not JSON");
    }
    try {
      fill(parsed);
      return grpc::Status::OK;
    } catch (const Json::exception& e) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          std::string("the REST answer did not map: ") + e.what());
    }
  }

  static Json Messages(const google::protobuf::RepeatedPtrField<pb::ChatMessage>& messages) {
    Json out = Json::array();
    for (const pb::ChatMessage& m : messages) {
      out.push_back({{"role", m.role()}, {"content", m.content()}});
    }
    return out;
  }

  // The fields Generate and Chat share, added to `body`, which then streams with usage and token
  // ids.
  template <typename Request>
  static Json CommonFields(const Request& in, Json body) {
    if (!in.model().empty()) body["model"] = in.model();
    if (in.has_max_tokens()) body["max_tokens"] = in.max_tokens();
    if (in.has_temperature()) body["temperature"] = in.temperature();
    if (in.has_top_p()) body["top_p"] = in.top_p();
    if (in.has_top_k()) body["top_k"] = in.top_k();
    if (in.has_min_p()) body["min_p"] = in.min_p();
    if (in.has_repetition_penalty()) body["repetition_penalty"] = in.repetition_penalty();
    if (in.has_presence_penalty()) body["presence_penalty"] = in.presence_penalty();
    if (in.has_frequency_penalty()) body["frequency_penalty"] = in.frequency_penalty();
    if (in.has_seed()) body["seed"] = in.seed();
    if (in.stop_size() > 0) {
      body["stop"] = std::vector<std::string>(in.stop().begin(), in.stop().end());
    }
    if (in.stop_token_ids_size() > 0) {
      body["stop_token_ids"] =
          std::vector<int32_t>(in.stop_token_ids().begin(), in.stop_token_ids().end());
    }
    if (in.has_ignore_eos()) body["ignore_eos"] = in.ignore_eos();
    if (in.logit_bias_size() > 0) {
      Json bias = Json::object();
      for (const auto& [id, value] : in.logit_bias()) bias[std::to_string(id)] = value;
      body["logit_bias"] = std::move(bias);
    }
    if (!in.user().empty()) body["user"] = in.user();
    if (in.has_n()) body["n"] = in.n();
    body["headwise"] = {{"token_ids", true}};
    if (!in.arm().empty()) body["headwise"]["arm"] = in.arm();
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    return body;
  }

  // Runs a streaming REST request and writes each chunk of its SSE stream as a message.
  template <typename Response>
  grpc::Status Stream(grpc::ServerContext& context, std::string path, const Json& body,
                      grpc::ServerWriter<Response>& writer) {
    auto exchange = Start(context, std::move(path), DumpJson(body));
    std::string pending;  // SSE text not yet a whole event
    for (;;) {
      const bool ended = exchange->Take(pending, kPoll);
      if (!exchange->streaming()) {
        if (ended) return ErrorStatus(context, exchange->answered_status(), pending);
        if (context.IsCancelled()) return grpc::Status::CANCELLED;
        if (stopping_) return ShuttingDown();
        continue;
      }
      // Whole events "data: <json>\n\n", each one message; "data: [DONE]" ends the stream.
      for (size_t end; (end = pending.find("\n\n")) != std::string::npos;) {
        const std::string event = pending.substr(0, end);
        pending.erase(0, end + 2);
        constexpr std::string_view kData = "data: ";
        if (event.rfind(kData, 0) != 0) continue;
        const std::string_view payload = std::string_view(event).substr(kData.size());
        if (payload == "[DONE]") return grpc::Status::OK;
        const Json chunk = Json::parse(payload, nullptr, /*allow_exceptions=*/false);
        if (chunk.is_discarded()) {
          return grpc::Status(grpc::StatusCode::INTERNAL, "a stream chunk is not JSON");
        }
        if (chunk.contains("error")) return ErrorStatus(context, 500, std::string(payload));
        Response message;
        try {
          Fill(chunk, message);
        } catch (const Json::exception& e) {
          return grpc::Status(grpc::StatusCode::INTERNAL,
                              std::string("a stream chunk did not map: ") + e.what());
        }
        if (!writer.Write(message)) return grpc::Status::CANCELLED;  // the client has gone
      }
      if (ended || stopping_) {
        // A stream cut before [DONE]: the server stopped, or the client went away.
        return context.IsCancelled() ? grpc::Status::CANCELLED : ShuttingDown();
      }
    }
  }

  // One streamed chunk (a completion's or a chat's, or the usage chunk) as a message.
  template <typename Response>
  static void Fill(const Json& chunk, Response& out) {
    constexpr bool chat = std::is_same_v<Response, pb::ChatResponse>;
    out.set_id(chunk.at("id").get<std::string>());
    for (const Json& choice : chunk.at("choices")) {
      out.set_index(choice.at("index").get<int32_t>());
      if constexpr (chat) {
        const Json& delta = choice.at("delta");
        if (auto role = delta.find("role"); role != delta.end())
          out.set_role(role->get<std::string>());
        if (auto content = delta.find("content"); content != delta.end() && !content->is_null()) {
          out.set_text(out.text() + content->get<std::string>());
        }
      } else {
        out.set_text(out.text() + choice.at("text").get<std::string>());
      }
      if (auto ids = choice.find("token_ids"); ids != choice.end()) {
        for (const Json& id : *ids) out.add_token_ids(id.get<int32_t>());
      }
      if (const Json& lp = choice.at("logprobs"); !lp.is_null()) {
        if constexpr (chat) {
          for (const Json& entry : lp.at("content")) {
            pb::TokenLogprob* t = out.add_logprobs();
            t->set_token(entry.at("token").get<std::string>());
            t->set_logprob(entry.at("logprob").get<float>());
            for (const Json& alt : entry.at("top_logprobs")) {
              (*t->mutable_top_logprobs())[alt.at("token").get<std::string>()] =
                  alt.at("logprob").get<float>();
            }
          }
        } else {
          const Json& tokens = lp.at("tokens");
          for (size_t i = 0; i < tokens.size(); ++i) {
            pb::TokenLogprob* t = out.add_logprobs();
            t->set_token(tokens[i].get<std::string>());
            t->set_logprob(lp.at("token_logprobs")[i].get<float>());
            const Json& top = lp.at("top_logprobs");
            if (top.is_array() && top[i].is_object()) {
              for (const auto& [token, value] : top[i].items()) {
                (*t->mutable_top_logprobs())[token] = value.template get<float>();
              }
            }
          }
        }
      }
      if (const Json& reason = choice.at("finish_reason"); !reason.is_null()) {
        out.set_finish_reason(reason.get<std::string>());
      }
    }
    if (auto usage = chunk.find("usage"); usage != chunk.end() && !usage->is_null()) {
      out.mutable_usage()->set_prompt_tokens(usage->at("prompt_tokens").get<int32_t>());
      out.mutable_usage()->set_completion_tokens(usage->at("completion_tokens").get<int32_t>());
      out.mutable_usage()->set_total_tokens(usage->at("total_tokens").get<int32_t>());
    }
    if (auto run = chunk.find("headwise"); run != chunk.end() && run->is_object()) {
      out.mutable_headwise()->set_arm(run->at("arm").get<std::string>());
      out.mutable_headwise()->set_attention_policy(run->at("attention_policy").get<std::string>());
      out.mutable_headwise()->set_policy_hash(run->at("policy_hash").get<std::string>());
    }
  }

  HttpServer& http_;
  std::atomic<bool> stopping_{false};
};

namespace {

// Counts every call answered, by method and status code, as the server sends its status.
class CountingInterceptor final : public grpc::experimental::Interceptor {
 public:
  CountingInterceptor(grpc::experimental::ServerRpcInfo* info, MetricsRegistry& metrics)
      : info_(info), metrics_(metrics) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      std::string method = info_->method();
      method = method.substr(method.rfind('/') + 1);  // "/headwise.v1.Headwise/Generate"
      metrics_.Increment("headwise_grpc_requests_total", 1.0,
                         {{"method", method}, {"code", CodeName(methods->GetSendStatus())}});
    }
    methods->Proceed();
  }

 private:
  static std::string CodeName(const grpc::Status& status) {
    static constexpr const char* kNames[] = {"OK",
                                             "CANCELLED",
                                             "UNKNOWN",
                                             "INVALID_ARGUMENT",
                                             "DEADLINE_EXCEEDED",
                                             "NOT_FOUND",
                                             "ALREADY_EXISTS",
                                             "PERMISSION_DENIED",
                                             "RESOURCE_EXHAUSTED",
                                             "FAILED_PRECONDITION",
                                             "ABORTED",
                                             "OUT_OF_RANGE",
                                             "UNIMPLEMENTED",
                                             "INTERNAL",
                                             "UNAVAILABLE",
                                             "DATA_LOSS",
                                             "UNAUTHENTICATED"};
    const auto code = static_cast<size_t>(status.error_code());
    return code < std::size(kNames) ? kNames[code] : std::to_string(code);
  }

  grpc::experimental::ServerRpcInfo* info_;
  MetricsRegistry& metrics_;
};

class CountingInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CountingInterceptorFactory(MetricsRegistry& metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new CountingInterceptor(info, metrics_);
  }

 private:
  MetricsRegistry& metrics_;
};

}  // namespace

struct GrpcServer::Running {
  std::unique_ptr<grpc::Server> server;
  std::once_flag stopped;
  // grpc.health.v1 follows GET /health: a thread asks it every kHealthPeriod until Stop.
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  std::thread health;
};

namespace {
constexpr std::chrono::milliseconds kHealthPeriod{500};
constexpr std::chrono::seconds kStopGrace{2};
}  // namespace

GrpcServer::GrpcServer(HttpServer& http, MetricsRegistry& metrics, GrpcOptions options)
    : service_(std::make_unique<Service>(http)), metrics_(metrics), options_(std::move(options)) {
  metrics_.DeclareCounter("headwise_grpc_requests_total",
                          "gRPC calls answered, by method and status code");
}

GrpcServer::~GrpcServer() {
  Stop();
}

StatusOr<int> GrpcServer::Start() {
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.host + ":" + std::to_string(options_.port),
                           grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(service_.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<CountingInterceptorFactory>(metrics_));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  auto running = std::make_unique<Running>();
  running->server = builder.BuildAndStart();
  if (!running->server || port == 0) {
    return Internal("gRPC: could not listen on {}:{}", options_.host, options_.port);
  }
  running_ = std::move(running);
  Running& r = *running_;
  grpc::HealthCheckServiceInterface* health = r.server->GetHealthCheckService();
  auto report = [health](bool up) {
    health->SetServingStatus(pb::Headwise::service_full_name(), up);
    health->SetServingStatus(up);  // the server as a whole ("")
  };
  report(service_->Healthy());  // before the port is announced: no client finds it unknown
  r.health = std::thread([this, &r, report] {
    std::unique_lock lock(r.mu);
    while (!r.cv.wait_for(lock, kHealthPeriod, [&] { return r.stopping; })) {
      lock.unlock();
      report(service_->Healthy());
      lock.lock();
    }
    report(false);
  });
  return port;
}

void GrpcServer::Stop() {
  if (!running_) return;
  std::call_once(running_->stopped, [&] {
    {
      std::lock_guard lock(running_->mu);
      running_->stopping = true;
    }
    running_->cv.notify_all();
    running_->health.join();
    service_->Stopping();
    // The HTTP server has drained by now (serve stops it first), so every handler's exchange has
    // ended or is cut: each handler sees that within kPoll and returns its status. Cancelling at
    // once would race a handler still writing its stream's last messages (the client would get
    // UNAVAILABLE after finish_reason "abort"); what is left after the grace is cancelled.
    running_->server->Shutdown(std::chrono::system_clock::now() + kStopGrace);
  });
}

}  // namespace headwise::server
