// The HTTP/1.1 transport: one event-loop thread owns every socket (accept, read, parse, write,
// timeouts) and a small pool of worker threads runs the handlers. A connection costs a file
// descriptor and its buffers, never a thread, so idle keep-alive clients and slow senders
// (slowloris) cannot take what serves the others; a handler's response, or a stream's chunks,
// may be written from any thread through its Exchange and are sent by the loop as the client
// reads them.
//
// Limits, each answered at once with a status and `Connection: close`: the request's size
// (http_parser.h: 413 / 414 / 431 / 400), connections beyond max_connections (503), a request
// head not complete within header_timeout or a body stalled for body_timeout (408). An idle
// keep-alive connection closes after keep_alive_timeout; a client that stops reading for
// write_timeout loses its connection (and its stream is aborted by whoever watches gone()).
// TCP_NODELAY is set on every connection: a response is written whole, and Nagle's algorithm
// would hold its last segment for the client's delayed ACK (40 ms on Linux).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "server/http_parser.h"

namespace headwise::server::http {

struct TransportOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                                  // 0: any free port
  int backlog = 4096;                               // listen queue (capped by net.core.somaxconn)
  int max_connections = 4096;                       // open connections; beyond it: 503 and close
  int worker_threads = 8;                           // handler threads
  std::chrono::milliseconds header_timeout{10000};  // request head, from its first byte
  std::chrono::milliseconds body_timeout{30000};    // body: longest gap between bytes
  std::chrono::milliseconds keep_alive_timeout{5000};  // idle between requests
  std::chrono::milliseconds write_timeout{30000};      // longest stall of a client not reading
  ParserLimits limits;
};

using Headers = std::vector<std::pair<std::string, std::string>>;

class Loop;

// One request and its response. Handlers get it on a worker thread; it may be passed on and
// written from any thread. A response is either whole (Reply) or streamed (StartStream, Write,
// End); once the client has gone, writes are dropped and gone() is true. The transport's
// exchanges write to a socket; the gRPC front end runs the same handlers through an exchange of
// its own (server/grpc_server.h).
class Exchange {
 public:
  virtual ~Exchange() = default;
  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;

  const Request& request() const { return request_; }

  virtual void Reply(int status, std::string_view content_type, std::string body,
                     Headers headers = {}) = 0;
  virtual void StartStream(int status, std::string_view content_type, Headers headers = {}) = 0;
  // False once the client has gone. Empty chunks are ignored.
  virtual bool Write(std::string_view chunk) = 0;
  virtual void End() = 0;

  // True once the client has closed or reset its connection, or it was closed for it (write
  // timeout, shutdown deadline). Cheap: an atomic read.
  virtual bool gone() const = 0;
  // Which front end the request came through, for metrics: "http", or the in-process caller's.
  virtual std::string_view frontend() const { return "http"; }
  // The status of the response started, 0 before.
  int status() const { return status_; }
  bool responded() const { return status_ != 0; }

 protected:
  explicit Exchange(Request request) : request_(std::move(request)) {}

  Request request_;
  int status_ = 0;
};

using Handler = std::function<void(std::shared_ptr<Exchange>)>;
// Called for each response begun (on whichever thread began it), for access logs and metrics.
using ResponseObserver = std::function<void(const Request&, int status)>;

class Transport {
 public:
  Transport(TransportOptions options, Handler handler, ResponseObserver observer);
  ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // Binds and listens; returns the port (the chosen one for port 0).
  StatusOr<int> Bind();
  // Serves until Stop(); returns when every connection has ended (or the drain deadline passed)
  // and every handler has returned.
  void Run();
  // Thread-safe, idempotent and non-blocking: stops accepting; idle connections close at once,
  // connections with a response in progress get until `drain_deadline` to finish it.
  void Stop(std::chrono::milliseconds drain_deadline);

 private:
  std::shared_ptr<Loop> loop_;
};

}  // namespace headwise::server::http
