// The only translation unit that includes sentencepiece's header: its absl::string_view shim
// clashes with the real abseil that gRPC brings in (DESIGN.md §3).
#include <sentencepiece_processor.h>

#include "core/file_io.h"
#include "tokenizer/pipeline.h"

namespace headwise::tokenizer {
namespace {

using internal::AddedToken;
using internal::DecoderStep;

class SentencePieceModel final : public internal::Model {
 public:
  explicit SentencePieceModel(std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp)
      : sp_(std::move(sp)) {}
  void Tokenize(std::string_view piece, std::vector<int32_t>* ids) const override {
    std::vector<int> out;
    // Encode only fails on an unloaded model, which the loader rules out.
    if (!sp_->Encode(absl::string_view(piece.data(), piece.size()), &out).ok()) return;
    ids->insert(ids->end(), out.begin(), out.end());
  }

 private:
  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& model_path) {
  // Read here rather than by sentencepiece's Load(path): regular files only, size capped.
  HW_ASSIGN_OR_RETURN(const std::string bytes,
                      ReadSmallFile(model_path, kMaxTokenizerFileBytes, "sentencepiece model"));
  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  if (const auto status =
          sp->LoadFromSerializedProto(absl::string_view(bytes.data(), bytes.size()));
      !status.ok()) {
    return InvalidArgument("{}: sentencepiece cannot load it: {}", model_path, status.ToString());
  }
  const int n = sp->GetPieceSize();
  if (n <= 0) return InvalidArgument("{}: sentencepiece model has no pieces", model_path);

  internal::PipelineConfig config;
  config.id_to_piece.resize(n);
  config.special.assign(n, false);
  for (int i = 0; i < n; ++i) {
    config.id_to_piece[i] = sp->IdToPiece(i);
    const bool special = sp->IsControl(i) || sp->IsUnknown(i);
    // User-defined pieces need no splitting here: sentencepiece matches them itself.
    if (!special) continue;
    AddedToken token;
    token.content = config.id_to_piece[i];
    token.id = i;
    token.special = special;
    config.special[i] = special;
    config.added_tokens.push_back(std::move(token));
  }
  // The processor hides its normalizer spec; whether it adds the dummy "▁" prefix shows in
  // how it encodes a lone letter.
  std::vector<std::string> probe;
  bool dummy_prefix = false;
  if (sp->Encode("a", &probe).ok() && !probe.empty()) {
    dummy_prefix = probe.front().rfind("\xE2\x96\x81", 0) == 0;
  }
  config.decoders.push_back({DecoderStep::Kind::kReplace, "\xE2\x96\x81", " "});
  config.decoders.push_back({DecoderStep::Kind::kByteFallback});
  config.decoders.push_back({DecoderStep::Kind::kFuse});
  if (dummy_prefix) config.decoders.push_back({DecoderStep::Kind::kStrip, "", " ", 1, 0});

  if (sp->bos_id() >= 0) {
    config.bos_id = sp->bos_id();
    config.prefix_ids.push_back(sp->bos_id());
  }
  if (sp->eos_id() >= 0) {
    config.eos_id = sp->eos_id();
    config.stop_ids.push_back(sp->eos_id());
  }
  config.model = std::make_unique<SentencePieceModel>(std::move(sp));
  return internal::MakePipelineTokenizer(std::move(config));
}

}  // namespace headwise::tokenizer
