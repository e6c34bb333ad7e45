#include "eval/haystack.h"

#include <array>
#include <cctype>

#include "core/file_io.h"

namespace headwise::eval {
namespace {

bool IsSpace(char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f';
}

// Titles that end in a period without ending the sentence.
bool EndsWithTitle(const std::string& s) {
  static constexpr std::array<std::string_view, 8> kTitles = {"Mr.",     "Mrs.", "Dr.",   "St.",
                                                              "Messrs.", "Col.", "Capt.", "Esq."};
  for (std::string_view t : kTitles) {
    if (s.size() < t.size() || s.compare(s.size() - t.size(), t.size(), t) != 0) continue;
    // A whole word: at the start, or after a space or an opening bracket/quote.
    if (s.size() == t.size()) return true;
    const char before = s[s.size() - t.size() - 1];
    if (before == ' ' || before == '(' || before == '"' || before == '\'') return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> SplitSentences(std::string_view text) {
  std::vector<std::string> out;
  std::string cur;
  const auto flush = [&] {
    while (!cur.empty() && cur.back() == ' ') cur.pop_back();
    if (!cur.empty()) out.push_back(std::move(cur));
    cur.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (IsSpace(c)) {
      // A blank line (two newlines with only spaces between) is a paragraph break.
      if (c == '\n') {
        size_t j = i + 1;
        while (j < text.size() && (text[j] == ' ' || text[j] == '\t' || text[j] == '\r')) ++j;
        if (j < text.size() && text[j] == '\n') {
          flush();
          i = j;
          continue;
        }
      }
      if (!cur.empty() && cur.back() != ' ') cur += ' ';
      continue;
    }
    cur += c;
    if (c != '.' && c != '!' && c != '?') continue;
    // Closing quotes and brackets belong to the sentence they close.
    while (i + 1 < text.size() && (text[i + 1] == '"' || text[i + 1] == '\'' ||
                                   text[i + 1] == ')' || text[i + 1] == ']')) {
      cur += text[++i];
    }
    if (i + 1 < text.size() && !IsSpace(text[i + 1])) continue;
    if (c == '.' && EndsWithTitle(cur)) continue;
    flush();
  }
  flush();
  return out;
}

StatusOr<Haystack> Haystack::FromText(std::string_view text, std::string source) {
  Haystack h;
  h.source_ = std::move(source);
  h.text_ = std::string(text);
  h.sentences_ = SplitSentences(text);
  if (h.sentences_.empty()) return InvalidArgument("{}: the haystack has no sentences", h.source_);
  return h;
}

StatusOr<Haystack> Haystack::Load(const std::string& path) {
  HW_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, size_t{256} << 20, "haystack text"));
  return FromText(text, path);
}

}  // namespace headwise::eval
