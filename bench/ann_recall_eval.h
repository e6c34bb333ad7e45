// Recall of the ANN indexes of kvcache/ann on one KV head's captured keys and queries (issue 17:
// "recall@k against exact top-k per layer, at least 0.9 while scanning at most 3% of the keys").
// Pure: no model, no backend; hw_bench_ann (bench/ann_recall.cc) feeds it what
// bench/ann_capture.h captured from a real model.
//
// One KV head of one layer, as RetrievalAttention splits it (ALGORITHMS.md §5.1): the static set
// (the first `sink` and last `window` prompt positions) stays on the GPU; the indexed keys are the
// prompt's others, positions [sink, L - window), id i being position sink + i. The truth of a test
// query is ExactTopK over the indexed keys. GQA (a KV head serves a group of G query heads), three
// decode-time ways to search:
//   per_head        one search per query head, each scored against that head's own exact top-k;
//   per_head_union  the same searches, the group attending the union of their results: each
//                   head's exact top-k scored against the union (union_size says its size);
//   group_mean      one search with the mean of the group's queries, returning search_k keys,
//                   each head's exact top-k scored against them (search_k = k, 2k, ...);
//   group_search    (RoarGraph, SweepOptions::group_search) one traversal for the group's queries
//                   (RoarGraph::SearchGroup: a pool per query, each key scored once for all of
//                   them), each head taking its own top-k (scanned: keys, each scored G times).
// Indexes: "exact" (ExactTopK over every indexed key: the ceiling of a mode, scanned fraction 1),
// "roargraph" at each queue capacity, "hnsw" at each ef (kvcache::ann::HnswIndex, its inner
// products counted as RoarGraph's are). scanned_frac is the mean over searches of
// scanned / indexed keys; a decode step of the group costs searches_per_step such searches.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "kvcache/ann/exact_search.h"
#include "kvcache/ann/hnsw_baseline.h"  // HnswParams
#include "kvcache/ann/roar_graph.h"

namespace headwise::bench::ann {

using kvcache::ann::MatrixView;

// Positions [begin, end) of an L-token prompt that are indexed: the prompt minus its first `sink`
// and last `window` positions (empty when those cover it).
struct IndexedRange {
  int begin = 0, end = 0;
  int size() const { return end - begin; }
};
IndexedRange IndexedPositions(int prompt_len, int sink, int window);

// The mean of row `row` over the group's query matrices (all of one dim and at least row + 1
// rows), summed in group order.
std::vector<float> GroupMean(std::span<const MatrixView> group, size_t row);

// One KV head's inputs. Views into the capture; ids of `keys` are indexed positions - begin.
struct HeadInput {
  MatrixView keys;                // [N, D]: the indexed keys
  MatrixView train;               // training queries (the group's prompt queries) [Q, D]
  std::vector<MatrixView> tests;  // per query head of the group: test (decode) queries [S, D]
};

struct SweepOptions {
  size_t top_k = 100;
  std::vector<size_t> queues{100, 128, 160, 200, 256, 320, 400, 512, 640, 800, 1024, 1600, 2048};
  std::vector<size_t> efs{100, 200, 400, 800, 1600, 3200, 6400};
  std::vector<size_t> mean_ks{100, 200};  // group_mean's search_k; {} leaves the mode out
  bool group_search = false;              // RoarGraph's group_search mode too (SearchGroup)
  bool hnsw = true;                       // where built (HEADWISE_HAVE_HNSWLIB)
  kvcache::ann::RoarGraphParams roar;     // num_threads is set from `threads`
  kvcache::ann::HnswParams hnsw_params;
  int threads = 1;
  // RoarGraph's step 1 done elsewhere, as the engine does it (the backend's TopKeys): the ids of
  // each training query's k best keys, best first (RoarGraph::Build's train_top). Empty: the
  // build computes them on the CPU. Its time counts in the build's.
  std::function<StatusOr<std::vector<uint32_t>>(const MatrixView& keys, const MatrixView& train,
                                                size_t k)>
      train_top;
};

// Mean over the searches (and heads) of one setting.
struct SettingResult {
  std::string index;  // exact, roargraph, hnsw
  std::string mode;   // per_head, per_head_union, group_mean, group_search
  size_t search_k = 0;
  size_t setting = 0;  // roargraph: queue capacity; hnsw: ef (both as the searches used them:
                       // raised to search_k); exact: search_k
  double recall = 0, recall_min = 0;
  double scanned_frac = 0;       // mean scanned / N per search
  size_t searches = 0;           // searches behind the figures
  size_t searches_per_step = 0;  // searches a decode step of the group costs
  double union_size = 0;         // per_head_union: mean keys in the union
  double search_us = 0;          // mean wall time per search, on one thread
};

struct HeadResult {
  size_t num_keys = 0, num_train = 0, num_tests = 0;  // num_tests: per query head
  double truth_s = 0;                                 // exact top-k of every test query
  double roar_build_s = 0, hnsw_build_s = 0;          // wall time on `threads` threads
  size_t roar_edges = 0;
  std::vector<SettingResult> settings;  // by index, mode, search_k, then setting ascending
};

// Each test query's truth: truth[h][s] = ExactTopK(in.keys, in.tests[h].Row(s), top_k), spread
// over `threads` threads.
StatusOr<std::vector<std::vector<std::vector<kvcache::ann::ScoredId>>>> Truth(const HeadInput& in,
                                                                              size_t top_k,
                                                                              int threads);

// Builds the indexes over `in.keys` and measures every setting. Errors: views of different dims,
// no test matrix or ones of different row counts, top_k 0. With fewer than top_k indexed keys
// the truth is all of them.
StatusOr<HeadResult> EvaluateHead(const HeadInput& in, const SweepOptions& options);

// A (index, mode, search_k) series' results at increasing settings, as recall and scanned
// fraction; the first setting whose recall reaches `target`, if any.
std::optional<size_t> FirstReaching(std::span<const SettingResult> series, double target);

// Weighted means of the same settings over several heads (layers, or a whole model): `parts`
// must list the same settings in the same order; each part weighs by its searches. recall_min is
// the minimum over the parts.
StatusOr<std::vector<SettingResult>> MeanOver(std::span<const std::vector<SettingResult>> parts);

// Consecutive runs of `settings` with the same (index, mode, search_k): [begin, end) each.
std::vector<std::pair<size_t, size_t>> Series(std::span<const SettingResult> settings);

}  // namespace headwise::bench::ann
