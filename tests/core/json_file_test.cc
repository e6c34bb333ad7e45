// CheckJsonLimits / ParseJson / ReadJsonFile: nesting and value-count limits are enforced by an
// iterative pre-scan, so documents nested 100,000 deep are errors, not stack overflows.
#include "core/json_file.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <string>

namespace headwise {
namespace {

std::string Nested(int depth, const std::string& open = "[", const std::string& close = "]",
                   const std::string& inner = "1") {
  std::string s;
  for (int i = 0; i < depth; ++i) s += open;
  s += inner;
  for (int i = 0; i < depth; ++i) s += close;
  return s;
}

std::string TempPath(const std::string& name) {
  return std::string(HEADWISE_BINARY_DIR) + "/core_test_" + std::to_string(::getpid()) + "_" + name;
}

TEST_CASE("json limits: depth at the limit passes, one more fails", "[core][json]") {
  const std::string at = Nested(kMaxJsonDepth);
  CHECK(CheckJsonLimits(at, {}, "t").ok());
  auto parsed = ParseJson(at, "t");
  REQUIRE(parsed.ok());

  const std::string over = Nested(kMaxJsonDepth + 1);
  const Status s = CheckJsonLimits(over, {}, "t");
  CHECK(s.code() == StatusCode::kInvalidArgument);
  // The limit and where it was crossed: the 129th '[' is byte 128.
  CHECK_THAT(s.message(), Catch::Contains("t: JSON nested deeper than the limit of 128 levels") &&
                              Catch::Contains("at byte 128"));
  CHECK(ParseJson(over, "t").status().message() == s.message());

  // Objects count the same as arrays, mixed too.
  const std::string objects = Nested(5, "{\"a\":", "}");
  JsonLimits five;
  five.max_depth = 5;
  CHECK(CheckJsonLimits(objects, five, "t").ok());
  CHECK(CheckJsonLimits("[" + objects + "]", five, "t").code() == StatusCode::kInvalidArgument);
  // A bare scalar is depth 0.
  JsonLimits zero;
  zero.max_depth = 0;
  CHECK(CheckJsonLimits("\"[{\"", zero, "t").ok());
  CHECK_FALSE(CheckJsonLimits("[]", zero, "t").ok());
}

TEST_CASE("json limits: brackets inside strings and escaped quotes do not count", "[core][json]") {
  JsonLimits one;
  one.max_depth = 1;
  // Brackets in strings, an escaped quote that does not end the string, and an escaped
  // backslash that leaves the following quote to end it.
  const std::string text = R"(["[[[{{{", "a\"[[[", "b\\", "]]]}}}", "[\\\"[["])";
  CHECK(CheckJsonLimits(text, one, "t").ok());
  auto parsed = ParseJson(text, "t", one);
  REQUIRE(parsed.ok());
  CHECK(parsed->size() == 5);
  // After the escaped backslash the string is closed, so a real bracket counts.
  const std::string after = R"(["b\\", [1]])";
  const Status s = CheckJsonLimits(after, one, "t");
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("at byte 8"));
  // Many brackets inside one string at depth 1: far past any limit if they counted.
  CHECK(CheckJsonLimits("[\"" + std::string(100000, '[') + "\"]", one, "t").ok());
}

TEST_CASE("json limits: value count", "[core][json]") {
  JsonLimits four;
  four.max_values = 4;
  CHECK(CheckJsonLimits("[1,1,1]", four, "t").ok());  // the array and three numbers
  CHECK(CheckJsonLimits(R"({"a":1,"b":[2]})", four, "t").ok());
  const Status s = CheckJsonLimits("[1,1,1,1]", four, "body");
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("body: more than the limit of 4 JSON values") &&
                              Catch::Contains("at byte 6"));
  CHECK(CheckJsonLimits("[\"1,1,1,1,1\"]", four, "t").ok());  // commas in strings do not count
}

TEST_CASE("json limits: 100,000-deep documents are errors, not crashes", "[core][json]") {
  for (const auto& [open, close] : {std::pair{"[", "]"}, std::pair{"{\"k\":", "}"}}) {
    const std::string deep = Nested(100000, open, close);
    auto parsed = ParseJson(deep, "deep.json");
    REQUIRE_FALSE(parsed.ok());
    CHECK_THAT(parsed.status().message(), Catch::Contains("nested deeper than"));
  }
  // Unbalanced: still refused by depth, never recursed into.
  CHECK_FALSE(ParseJson(std::string(100000, '['), "t").ok());

  const std::string path = TempPath("deep.json");
  std::ofstream(path) << Nested(100000);
  auto read = ReadJsonFile(path, "config.json");
  std::remove(path.c_str());
  REQUIRE_FALSE(read.ok());
  CHECK_THAT(read.status().message(),
             Catch::Contains(path) && Catch::Contains("nested deeper than the limit of 128"));
}

TEST_CASE("ReadJsonFile: size cap, kinds of file", "[core][json]") {
  const std::string path = TempPath("big.json");
  std::ofstream(path) << "[" << std::string(100, ' ') << "1]";
  auto big = ReadJsonFile(path, "config.json", 64);
  auto fine = ReadJsonFile(path, "config.json", 1000);
  std::remove(path.c_str());
  REQUIRE_FALSE(big.ok());
  CHECK_THAT(big.status().message(),
             Catch::Contains(path + ": 103 bytes is over the limit of 64 for a config.json"));
  REQUIRE(fine.ok());
  CHECK(*fine == nlohmann::json::array({1}));

  auto dir = ReadJsonFile("/", "config.json");
  REQUIRE_FALSE(dir.ok());
  CHECK_THAT(dir.status().message(), Catch::Contains("is a directory"));
  CHECK(ReadJsonFile("/nonexistent/config.json").status().code() == StatusCode::kNotFound);
}

}  // namespace
}  // namespace headwise
