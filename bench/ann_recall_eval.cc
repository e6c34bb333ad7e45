#include "bench/ann_recall_eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

#include "kvcache/ann/parallel.h"

#ifdef HEADWISE_HAVE_HNSWLIB
#endif

namespace headwise::bench::ann {
namespace {

using kvcache::ann::AnnSearchResult;
using kvcache::ann::ParallelFor;
using kvcache::ann::Recall;
using kvcache::ann::ScoredId;
using Truths = std::vector<std::vector<std::vector<ScoredId>>>;  // [head][step]

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// One search's figures, kept per search and reduced in a fixed order afterwards, so the
// results do not depend on which thread ran which search.
struct Measured {
  double recall = 0;
  size_t scanned = 0;
  double seconds = 0;
  size_t union_size = 0;
};

// Reduces the measurements of one setting. `recalls` may hold several per search (group modes:
// one per head), `searches` the per-search figures.
SettingResult Reduce(std::string index, std::string mode, size_t search_k, size_t setting,
                     size_t num_keys, std::span<const double> recalls,
                     std::span<const Measured> searches, size_t searches_per_step) {
  SettingResult r;
  r.index = std::move(index);
  r.mode = std::move(mode);
  r.search_k = search_k;
  r.setting = setting;
  r.searches_per_step = searches_per_step;
  r.searches = searches.size();
  double sum = 0, lowest = 1;
  for (double x : recalls) {
    sum += x;
    lowest = std::min(lowest, x);
  }
  r.recall = recalls.empty() ? 1.0 : sum / static_cast<double>(recalls.size());
  r.recall_min = recalls.empty() ? 1.0 : lowest;
  double scanned = 0, seconds = 0, unions = 0;
  for (const Measured& m : searches) {
    scanned += static_cast<double>(m.scanned);
    seconds += m.seconds;
    unions += static_cast<double>(m.union_size);
  }
  const double n = std::max<double>(1.0, static_cast<double>(searches.size()));
  r.scanned_frac = num_keys == 0 ? 0.0 : scanned / n / static_cast<double>(num_keys);
  r.search_us = seconds / n * 1e6;
  r.union_size = unions / n;
  return r;
}

// The settings of a sweep as searches use them (raised to search_k), ascending, without repeats.
std::vector<size_t> EffectiveSettings(std::span<const size_t> settings, size_t search_k) {
  std::set<size_t> out;
  for (size_t s : settings) out.insert(std::max(s, search_k));
  return {out.begin(), out.end()};
}

// One search per decode step for the whole group (group_mean, group_search): search(s) gives step
// s's keys scanned and its lists, one per head of the group or one the heads share; each head is
// scored against its own truth.
template <typename SearchFn>
StatusOr<SettingResult> MeasureGroupSteps(std::string index, std::string mode, size_t search_k,
                                          size_t setting, const HeadInput& in, const Truths& truth,
                                          int threads, const SearchFn& search) {
  const size_t group = in.tests.size(), steps = in.tests[0].rows;
  std::vector<Measured> m(steps);
  std::vector<std::vector<double>> recalls(steps);
  std::vector<Status> errors(steps);
  ParallelFor(steps, threads, [&](size_t s) {
    const double t0 = Seconds();
    StatusOr<kvcache::ann::GroupSearchResult> r = search(s);
    m[s].seconds = Seconds() - t0;
    if (!r.ok()) {
      errors[s] = r.status();
      return;
    }
    m[s].scanned = r->scanned;
    for (size_t h = 0; h < group; ++h) {
      recalls[s].push_back(Recall(r->top[std::min(h, r->top.size() - 1)], truth[h][s]));
    }
  });
  for (const Status& e : errors) HW_RETURN_IF_ERROR(e);
  std::vector<double> flat;
  for (const auto& r : recalls) flat.insert(flat.end(), r.begin(), r.end());
  return Reduce(std::move(index), std::move(mode), search_k, setting, in.keys.rows, flat, m, 1);
}

// Runs one index over every mode and setting, appending per_head, then per_head_union, then
// group_mean at each search_k, each series by ascending setting. `prepare(setting)` runs before a
// setting's searches (hnswlib keeps its ef in the index); `search(query, k, setting)` returns a
// StatusOr<AnnSearchResult> and runs on o.threads threads at once unless `parallel` is false.
template <typename PrepareFn, typename SearchFn>
Status MeasureIndex(const std::string& index, const HeadInput& in, const Truths& truth,
                    const SweepOptions& o, bool parallel, const std::vector<size_t>& settings,
                    const PrepareFn& prepare, const SearchFn& search,
                    std::vector<SettingResult>& out) {
  const size_t group = in.tests.size(), steps = in.tests[0].rows, n = in.keys.rows;
  const int threads = parallel ? o.threads : 1;
  // per_head and per_head_union: the same searches.
  std::vector<SettingResult> unions_out;
  for (size_t setting : EffectiveSettings(settings, o.top_k)) {
    prepare(setting);
    std::vector<Measured> m(group * steps);
    std::vector<std::vector<ScoredId>> found(group * steps);
    std::vector<Status> errors(group * steps);
    ParallelFor(group * steps, threads, [&](size_t i) {
      const size_t h = i / steps, s = i % steps;
      const double t0 = Seconds();
      StatusOr<AnnSearchResult> r =
          search(std::span<const float>(in.tests[h].Row(s), in.keys.dim), o.top_k, setting);
      m[i].seconds = Seconds() - t0;
      if (!r.ok()) {
        errors[i] = r.status();
        return;
      }
      m[i].scanned = r->scanned;
      m[i].recall = Recall(r->top, truth[h][s]);
      found[i] = std::move(r->top);
    });
    for (const Status& e : errors) HW_RETURN_IF_ERROR(e);
    std::vector<double> recalls;
    recalls.reserve(m.size());
    for (const Measured& x : m) recalls.push_back(x.recall);
    out.push_back(Reduce(index, "per_head", o.top_k, setting, n, recalls, m, group));

    std::vector<double> union_recalls;
    std::vector<Measured> unions(steps);
    for (size_t s = 0; s < steps; ++s) {
      std::set<uint32_t> ids;
      for (size_t h = 0; h < group; ++h) {
        for (const ScoredId& x : found[h * steps + s]) ids.insert(x.id);
      }
      std::vector<ScoredId> merged;
      merged.reserve(ids.size());
      for (uint32_t id : ids) merged.push_back({id, 0.0f});
      unions[s].union_size = merged.size();
      for (size_t h = 0; h < group; ++h) union_recalls.push_back(Recall(merged, truth[h][s]));
    }
    // The same searches as per_head: their scanned keys and times, per search.
    SettingResult u = Reduce(index, "per_head_union", o.top_k, setting, n, union_recalls, m, group);
    u.union_size = Reduce(index, "", o.top_k, setting, n, {}, unions, group).union_size;
    unions_out.push_back(std::move(u));
  }
  out.insert(out.end(), unions_out.begin(), unions_out.end());

  // group_mean: one search per step with the group's mean query.
  std::vector<std::vector<float>> means(steps);
  for (size_t s = 0; s < steps; ++s) means[s] = GroupMean(in.tests, s);
  for (size_t search_k : o.mean_ks) {
    for (size_t setting : EffectiveSettings(settings, search_k)) {
      prepare(setting);
      HW_ASSIGN_OR_RETURN(
          SettingResult r,
          MeasureGroupSteps(
              index, "group_mean", search_k, setting, in, truth, threads,
              [&](size_t s) -> StatusOr<kvcache::ann::GroupSearchResult> {
                HW_ASSIGN_OR_RETURN(AnnSearchResult one, search(means[s], search_k, setting));
                return kvcache::ann::GroupSearchResult{{std::move(one.top)}, one.scanned};
              }));
      out.push_back(std::move(r));
    }
  }
  return Status::Ok();
}

Status CheckInput(const HeadInput& in, size_t top_k) {
  const size_t dim = in.keys.dim;
  HW_RETURN_IF_ERROR(kvcache::ann::CheckMatrix(in.keys, dim, "indexed keys"));
  HW_RETURN_IF_ERROR(kvcache::ann::CheckMatrix(in.train, dim, "training queries"));
  if (in.tests.empty()) return InvalidArgument("no test queries (a GQA group of 0 heads)");
  for (const MatrixView& t : in.tests) {
    HW_RETURN_IF_ERROR(kvcache::ann::CheckMatrix(t, dim, "test queries"));
    if (t.rows != in.tests[0].rows) {
      return InvalidArgument("query heads of one group have {} and {} test queries", t.rows,
                             in.tests[0].rows);
    }
  }
  if (top_k == 0) return InvalidArgument("top-k is 0");
  return Status::Ok();
}

}  // namespace

IndexedRange IndexedPositions(int prompt_len, int sink, int window) {
  IndexedRange r;
  r.begin = std::clamp(sink, 0, std::max(prompt_len, 0));
  r.end = std::max(r.begin, prompt_len - std::max(window, 0));
  return r;
}

std::vector<float> GroupMean(std::span<const MatrixView> group, size_t row) {
  if (group.empty()) return {};
  std::vector<float> mean(group[0].dim, 0.0f);
  for (const MatrixView& m : group) {
    HW_CHECK(m.dim == mean.size() && row < m.rows, "GroupMean: row {} of a [{}, {}] matrix", row,
             m.rows, m.dim);
    const float* x = m.Row(row);
    for (size_t i = 0; i < mean.size(); ++i) mean[i] += x[i];
  }
  const float inv = 1.0f / static_cast<float>(group.size());
  for (float& v : mean) v *= inv;
  return mean;
}

StatusOr<Truths> Truth(const HeadInput& in, size_t top_k, int threads) {
  HW_RETURN_IF_ERROR(CheckInput(in, top_k));
  Truths truth;
  for (const MatrixView& t : in.tests) {
    HW_ASSIGN_OR_RETURN(auto rows, kvcache::ann::ExactTopKBatch(in.keys, t, top_k, threads));
    truth.push_back(std::move(rows));
  }
  return truth;
}

StatusOr<HeadResult> EvaluateHead(const HeadInput& in, const SweepOptions& o) {
  HW_RETURN_IF_ERROR(CheckInput(in, o.top_k));
  HeadResult out;
  out.num_keys = in.keys.rows;
  out.num_train = in.train.rows;
  out.num_tests = in.tests[0].rows;
  double t0 = Seconds();
  HW_ASSIGN_OR_RETURN(const Truths truth, Truth(in, o.top_k, o.threads));
  out.truth_s = Seconds() - t0;

  // exact: the ceiling of each mode (per_head is 1 by definition; the group modes are not).
  auto exact = [&](std::span<const float> q, size_t k, size_t) -> StatusOr<AnnSearchResult> {
    HW_ASSIGN_OR_RETURN(auto top, kvcache::ann::ExactTopK(in.keys, q, k));
    return AnnSearchResult{std::move(top), in.keys.rows};
  };
  auto none = [](size_t) {};
  HW_RETURN_IF_ERROR(MeasureIndex("exact", in, truth, o, true, {0}, none, exact, out.settings));

  kvcache::ann::RoarGraphParams roar = o.roar;
  roar.num_threads = o.threads;
  t0 = Seconds();
  std::vector<uint32_t> train_top;
  if (o.train_top && in.train.rows > 0) {
    HW_ASSIGN_OR_RETURN(train_top,
                        o.train_top(in.keys, in.train, std::min(roar.n_q, in.keys.rows)));
  }
  HW_ASSIGN_OR_RETURN(const kvcache::ann::RoarGraph graph,
                      kvcache::ann::RoarGraph::Build(in.keys, in.train, roar, train_top));
  out.roar_build_s = Seconds() - t0;
  out.roar_edges = graph.num_edges();
  auto roar_search = [&](std::span<const float> q, size_t k, size_t queue) {
    return graph.Search(q, k, queue);
  };
  HW_RETURN_IF_ERROR(
      MeasureIndex("roargraph", in, truth, o, true, o.queues, none, roar_search, out.settings));
  if (o.group_search) {
    // group_search: one traversal per step for the whole group (RoarGraph::SearchGroup), each head
    // taking its own top-k.
    const size_t group = in.tests.size(), dim = in.keys.dim;
    for (size_t queue : EffectiveSettings(o.queues, o.top_k)) {
      HW_ASSIGN_OR_RETURN(
          SettingResult r,
          MeasureGroupSteps(
              "roargraph", "group_search", o.top_k, queue, in, truth, o.threads, [&](size_t s) {
                std::vector<float> queries;
                for (size_t h = 0; h < group; ++h) {
                  queries.insert(queries.end(), in.tests[h].Row(s), in.tests[h].Row(s) + dim);
                }
                return graph.SearchGroup(queries, group, o.top_k, queue);
              }));
      out.settings.push_back(std::move(r));
    }
  }

#ifdef HEADWISE_HAVE_HNSWLIB
  if (o.hnsw) {
    kvcache::ann::HnswParams hp = o.hnsw_params;
    hp.num_threads = o.threads;
    t0 = Seconds();
    auto hnsw = kvcache::ann::HnswIndex::Build(in.keys, hp);
    HW_RETURN_IF_ERROR(hnsw.status());
    out.hnsw_build_s = Seconds() - t0;
    HW_RETURN_IF_ERROR(MeasureIndex(
        "hnsw", in, truth, o, true, o.efs, [&](size_t ef) { hnsw->SetEf(ef); },
        [&](std::span<const float> q, size_t k, size_t) { return hnsw->Search(q, k); },
        out.settings));
  }
#endif
  return out;
}

std::optional<size_t> FirstReaching(std::span<const SettingResult> series, double target) {
  for (size_t i = 0; i < series.size(); ++i) {
    if (series[i].recall >= target) return i;
  }
  return std::nullopt;
}

std::vector<std::pair<size_t, size_t>> Series(std::span<const SettingResult> settings) {
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t i = 0; i < settings.size();) {
    size_t j = i + 1;
    while (j < settings.size() && settings[j].index == settings[i].index &&
           settings[j].mode == settings[i].mode && settings[j].search_k == settings[i].search_k) {
      ++j;
    }
    out.emplace_back(i, j);
    i = j;
  }
  return out;
}

StatusOr<std::vector<SettingResult>> MeanOver(std::span<const std::vector<SettingResult>> parts) {
  if (parts.empty()) return std::vector<SettingResult>{};
  std::vector<SettingResult> out = parts[0];
  for (size_t i = 0; i < out.size(); ++i) {
    double w = 0, recall = 0, scanned = 0, us = 0, unions = 0, lowest = 1;
    size_t searches = 0;
    for (const auto& p : parts) {
      if (p.size() != out.size() || p[i].index != out[i].index || p[i].mode != out[i].mode ||
          p[i].search_k != out[i].search_k || p[i].setting != out[i].setting) {
        return InvalidArgument("MeanOver: parts measured different settings (at entry {})", i);
      }
      const double pw = static_cast<double>(p[i].searches);
      w += pw;
      recall += pw * p[i].recall;
      scanned += pw * p[i].scanned_frac;
      us += pw * p[i].search_us;
      unions += pw * p[i].union_size;
      lowest = std::min(lowest, p[i].recall_min);
      searches += p[i].searches;
    }
    w = std::max(w, 1e-300);
    out[i].recall = recall / w;
    out[i].scanned_frac = scanned / w;
    out[i].search_us = us / w;
    out[i].union_size = unions / w;
    out[i].recall_min = lowest;
    out[i].searches = searches;
  }
  return out;
}

}  // namespace headwise::bench::ann
