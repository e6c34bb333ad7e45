// OutputProcessor's stop decisions on a toy vocabulary: a stop token (stop_token_ids or eos)
// ends the output without its text, as vLLM does; stop strings are cut; max_tokens is "length".
#include "engine/output_processor.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

namespace headwise::engine {
namespace {

// Pieces decode to themselves; id 0 is a special eos.
class WordTokenizer : public tokenizer::Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view, bool) const override { return {}; }
  std::string Decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_size() || (skip_special && IsSpecial(id))) continue;
      out += pieces_[id];
    }
    return out;
  }
  std::string_view IdToPiece(int32_t id) const override { return pieces_.at(id); }
  std::optional<int32_t> PieceToId(std::string_view) const override { return std::nullopt; }
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  std::optional<int32_t> bos_id() const override { return std::nullopt; }
  std::optional<int32_t> eos_id() const override { return 0; }
  const std::vector<int32_t>& stop_ids() const override { return stops_; }
  bool IsSpecial(int32_t id) const override { return id == 0; }

 private:
  std::vector<std::string> pieces_ = {"</s>", " the", " primary", " colors", " of", " red"};
  std::vector<int32_t> stops_ = {0};
};

struct Run {
  std::string streamed;
  std::string text;
  std::optional<FinishReason> finish_reason;  // when finished
  int num_tokens = 0;
};

Run Feed(const SamplingParams& p, const std::vector<int32_t>& ids) {
  WordTokenizer tok;
  OutputProcessor out(p, &tok, {}, /*eos_ids=*/{0});
  Run r;
  for (int32_t id : ids) {
    r.streamed += out.Append(id);
    if (out.finished()) break;
  }
  r.text = out.text();
  if (out.finished()) r.finish_reason = out.finish_reason();
  r.num_tokens = out.num_tokens();
  return r;
}

TEST_CASE("stop_token_ids: the stop token's text is not in the output", "[output]") {
  SamplingParams p;
  p.max_tokens = 10;
  p.stop_token_ids = {4};  // " of"
  const Run r = Feed(p, {1, 2, 3, 4, 5});
  CHECK(r.text == " the primary colors");
  CHECK(r.streamed == r.text);
  CHECK(r.finish_reason == FinishReason::kStop);
  CHECK(r.num_tokens == 4);  // counted, as vLLM counts it in completion_tokens

  // As the very first token: empty output.
  const Run first = Feed(p, {4, 1});
  CHECK(first.text.empty());
  CHECK(first.streamed.empty());
  CHECK(first.finish_reason == FinishReason::kStop);
}

TEST_CASE("eos ends the output without text; ignore_eos decodes past it", "[output]") {
  SamplingParams p;
  p.max_tokens = 10;
  const Run r = Feed(p, {1, 2, 0, 3});
  CHECK(r.text == " the primary");
  CHECK(r.finish_reason == FinishReason::kStop);
  p.ignore_eos = true;
  p.max_tokens = 4;
  const Run ignored = Feed(p, {1, 2, 0, 3});
  CHECK(ignored.text == " the primary colors");  // eos is special: skipped in the text
  CHECK(ignored.finish_reason == FinishReason::kLength);
}

TEST_CASE("stop strings are cut; max_tokens is length", "[output]") {
  SamplingParams p;
  p.max_tokens = 10;
  p.stop = {"ary co"};
  const Run r = Feed(p, {1, 2, 3, 4});
  CHECK(r.text == " the prim");
  CHECK(r.streamed == r.text);
  CHECK(r.finish_reason == FinishReason::kStop);
  SamplingParams q;
  q.max_tokens = 2;
  const Run len = Feed(q, {1, 2, 3});
  CHECK(len.text == " the primary");
  CHECK(len.finish_reason == FinishReason::kLength);
}

}  // namespace
}  // namespace headwise::engine
