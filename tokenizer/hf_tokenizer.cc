// tokenizer.json -> PipelineConfig. Every field that changes tokenization is either mapped or
// refused with kUnimplemented: a tokenizer that silently drops a normalizer is wrong on some
// input and nobody notices.
#include <nlohmann/json.hpp>

#include "core/json_file.h"
#include "tokenizer/pipeline.h"

namespace headwise::tokenizer {
namespace {

using internal::AddedToken;
using internal::DecoderStep;
using internal::NormalizerStep;
using internal::PipelineConfig;
using internal::PreTokenizerStep;
using json = nlohmann::json;

std::string TypeOf(const json& j) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) return "";
  return j["type"].get<std::string>();
}

// Reads an optional JSON field of the given type, failing (not throwing) on a type mismatch.
template <typename T>
Status Get(const json& j, const char* key, T* out) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return Status::Ok();
  try {
    *out = j[key].get<T>();
  } catch (const json::exception&) {
    return InvalidArgument("field '{}' has the wrong type", key);
  }
  return Status::Ok();
}

Status ParseNormalizer(const json& n, std::vector<NormalizerStep>* steps) {
  if (n.is_null()) return Status::Ok();
  const std::string type = TypeOf(n);
  if (type == "Sequence") {
    if (!n.contains("normalizers") || !n["normalizers"].is_array()) {
      return InvalidArgument("normalizer Sequence without a 'normalizers' list");
    }
    for (const json& child : n["normalizers"]) HW_RETURN_IF_ERROR(ParseNormalizer(child, steps));
    return Status::Ok();
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    NormalizerStep step{NormalizerStep::Kind::kUnicode};
    step.form = type == "NFC"    ? internal::NormalForm::kNfc
                : type == "NFD"  ? internal::NormalForm::kNfd
                : type == "NFKC" ? internal::NormalForm::kNfkc
                                 : internal::NormalForm::kNfkd;
    steps->push_back(step);
    return Status::Ok();
  }
  if (type == "Prepend") {
    NormalizerStep step{NormalizerStep::Kind::kPrepend};
    HW_RETURN_IF_ERROR(Get(n, "prepend", &step.content));
    steps->push_back(step);
    return Status::Ok();
  }
  if (type == "Replace") {
    NormalizerStep step{NormalizerStep::Kind::kReplace};
    const json& pattern = n.value("pattern", json());
    if (!pattern.is_object() || !pattern.contains("String")) {
      return Unimplemented("normalizer Replace with a non-String pattern (regex) is not supported");
    }
    HW_RETURN_IF_ERROR(Get(pattern, "String", &step.pattern));
    HW_RETURN_IF_ERROR(Get(n, "content", &step.content));
    steps->push_back(step);
    return Status::Ok();
  }
  return Unimplemented("normalizer type '{}' is not supported", type);
}

Status ParsePreTokenizer(const json& p, std::vector<PreTokenizerStep>* steps) {
  if (p.is_null()) return Status::Ok();
  const std::string type = TypeOf(p);
  if (type == "Sequence") {
    if (!p.contains("pretokenizers") || !p["pretokenizers"].is_array()) {
      return InvalidArgument("pre_tokenizer Sequence without a 'pretokenizers' list");
    }
    for (const json& child : p["pretokenizers"]) {
      HW_RETURN_IF_ERROR(ParsePreTokenizer(child, steps));
    }
    return Status::Ok();
  }
  if (type == "Split") {
    const json& pattern = p.value("pattern", json());
    std::string regex;
    if (pattern.is_object() && pattern.contains("Regex")) {
      HW_RETURN_IF_ERROR(Get(pattern, "Regex", &regex));
    } else {
      return Unimplemented("pre_tokenizer Split with a String pattern is not supported");
    }
    std::string behavior;
    bool invert = false;
    HW_RETURN_IF_ERROR(Get(p, "behavior", &behavior));
    HW_RETURN_IF_ERROR(Get(p, "invert", &invert));
    if (behavior != "Isolated" || invert) {
      return Unimplemented("pre_tokenizer Split with behavior '{}'{} is not supported", behavior,
                           invert ? " and invert" : "");
    }
    auto recognized = internal::RecognizeSplitRegex(regex);
    if (!recognized) {
      return Unimplemented("pre_tokenizer Split regex is not one we implement: {}", regex);
    }
    PreTokenizerStep step{PreTokenizerStep::Kind::kSplit};
    step.pattern = *recognized;
    steps->push_back(step);
    return Status::Ok();
  }
  if (type == "ByteLevel") {
    PreTokenizerStep step{PreTokenizerStep::Kind::kByteLevel};
    step.use_regex = true;
    HW_RETURN_IF_ERROR(Get(p, "use_regex", &step.use_regex));
    HW_RETURN_IF_ERROR(Get(p, "add_prefix_space", &step.add_prefix_space));
    steps->push_back(step);
    return Status::Ok();
  }
  if (type == "Digits") {
    bool individual = false;
    HW_RETURN_IF_ERROR(Get(p, "individual_digits", &individual));
    if (!individual) {
      return Unimplemented("pre_tokenizer Digits with individual_digits=false is not supported");
    }
    PreTokenizerStep step{PreTokenizerStep::Kind::kSplit};
    step.pattern = internal::SplitPattern::kEachNumber;
    steps->push_back(step);
    return Status::Ok();
  }
  return Unimplemented("pre_tokenizer type '{}' is not supported", type);
}

Status ParseDecoder(const json& d, std::vector<DecoderStep>* steps) {
  if (d.is_null()) return Status::Ok();
  const std::string type = TypeOf(d);
  if (type == "Sequence") {
    if (!d.contains("decoders") || !d["decoders"].is_array()) {
      return InvalidArgument("decoder Sequence without a 'decoders' list");
    }
    for (const json& child : d["decoders"]) HW_RETURN_IF_ERROR(ParseDecoder(child, steps));
    return Status::Ok();
  }
  if (type == "ByteLevel") {
    steps->push_back({DecoderStep::Kind::kByteLevel});
    return Status::Ok();
  }
  if (type == "ByteFallback") {
    steps->push_back({DecoderStep::Kind::kByteFallback});
    return Status::Ok();
  }
  if (type == "Fuse") {
    steps->push_back({DecoderStep::Kind::kFuse});
    return Status::Ok();
  }
  if (type == "Replace") {
    DecoderStep step{DecoderStep::Kind::kReplace};
    const json& pattern = d.value("pattern", json());
    if (!pattern.is_object() || !pattern.contains("String")) {
      return Unimplemented("decoder Replace with a non-String pattern (regex) is not supported");
    }
    HW_RETURN_IF_ERROR(Get(pattern, "String", &step.pattern));
    HW_RETURN_IF_ERROR(Get(d, "content", &step.content));
    steps->push_back(step);
    return Status::Ok();
  }
  if (type == "Strip") {
    DecoderStep step{DecoderStep::Kind::kStrip};
    HW_RETURN_IF_ERROR(Get(d, "content", &step.content));
    HW_RETURN_IF_ERROR(Get(d, "start", &step.start));
    HW_RETURN_IF_ERROR(Get(d, "stop", &step.stop));
    steps->push_back(step);
    return Status::Ok();
  }
  return Unimplemented("decoder type '{}' is not supported", type);
}

// Resolves a post-processor into the ids added around the sequence.
Status ParsePostProcessor(const json& p, PipelineConfig* config) {
  if (p.is_null()) return Status::Ok();
  const std::string type = TypeOf(p);
  if (type == "Sequence") {
    if (!p.contains("processors") || !p["processors"].is_array()) {
      return InvalidArgument("post_processor Sequence without a 'processors' list");
    }
    for (const json& child : p["processors"]) HW_RETURN_IF_ERROR(ParsePostProcessor(child, config));
    return Status::Ok();
  }
  if (type == "ByteLevel") return Status::Ok();  // only adjusts offsets
  if (type == "TemplateProcessing") {
    if (!p.contains("single") || !p["single"].is_array()) {
      return InvalidArgument("TemplateProcessing without a 'single' template");
    }
    const json specials = p.value("special_tokens", json::object());
    bool seen_sequence = false;
    std::vector<int32_t> prefix, suffix;
    for (const json& item : p["single"]) {
      if (item.contains("Sequence")) {
        if (seen_sequence)
          return Unimplemented("TemplateProcessing with two sequences in 'single'");
        seen_sequence = true;
        continue;
      }
      if (!item.contains("SpecialToken")) {
        return Unimplemented("TemplateProcessing item {} is not supported", item.dump());
      }
      std::string name;
      HW_RETURN_IF_ERROR(Get(item["SpecialToken"], "id", &name));
      if (!specials.contains(name)) {
        return InvalidArgument("TemplateProcessing names special token '{}' without ids", name);
      }
      std::vector<int32_t> ids;
      HW_RETURN_IF_ERROR(Get(specials[name], "ids", &ids));
      auto& target = seen_sequence ? suffix : prefix;
      target.insert(target.end(), ids.begin(), ids.end());
    }
    config->prefix_ids = std::move(prefix);
    config->suffix_ids = std::move(suffix);
    return Status::Ok();
  }
  return Unimplemented("post_processor type '{}' is not supported", type);
}

std::optional<std::string> TokenContent(const json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return std::nullopt;
}

StatusOr<std::unique_ptr<Tokenizer>> Load(const json& tj, const json& cfg) {
  if (!tj.is_object() || !tj.contains("model")) {
    return InvalidArgument("not a tokenizer.json (no 'model')");
  }
  for (const char* key : {"truncation", "padding"}) {
    if (tj.contains(key) && !tj[key].is_null()) {
      return Unimplemented("'{}' in tokenizer.json is not supported", key);
    }
  }
  const json& model = tj["model"];
  const std::string model_type = TypeOf(model).empty() ? "BPE" : TypeOf(model);
  if (model_type != "BPE") return Unimplemented("model type '{}' is not supported", model_type);
  if (model.contains("dropout") && !model["dropout"].is_null()) {
    return Unimplemented("BPE dropout is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    std::string value;
    HW_RETURN_IF_ERROR(Get(model, key, &value).WithContext("model"));
    if (!value.empty()) return Unimplemented("BPE {} '{}' is not supported", key, value);
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return InvalidArgument("BPE model without a vocab object");
  }

  PipelineConfig config;
  for (const auto& [piece, id_json] : model["vocab"].items()) {
    if (!id_json.is_number_integer())
      return InvalidArgument("vocab entry '{}' has no integer id", piece);
    const int64_t id = id_json.get<int64_t>();
    if (id < 0 || id > (1 << 24)) return InvalidArgument("vocab id {} out of range", id);
    if (config.id_to_piece.size() <= static_cast<size_t>(id)) config.id_to_piece.resize(id + 1);
    config.id_to_piece[id] = piece;
  }
  const size_t model_vocab_size = config.id_to_piece.size();

  std::vector<std::pair<std::string, std::string>> merges;
  if (model.contains("merges") && model["merges"].is_array()) {
    for (const json& m : model["merges"]) {
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          return InvalidArgument("merge '{}' is not two pieces separated by one space", s);
        }
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        return InvalidArgument("merge {} is neither 'a b' nor [a, b]", m.dump());
      }
    }
  }
  internal::BpeOptions options;
  HW_RETURN_IF_ERROR(Get(model, "byte_fallback", &options.byte_fallback).WithContext("model"));
  HW_RETURN_IF_ERROR(Get(model, "fuse_unk", &options.fuse_unk).WithContext("model"));
  HW_RETURN_IF_ERROR(Get(model, "ignore_merges", &options.ignore_merges).WithContext("model"));
  std::string unk_token;
  HW_RETURN_IF_ERROR(Get(model, "unk_token", &unk_token).WithContext("model"));

  // Added tokens; their ids may lie beyond the model's vocabulary.
  if (tj.contains("added_tokens") && tj["added_tokens"].is_array()) {
    for (const json& a : tj["added_tokens"]) {
      AddedToken token;
      int64_t id = -1;
      HW_RETURN_IF_ERROR(Get(a, "id", &id).WithContext("added_tokens"));
      HW_RETURN_IF_ERROR(Get(a, "content", &token.content).WithContext("added_tokens"));
      HW_RETURN_IF_ERROR(Get(a, "special", &token.special).WithContext("added_tokens"));
      HW_RETURN_IF_ERROR(Get(a, "lstrip", &token.lstrip).WithContext("added_tokens"));
      HW_RETURN_IF_ERROR(Get(a, "rstrip", &token.rstrip).WithContext("added_tokens"));
      HW_RETURN_IF_ERROR(Get(a, "normalized", &token.normalized).WithContext("added_tokens"));
      HW_RETURN_IF_ERROR(Get(a, "single_word", &token.single_word).WithContext("added_tokens"));
      if (id < 0 || id > (1 << 24)) return InvalidArgument("added token id {} out of range", id);
      token.id = static_cast<int32_t>(id);
      if (config.id_to_piece.size() <= static_cast<size_t>(id)) config.id_to_piece.resize(id + 1);
      config.id_to_piece[id] = token.content;
      config.added_tokens.push_back(std::move(token));
    }
  }
  config.special.assign(config.id_to_piece.size(), false);
  for (const AddedToken& t : config.added_tokens) {
    if (t.special) config.special[t.id] = true;
  }

  std::unordered_map<std::string, int32_t> piece_to_id;
  for (size_t i = 0; i < config.id_to_piece.size(); ++i) {
    piece_to_id[config.id_to_piece[i]] = static_cast<int32_t>(i);
  }
  if (!unk_token.empty()) {
    auto it = piece_to_id.find(unk_token);
    if (it == piece_to_id.end())
      return InvalidArgument("unk_token '{}' is not in the vocab", unk_token);
    options.unk_id = it->second;
  }
  std::vector<std::string> model_pieces(config.id_to_piece.begin(),
                                        config.id_to_piece.begin() + model_vocab_size);
  HW_ASSIGN_OR_RETURN(config.model, internal::MakeBpeModel(model_pieces, merges, options));

  HW_RETURN_IF_ERROR(ParseNormalizer(tj.value("normalizer", json()), &config.normalizers));
  HW_RETURN_IF_ERROR(ParsePreTokenizer(tj.value("pre_tokenizer", json()), &config.pre_tokenizers));
  HW_RETURN_IF_ERROR(ParseDecoder(tj.value("decoder", json()), &config.decoders));
  HW_RETURN_IF_ERROR(ParsePostProcessor(tj.value("post_processor", json()), &config));

  // bos/eos: tokenizer_config.json names them; without it, the post-processor's leading token
  // is the bos.
  const auto id_of = [&](const std::optional<std::string>& content) -> std::optional<int32_t> {
    if (!content) return std::nullopt;
    auto it = piece_to_id.find(*content);
    if (it == piece_to_id.end()) return std::nullopt;
    return it->second;
  };
  config.bos_id = id_of(TokenContent(cfg, "bos_token"));
  config.eos_id = id_of(TokenContent(cfg, "eos_token"));
  if (!config.bos_id && !config.prefix_ids.empty()) config.bos_id = config.prefix_ids.front();
  if (!config.eos_id) {
    for (const char* text : {"</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>"}) {
      if (auto id = id_of(std::string(text)); id && config.special[*id]) {
        config.eos_id = id;
        break;
      }
    }
  }
  // transformers' Llama/Gemma tokenizers rebuild the post-processor from add_bos_token and
  // add_eos_token; the others ignore those keys.
  std::string tokenizer_class;
  if (cfg.is_object()) (void)Get(cfg, "tokenizer_class", &tokenizer_class);
  if (tokenizer_class.find("Llama") != std::string::npos ||
      tokenizer_class.find("Gemma") != std::string::npos) {
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) {
      config.prefix_ids.clear();
      if (cfg["add_bos_token"].get<bool>()) {
        if (!config.bos_id) return InvalidArgument("add_bos_token is set but bos_token is unknown");
        config.prefix_ids.push_back(*config.bos_id);
      }
    }
    if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) {
      config.suffix_ids.clear();
      if (cfg["add_eos_token"].get<bool>()) {
        if (!config.eos_id) return InvalidArgument("add_eos_token is set but eos_token is unknown");
        config.suffix_ids.push_back(*config.eos_id);
      }
    }
  }
  if (config.eos_id) config.stop_ids.push_back(*config.eos_id);
  for (const AddedToken& t : config.added_tokens) {
    if (t.special && internal::IsEndOfTurnText(t.content) &&
        std::find(config.stop_ids.begin(), config.stop_ids.end(), t.id) == config.stop_ids.end()) {
      config.stop_ids.push_back(t.id);
    }
  }
  // Every id Encode can emit must be in the vocabulary (the model indexes its embedding with
  // it): the post-processor's ids name no piece of their own.
  const auto vocab = static_cast<int64_t>(config.id_to_piece.size());
  for (const auto* ids : {&config.prefix_ids, &config.suffix_ids}) {
    for (int32_t id : *ids) {
      if (id < 0 || id >= vocab) {
        return InvalidArgument(
            "post_processor: special token id {} is outside the vocabulary of {}", id, vocab);
      }
    }
  }
  return internal::MakePipelineTokenizer(std::move(config));
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& tokenizer_json_path,
                                                     const std::string& tokenizer_config_path) {
  HW_ASSIGN_OR_RETURN(json tj,
                      ReadJsonFile(tokenizer_json_path, "tokenizer.json", kMaxTokenizerFileBytes));
  json cfg = json::object();
  if (!tokenizer_config_path.empty()) {
    HW_ASSIGN_OR_RETURN(cfg, ReadJsonFile(tokenizer_config_path, "tokenizer_config.json"));
  }
  try {
    auto result = Load(tj, cfg);
    if (!result.ok()) return result.status().WithContext(tokenizer_json_path);
    return result;
  } catch (const json::exception& e) {
    // Guards the few accessors above that assume a shape; a malformed file is bad input.
    return InvalidArgument("{}: malformed tokenizer.json: {}", tokenizer_json_path, e.what());
  }
}

}  // namespace headwise::tokenizer
