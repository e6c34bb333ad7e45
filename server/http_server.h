// The OpenAI-compatible HTTP front end over one Engine: routes, SSE streaming, API-key check,
// body limit, error mapping, and aborting requests whose client has gone. cpp-httplib is
// confined to http_server.cc (it is a large header).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace headwise::engine {
class ChatRenderer;
class Engine;
}

namespace headwise::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port
  // Names a request's "model" may use; the first is reported in responses. Not empty.
  std::vector<std::string> served_model_names;
  std::string model_path;  // reported as the model's root in /v1/models
  std::string api_key;     // empty: no authentication
  size_t max_body_bytes = 16u << 20;
  int http_threads = 128;  // connections served at once (each stream holds one)
  int keep_alive_seconds = 5;
};

class HttpServer {
 public:
  // The engine (and its model's tokenizer) and the chat renderer must outlive the server.
  HttpServer(engine::Engine& engine, const engine::ChatRenderer& chat, ServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket and returns the port (the chosen one for port 0).
  StatusOr<int> Bind();
  // Serves until Stop(); returns once every connection has ended.
  void Run();
  // Thread-safe and idempotent: stops accepting, aborts running requests (their streams end
  // with finish_reason "abort"), and makes Run() return.
  void Stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace headwise::server
