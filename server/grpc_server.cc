#include "server/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "headwise/v1/headwise.grpc.pb.h"
#include "server/http_server.h"

namespace headwise::server {
namespace {

using Json = nlohmann::ordered_json;
namespace pb = headwise::v1;

// An exchange whose request comes from an RPC and whose response stays here for the RPC to map.
class InProcessExchange final : public http::Exchange {
 public:
  // `context`: the RPC whose cancellation means the client has gone; null: none.
  InProcessExchange(http::Request request, const grpc::ServerContext* context)
      : Exchange(std::move(request)), context_(context) {}

  void Reply(int status, std::string_view, std::string body, http::Headers) override {
    if (responded()) return;
    status_ = status;
    body_ = std::move(body);
  }
  // Streams are for Generate and Chat, not served yet: a handler that starts one gets a 500.
  void StartStream(int, std::string_view, http::Headers) override {
    Reply(500, "", R"({"error":{"message":"streaming over gRPC is not served yet"}})", {});
  }
  bool Write(std::string_view) override { return false; }
  void End() override {}
  bool gone() const override { return context_ != nullptr && context_->IsCancelled(); }

  const std::string& body() const { return body_; }

 private:
  const grpc::ServerContext* context_;
  std::string body_;
};

grpc::StatusCode CodeOf(int http_status, std::string_view error_type) {
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
      // A full queue is the client's to retry later; a server shutting down is unavailable.
      return error_type == "server_error" ? grpc::StatusCode::UNAVAILABLE
                                          : grpc::StatusCode::RESOURCE_EXHAUSTED;
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
    return Call(*context, "GET", "/v1/models", "", [&](const Json& body) {
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
    return Call(*context, "GET", "/v1/arms", "", [&](const Json& body) {
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
      Json messages = Json::array();
      for (const pb::ChatMessage& m : in->messages()) {
        messages.push_back({{"role", m.role()}, {"content", m.content()}});
      }
      request["messages"] = std::move(messages);
      if (in->has_add_generation_prompt()) {
        request["add_generation_prompt"] = in->add_generation_prompt();
      }
    } else {
      request["prompt"] = in->prompt();
    }
    if (in->has_add_special_tokens()) request["add_special_tokens"] = in->add_special_tokens();
    return Call(*context, "POST", "/tokenize", request.dump(), [&](const Json& body) {
      out->set_count(body.at("count").get<int32_t>());
      out->set_max_model_len(body.at("max_model_len").get<int32_t>());
      for (const Json& id : body.at("tokens")) out->add_tokens(id.get<int32_t>());
    });
  }

  grpc::Status Detokenize(grpc::ServerContext* context, const pb::DetokenizeRequest* in,
                          pb::DetokenizeResponse* out) override {
    Json request{{"tokens", std::vector<int32_t>(in->tokens().begin(), in->tokens().end())}};
    if (!in->model().empty()) request["model"] = in->model();
    return Call(*context, "POST", "/detokenize", request.dump(),
                [&](const Json& body) { out->set_prompt(body.at("prompt").get<std::string>()); });
  }

  // Whether GET /health answers 200: the engine runs and the server is not stopping.
  bool Healthy() {
    auto exchange = std::make_shared<InProcessExchange>(Request("GET", "/health", ""), nullptr);
    http_.HandleInProcess(exchange);
    return exchange->status() == 200;
  }

 private:
  static http::Request Request(std::string method, std::string path, std::string body) {
    http::Request request;
    request.method = std::move(method);
    request.target = path;
    request.path = std::move(path);
    request.body = std::move(body);
    request.headers.emplace_back("content-type", "application/json");
    return request;
  }

  // Runs the REST request in process; a 200 goes to `fill`, anything else becomes the status.
  template <typename Fill>
  grpc::Status Call(grpc::ServerContext& context, std::string method, std::string path,
                    std::string body, Fill&& fill) {
    http::Request request = Request(std::move(method), std::move(path), std::move(body));
    // The API key travels as the same header, in metadata.
    const auto& metadata = context.client_metadata();
    if (auto it = metadata.find("authorization"); it != metadata.end()) {
      request.headers.emplace_back("authorization",
                                   std::string(it->second.data(), it->second.size()));
    }
    auto exchange = std::make_shared<InProcessExchange>(std::move(request), &context);
    http_.HandleInProcess(exchange);
    const Json answer = Json::parse(exchange->body(), nullptr, /*allow_exceptions=*/false);
    if (exchange->status() == 200 && !answer.is_discarded()) {
      try {
        fill(answer);
        return grpc::Status::OK;
      } catch (const Json::exception& e) {
        return grpc::Status(grpc::StatusCode::INTERNAL,
                            std::string("the REST answer did not map: ") + e.what());
      }
    }
    std::string message = "no response", type, param;
    if (answer.is_object() && answer.contains("error") && answer["error"].is_object()) {
      const Json& error = answer["error"];
      message = error.value("message", message);
      if (error.contains("type") && error["type"].is_string()) type = error["type"];
      if (error.contains("param") && error["param"].is_string()) param = error["param"];
    }
    if (!param.empty()) context.AddTrailingMetadata("headwise-error-param", param);
    return grpc::Status(CodeOf(exchange->status(), type), message);
  }

  HttpServer& http_;
};

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
}  // namespace

GrpcServer::GrpcServer(HttpServer& http, GrpcOptions options)
    : service_(std::make_unique<Service>(http)), options_(std::move(options)) {}

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
    // The HTTP server has drained by now (serve stops it first): whatever is left is cancelled.
    running_->server->Shutdown(std::chrono::system_clock::now());
  });
}

}  // namespace headwise::server
