// A/B arms of attention policies in one engine (`headwise serve --arms FILE`): named arms, each
// an attention-policy file with a traffic weight. A request is assigned an arm by a key it
// carries (the OpenAI `user` field or an X-Headwise-Arm-Key header): a hash of the key, the same
// on every server and across restarts, picks the arm in proportion to the weights, so a user
// stays on one arm. Requests without a key are spread by the same weights. A request may name
// its arm itself only when the file allows overrides. A single --attention-policy is the one-arm
// case.
//
// The arms file (JSON, schema "headwise-arms/v1"):
//   {"schema": "headwise-arms/v1",
//    "allow_override": false,                      // optional, default false
//    "arms": [{"name": "dense", "attention_policy": null, "weight": 1},
//             {"name": "duo", "attention_policy": "duo.json", "weight": 1}]}
// attention_policy is a path relative to the arms file, or null for the model's own policy (its
// directory's attention-policy.json, else dense attention).
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace headwise::engine {

struct Arm {
  std::string name;
  std::string policy_path;  // "": the model's own policy
  double weight = 1.0;
};

struct ArmsConfig {
  std::vector<Arm> arms;
  bool allow_override = false;
};

inline constexpr size_t kMaxArms = 16;

// Reads and validates an arms file: known fields only, 1..kMaxArms arms of distinct names
// ([A-Za-z0-9._-], at most 64 bytes) with finite weights > 0; policy paths resolved against the
// file's directory. Errors name the file and the field.
StatusOr<ArmsConfig> LoadArmsFile(const std::string& path);
StatusOr<ArmsConfig> ParseArms(const std::string& json_text, const std::string& base_dir,
                               const std::string& source);

// The one-arm case: --attention-policy FILE (or "" for the model's own policy), named after the
// policy by the engine.
ArmsConfig SingleArm(const std::string& policy_path);

// Picks arms: by key, deterministically; without one, in turn through a low-discrepancy sequence
// so the weights hold over any run of requests. Thread-safe.
class ArmAssigner {
 public:
  explicit ArmAssigner(const ArmsConfig& config);

  // The arm for a request: its override when given (InvalidArgument naming `override_field`
  // if overrides are off or the arm is unknown), else by key, else the next unkeyed one.
  StatusOr<int> Assign(std::optional<std::string_view> key,
                       std::optional<std::string_view> override_arm,
                       std::string_view override_field) const;
  // The arm a key maps to: a 64-bit hash of the key as a point in [0, 1), placed among the
  // cumulative weights.
  int ArmForKey(std::string_view key) const;
  int ArmForPoint(double u) const;

 private:
  ArmsConfig config_;
  std::vector<double> cumulative_;  // normalized upper bounds, the last exactly 1
  mutable std::atomic<uint64_t> unkeyed_{0};
};

// A short fingerprint of a policy file's bytes ("fnv1a64:" and 16 hex digits): reported with each
// arm so a result can be tied to the exact file that produced it. "" (dense attention, no file)
// gives "none".
StatusOr<std::string> PolicyFileHash(const std::string& path);

}  // namespace headwise::engine
