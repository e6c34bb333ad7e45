#include "server/http_parser.h"

#include <zlib.h>

#include <catch2/catch.hpp>
#include <string>

namespace {

using headwise::server::http::Inflate;
using headwise::server::http::ParserLimits;
using headwise::server::http::RequestParser;
using State = RequestParser::State;

ParserLimits SmallLimits() {
  ParserLimits l;
  l.max_request_line = 64;
  l.max_header_line = 64;
  l.max_header_bytes = 256;
  l.max_headers = 4;
  l.max_body_bytes = 100;
  return l;
}

// Feeds `text` whole and returns the parser.
RequestParser Parse(const std::string& text, ParserLimits limits = SmallLimits()) {
  RequestParser p(limits);
  p.Feed(text);
  return p;
}

std::string Compress(const std::string& in, int window_bits) {
  z_stream zs{};
  REQUIRE(deflateInit2(&zs, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::string out(deflateBound(&zs, in.size()) + 32, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

}  // namespace

TEST_CASE("http parser: a request with a body, fed a byte at a time", "[server]") {
  const std::string text =
      "POST /v1/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
      "X-Thing:  spaced value \r\n\r\nhelloGET";
  RequestParser p(SmallLimits());
  size_t used = 0;
  while (used < text.size() && p.state() != State::kDone) {
    used += p.Feed(std::string_view(text).substr(used, 1));
  }
  REQUIRE(p.state() == State::kDone);
  // It stops at the end of the request: the next one's bytes stay with the caller.
  CHECK(text.substr(used) == "GET");
  const auto& r = p.request();
  CHECK(r.method == "POST");
  CHECK(r.path == "/v1/completions");
  CHECK(r.query == "x=1");
  CHECK(r.body == "hello");
  CHECK(r.Header("x-thing") == "spaced value");
  CHECK(r.keep_alive);
}

TEST_CASE("http parser: pipelined requests are parsed one at a time", "[server]") {
  const std::string text = "GET /health HTTP/1.1\r\n\r\nGET /v1/models HTTP/1.1\r\n\r\n";
  RequestParser p(SmallLimits());
  const size_t used = p.Feed(text);
  REQUIRE(p.state() == State::kDone);
  CHECK(p.request().path == "/health");
  p.Reset();
  CHECK(p.Feed(std::string_view(text).substr(used)) == text.size() - used);
  REQUIRE(p.state() == State::kDone);
  CHECK(p.request().path == "/v1/models");
}

TEST_CASE("http parser: keep-alive by version and Connection", "[server]") {
  CHECK_FALSE(Parse("GET / HTTP/1.0\r\n\r\n").request().keep_alive);
  CHECK(Parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").request().keep_alive);
  CHECK_FALSE(Parse("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n").request().keep_alive);
}

TEST_CASE("http parser: paths are percent-decoded", "[server]") {
  CHECK(Parse("GET /v1/models/a%2Fb HTTP/1.1\r\n\r\n").request().path == "/v1/models/a/b");
  CHECK(Parse("GET /a%2 HTTP/1.1\r\n\r\n").error_status() == 400);
  CHECK(Parse("GET /a%00 HTTP/1.1\r\n\r\n").error_status() == 400);
}

TEST_CASE("http parser: size limits give 414, 431 and 413 at once", "[server]") {
  // The request line and a header line over their limits, before their end arrives.
  CHECK(Parse("GET /" + std::string(100, 'a')).error_status() == 414);
  CHECK(Parse("GET / HTTP/1.1\r\nX: " + std::string(100, 'a')).error_status() == 431);
  // Too many header lines, and too many bytes of them.
  std::string many = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < 5; ++i) many += "A: b\r\n";
  CHECK(Parse(many).error_status() == 431);
  std::string big = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < 4; ++i) big += "A: " + std::string(60, 'x') + "\r\n";
  CHECK(Parse(big).error_status() == 431);
  // At the limits it passes.
  std::string four = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < 4; ++i) four += "A: b\r\n";
  CHECK(Parse(four + "\r\n").state() == State::kDone);
  // A declared body over the limit is refused from the head alone.
  const auto p = Parse("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n");
  CHECK(p.error_status() == 413);
  CHECK(Parse("POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + std::string(100, 'x')).state() ==
        State::kDone);
}

TEST_CASE("http parser: ambiguous framing is refused", "[server]") {
  CHECK(Parse("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n").error_status() ==
        400);
  // The same value twice is one length.
  CHECK(Parse("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc").state() ==
        State::kDone);
  CHECK(Parse("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
            .error_status() == 400);
  CHECK(Parse("POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n").error_status() == 400);
  CHECK(Parse("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n").error_status() ==
        400);
  CHECK(Parse("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").error_status() == 501);
  CHECK(Parse("GET / HTTP/1.1\r\n folded\r\n\r\n").error_status() == 400);
  CHECK(Parse("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").error_status() == 400);
  CHECK(Parse("GET / HTTP/2.0\r\n\r\n").error_status() == 505);
  CHECK(Parse("GET http://x/ HTTP/1.1\r\n\r\n").error_status() == 400);
}

TEST_CASE("http parser: chunked bodies are decoded and counted against the limit", "[server]") {
  const auto p = Parse(
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n");
  REQUIRE(p.state() == State::kDone);
  CHECK(p.request().body == "hello world");
  // Over the limit across chunks: refused when the chunk that crosses it is announced.
  std::string over = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  over += "3c\r\n" + std::string(60, 'a') + "\r\n";
  RequestParser q(SmallLimits());
  q.Feed(over);
  CHECK(q.state() == State::kBody);
  q.Feed("29\r\n");  // 41 more: 101 in all
  CHECK(q.error_status() == 413);
  CHECK(
      Parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n").error_status() ==
      400);
  CHECK(Parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").error_status() == 400);
}

TEST_CASE("http parser: gzip and deflate bodies are inflated within the limit", "[server]") {
  const std::string json = R"({"prompt": "hello"})";
  for (int bits : {16 + MAX_WBITS, MAX_WBITS, -MAX_WBITS}) {
    const std::string z = Compress(json, bits);
    const std::string coding = bits > MAX_WBITS ? "gzip" : "deflate";
    const auto p = Parse("POST / HTTP/1.1\r\nContent-Encoding: " + coding +
                         "\r\nContent-Length: " + std::to_string(z.size()) + "\r\n\r\n" + z);
    REQUIRE(p.state() == State::kDone);
    CHECK(p.request().body == json);
  }
  // A small body that inflates past the limit.
  const std::string bomb = Compress(std::string(100000, 'a'), 16 + MAX_WBITS);
  ParserLimits limits = SmallLimits();
  limits.max_body_bytes = 1000;
  CHECK(bomb.size() < 1000);
  const auto p = Parse("POST / HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: " +
                           std::to_string(bomb.size()) + "\r\n\r\n" + bomb,
                       limits);
  CHECK(p.error_status() == 413);
  // Corrupt or truncated data, and unknown codings.
  std::string out;
  bool too_large = false;
  CHECK_FALSE(Inflate("gzip", "not gzip", 1000, out, too_large).empty());
  const std::string z = Compress(json, 16 + MAX_WBITS);
  CHECK_FALSE(Inflate("gzip", z.substr(0, z.size() - 6), 1000, out, too_large).empty());
  CHECK_FALSE(too_large);
  CHECK(Parse("POST / HTTP/1.1\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx")
            .error_status() == 415);
}

TEST_CASE("http parser: Expect 100-continue is seen once the head is complete", "[server]") {
  RequestParser p(SmallLimits());
  p.Feed("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
  CHECK(p.state() == State::kBody);
  CHECK(p.head_complete());
  CHECK(p.request().expect_continue);
  p.Feed("ok");
  CHECK(p.state() == State::kDone);
  CHECK(Parse("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 500\r\n\r\n")
            .error_status() == 413);
  CHECK(Parse("POST / HTTP/1.1\r\nExpect: something\r\n\r\n").error_status() == 417);
}
