// hw_tokenize_check: runs one of our tokenizers over a JSON corpus and prints what it produced,
// for tests/python/tokenizer_parity.py to compare with the reference Python libraries.
//
//   hw_tokenize_check (--hf tokenizer.json [--config tokenizer_config.json] | --spm x.model |
//                      --gguf x.gguf) --corpus corpus.json
//
// corpus.json: {"texts": [...], "id_lists": [[...], ...]}. Output on stdout: one JSON object
// with, per text, the ids with and without special tokens, their decodes (skipping special
// tokens or not) and the incremental detokenizer's concatenated deltas; per id list, its decodes.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "models/gguf_file.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace {

using headwise::StatusOr;
using headwise::tokenizer::GgufVocab;
using headwise::tokenizer::Tokenizer;
using json = nlohmann::json;

StatusOr<GgufVocab> ReadGgufVocab(const std::string& path) {
  HW_ASSIGN_OR_RETURN(auto file, headwise::models::GgufFile::Open(path));
  GgufVocab v;
  HW_ASSIGN_OR_RETURN(v.model, file->GetString("tokenizer.ggml.model"));
  if (file->Has("tokenizer.ggml.pre")) {
    HW_ASSIGN_OR_RETURN(v.pre, file->GetString("tokenizer.ggml.pre"));
  }
  HW_ASSIGN_OR_RETURN(v.tokens, file->GetStringArray("tokenizer.ggml.tokens"));
  if (file->Has("tokenizer.ggml.scores")) {
    HW_ASSIGN_OR_RETURN(v.scores, file->GetFloatArray("tokenizer.ggml.scores"));
  }
  if (file->Has("tokenizer.ggml.token_type")) {
    HW_ASSIGN_OR_RETURN(auto types, file->GetIntArray("tokenizer.ggml.token_type"));
    v.token_type.assign(types.begin(), types.end());
  }
  if (file->Has("tokenizer.ggml.merges")) {
    HW_ASSIGN_OR_RETURN(v.merges, file->GetStringArray("tokenizer.ggml.merges"));
  }
  const auto id = [&](const char* key, std::optional<int32_t>* out) -> headwise::Status {
    if (!file->Has(key)) return headwise::Status::Ok();
    HW_ASSIGN_OR_RETURN(int64_t value, file->GetInt(key));
    // llama.cpp writes -1 (as uint32 0xFFFFFFFF) for "none".
    if (value >= 0 && value < static_cast<int64_t>(v.tokens.size()))
      *out = static_cast<int32_t>(value);
    return headwise::Status::Ok();
  };
  HW_RETURN_IF_ERROR(id("tokenizer.ggml.bos_token_id", &v.bos_id));
  HW_RETURN_IF_ERROR(id("tokenizer.ggml.eos_token_id", &v.eos_id));
  HW_RETURN_IF_ERROR(id("tokenizer.ggml.eot_token_id", &v.eot_id));
  HW_RETURN_IF_ERROR(id("tokenizer.ggml.eom_token_id", &v.eom_id));
  HW_RETURN_IF_ERROR(id("tokenizer.ggml.unknown_token_id", &v.unk_id));
  HW_RETURN_IF_ERROR(id("tokenizer.ggml.padding_token_id", &v.pad_id));
  const auto flag = [&](const char* key, std::optional<bool>* out) -> headwise::Status {
    if (!file->Has(key)) return headwise::Status::Ok();
    HW_ASSIGN_OR_RETURN(bool value, file->GetBool(key));
    *out = value;
    return headwise::Status::Ok();
  };
  HW_RETURN_IF_ERROR(flag("tokenizer.ggml.add_bos_token", &v.add_bos_token));
  HW_RETURN_IF_ERROR(flag("tokenizer.ggml.add_eos_token", &v.add_eos_token));
  HW_RETURN_IF_ERROR(flag("tokenizer.ggml.add_space_prefix", &v.add_space_prefix));
  return v;
}

std::string Incremental(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool skip) {
  headwise::tokenizer::IncrementalDetokenizer detok(tokenizer, skip);
  std::string text;
  for (int32_t id : ids) text += detok.Add(id);
  return text + detok.Finish();
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "hw_tokenize_check: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string hf, config, spm, gguf, corpus_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    if (flag == "--hf")
      hf = value;
    else if (flag == "--config")
      config = value;
    else if (flag == "--spm")
      spm = value;
    else if (flag == "--gguf")
      gguf = value;
    else if (flag == "--corpus")
      corpus_path = value;
    else
      return Fail("unknown flag " + flag);
  }
  StatusOr<std::unique_ptr<Tokenizer>> loaded =
      headwise::Status(headwise::StatusCode::kInvalidArgument, "give --hf, --spm or --gguf");
  if (!hf.empty()) {
    loaded = headwise::tokenizer::LoadHfTokenizer(hf, config);
  } else if (!spm.empty()) {
    loaded = headwise::tokenizer::LoadSentencePieceTokenizer(spm);
  } else if (!gguf.empty()) {
    auto vocab = ReadGgufVocab(gguf);
    if (!vocab.ok()) return Fail(vocab.status().ToString());
    loaded = headwise::tokenizer::LoadGgufTokenizer(*vocab);
  }
  if (!loaded.ok()) return Fail(loaded.status().ToString());
  const Tokenizer& tokenizer = **loaded;

  std::ifstream in(corpus_path, std::ios::binary);
  if (!in) return Fail("cannot open corpus " + corpus_path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const json corpus = json::parse(buffer.str(), nullptr, false);
  if (corpus.is_discarded()) return Fail("corpus is not JSON");

  json out;
  out["vocab_size"] = tokenizer.vocab_size();
  out["bos_id"] = tokenizer.bos_id() ? json(*tokenizer.bos_id()) : json();
  out["eos_id"] = tokenizer.eos_id() ? json(*tokenizer.eos_id()) : json();
  out["stop_ids"] = tokenizer.stop_ids();
  json texts = json::array();
  for (const json& t : corpus.value("texts", json::array())) {
    const std::string text = t.get<std::string>();
    const std::vector<int32_t> ids = tokenizer.Encode(text, true);
    const std::vector<int32_t> plain = tokenizer.Encode(text, false);
    std::vector<std::string> pieces;
    for (int32_t id : ids) pieces.emplace_back(tokenizer.IdToPiece(id));
    bool round_trip = true;
    for (int32_t id : ids)
      round_trip = round_trip && tokenizer.PieceToId(tokenizer.IdToPiece(id)) == id;
    texts.push_back({{"ids", ids},
                     {"ids_plain", plain},
                     {"decode", tokenizer.Decode(ids, false)},
                     {"decode_skip", tokenizer.Decode(ids, true)},
                     {"incremental", Incremental(tokenizer, ids, false)},
                     {"incremental_skip", Incremental(tokenizer, ids, true)},
                     {"piece_round_trip", round_trip}});
  }
  out["texts"] = texts;
  json lists = json::array();
  for (const json& l : corpus.value("id_lists", json::array())) {
    const std::vector<int32_t> ids = l.get<std::vector<int32_t>>();
    lists.push_back({{"decode", tokenizer.Decode(ids, false)},
                     {"decode_skip", tokenizer.Decode(ids, true)},
                     {"incremental", Incremental(tokenizer, ids, false)},
                     {"incremental_skip", Incremental(tokenizer, ids, true)}});
  }
  out["id_lists"] = lists;
  std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  return 0;
}
