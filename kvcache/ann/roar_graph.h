// RoarGraph-style attention-aware index over one KV head's keys (RetrievalAttention,
// ALGORITHMS.md §5.1 and §9.10).
//
// Why: decode queries and keys come from different distributions (OOD), so a graph built from
// key-to-key proximity (HNSW, NSG) leads a query through many keys before it reaches the ones it
// attends to. RoarGraph builds the key graph from the prompt's own queries instead: keys that one
// query retrieves together become neighbours, so the graph's edges follow how queries see the
// keys.
//
// What Build does (a faithful, simple version of matchyc/RoarGraph's projection; names of its
// parameters in brackets):
//  1. Exact top-n_q keys of every training query [M_sq = N_q = 100] (ExactTopKBatch, or given:
//     the engine finds them on the device, Backend::TopKeys).
//  2. Projection of the bipartite graph query -> keys onto keys: as in RoarGraph, each training
//     query hangs off its top-1 key (the "pivot"), and the pivot's neighbour candidates are the
//     other keys of that query's top-n_q list (the union over all queries with that pivot, ranked
//     by closeness to the pivot, at most candidate_list of them [L_pjpq = L = 500]). Which keys
//     are candidates comes from the queries' inner products; closeness between two keys, used to
//     rank and prune them, is (minus) their squared L2 distance: with inner products between keys
//     long keys look close to everything and become hubs every search expands (measured on the
//     test's OOD data, N = 16384: recall@100 0.91 scanning 14.9% with inner products, 0.92
//     scanning 13.0% with L2).
//  3. Pruning to max_degree [M_pjbp = M = 35] with the occlusion rule of HNSW/NSG: a candidate
//     c is skipped when some kept neighbour r is closer to c than the pivot is (a search reaches c
//     through r); this spends the degree on diverse directions instead of M near-copies. Like
//     RoarGraph, the skipped candidates then fill any degree left over, best first: with few
//     candidates a full list searches better.
//  4. Reverse edges (c -> pivot for every pivot -> c), then every key whose list exceeds
//     max_degree is pruned again by step 3's rule, so the graph is navigable both ways.
//  5. Entry point: the key with the highest inner product with the mean training query (the
//     region decode queries start in); key 0 without training queries.
//  6. Connectivity: keys with no out-edge (no query retrieved them) get out-edges from a search of
//     the graph with the key itself as query, ranked by closeness and pruned by step 3; every key
//     the entry point cannot reach gets one in-edge from a reachable key found by the same search
//     (the closest one that has not already taken connect_fanin such links, so no key becomes a
//     hub that every search has to scan: without the cap one key took 450 links). After this every
//     key is reachable from the entry point. Out-degree is max_degree plus the reachability links
//     a key took: at most connect_fanin, unless every key one search found had taken that many
//     (the test's OOD data at N = 32768: largest out-degree 53 with max_degree 35).
// Every step computes each key's (or query's) output from the input and the previous step's
// finished graph only, and merges in id order, so the graph is the same for every num_threads.
//
// Search: best-first graph search from the entry point with a candidate pool of queue_capacity
// [L_pq] entries (at least k); it stops when every pooled key has been expanded. It reports the
// number of keys whose inner product it computed (`scanned`), the figure the paper's "scans
// 1-3% of keys" counts. With queue_capacity >= N it scans every reachable key, so it returns the
// exact top-k.
//
// The graph keeps a view of the keys (it does not copy them): they must outlive it and not move.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <variant>
#include <vector>

#include "core/huge_pages.h"
#include "core/status.h"
#include "kvcache/ann/exact_search.h"

namespace headwise::kvcache::ann {

struct RoarGraphParams {
  size_t n_q = 100;             // exact neighbours per training query [N_q]
  size_t max_degree = 35;       // out-degree bound of the projected graph [M]
  size_t candidate_list = 500;  // neighbour candidates kept before pruning [L]
  // Queue capacity of the connectivity searches (step 6), most of the build's time: keys no
  // training query retrieved need only some way in and out. Measured against 100 (2 threads):
  // random keys N = 32768 with 8192 queries, build 2.06 -> 0.84 s, keys a search scans +3%; the
  // test's OOD data N = 16384, build 3.8 -> 3.3 s, recall@100 at L_pq 100 0.9235 -> 0.925,
  // scanned 12.7% -> 13.5%.
  size_t connect_queue = 32;
  size_t connect_fanin = 8;  // in-links one key may take for reachability (step 6)
  int num_threads = 1;
};

struct AnnSearchResult {
  std::vector<ScoredId> top;  // best first, min(k, N) entries
  size_t scanned = 0;         // inner products computed (keys scanned)
};

// One traversal for a GQA group's queries (RoarGraph::SearchGroup): each query's top-k among the
// keys the traversal scored, and how many keys it scored (each against every query of the group).
struct GroupSearchResult {
  std::vector<std::vector<ScoredId>> top;  // per query, best first
  size_t scanned = 0;
};

class RoarGraph {
 public:
  // train_top: step 1's answer when it was computed elsewhere (the GPU: Backend::TopKeys), the
  // ids of each training query's min(n_q, N) best keys, best first, rows of the queries in order;
  // empty: step 1 runs here.
  // Errors: keys and train_queries of different dim, dim 0, n_q / max_degree == 0,
  // candidate_list < max_degree, train_top of another size or with an id >= N. N == 0 gives an
  // empty graph (every search returns nothing); no training queries gives a graph made by step 6
  // alone.
  static StatusOr<RoarGraph> Build(const MatrixView& keys, const MatrixView& train_queries,
                                   const RoarGraphParams& params,
                                   std::span<const uint32_t> train_top = {});
  // Bf16 keys: the same graph as over their f32 conversions.
  static StatusOr<RoarGraph> Build(const Bf16MatrixView& keys, const MatrixView& train_queries,
                                   const RoarGraphParams& params,
                                   std::span<const uint32_t> train_top = {});

  // Top-k keys for a query (k may exceed N: then all N keys come back). Thread-safe.
  // Errors: query.size() != dim, queue_capacity == 0.
  StatusOr<AnnSearchResult> Search(std::span<const float> query, size_t k,
                                   size_t queue_capacity) const;
  // One traversal for `group` queries ([group, dim], row-major) at once: each query keeps a pool
  // of queue_capacity as its own Search would, the traversal expands every pool's best unexpanded
  // key in turn, and a key is scored once for all queries (the first time an expansion reaches
  // it) and offered to every pool; each query takes the top-k of its pool. A pool is offered the
  // keys every query's expansions reach, not only its own (on the tests' data and at 4K on a real
  // model it retrieves better than a search of its own; that is measured, not guaranteed), and the
  // group reads each key once. A group of one is Search.
  // Thread-safe. Errors: queries.size() != group * dim, group == 0, queue_capacity == 0.
  StatusOr<GroupSearchResult> SearchGroup(std::span<const float> queries, size_t group, size_t k,
                                          size_t queue_capacity) const;

  size_t size() const {
    return std::visit([](const auto& keys) { return keys.rows; }, keys_);
  }
  uint32_t entry_point() const { return entry_; }
  std::span<const uint32_t> Neighbors(uint32_t id) const {
    return {ids_.data() + offsets_[id], ids_.data() + offsets_[id + 1]};
  }
  size_t num_edges() const { return ids_.size(); }

 private:
  template <typename T>
  static StatusOr<RoarGraph> BuildFrom(const RowsOf<T>& keys, const MatrixView& train_queries,
                                       const RoarGraphParams& params,
                                       std::span<const uint32_t> train_top);

  std::variant<MatrixView, Bf16MatrixView> keys_;
  uint32_t entry_ = 0;
  // CSR adjacency: Neighbors(i) = ids_[offsets_[i], offsets_[i+1]); huge-page memory, as a search
  // reads a node's list at random.
  HostVector<size_t> offsets_;
  HostVector<uint32_t> ids_;
};

}  // namespace headwise::kvcache::ann
