// The OpenAI request parsers on arbitrary body text: ParseJsonObject, then each of the four
// request parsers, ValidateParams and ResolveMaxTokens on what they accept, and the error
// body on what they refuse. No engine: everything here is a pure function of the body.
#include <cstddef>
#include <cstdint>

#include "server/openai_api.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using namespace headwise::server;

// SmolLM2's vocabulary and context: realistic bounds for the range checks.
constexpr int kVocabSize = 49152;
constexpr int kMaxModelLen = 8192;

void Refused(const std::optional<ApiError>& error) {
  if (error) (void)DumpJson(ErrorBody(*error));
}

void Generation(bool chat, const Json& body) {
  GenerationRequest request;
  auto error = chat ? ParseChatRequest(body, request) : ParseCompletionRequest(body, request);
  if (error) return Refused(error);
  Refused(ValidateParams(request.params, kVocabSize));
  for (const PromptInput& prompt : request.prompts) {
    if (prompt.is_ids) Refused(ValidatePromptIds(prompt.ids, kVocabSize, "prompt"));
  }
  int max_tokens = 0;
  Refused(ResolveMaxTokens(request, /*prompt_tokens=*/17, kMaxModelLen, max_tokens));
  (void)DumpJson(request.chat_template_kwargs);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Json body;
  if (auto error = ParseJsonObject(headwise::fuzz::AsText(data, size), body)) {
    Refused(error);
    return 0;
  }
  Generation(/*chat=*/false, body);
  Generation(/*chat=*/true, body);
  TokenizeRequest tokenize;
  Refused(ParseTokenizeRequest(body, tokenize));
  DetokenizeRequest detokenize;
  if (auto error = ParseDetokenizeRequest(body, detokenize)) {
    Refused(error);
  } else {
    Refused(ValidatePromptIds(detokenize.tokens, kVocabSize, "tokens"));
  }
  return 0;
}
