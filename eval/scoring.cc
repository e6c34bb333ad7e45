#include "eval/scoring.h"

#include <algorithm>
#include <cctype>
#include <cmath>

namespace headwise::eval {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

std::string CleanAnswer(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20) c = '\n';
  }
  const auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!out.empty() && space(out.back())) out.pop_back();
  size_t start = 0;
  while (start < out.size() && space(out[start])) ++start;
  return out.substr(start);
}

Match MatchExpected(std::string_view answer, const std::vector<std::string>& expected) {
  const std::string hay = Lower(answer);
  Match m;
  m.expected = static_cast<int>(expected.size());
  for (const std::string& e : expected) {
    if (hay.find(Lower(e)) != std::string::npos) ++m.found;
  }
  return m;
}

Interval WilsonInterval(int successes, int n, double z) {
  if (n <= 0) return {0.0, 1.0};
  const double nn = n, p = successes / nn, z2 = z * z;
  const double center = (p + z2 / (2 * nn)) / (1 + z2 / nn);
  const double half = z / (1 + z2 / nn) * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn));
  return {std::max(0.0, center - half), std::min(1.0, center + half)};
}

Interval PairedDifferenceInterval(const PairedCounts& c, double z) {
  const int n = c.n();
  if (n == 0) return {-1.0, 1.0};
  const double a = c.both, b = c.first_only, cc = c.second_only, d = c.neither;
  const double p1 = (a + b) / n, p2 = (a + cc) / n;  // first's, second's accuracy
  const Interval w1 = WilsonInterval(c.both + c.first_only, n, z);
  const Interval w2 = WilsonInterval(c.both + c.second_only, n, z);
  const double denom = (a + b) * (cc + d) * (a + cc) * (b + d);
  const double phi = denom > 0 ? (a * d - b * cc) / std::sqrt(denom) : 0.0;
  // Newcombe's interval for theta = p1 - p2 is [theta - delta, theta + epsilon].
  const double delta = std::sqrt(std::max(0.0, (p1 - w1.low) * (p1 - w1.low) -
                                                   2 * phi * (p1 - w1.low) * (w2.high - p2) +
                                                   (w2.high - p2) * (w2.high - p2)));
  const double epsilon = std::sqrt(std::max(0.0, (w1.high - p1) * (w1.high - p1) -
                                                     2 * phi * (w1.high - p1) * (p2 - w2.low) +
                                                     (p2 - w2.low) * (p2 - w2.low)));
  const double theta = p1 - p2;
  // The difference reported is p2 - p1 = -theta.
  return {std::max(-1.0, -(theta + epsilon)), std::min(1.0, -(theta - delta))};
}

}  // namespace headwise::eval
