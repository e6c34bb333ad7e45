#include "kvcache/ann/roar_graph.h"

#include <algorithm>
#include <deque>
#include <variant>

#include "kvcache/ann/inner_products.h"
#include "kvcache/ann/parallel.h"

namespace headwise::kvcache::ann {
namespace {

struct PoolEntry {
  uint32_t id;
  float score;
  bool expanded;
};

// The keys one search has scored. A search marks keys with its own epoch, so that the next search
// on the thread starts without clearing: a fresh N-byte array per search would cost as much as
// the search itself at 128K keys (a search scores a few thousand). One per thread, grown to the
// largest N it has seen.
class VisitedKeys {
 public:
  void Start(size_t n) {
    if (mark_.size() < n) mark_.resize(n, 0);
    if (++epoch_ == 0) {  // wrapped: old marks could match
      std::fill(mark_.begin(), mark_.end(), 0);
      epoch_ = 1;
    }
  }
  bool Seen(uint32_t id) const { return mark_[id] == epoch_; }
  // Whether `id` was already visited by this search; marks it.
  bool Visit(uint32_t id) {
    if (mark_[id] == epoch_) return true;
    mark_[id] = epoch_;
    return false;
  }

 private:
  std::vector<uint32_t> mark_;
  uint32_t epoch_ = 0;
};

// Puts `cand` into `pool` (sorted by BetterThan, at most `capacity` entries) unless the pool is
// full and cand is no better than its last entry. Returns the index cand took, or `capacity` if
// none.
size_t OfferToPool(std::vector<PoolEntry>& pool, const ScoredId& cand, size_t capacity) {
  if (pool.size() == capacity && !BetterThan(cand, {pool.back().id, pool.back().score})) {
    return capacity;
  }
  auto pos =
      std::upper_bound(pool.begin(), pool.end(), cand, [](const ScoredId& c, const PoolEntry& e) {
        return BetterThan(c, {e.id, e.score});
      });
  const size_t index = static_cast<size_t>(pos - pool.begin());
  pool.insert(pos, {cand.id, cand.score, false});
  if (pool.size() > capacity) pool.pop_back();
  return index;
}

// Asks for the rows of `current`'s neighbours not yet visited. They are scattered over the span (a
// 32K-key head of dim 128 is 8 MB of bf16): asking for all of them before reading any lets their
// memory reads overlap.
template <typename T, typename Neighbors>
void PrefetchUnvisited(const RowsOf<T>& keys, const Neighbors& neighbors,
                       const VisitedKeys& visited) {
  for (uint32_t nb : neighbors) {
    if (visited.Seen(nb)) continue;
    const char* row = reinterpret_cast<const char*>(keys.Row(nb));
    for (size_t b = 0; b < keys.dim * sizeof(T); b += 64) __builtin_prefetch(row + b);
  }
}

// Best-first search from `entry` with a pool of `capacity` best keys (sorted by BetterThan);
// stops when every pooled key is expanded. Returns the number of inner products computed.
// neighbors_of(id) gives a key's out-edges as a range of uint32_t.
template <typename T, typename NeighborsOf>
size_t BestFirstSearch(const RowsOf<T>& keys, const float* query, uint32_t entry, size_t capacity,
                       const NeighborsOf& neighbors_of, std::vector<PoolEntry>& pool) {
  auto score_of = [&](uint32_t id) { return InnerProduct(keys.Row(id), query, keys.dim); };
  pool.clear();
  thread_local VisitedKeys visited;
  visited.Start(keys.rows);
  visited.Visit(entry);
  pool.push_back({entry, score_of(entry), false});
  size_t scanned = 1;
  size_t cursor = 0;  // every entry before it is expanded
  while (cursor < pool.size()) {
    pool[cursor].expanded = true;
    const uint32_t current = pool[cursor].id;
    size_t lowest_insert = pool.size();
    PrefetchUnvisited(keys, neighbors_of(current), visited);
    for (uint32_t nb : neighbors_of(current)) {
      if (visited.Visit(nb)) continue;
      ++scanned;
      lowest_insert = std::min(lowest_insert, OfferToPool(pool, {nb, score_of(nb)}, capacity));
    }
    cursor = std::min(cursor, lowest_insert);
    while (cursor < pool.size() && pool[cursor].expanded) ++cursor;
  }
  return scanned;
}

// Similarity of two keys for the graph's own structure (candidate order and occlusion): minus the
// squared L2 distance, summed in a fixed order. Not the inner product: measured on the OOD test
// data, inner-product neighbourhoods favour long keys, which become hubs that every search
// expands (recall@100 0.91 at 14.9% scanned, against 0.92 at 13.0% with L2, N = 16384).
template <typename T>
float KeySimilarity(const RowsOf<T>& keys, uint32_t a, uint32_t b) {
  const T* x = keys.Row(a);
  const T* y = keys.Row(b);
  return -FixedOrderSum(keys.dim, [&](size_t i) {
    const float d = ToF32(x[i]) - ToF32(y[i]);
    return d * d;
  });
}

// `ids` (no duplicates) scored by KeySimilarity with key `node` and sorted best first; `node`
// itself is dropped.
template <typename T>
std::vector<ScoredId> ScoreAgainst(const RowsOf<T>& keys, uint32_t node,
                                   std::span<const uint32_t> ids) {
  std::vector<ScoredId> out;
  out.reserve(ids.size());
  for (uint32_t id : ids) {
    if (id != node) out.push_back({id, KeySimilarity(keys, id, node)});
  }
  std::sort(out.begin(), out.end(), BetterThan);
  return out;
}

// Occlusion pruning (see the header, step 3). `candidates` are sorted best first with
// score = KeySimilarity(candidate, node).
template <typename T>
std::vector<uint32_t> PruneByOcclusion(const RowsOf<T>& keys, std::span<const ScoredId> candidates,
                                       size_t max_degree) {
  std::vector<uint32_t> kept;
  std::vector<uint8_t> taken(candidates.size(), 0);
  for (size_t i = 0; i < candidates.size() && kept.size() < max_degree; ++i) {
    const ScoredId& c = candidates[i];
    bool occluded = false;
    for (uint32_t r : kept) {
      if (KeySimilarity(keys, c.id, r) > c.score) {
        occluded = true;
        break;
      }
    }
    if (!occluded) {
      kept.push_back(c.id);
      taken[i] = 1;
    }
  }
  for (size_t i = 0; i < candidates.size() && kept.size() < max_degree; ++i) {
    if (!taken[i]) kept.push_back(candidates[i].id);
  }
  return kept;
}

std::vector<uint8_t> Reachable(const std::vector<std::vector<uint32_t>>& adj, uint32_t entry) {
  std::vector<uint8_t> seen(adj.size(), 0);
  std::deque<uint32_t> queue{entry};
  seen[entry] = 1;
  while (!queue.empty()) {
    const uint32_t id = queue.front();
    queue.pop_front();
    for (uint32_t nb : adj[id]) {
      if (!seen[nb]) {
        seen[nb] = 1;
        queue.push_back(nb);
      }
    }
  }
  return seen;
}

}  // namespace

StatusOr<RoarGraph> RoarGraph::Build(const MatrixView& keys, const MatrixView& train_queries,
                                     const RoarGraphParams& params,
                                     std::span<const uint32_t> train_top) {
  return BuildFrom(keys, train_queries, params, train_top);
}

StatusOr<RoarGraph> RoarGraph::Build(const Bf16MatrixView& keys, const MatrixView& train_queries,
                                     const RoarGraphParams& params,
                                     std::span<const uint32_t> train_top) {
  return BuildFrom(keys, train_queries, params, train_top);
}

template <typename T>
StatusOr<RoarGraph> RoarGraph::BuildFrom(const RowsOf<T>& keys, const MatrixView& train_queries,
                                         const RoarGraphParams& params,
                                         std::span<const uint32_t> train_top) {
  HW_RETURN_IF_ERROR(CheckMatrix(keys, keys.dim, "RoarGraph keys"));
  HW_RETURN_IF_ERROR(CheckMatrix(train_queries, keys.dim, "RoarGraph training queries"));
  if (params.n_q == 0 || params.max_degree == 0 || params.connect_queue == 0) {
    return InvalidArgument(
        "RoarGraph: n_q ({}), max_degree ({}) and connect_queue ({}) must be > 0", params.n_q,
        params.max_degree, params.connect_queue);
  }
  if (params.candidate_list < params.max_degree) {
    return InvalidArgument("RoarGraph: candidate_list {} < max_degree {}", params.candidate_list,
                           params.max_degree);
  }
  RoarGraph graph;
  graph.keys_ = keys;
  const size_t n = keys.rows;
  if (n == 0) {
    graph.offsets_ = {0};
    return graph;
  }
  const int threads = params.num_threads;
  const size_t max_degree = params.max_degree;

  // 1. Exact top-n_q keys of every training query (given, or found here), rows of `width`.
  const size_t width = std::min(params.n_q, n);
  std::vector<uint32_t> found;
  if (train_top.empty() && train_queries.rows > 0) {
    HW_ASSIGN_OR_RETURN(auto knn, ExactTopKBatch(keys, train_queries, width, threads));
    found.reserve(knn.size() * width);
    for (const auto& row : knn) {
      for (const ScoredId& s : row) found.push_back(s.id);
    }
    train_top = found;
  }
  if (train_top.size() != train_queries.rows * width) {
    return InvalidArgument("RoarGraph: {} neighbour ids for {} training queries of {} each",
                           train_top.size(), train_queries.rows, width);
  }
  for (uint32_t id : train_top) {
    if (id >= n) return InvalidArgument("RoarGraph: neighbour id {} of {} keys", id, n);
  }
  auto top_of = [&](size_t q) { return train_top.subspan(q * width, width); };

  // 2-3. Each query hangs off its top-1 key; the pivot's candidates are its queries' other keys.
  std::vector<std::vector<uint32_t>> queries_of_pivot(n);
  for (size_t q = 0; q < train_queries.rows; ++q) {
    queries_of_pivot[top_of(q)[0]].push_back(static_cast<uint32_t>(q));
  }
  std::vector<std::vector<uint32_t>> adj(n);
  ParallelFor(n, threads, [&](size_t pivot) {
    if (queries_of_pivot[pivot].empty()) return;
    std::vector<uint32_t> ids;
    for (uint32_t q : queries_of_pivot[pivot]) {
      for (uint32_t id : top_of(q)) ids.push_back(id);
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    auto candidates = ScoreAgainst(keys, static_cast<uint32_t>(pivot), ids);
    if (candidates.size() > params.candidate_list) candidates.resize(params.candidate_list);
    adj[pivot] = PruneByOcclusion(keys, candidates, max_degree);
  });

  // 4. Reverse edges, merged in pivot order, then lists over max_degree pruned again.
  {
    std::vector<std::vector<uint32_t>> reverse(n);
    for (size_t p = 0; p < n; ++p) {
      for (uint32_t c : adj[p]) reverse[c].push_back(static_cast<uint32_t>(p));
    }
    std::vector<std::vector<uint32_t>> merged(n);
    ParallelFor(n, threads, [&](size_t node) {
      std::vector<uint32_t> ids = adj[node];
      for (uint32_t r : reverse[node]) {
        if (std::find(adj[node].begin(), adj[node].end(), r) == adj[node].end()) ids.push_back(r);
      }
      if (ids.size() <= max_degree) {
        merged[node] = std::move(ids);
      } else {
        merged[node] = PruneByOcclusion(keys, ScoreAgainst(keys, static_cast<uint32_t>(node), ids),
                                        max_degree);
      }
    });
    adj = std::move(merged);
  }

  // 5. Entry point: the best key for the mean training query.
  if (train_queries.rows > 0) {
    std::vector<float> mean(keys.dim, 0.0f);
    for (size_t q = 0; q < train_queries.rows; ++q) {
      for (size_t i = 0; i < keys.dim; ++i) mean[i] += train_queries.Row(q)[i];
    }
    for (float& v : mean) v /= static_cast<float>(train_queries.rows);
    HW_ASSIGN_OR_RETURN(auto best, ExactTopK(keys, mean, 1));
    graph.entry_ = best[0].id;
  }
  const uint32_t entry = graph.entry_;
  if (adj[entry].empty() && n > 1) {
    // Searches start here: give it the nearest keys as edges, since a search from a key without
    // edges finds nothing.
    std::vector<uint32_t> all(n);
    for (size_t i = 0; i < n; ++i) all[i] = static_cast<uint32_t>(i);
    auto nearest = ScoreAgainst(keys, entry, all);
    if (nearest.size() > params.candidate_list) nearest.resize(params.candidate_list);
    adj[entry] = PruneByOcclusion(keys, nearest, max_degree);
  }

  // 6. Connectivity: out-edges for keys without any, in-edges for keys the entry cannot reach,
  // both from searches of the graph as it stands after step 5.
  {
    const std::vector<uint8_t> reachable = Reachable(adj, entry);
    std::vector<uint32_t> needy;
    for (size_t i = 0; i < n; ++i) {
      if (adj[i].empty() || !reachable[i]) needy.push_back(static_cast<uint32_t>(i));
    }
    std::vector<std::vector<uint32_t>> new_out(needy.size());
    std::vector<std::vector<uint32_t>> link_sources(needy.size());
    auto neighbors_of = [&](uint32_t id) -> const std::vector<uint32_t>& { return adj[id]; };
    ParallelFor(needy.size(), threads, [&](size_t j) {
      const uint32_t u = needy[j];
      std::vector<PoolEntry> pool;
      std::vector<float> query(keys.dim);
      for (size_t i = 0; i < keys.dim; ++i) query[i] = ToF32(keys.Row(u)[i]);
      BestFirstSearch(keys, query.data(), entry, params.connect_queue, neighbors_of, pool);
      std::vector<uint32_t> found;
      found.reserve(pool.size());
      for (const PoolEntry& e : pool) found.push_back(e.id);
      const auto nearest = ScoreAgainst(keys, u, found);
      if (adj[u].empty()) new_out[j] = PruneByOcclusion(keys, nearest, max_degree);
      if (!reachable[u]) {
        for (const ScoredId& s : nearest) link_sources[j].push_back(s.id);
      }
    });
    for (size_t j = 0; j < needy.size(); ++j) {
      if (adj[needy[j]].empty()) adj[needy[j]] = std::move(new_out[j]);
    }
    // The nearest found key that has taken fewer than connect_fanin links; failing that, the one
    // that has taken fewest (the nearest among equals).
    std::vector<uint32_t> fanin(n, 0);
    for (size_t j = 0; j < needy.size(); ++j) {
      if (reachable[needy[j]]) continue;
      HW_CHECK(!link_sources[j].empty(), "a search from the entry point found no key");
      uint32_t source = link_sources[j][0];
      for (uint32_t s : link_sources[j]) {
        if (fanin[s] < params.connect_fanin) {
          source = s;
          break;
        }
        if (fanin[s] < fanin[source]) source = s;
      }
      ++fanin[source];
      adj[source].push_back(needy[j]);
    }
    const std::vector<uint8_t> now_reachable = Reachable(adj, entry);
    HW_CHECK(std::find(now_reachable.begin(), now_reachable.end(), 0) == now_reachable.end(),
             "RoarGraph: a key is unreachable after the connectivity step");
  }

  graph.offsets_.assign(n + 1, 0);
  for (size_t i = 0; i < n; ++i) graph.offsets_[i + 1] = graph.offsets_[i] + adj[i].size();
  graph.ids_.reserve(graph.offsets_[n]);
  for (const auto& list : adj) graph.ids_.insert(graph.ids_.end(), list.begin(), list.end());
  return graph;
}

StatusOr<AnnSearchResult> RoarGraph::Search(std::span<const float> query, size_t k,
                                            size_t queue_capacity) const {
  const size_t dim = std::visit([](const auto& keys) { return keys.dim; }, keys_);
  if (query.size() != dim) {
    return InvalidArgument("RoarGraph::Search: query has {} values, keys have dim {}", query.size(),
                           dim);
  }
  if (queue_capacity == 0) return InvalidArgument("RoarGraph::Search: queue_capacity is 0");
  AnnSearchResult result;
  if (size() == 0 || k == 0) return result;
  std::vector<PoolEntry> pool;
  auto neighbors_of = [this](uint32_t id) { return Neighbors(id); };
  result.scanned = std::visit(
      [&](const auto& keys) {
        return BestFirstSearch(keys, query.data(), entry_, std::max(queue_capacity, k),
                               neighbors_of, pool);
      },
      keys_);
  const size_t count = std::min(k, pool.size());
  result.top.reserve(count);
  for (size_t i = 0; i < count; ++i) result.top.push_back({pool[i].id, pool[i].score});
  return result;
}

StatusOr<GroupSearchResult> RoarGraph::SearchGroup(std::span<const float> queries, size_t group,
                                                   size_t k, size_t queue_capacity) const {
  const size_t dim = std::visit([](const auto& keys) { return keys.dim; }, keys_);
  if (group == 0 || queries.size() != group * dim) {
    return InvalidArgument("RoarGraph::SearchGroup: {} values for {} queries of dim {}",
                           queries.size(), group, dim);
  }
  if (queue_capacity == 0) return InvalidArgument("RoarGraph::SearchGroup: queue_capacity is 0");
  GroupSearchResult result;
  result.top.resize(group);
  if (size() == 0 || k == 0) return result;
  // Every query keeps a pool of its own, as its own search would, and the traversal expands each
  // pool's best unexpanded key in turn; a key is read and scored once for all of them (the first
  // time any expansion reaches it) and offered to every pool, and a key one query expanded is not
  // expanded again for another. Each pool is offered every key the group's expansions reach,
  // while the group pays for the union of those keys, not a sum over its queries.
  const size_t capacity = std::max(queue_capacity, k);
  std::vector<std::vector<PoolEntry>> pools(group);
  std::vector<size_t> cursor(group, 0);  // every entry of pools[g] before it is expanded
  std::vector<float> scores(group);
  thread_local VisitedKeys visited, expanded;
  visited.Start(size());
  expanded.Start(size());
  result.scanned = std::visit(
      [&](const auto& keys) {
        size_t scanned = 0;
        auto score = [&](uint32_t id) {
          InnerProducts(keys.Row(id), queries.data(), group, dim, scores.data());
          ++scanned;
          for (size_t g = 0; g < group; ++g) {
            cursor[g] = std::min(cursor[g], OfferToPool(pools[g], {id, scores[g]}, capacity));
          }
        };
        visited.Visit(entry_);
        score(entry_);
        for (bool progress = true; progress;) {
          progress = false;
          for (size_t g = 0; g < group; ++g) {
            std::vector<PoolEntry>& pool = pools[g];
            // This pool's best key not yet expanded (by this query or another).
            while (cursor[g] < pool.size() &&
                   (pool[cursor[g]].expanded || expanded.Seen(pool[cursor[g]].id))) {
              pool[cursor[g]].expanded = true;
              ++cursor[g];
            }
            if (cursor[g] == pool.size()) continue;
            progress = true;
            const uint32_t current = pool[cursor[g]].id;
            pool[cursor[g]].expanded = true;
            expanded.Visit(current);
            PrefetchUnvisited(keys, Neighbors(current), visited);
            for (uint32_t nb : Neighbors(current)) {
              if (!visited.Visit(nb)) score(nb);
            }
          }
        }
        return scanned;
      },
      keys_);
  for (size_t g = 0; g < group; ++g) {
    const size_t count = std::min(k, pools[g].size());
    for (size_t i = 0; i < count; ++i) result.top[g].push_back({pools[g][i].id, pools[g][i].score});
  }
  return result;
}

}  // namespace headwise::kvcache::ann
