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
#include "kernels/backend.h"

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

const char* MethodName(SelectionMethod m) {
  switch (m) {
    case SelectionMethod::kExactLogits:
      return "exact_logits";
    case SelectionMethod::kRecycle:
      return "recycle";
    case SelectionMethod::kPageMinmax:
      return "page_minmax";
    case SelectionMethod::kAnn:
      return "ann";
  }
  return "?";
}

// The rest of decode.selection for method ann (offload storage's retrieval): the budget is the
// keys one search retrieves; the static set on the device is storage.offload.gpu_static, so
// nothing is always included here.
StatusOr<Selection> ParseAnnSelection(Fields& s, Selection sel) {
  HW_RETURN_IF_ERROR(s.Enum("unit", "token", {"token"}).status());
  HW_ASSIGN_OR_RETURN(const std::string granularity,
                      s.Enum("granularity", "q_head", {"q_head", "kv_head"}, {"layer"}));
  sel.granularity =
      granularity == "q_head" ? SelectionGranularity::kQHead : SelectionGranularity::kKvHead;
  sel.group_reduce = GroupReduce::kNone;
  sel.current = false;  // the current token is in the device's static set
  for (const char* key : {"group_reduce", "always_include", "publish", "pool"}) {
    if (s.Get(key) != nullptr) {
      return InvalidArgument(
          "{}: not for method ann (it searches per query head, or with the KV head's mean "
          "query, and the static set is storage.offload.gpu_static)",
          s.At(key));
    }
  }
  if (const json* refresh = s.Get("refresh")) {
    HW_ASSIGN_OR_RETURN(Fields r, Fields::Of(*refresh, s.At("refresh")));
    HW_ASSIGN_OR_RETURN(sel.refresh_every_steps, r.Int("every_steps", 1, 1));
    if (sel.refresh_every_steps != 1) {
      return InvalidArgument("{}: {} with method ann: it retrieves every step; use 1",
                             r.At("every_steps"), sel.refresh_every_steps);
    }
    HW_RETURN_IF_ERROR(r.Finish());
  }
  HW_RETURN_IF_ERROR(s.Enum("query_rope_position", "actual", {"actual"}, {"recent"}).status());
  HW_RETURN_IF_ERROR(s.Finish());
  return sel;
}

// decode.selection of a select policy (ALGORITHMS.md §10.2), checked on its own; what depends on
// other policies or on the assignment (channels, shared dense_if_len_le, one method per layer) is
// checked in ParsePolicy. page_size: kv_cache.page_size, the unit of page_minmax.
StatusOr<Selection> ParseSelection(const json& j, const std::string& path, int page_size) {
  HW_ASSIGN_OR_RETURN(Fields s, Fields::Of(j, path));
  Selection sel;
  HW_ASSIGN_OR_RETURN(
      const std::string method,
      s.Enum("method", std::nullopt, {"exact_logits", "recycle", "page_minmax", "ann"},
             {"token_vote", "cluster"}));
  sel.method = method == "exact_logits" ? SelectionMethod::kExactLogits
               : method == "recycle"    ? SelectionMethod::kRecycle
               : method == "ann"        ? SelectionMethod::kAnn
                                        : SelectionMethod::kPageMinmax;
  const bool pages = sel.method == SelectionMethod::kPageMinmax;
  const bool recycle = sel.method == SelectionMethod::kRecycle;
  HW_ASSIGN_OR_RETURN(sel.budget, s.Int("budget", std::nullopt, 1));
  if (sel.method == SelectionMethod::kAnn) return ParseAnnSelection(s, std::move(sel));

  HW_ASSIGN_OR_RETURN(const std::string unit,
                      s.Enum("unit", pages ? "page" : "token", {"token", "page"}));
  sel.page_unit = unit == "page";
  if (sel.page_unit != pages) {
    return InvalidArgument(
        "{}: {} with method {}: page_minmax selects pages, exact_logits and recycle select "
        "tokens",
        s.At("unit"), unit, method);
  }

  HW_ASSIGN_OR_RETURN(const std::string granularity,
                      s.Enum("granularity", "kv_head", {"kv_head", "q_head"}, {"layer"}));
  sel.granularity =
      granularity == "q_head" ? SelectionGranularity::kQHead : SelectionGranularity::kKvHead;
  const bool q_head = sel.granularity == SelectionGranularity::kQHead;
  // Defaults: nothing to reduce for a set per query head; else the §9.4 default, which for page
  // bounds (not logits of keys: no softmax) is their sum.
  HW_ASSIGN_OR_RETURN(const std::string reduce,
                      s.Enum("group_reduce",
                             q_head  ? "none"
                             : pages ? "sum_logits"
                                     : "sum_softmax",
                             {"sum_softmax", "sum_logits", "max", "none"}));
  sel.group_reduce = reduce == "sum_softmax"  ? GroupReduce::kSumSoftmax
                     : reduce == "sum_logits" ? GroupReduce::kSumLogits
                     : reduce == "max"        ? GroupReduce::kMax
                                              : GroupReduce::kNone;
  if (q_head && sel.group_reduce != GroupReduce::kNone) {
    return InvalidArgument(
        "{}: {} with granularity q_head: a set per query head reduces nothing; use none",
        s.At("group_reduce"), reduce);
  }
  if (!q_head && sel.group_reduce == GroupReduce::kNone) {
    return InvalidArgument(
        "{}: none with granularity kv_head: a set per KV head reduces the scores of its query "
        "heads (sum_softmax, sum_logits or max)",
        s.At("group_reduce"));
  }
  if (pages && sel.group_reduce == GroupReduce::kSumSoftmax) {
    return InvalidArgument(
        "{}: sum_softmax with page_minmax: page scores are bounds on logits, not a distribution; "
        "use sum_logits or max",
        s.At("group_reduce"));
  }

  sel.last_page = pages;
  if (const json* always = s.Get("always_include")) {
    HW_ASSIGN_OR_RETURN(Fields a, Fields::Of(*always, s.At("always_include")));
    HW_ASSIGN_OR_RETURN(sel.sink, a.Int("sink", 0, 0));
    HW_ASSIGN_OR_RETURN(sel.recent, a.Int("recent", 0, 0));
    HW_ASSIGN_OR_RETURN(sel.current, a.Bool("current", true));
    if (!sel.current) {
      return InvalidArgument(
          "{}: false: the current token is always attended (its key is written before the step "
          "attends)",
          a.At("current"));
    }
    if (a.Get("last_page") != nullptr) {
      if (!pages) {
        return InvalidArgument("{}: only for method page_minmax (the page it attends last)",
                               a.At("last_page"));
      }
      HW_ASSIGN_OR_RETURN(sel.last_page, a.Bool("last_page", true));
      if (!sel.last_page) {
        return InvalidArgument(
            "{}: false: page_minmax always attends the page holding the current token",
            a.At("last_page"));
      }
    }
    if (a.Get("since_last_refresh") != nullptr) {
      if (!recycle) {
        return InvalidArgument(
            "{}: only for method recycle (the tokens added since its set was chosen)",
            a.At("since_last_refresh"));
      }
      HW_ASSIGN_OR_RETURN(sel.since_last_refresh, a.Bool("since_last_refresh", false));
    }
    if (pages && sel.recent != 0) {
      return InvalidArgument(
          "{}: {} with page_minmax: its tail is the last page (last_page), not a token count",
          a.At("recent"), sel.recent);
    }
    HW_RETURN_IF_ERROR(a.Finish());
  }

  if (const json* refresh = s.Get("refresh")) {
    HW_ASSIGN_OR_RETURN(Fields r, Fields::Of(*refresh, s.At("refresh")));
    HW_ASSIGN_OR_RETURN(sel.refresh_every_steps, r.Int("every_steps", 1, 1));
    if (!recycle && sel.refresh_every_steps != 1) {
      return InvalidArgument("{}: {} with method {}: it chooses its set every step; use 1",
                             r.At("every_steps"), sel.refresh_every_steps, method);
    }
    if (const json* similarity = r.Get("similarity")) {
      if (!recycle) {
        return InvalidArgument("{}: only for method recycle ({} chooses its set every step)",
                               r.At("similarity"), method);
      }
      HW_ASSIGN_OR_RETURN(Fields c, Fields::Of(*similarity, r.At("similarity")));
      HW_RETURN_IF_ERROR(c.Enum("metric", "cos", {"cos"}).status());
      HW_ASSIGN_OR_RETURN(sel.similarity_threshold, c.Number("threshold", std::nullopt));
      if (!(sel.similarity_threshold > -1.0 && sel.similarity_threshold < 1.0)) {
        return InvalidArgument(
            "{}: {} is not in (-1, 1) (at -1 the query never drifts, at 1 it always does)",
            c.At("threshold"), sel.similarity_threshold);
      }
      HW_ASSIGN_OR_RETURN(sel.refresh_by_similarity, c.Bool("enabled", true));
      HW_RETURN_IF_ERROR(c.Finish());
    }
    HW_RETURN_IF_ERROR(r.Finish());
  }

  if (s.Get("publish") != nullptr) {
    if (sel.method != SelectionMethod::kExactLogits) {
      return InvalidArgument(
          "{}: only method exact_logits publishes its set to later layers ({} heads attend "
          "their own)",
          s.At("publish"), method);
    }
    HW_ASSIGN_OR_RETURN(sel.publish, s.String("publish"));
    if (sel.publish.empty()) return InvalidArgument("{}: expected a channel name", s.At("publish"));
  } else if (sel.method == SelectionMethod::kExactLogits) {
    return InvalidArgument(
        "{}: required with method exact_logits: the channel its set is published on for the "
        "layers that consume it",
        s.At("publish"));
  }
  if (s.Get("pool") != nullptr) {
    return Unimplemented("{}: pooling scores before top-k is not supported by this build",
                         s.At("pool"));
  }
  HW_RETURN_IF_ERROR(s.Enum("query_rope_position", "actual", {"actual"}, {"recent"}).status());
  HW_RETURN_IF_ERROR(s.Finish());

  // The budget counts every key a selecting step attends: sink, set and tail.
  if (pages) {
    if (sel.budget % page_size != 0 || sel.sink % page_size != 0) {
      return InvalidArgument(
          "{}: budget {} and always_include.sink {} must be multiples of the page size {} "
          "(page_minmax attends whole pages)",
          s.At("budget"), sel.budget, sel.sink, page_size);
    }
    if (sel.budget < sel.sink + 2 * page_size) {
      return InvalidArgument(
          "{}: budget {} leaves no page to select: sink {} + the last page + one page need {}",
          s.At("budget"), sel.budget, sel.sink, sel.sink + 2 * page_size);
    }
  } else {
    const int recent = std::max(sel.recent, 1);  // the current token counts
    if (sel.budget <= sel.sink + recent) {
      return InvalidArgument(
          "{}: budget {} leaves nothing to select: always_include sink {} + recent {} (the "
          "current token counts) take it all",
          s.At("budget"), sel.budget, sel.sink, recent);
    }
  }
  return sel;
}

// storage.offload (ALGORITHMS.md §10.2): the device's static set and the index of the rest.
Status ParseOffload(const json& j, const std::string& path, Policy& p) {
  HW_ASSIGN_OR_RETURN(Fields o, Fields::Of(j, path));
  const json* gpu_static = o.Get("gpu_static");
  if (gpu_static == nullptr) return InvalidArgument("{}: required", o.At("gpu_static"));
  HW_ASSIGN_OR_RETURN(Fields g, Fields::Of(*gpu_static, o.At("gpu_static")));
  HW_ASSIGN_OR_RETURN(p.sink, g.Int("sink", std::nullopt, 0));
  // At least the current token: a decode query attends its own key on the device.
  HW_ASSIGN_OR_RETURN(p.window, g.Int("recent", std::nullopt, 1));
  HW_RETURN_IF_ERROR(g.Finish());
  OffloadIndex& index = p.offload;
  if (const json* ij = o.Get("index")) {
    HW_ASSIGN_OR_RETURN(Fields i, Fields::Of(*ij, o.At("index")));
    HW_ASSIGN_OR_RETURN(const std::string type,
                        i.Enum("type", "roargraph", {"roargraph", "hnsw", "exact"}, {"kmeans"}));
    index.type = type == "roargraph" ? AnnIndexType::kRoarGraph
                 : type == "hnsw"    ? AnnIndexType::kHnsw
                                     : AnnIndexType::kExact;
    HW_RETURN_IF_ERROR(i.Enum("train_queries", "prefill", {"prefill"}).status());
    HW_ASSIGN_OR_RETURN(index.knn_per_query, i.Int("knn_per_query", index.knn_per_query, 1));
    if (index.knn_per_query > kernels::kMaxTopKeys) {
      return InvalidArgument("{}: {} is above {}, the most the build's exact search returns",
                             i.At("knn_per_query"), index.knn_per_query, kernels::kMaxTopKeys);
    }
    HW_ASSIGN_OR_RETURN(index.max_degree, i.Int("max_degree", index.max_degree, 2));
    HW_ASSIGN_OR_RETURN(index.build_list, i.Int("build_L", index.build_list, 1));
    HW_ASSIGN_OR_RETURN(index.search_list, i.Int("search_L", index.search_list, 1));
    HW_ASSIGN_OR_RETURN(index.train_stride, i.Int("train_stride", index.train_stride, 1));
    HW_ASSIGN_OR_RETURN(const std::string search,
                        i.Enum("search", "per_query", {"per_query", "group"}));
    index.group_search = search == "group";
    if (index.group_search && index.type != AnnIndexType::kRoarGraph) {
      return InvalidArgument(
          "{}: group is for type roargraph (a graph traversal shared by the "
          "group's queries); {} searches per query",
          i.At("search"), type);
    }
    if (index.build_list < index.max_degree) {
      return InvalidArgument(
          "{}: {} is below max_degree {}: the candidates a key's neighbours "
          "are pruned from",
          i.At("build_L"), index.build_list, index.max_degree);
    }
    HW_RETURN_IF_ERROR(i.Finish());
  }
  HW_ASSIGN_OR_RETURN(const bool cpu_attention, o.Bool("cpu_attention", true));
  if (!cpu_attention) {
    return Unimplemented(
        "{}: false (bringing the retrieved keys to the device) is not supported by this build; "
        "the host attends them",
        o.At("cpu_attention"));
  }
  return o.Finish();
}

// A policy as parsed, with what ParsePolicy's checks across policies need to know.
struct ParsedPolicy {
  Policy policy;
  bool dense_if_len_le_given = false;
};

StatusOr<ParsedPolicy> ParseOnePolicy(const json& j, const std::string& name,
                                      const std::string& path, int page_size) {
  HW_ASSIGN_OR_RETURN(Fields f, Fields::Of(j, path));
  ParsedPolicy parsed;
  Policy& p = parsed.policy;
  p.name = name;

  if (const json* storage = f.Get("storage")) {
    HW_ASSIGN_OR_RETURN(Fields s, Fields::Of(*storage, f.At("storage")));
    HW_ASSIGN_OR_RETURN(
        const std::string kind,
        s.Enum("kind", std::nullopt, {"full", "ring", "compress_once", "offload"}, {"evict"}));
    if (kind == "full") {
      p.storage = StorageKind::kFull;
    } else if (kind == "offload") {
      p.storage = StorageKind::kOffload;
      if (s.Get("sink") != nullptr || s.Get("window") != nullptr) {
        return InvalidArgument(
            "{}: offload keeps its static set in offload.gpu_static (sink, recent), not in "
            "storage.sink / storage.window",
            s.At(s.Get("sink") != nullptr ? "sink" : "window"));
      }
      const json* offload = s.Get("offload");
      if (offload == nullptr) return InvalidArgument("{}: required", s.At("offload"));
      HW_RETURN_IF_ERROR(ParseOffload(*offload, s.At("offload"), p));
    } else {
      p.storage = kind == "ring" ? StorageKind::kRing : StorageKind::kCompressOnce;
      HW_ASSIGN_OR_RETURN(p.sink, s.Int("sink", std::nullopt, 0));
      HW_ASSIGN_OR_RETURN(p.window, s.Int("window", std::nullopt, 1));
    }
    if (p.storage != StorageKind::kOffload && s.Get("offload") != nullptr) {
      return InvalidArgument("{}: only for storage kind offload", s.At("offload"));
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
                        d.Enum("mode", default_mode, {"dense", "retained", "select", "consume"}));
    p.decode = mode == "dense"      ? DecodeMode::kDense
               : mode == "retained" ? DecodeMode::kRetained
               : mode == "select"   ? DecodeMode::kSelect
                                    : DecodeMode::kConsume;
    if (const json* selection = d.Get("selection")) {
      if (p.decode != DecodeMode::kSelect) {
        return InvalidArgument("{}: only for decode mode select (this policy's mode is {})",
                               d.At("selection"), mode);
      }
      HW_ASSIGN_OR_RETURN(p.selection, ParseSelection(*selection, d.At("selection"), page_size));
    } else if (p.decode == DecodeMode::kSelect) {
      return InvalidArgument("{}: required with decode mode select", d.At("selection"));
    }
    if (d.Get("consume") != nullptr) {
      if (p.decode != DecodeMode::kConsume) {
        return InvalidArgument("{}: only for decode mode consume (this policy's mode is {})",
                               d.At("consume"), mode);
      }
      HW_ASSIGN_OR_RETURN(p.consume, d.String("consume"));
      if (p.consume.empty()) return InvalidArgument("{}: expected a channel name", d.At("consume"));
    } else if (p.decode == DecodeMode::kConsume) {
      return InvalidArgument(
          "{}: required with decode mode consume: the channel an exact_logits policy publishes",
          d.At("consume"));
    }
    // Whether a selecting step of exact_logits (every step) or recycle (refresh steps) attends
    // every key (false) or only the set it just chose (true).
    if (d.Get("attend_selected_in_this_layer") != nullptr) {
      if (p.decode != DecodeMode::kSelect) {
        return InvalidArgument("{}: only for decode mode select (this policy's mode is {})",
                               d.At("attend_selected_in_this_layer"), mode);
      }
      if (p.selection.method == SelectionMethod::kPageMinmax ||
          p.selection.method == SelectionMethod::kAnn) {
        return InvalidArgument(
            "{}: only for methods exact_logits and recycle: page_minmax and ann attend what they "
            "select",
            d.At("attend_selected_in_this_layer"));
      }
      HW_ASSIGN_OR_RETURN(const bool attend_selected,
                          d.Bool("attend_selected_in_this_layer", false));
      if (attend_selected) {
        return Unimplemented(
            "{}: true (attending only the fresh selection in the layer that chose it) is not "
            "supported by this build; a selecting step attends every key",
            d.At("attend_selected_in_this_layer"));
      }
    }
    if (d.Get("emit") != nullptr) {
      return Unimplemented("{}: side outputs of decode attention are not supported by this build",
                           d.At("emit"));
    }
    HW_RETURN_IF_ERROR(d.Finish());
  }
  const bool offload = p.storage == StorageKind::kOffload;
  const bool retrieves =
      p.decode == DecodeMode::kSelect && p.selection.method == SelectionMethod::kAnn;
  const bool selects =
      (p.decode == DecodeMode::kSelect || p.decode == DecodeMode::kConsume) && !retrieves;
  const bool recycles =
      p.decode == DecodeMode::kSelect && p.selection.method == SelectionMethod::kRecycle;
  p.prefill =
      p.storage == StorageKind::kFull || offload ? PrefillMode::kDense : PrefillMode::kRetained;
  if (const json* prefill = f.Get("prefill")) {
    HW_ASSIGN_OR_RETURN(Fields pf, Fields::Of(*prefill, f.At("prefill")));
    HW_ASSIGN_OR_RETURN(const std::string mode,
                        pf.Enum("mode", default_mode, {"dense", "retained"}, {"select_chunks"}));
    p.prefill = mode == "dense" ? PrefillMode::kDense : PrefillMode::kRetained;
    HW_ASSIGN_OR_RETURN(p.first_chunk_dense, pf.Bool("first_chunk_dense", false));
    // Recycled Attention seeds its set from the last prompt token's attention. Here the first
    // decode step has no set yet, so it is a full step that chooses one (SelectionGate): the
    // seeding, one step later and from that step's query, that step attended densely. true and
    // false therefore run alike.
    if (pf.Get("seed_selection_from_last_prompt_token") != nullptr) {
      if (!recycles) {
        return InvalidArgument("{}: only for decode selection method recycle",
                               pf.At("seed_selection_from_last_prompt_token"));
      }
      HW_RETURN_IF_ERROR(pf.Bool("seed_selection_from_last_prompt_token", false).status());
    }
    HW_RETURN_IF_ERROR(pf.Finish());
  }
  parsed.dense_if_len_le_given = f.Get("dense_if_len_le") != nullptr;
  // A selecting policy attends densely while the sequence fits its budget (ALGORITHMS.md §10.1:
  // the reference codes' min(top_k, n)); consume policies inherit their publisher's (ParsePolicy).
  if (retrieves && parsed.dense_if_len_le_given) {
    return InvalidArgument(
        "{}: not for method ann: an offloaded head's keys are on the host, whatever the length",
        f.At("dense_if_len_le"));
  }
  HW_ASSIGN_OR_RETURN(p.dense_if_len_le,
                      f.Int("dense_if_len_le", selects ? p.selection.budget : 0, 0));
  if (f.Get("merge") != nullptr) {
    if (!offload) {
      return InvalidArgument(
          "{}: only for storage offload (its device and host results merge by log-sum-exp)",
          f.At("merge"));
    }
    HW_RETURN_IF_ERROR(f.Enum("merge", "lse", {"lse"}).status());
  }
  HW_RETURN_IF_ERROR(f.Finish());

  // Offload and its retrieval go together, over a dense prefill at original positions.
  if (offload && !retrieves) {
    return InvalidArgument(
        "{}: storage offload needs decode mode select with selection method ann (the host "
        "retrieves the offloaded keys)",
        f.At("decode.mode"));
  }
  if (retrieves && !offload) {
    return InvalidArgument(
        "{}: selection method ann needs storage offload (it searches the offloaded keys)",
        f.At("storage.kind"));
  }
  if (offload) {
    if (p.positions != Positions::kOriginal) {
      return InvalidArgument("{}: offload keeps original positions", f.At("positions"));
    }
    if (p.offload.group_search && p.selection.granularity != SelectionGranularity::kQHead) {
      return InvalidArgument(
          "{}: search group (one traversal for the group's queries, a set per query head) needs "
          "granularity q_head; kv_head already searches once per group, with its mean query",
          f.At("storage.offload.index.search"));
    }
    if (p.prefill != PrefillMode::kDense) {
      return InvalidArgument(
          "{}: offload prefills densely on the device and offloads when the prompt is in; use "
          "mode dense",
          f.At("prefill.mode"));
    }
    if (p.first_chunk_dense) {
      return InvalidArgument("{}: only for prefill mode retained",
                             f.At("prefill.first_chunk_dense"));
    }
    return parsed;
  }

  // Combinations that say two different things at once.
  const bool full = p.storage == StorageKind::kFull;
  if (selects) {
    const char* mode = p.decode == DecodeMode::kSelect ? "select" : "consume";
    if (!full) {
      return InvalidArgument(
          "{}: decode mode {} needs storage full: a selection is chosen from every key",
          f.At("storage.kind"), mode);
    }
    if (p.positions != Positions::kOriginal) {
      return InvalidArgument("{}: decode mode {} needs positions original", f.At("positions"),
                             mode);
    }
    if (p.prefill != PrefillMode::kDense) {
      return InvalidArgument(
          "{}: decode mode {} needs prefill mode dense (selection is a decode-time method)",
          f.At("prefill.mode"), mode);
    }
  }
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
  return parsed;
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

// kv_cache.page_metadata: the per-page summaries the cache keeps (ALGORITHMS.md §9.6). Quest's
// key bounds are the ones built; the file must name them when a policy selects pages
// (CheckSelectingPolicies), as they cost memory (2 * D values per page and KV head).
Status ParsePageMetadata(const json& j, const std::string& path) {
  if (!j.is_array())
    return InvalidArgument("{}: expected a list such as [\"kmin\", \"kmax\"]", path);
  std::set<std::string> seen;
  for (const json& e : j) {
    if (!e.is_string()) return InvalidArgument("{}: {} is not a string", path, e.dump());
    const std::string name = e.get<std::string>();
    if (name == "kmean" || name == "count") {
      return Unimplemented("{}: \"{}\" is part of attn-policy/v1 but not supported by this build",
                           path, name);
    }
    if (name != "kmin" && name != "kmax") {
      return InvalidArgument("{}: \"{}\" is not one of kmin, kmax, kmean, count", path, name);
    }
    if (!seen.insert(name).second) return InvalidArgument("{}: \"{}\" twice", path, name);
  }
  if (seen.size() != 2) {
    return InvalidArgument("{}: page_minmax's bounds need both kmin and kmax", path);
  }
  return Status::Ok();
}

bool WritesSet(const Policy& p) {
  return p.decode == DecodeMode::kSelect && p.selection.method != SelectionMethod::kAnn;
}

// Checks across the selecting policies of a file, whatever their assignment: page summaries
// named exactly when read, every consumed channel published, and one dense_if_len_le for all
// (a sequence's step selects on all its selecting heads or on none: KvLayout::select_min_len),
// which consume policies inherit when they do not give it.
Status CheckSelectingPolicies(PolicySet& set, const std::vector<bool>& dense_if_len_le_given,
                              bool page_metadata) {
  const Policy* pages = nullptr;
  for (const Policy& p : set.policies) {
    if (WritesSet(p) && p.selection.method == SelectionMethod::kPageMinmax) pages = &p;
  }
  if (pages != nullptr && !page_metadata) {
    return InvalidArgument(
        "kv_cache.page_metadata: required: policy \"{}\" selects pages by their key bounds "
        "(page_minmax); give [\"kmin\", \"kmax\"]",
        pages->name);
  }
  if (pages == nullptr && page_metadata) {
    return InvalidArgument(
        "kv_cache.page_metadata: no policy selects pages (page_minmax), nothing reads the "
        "summaries");
  }
  for (const Policy& p : set.policies) {
    if (p.decode != DecodeMode::kConsume) continue;
    const bool published = std::any_of(
        set.policies.begin(), set.policies.end(),
        [&](const Policy& w) { return WritesSet(w) && w.selection.publish == p.consume; });
    if (!published) {
      return InvalidArgument("policies.{}.decode.consume: no exact_logits policy publishes \"{}\"",
                             p.name, p.consume);
    }
  }
  // The value a select policy gives, or its budget.
  const auto value_of = [&](size_t i) {
    const Policy& p = set.policies[i];
    return dense_if_len_le_given[i] ? fmt::format("{}", p.dense_if_len_le)
                                    : fmt::format("{} (its budget)", p.dense_if_len_le);
  };
  const Policy* first = nullptr;
  size_t first_index = 0;
  for (size_t i = 0; i < set.policies.size(); ++i) {
    const Policy& p = set.policies[i];
    if (!WritesSet(p)) continue;
    if (first == nullptr) {
      first = &p;
      first_index = i;
    } else if (p.dense_if_len_le != first->dense_if_len_le) {
      return InvalidArgument(
          "policies.{}.dense_if_len_le: {} differs from policy \"{}\"'s {}: every selecting "
          "policy of a file attends densely up to one length (a step selects on all of a "
          "sequence's selecting heads or on none)",
          p.name, value_of(i), first->name, value_of(first_index));
    }
  }
  for (size_t i = 0; i < set.policies.size(); ++i) {
    Policy& p = set.policies[i];
    if (p.decode != DecodeMode::kConsume || first == nullptr) continue;
    if (!dense_if_len_le_given[i]) {
      p.dense_if_len_le = first->dense_if_len_le;
    } else if (p.dense_if_len_le != first->dense_if_len_le) {
      return InvalidArgument(
          "policies.{}.dense_if_len_le: {} differs from policy \"{}\"'s {}: a consume policy "
          "attends densely up to its publisher's length (leave it out to inherit it)",
          p.name, p.dense_if_len_le, first->name, first->dense_if_len_le);
    }
  }
  return Status::Ok();
}

// Checks of the resolved assignment, per (layer, KV head): a consume head reads a set its own KV
// head published on its channel at an earlier layer, and the heads of a layer that choose sets
// choose them alike (one set index per layer: KvLayout::selects).
Status CheckSelectionAssignment(const PolicySet& set) {
  const int layers = static_cast<int>(set.head_policy.size());
  for (int l = 0; l < layers; ++l) {
    const int kv_heads = static_cast<int>(set.head_policy[static_cast<size_t>(l)].size());
    int writer_head = -1;
    for (int h = 0; h < kv_heads; ++h) {
      const Policy& p = set.At(l, h);
      if (p.decode == DecodeMode::kConsume) {
        bool published = false;
        for (int below = 0; below < l && !published; ++below) {
          const Policy& w = set.At(below, h);
          published = WritesSet(w) && w.selection.publish == p.consume;
        }
        if (!published) {
          return InvalidArgument(
              "assignment: layer {} KV head {} (policy \"{}\") consumes channel \"{}\", which "
              "no exact_logits policy publishes for KV head {} at an earlier layer",
              l, h, p.name, p.consume, h);
        }
      }
      if (!WritesSet(p)) continue;
      if (writer_head < 0) {
        writer_head = h;
        continue;
      }
      const Policy& w = set.At(l, writer_head);
      const Selection& a = w.selection;
      const Selection& b = p.selection;
      const bool same_rule =
          a.method == b.method && a.granularity == b.granularity &&
          (a.method != SelectionMethod::kRecycle ||
           (a.refresh_every_steps == b.refresh_every_steps &&
            a.refresh_by_similarity == b.refresh_by_similarity &&
            (!a.refresh_by_similarity || a.similarity_threshold == b.similarity_threshold)));
      if (!same_rule) {
        return InvalidArgument(
            "assignment: layer {}: KV head {} (policy \"{}\", {}) and KV head {} (policy \"{}\", "
            "{}) choose sets by different rules; the selecting heads of a layer share one "
            "method, granularity and refresh rule",
            l, writer_head, w.name, MethodName(a.method), h, p.name, MethodName(b.method));
      }
    }
  }
  return Status::Ok();
}

// Offload heads compact the sequence once its prompt is in, as compress_once heads do, and retrieve
// through the selection slots: a file whose heads offload may not also compress once or select
// at decode (one compaction rule per KV layout; the slots serve one kind of head).
Status CheckOffloadAssignment(const PolicySet& set) {
  const Policy* offload = nullptr;
  const Policy* other = nullptr;
  for (const auto& layer : set.head_policy) {
    for (int i : layer) {
      const Policy& p = set.policies[static_cast<size_t>(i)];
      if (p.storage == StorageKind::kOffload) {
        offload = &p;
      } else if (p.storage == StorageKind::kCompressOnce || p.decode == DecodeMode::kSelect ||
                 p.decode == DecodeMode::kConsume) {
        other = &p;
      }
    }
  }
  if (offload != nullptr && other != nullptr) {
    return InvalidArgument(
        "assignment: policy \"{}\" offloads and policy \"{}\" {}: one file does not combine "
        "them in this build",
        offload->name, other->name,
        other->storage == StorageKind::kCompressOnce ? "compresses once" : "selects at decode");
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
    case StorageKind::kOffload:  // on the device; the rest of the prompt is on the host
      return int64_t{sink} + window;
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
  bool page_metadata = false;  // kv_cache.page_metadata given
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
    if (const json* metadata = k.Get("page_metadata")) {
      HW_RETURN_IF_ERROR(ParsePageMetadata(*metadata, k.At("page_metadata")));
      page_metadata = true;
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
  std::vector<bool> dense_if_len_le_given;
  for (auto it = policies->begin(); it != policies->end(); ++it) {
    HW_ASSIGN_OR_RETURN(ParsedPolicy parsed,
                        ParseOnePolicy(*it, it.key(), "policies." + it.key(), set.page_size));
    by_name[parsed.policy.name] = static_cast<int>(set.policies.size());
    set.policies.push_back(std::move(parsed.policy));
    dense_if_len_le_given.push_back(parsed.dense_if_len_le_given);
  }
  HW_RETURN_IF_ERROR(CheckSelectingPolicies(set, dense_if_len_le_given, page_metadata));

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

  HW_RETURN_IF_ERROR(CheckSelectionAssignment(set));
  HW_RETURN_IF_ERROR(CheckOffloadAssignment(set));
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
