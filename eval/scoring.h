// Scoring of the long-context tasks as RULER scores them, and the intervals reports give.
//
// An answer is the model's continuation after the answer prefix, cleaned as RULER's
// postprocess_pred cleans it (control characters become newlines, outer whitespace goes). Each
// expected value counts as found when it occurs in the answer, case-insensitively (RULER's
// string_match_all). A sample is correct when every expected value is found: for tasks with one
// value (niah_single, niah_single_uuid, niah_multikey) that is RULER's score; for niah_multivalue
// and vt, whose RULER score is the fraction found, reports give both (accuracy = all found, the
// binary outcome the Wilson interval is for; `partial` = RULER's mean fraction).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace headwise::eval {

std::string CleanAnswer(std::string_view text);

struct Match {
  int found = 0;
  int expected = 0;
  bool all() const { return found == expected; }
  double fraction() const { return expected > 0 ? static_cast<double>(found) / expected : 0.0; }
};
Match MatchExpected(std::string_view answer, const std::vector<std::string>& expected);

struct Interval {
  double low = 0, high = 0;
};

// z of a two-sided 95% interval.
inline constexpr double kZ95 = 1.959963984540054;

// The Wilson score interval of a binomial proportion (successes of n); [0, 1] for n = 0.
Interval WilsonInterval(int successes, int n, double z = kZ95);

// Outcomes of the same samples under two policies: the first is the reference.
struct PairedCounts {
  int both = 0;         // correct under both
  int first_only = 0;   // correct under the first only
  int second_only = 0;  // correct under the second only
  int neither = 0;
  int n() const { return both + first_only + second_only + neither; }
};
// A 95% interval of accuracy(second) - accuracy(first) over paired samples: Newcombe's hybrid
// score interval for paired proportions (Newcombe 1998, method 10, without continuity
// correction), built from the Wilson intervals of both accuracies and their correlation.
Interval PairedDifferenceInterval(const PairedCounts& c, double z = kZ95);

}  // namespace headwise::eval
