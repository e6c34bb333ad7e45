// GgufVocab -> PipelineConfig, following llama.cpp (src/llama-vocab.cpp): its defaults per
// model type, its pre-tokenizer regexes per `pre` name, and its special-token partitioning
// (control, user-defined and unknown tokens written in the text map to their ids).
#include <algorithm>

#include "tokenizer/gguf_vocab.h"
#include "tokenizer/pipeline.h"

namespace headwise::tokenizer {
namespace {

using internal::AddedToken;
using internal::DecoderStep;
using internal::NormalizerStep;
using internal::PipelineConfig;
using internal::PreTokenizerStep;
using internal::SplitPattern;

struct PreSpec {
  std::vector<SplitPattern> patterns;
  bool ignore_merges = false;
  bool add_bos = false;
};

StatusOr<PreSpec> PreFor(const std::string& pre) {
  using P = SplitPattern;
  if (pre.empty() || pre == "default") {
    return PreSpec{{P::kPunctuationRun, P::kGpt2, P::kNumberRun, P::kThreeAsciiDigits}};
  }
  if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3") {
    return PreSpec{{P::kLlama3}, /*ignore_merges=*/true, /*add_bos=*/true};
  }
  if (pre == "dbrx" || pre == "smaug-bpe" || pre == "chatglm-bpe") return PreSpec{{P::kLlama3}};
  if (pre == "qwen2" || pre == "stablelm2" || pre == "megrez") return PreSpec{{P::kQwen2}};
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "command-r" ||
      pre == "codeshell" || pre == "exaone" || pre == "minerva-7b") {
    return PreSpec{{P::kEachNumber, P::kGpt2}};
  }
  if (pre == "gpt-2" || pre == "phi-2" || pre == "roberta-bpe" || pre == "mpt" || pre == "olmo" ||
      pre == "jais" || pre == "jina-es" || pre == "jina-de" || pre == "jina-v1-en" ||
      pre == "jina-v2-es" || pre == "jina-v2-de" || pre == "jina-v2-code" || pre == "gigachat") {
    return PreSpec{{P::kGpt2}};
  }
  return Unimplemented("GGUF pre-tokenizer '{}' is not supported", pre);
}

// llama.cpp keeps its default when a special-token id is outside the vocabulary (converters
// write 0xFFFFFFFF, read back as -1, for "none"); so do we.
std::optional<int32_t> ValidId(std::optional<int32_t> given, std::optional<int32_t> fallback,
                               size_t n) {
  const auto valid = [n](std::optional<int32_t> id) {
    return id && *id >= 0 && static_cast<size_t>(*id) < n;
  };
  if (valid(given)) return given;
  if (valid(fallback)) return fallback;
  return std::nullopt;
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufVocab& vocab) {
  const size_t n = vocab.tokens.size();
  if (n == 0) return InvalidArgument("GGUF vocabulary has no tokens");
  if (!vocab.scores.empty() && vocab.scores.size() != n) {
    return InvalidArgument("GGUF vocabulary has {} scores for {} tokens", vocab.scores.size(), n);
  }
  if (!vocab.token_type.empty() && vocab.token_type.size() != n) {
    return InvalidArgument("GGUF vocabulary has {} token types for {} tokens",
                           vocab.token_type.size(), n);
  }
  const bool spm = vocab.model == "llama";
  const bool bpe = vocab.model == "gpt2";
  if (!spm && !bpe) return Unimplemented("GGUF tokenizer model '{}' is not supported", vocab.model);

  PipelineConfig config;
  config.id_to_piece = vocab.tokens;
  config.special.assign(n, false);
  const auto type_of = [&](size_t i) {
    return vocab.token_type.empty() ? GgufVocab::kNormal : vocab.token_type[i];
  };
  for (size_t i = 0; i < n; ++i) {
    const int32_t t = type_of(i);
    if (t != GgufVocab::kControl && t != GgufVocab::kUserDefined && t != GgufVocab::kUnknown) {
      continue;
    }
    AddedToken token;
    token.content = vocab.tokens[i];
    token.id = static_cast<int32_t>(i);
    token.special = t != GgufVocab::kUserDefined;
    config.special[i] = token.special;
    config.added_tokens.push_back(std::move(token));
  }

  std::optional<int32_t> bos, eos, unk;
  bool add_bos = false;
  bool add_eos = false;
  if (spm) {
    bos = 1;
    eos = 2;
    unk = 0;
    add_bos = true;
    const bool add_space_prefix = vocab.add_space_prefix.value_or(true);
    if (add_space_prefix)
      config.normalizers.push_back({NormalizerStep::Kind::kPrepend, {}, {}, "\xE2\x96\x81"});
    config.normalizers.push_back({NormalizerStep::Kind::kReplace, {}, " ", "\xE2\x96\x81"});
    std::vector<int32_t> byte_ids(256, -1);
    std::unordered_map<std::string, int32_t> piece_to_id;
    for (size_t i = 0; i < n; ++i) piece_to_id[vocab.tokens[i]] = static_cast<int32_t>(i);
    for (int b = 0; b < 256; ++b) {
      auto it = piece_to_id.find(fmt::format("<0x{:02X}>", b));
      if (it != piece_to_id.end()) byte_ids[b] = it->second;
    }
    config.model = internal::MakeSpmScoreModel(vocab.tokens, vocab.scores, byte_ids,
                                               ValidId(vocab.unk_id, unk, n));
    config.decoders.push_back({DecoderStep::Kind::kReplace, "\xE2\x96\x81", " "});
    config.decoders.push_back({DecoderStep::Kind::kByteFallback});
    config.decoders.push_back({DecoderStep::Kind::kFuse});
    if (add_space_prefix) config.decoders.push_back({DecoderStep::Kind::kStrip, "", " ", 1, 0});
  } else {
    bos = 11;
    eos = 11;
    HW_ASSIGN_OR_RETURN(PreSpec pre, PreFor(vocab.pre));
    add_bos = pre.add_bos;
    if (vocab.pre == "chatglm-bpe") bos.reset();
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(vocab.merges.size());
    for (const std::string& m : vocab.merges) {
      // llama.cpp splits at the first space after the first byte.
      const size_t pos = m.find(' ', 1);
      if (pos == std::string::npos) return InvalidArgument("GGUF merge '{}' has no space", m);
      merges.emplace_back(m.substr(0, pos), m.substr(pos + 1));
    }
    internal::BpeOptions options;
    options.ignore_merges = pre.ignore_merges;
    HW_ASSIGN_OR_RETURN(config.model, internal::MakeBpeModel(vocab.tokens, merges, options));
    for (SplitPattern p : pre.patterns) {
      PreTokenizerStep step{PreTokenizerStep::Kind::kSplit};
      step.pattern = p;
      config.pre_tokenizers.push_back(step);
    }
    config.pre_tokenizers.push_back({PreTokenizerStep::Kind::kByteLevel});
    config.decoders.push_back({DecoderStep::Kind::kByteLevel});
  }

  bos = ValidId(vocab.bos_id, bos, n);
  eos = ValidId(vocab.eos_id, eos, n);
  add_bos = vocab.add_bos_token.value_or(add_bos);
  add_eos = vocab.add_eos_token.value_or(add_eos);
  if (add_bos) {
    if (!bos) return InvalidArgument("GGUF add_bos_token is set but there is no bos token");
    config.prefix_ids.push_back(*bos);
  }
  if (add_eos) {
    if (!eos) return InvalidArgument("GGUF add_eos_token is set but there is no eos token");
    config.suffix_ids.push_back(*eos);
  }
  config.bos_id = bos;
  config.eos_id = eos;
  const auto add_stop = [&](std::optional<int32_t> id) {
    if (id &&
        std::find(config.stop_ids.begin(), config.stop_ids.end(), *id) == config.stop_ids.end()) {
      config.stop_ids.push_back(*id);
    }
  };
  add_stop(eos);
  add_stop(ValidId(vocab.eot_id, std::nullopt, n));
  add_stop(ValidId(vocab.eom_id, std::nullopt, n));
  for (const AddedToken& t : config.added_tokens) {
    if (t.special && internal::IsEndOfTurnText(t.content)) add_stop(t.id);
  }
  return internal::MakePipelineTokenizer(std::move(config));
}

}  // namespace headwise::tokenizer
