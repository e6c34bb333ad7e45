// Helpers shared by the Catch2 tests.
#pragma once

#include <cstdlib>
#include <string>

namespace headwise::testing {

// ../shared beside the checkout unless HEADWISE_SHARED says otherwise.
inline std::string SharedDir() {
  if (const char* env = std::getenv("HEADWISE_SHARED"); env && *env) return env;
  return std::string(HEADWISE_SOURCE_DIR) + "/../shared";
}
inline std::string SourcePath(const std::string& rel) {
  return std::string(HEADWISE_SOURCE_DIR) + "/" + rel;
}

}  // namespace headwise::testing
