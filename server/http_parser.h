// An incremental HTTP/1.1 request parser with hard limits, and nothing else: no sockets, no
// threads. The transport feeds it bytes as they arrive; it says when a request is complete, when
// it needs more, or which status answers a bad request (and then the connection closes).
//
// What a request may cost is bounded here, before any handler runs: the request line, each
// header line, the header section and the number of headers; the body as read (Content-Length,
// or chunked, whose decoded size is counted as it arrives) and as inflated (Content-Encoding
// gzip or deflate, inflated with the same cap). Ambiguous framing (two different
// Content-Lengths, Content-Length with Transfer-Encoding, a transfer coding other than chunked)
// is refused, as RFC 9112 asks, so no proxy in front can read the stream differently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace headwise::server::http {

struct ParserLimits {
  size_t max_request_line = 8 << 10;   // method, target and version; beyond: 414
  size_t max_header_line = 8 << 10;    // one header line; beyond: 431
  size_t max_header_bytes = 64 << 10;  // the whole header section (and chunked trailers): 431
  size_t max_headers = 128;            // header lines: 431
  size_t max_body_bytes = 16 << 20;    // the body as read and as inflated: 413
};

struct Request {
  std::string method;
  std::string target;     // as sent
  std::string path;       // target before '?', percent-decoded
  std::string query;      // after '?', as sent
  int version_minor = 1;  // HTTP/1.<minor>
  // Names lower-cased, values with surrounding whitespace removed, in arrival order.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;        // decoded: de-chunked and inflated
  bool keep_alive = true;  // HTTP/1.1 unless "Connection: close"; HTTP/1.0 only with keep-alive
  bool expect_continue = false;

  // The first value of header `name` (lower-case), or "" when absent.
  std::string_view Header(std::string_view name) const;
};

class RequestParser {
 public:
  enum class State {
    kHead,   // reading the request line and headers
    kBody,   // the head is complete (head_complete()) and the body is still arriving
    kDone,   // request() is complete
    kError,  // error_status() / error_message() say why; the connection must close
  };

  explicit RequestParser(ParserLimits limits) : limits_(limits) {}

  // Consumes bytes of `data` and returns how many it used: it stops at the end of a complete
  // request (kDone) so that what follows, a pipelined request, stays with the caller.
  size_t Feed(std::string_view data);

  State state() const { return state_; }
  // True from the moment the header section has been parsed (so the transport can answer
  // "Expect: 100-continue" or time the body separately).
  bool head_complete() const { return state_ == State::kBody || state_ == State::kDone; }
  // True once any byte of this request has been consumed.
  bool started() const { return started_; }
  const Request& request() const { return request_; }
  Request TakeRequest() { return std::move(request_); }
  int error_status() const { return error_status_; }
  const std::string& error_message() const { return error_message_; }

  // Ready for the next request on the same connection.
  void Reset();

 private:
  enum class BodyMode { kNone, kLength, kChunked };
  enum class ChunkState { kSize, kData, kDataEnd, kTrailer };

  bool Fail(int status, std::string message);
  bool ParseRequestLine(std::string_view line);
  bool ParseHeaderLine(std::string_view line);
  bool FinishHead();
  bool FinishBody();
  size_t FeedHead(std::string_view data);
  size_t FeedBody(std::string_view data);
  size_t FeedChunked(std::string_view data);
  // Takes one line (without its CR LF) from `data` into line_, appending to a partial one;
  // returns bytes used, with `complete` set once the LF arrived. Fails with `status` when the
  // line grows past `max`.
  size_t TakeLine(std::string_view data, size_t max, int status, const char* what, bool& complete);

  ParserLimits limits_;
  State state_ = State::kHead;
  bool started_ = false;
  Request request_;
  std::string line_;
  size_t header_bytes_ = 0;
  bool seen_request_line_ = false;
  BodyMode body_mode_ = BodyMode::kNone;
  uint64_t content_length_ = 0;
  std::string content_encoding_;
  ChunkState chunk_state_ = ChunkState::kSize;
  uint64_t chunk_left_ = 0;
  int error_status_ = 0;
  std::string error_message_;
};

// Inflates a gzip (RFC 1952, concatenated members allowed) or zlib/deflate (RFC 1950, or raw
// RFC 1951 as some clients send for "deflate") body into `out`, failing when the result would
// exceed `max_bytes`. Returns "" on success, else why it failed; `too_large` tells the cap apart.
std::string Inflate(std::string_view coding, std::string_view in, size_t max_bytes,
                    std::string& out, bool& too_large);

// The reason phrase of a status code ("OK", "Not Found", ...).
const char* ReasonPhrase(int status);

}  // namespace headwise::server::http
