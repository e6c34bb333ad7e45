// The OpenAI-compatible HTTP front end over one Engine: routes, SSE streaming, API-key check,
// error mapping, and aborting requests whose client has gone. The sockets, limits and timeouts
// are the transport's (http_transport.h); handlers run on its worker threads, and one pump
// thread carries every running generation from the engine to its client, so a stream costs no
// thread of its own. Each generation request is assigned one of the engine's A/B arms
// (engine/arms.h) by its X-Headwise-Arm-Key header, else its "user" field, else in turn; every
// response names the arm in an X-Headwise-Arm header and in its "headwise" object, and
// GET /v1/arms lists the arms.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "core/metrics.h"
#include "core/status.h"
#include "engine/arms.h"
#include "engine/generation_config.h"
#include "server/http_transport.h"

namespace headwise::engine {
class Engine;
}  // namespace headwise::engine
namespace headwise::tokenizer {
class ChatRenderer;
}  // namespace headwise::tokenizer

namespace headwise::server {

struct ServerOptions {
  // Address, connection limits, timeouts and request size limits.
  http::TransportOptions transport;
  // Names a request's "model" may use; the first is reported in responses. Not empty.
  std::vector<std::string> served_model_names;
  std::string model_path;  // reported as the model's root in /v1/models
  // Empty: no authentication. Otherwise required on every route but /health and /metrics.
  std::string api_key;
  // How long Stop() lets running requests end (streams with an "abort" chunk, others a 503)
  // and their responses be written before connections are cut.
  std::chrono::milliseconds shutdown_timeout{5000};
  // The A/B arms the engine was started with (EngineConfig::arms, in the same order): their
  // weights and whether a request may name its arm. Empty arms: the one-arm case (weight 1,
  // no naming).
  engine::ArmsConfig arms;
  // The model's generation defaults (--generation-config, --override-generation-config): what a
  // request gets for a sampling field it does not send, and its max_tokens default and cap.
  engine::GenerationDefaults generation_defaults;
};

class HttpServer {
 public:
  // The engine (which must have a tokenizer), the chat renderer and the metrics registry must
  // outlive the server. `metrics` is the process's registry, the one the engine reports on:
  // /metrics renders it, and the server adds its HTTP counters to it.
  HttpServer(engine::Engine& engine, const tokenizer::ChatRenderer& chat, MetricsRegistry& metrics,
             ServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket and returns the port (the chosen one for port 0).
  StatusOr<int> Bind();
  // Serves until Stop(); returns once every connection has ended or the shutdown deadline has
  // passed.
  void Run();
  // Serves one request that did not come through the transport (the gRPC front end's,
  // server/grpc_server.h): routing, authentication, validation and the response as for a
  // connection's. Any thread.
  void HandleInProcess(std::shared_ptr<http::Exchange> exchange);
  // Thread-safe, idempotent and non-blocking (a signal handler's thread may call it): stops
  // accepting, aborts running requests (their streams end with finish_reason "abort"), and
  // makes Run() return within shutdown_timeout.
  void Stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace headwise::server
