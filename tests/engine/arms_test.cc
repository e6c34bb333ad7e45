// A/B arms: the arms file's validation, and assignment by key (sticky, deterministic, in
// proportion to the weights), without a key, and by override.
#include "engine/arms.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

namespace headwise::engine {
namespace {

using Catch::Contains;

StatusOr<ArmsConfig> Parse(const std::string& text) {
  return ParseArms(text, "/policies", "arms.json");
}

TEST_CASE("Arms files: fields, paths and precise errors", "[arms]") {
  auto ok = Parse(R"({"schema": "headwise-arms/v1", "allow_override": true, "arms": [
      {"name": "dense", "attention_policy": null, "weight": 3},
      {"name": "duo-s50", "attention_policy": "duo.json"},
      {"name": "abs", "attention_policy": "/etc/p.json", "weight": 0.5}]})");
  REQUIRE(ok.ok());
  REQUIRE(ok->arms.size() == 3);
  CHECK(ok->allow_override);
  CHECK(ok->arms[0].policy_path.empty());
  CHECK(ok->arms[0].weight == 3.0);
  CHECK(ok->arms[1].policy_path == "/policies/duo.json");
  CHECK(ok->arms[1].weight == 1.0);
  CHECK(ok->arms[2].policy_path == "/etc/p.json");

  const auto error = [](const std::string& text) { return Parse(text).status().message(); };
  CHECK_THAT(error("[]"), Contains("must be a JSON object"));
  CHECK_THAT(error("{"), Contains("arms.json"));
  CHECK_THAT(error(R"({"arms": []})"), Contains("arms: must be an array of 1 to 16"));
  CHECK_THAT(error(R"({"schema": "v2", "arms": [{"name": "a"}]})"), Contains("schema"));
  CHECK_THAT(error(R"({"arms": [{"name": "a"}], "extra": 1})"), Contains("extra: unknown field"));
  CHECK_THAT(error(R"({"arms": [{"name": "a", "wieght": 1}]})"),
             Contains("arms[0].wieght: unknown field"));
  CHECK_THAT(error(R"({"arms": [{"weight": 1}]})"), Contains("arms[0].name: is required"));
  CHECK_THAT(error(R"({"arms": [{"name": "a b"}]})"), Contains("arms[0].name"));
  CHECK_THAT(error(R"({"arms": [{"name": "a"}, {"name": "a"}]})"), Contains("\"a\" twice"));
  CHECK_THAT(error(R"({"arms": [{"name": "a", "weight": 0}]})"), Contains("arms[0].weight"));
  CHECK_THAT(error(R"({"arms": [{"name": "a", "weight": -1}]})"), Contains("weight"));
  CHECK_THAT(error(R"({"arms": [{"name": "a", "attention_policy": 7}]})"),
             Contains("arms[0].attention_policy"));
  CHECK_THAT(error(R"({"arms": [{"name": "a"}], "allow_override": "yes"})"),
             Contains("allow_override"));
  std::string many = R"({"arms": [)";
  for (int i = 0; i < 17; ++i)
    many += (i ? "," : "") + std::string(R"({"name": "a)") + std::to_string(i) + "\"}";
  CHECK_THAT(error(many + "]}"), Contains("1 to 16"));
  CHECK_FALSE(LoadArmsFile("/nonexistent/arms.json").ok());
}

TEST_CASE("Arm assignment: sticky by key, in proportion to the weights", "[arms]") {
  auto config = Parse(R"({"arms": [{"name": "a"}, {"name": "b"}]})");
  REQUIRE(config.ok());
  const ArmAssigner assigner(*config);
  // The same key always lands on the same arm, with a fresh assigner too (a restart).
  const ArmAssigner restarted(*config);
  int on_a = 0;
  const int n = 2000;
  for (int i = 0; i < n; ++i) {
    const std::string key = "user-" + std::to_string(i);
    const int arm = assigner.ArmForKey(key);
    CHECK(restarted.ArmForKey(key) == arm);
    CHECK(*assigner.Assign(key, std::nullopt, "arm") == arm);
    on_a += arm == 0 ? 1 : 0;
  }
  // 50/50: within the binomial 99.9% interval (3.29 standard deviations).
  CHECK(std::abs(on_a - n / 2) <= 3.29 * std::sqrt(n * 0.25));

  auto skewed = Parse(R"({"arms": [{"name": "a", "weight": 9}, {"name": "b", "weight": 1}]})");
  REQUIRE(skewed.ok());
  const ArmAssigner nine_to_one(*skewed);
  int on_b = 0;
  for (int i = 0; i < n; ++i) on_b += nine_to_one.ArmForKey("k" + std::to_string(i)) == 1 ? 1 : 0;
  CHECK(std::abs(on_b - n / 10) <= 3.29 * std::sqrt(n * 0.09));
  // Without a key, any run of requests follows the weights closely.
  int unkeyed_b = 0;
  for (int i = 0; i < 100; ++i)
    unkeyed_b += *nine_to_one.Assign(std::nullopt, std::nullopt, "x") == 1;
  CHECK(std::abs(unkeyed_b - 10) <= 2);
  // Points map onto the cumulative weights.
  CHECK(nine_to_one.ArmForPoint(0.0) == 0);
  CHECK(nine_to_one.ArmForPoint(0.8999) == 0);
  CHECK(nine_to_one.ArmForPoint(0.9001) == 1);
  CHECK(nine_to_one.ArmForPoint(0.9999999) == 1);
}

TEST_CASE("Arm override: only when allowed, only to a known arm", "[arms]") {
  auto closed = Parse(R"({"arms": [{"name": "a"}, {"name": "b"}]})");
  REQUIRE(closed.ok());
  const auto refused = ArmAssigner(*closed).Assign("k", "b", "headwise.arm");
  CHECK(refused.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(refused.status().message(), Contains("headwise.arm"));
  CHECK_THAT(refused.status().message(), Contains("does not allow"));
  CHECK(refused.status().field() == "headwise.arm");
  auto open = Parse(R"({"allow_override": true, "arms": [{"name": "a"}, {"name": "b"}]})");
  REQUIRE(open.ok());
  const ArmAssigner assigner(*open);
  for (int i = 0; i < 20; ++i) {
    CHECK(*assigner.Assign("key" + std::to_string(i), "b", "headwise.arm") == 1);
  }
  CHECK_THAT(assigner.Assign(std::nullopt, "c", "headwise.arm").status().message(),
             Contains("no arm named \"c\""));
}

TEST_CASE("Policy file hashes tie a result to the file's bytes", "[arms]") {
  const auto dir = std::filesystem::temp_directory_path() / "hw_arms_test";
  std::filesystem::create_directories(dir);
  const auto a = (dir / "a.json").string(), b = (dir / "b.json").string();
  std::ofstream(a) << R"({"name": "x"})";
  std::ofstream(b) << R"({"name": "y"})";
  const auto ha = PolicyFileHash(a), hb = PolicyFileHash(b);
  REQUIRE(ha.ok());
  REQUIRE(hb.ok());
  CHECK(ha->rfind("fnv1a64:", 0) == 0);
  CHECK(ha->size() == 8 + 16);
  CHECK(*ha != *hb);
  CHECK(*PolicyFileHash(a) == *ha);
  CHECK(*PolicyFileHash("") == "none");
  CHECK_FALSE(PolicyFileHash((dir / "missing.json").string()).ok());
}

}  // namespace
}  // namespace headwise::engine
