#include "engine/arms.h"

#include <cmath>
#include <filesystem>

#include "core/file_io.h"
#include "core/json_file.h"

namespace headwise::engine {
namespace {

uint64_t Fnv1a(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// SplitMix64's finalizer: FNV-1a's low bits mix poorly for short keys, and the arm is chosen
// from the high bits of this.
uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double UnitPoint(uint64_t h) {
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

StatusOr<ArmsConfig> ParseArms(const std::string& json_text, const std::string& base_dir,
                               const std::string& source) {
  HW_ASSIGN_OR_RETURN(const nlohmann::json doc, ParseJson(json_text, source));
  const auto fail = [&](const std::string& field, const std::string& why) {
    return InvalidArgument("arms file {}: {}: {}", source, field, why);
  };
  if (!doc.is_object()) return fail("the document", "must be a JSON object");
  ArmsConfig config;
  for (const auto& [key, value] : doc.items()) {
    if (key == "schema") {
      if (!value.is_string() || value.get<std::string>() != "headwise-arms/v1") {
        return fail("schema", "must be \"headwise-arms/v1\"");
      }
    } else if (key == "allow_override") {
      if (!value.is_boolean()) return fail("allow_override", "must be true or false");
      config.allow_override = value.get<bool>();
    } else if (key == "arms") {
      if (!value.is_array() || value.empty() || value.size() > kMaxArms) {
        return fail("arms", fmt::format("must be an array of 1 to {} arms", kMaxArms));
      }
      for (size_t i = 0; i < value.size(); ++i) {
        const nlohmann::json& a = value[i];
        const std::string where = fmt::format("arms[{}]", i);
        if (!a.is_object()) return fail(where, "must be an object");
        Arm arm;
        bool named = false;
        for (const auto& [field, v] : a.items()) {
          if (field == "name") {
            if (!v.is_string() || !ValidName(v.get<std::string>())) {
              return fail(where + ".name", "must be 1 to 64 characters of [A-Za-z0-9._-]");
            }
            arm.name = v.get<std::string>();
            named = true;
          } else if (field == "attention_policy") {
            if (v.is_null()) continue;
            if (!v.is_string() || v.get<std::string>().empty()) {
              return fail(where + ".attention_policy", "must be a file path or null");
            }
            const std::filesystem::path p(v.get<std::string>());
            arm.policy_path =
                p.is_absolute() ? p.string() : (std::filesystem::path(base_dir) / p).string();
          } else if (field == "weight") {
            if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() <= 0.0) {
              return fail(where + ".weight", "must be a number > 0");
            }
            arm.weight = v.get<double>();
          } else {
            return fail(where + "." + field, "unknown field (name, attention_policy, weight)");
          }
        }
        if (!named) return fail(where + ".name", "is required");
        for (const Arm& other : config.arms) {
          if (other.name == arm.name) return fail(where + ".name", "\"" + arm.name + "\" twice");
        }
        config.arms.push_back(std::move(arm));
      }
    } else {
      return fail(key, "unknown field (schema, allow_override, arms)");
    }
  }
  if (config.arms.empty()) return fail("arms", "is required");
  return config;
}

StatusOr<ArmsConfig> LoadArmsFile(const std::string& path) {
  HW_ASSIGN_OR_RETURN(const std::string text,
                      ReadSmallFile(path, kMaxConfigFileBytes, "arms file"));
  const std::string dir = std::filesystem::path(path).parent_path().string();
  return ParseArms(text, dir.empty() ? "." : dir, path);
}

ArmsConfig SingleArm(const std::string& policy_path) {
  ArmsConfig config;
  config.arms.push_back(Arm{"", policy_path, 1.0});
  return config;
}

ArmAssigner::ArmAssigner(const ArmsConfig& config) : config_(config) {
  HW_CHECK(!config_.arms.empty(), "no arms");
  double total = 0.0;
  for (const Arm& arm : config_.arms) total += arm.weight;
  double sum = 0.0;
  for (const Arm& arm : config_.arms) {
    sum += arm.weight;
    cumulative_.push_back(sum / total);
  }
  cumulative_.back() = 1.0;
}

int ArmAssigner::ArmForPoint(double u) const {
  for (size_t i = 0; i < cumulative_.size(); ++i) {
    if (u < cumulative_[i]) return static_cast<int>(i);
  }
  return static_cast<int>(cumulative_.size()) - 1;
}

int ArmAssigner::ArmForKey(std::string_view key) const {
  return ArmForPoint(UnitPoint(Mix(Fnv1a(key))));
}

StatusOr<int> ArmAssigner::Assign(std::optional<std::string_view> key,
                                  std::optional<std::string_view> override_arm,
                                  std::string_view override_field) const {
  if (override_arm) {
    if (!config_.allow_override) {
      return InvalidArgument("{}: this server's arms file does not allow choosing an arm",
                             override_field)
          .WithField(std::string(override_field));
    }
    for (size_t i = 0; i < config_.arms.size(); ++i) {
      if (config_.arms[i].name == *override_arm) return static_cast<int>(i);
    }
    return InvalidArgument("{}: no arm named \"{}\"", override_field, *override_arm)
        .WithField(std::string(override_field));
  }
  if (key) return ArmForKey(*key);
  // The golden-ratio sequence: any run of n requests lands within a few of n * weight per arm.
  const uint64_t n = unkeyed_.fetch_add(1, std::memory_order_relaxed);
  const double u = std::fmod(static_cast<double>(n) * 0.6180339887498949, 1.0);
  return ArmForPoint(u);
}

StatusOr<std::string> PolicyFileHash(const std::string& path) {
  if (path.empty()) return std::string("none");
  HW_ASSIGN_OR_RETURN(const std::string bytes,
                      ReadSmallFile(path, kMaxConfigFileBytes, "attention policy"));
  return fmt::format("fnv1a64:{:016x}", Fnv1a(bytes));
}

}  // namespace headwise::engine
