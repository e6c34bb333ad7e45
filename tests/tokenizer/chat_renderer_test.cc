// The chat renderer: the probe render at creation, template kwargs, and refusals.
#include "tokenizer/chat_renderer.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>

namespace headwise::tokenizer {
namespace {

using Json = nlohmann::ordered_json;

TEST_CASE("chat renderer: probe at creation, refusals", "[tokenizer]") {
  auto none = ChatRenderer::Create("", "<s>", "</s>");
  REQUIRE(none.ok());
  CHECK_FALSE((*none)->has_template());
  auto r = (*none)->Render({{"user", "hi", ""}}, true, Json::object());
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("--chat-template") != std::string::npos);

  const std::string chatml =
      "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
  auto ok = ChatRenderer::Create(chatml, "<s>", "</s>");
  REQUIRE(ok.ok());
  auto text = (*ok)->Render({{"user", "hi", ""}}, true, Json::object());
  REQUIRE(text.ok());
  CHECK(text->find("<|im_start|>user\nhi<|im_end|>\n") != std::string::npos);
  const std::string tail = "<|im_start|>assistant\n";
  REQUIRE(text->size() >= tail.size());
  CHECK(text->substr(text->size() - tail.size()) == tail);

  // Without a generation prompt the template ends with the last message.
  text = (*ok)->Render({{"user", "hi", ""}}, false, Json::object());
  REQUIRE(text.ok());
  CHECK(*text == "<|im_start|>user\nhi<|im_end|>\n");
  // Template kwargs reach the template; raise_exception refusals are InvalidArgument.
  auto custom = ChatRenderer::Create(
      "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
      "{{ bos_token }}{{ greeting | default('x') }}{{ messages[0].content }}",
      "<s>", "</s>");
  REQUIRE(custom.ok());
  text = (*custom)->Render({{"user", "hi", ""}}, true, Json{{"greeting", "hey "}});
  REQUIRE(text.ok());
  CHECK(*text == "<s>hey hi");
  auto refused = (*custom)->Render({{"system", "s", ""}}, true, Json::object());
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().code() == StatusCode::kInvalidArgument);
  CHECK(refused.status().message().find("no system role") != std::string::npos);

  // A template that does not parse, or cannot render the probe, is refused at creation.
  CHECK_FALSE(ChatRenderer::Create("{{ not closed", "<s>", "</s>").ok());
  CHECK_FALSE(ChatRenderer::Create("{{ raise_exception('never') }}", "<s>", "</s>").ok());
}

}  // namespace
}  // namespace headwise::tokenizer
