// Head-profile files (schema headwise-head-profile/v1), written by `headwise profile-heads`
// (engine/attention/head_profile.h) and read by the policy loader's head_list / head_scores
// assignments. A profile wraps the artefact the assignment reads in an object that says which
// model it was computed from:
//
//   {"schema": "headwise-head-profile/v1",
//    "identity": {"num_layers": L, "num_heads": Hq, "num_kv_heads": Hkv,
//                 "weights_hash": "<16 hex digits, models/weight_hash.h>"},
//    "method": "razor" | "retrieval", "settings": {...},
//    "heads":  {"<layer>": [kv heads]}          (razor: what head_list reads)
//    "scores": {"<layer>-<query head>": [...]}  (retrieval: what head_scores reads)
//    ...per-head details}
//
// A file without "schema" is a published artefact (RazorAttention head list, Retrieval-Head
// JSON) and is read as it is, without an identity to check.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "core/status.h"
#include "engine/attention/policy.h"

namespace headwise::engine::attention {

inline constexpr std::string_view kProfileSchema = "headwise-head-profile/v1";

/// {"num_layers", "num_heads", "num_kv_heads", "weights_hash"} of a model.
nlohmann::ordered_json IdentityJson(const ModelShape& model);
/// "30 layers, 9 heads, 3 KV heads, weights 0123456789abcdef" (the hash only when known).
std::string FormatIdentity(const ModelShape& model);

/// The artefact inside a profile file at `path`: for a headwise profile, its `body_key` member
/// after the identity is checked against `model` (layer and head counts always; the weights
/// hash when model.weights_hash is known, i.e. non-zero); for any other JSON document, the
/// document itself. A mismatch is an InvalidArgument naming both identities.
StatusOr<nlohmann::json> ReadProfileArtefact(const std::string& path, const ModelShape& model,
                                             std::string_view body_key);

}  // namespace headwise::engine::attention
