// The HTTP/1.1 request parser (server/http_parser.h) as the transport drives it: bytes arrive
// in pieces of any size, pipelined requests follow each other, and each request is done or
// refused with a status, never a crash, a hang or a body past the limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "server/http_parser.h"

using headwise::server::http::ParserLimits;
using headwise::server::http::RequestParser;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks the piece size, so that every split of the stream is reachable.
  const size_t piece = 1 + data[0] % 64;
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  ParserLimits limits;
  limits.max_request_line = 256;
  limits.max_header_line = 256;
  limits.max_header_bytes = 1024;
  limits.max_headers = 16;
  limits.max_body_bytes = 4096;
  RequestParser parser(limits);
  std::string pending;
  while (!in.empty() || !pending.empty()) {
    const size_t take = std::min(piece, in.size());
    pending.append(in.substr(0, take));
    in.remove_prefix(take);
    const size_t used = parser.Feed(pending);
    if (used > pending.size()) std::abort();
    pending.erase(0, used);
    switch (parser.state()) {
      case RequestParser::State::kDone:
        if (parser.request().body.size() > limits.max_body_bytes) std::abort();
        parser.Reset();  // the next pipelined request
        break;
      case RequestParser::State::kError:
        if (parser.error_status() < 400 || parser.error_status() > 599) std::abort();
        return 0;  // the transport answers and closes
      default:
        // Not done: it must have taken everything it was given.
        if (!pending.empty()) std::abort();
        if (in.empty()) return 0;
        break;
    }
  }
  return 0;
}
