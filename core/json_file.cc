#include "core/json_file.h"

#include "core/mapped_file.h"

namespace headwise {

StatusOr<nlohmann::json> ParseJson(std::string_view text, const std::string& source) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    // e.what() carries the byte position of the syntax error.
    return InvalidArgument("{}: invalid JSON: {}", source, e.what());
  }
}

StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  HW_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, MappedFile::Open(path));
  const std::string_view text(reinterpret_cast<const char*>(file->data()), file->size());
  return ParseJson(text, path);
}

}  // namespace headwise
