#include "server/http_parser.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>

namespace headwise::server::http {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// RFC 9110 tchar: what a method or a header name may hold.
bool IsTokenChar(char c) {
  if (std::isalnum(static_cast<unsigned char>(c))) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool IsToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsTokenChar);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes a path; false on a malformed escape or an encoded NUL.
bool DecodePath(std::string_view in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return false;
    const int hi = HexValue(in[i + 1]), lo = HexValue(in[i + 2]);
    if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) return false;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return true;
}

// A comma-separated header value holds `token` (case-insensitive), e.g. "keep-alive, Upgrade".
bool ListHas(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    const size_t comma = value.find(',');
    const std::string_view item = Trim(value.substr(0, comma));
    if (Lower(item) == token) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

}  // namespace

std::string_view Request::Header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return v;
  }
  return {};
}

void RequestParser::Reset() {
  const ParserLimits limits = limits_;
  *this = RequestParser(limits);
}

bool RequestParser::Fail(int status, std::string message) {
  state_ = State::kError;
  error_status_ = status;
  error_message_ = std::move(message);
  return false;
}

size_t RequestParser::TakeLine(std::string_view data, size_t max, int status, const char* what,
                               bool& complete) {
  complete = false;
  const size_t lf = data.find('\n');
  const size_t take = lf == std::string_view::npos ? data.size() : lf + 1;
  // The limit holds for what is buffered, so a line without end cannot grow the buffer.
  if (line_.size() + take > max + 2) {
    Fail(status, fmt::format("{} is longer than {} bytes", what, max));
    return take;
  }
  line_.append(data.substr(0, take));
  if (lf != std::string_view::npos) {
    line_.pop_back();  // LF
    if (!line_.empty() && line_.back() == '\r') line_.pop_back();
    complete = true;
  }
  return take;
}

size_t RequestParser::Feed(std::string_view data) {
  size_t used = 0;
  while (used < data.size() && (state_ == State::kHead || state_ == State::kBody)) {
    if (!data.empty()) started_ = true;
    const std::string_view rest = data.substr(used);
    used += state_ == State::kHead ? FeedHead(rest) : FeedBody(rest);
  }
  // A request without a body is done the moment its head is: FinishHead sets kDone itself.
  return used;
}

size_t RequestParser::FeedHead(std::string_view data) {
  // Empty lines before the request line are ignored (RFC 9112 §2.2).
  const size_t max = seen_request_line_ ? limits_.max_header_line : limits_.max_request_line;
  const int status = seen_request_line_ ? 431 : 414;
  bool complete = false;
  const size_t used = TakeLine(data, max, status,
                               seen_request_line_ ? "a header line" : "the request line", complete);
  if (state_ == State::kError || !complete) return used;
  header_bytes_ += used;
  if (header_bytes_ > limits_.max_header_bytes) {
    Fail(431, fmt::format("the request's header section is larger than {} bytes",
                          limits_.max_header_bytes));
    return used;
  }
  std::string line = std::move(line_);
  line_.clear();
  if (!seen_request_line_) {
    if (line.empty()) return used;
    if (ParseRequestLine(line)) seen_request_line_ = true;
    return used;
  }
  if (line.empty()) {
    FinishHead();
    return used;
  }
  ParseHeaderLine(line);
  return used;
}

bool RequestParser::ParseRequestLine(std::string_view line) {
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
    return Fail(400, "malformed request line");
  }
  const std::string_view method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (!IsToken(method)) return Fail(400, "malformed request method");
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || !std::isdigit(version[5]) ||
      version[6] != '.' || !std::isdigit(version[7])) {
    return Fail(400, "malformed HTTP version");
  }
  if (version[5] != '1')
    return Fail(505, fmt::format("{} is not supported; use HTTP/1.1", version));
  if (target.empty() || target.front() != '/') {
    return Fail(400, "the request target must be an absolute path");
  }
  for (char c : target) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return Fail(400, "the request target holds a control character");
    }
  }
  request_.method = std::string(method);
  request_.target = std::string(target);
  request_.version_minor = version[7] - '0';
  const size_t q = target.find('?');
  if (!DecodePath(target.substr(0, q), request_.path)) {
    return Fail(400, "the request path holds a malformed percent escape");
  }
  if (q != std::string_view::npos) request_.query = std::string(target.substr(q + 1));
  return true;
}

bool RequestParser::ParseHeaderLine(std::string_view line) {
  if (line.front() == ' ' || line.front() == '\t') {
    return Fail(400, "obsolete header line folding is not accepted");
  }
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos || !IsToken(line.substr(0, colon))) {
    return Fail(400, "malformed header line");
  }
  if (request_.headers.size() >= limits_.max_headers) {
    return Fail(431, fmt::format("the request has more than {} header lines", limits_.max_headers));
  }
  const std::string_view value = Trim(line.substr(colon + 1));
  for (char c : value) {
    if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f) {
      return Fail(400, "a header value holds a control character");
    }
  }
  request_.headers.emplace_back(Lower(line.substr(0, colon)), std::string(value));
  return true;
}

bool RequestParser::FinishHead() {
  bool has_length = false, has_chunked = false;
  std::string connection;
  for (const auto& [name, value] : request_.headers) {
    if (name == "content-length") {
      if (value.empty() || value.size() > 19 ||
          !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return Fail(400, fmt::format("invalid Content-Length '{}'", value));
      }
      const uint64_t n = std::stoull(value);
      if (has_length && n != content_length_) {
        return Fail(400, "the request has two different Content-Length headers");
      }
      has_length = true;
      content_length_ = n;
    } else if (name == "transfer-encoding") {
      // Only "chunked", once, as the final coding; anything else cannot be framed safely.
      if (has_chunked || Lower(value) != "chunked") {
        return Fail(501,
                    fmt::format("Transfer-Encoding '{}' is not supported (only chunked)", value));
      }
      has_chunked = true;
    } else if (name == "content-encoding") {
      const std::string coding = Lower(value);
      if (coding != "identity" && coding != "gzip" && coding != "x-gzip" && coding != "deflate") {
        return Fail(415, fmt::format("Content-Encoding '{}' is not supported (gzip, deflate or "
                                     "identity)",
                                     value));
      }
      if (!content_encoding_.empty() && coding != "identity") {
        return Fail(415, "more than one Content-Encoding is not supported");
      }
      if (coding != "identity") content_encoding_ = coding;
    } else if (name == "connection") {
      connection += value + ",";
    } else if (name == "expect") {
      if (Lower(value) != "100-continue") {
        return Fail(417, fmt::format("Expect '{}' is not supported", value));
      }
      request_.expect_continue = true;
    }
  }
  if (has_length && has_chunked) {
    return Fail(400, "the request has both Content-Length and Transfer-Encoding");
  }
  request_.keep_alive = request_.version_minor >= 1 ? !ListHas(connection, "close")
                                                    : ListHas(connection, "keep-alive");
  if (has_length && content_length_ > limits_.max_body_bytes) {
    return Fail(413, fmt::format("the request body of {} bytes is over the limit of {} bytes",
                                 content_length_, limits_.max_body_bytes));
  }
  if (has_chunked) {
    body_mode_ = BodyMode::kChunked;
    state_ = State::kBody;
    return true;
  }
  if (has_length && content_length_ > 0) {
    body_mode_ = BodyMode::kLength;
    request_.body.reserve(content_length_);
    state_ = State::kBody;
    return true;
  }
  request_.expect_continue = false;  // nothing to wait for
  return FinishBody();
}

size_t RequestParser::FeedBody(std::string_view data) {
  if (body_mode_ == BodyMode::kChunked) return FeedChunked(data);
  const size_t take = std::min<uint64_t>(data.size(), content_length_ - request_.body.size());
  request_.body.append(data.substr(0, take));
  if (request_.body.size() == content_length_) FinishBody();
  return take;
}

size_t RequestParser::FeedChunked(std::string_view data) {
  bool complete = false;
  switch (chunk_state_) {
    case ChunkState::kSize: {
      const size_t used = TakeLine(data, 1024, 400, "a chunk-size line", complete);
      if (state_ == State::kError || !complete) return used;
      std::string_view line = line_;
      line = line.substr(0, line.find(';'));  // chunk extensions are ignored
      line = Trim(line);
      uint64_t size = 0;
      if (line.empty() || line.size() > 15) return Fail(400, "malformed chunk size"), used;
      for (char c : line) {
        const int v = HexValue(c);
        if (v < 0) return Fail(400, "malformed chunk size"), used;
        size = size * 16 + static_cast<uint64_t>(v);
      }
      line_.clear();
      if (size > limits_.max_body_bytes - request_.body.size()) {
        return Fail(413, fmt::format("the chunked request body is over the limit of {} bytes",
                                     limits_.max_body_bytes)),
               used;
      }
      chunk_left_ = size;
      chunk_state_ = size == 0 ? ChunkState::kTrailer : ChunkState::kData;
      return used;
    }
    case ChunkState::kData: {
      const size_t take = std::min<uint64_t>(data.size(), chunk_left_);
      request_.body.append(data.substr(0, take));
      chunk_left_ -= take;
      if (chunk_left_ == 0) chunk_state_ = ChunkState::kDataEnd;
      return take;
    }
    case ChunkState::kDataEnd: {
      const size_t used = TakeLine(data, 0, 400, "the end of a chunk", complete);
      if (state_ == State::kError || !complete) return used;
      if (!line_.empty()) return Fail(400, "a chunk is longer than its size"), used;
      chunk_state_ = ChunkState::kSize;
      return used;
    }
    case ChunkState::kTrailer: {
      // Trailer fields are read and dropped, counted against the header limits.
      const size_t used = TakeLine(data, limits_.max_header_line, 431, "a trailer line", complete);
      if (state_ == State::kError || !complete) return used;
      header_bytes_ += used;
      if (header_bytes_ > limits_.max_header_bytes) {
        return Fail(431, fmt::format("the request's header section is larger than {} bytes",
                                     limits_.max_header_bytes)),
               used;
      }
      const bool end = line_.empty();
      line_.clear();
      if (end) FinishBody();
      return used;
    }
  }
  return 0;
}

bool RequestParser::FinishBody() {
  if (!content_encoding_.empty() && !request_.body.empty()) {
    std::string inflated;
    bool too_large = false;
    const std::string err =
        Inflate(content_encoding_, request_.body, limits_.max_body_bytes, inflated, too_large);
    if (too_large) {
      return Fail(413, fmt::format("the request body inflates to more than the limit of {} bytes",
                                   limits_.max_body_bytes));
    }
    if (!err.empty())
      return Fail(400, fmt::format("cannot decode the {} body: {}", content_encoding_, err));
    request_.body = std::move(inflated);
  }
  state_ = State::kDone;
  return true;
}

std::string Inflate(std::string_view coding, std::string_view in, size_t max_bytes,
                    std::string& out, bool& too_large) {
  too_large = false;
  out.clear();
  const bool gzip = coding == "gzip" || coding == "x-gzip";
  // gzip: 16 + MAX_WBITS. deflate: zlib-wrapped as RFC 9110 says, but some clients send raw
  // deflate; a zlib stream starts with a header whose first 16 bits are a multiple of 31.
  int window_bits = 16 + MAX_WBITS;
  if (!gzip) {
    const bool zlib_header =
        in.size() >= 2 && (static_cast<unsigned char>(in[0]) & 0x0f) == 8 &&
        ((static_cast<unsigned char>(in[0]) << 8) | static_cast<unsigned char>(in[1])) % 31 == 0;
    window_bits = zlib_header ? MAX_WBITS : -MAX_WBITS;
  }
  z_stream zs{};
  if (inflateInit2(&zs, window_bits) != Z_OK) return "zlib initialisation failed";
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  std::string error;
  char buf[16384];
  while (true) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    const int rc = inflate(&zs, Z_NO_FLUSH);
    const size_t produced = sizeof(buf) - zs.avail_out;
    if (out.size() + produced > max_bytes) {
      too_large = true;
      error = "too large";
      break;
    }
    out.append(buf, produced);
    if (rc == Z_STREAM_END) {
      // Concatenated gzip members form one body (RFC 1952 §2.2).
      if (gzip && zs.avail_in > 0) {
        if (inflateReset(&zs) != Z_OK) {
          error = "zlib reset failed";
          break;
        }
        continue;
      }
      if (zs.avail_in > 0) error = "data after the end of the compressed stream";
      break;
    }
    // With room to write, Z_BUF_ERROR means the input ran out before the stream's end.
    if (rc == Z_BUF_ERROR) {
      error = "the compressed stream is truncated";
      break;
    }
    if (rc != Z_OK) {
      error = zs.msg ? zs.msg : "corrupt compressed data";
      break;
    }
  }
  inflateEnd(&zs);
  if (!error.empty()) out.clear();
  return error;
}

const char* ReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 415:
      return "Unsupported Media Type";
    case 417:
      return "Expectation Failed";
    case 422:
      return "Unprocessable Content";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 499:
      return "Client Closed Request";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return status < 400 ? "OK" : status < 500 ? "Bad Request" : "Internal Server Error";
  }
}

}  // namespace headwise::server::http
