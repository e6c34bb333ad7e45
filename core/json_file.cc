#include "core/json_file.h"

namespace headwise {

Status CheckJsonLimits(std::string_view text, const JsonLimits& limits, std::string_view source) {
  int depth = 0;
  size_t values = 1;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character, whatever it is, cannot end the string
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        if (++depth > limits.max_depth) {
          return InvalidArgument("{}: JSON nested deeper than the limit of {} levels (at byte {})",
                                 source, limits.max_depth, i);
        }
        ++values;
        break;
      case ']':
      case '}':
        if (depth > 0) --depth;  // unbalanced input is nlohmann's to report
        break;
      case ',':
        ++values;
        break;
      default:
        continue;
    }
    if (values > limits.max_values) {
      return InvalidArgument("{}: more than the limit of {} JSON values (at byte {})", source,
                             limits.max_values, i);
    }
  }
  return Status::Ok();
}

StatusOr<nlohmann::json> ParseJson(std::string_view text, const std::string& source,
                                   const JsonLimits& limits) {
  HW_RETURN_IF_ERROR(CheckJsonLimits(text, limits, source));
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    // e.what() carries the byte position of the syntax error.
    return InvalidArgument("{}: invalid JSON: {}", source, e.what());
  }
}

StatusOr<nlohmann::json> ReadJsonFile(const std::string& path, std::string_view what,
                                      size_t max_bytes) {
  HW_ASSIGN_OR_RETURN(const std::string text, ReadSmallFile(path, max_bytes, what));
  return ParseJson(text, path);
}

}  // namespace headwise
