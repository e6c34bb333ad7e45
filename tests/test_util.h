// Helpers shared by the Catch2 tests.
#pragma once

#include <cstdlib>
#include <string>

namespace headwise::testing {

// The repository root: $HEADWISE_SOURCE_DIR when set (binaries carried to another machine),
// else where the tests were built from.
inline std::string SourceDir() {
  if (const char* env = std::getenv("HEADWISE_SOURCE_DIR"); env && *env) return env;
  return HEADWISE_SOURCE_DIR;
}
inline std::string SourcePath(const std::string& rel) { return SourceDir() + "/" + rel; }

// ../shared beside the checkout unless HEADWISE_SHARED says otherwise.
inline std::string SharedDir() {
  if (const char* env = std::getenv("HEADWISE_SHARED"); env && *env) return env;
  return SourceDir() + "/../shared";
}

}  // namespace headwise::testing
