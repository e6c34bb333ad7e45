#include "tokenizer/pipeline.h"

#include <algorithm>
#include <array>
#include <limits>
#include <queue>

namespace headwise::tokenizer::internal {
namespace {

// Splits text on added tokens the way Hugging Face's AddedVocabulary does: leftmost-longest
// matches, lstrip/rstrip widening the match over whitespace, single_word requiring word
// boundaries. A piece with id < 0 is text still to be tokenized.
struct Piece {
  std::string_view text;
  int32_t id = -1;
};

class AddedTokenMatcher {
 public:
  void Add(std::string pattern, const AddedToken& token) {
    if (pattern.empty()) return;
    entries_.push_back({std::move(pattern), &token});
  }
  void Finish() {
    std::stable_sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) {
      return a.pattern.size() > b.pattern.size();
    });
    for (size_t i = 0; i < entries_.size(); ++i) {
      by_first_byte_[static_cast<uint8_t>(entries_[i].pattern[0])].push_back(i);
    }
  }
  bool empty() const { return entries_.empty(); }

  void Split(std::string_view s, std::vector<Piece>* out) const {
    if (entries_.empty()) {
      if (!s.empty()) out->push_back({s, -1});
      return;
    }
    size_t start_offset = 0;  // end of the last emitted piece
    size_t pos = 0;
    while (pos < s.size()) {
      const Entry* found = nullptr;
      for (size_t index : by_first_byte_[static_cast<uint8_t>(s[pos])]) {
        const Entry& e = entries_[index];
        if (s.compare(pos, e.pattern.size(), e.pattern) == 0) {
          found = &e;
          break;
        }
      }
      if (!found) {
        ++pos;
        continue;
      }
      size_t start = pos;
      size_t stop = pos + found->pattern.size();
      pos = stop;
      const AddedToken& token = *found->token;
      if (token.single_word) {
        const bool start_ok = start == 0 || !EndsWithWordChar(s.substr(0, start));
        const bool stop_ok = stop == s.size() || !StartsWithWordChar(s.substr(stop));
        if (!start_ok || !stop_ok) continue;
      }
      if (token.lstrip) {
        const auto cps = DecodeUtf8(s.substr(start_offset, start - start_offset));
        size_t k = cps.size();
        while (k > 0 && IsWhitespace(cps[k - 1].cp)) --k;
        start = start_offset + (k < cps.size() ? cps[k].offset : start - start_offset);
      }
      if (token.rstrip) {
        const auto cps = DecodeUtf8(s.substr(stop));
        size_t extra = 0;
        for (const auto& c : cps) {
          if (!IsWhitespace(c.cp)) break;
          extra = c.offset + c.size;
        }
        stop += extra;
        pos = stop;
      }
      if (start_offset < start) out->push_back({s.substr(start_offset, start - start_offset), -1});
      out->push_back({s.substr(start, stop - start), token.id});
      start_offset = stop;
    }
    if (start_offset < s.size()) out->push_back({s.substr(start_offset), -1});
  }

 private:
  struct Entry {
    std::string pattern;
    const AddedToken* token;
  };
  static bool IsWordChar(char32_t c) { return IsLetter(c) || IsNumber(c); }
  static bool EndsWithWordChar(std::string_view s) {
    const auto cps = DecodeUtf8(s);
    return !cps.empty() && IsWordChar(cps.back().cp);
  }
  static bool StartsWithWordChar(std::string_view s) {
    const auto cps = DecodeUtf8(s.substr(0, std::min<size_t>(4, s.size())));
    return !cps.empty() && IsWordChar(cps.front().cp);
  }

  std::vector<Entry> entries_;
  std::array<std::vector<size_t>, 256> by_first_byte_;
};

void ReplaceAll(std::string* s, std::string_view pattern, std::string_view content) {
  if (pattern.empty()) return;
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = s->find(pattern, pos);
    if (hit == std::string::npos) break;
    out.append(*s, pos, hit - pos);
    out.append(content);
    pos = hit + pattern.size();
  }
  out.append(*s, pos);
  *s = std::move(out);
}

const std::unordered_map<std::string, uint8_t>& UnicodeToByte() {
  static const auto* table = [] {
    auto* t = new std::unordered_map<std::string, uint8_t>();
    const auto& forward = ByteToUnicode();
    for (int b = 0; b < 256; ++b) (*t)[forward[b]] = static_cast<uint8_t>(b);
    return t;
  }();
  return *table;
}

std::optional<uint8_t> ParseByteToken(std::string_view token) {
  // Exactly "<0xXX>", as Hugging Face's ByteFallback decoder requires.
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return std::nullopt;
  int value = 0;
  for (char c : token.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9')
      value |= c - '0';
    else if (c >= 'a' && c <= 'f')
      value |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      value |= c - 'A' + 10;
    else
      return std::nullopt;
  }
  return static_cast<uint8_t>(value);
}

std::vector<std::string> ApplyDecoder(const DecoderStep& step, std::vector<std::string> tokens) {
  switch (step.kind) {
    case DecoderStep::Kind::kByteLevel: {
      const auto& table = UnicodeToByte();
      std::string bytes;
      for (const std::string& t : tokens) {
        std::string mapped;
        bool ok = true;
        for (const CodepointSpan& c : DecodeUtf8(t)) {
          auto it = table.find(t.substr(c.offset, c.size));
          if (it == table.end()) {
            ok = false;
            break;
          }
          mapped.push_back(static_cast<char>(it->second));
        }
        bytes += ok ? mapped : t;
      }
      return {LossyUtf8(bytes)};
    }
    case DecoderStep::Kind::kReplace:
      for (std::string& t : tokens) ReplaceAll(&t, step.pattern, step.content);
      return tokens;
    case DecoderStep::Kind::kByteFallback: {
      std::vector<std::string> out;
      std::string pending;
      const auto flush = [&] {
        if (pending.empty()) return;
        if (LossyUtf8(pending) == pending) {
          out.push_back(pending);
        } else {
          // Hugging Face replaces every byte of an ill-formed run, not each maximal subpart.
          std::string replacement;
          for (size_t i = 0; i < pending.size(); ++i) replacement += "\xEF\xBF\xBD";
          out.push_back(replacement);
        }
        pending.clear();
      };
      for (std::string& t : tokens) {
        if (auto b = ParseByteToken(t)) {
          pending.push_back(static_cast<char>(*b));
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      return out;
    }
    case DecoderStep::Kind::kFuse: {
      std::string all;
      for (const std::string& t : tokens) all += t;
      return {all};
    }
    case DecoderStep::Kind::kStrip: {
      for (std::string& t : tokens) {
        const auto cps = DecodeUtf8(t);
        const auto content = DecodeUtf8(step.content);
        if (content.size() != 1) continue;
        const char32_t c = content[0].cp;
        size_t begin = 0;
        while (begin < cps.size() && begin < static_cast<size_t>(step.start) &&
               cps[begin].cp == c) {
          ++begin;
        }
        size_t end = cps.size();
        while (end > begin && cps.size() - end < static_cast<size_t>(step.stop) &&
               cps[end - 1].cp == c) {
          --end;
        }
        const size_t b = begin < cps.size() ? cps[begin].offset : t.size();
        const size_t e = end < cps.size() ? cps[end].offset : t.size();
        t = t.substr(b, e - b);
      }
      return tokens;
    }
  }
  return tokens;
}

class PipelineTokenizer final : public Tokenizer {
 public:
  explicit PipelineTokenizer(PipelineConfig config) : config_(std::move(config)) {
    piece_to_id_.reserve(config_.id_to_piece.size());
    for (size_t i = 0; i < config_.id_to_piece.size(); ++i) {
      piece_to_id_[config_.id_to_piece[i]] = static_cast<int32_t>(i);
    }
    config_.special.resize(config_.id_to_piece.size(), false);
    for (const AddedToken& token : config_.added_tokens) {
      if (!token.normalized || config_.normalizers.empty()) {
        raw_matcher_.Add(token.content, token);
      } else {
        normalized_matcher_.Add(NormalizeOrKeep(token.content), token);
      }
    }
    raw_matcher_.Finish();
    normalized_matcher_.Finish();
    max_token_bytes_ = ComputeMaxTokenBytes();
  }

  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<int32_t> ids;
    if (add_special_tokens) ids = config_.prefix_ids;
    std::vector<Piece> raw_pieces;
    raw_matcher_.Split(text, &raw_pieces);
    for (const Piece& raw : raw_pieces) {
      if (raw.id >= 0) {
        ids.push_back(raw.id);
        continue;
      }
      const std::string normalized = NormalizeOrKeep(raw.text);
      std::vector<Piece> pieces;
      normalized_matcher_.Split(normalized, &pieces);
      for (const Piece& piece : pieces) {
        if (piece.id >= 0) {
          ids.push_back(piece.id);
        } else {
          PreTokenizeAndTokenize(piece.text, &ids);
        }
      }
    }
    if (add_special_tokens)
      ids.insert(ids.end(), config_.suffix_ids.begin(), config_.suffix_ids.end());
    return ids;
  }

  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_size()) continue;
      if (skip_special_tokens && config_.special[id]) continue;
      tokens.push_back(config_.id_to_piece[id]);
    }
    if (config_.decoders.empty()) {
      std::string joined;
      for (size_t i = 0; i < tokens.size(); ++i) {
        if (i) joined += ' ';
        joined += tokens[i];
      }
      return LossyUtf8(joined);
    }
    for (const DecoderStep& step : config_.decoders) tokens = ApplyDecoder(step, std::move(tokens));
    std::string out;
    for (const std::string& t : tokens) out += t;
    return LossyUtf8(out);
  }

  std::string_view IdToPiece(int32_t id) const override {
    if (id < 0 || id >= vocab_size()) return {};
    return config_.id_to_piece[id];
  }
  std::optional<int32_t> PieceToId(std::string_view piece) const override {
    auto it = piece_to_id_.find(std::string(piece));
    if (it == piece_to_id_.end()) return std::nullopt;
    return it->second;
  }
  int32_t vocab_size() const override { return static_cast<int32_t>(config_.id_to_piece.size()); }
  std::optional<int32_t> bos_id() const override { return config_.bos_id; }
  std::optional<int32_t> eos_id() const override { return config_.eos_id; }
  const std::vector<int32_t>& stop_ids() const override { return config_.stop_ids; }
  bool IsSpecial(int32_t id) const override {
    return id >= 0 && id < vocab_size() && config_.special[id];
  }
  size_t max_token_bytes() const override { return max_token_bytes_; }
  size_t MinTokens(std::string_view text) const override {
    if (max_token_bytes_ == 0) return 0;
    size_t counted = text.size();
    if (dropped_bytes_.any()) {
      for (char c : text) counted -= dropped_bytes_[static_cast<uint8_t>(c)];
    }
    return counted / max_token_bytes_ + (counted % max_token_bytes_ != 0);
  }

 private:
  // Why the bound holds. Encode splits the text into (a) added tokens matched in the raw text,
  // each one id covering exactly its content, and (b) segments that are normalized, then
  // pre-tokenized, then given to the model, matched for normalized added tokens on the way.
  // In (b), pre-tokenizers only split pieces or grow them (ByteLevel maps each byte to a 1- or
  // 2-byte character, add_prefix_space inserts one), so a model id covering m bytes of its
  // input covers at most m bytes of the normalized segment; the model bounds m (ids that cover
  // nothing, like a post-processor's BOS, only add to the count). A normalized segment is at
  // least 1/shrink of the segment's bytes, so each id covers at most shrink * m input bytes.
  // Whitespace-stripping added tokens break (a): "<mask>" with rstrip swallows any run of
  // spaces after it, so then there is no bound.
  size_t ComputeMaxTokenBytes() {  // also sets dropped_bytes_
    for (const AddedToken& t : config_.added_tokens) {
      if (t.lstrip || t.rstrip) return 0;
    }
    bool byte_level = false;
    for (const PreTokenizerStep& step : config_.pre_tokenizers) {
      byte_level = byte_level || step.kind == PreTokenizerStep::Kind::kByteLevel;
    }
    size_t longest = config_.model->MaxInputBytesPerToken(byte_level, dropped_bytes_);
    if (longest == 0) return 0;
    // Dropped bytes are bytes of the pre-tokenized text; with normalizers in between, which
    // bytes of the input they were is not known.
    if (dropped_bytes_.any() && !config_.normalizers.empty()) return 0;
    for (const std::string& piece : config_.id_to_piece) longest = std::max(longest, piece.size());
    for (const AddedToken& t : config_.added_tokens) {
      longest = std::max(longest, t.content.size());
      if (t.normalized) longest = std::max(longest, NormalizeOrKeep(t.content).size());
    }
    size_t shrink = 1;
    for (const NormalizerStep& step : config_.normalizers) {
      switch (step.kind) {
        case NormalizerStep::Kind::kPrepend:  // adds bytes
          break;
        case NormalizerStep::Kind::kReplace:
          // Each occurrence of the pattern becomes the content: sentencepiece's " " -> "▁"
          // grows the text; a shorter content shrinks it by at most |pattern| / |content|,
          // and an empty one deletes text without bound.
          if (step.content.size() >= step.pattern.size()) break;
          if (step.content.empty()) return 0;
          shrink *= (step.pattern.size() + step.content.size() - 1) / step.content.size();
          break;
        case NormalizerStep::Kind::kUnicode:
          shrink *= kUnicodeNormalizationShrink;
          break;
      }
    }
    if (longest > std::numeric_limits<size_t>::max() / shrink) return 0;
    return longest * shrink;
  }

  // How much NFC/NFD/NFKC/NFKD can shrink UTF-8 text. They never delete characters; they
  // compose a base and its combining marks into one character (the worst we know: Hangul
  // L+V+T jamo, 9 bytes -> 3; Greek alpha + 3 marks, 8 bytes -> 3) or map one character to a
  // shorter one (NFKC: U+1D400 MATHEMATICAL BOLD CAPITAL A, 4 bytes -> "A"; both together:
  // U+1D42E + U+0308 + U+0304, 8 bytes -> U+01D6, 2 bytes). That is 4 at most; we take twice
  // that rather than rely on a survey of the tables: the bound only needs to be safe.
  static constexpr size_t kUnicodeNormalizationShrink = 8;

  std::string NormalizeOrKeep(std::string_view text) const {
    std::string s(text);
    for (const NormalizerStep& step : config_.normalizers) {
      switch (step.kind) {
        case NormalizerStep::Kind::kUnicode: {
          auto normalized = Normalize(step.form, s);
          if (normalized.ok()) s = std::move(normalized).value();
          break;
        }
        case NormalizerStep::Kind::kPrepend:
          if (!s.empty()) s = step.content + s;
          break;
        case NormalizerStep::Kind::kReplace:
          ReplaceAll(&s, step.pattern, step.content);
          break;
      }
    }
    return s;
  }

  void PreTokenizeAndTokenize(std::string_view text, std::vector<int32_t>* ids) const {
    if (text.empty()) return;
    std::vector<std::string> pieces{std::string(text)};
    for (const PreTokenizerStep& step : config_.pre_tokenizers) {
      std::vector<std::string> next;
      for (std::string& piece : pieces) {
        if (step.kind == PreTokenizerStep::Kind::kSplit) {
          for (std::string_view p : SplitIsolated(piece, step.pattern)) next.emplace_back(p);
          continue;
        }
        if (step.add_prefix_space && piece[0] != ' ') piece.insert(piece.begin(), ' ');
        std::vector<std::string_view> parts;
        if (step.use_regex) {
          parts = SplitIsolated(piece, SplitPattern::kGpt2);
        } else {
          parts.push_back(piece);
        }
        const auto& table = ByteToUnicode();
        for (std::string_view p : parts) {
          std::string mapped;
          for (char c : p) mapped += table[static_cast<uint8_t>(c)];
          next.push_back(std::move(mapped));
        }
      }
      pieces = std::move(next);
    }
    for (const std::string& piece : pieces) {
      if (!piece.empty()) config_.model->Tokenize(piece, ids);
    }
  }

  PipelineConfig config_;
  std::unordered_map<std::string, int32_t> piece_to_id_;
  AddedTokenMatcher raw_matcher_;
  AddedTokenMatcher normalized_matcher_;
  size_t max_token_bytes_ = 0;
  std::bitset<256> dropped_bytes_;  // bytes that yield no token (MaxInputBytesPerToken)
};

class BpeModel final : public Model {
 public:
  BpeModel(const std::vector<std::string>& id_to_piece, BpeOptions options) : options_(options) {
    vocab_.reserve(id_to_piece.size());
    for (size_t i = 0; i < id_to_piece.size(); ++i)
      vocab_[id_to_piece[i]] = static_cast<int32_t>(i);
    byte_ids_.fill(-1);
    if (options_.byte_fallback) {
      for (int b = 0; b < 256; ++b) {
        auto it = vocab_.find(fmt::format("<0x{:02X}>", b));
        if (it != vocab_.end()) byte_ids_[b] = it->second;
      }
    }
  }

  Status AddMerges(const std::vector<std::pair<std::string, std::string>>& merges) {
    merges_.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const auto& [a, b] = merges[rank];
      auto ia = vocab_.find(a), ib = vocab_.find(b), ic = vocab_.find(a + b);
      if (ia == vocab_.end() || ib == vocab_.end() || ic == vocab_.end()) {
        return InvalidArgument("merge {} ('{} {}') names a piece that is not in the vocabulary",
                               rank, a, b);
      }
      merges_.emplace(Key(ia->second, ib->second), Merge{static_cast<int32_t>(rank), ic->second});
    }
    return Status::Ok();
  }

  // Merges and ignore_merges lookups yield vocabulary pieces, which cover their own bytes; a
  // byte-fallback id covers one byte. Every input character yields at least one id when it is
  // always found: byte-level input with all 256 byte characters in the vocabulary, or byte
  // fallback with all 256 byte pieces. Otherwise an unknown character (at most 4 bytes, one
  // ill-formed byte at a time) becomes <unk>, unless there is none (dropped) or fuse_unk joins
  // a run of them into one.
  size_t MaxInputBytesPerToken(bool byte_level_input, std::bitset<256>& dropped) const override {
    size_t longest = 1;
    for (const auto& [piece, id] : vocab_) longest = std::max(longest, piece.size());
    bool every_byte = byte_level_input;
    if (byte_level_input) {
      for (const std::string& c : ByteToUnicode()) every_byte = every_byte && vocab_.count(c) > 0;
    }
    const bool every_fallback =
        options_.byte_fallback &&
        std::all_of(byte_ids_.begin(), byte_ids_.end(), [](int32_t id) { return id >= 0; });
    if (every_byte || every_fallback) return longest;
    if (options_.unk_id && !options_.fuse_unk) return std::max<size_t>(longest, 4);
    // Byte-level input without <unk>: a byte whose character is missing is dropped (SmolLM2's
    // vocabulary lacks 21 of them, control bytes and bytes UTF-8 never uses); every other
    // byte still lands in some id.
    if (byte_level_input && !options_.byte_fallback && !options_.unk_id) {
      const auto& chars = ByteToUnicode();
      for (size_t b = 0; b < chars.size(); ++b) dropped[b] = vocab_.count(chars[b]) == 0;
      return longest;
    }
    return 0;
  }

  void Tokenize(std::string_view piece, std::vector<int32_t>* ids) const override {
    if (options_.ignore_merges) {
      auto it = vocab_.find(std::string(piece));
      if (it != vocab_.end()) {
        ids->push_back(it->second);
        return;
      }
    }
    struct Symbol {
      int32_t id;
      int prev;
      int next;
      bool alive;
    };
    std::vector<Symbol> symbols;
    int32_t pending_unk = -1;  // unknown characters not yet emitted (fused when fuse_unk)
    const auto add = [&](int32_t id) {
      const int n = static_cast<int>(symbols.size());
      symbols.push_back({id, n - 1, n + 1, true});
    };
    for (const CodepointSpan& c : DecodeUtf8(piece)) {
      const std::string ch(piece.substr(c.offset, c.size));
      auto it = vocab_.find(ch);
      if (it != vocab_.end()) {
        if (pending_unk >= 0) add(pending_unk);
        pending_unk = -1;
        add(it->second);
        continue;
      }
      if (options_.byte_fallback) {
        bool all = true;
        for (char b : ch) all = all && byte_ids_[static_cast<uint8_t>(b)] >= 0;
        if (all) {
          for (char b : ch) add(byte_ids_[static_cast<uint8_t>(b)]);
          continue;
        }
      }
      if (options_.unk_id) {
        if (pending_unk >= 0 && !options_.fuse_unk) add(pending_unk);
        pending_unk = *options_.unk_id;
      }
    }
    if (pending_unk >= 0) add(pending_unk);
    if (symbols.empty()) return;
    symbols.back().next = -1;

    // Lowest rank first, then leftmost: Hugging Face's and llama.cpp's order.
    struct Candidate {
      int32_t rank;
      int pos;
      int32_t new_id;
      bool operator>(const Candidate& o) const {
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    const auto consider = [&](int left) {
      if (left < 0) return;
      const int right = symbols[left].next;
      if (right < 0) return;
      auto it = merges_.find(Key(symbols[left].id, symbols[right].id));
      if (it != merges_.end()) queue.push({it->second.rank, left, it->second.new_id});
    };
    for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) consider(i);
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.pos];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[left.next];
      auto it = merges_.find(Key(left.id, right.id));
      if (it == merges_.end() || it->second.new_id != top.new_id) continue;
      left.id = top.new_id;
      right.alive = false;
      left.next = right.next;
      if (left.next >= 0) symbols[left.next].prev = top.pos;
      consider(left.prev);
      consider(top.pos);
    }
    for (int i = 0; i >= 0; i = symbols[i].next) ids->push_back(symbols[i].id);
  }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t Key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  BpeOptions options_;
  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_ids_;
};

class SpmScoreModel final : public Model {
 public:
  SpmScoreModel(const std::vector<std::string>& id_to_piece, const std::vector<float>& scores,
                const std::vector<int32_t>& byte_ids, std::optional<int32_t> unk_id)
      : scores_(scores), byte_ids_(byte_ids), unk_id_(unk_id) {
    vocab_.reserve(id_to_piece.size());
    for (size_t i = 0; i < id_to_piece.size(); ++i)
      vocab_[id_to_piece[i]] = static_cast<int32_t>(i);
    scores_.resize(id_to_piece.size(), 0.0f);
  }

  // Final symbols are vocabulary pieces (merges only make pieces) or single characters missing
  // from the vocabulary, which give one id per byte: a byte piece, else <unk>, else nothing.
  size_t MaxInputBytesPerToken(bool /*byte_level_input*/,
                               std::bitset<256>& /*dropped*/) const override {
    const bool every_byte =
        byte_ids_.size() == 256 &&
        std::all_of(byte_ids_.begin(), byte_ids_.end(), [](int32_t id) { return id >= 0; });
    if (!every_byte && !unk_id_) return 0;
    size_t longest = 1;
    for (const auto& [piece, id] : vocab_) longest = std::max(longest, piece.size());
    return longest;
  }

  void Tokenize(std::string_view text, std::vector<int32_t>* ids) const override {
    struct Symbol {
      int prev;
      int next;
      size_t offset;
      size_t size;
    };
    std::vector<Symbol> symbols;
    for (const CodepointSpan& c : DecodeUtf8(text)) {
      const int n = static_cast<int>(symbols.size());
      symbols.push_back({n - 1, n + 1, c.offset, c.size});
    }
    if (symbols.empty()) return;
    symbols.back().next = -1;

    struct Bigram {
      int left;
      int right;
      float score;
      size_t size;
    };
    // Highest score first, then leftmost (llama.cpp's llm_bigram_spm::comparator).
    const auto worse = [](const Bigram& l, const Bigram& r) {
      return l.score < r.score || (l.score == r.score && l.left > r.left);
    };
    std::priority_queue<Bigram, std::vector<Bigram>, decltype(worse)> queue(worse);
    const auto try_add = [&](int left, int right) {
      if (left < 0 || right < 0) return;
      std::string merged(
          text.substr(symbols[left].offset, symbols[left].size + symbols[right].size));
      auto it = vocab_.find(merged);
      if (it == vocab_.end()) return;
      queue.push({left, right, scores_[it->second], merged.size()});
    };
    for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add(i - 1, i);
    while (!queue.empty()) {
      const Bigram bigram = queue.top();
      queue.pop();
      Symbol& left = symbols[bigram.left];
      Symbol& right = symbols[bigram.right];
      if (left.size == 0 || right.size == 0 || left.size + right.size != bigram.size) continue;
      left.size += right.size;
      right.size = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = bigram.left;
      try_add(left.prev, bigram.left);
      try_add(bigram.left, left.next);
    }
    // Every merge result is a vocabulary piece, so a final symbol is either a piece or a
    // single character missing from the vocabulary, which falls back to byte pieces.
    for (int i = 0; i >= 0; i = symbols[i].next) {
      const std::string piece(text.substr(symbols[i].offset, symbols[i].size));
      if (auto it = vocab_.find(piece); it != vocab_.end()) {
        ids->push_back(it->second);
        continue;
      }
      for (char b : piece) {
        const int32_t id = byte_ids_.size() == 256 ? byte_ids_[static_cast<uint8_t>(b)] : -1;
        if (id >= 0) {
          ids->push_back(id);
        } else if (unk_id_) {
          ids->push_back(*unk_id_);
        }
      }
    }
  }

 private:
  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<float> scores_;
  std::vector<int32_t> byte_ids_;
  std::optional<int32_t> unk_id_;
};

}  // namespace

const std::vector<std::string>& ByteToUnicode() {
  static const auto* table = [] {
    auto* t = new std::vector<std::string>(256);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      std::string s;
      AppendUtf8(static_cast<char32_t>(printable ? b : next++), &s);
      (*t)[b] = std::move(s);
    }
    return t;
  }();
  return *table;
}

std::unique_ptr<Tokenizer> MakePipelineTokenizer(PipelineConfig config) {
  return std::make_unique<PipelineTokenizer>(std::move(config));
}

StatusOr<std::unique_ptr<Model>> MakeBpeModel(
    const std::vector<std::string>& id_to_piece,
    const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options) {
  auto model = std::make_unique<BpeModel>(id_to_piece, options);
  HW_RETURN_IF_ERROR(model->AddMerges(merges));
  return std::unique_ptr<Model>(std::move(model));
}

std::unique_ptr<Model> MakeSpmScoreModel(const std::vector<std::string>& id_to_piece,
                                         const std::vector<float>& scores,
                                         const std::vector<int32_t>& byte_ids,
                                         std::optional<int32_t> unk_id) {
  return std::make_unique<SpmScoreModel>(id_to_piece, scores, byte_ids, unk_id);
}

bool IsEndOfTurnText(std::string_view piece) {
  static constexpr std::string_view kTexts[] = {"<|eot_id|>",      "<|eom_id|>",    "<|im_end|>",
                                                "<|end|>",         "<end_of_turn>", "<|endoftext|>",
                                                "<|end_of_text|>", "<EOT>",         "</s>"};
  return std::find(std::begin(kTexts), std::end(kTexts), piece) != std::end(kTexts);
}

}  // namespace headwise::tokenizer::internal
