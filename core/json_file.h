// Reading JSON into nlohmann::json with every failure (missing file, bad UTF-8, syntax error,
// nesting too deep, file too big) turned into a Status naming the source; nlohmann's exceptions
// never escape.
//
// Why a depth limit: nlohmann parses iteratively, but copying, comparing and dumping a value
// recurse once per nesting level, so a document nested 100,000 deep parses fine and then
// overflows the stack wherever it is first copied. Every JSON we read is checked by
// CheckJsonLimits, one O(n) pass with no recursion, before nlohmann sees it.
#pragma once

#include <cstddef>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "core/file_io.h"
#include "core/status.h"

namespace headwise {

// Real files nest far less: tokenizer.json ~6 levels (normalizer sequences), config.json ~3,
// safetensors headers 3, attention policies ~6. 128 levels of recursive copy are a few tens of
// KiB of stack, safe on any thread.
inline constexpr int kMaxJsonDepth = 128;

struct JsonLimits {
  int max_depth = kMaxJsonDepth;  // `[]` and `{}` are depth 1; a bare scalar depth 0
  // Bound on the number of values nlohmann will allocate (each is 16 bytes, plus a map node or
  // vector slot): counted as 1 + commas + opening brackets outside strings, which is exact
  // except that an empty container counts one more than it holds.
  size_t max_values = std::numeric_limits<size_t>::max();
};

// One pass over `text`, skipping string contents (escapes included). The error names the limit
// and the byte offset where it was crossed. Does not validate the JSON: nlohmann does that.
Status CheckJsonLimits(std::string_view text, const JsonLimits& limits, std::string_view source);

// Parses text already in memory; `source` names it in messages.
StatusOr<nlohmann::json> ParseJson(std::string_view text, const std::string& source,
                                   const JsonLimits& limits = {});

// Reads a JSON file of at most `max_bytes` bytes (ReadSmallFile: regular files only); `what`
// names the kind of file in the size error ("config.json", "attention policy").
StatusOr<nlohmann::json> ReadJsonFile(const std::string& path, std::string_view what = "JSON file",
                                      size_t max_bytes = kMaxConfigFileBytes);

}  // namespace headwise
