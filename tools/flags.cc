#include "tools/flags.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

namespace headwise::tools {

StatusOr<int64_t> ParseInt(const std::string& s) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno == ERANGE)
    return InvalidArgument("'{}' is not an integer", s);
  return static_cast<int64_t>(v);
}

StatusOr<double> ParseFloat(const std::string& s) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v)) {
    return InvalidArgument("'{}' is not a number", s);
  }
  return v;
}

std::string TakeLeadingArgument(std::vector<char*>& args) {
  if (args.size() < 2 || args[1][0] == '-') return std::string();
  std::string first = args[1];
  args.erase(args.begin() + 1);
  return first;
}

FlagParser::FlagParser(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      positional_.push_back(arg);
      continue;
    }
    arg = arg.substr(2);
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      values_.emplace(arg.substr(0, eq), arg.substr(eq + 1));
    } else if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
      // A value follows unless the flag is boolean; Bool() fixes that up.
      values_.emplace(arg, argv[i + 1]);
      bare_[arg] = false;
      ++i;
    } else {
      values_.emplace(arg, "");
      bare_[arg] = true;
    }
  }
}

bool FlagParser::Has(const std::string& name) const {
  return values_.count(name) > 0;
}

void FlagParser::String(const std::string& name, std::string& out) {
  known_.push_back(name);
  auto it = values_.find(name);
  if (it == values_.end()) return;
  if (bare_.count(name) && bare_[name] && error_.ok())
    error_ = InvalidArgument("--{} needs a value", name);
  out = it->second;
}

void FlagParser::StringList(const std::string& name, std::vector<std::string>& out) {
  known_.push_back(name);
  auto [b, e] = values_.equal_range(name);
  for (auto it = b; it != e; ++it) out.push_back(it->second);
}

void FlagParser::Bool(const std::string& name, bool& out) {
  known_.push_back(name);
  auto it = values_.find(name);
  if (it == values_.end()) return;
  out = true;
  if (bare_.count(name) && !bare_[name]) {
    // "--flag value" was read as a value: give the word back as a positional argument.
    positional_.push_back(it->second);
    it->second.clear();
  }
}

void FlagParser::Int(const std::string& name, int& out) {
  int64_t v = out;
  Int64(name, v);
  if (v < INT32_MIN || v > INT32_MAX) {
    if (error_.ok()) error_ = InvalidArgument("--{}: {} out of range", name, v);
    return;
  }
  out = static_cast<int>(v);
}

void FlagParser::Int64(const std::string& name, int64_t& out) {
  std::string s;
  if (!Take(name, s)) return;
  auto v = ParseInt(s);
  if (v.ok()) {
    out = *v;
  } else if (error_.ok()) {
    error_ = v.status().WithContext("--" + name);
  }
}

void FlagParser::Float(const std::string& name, float& out) {
  std::string s;
  if (!Take(name, s)) return;
  auto v = ParseFloat(s);
  if (v.ok()) {
    out = static_cast<float>(*v);
  } else if (error_.ok()) {
    error_ = v.status().WithContext("--" + name);
  }
}

bool FlagParser::Take(const std::string& name, std::string& out) {
  const bool present = values_.count(name) > 0;
  String(name, out);
  return present;
}

Status FlagParser::Finish() {
  if (!error_.ok()) return error_;
  for (const auto& [name, value] : values_) {
    if (std::find(known_.begin(), known_.end(), name) == known_.end()) {
      return InvalidArgument("unknown flag --{}", name);
    }
  }
  if (!positional_.empty()) return InvalidArgument("unexpected argument '{}'", positional_.front());
  return Status::Ok();
}

}  // namespace headwise::tools
