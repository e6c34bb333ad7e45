// ParseJson (core/json_file.h), the guard every JSON file and text goes through: any input is
// a value or a Status, never an exception, a crash or a runaway.
#include <cstddef>
#include <cstdint>

#include "core/json_file.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = headwise::ParseJson(headwise::fuzz::AsText(data, size), "fuzz-input");
  if (parsed.ok()) {
    // Serialising back must not throw either: ParseJson promised valid UTF-8 strings.
    (void)parsed->dump();
  } else {
    (void)parsed.status().ToString();
  }
  return 0;
}
