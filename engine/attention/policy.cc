#include "engine/attention/policy.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "core/file_io.h"
#include "core/json_file.h"
#include "engine/attention/profile_file.h"

namespace headwise::engine::attention {
namespace {

using json = nlohmann::json;

// The fields of one JSON object, read by name. What is left unread when Finish() runs is an
// unknown field: a misspelt option must not silently fall back to its default.
class Fields {
 public:
  Fields(const json& j, std::string path) : j_(j), path_(std::move(path)) {}

  static StatusOr<Fields> Of(const json& j, const std::string& path) {
    if (!j.is_object()) return InvalidArgument("{}: expected an object", path);
    return Fields(j, path);
  }

  const std::string& path() const { return path_; }
  // JSON path of a field, e.g. "policies.streaming.storage.sink" (the top level has none).
  std::string At(std::string_view key) const {
    return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
  }

  const json* Get(std::string_view key) {
    read_.insert(std::string(key));
    const auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }

  StatusOr<int> Int(std::string_view key, std::optional<int> fallback, int min_value) {
    const json* v = Get(key);
    if (v == nullptr) {
      if (!fallback) return InvalidArgument("{}: required", At(key));
      return *fallback;
    }
    if (!v->is_number_integer()) return InvalidArgument("{}: expected an integer", At(key));
    const int64_t x = v->get<int64_t>();
    if (x < min_value || x > (int64_t{1} << 30)) {
      return InvalidArgument("{}: {} is out of range (at least {})", At(key), x, min_value);
    }
    return static_cast<int>(x);
  }

  StatusOr<double> Number(std::string_view key, std::optional<double> fallback) {
    const json* v = Get(key);
    if (v == nullptr) {
      if (!fallback) return InvalidArgument("{}: required", At(key));
      return *fallback;
    }
    if (!v->is_number()) return InvalidArgument("{}: expected a number", At(key));
    return v->get<double>();
  }

  StatusOr<bool> Bool(std::string_view key, bool fallback) {
    const json* v = Get(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) return InvalidArgument("{}: expected true or false", At(key));
    return v->get<bool>();
  }

  // A string that must be one of `allowed` (or, when given, `later`: schema values this build
  // does not implement yet).
  StatusOr<std::string> Enum(std::string_view key, std::optional<std::string> fallback,
                             std::initializer_list<std::string_view> allowed,
                             std::initializer_list<std::string_view> later = {}) {
    const json* v = Get(key);
    if (v == nullptr) {
      if (!fallback) return InvalidArgument("{}: required", At(key));
      return *fallback;
    }
    if (!v->is_string()) return InvalidArgument("{}: expected a string", At(key));
    const std::string s = v->get<std::string>();
    for (std::string_view a : allowed) {
      if (s == a) return s;
    }
    for (std::string_view a : later) {
      if (s == a) {
        return Unimplemented("{}: \"{}\" is part of attn-policy/v1 but not supported by this build",
                             At(key), s);
      }
    }
    return InvalidArgument("{}: \"{}\" is not one of {}", At(key), s, fmt::join(allowed, ", "));
  }

  StatusOr<std::string> String(std::string_view key) {
    const json* v = Get(key);
    if (v == nullptr) return InvalidArgument("{}: required", At(key));
    if (!v->is_string()) return InvalidArgument("{}: expected a string", At(key));
    return v->get<std::string>();
  }

  Status Finish() const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (!read_.count(it.key())) return InvalidArgument("{}: unknown field", At(it.key()));
    }
    return Status::Ok();
  }

 private:
  const json& j_;
  std::string path_;
  std::set<std::string, std::less<>> read_;
};

StatusOr<Policy> ParseOnePolicy(const json& j, const std::string& name, const std::string& path) {
  HW_ASSIGN_OR_RETURN(Fields f, Fields::Of(j, path));
  Policy p;
  p.name = name;

  if (const json* storage = f.Get("storage")) {
    HW_ASSIGN_OR_RETURN(Fields s, Fields::Of(*storage, f.At("storage")));
    HW_ASSIGN_OR_RETURN(
        const std::string kind,
        s.Enum("kind", std::nullopt, {"full", "ring", "compress_once"}, {"evict", "offload"}));
    if (kind == "full") {
      p.storage = StorageKind::kFull;
    } else {
      p.storage = kind == "ring" ? StorageKind::kRing : StorageKind::kCompressOnce;
      HW_ASSIGN_OR_RETURN(p.sink, s.Int("sink", std::nullopt, 0));
      HW_ASSIGN_OR_RETURN(p.window, s.Int("window", std::nullopt, 1));
    }
    if (s.Get("window_rule") != nullptr) {
      return Unimplemented("{}: MoA's elastic windows are not supported by this build",
                           s.At("window_rule"));
    }
    if (const json* compress = s.Get("compress")) {
      if (p.storage != StorageKind::kCompressOnce) {
        return InvalidArgument("{}: only for storage kind compress_once", s.At("compress"));
      }
      HW_ASSIGN_OR_RETURN(Fields c, Fields::Of(*compress, s.At("compress")));
      HW_RETURN_IF_ERROR(c.Enum("selector", "sink_recent", {"sink_recent"}, {"snapkv"}).status());
      if (const json* comp = c.Get("compensation")) {
        HW_ASSIGN_OR_RETURN(Fields cc, Fields::Of(*comp, c.At("compensation")));
        HW_ASSIGN_OR_RETURN(p.compensation, cc.Bool("enabled", false));
        HW_ASSIGN_OR_RETURN(const std::string weighting,
                            cc.Enum("weighting", "count", {"count", "none"}));
        p.compensation_by_count = weighting == "count";
        HW_RETURN_IF_ERROR(cc.Finish());
      }
      HW_RETURN_IF_ERROR(c.Finish());
    }
    HW_RETURN_IF_ERROR(s.Finish());
  }

  HW_ASSIGN_OR_RETURN(const std::string positions,
                      f.Enum("positions", "original", {"original", "reindex"}));
  p.positions = positions == "reindex" ? Positions::kReindex : Positions::kOriginal;

  const std::string default_mode = p.storage == StorageKind::kFull ? "dense" : "retained";
  p.decode = p.storage == StorageKind::kFull ? DecodeMode::kDense : DecodeMode::kRetained;
  if (const json* decode = f.Get("decode")) {
    HW_ASSIGN_OR_RETURN(Fields d, Fields::Of(*decode, f.At("decode")));
    HW_ASSIGN_OR_RETURN(const std::string mode,
                        d.Enum("mode", default_mode, {"dense", "retained"}, {"select", "consume"}));
    p.decode = mode == "dense" ? DecodeMode::kDense : DecodeMode::kRetained;
    for (std::string_view later : {"selection", "emit", "attend_selected_in_this_layer"}) {
      if (d.Get(later) != nullptr) {
        return Unimplemented("{}: token selection is not supported by this build", d.At(later));
      }
    }
    HW_RETURN_IF_ERROR(d.Finish());
  }
  p.prefill = p.storage == StorageKind::kFull ? PrefillMode::kDense : PrefillMode::kRetained;
  if (const json* prefill = f.Get("prefill")) {
    HW_ASSIGN_OR_RETURN(Fields pf, Fields::Of(*prefill, f.At("prefill")));
    HW_ASSIGN_OR_RETURN(const std::string mode,
                        pf.Enum("mode", default_mode, {"dense", "retained"}, {"select_chunks"}));
    p.prefill = mode == "dense" ? PrefillMode::kDense : PrefillMode::kRetained;
    HW_ASSIGN_OR_RETURN(p.first_chunk_dense, pf.Bool("first_chunk_dense", false));
    HW_RETURN_IF_ERROR(pf.Finish());
  }
  HW_ASSIGN_OR_RETURN(p.dense_if_len_le, f.Int("dense_if_len_le", 0, 0));
  if (f.Get("merge") != nullptr) {
    return Unimplemented("{}: tiered attention is not supported by this build", f.At("merge"));
  }
  HW_RETURN_IF_ERROR(f.Finish());

  // Combinations that say two different things at once.
  const bool full = p.storage == StorageKind::kFull;
  if (full && p.decode == DecodeMode::kRetained) {
    return InvalidArgument(
        "{}: decode mode retained needs a storage that drops tokens (ring or "
        "compress_once); full storage decodes dense",
        f.At("decode.mode"));
  }
  if (!full && p.decode == DecodeMode::kDense) {
    return InvalidArgument(
        "{}: decode mode dense needs full storage: this policy keeps only "
        "sink {} + window {} tokens",
        f.At("decode.mode"), p.sink, p.window);
  }
  if (full && p.prefill == PrefillMode::kRetained) {
    return InvalidArgument("{}: prefill mode retained needs ring or compress_once storage",
                           f.At("prefill.mode"));
  }
  if (p.positions == Positions::kReindex && p.storage != StorageKind::kRing) {
    return InvalidArgument(
        "{}: reindex applies to ring storage (StreamingLLM); {} storage keeps "
        "original positions",
        f.At("positions"), full ? "full" : "compress_once");
  }
  if (p.storage == StorageKind::kCompressOnce && p.prefill == PrefillMode::kRetained) {
    return InvalidArgument("{}: compress_once compacts after a dense prefill; use mode dense",
                           f.At("prefill.mode"));
  }
  if (p.storage == StorageKind::kCompressOnce && p.positions == Positions::kReindex) {
    return InvalidArgument("{}: compress_once keeps original positions", f.At("positions"));
  }
  return p;
}

std::string Resolve(const std::string& base_dir, const std::string& path) {
  const std::filesystem::path p(path);
  return p.is_absolute() || base_dir.empty() ? path
                                             : (std::filesystem::path(base_dir) / p).string();
}

StatusOr<int> PolicyIndex(const std::map<std::string, int>& by_name, const std::string& name,
                          const std::string& where) {
  const auto it = by_name.find(name);
  if (it == by_name.end()) return InvalidArgument("{}: no policy named \"{}\"", where, name);
  return it->second;
}

// DuoAttention's full_attention_heads.tsv: L rows of Hkv tab-separated gates.
StatusOr<std::vector<std::vector<double>>> ReadGateMatrix(const std::string& path,
                                                          const ModelShape& shape) {
  auto text = ReadSmallFile(path, kMaxConfigFileBytes, "head matrix");
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) {
      return NotFound("{}: cannot open the head matrix", path);
    }
    return text.status();
  }
  std::istringstream in(std::move(text).value());
  std::vector<std::vector<double>> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::istringstream ls(line);
    std::vector<double> row;
    std::string cell;
    while (ls >> cell) {
      char* end = nullptr;
      const double v = std::strtod(cell.c_str(), &end);
      if (end == cell.c_str() || *end != '\0' || !std::isfinite(v)) {
        return InvalidArgument("{}: row {}: \"{}\" is not a number", path, rows.size() + 1, cell);
      }
      row.push_back(v);
    }
    if (static_cast<int>(row.size()) != shape.num_kv_heads) {
      return InvalidArgument("{}: row {} has {} gates, the model has {} KV heads per layer", path,
                             rows.size() + 1, row.size(), shape.num_kv_heads);
    }
    rows.push_back(std::move(row));
  }
  if (static_cast<int>(rows.size()) != shape.num_layers) {
    return InvalidArgument("{}: {} rows, the model has {} layers", path, rows.size(),
                           shape.num_layers);
  }
  return rows;
}

Status ApplyHeadMatrix(const json& j, const std::string& path, const std::string& base_dir,
                       const ModelShape& shape, const std::map<std::string, int>& by_name,
                       std::vector<std::vector<int>>& head_policy) {
  HW_ASSIGN_OR_RETURN(Fields f, Fields::Of(j, path));
  HW_RETURN_IF_ERROR(f.Enum("format", std::nullopt, {"duo_tsv"}).status());
  HW_ASSIGN_OR_RETURN(const std::string file, f.String("path"));
  double lo = 0.0, hi = 1.0;
  if (const json* clip = f.Get("clip")) {
    if (!clip->is_array() || clip->size() != 2 || !(*clip)[0].is_number() ||
        !(*clip)[1].is_number() || (*clip)[0].get<double>() > (*clip)[1].get<double>()) {
      return InvalidArgument("{}: expected [low, high]", f.At("clip"));
    }
    lo = (*clip)[0].get<double>();
    hi = (*clip)[1].get<double>();
  }
  const json* binarize = f.Get("binarize");
  if (binarize == nullptr) return InvalidArgument("{}: required", f.At("binarize"));
  HW_ASSIGN_OR_RETURN(Fields b, Fields::Of(*binarize, f.At("binarize")));
  HW_RETURN_IF_ERROR(b.Enum("by", "global_quantile", {"global_quantile"}).status());
  HW_ASSIGN_OR_RETURN(const double sparsity, b.Number("sparsity", std::nullopt));
  if (sparsity < 0.0 || sparsity > 1.0) {
    return InvalidArgument("{}: {} is not a fraction of heads in [0, 1]", b.At("sparsity"),
                           sparsity);
  }
  HW_RETURN_IF_ERROR(b.Finish());
  const json* map = f.Get("map");
  if (map == nullptr) return InvalidArgument("{}: required", f.At("map"));
  HW_ASSIGN_OR_RETURN(Fields m, Fields::Of(*map, f.At("map")));
  HW_ASSIGN_OR_RETURN(const std::string full_name, m.String("1"));
  HW_ASSIGN_OR_RETURN(const std::string stream_name, m.String("0"));
  HW_RETURN_IF_ERROR(m.Finish());
  HW_ASSIGN_OR_RETURN(const int full_policy, PolicyIndex(by_name, full_name, m.At("1")));
  HW_ASSIGN_OR_RETURN(const int stream_policy, PolicyIndex(by_name, stream_name, m.At("0")));
  HW_RETURN_IF_ERROR(f.Finish());

  HW_ASSIGN_OR_RETURN(auto gates, ReadGateMatrix(Resolve(base_dir, file), shape));
  for (auto& row : gates) {
    for (double& g : row) g = std::clamp(g, lo, hi);
  }
  const auto full = BinarizeGates(gates, sparsity);
  for (int l = 0; l < shape.num_layers; ++l) {
    for (int h = 0; h < shape.num_kv_heads; ++h) {
      head_policy[static_cast<size_t>(l)][static_cast<size_t>(h)] =
          full[static_cast<size_t>(l)][static_cast<size_t>(h)] ? full_policy : stream_policy;
    }
  }
  return Status::Ok();
}

// RazorAttention's head list: {"<layer>": [kv heads]}.
Status ApplyHeadList(const json& j, const std::string& path, const std::string& base_dir,
                     const ModelShape& shape, const std::map<std::string, int>& by_name,
                     std::vector<std::vector<int>>& head_policy) {
  HW_ASSIGN_OR_RETURN(Fields f, Fields::Of(j, path));
  HW_RETURN_IF_ERROR(f.Enum("format", std::nullopt, {"razor_json"}).status());
  HW_ASSIGN_OR_RETURN(const std::string file, f.String("path"));
  HW_ASSIGN_OR_RETURN(const std::string policy_name, f.String("policy"));
  HW_ASSIGN_OR_RETURN(const int policy, PolicyIndex(by_name, policy_name, f.At("policy")));
  HW_RETURN_IF_ERROR(f.Finish());
  const std::string resolved = Resolve(base_dir, file);
  HW_ASSIGN_OR_RETURN(const json list, ReadProfileArtefact(resolved, shape, "heads"));
  if (!list.is_object()) return InvalidArgument("{}: expected {{\"layer\": [kv heads]}}", resolved);
  for (auto it = list.begin(); it != list.end(); ++it) {
    char* end = nullptr;
    const long layer = std::strtol(it.key().c_str(), &end, 10);
    if (it.key().empty() || *end != '\0' || layer < 0 || layer >= shape.num_layers) {
      return InvalidArgument("{}: \"{}\" is not a layer of this model (0..{})", resolved, it.key(),
                             shape.num_layers - 1);
    }
    if (!it->is_array()) return InvalidArgument("{}: layer {}: expected a list", resolved, layer);
    for (const json& h : *it) {
      if (!h.is_number_integer() || h.get<int64_t>() < 0 ||
          h.get<int64_t>() >= shape.num_kv_heads) {
        return InvalidArgument("{}: layer {}: {} is not a KV head of this model (0..{})", resolved,
                               layer, h.dump(), shape.num_kv_heads - 1);
      }
      head_policy[static_cast<size_t>(layer)][static_cast<size_t>(h.get<int64_t>())] = policy;
    }
  }
  return Status::Ok();
}

// Retrieval-Head scores: {"<layer>-<query head>": [score per accepted sample]}.
Status ApplyHeadScores(const json& j, const std::string& path, const std::string& base_dir,
                       const ModelShape& shape, const std::map<std::string, int>& by_name,
                       std::vector<std::vector<int>>& head_policy) {
  HW_ASSIGN_OR_RETURN(Fields f, Fields::Of(j, path));
  HW_RETURN_IF_ERROR(f.Enum("format", std::nullopt, {"retrieval_head_json"}).status());
  HW_ASSIGN_OR_RETURN(const std::string file, f.String("path"));
  HW_RETURN_IF_ERROR(f.Enum("score", "mean", {"mean"}).status());
  HW_RETURN_IF_ERROR(f.Enum("q_to_kv", "max", {"max"}).status());
  HW_ASSIGN_OR_RETURN(const double threshold, f.Number("threshold", std::nullopt));
  HW_ASSIGN_OR_RETURN(const std::string above_name, f.String("above"));
  HW_ASSIGN_OR_RETURN(const int above, PolicyIndex(by_name, above_name, f.At("above")));
  HW_RETURN_IF_ERROR(f.Finish());
  const std::string resolved = Resolve(base_dir, file);
  HW_ASSIGN_OR_RETURN(const json scores, ReadProfileArtefact(resolved, shape, "scores"));
  if (!scores.is_object()) {
    return InvalidArgument("{}: expected {{\"layer-head\": [scores]}}", resolved);
  }
  const int group = shape.num_heads / shape.num_kv_heads;
  std::vector<std::vector<double>> kv_score(
      static_cast<size_t>(shape.num_layers),
      std::vector<double>(static_cast<size_t>(shape.num_kv_heads), -INFINITY));
  for (auto it = scores.begin(); it != scores.end(); ++it) {
    int layer = -1, head = -1;
    char dash = 0;
    std::istringstream key(it.key());
    if (!(key >> layer >> dash >> head) || dash != '-' || !key.eof() || layer < 0 ||
        layer >= shape.num_layers || head < 0 || head >= shape.num_heads) {
      return InvalidArgument(
          "{}: \"{}\" is not a (layer-query head) of this model ({} layers, {} "
          "heads)",
          resolved, it.key(), shape.num_layers, shape.num_heads);
    }
    if (!it->is_array()) return InvalidArgument("{}: \"{}\": expected a list", resolved, it.key());
    double sum = 0.0;
    for (const json& s : *it) {
      if (!s.is_number()) {
        return InvalidArgument("{}: \"{}\": {} is not a number", resolved, it.key(), s.dump());
      }
      sum += s.get<double>();
    }
    const double mean = it->empty() ? 0.0 : sum / static_cast<double>(it->size());
    double& kv = kv_score[static_cast<size_t>(layer)][static_cast<size_t>(head / group)];
    kv = std::max(kv, mean);
  }
  for (int l = 0; l < shape.num_layers; ++l) {
    for (int h = 0; h < shape.num_kv_heads; ++h) {
      if (kv_score[static_cast<size_t>(l)][static_cast<size_t>(h)] > threshold) {
        head_policy[static_cast<size_t>(l)][static_cast<size_t>(h)] = above;
      }
    }
  }
  return Status::Ok();
}

}  // namespace

int64_t Policy::MaxRetainedTokens() const {
  switch (storage) {
    case StorageKind::kFull:
      return -1;
    case StorageKind::kRing:
      return int64_t{sink} + window;
    case StorageKind::kCompressOnce:
      return int64_t{sink} + window + (compensation ? 1 : 0);
  }
  return -1;
}

std::vector<int> PolicySet::HeadCounts() const {
  std::vector<int> counts(policies.size(), 0);
  for (const auto& layer : head_policy) {
    for (int p : layer) ++counts[static_cast<size_t>(p)];
  }
  return counts;
}

bool PolicySet::IsDense() const {
  for (const auto& layer : head_policy) {
    for (int p : layer) {
      if (policies[static_cast<size_t>(p)].storage != StorageKind::kFull) return false;
    }
  }
  return true;
}

PolicySet DensePolicySet(const ModelShape& shape) {
  PolicySet set;
  set.name = "dense";
  Policy dense;
  dense.name = "dense";
  set.policies.push_back(dense);
  set.head_policy.assign(static_cast<size_t>(shape.num_layers),
                         std::vector<int>(static_cast<size_t>(shape.num_kv_heads), 0));
  return set;
}

std::vector<std::vector<bool>> BinarizeGates(const std::vector<std::vector<double>>& gates,
                                             double sparsity) {
  std::vector<std::pair<double, size_t>> order;
  std::vector<std::vector<bool>> full;
  for (const auto& row : gates) {
    full.emplace_back(row.size(), true);
    for (double g : row) order.emplace_back(std::clamp(g, 0.0, 1.0), order.size());
  }
  const size_t n = order.size();
  size_t streaming = 0;
  if (sparsity >= 1.0) {
    streaming = n;
  } else if (sparsity > 0.0 && n > 0) {
    streaming = static_cast<size_t>(std::ceil(sparsity * static_cast<double>(n - 1)));
  }
  // Ascending gate, then (layer, head) order: a stable, platform-independent ranking.
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 0; i < streaming; ++i) {
    size_t flat = order[i].second;
    for (auto& row : full) {
      if (flat < row.size()) {
        row[flat] = false;
        break;
      }
      flat -= row.size();
    }
  }
  return full;
}

StatusOr<PolicySet> ParsePolicy(const std::string& json_text, const ModelShape& shape,
                                const std::string& base_dir, const std::string& default_name) {
  if (shape.num_layers <= 0 || shape.num_kv_heads <= 0 ||
      shape.num_heads % shape.num_kv_heads != 0) {
    return InvalidArgument("attention policy: bad model shape ({} layers, {} heads, {} KV heads)",
                           shape.num_layers, shape.num_heads, shape.num_kv_heads);
  }
  HW_ASSIGN_OR_RETURN(const json doc, ParseJson(json_text, default_name));
  if (!doc.is_object()) return InvalidArgument("expected a JSON object at the top level");
  Fields top(doc, "");
  HW_ASSIGN_OR_RETURN(const std::string schema, top.String("schema"));
  if (schema != "attn-policy/v1") {
    return InvalidArgument("{}: schema \"{}\" is not attn-policy/v1", top.At("schema"), schema);
  }
  PolicySet set;
  set.name = default_name;
  if (const json* name = top.Get("name")) {
    if (!name->is_string() || name->get<std::string>().empty()) {
      return InvalidArgument("{}: expected a non-empty string", top.At("name"));
    }
    set.name = name->get<std::string>();
  }
  top.Get("description");  // free text
  top.Get("calibration");  // provenance of the head assignment (how it was made); not interpreted
  if (const json* kv = top.Get("kv_cache")) {
    HW_ASSIGN_OR_RETURN(Fields k, Fields::Of(*kv, top.At("kv_cache")));
    HW_ASSIGN_OR_RETURN(set.page_size, k.Int("page_size", 16, 1));
    HW_ASSIGN_OR_RETURN(const std::string rope,
                        k.Enum("rope_storage", "auto", {"auto", "post_rope", "pre_rope"}));
    set.rope_storage = rope == "post_rope"  ? RopeStorage::kPostRope
                       : rope == "pre_rope" ? RopeStorage::kPreRope
                                            : RopeStorage::kAuto;
    if (k.Get("page_metadata") != nullptr) {
      return Unimplemented("{}: page summaries are not supported by this build",
                           k.At("page_metadata"));
    }
    HW_RETURN_IF_ERROR(k.Finish());
  }
  // The engine addresses each class's heads through its page tables, weights unpermuted, so
  // the request to reorder them changes nothing; it must still be a boolean.
  HW_RETURN_IF_ERROR(top.Bool("reorder_heads_by_class", false).status());

  const json* policies = top.Get("policies");
  if (policies == nullptr || !policies->is_object() || policies->empty()) {
    return InvalidArgument("{}: expected an object with at least one policy", top.At("policies"));
  }
  std::map<std::string, int> by_name;
  for (auto it = policies->begin(); it != policies->end(); ++it) {
    HW_ASSIGN_OR_RETURN(Policy p, ParseOnePolicy(*it, it.key(), "policies." + it.key()));
    by_name[p.name] = static_cast<int>(set.policies.size());
    set.policies.push_back(std::move(p));
  }

  const json* assignment = top.Get("assignment");
  if (assignment == nullptr) return InvalidArgument("{}: required", top.At("assignment"));
  HW_ASSIGN_OR_RETURN(Fields a, Fields::Of(*assignment, top.At("assignment")));
  HW_ASSIGN_OR_RETURN(const std::string default_policy, a.String("default"));
  HW_ASSIGN_OR_RETURN(const int fallback, PolicyIndex(by_name, default_policy, a.At("default")));
  set.head_policy.assign(static_cast<size_t>(shape.num_layers),
                         std::vector<int>(static_cast<size_t>(shape.num_kv_heads), fallback));
  // Layer lists first, then head-level artefacts, each overriding what came before.
  if (const json* layers = a.Get("layers")) {
    if (!layers->is_array()) return InvalidArgument("{}: expected a list", a.At("layers"));
    for (size_t i = 0; i < layers->size(); ++i) {
      HW_ASSIGN_OR_RETURN(Fields e,
                          Fields::Of((*layers)[i], fmt::format("{}[{}]", a.At("layers"), i)));
      HW_ASSIGN_OR_RETURN(const std::string name, e.String("policy"));
      HW_ASSIGN_OR_RETURN(const int policy, PolicyIndex(by_name, name, e.At("policy")));
      const json* list = e.Get("layers");
      if (list == nullptr || !list->is_array() || list->empty()) {
        return InvalidArgument("{}: expected a list of layer indices", e.At("layers"));
      }
      for (const json& l : *list) {
        if (!l.is_number_integer() || l.get<int64_t>() < 0 ||
            l.get<int64_t>() >= shape.num_layers) {
          return InvalidArgument("{}: {} is not a layer of this model (0..{})", e.At("layers"),
                                 l.dump(), shape.num_layers - 1);
        }
        std::fill(set.head_policy[static_cast<size_t>(l.get<int64_t>())].begin(),
                  set.head_policy[static_cast<size_t>(l.get<int64_t>())].end(), policy);
      }
      HW_RETURN_IF_ERROR(e.Finish());
    }
  }
  if (const json* m = a.Get("head_matrix")) {
    HW_RETURN_IF_ERROR(
        ApplyHeadMatrix(*m, a.At("head_matrix"), base_dir, shape, by_name, set.head_policy));
  }
  if (const json* l = a.Get("head_list")) {
    HW_RETURN_IF_ERROR(
        ApplyHeadList(*l, a.At("head_list"), base_dir, shape, by_name, set.head_policy));
  }
  if (const json* s = a.Get("head_scores")) {
    HW_RETURN_IF_ERROR(
        ApplyHeadScores(*s, a.At("head_scores"), base_dir, shape, by_name, set.head_policy));
  }
  if (a.Get("head_params") != nullptr) {
    return Unimplemented("{}: MoA head parameters are not supported by this build",
                         a.At("head_params"));
  }
  HW_RETURN_IF_ERROR(a.Finish());
  HW_RETURN_IF_ERROR(top.Finish());

  for (const Policy& p : set.policies) {
    if (p.positions == Positions::kReindex && set.rope_storage == RopeStorage::kPostRope) {
      return InvalidArgument(
          "policy \"{}\": positions reindex needs pre-RoPE keys, but "
          "kv_cache.rope_storage is post_rope",
          p.name);
    }
  }
  return set;
}

StatusOr<PolicySet> LoadPolicyFile(const std::string& path, const ModelShape& shape) {
  // A policy is a small file; the cap and the regular-file check make --attention-policy
  // /dev/zero (or a FIFO, or a directory) a quick error instead of gigabytes read.
  auto text = ReadSmallFile(path, kMaxConfigFileBytes, "attention policy");
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) {
      return NotFound("attention policy {}: cannot open", path);
    }
    return text.status().WithContext("attention policy");
  }
  const std::filesystem::path p(path);
  auto set = ParsePolicy(*text, shape, p.parent_path().string(), p.stem().string());
  if (!set.ok()) return set.status().WithContext(fmt::format("attention policy {}", path));
  return set;
}

}  // namespace headwise::engine::attention
