// The filler text of the long-context tasks (eval/tasks.h): a long natural text split into
// sentences, read in runs that wrap around its end. RULER fills its prompts with essays; ours is
// whatever text the file holds (scripts/make-haystack.sh builds the default one: Jane Austen's
// novels, public domain).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace headwise::eval {

// The sentences of `text`: a sentence ends after '.', '!' or '?' (and any closing quotes or
// brackets) where whitespace follows, but not after a title such as "Mr." or "Mrs."; a blank
// line (a paragraph break) ends one too. Whitespace inside a sentence is collapsed to single
// spaces; empty sentences are dropped.
std::vector<std::string> SplitSentences(std::string_view text);

class Haystack {
 public:
  // At least one sentence.
  static StatusOr<Haystack> FromText(std::string_view text, std::string source = "text");
  // The text of a file (at most 256 MiB).
  static StatusOr<Haystack> Load(const std::string& path);

  size_t num_sentences() const { return sentences_.size(); }
  // Sentence i modulo the count: runs wrap around the end.
  const std::string& sentence(size_t i) const { return sentences_[i % sentences_.size()]; }
  // Where the text came from (its path), for reports.
  const std::string& source() const { return source_; }
  // The text as read, for the teacher-forced log-likelihood of a natural document.
  const std::string& text() const { return text_; }

 private:
  std::string source_, text_;
  std::vector<std::string> sentences_;
};

}  // namespace headwise::eval
