#include "engine/attention/profile_file.h"

#include <fmt/format.h>

#include <cstdlib>

#include "core/json_file.h"

namespace headwise::engine::attention {
namespace {

using json = nlohmann::json;

StatusOr<int> IdentityInt(const json& id, const char* key, const std::string& path) {
  const auto it = id.find(key);
  if (it == id.end() || !it->is_number_integer() || it->get<int64_t>() <= 0) {
    return InvalidArgument("{}: identity.{}: expected a positive integer", path, key);
  }
  return static_cast<int>(it->get<int64_t>());
}

StatusOr<ModelShape> ParseIdentity(const json& doc, const std::string& path) {
  const auto it = doc.find("identity");
  if (it == doc.end() || !it->is_object()) {
    return InvalidArgument("{}: a {} file needs an \"identity\" object", path, kProfileSchema);
  }
  ModelShape m;
  HW_ASSIGN_OR_RETURN(m.num_layers, IdentityInt(*it, "num_layers", path));
  HW_ASSIGN_OR_RETURN(m.num_heads, IdentityInt(*it, "num_heads", path));
  HW_ASSIGN_OR_RETURN(m.num_kv_heads, IdentityInt(*it, "num_kv_heads", path));
  const auto hash = it->find("weights_hash");
  if (hash == it->end() || !hash->is_string() || hash->get<std::string>().size() != 16) {
    return InvalidArgument("{}: identity.weights_hash: expected 16 hex digits", path);
  }
  const std::string hex = hash->get<std::string>();
  char* end = nullptr;
  m.weights_hash = std::strtoull(hex.c_str(), &end, 16);
  if (*end != '\0') {
    return InvalidArgument("{}: identity.weights_hash: \"{}\" is not 16 hex digits", path, hex);
  }
  return m;
}

}  // namespace

nlohmann::ordered_json IdentityJson(const ModelShape& model) {
  nlohmann::ordered_json id;
  id["num_layers"] = model.num_layers;
  id["num_heads"] = model.num_heads;
  id["num_kv_heads"] = model.num_kv_heads;
  id["weights_hash"] = fmt::format("{:016x}", model.weights_hash);
  return id;
}

std::string FormatIdentity(const ModelShape& model) {
  std::string s = fmt::format("{} layers, {} heads, {} KV heads", model.num_layers, model.num_heads,
                              model.num_kv_heads);
  if (model.weights_hash != 0) s += fmt::format(", weights {:016x}", model.weights_hash);
  return s;
}

StatusOr<json> ReadProfileArtefact(const std::string& path, const ModelShape& model,
                                   std::string_view body_key) {
  HW_ASSIGN_OR_RETURN(json doc, ReadJsonFile(path, "head profile"));
  const auto schema = doc.is_object() ? doc.find("schema") : doc.end();
  if (!doc.is_object() || schema == doc.end()) return doc;  // a published artefact
  if (!schema->is_string() || schema->get<std::string>() != kProfileSchema) {
    return InvalidArgument("{}: schema {} is not {}", path, schema->dump(), kProfileSchema);
  }
  HW_ASSIGN_OR_RETURN(const ModelShape made_for, ParseIdentity(doc, path));
  const bool shape_differs = made_for.num_layers != model.num_layers ||
                             made_for.num_heads != model.num_heads ||
                             made_for.num_kv_heads != model.num_kv_heads;
  if (shape_differs || (model.weights_hash != 0 && made_for.weights_hash != model.weights_hash)) {
    return InvalidArgument(
        "{}: this head profile was computed for another model ({}); the loaded model has {}; "
        "run headwise profile-heads on this model",
        path, FormatIdentity(made_for), FormatIdentity(model));
  }
  const auto body = doc.find(body_key);
  if (body == doc.end()) {
    return InvalidArgument("{}: this {} profile has no \"{}\" for this assignment", path,
                           doc.value("method", std::string("?")), body_key);
  }
  return *body;
}

}  // namespace headwise::engine::attention
