// Reading a JSON file into nlohmann::json with every failure (missing file, bad UTF-8, syntax
// error) turned into a Status naming the file; nlohmann's exceptions never escape.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "core/status.h"

namespace headwise {

StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);
// The same for text already in memory; `source` names it in messages.
StatusOr<nlohmann::json> ParseJson(std::string_view text, const std::string& source);

}  // namespace headwise
