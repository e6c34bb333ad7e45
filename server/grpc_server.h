// The gRPC front end (proto/headwise/v1/headwise.proto), in the same process as the HTTP one and
// over the same engine. Each RPC becomes the REST request it mirrors and runs through the HTTP
// server's handlers in process (HttpServer::HandleInProcess): both APIs authenticate, validate
// and answer alike by construction. The REST response maps back to the proto message, a REST
// error to a gRPC status (the proto file's header lists the codes). Server reflection is on, and
// grpc.health.v1.Health answers SERVING while GET /health would answer 200 (the engine runs, the
// server is not stopping), checked every half second.
//
// Generate and Chat stream: InProcessExchange queues the SSE chunks of the REST stream for the
// RPC's thread, which maps each to a message; a cancelled call (or one past its deadline) is a
// client gone, which aborts the request.
#pragma once

#include <memory>
#include <string>

#include "core/metrics.h"
#include "core/status.h"

namespace headwise::server {

class HttpServer;

struct GrpcOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port
};

class GrpcServer {
 public:
  // `http` and `metrics` (the process's registry) must outlive the server; each call answered
  // counts in headwise_grpc_requests_total{method, code}.
  GrpcServer(HttpServer& http, MetricsRegistry& metrics, GrpcOptions options);
  ~GrpcServer();  // stops it
  GrpcServer(const GrpcServer&) = delete;
  GrpcServer& operator=(const GrpcServer&) = delete;

  // Starts serving on gRPC's own threads; returns the bound port.
  StatusOr<int> Start();
  // Thread-safe and idempotent: stops accepting and cancels calls in flight.
  void Stop();

 private:
  class Service;
  std::unique_ptr<Service> service_;
  struct Running;
  std::unique_ptr<Running> running_;
  MetricsRegistry& metrics_;
  GrpcOptions options_;
};

}  // namespace headwise::server
