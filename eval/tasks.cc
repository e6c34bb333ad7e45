#include "eval/tasks.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

namespace headwise::eval {
namespace {

// Keys are "adjective-noun" pairs, as RULER draws them from its word lists.
constexpr std::array<std::string_view, 48> kAdjectives = {
    "ancient", "bitter",  "brave",   "bright",  "calm",   "clever", "cold",   "crimson",
    "curious", "damp",    "distant", "dusty",   "eager",  "early",  "empty",  "fancy",
    "fierce",  "fragile", "gentle",  "golden",  "grand",  "hollow", "humble", "icy",
    "jolly",   "lively",  "lonely",  "loud",    "lucky",  "mellow", "misty",  "narrow",
    "noble",   "odd",     "pale",    "patient", "polite", "quiet",  "rapid",  "rough",
    "rustic",  "silent",  "silver",  "smooth",  "steady", "tender", "vivid",  "wooden"};
constexpr std::array<std::string_view, 48> kNouns = {
    "anchor", "apple",   "badger",  "basket",  "beacon",  "bridge", "candle", "canyon",
    "castle", "cedar",   "comet",   "cottage", "crystal", "desert", "dragon", "engine",
    "falcon", "feather", "forest",  "garden",  "glacier", "harbor", "helmet", "island",
    "kettle", "ladder",  "lantern", "meadow",  "mirror",  "monkey", "needle", "orchard",
    "pebble", "pillow",  "planet",  "quarry",  "river",   "saddle", "shadow", "spider",
    "teapot", "thimble", "tunnel",  "valley",  "violin",  "walrus", "window", "wizard"};

std::string RandomKey(Rng& rng) {
  return fmt::format("{}-{}", kAdjectives[rng.Below(kAdjectives.size())],
                     kNouns[rng.Below(kNouns.size())]);
}

std::string RandomNumber(Rng& rng, int digits) {
  uint64_t lo = 1;
  for (int i = 1; i < digits; ++i) lo *= 10;
  return std::to_string(lo + rng.Below(9 * lo));
}

// A version-4 UUID from 128 random bits, lowercase, as Python's uuid.UUID(int=..., version=4).
std::string RandomUuid(Rng& rng) {
  uint64_t hi = rng.Next(), lo = rng.Next();
  hi = (hi & ~uint64_t{0xF000}) | 0x4000;                      // version 4
  lo = (lo & ~(uint64_t{0xC} << 60)) | (uint64_t{0x8} << 60);  // variant 10xx
  return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xFFFF,
                     hi & 0xFFFF, lo >> 48, lo & 0xFFFFFFFFFFFFull);
}

std::string RandomVariable(Rng& rng) {
  std::string v(5, 'A');
  for (char& c : v) c = static_cast<char>('A' + rng.Below(26));
  return v;
}

// Distinct draws of `draw`.
template <typename F>
std::vector<std::string> Distinct(int n, Rng& rng, F draw, std::vector<std::string> avoid = {}) {
  std::vector<std::string> out;
  while (static_cast<int>(out.size()) < n) {
    std::string x = draw(rng);
    if (std::find(out.begin(), out.end(), x) != out.end()) continue;
    if (std::find(avoid.begin(), avoid.end(), x) != avoid.end()) continue;
    out.push_back(std::move(x));
  }
  return out;
}

// RULER's needle-in-a-haystack texts; `plural` when more than one value is asked for.
std::string NiahBefore(std::string_view type, bool plural) {
  return plural ? fmt::format(
                      "Some special magic {0}s are hidden within the following text. Make "
                      "sure to memorize it. I will quiz you about the {0}s afterwards.\n",
                      type)
                : fmt::format(
                      "A special magic {0} is hidden within the following text. Make sure "
                      "to memorize it. I will quiz you about the {0} afterwards.\n",
                      type);
}
std::string NiahAfter(std::string_view type, bool plural, const std::string& query) {
  return plural
             ? fmt::format(
                   "\nWhat are all the special magic {}s for {} mentioned in the "
                   "provided text?",
                   type, query)
             : fmt::format("\nWhat is the special magic {} for {} mentioned in the provided text?",
                           type, query);
}
std::string NiahPrefix(std::string_view type, bool plural, const std::string& query) {
  return plural ? fmt::format("The special magic {}s for {} mentioned in the provided text are",
                              type, query)
                : fmt::format("The special magic {} for {} mentioned in the provided text is", type,
                              query);
}
std::string NiahNeedle(std::string_view type, const std::string& key, const std::string& value) {
  return fmt::format("One of the special magic {}s for {} is: {}.", type, key, value);
}

constexpr int kChainLength = 5;  // RULER's vt: one chain, four hops
std::string VtBefore() {
  return "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n";
}
std::string VtAfter(const std::string& value) {
  return fmt::format(
      "\nQuestion: Find all variables that are assigned the value {} in the text "
      "above.",
      value);
}
std::string VtPrefix(const std::string& value) {
  return fmt::format(
      "Answer: According to the chain(s) of variable assignment in the text above, "
      "{} variables are assigned the value {}, they are:",
      kChainLength, value);
}

// A chain's needles: the value first, at `depth`; each later link after the one before it.
std::vector<TaskBuilder::Needle> Chain(const std::vector<std::string>& vars,
                                       const std::string& value, double depth, Rng& rng) {
  std::vector<double> later(vars.size() - 1);
  for (double& d : later) d = depth + (1.0 - depth) * rng.Unit();
  std::sort(later.begin(), later.end());
  std::vector<TaskBuilder::Needle> out;
  out.push_back({fmt::format("VAR {} = {}", vars[0], value), depth});
  for (size_t i = 1; i < vars.size(); ++i) {
    out.push_back({fmt::format("VAR {} = VAR {}", vars[i], vars[i - 1]), later[i - 1]});
  }
  return out;
}

std::string Join(const std::vector<std::string>& v, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) out += sep;
    out += v[i];
  }
  return out;
}

uint64_t Fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}
constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ull;

}  // namespace

uint64_t Rng::Next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Rng::Below(uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // draws at or above it would bias
  uint64_t x = Next();
  while (x >= limit) x = Next();
  return x % n;
}

double Rng::Unit() {
  return static_cast<double>(Next() >> 11) * 0x1.0p-53;
}

uint64_t SampleSeed(uint64_t seed, std::string_view task, int length, int index) {
  uint64_t h = Fnv1a(kFnvBasis, &seed, sizeof seed);
  h = Fnv1a(h, task.data(), task.size());
  const int64_t li[2] = {length, index};
  return Fnv1a(h, li, sizeof li);
}

const std::vector<TaskInfo>& AllTasks() {
  static const std::vector<TaskInfo> kTasks = {
      {TaskKind::kNiahSingle, "niah_single", 24, "one key, one 7-digit number (passkey)"},
      {TaskKind::kNiahSingleUuid, "niah_single_uuid", 56, "one key, one UUID"},
      {TaskKind::kNiahMultikey, "niah_multikey", 24, "four keys, one asked"},
      {TaskKind::kNiahMultivalue, "niah_multivalue", 64, "one key, four numbers, all asked"},
      {TaskKind::kVariableTracking, "vt", 40, "variable tracking: a chain of 5 names"},
  };
  return kTasks;
}

StatusOr<TaskInfo> FindTask(std::string_view name) {
  std::vector<std::string> names;
  for (const TaskInfo& t : AllTasks()) {
    if (t.name == name) return t;
    names.emplace_back(t.name);
  }
  return InvalidArgument("unknown task '{}' (known: {})", name, Join(names, ", "));
}

TaskBuilder::TaskBuilder(const Haystack& haystack, const tokenizer::Tokenizer& tok,
                         const tokenizer::ChatRenderer* chat)
    : haystack_(haystack),
      tok_(tok),
      chat_(chat),
      sentence_tokens_(new std::atomic<int32_t>[haystack.num_sentences()]) {
  for (size_t i = 0; i < haystack.num_sentences(); ++i) sentence_tokens_[i].store(-1);
}

int TaskBuilder::SentenceTokens(size_t i) const {
  i %= haystack_.num_sentences();
  int32_t n = sentence_tokens_[i].load(std::memory_order_relaxed);
  if (n < 0) {
    // Threads that race here compute the same count.
    n = static_cast<int32_t>(tok_.Encode(" " + haystack_.sentence(i), false).size());
    sentence_tokens_[i].store(n, std::memory_order_relaxed);
  }
  return n;
}

TaskBuilder::Parts TaskBuilder::MakeParts(const TaskInfo& task, double depth, Rng& rng) const {
  Parts p;
  p.filler_start = rng.Below(haystack_.num_sentences());
  switch (task.kind) {
    case TaskKind::kNiahSingle:
    case TaskKind::kNiahSingleUuid:
    case TaskKind::kNiahMultikey: {
      const bool uuid = task.kind == TaskKind::kNiahSingleUuid;
      const std::string_view type = uuid ? "uuid" : "number";
      const int keys = task.kind == TaskKind::kNiahMultikey ? 4 : 1;
      const std::vector<std::string> k = Distinct(keys, rng, RandomKey);
      const std::vector<std::string> v =
          Distinct(keys, rng, [&](Rng& r) { return uuid ? RandomUuid(r) : RandomNumber(r, 7); });
      for (int i = 0; i < keys; ++i) {
        p.needles.push_back({NiahNeedle(type, k[i], v[i]), i == 0 ? depth : rng.Unit()});
      }
      p.query = k[0];
      p.expected = {v[0]};
      p.before = NiahBefore(type, false);
      p.after = NiahAfter(type, false, p.query);
      p.answer_prefix = NiahPrefix(type, false, p.query);
      break;
    }
    case TaskKind::kNiahMultivalue: {
      const std::string key = RandomKey(rng);
      const std::vector<std::string> v =
          Distinct(4, rng, [](Rng& r) { return RandomNumber(r, 7); });
      for (size_t i = 0; i < v.size(); ++i) {
        p.needles.push_back({NiahNeedle("number", key, v[i]), i == 0 ? depth : rng.Unit()});
      }
      p.query = key;
      p.expected = v;
      p.before = NiahBefore("number", true);
      p.after = NiahAfter("number", true, key);
      p.answer_prefix = NiahPrefix("number", true, key);
      break;
    }
    case TaskKind::kVariableTracking: {
      // RULER's one-shot example first: a short chain in a few filler sentences, and its answer.
      const std::vector<std::string> vars = Distinct(2 * kChainLength, rng, RandomVariable);
      const std::vector<std::string> shot(vars.begin() + kChainLength, vars.end());
      const std::string shot_value = RandomNumber(rng, 5);
      Parts example;
      example.filler_start = rng.Below(haystack_.num_sentences());
      example.needles = Chain(shot, shot_value, rng.Unit() * 0.5, rng);
      const std::string example_text = VtBefore() + Context(example, 3, nullptr) +
                                       VtAfter(shot_value) + " " + VtPrefix(shot_value) + " " +
                                       Join(shot, " ") + "\n\n";
      const std::vector<std::string> chain(vars.begin(), vars.begin() + kChainLength);
      const std::string value = RandomNumber(rng, 5);
      p.needles = Chain(chain, value, depth, rng);
      p.query = value;
      p.expected = chain;
      p.before = example_text + VtBefore();
      p.after = VtAfter(value);
      p.answer_prefix = VtPrefix(value);
      break;
    }
  }
  return p;
}

std::string TaskBuilder::Context(const Parts& parts, int num_sentences, double* asked_at) const {
  // Token offsets of the sentence boundaries: a needle goes to the one nearest its depth.
  std::vector<int64_t> at(static_cast<size_t>(num_sentences) + 1, 0);
  for (int i = 0; i < num_sentences; ++i) {
    at[static_cast<size_t>(i) + 1] =
        at[static_cast<size_t>(i)] + SentenceTokens(parts.filler_start + static_cast<size_t>(i));
  }
  const double total = static_cast<double>(at.back());
  std::vector<std::pair<size_t, size_t>> placed;  // (boundary, needle), in text order
  for (size_t n = 0; n < parts.needles.size(); ++n) {
    const double want = parts.needles[n].depth * total;
    // The first boundary at or past `want`, or the one before it when that is as near.
    size_t b = static_cast<size_t>(
        std::lower_bound(at.begin(), at.end(), want,
                         [](int64_t a, double w) { return static_cast<double>(a) < w; }) -
        at.begin());
    if (b == at.size()) {
      b = at.size() - 1;
    } else if (b > 0 &&
               want - static_cast<double>(at[b - 1]) <= static_cast<double>(at[b]) - want) {
      --b;
    }
    placed.emplace_back(b, n);
    if (n == 0 && asked_at) *asked_at = total > 0 ? static_cast<double>(at[b]) / total : 0.0;
  }
  // Needles at one boundary keep their depth order (a chain's links stay in order).
  std::stable_sort(placed.begin(), placed.end(), [&](const auto& x, const auto& y) {
    if (x.first != y.first) return x.first < y.first;
    return parts.needles[x.second].depth < parts.needles[y.second].depth;
  });
  std::string out;
  size_t next = 0;
  const auto append = [&out](const std::string& s) {
    if (!out.empty()) out += ' ';
    out += s;
  };
  for (int i = 0; i <= num_sentences; ++i) {
    while (next < placed.size() && placed[next].first == static_cast<size_t>(i)) {
      append(parts.needles[placed[next++].second].text);
    }
    if (i < num_sentences) append(haystack_.sentence(parts.filler_start + static_cast<size_t>(i)));
  }
  return out;
}

StatusOr<std::string> TaskBuilder::Render(const Parts& parts, int num_sentences,
                                          double* asked_at) const {
  const std::string user = parts.before + Context(parts, num_sentences, asked_at) + parts.after;
  if (chat_ == nullptr) return user + "\n" + parts.answer_prefix;
  HW_ASSIGN_OR_RETURN(std::string rendered,
                      chat_->Render({{"user", user, ""}}, /*add_generation_prompt=*/true, {}));
  return rendered + parts.answer_prefix;
}

std::vector<int32_t> TaskBuilder::Encode(const std::string& prompt) const {
  // A chat rendering carries its own BOS (as `headwise generate --chat` encodes it).
  return tok_.Encode(prompt, chat_ == nullptr);
}

StatusOr<Sample> TaskBuilder::Build(const TaskInfo& task, int length, int max_new_tokens,
                                    double depth, uint64_t seed, int index) const {
  Rng rng(SampleSeed(seed, task.name, length, index));
  const Parts parts = MakeParts(task, depth, rng);
  const int target = length - max_new_tokens;
  double asked_at = 0;
  HW_ASSIGN_OR_RETURN(std::string text, Render(parts, 0, &asked_at));
  std::vector<int32_t> ids = Encode(text);
  const int base = static_cast<int>(ids.size());
  if (base > target) {
    return InvalidArgument(
        "task {}: length {} leaves {} tokens for the prompt after {} new tokens, but the prompt "
        "without filler takes {}",
        task.name, length, target, max_new_tokens, base);
  }
  // Sentences by their token counts up to the budget; then encode, and trim what the sum missed.
  // The counts add up to within a few tokens of the encoding, so this takes one or two passes.
  int n = 0;
  int64_t sum = 0;
  const int cap = static_cast<int>(std::min<size_t>(haystack_.num_sentences() * 4, 1 << 22));
  while (n < cap &&
         sum + SentenceTokens(parts.filler_start + static_cast<size_t>(n)) <= target - base) {
    sum += SentenceTokens(parts.filler_start + static_cast<size_t>(n));
    ++n;
  }
  for (int pass = 0;; ++pass) {
    HW_ASSIGN_OR_RETURN(text, Render(parts, n, &asked_at));
    ids = Encode(text);
    const int excess = static_cast<int>(ids.size()) - target;
    if (excess <= 0) break;
    // Drop sentences from the end worth the excess; after a few passes, one at a time. With no
    // filler the prompt is `base` tokens, which fits.
    if (n == 0) return Internal("task {}: could not fit length {}", task.name, length);
    if (pass < 4) {
      for (int dropped = 0; n > 0 && dropped < excess;) {
        dropped += SentenceTokens(parts.filler_start + static_cast<size_t>(--n));
      }
    } else {
      --n;
    }
  }
  Sample s;
  s.task = std::string(task.name);
  s.length = length;
  s.index = index;
  s.depth = depth;
  s.needle_depth = asked_at;
  s.query = parts.query;
  s.expected = parts.expected;
  s.prompt_ids = std::move(ids);
  s.max_new_tokens = max_new_tokens;
  s.filler_sentences = n;
  return s;
}

std::string PromptsHash(const std::vector<Sample>& samples) {
  uint64_t h = kFnvBasis;
  for (const Sample& s : samples) {
    h = Fnv1a(h, s.task.data(), s.task.size() + 1);  // with the terminating NUL as separator
    const int64_t meta[3] = {s.length, s.index, s.max_new_tokens};
    h = Fnv1a(h, meta, sizeof meta);
    h = Fnv1a(h, &s.depth, sizeof s.depth);
    const uint64_t n = s.prompt_ids.size();
    h = Fnv1a(h, &n, sizeof n);
    h = Fnv1a(h, s.prompt_ids.data(), s.prompt_ids.size() * sizeof(int32_t));
    for (const std::string& e : s.expected) h = Fnv1a(h, e.c_str(), e.size() + 1);
  }
  return fmt::format("fnv1a64:{:016x}", h);
}

}  // namespace headwise::eval
