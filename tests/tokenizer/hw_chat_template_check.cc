// hw_chat_template_check: renders chat templates with our Jinja interpreter for
// tests/python/chat_template_parity.py, which compares the output with Python's jinja2.
//
//   hw_chat_template_check jobs.json
//
// jobs.json: {"jobs": [{"name": ..., "template": "...", "cases": [{"messages": [...],
// "extra": {...}, "flatten": false, "renderer": false}, ...]}, ...]}. With "flatten", messages
// go through FlattenTextContent first. With "renderer", the case goes the way of a server
// request instead: tokenizer::ChatRenderer, messages as {role, content, name} structs, extra's
// bos_token / eos_token / add_generation_prompt as the renderer's own, the rest of extra
// (except tools and documents, which it sets to None) as chat_template_kwargs.
// Output on stdout: {"jobs": [{"parse_error": null or "...",
// "results": [{"ok": true, "text": "..."} or {"ok": false, "error": "..."}, ...]}, ...]}.
// JSON is read with ordered_json so objects keep their key order, as Python dicts do.
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tokenizer/chat_renderer.h"
#include "tokenizer/chat_template.h"

namespace {

using headwise::tokenizer::ChatTemplate;
using ojson = nlohmann::ordered_json;

ojson Failed(const headwise::Status& st) {
  return ojson{{"ok", false}, {"error", st.message()}};
}

ojson RunRendererCase(const std::string& source, const ojson& c) {
  const ojson messages = c.value("messages", ojson::array());
  const ojson extra = c.value("extra", ojson::object());
  std::vector<headwise::tokenizer::ChatMessage> msgs;
  for (const ojson& m : messages) {
    msgs.push_back({m.value("role", ""), m.value("content", ""), m.value("name", "")});
  }
  ojson kwargs = ojson::object();
  for (auto it = extra.begin(); it != extra.end(); ++it) {
    if (it.key() != "bos_token" && it.key() != "eos_token" && it.key() != "add_generation_prompt" &&
        it.key() != "tools" && it.key() != "documents") {
      kwargs[it.key()] = it.value();
    }
  }
  auto renderer = headwise::tokenizer::ChatRenderer::Create(source, extra.value("bos_token", ""),
                                                            extra.value("eos_token", ""));
  if (!renderer.ok()) return Failed(renderer.status());
  auto text = (*renderer)->Render(msgs, extra.value("add_generation_prompt", false), kwargs);
  if (!text.ok()) return Failed(text.status());
  return ojson{{"ok", true}, {"text", *text}};
}

ojson RunCase(const ChatTemplate& tpl, const ojson& c) {
  if (c.value("renderer", false)) return RunRendererCase(tpl.source(), c);
  ojson messages = c.value("messages", ojson::array());
  const ojson extra = c.value("extra", ojson::object());
  if (c.value("flatten", false)) {
    auto flat = headwise::tokenizer::FlattenTextContent(messages);
    if (!flat.ok()) return Failed(flat.status());
    messages = std::move(*flat);
  }
  auto text = tpl.Render(messages, extra);
  if (!text.ok()) return Failed(text.status());
  return ojson{{"ok", true}, {"text", *text}};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: hw_chat_template_check jobs.json\n";
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  if (!in) {
    std::cerr << "cannot open " << argv[1] << "\n";
    return 2;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  ojson jobs;
  try {
    jobs = ojson::parse(buffer.str());
  } catch (const std::exception& e) {
    std::cerr << "bad jobs file: " << e.what() << "\n";
    return 2;
  }
  ojson out_jobs = ojson::array();
  for (const ojson& job : jobs.at("jobs")) {
    ojson out{
        {"name", job.value("name", "")}, {"parse_error", nullptr}, {"results", ojson::array()}};
    auto tpl = ChatTemplate::Parse(job.at("template").get<std::string>());
    if (!tpl.ok()) {
      out["parse_error"] = tpl.status().message();
    } else {
      for (const ojson& c : job.at("cases")) out["results"].push_back(RunCase(*tpl, c));
    }
    out_jobs.push_back(std::move(out));
  }
  // Invalid UTF-8 in a rendering must not abort the dump: replace it (the test then fails).
  std::cout << ojson{{"jobs", out_jobs}}.dump(-1, ' ', false, ojson::error_handler_t::replace)
            << "\n";
  return 0;
}
