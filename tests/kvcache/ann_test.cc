// The ANN indexes of kvcache/ann against exact search: ExactTopK against a brute-force loop, the
// RoarGraph search equal to exact top-k when its queue holds every key, its recall and scanned
// fraction on synthetic out-of-distribution data (keys and queries from different Gaussians, as
// attention's keys and queries are), determinism over thread counts, and empty / tiny inputs.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <deque>
#include <random>
#include <vector>

#include "kvcache/ann/exact_search.h"
#include "kvcache/ann/inner_products.h"
#include "kvcache/ann/roar_graph.h"
#ifdef HEADWISE_HAVE_HNSWLIB
#include "kvcache/ann/hnsw_baseline.h"
#endif

namespace headwise::kvcache::ann {
namespace {

struct Matrix {
  std::vector<float> values;
  size_t rows = 0;
  size_t dim = 0;
  MatrixView View() const { return {values.data(), rows, dim}; }
  std::span<const float> Row(size_t i) const { return {values.data() + i * dim, dim}; }
};

Matrix Gaussian(size_t rows, size_t dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Matrix m{std::vector<float>(rows * dim), rows, dim};
  for (float& v : m.values) v = normal(rng);
  return m;
}

// Keys ~ N(0, I) + a shared offset; queries ~ N(mu, diag(sigma^2)) with mu and sigma unlike the
// keys': the OOD setting of RetrievalAttention, where the query's top keys are far from the query
// in key space.
struct OodData {
  Matrix keys, train_queries, test_queries;
};

OodData MakeOod(size_t n, size_t n_train, size_t n_test, size_t dim, uint32_t seed) {
  OodData data;
  data.keys = Gaussian(n, dim, seed);
  const Matrix key_offset = Gaussian(1, dim, seed + 1);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < dim; ++j) data.keys.values[i * dim + j] += key_offset.values[j];
  }
  const Matrix mu = Gaussian(1, dim, seed + 2);
  std::vector<float> sigma(dim);
  std::mt19937 rng(seed + 3);
  std::uniform_real_distribution<float> uniform(0.25f, 2.0f);
  for (float& s : sigma) s = uniform(rng);
  auto queries = [&](size_t rows, uint32_t s) {
    Matrix q = Gaussian(rows, dim, s);
    for (size_t i = 0; i < rows; ++i) {
      for (size_t j = 0; j < dim; ++j) {
        float& v = q.values[i * dim + j];
        v = 2.0f * mu.values[j] + sigma[j] * v;
      }
    }
    return q;
  };
  data.train_queries = queries(n_train, seed + 4);
  data.test_queries = queries(n_test, seed + 5);
  return data;
}

std::vector<ScoredId> BruteForce(const Matrix& keys, std::span<const float> query, size_t k) {
  std::vector<ScoredId> all;
  for (size_t i = 0; i < keys.rows; ++i) {
    float score = 0.0f;
    for (size_t j = 0; j < keys.dim; ++j) score += keys.values[i * keys.dim + j] * query[j];
    all.push_back({static_cast<uint32_t>(i), score});
  }
  std::stable_sort(all.begin(), all.end(),
                   [](const ScoredId& a, const ScoredId& b) { return a.score > b.score; });
  all.resize(std::min(k, all.size()));
  return all;
}

std::vector<uint32_t> Ids(const std::vector<ScoredId>& list) {
  std::vector<uint32_t> ids;
  for (const ScoredId& s : list) ids.push_back(s.id);
  return ids;
}

size_t CountReachable(const RoarGraph& graph) {
  if (graph.size() == 0) return 0;
  std::vector<uint8_t> seen(graph.size(), 0);
  std::deque<uint32_t> queue{graph.entry_point()};
  seen[graph.entry_point()] = 1;
  size_t count = 1;
  while (!queue.empty()) {
    const uint32_t id = queue.front();
    queue.pop_front();
    for (uint32_t nb : graph.Neighbors(id)) {
      if (!seen[nb]) {
        seen[nb] = 1;
        ++count;
        queue.push_back(nb);
      }
    }
  }
  return count;
}

TEST_CASE("ExactTopK equals a brute-force loop, ties to the lower id", "[ann]") {
  for (size_t dim : {64, 13}) {
    Matrix keys = Gaussian(1000, dim, 7);
    // Rows 500..509 copy row 3, so their scores tie with row 3's for every query.
    for (size_t r = 500; r < 510; ++r) {
      std::copy_n(keys.values.begin() + 3 * dim, dim, keys.values.begin() + r * dim);
    }
    const Matrix queries = Gaussian(20, dim, 8);
    for (size_t q = 0; q < queries.rows; ++q) {
      auto exact = ExactTopK(keys.View(), queries.Row(q), 50);
      REQUIRE(exact.ok());
      const auto brute = BruteForce(keys, queries.Row(q), 50);
      REQUIRE(exact->size() == 50);
      // Same set; same order wherever the brute-force scores differ by more than rounding.
      std::vector<uint32_t> a = Ids(*exact), b = Ids(brute);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      CHECK(a == b);
      for (size_t i = 0; i + 1 < exact->size(); ++i)
        CHECK(BetterThan((*exact)[i], (*exact)[i + 1]));
      for (size_t i = 0; i < exact->size(); ++i)
        CHECK((*exact)[i].score == Approx(brute[i].score).margin(1e-4));
      // The tied copies of row 3: if one is in, row 3 is in, and before it.
      auto it3 =
          std::find_if(exact->begin(), exact->end(), [](const ScoredId& s) { return s.id == 3; });
      auto it500 =
          std::find_if(exact->begin(), exact->end(), [](const ScoredId& s) { return s.id == 500; });
      if (it500 != exact->end()) CHECK((it3 != exact->end() && it3 < it500));
    }
    for (int threads : {1, 3}) {
      auto batch = ExactTopKBatch(keys.View(), queries.View(), 50, threads);
      REQUIRE(batch.ok());
      REQUIRE(batch->size() == queries.rows);
      for (size_t q = 0; q < queries.rows; ++q)
        CHECK((*batch)[q] == *ExactTopK(keys.View(), queries.Row(q), 50));
    }
  }
}

TEST_CASE("ExactTopK on empty and tiny inputs, and bad shapes", "[ann]") {
  const Matrix keys = Gaussian(5, 8, 1);
  const Matrix query = Gaussian(1, 8, 2);
  auto few = ExactTopK(keys.View(), query.Row(0), 100);
  REQUIRE(few.ok());
  CHECK(Ids(*few) == Ids(BruteForce(keys, query.Row(0), 100)));
  CHECK(few->size() == 5);
  CHECK(ExactTopK(keys.View(), query.Row(0), 0)->empty());
  const MatrixView no_keys{nullptr, 0, 8};
  CHECK(ExactTopK(no_keys, query.Row(0), 10)->empty());
  CHECK(ExactTopKBatch(keys.View(), MatrixView{nullptr, 0, 8}, 3, 2)->empty());
  CHECK_FALSE(ExactTopK(keys.View(), std::span<const float>(query.values.data(), 7), 3).ok());
  CHECK_FALSE(ExactTopKBatch(keys.View(), Gaussian(2, 9, 3).View(), 3, 1).ok());
  CHECK_FALSE(ExactTopK(MatrixView{nullptr, 4, 8}, query.Row(0), 3).ok());
}

// The graph of `data` with the default parameters, built on 2 threads.
RoarGraph BuildOn(const OodData& data) {
  RoarGraphParams params;
  params.num_threads = 2;
  auto graph = RoarGraph::Build(data.keys.View(), data.train_queries.View(), params);
  REQUIRE(graph.ok());
  return std::move(graph).value();
}

TEST_CASE("RoarGraph search with a queue of every key is exact", "[ann]") {
  const OodData data = MakeOod(2000, 500, 20, 32, 11);
  const RoarGraph graph = BuildOn(data);
  CHECK(CountReachable(graph) == 2000);
  for (size_t q = 0; q < data.test_queries.rows; ++q) {
    auto found = graph.Search(data.test_queries.Row(q), 100, 2000);
    REQUIRE(found.ok());
    CHECK(found->scanned == 2000);
    CHECK(found->top == *ExactTopK(data.keys.View(), data.test_queries.Row(q), 100));
  }
  // Out-of-distribution search too: a key-distribution query.
  const Matrix other = Gaussian(3, 32, 99);
  for (size_t q = 0; q < other.rows; ++q) {
    CHECK(graph.Search(other.Row(q), 10, 2000)->top ==
          *ExactTopK(data.keys.View(), other.Row(q), 10));
  }
}

// One traversal for a group: with a queue of every key each query's list is its exact top-k;
// a group of one is Search, list and count; bad shapes are refused.
// The group search's scoring: every query's inner product bit for bit InnerProduct's, on the
// vector path (dims of whole groups of eight) and off it, for group sizes around its pass of four.
TEST_CASE("InnerProducts equals InnerProduct per query, bit for bit", "[ann]") {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (size_t dim : {8, 16, 64, 128, 13}) {
    for (size_t count : {1, 2, 3, 4, 5, 7, 8, 9}) {
      INFO("dim " << dim << " count " << count);
      std::vector<float> key(dim), queries(count * dim), out(count);
      std::vector<kernels::cpu::Bf16> key16(dim);
      for (float& x : queries) x = normal(rng);
      for (size_t i = 0; i < dim; ++i) {
        key16[i].bits = F32ToBF16(normal(rng));
        key[i] = kernels::cpu::ToF32(key16[i]);
      }
      for (int rows = 0; rows < 2; ++rows) {
        if (rows == 0) {
          InnerProducts(key.data(), queries.data(), count, dim, out.data());
        } else {
          InnerProducts(key16.data(), queries.data(), count, dim, out.data());
        }
        for (size_t g = 0; g < count; ++g) {
          const float want = InnerProduct(key.data(), queries.data() + g * dim, dim);
          CHECK(std::memcmp(&out[g], &want, sizeof(float)) == 0);
        }
      }
    }
  }
}

TEST_CASE("RoarGraph group search", "[ann]") {
  const OodData data = MakeOod(2000, 500, 8, 32, 12);
  const RoarGraph graph = BuildOn(data);
  const size_t group = 4;
  std::vector<float> queries;
  for (size_t q = 0; q < group; ++q) {
    const auto row = data.test_queries.Row(q);
    queries.insert(queries.end(), row.begin(), row.end());
  }
  auto all = graph.SearchGroup(queries, group, 50, 2000);
  REQUIRE(all.ok());
  CHECK(all->scanned == 2000);
  REQUIRE(all->top.size() == group);
  for (size_t q = 0; q < group; ++q) {
    CHECK(all->top[q] == *ExactTopK(data.keys.View(), data.test_queries.Row(q), 50));
  }
  // A small queue: each query's list is its best of the keys scored, so never better than exact
  // and each entry's score is its own inner product.
  auto some = graph.SearchGroup(queries, group, 50, 64);
  REQUIRE(some.ok());
  CHECK(some->scanned < 2000);
  double group_recall = 0, single_recall = 0;
  size_t single_scanned = 0;
  for (size_t q = 0; q < group; ++q) {
    REQUIRE(some->top[q].size() == 50);
    const auto exact = *ExactTopK(data.keys.View(), data.test_queries.Row(q), 50);
    CHECK(some->top[q].front().score <= exact.front().score);
    CHECK(std::is_sorted(some->top[q].begin(), some->top[q].end(), BetterThan));
    auto single = graph.Search(data.test_queries.Row(q), 50, 64);
    REQUIRE(single.ok());
    group_recall += Recall(some->top[q], exact);
    single_recall += Recall(single->top, exact);
    single_scanned += single->scanned;
  }
  // Each query's pool is offered every key the traversal scores: on this data its lists retrieve
  // at least as well as separate searches with the same queue (measured, not guaranteed), and the
  // group scores fewer keys than they do.
  INFO("recall: group " << group_recall / group << ", separate " << single_recall / group);
  CHECK(group_recall >= single_recall);
  CHECK(some->scanned < single_scanned);
  for (size_t q = 0; q < 3; ++q) {
    const auto row = data.test_queries.Row(q);
    auto one = graph.SearchGroup(row, 1, 20, 80);
    auto single = graph.Search(row, 20, 80);
    REQUIRE(one.ok());
    REQUIRE(single.ok());
    CHECK(one->top[0] == single->top);
    CHECK(one->scanned == single->scanned);
  }
  CHECK_FALSE(graph.SearchGroup(queries, 3, 10, 64).ok());
  CHECK_FALSE(graph.SearchGroup(queries, 0, 10, 64).ok());
  CHECK_FALSE(graph.SearchGroup(queries, group, 10, 0).ok());
}

TEST_CASE("RoarGraph build is the same for every thread count", "[ann]") {
  const OodData data = MakeOod(3000, 800, 0, 32, 21);
  std::vector<RoarGraph> graphs;
  for (int threads : {1, 2, 3}) {
    RoarGraphParams params;
    params.num_threads = threads;
    auto graph = RoarGraph::Build(data.keys.View(), data.train_queries.View(), params);
    REQUIRE(graph.ok());
    graphs.push_back(std::move(*graph));
  }
  for (size_t g = 1; g < graphs.size(); ++g) {
    CHECK(graphs[g].entry_point() == graphs[0].entry_point());
    REQUIRE(graphs[g].num_edges() == graphs[0].num_edges());
    for (uint32_t i = 0; i < 3000; ++i) {
      auto a = graphs[0].Neighbors(i), b = graphs[g].Neighbors(i);
      REQUIRE(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    }
  }
}

// The engine finds step 1 (each training query's exact neighbours) on the device and hands it to
// Build: given the same lists, the graph is the one Build makes itself. Lists of another size or
// with an id outside the keys are refused.
TEST_CASE("RoarGraph built from given neighbour lists equals its own build", "[ann]") {
  const OodData data = MakeOod(2000, 600, 0, 32, 31);
  RoarGraphParams params;
  params.num_threads = 2;
  auto own = RoarGraph::Build(data.keys.View(), data.train_queries.View(), params);
  REQUIRE(own.ok());
  auto knn = ExactTopKBatch(data.keys.View(), data.train_queries.View(), params.n_q, 2);
  REQUIRE(knn.ok());
  std::vector<uint32_t> lists;
  for (const auto& row : *knn) {
    for (const ScoredId& s : row) lists.push_back(s.id);
  }
  auto given = RoarGraph::Build(data.keys.View(), data.train_queries.View(), params, lists);
  REQUIRE(given.ok());
  CHECK(given->entry_point() == own->entry_point());
  REQUIRE(given->num_edges() == own->num_edges());
  for (uint32_t i = 0; i < 2000; ++i) {
    auto a = own->Neighbors(i), b = given->Neighbors(i);
    REQUIRE(std::equal(a.begin(), a.end(), b.begin(), b.end()));
  }
  std::vector<uint32_t> short_lists(lists.begin(), lists.end() - 1);
  CHECK_FALSE(
      RoarGraph::Build(data.keys.View(), data.train_queries.View(), params, short_lists).ok());
  lists[5] = 2000;
  CHECK_FALSE(RoarGraph::Build(data.keys.View(), data.train_queries.View(), params, lists).ok());
}

TEST_CASE("RoarGraph on empty and tiny inputs", "[ann]") {
  RoarGraphParams params;
  const Matrix query = Gaussian(1, 8, 2);
  {
    auto graph = RoarGraph::Build(MatrixView{nullptr, 0, 8}, MatrixView{nullptr, 0, 8}, params);
    REQUIRE(graph.ok());
    CHECK(graph->size() == 0);
    auto found = graph->Search(query.Row(0), 10, 50);
    REQUIRE(found.ok());
    CHECK(found->top.empty());
    CHECK(found->scanned == 0);
  }
  for (size_t n : {1, 2, 5, 40}) {
    const Matrix keys = Gaussian(n, 8, 3);
    for (size_t n_train : {0, 1, 7}) {
      const Matrix train = Gaussian(n_train, 8, 4);
      auto graph = RoarGraph::Build(keys.View(), train.View(), params);
      REQUIRE(graph.ok());
      CHECK(CountReachable(*graph) == n);
      // k > N: every key comes back, in exact order (the queue holds them all).
      auto found = graph->Search(query.Row(0), 100, 10);
      REQUIRE(found.ok());
      CHECK(found->top == *ExactTopK(keys.View(), query.Row(0), 100));
    }
  }
  const Matrix keys = Gaussian(10, 8, 3);
  CHECK_FALSE(RoarGraph::Build(keys.View(), Gaussian(3, 7, 4).View(), params).ok());
  RoarGraphParams bad = params;
  bad.candidate_list = 10;
  CHECK_FALSE(RoarGraph::Build(keys.View(), MatrixView{nullptr, 0, 8}, bad).ok());
  auto graph = RoarGraph::Build(keys.View(), MatrixView{nullptr, 0, 8}, params);
  CHECK_FALSE(graph->Search(std::span<const float>(query.values.data(), 7), 3, 10).ok());
  CHECK_FALSE(graph->Search(query.Row(0), 3, 0).ok());
}

struct OodFigures {
  double recall = 0;
  double scanned_fraction = 0;
};

// Mean recall@k and scanned fraction of `search` over the test queries.
template <typename SearchFn>
OodFigures Measure(const OodData& data, size_t k, SearchFn&& search) {
  auto truth = ExactTopKBatch(data.keys.View(), data.test_queries.View(), k, 2);
  REQUIRE(truth.ok());
  OodFigures f;
  for (size_t q = 0; q < data.test_queries.rows; ++q) {
    AnnSearchResult found = search(data.test_queries.Row(q));
    f.recall += Recall(found.top, (*truth)[q]);
    f.scanned_fraction += static_cast<double>(found.scanned) / static_cast<double>(data.keys.rows);
  }
  f.recall /= static_cast<double>(data.test_queries.rows);
  f.scanned_fraction /= static_cast<double>(data.test_queries.rows);
  return f;
}

// Builds the graph over n keys from n prompt queries (as RetrievalAttention does: every query of
// the prompt) and reports recall@100 / scanned for 100 new queries at several queue capacities,
// and HNSW's where hnswlib is built. Returns RoarGraph's figures at L_pq = 100 and HNSW's at
// ef = 400.
struct OodComparison {
  OodFigures roar_graph;
  std::optional<OodFigures> hnsw;
};

OodComparison OodRun(size_t n) {
  const OodData data = MakeOod(n, n, 100, 64, 5);
  RoarGraphParams params;
  params.num_threads = 2;
  const auto start = std::chrono::steady_clock::now();
  auto graph = RoarGraph::Build(data.keys.View(), data.train_queries.View(), params);
  const std::chrono::duration<double> build_time = std::chrono::steady_clock::now() - start;
  REQUIRE(graph.ok());
  REQUIRE(CountReachable(*graph) == n);
  WARN("RoarGraph N=" << n << ": built in " << build_time.count() << " s on 2 threads, "
                      << static_cast<double>(graph->num_edges()) / static_cast<double>(n)
                      << " edges per key");
  OodComparison result;
  for (size_t lpq : {100, 150, 200, 300}) {
    const OodFigures f =
        Measure(data, 100, [&](std::span<const float> q) { return *graph->Search(q, 100, lpq); });
    WARN("RoarGraph N=" << n << " L_pq=" << lpq << ": recall@100 " << f.recall << ", scanned "
                        << 100.0 * f.scanned_fraction << "% of keys");
    if (lpq == 100) result.roar_graph = f;
  }
  // Not under TSan: hnswlib 0.6.2's addPoint takes its locks in two orders (TSan reports a
  // lock-order inversion even from one thread).
#if defined(HEADWISE_HAVE_HNSWLIB) && !defined(__SANITIZE_THREAD__)
  HnswParams hnsw_params;
  hnsw_params.num_threads = 1;
  auto hnsw = HnswIndex::Build(data.keys.View(), hnsw_params);
  REQUIRE(hnsw.ok());
  for (size_t ef : {100, 400}) {
    hnsw->SetEf(ef);
    const OodFigures f =
        Measure(data, 100, [&](std::span<const float> q) { return *hnsw->Search(q, 100); });
    WARN("HNSW (M=16, ef_construction=200) N=" << n << " ef=" << ef << ": recall@100 " << f.recall
                                               << ", scanned " << 100.0 * f.scanned_fraction
                                               << "% of keys");
    if (ef == 400) result.hnsw = f;
  }
#endif
  return result;
}

// Sanitizer builds (GCC's ASan / TSan macros) run the OOD check at N = 4096: at N = 16384 it takes
// a minute under ASan, and CI runs each test case on 2 cores.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

// Measured here (2 cores), N = 16384: recall@100 0.92 scanning 12.7% at L_pq = 100, 0.95 at
// 16.3% at L_pq = 150; HNSW 0.56 scanning 33% at ef = 400. N = 4096: 0.92 at 25.0%; HNSW 0.74.
// The paper's 1-3% is at 128K+ keys: the scanned count grows sub-linearly (about 1,000 keys at
// N = 4096, 2,100 at 16384, 2,700 at 32768).
TEST_CASE("RoarGraph on OOD data: recall@100 >= 0.9 scanning a small fraction (N=16384)", "[ann]") {
  const size_t n = kSanitized ? 4096 : 16384;
  const OodComparison run = OodRun(n);
  CHECK(run.roar_graph.recall >= 0.9);
  CHECK(run.roar_graph.scanned_fraction < (kSanitized ? 0.30 : 0.15));
  if (run.hnsw) {
    // The point of the attention-aware graph: key-proximity HNSW scans more for less recall.
    CHECK(run.hnsw->scanned_fraction > run.roar_graph.scanned_fraction);
    CHECK(run.hnsw->recall < run.roar_graph.recall - (kSanitized ? 0.1 : 0.2));
  }
}

// Hidden (run by name, about 15 s on 2 cores): the figures at twice the keys.
TEST_CASE("RoarGraph on OOD data, N=32768", "[ann][.]") {
  const OodComparison run = OodRun(32768);
  CHECK(run.roar_graph.recall >= 0.9);
  CHECK(run.roar_graph.scanned_fraction < 0.10);
}

}  // namespace
}  // namespace headwise::kvcache::ann
