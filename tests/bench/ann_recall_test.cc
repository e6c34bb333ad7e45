// hw_bench_ann's pieces (bench/ann_capture.h, bench/ann_recall_eval.h): the capture of a real
// model's queries and keys on the CPU backend (TinyStories-656K, a GQA model: 8 query heads on 4
// KV heads) checked against what the model's attention read, and the recall measurement on
// constructed and captured data: exact search and RoarGraph with a queue of every key score
// recall 1, the static set (sinks and window) is never indexed, and the bookkeeping (group-mean
// query, means over heads, the first setting reaching a target).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "bench/ann_capture.h"
#include "bench/ann_recall_eval.h"
#include "engine/attention/head_profile.h"
#include "engine/model_loader.h"
#include "eval/haystack.h"
#include "eval/tasks.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace headwise::bench::ann {
namespace {

using kvcache::ann::ScoredId;

struct Matrix {
  std::vector<float> values;
  size_t rows = 0, dim = 0;
  MatrixView View() const { return {values.data(), rows, dim}; }
};

Matrix Gaussian(size_t rows, size_t dim, uint32_t seed, float offset = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Matrix m{std::vector<float>(rows * dim), rows, dim};
  for (float& v : m.values) v = normal(rng) + offset;
  return m;
}

SettingResult Setting(std::string index, std::string mode, size_t setting, double recall,
                      double scanned, size_t searches) {
  SettingResult r;
  r.index = std::move(index);
  r.mode = std::move(mode);
  r.search_k = 10;
  r.setting = setting;
  r.recall = r.recall_min = recall;
  r.scanned_frac = scanned;
  r.searches = searches;
  return r;
}

const SettingResult* Find(const std::vector<SettingResult>& all, const std::string& index,
                          const std::string& mode, size_t search_k, size_t setting) {
  for (const SettingResult& r : all) {
    if (r.index == index && r.mode == mode && r.search_k == search_k && r.setting == setting)
      return &r;
  }
  return nullptr;
}

TEST_CASE("IndexedPositions drops the sinks and the window", "[bench][ann]") {
  auto r = IndexedPositions(1000, 128, 512);
  CHECK(r.begin == 128);
  CHECK(r.end == 488);
  CHECK(r.size() == 360);
  r = IndexedPositions(600, 128, 512);  // the static set covers the prompt
  CHECK(r.size() == 0);
  r = IndexedPositions(100, 0, 0);
  CHECK((r.begin == 0 && r.end == 100));
  r = IndexedPositions(50, 80, 0);
  CHECK(r.size() == 0);
}

TEST_CASE("GroupMean averages one row over the group's heads", "[bench][ann]") {
  const std::vector<float> a{1, 2, 3, 4, 5, 6}, b{3, 6, 9, 12, 15, 18};
  const std::vector<MatrixView> group{{a.data(), 2, 3}, {b.data(), 2, 3}};
  CHECK(GroupMean(group, 0) == std::vector<float>{2, 4, 6});
  CHECK(GroupMean(group, 1) == std::vector<float>{8, 10, 12});
  CHECK(GroupMean({}, 0).empty());
}

TEST_CASE("Series, FirstReaching and MeanOver", "[bench][ann]") {
  const std::vector<SettingResult> a{
      Setting("roargraph", "per_head", 100, 0.80, 0.01, 10),
      Setting("roargraph", "per_head", 200, 0.92, 0.02, 10),
      Setting("roargraph", "per_head", 400, 0.99, 0.04, 10),
      Setting("hnsw", "per_head", 100, 0.50, 0.30, 10),
  };
  const auto series = Series(a);
  REQUIRE(series.size() == 2);
  CHECK(series[0] == std::pair<size_t, size_t>{0, 3});
  CHECK(series[1] == std::pair<size_t, size_t>{3, 4});
  CHECK(FirstReaching(std::span(a).subspan(0, 3), 0.9) == std::optional<size_t>(1));
  CHECK(FirstReaching(std::span(a).subspan(0, 3), 0.995) == std::nullopt);
  CHECK(FirstReaching(std::span(a).subspan(3, 1), 0.9) == std::nullopt);

  std::vector<SettingResult> b = a;
  for (SettingResult& r : b) {
    r.recall = r.recall_min = 1.0;
    r.scanned_frac *= 3;
    r.searches = 30;  // weighs three times a's
  }
  auto mean = MeanOver(std::vector<std::vector<SettingResult>>{a, b});
  REQUIRE(mean.ok());
  REQUIRE(mean->size() == a.size());
  CHECK((*mean)[0].recall == Approx((0.80 * 10 + 1.0 * 30) / 40));
  CHECK((*mean)[0].scanned_frac == Approx((0.01 * 10 + 0.03 * 30) / 40));
  CHECK((*mean)[0].recall_min == Approx(0.80));
  CHECK((*mean)[0].searches == 40);
  b[1].setting = 256;
  CHECK_FALSE(MeanOver(std::vector<std::vector<SettingResult>>{a, b}).ok());
}

TEST_CASE("EvaluateHead: exact and a full-queue RoarGraph score recall 1", "[bench][ann]") {
  // Keys and queries from different Gaussians (OOD, as attention's); a group of 3 query heads.
  const Matrix keys = Gaussian(600, 16, 1, 0.5f);
  const Matrix train = Gaussian(900, 16, 2, -0.3f);
  const Matrix t0 = Gaussian(5, 16, 3, -0.3f), t1 = Gaussian(5, 16, 4, -0.3f);
  HeadInput in{keys.View(), train.View(), {t0.View(), t1.View(), t0.View()}};
  SweepOptions o;
  o.top_k = 10;
  o.queues = {10, 50, 600};
  o.efs = {10, 600};
  o.mean_ks = {10, 20};
  o.group_search = true;
  o.threads = 2;
  auto r = EvaluateHead(in, o);
  REQUIRE(r.ok());
  CHECK(r->num_keys == 600);
  CHECK(r->num_train == 900);
  CHECK(r->num_tests == 5);
  CHECK(r->roar_edges > 0);

  const SettingResult* exact = Find(r->settings, "exact", "per_head", 10, 10);
  REQUIRE(exact != nullptr);
  CHECK(exact->recall == 1.0);
  CHECK(exact->scanned_frac == 1.0);
  CHECK(exact->searches == 15);
  CHECK(exact->searches_per_step == 3);

  const SettingResult* full = Find(r->settings, "roargraph", "per_head", 10, 600);
  REQUIRE(full != nullptr);
  CHECK(full->recall == 1.0);
  CHECK(full->recall_min == 1.0);
  CHECK(full->scanned_frac <= 1.0);
  const SettingResult* small = Find(r->settings, "roargraph", "per_head", 10, 10);
  REQUIRE(small != nullptr);
  CHECK(small->scanned_frac < full->scanned_frac);

  // The union of the group's results holds each head's own: at least per-head recall; heads 0
  // and 2 share queries, so a union holds at most 2k keys.
  for (size_t q : {10, 50, 600}) {
    const SettingResult* per = Find(r->settings, "roargraph", "per_head", 10, q);
    const SettingResult* uni = Find(r->settings, "roargraph", "per_head_union", 10, q);
    REQUIRE((per != nullptr && uni != nullptr));
    CHECK(uni->recall >= per->recall);
    CHECK(uni->scanned_frac == per->scanned_frac);
    CHECK(uni->union_size <= 20.0);
    CHECK(uni->union_size >= 10.0);
  }

  // The group-mean query is no head's own: exact search with it is the ceiling of its mode; at
  // k = 20 it holds at least as much of each head's top 10 as at k = 10. A RoarGraph queue of
  // every key reaches the ceiling.
  const SettingResult* mean10 = Find(r->settings, "exact", "group_mean", 10, 10);
  const SettingResult* mean20 = Find(r->settings, "exact", "group_mean", 20, 20);
  REQUIRE((mean10 != nullptr && mean20 != nullptr));
  CHECK(mean10->recall < 1.0);
  CHECK(mean20->recall >= mean10->recall);
  CHECK(mean10->searches_per_step == 1);
  const SettingResult* roar_mean = Find(r->settings, "roargraph", "group_mean", 20, 600);
  REQUIRE(roar_mean != nullptr);
  CHECK(roar_mean->recall == mean20->recall);
  // One traversal for the group with a queue of every key scores every key for every head: each
  // head's own top 10, one search a step.
  const SettingResult* group_full = Find(r->settings, "roargraph", "group_search", 10, 600);
  REQUIRE(group_full != nullptr);
  CHECK(group_full->recall == 1.0);
  CHECK(group_full->searches_per_step == 1);
  CHECK(group_full->searches == 5);
  // Settings below search_k are raised to it: group_mean k=20 has no queue 10.
  CHECK(Find(r->settings, "roargraph", "group_mean", 20, 10) == nullptr);
  CHECK(Find(r->settings, "roargraph", "group_mean", 20, 20) != nullptr);
#ifdef HEADWISE_HAVE_HNSWLIB
  const SettingResult* hnsw = Find(r->settings, "hnsw", "per_head", 10, 600);
  REQUIRE(hnsw != nullptr);
  CHECK(hnsw->recall > 0.5);
  CHECK(hnsw->scanned_frac > 0.0);
  // hnswlib's own count adds already-visited neighbours: never below the computed distances.
#endif

  SECTION("bad inputs") {
    HeadInput bad = in;
    bad.tests.clear();
    CHECK_FALSE(EvaluateHead(bad, o).ok());
    bad = in;
    const Matrix short_test = Gaussian(4, 16, 5);
    bad.tests[1] = short_test.View();
    CHECK_FALSE(EvaluateHead(bad, o).ok());
    bad = in;
    const Matrix other_dim = Gaussian(5, 8, 6);
    bad.tests[0] = other_dim.View();
    CHECK_FALSE(EvaluateHead(bad, o).ok());
    SweepOptions zero = o;
    zero.top_k = 0;
    CHECK_FALSE(EvaluateHead(in, zero).ok());
  }
}

// A short task prompt for TinyStories (no chat template: raw form), in a haystack of its kind.
std::vector<int32_t> TinyPrompt(const tokenizer::Tokenizer& tok, int length, int decode_steps) {
  std::string text;
  const char* sentences[] = {
      "Tom had a red ball.",           "He liked to play in the park.",
      "One day the ball rolled away.", "Lily saw it under a big tree.",
      "She gave it back to Tom.",      "They were happy and played together."};
  for (int i = 0; i < 40; ++i) text += std::string(sentences[i % 6]) + " ";
  auto haystack = eval::Haystack::FromText(text);
  REQUIRE(haystack.ok());
  const eval::TaskBuilder builder(*haystack, tok, nullptr);
  auto task = eval::FindTask("niah_single");
  REQUIRE(task.ok());
  auto sample = builder.Build(*task, length, decode_steps, 0.5, 1, 0);
  REQUIRE(sample.ok());
  return sample->prompt_ids;
}

TEST_CASE("CaptureRun on TinyStories: the keys and queries attention used", "[bench][ann]") {
  auto backend = kernels::CreateCpuBackend(2);
  auto loaded = engine::LoadModel(testing::SharedDir() + "/models/tinystories-656k",
                                  engine::LoadOptions{}, *backend);
  REQUIRE(loaded.ok());
  models::LlamaModel& model = *loaded->model;
  const models::ModelConfig& c = model.config();
  REQUIRE(c.num_heads == 2 * c.num_kv_heads);  // GQA

  const int decode_steps = 4;
  const std::vector<int32_t> prompt = TinyPrompt(*loaded->tokenizer, 300, decode_steps);
  const int L = static_cast<int>(prompt.size());
  REQUIRE(L > 200);
  CaptureOptions o;
  o.decode_steps = decode_steps;
  o.prefill_chunk = 128;  // several chunks: keys of earlier chunks are read from the pool
  const size_t d = static_cast<size_t>(c.head_dim);

  // What the last decode step's attention read, seen beside the capture: every prompt key through
  // the step's block table, and each query head's attention row.
  std::vector<std::vector<float>> table_keys(static_cast<size_t>(c.num_layers));
  std::vector<std::vector<std::vector<float>>> rows(static_cast<size_t>(c.num_layers));
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  Status rows_status = Status::Ok();
  auto also = [&](int layer, const Tensor& q, const kernels::KvPoolView& pool,
                  const kernels::PagedAttentionBatch& batch) {
    const int32_t pos = batch.token_pos.ptr<int32_t>()[0];
    if (q.dim(0) != 1 || pos != L + decode_steps - 1) return;
    const kernels::BlockTable& t = batch.table;
    const auto* heads = reinterpret_cast<const kernels::KvHead*>(t.heads.ptr<int32_t>());
    std::vector<float>& keys = table_keys[static_cast<size_t>(layer)];
    keys.assign(static_cast<size_t>(c.num_kv_heads) * static_cast<size_t>(L) * d, 0);
    for (int h = 0; h < c.num_kv_heads; ++h) {
      for (int j = 0; j < L; ++j) {
        const int64_t page = int64_t{t.blocks.ptr<int32_t>()[j / pool.page_size]} +
                             heads[t.seq_layout.ptr<int32_t>()[0] * t.num_kv_heads() + h].page;
        const float* k = pool.k.ptr<float>() + (page * pool.page_size + j % pool.page_size) * d;
        std::copy_n(k, d, keys.begin() + (static_cast<ptrdiff_t>(h) * L + j) * d);
      }
    }
    auto& layer_rows = rows[static_cast<size_t>(layer)];
    layer_rows.assign(static_cast<size_t>(c.num_heads), {});
    // No REQUIRE in here: it would throw through the model's forward pass.
    Status s = engine::attention::ForEachAttentionRow(
        q, pool, batch, scale, 1, [&](int64_t, int head, int32_t, std::span<const float> probs) {
          layer_rows[static_cast<size_t>(head)].assign(probs.begin(), probs.end());
        });
    if (!s.ok() && rows_status.ok()) rows_status = s;
  };
  auto run = CaptureRun(model, prompt, o, also);
  REQUIRE(run.ok());
  REQUIRE(rows_status.ok());
  REQUIRE(run->layers.size() == static_cast<size_t>(c.num_layers));
  CHECK(run->generated.size() == static_cast<size_t>(decode_steps + 1));
  CHECK(run->group() == 2);

  for (int l = 0; l < c.num_layers; ++l) {
    const LayerCapture& lc = run->layers[static_cast<size_t>(l)];
    CHECK(lc.num_train == L);
    CHECK(lc.num_test == decode_steps);
    // The captured keys are the ones the cache holds.
    REQUIRE(table_keys[static_cast<size_t>(l)].size() == lc.keys.size());
    CHECK(table_keys[static_cast<size_t>(l)] == lc.keys);
    // The captured last decode query against the captured keys gives the attention row the
    // step computed (over the prompt's keys; the row also holds the decode keys): the ratios
    // p_j / p_0 are exp of the logit differences.
    for (int h = 0; h < c.num_heads; ++h) {
      const std::vector<float>& probs = rows[static_cast<size_t>(l)][static_cast<size_t>(h)];
      REQUIRE(probs.size() == static_cast<size_t>(L + decode_steps));
      const MatrixView test = run->Test(l, h);
      const MatrixView keys = run->Keys(l, h / 2, {0, L});
      const float* q = test.Row(decode_steps - 1);
      const float logit0 = scale * kvcache::ann::InnerProduct(q, keys.Row(0), d);
      for (int j = 0; j < L; j += 7) {
        const float logit = scale * kvcache::ann::InnerProduct(q, keys.Row(j), d);
        CHECK(std::log(probs[static_cast<size_t>(j)] / probs[0]) ==
              Approx(logit - logit0).margin(1e-3));
      }
    }
  }

  SECTION("a training stride keeps every s-th prompt query") {
    CaptureOptions strided = o;
    strided.train_stride = 3;
    auto every3 = CaptureRun(model, prompt, strided);
    REQUIRE(every3.ok());
    for (int l = 0; l < c.num_layers; ++l) {
      const LayerCapture& lc = every3->layers[static_cast<size_t>(l)];
      REQUIRE(lc.num_train == (L + 2) / 3);
      for (int h = 0; h < c.num_heads; ++h) {
        const MatrixView all = run->Train(l, h), some = every3->Train(l, h);
        for (size_t i = 0; i < some.rows; ++i) {
          CHECK(std::equal(some.Row(i), some.Row(i) + d, all.Row(3 * i)));
        }
      }
      CHECK(lc.test == run->layers[static_cast<size_t>(l)].test);
      CHECK(lc.keys == run->layers[static_cast<size_t>(l)].keys);
    }
  }

  SECTION("recall on the captured keys: exact and a full queue are exact, the static set out") {
    const int sink = 16, window = 64;
    const IndexedRange range = IndexedPositions(L, sink, window);
    REQUIRE(range.size() == L - sink - window);
    SweepOptions so;
    so.top_k = 20;
    so.queues = {20, static_cast<size_t>(range.size())};
    so.efs = {20};
    so.mean_ks = {20};
    so.threads = 2;
    for (int l = 0; l < c.num_layers; ++l) {
      for (int g = 0; g < c.num_kv_heads; ++g) {
        const HeadInput in = HeadInputFor(*run, l, g, range);
        REQUIRE(in.keys.rows == static_cast<size_t>(range.size()));
        REQUIRE(in.train.rows == static_cast<size_t>(2 * L));
        REQUIRE(in.tests.size() == 2);
        // The truth is the brute-force top-k over positions [sink, L - window) of the full key
        // matrix: ids are positions - sink, and no static position is among them.
        auto truth = Truth(in, so.top_k, 1);
        REQUIRE(truth.ok());
        const MatrixView all_keys = run->Keys(l, g, {0, L});
        for (int h = 0; h < 2; ++h) {
          const MatrixView test = run->Test(l, 2 * g + h);
          for (size_t s = 0; s < test.rows; ++s) {
            std::vector<ScoredId> brute;
            for (int p = range.begin; p < range.end; ++p) {
              brute.push_back({static_cast<uint32_t>(p - range.begin),
                               kvcache::ann::InnerProduct(test.Row(s), all_keys.Row(p), d)});
            }
            std::sort(brute.begin(), brute.end(), kvcache::ann::BetterThan);
            brute.resize(so.top_k);
            const auto& got = (*truth)[static_cast<size_t>(h)][s];
            REQUIRE(got.size() == so.top_k);
            for (size_t i = 0; i < got.size(); ++i) {
              CHECK(got[i].id == brute[i].id);
              CHECK(got[i].id + static_cast<uint32_t>(range.begin) >= static_cast<uint32_t>(sink));
              CHECK(got[i].id + static_cast<uint32_t>(range.begin) <
                    static_cast<uint32_t>(L - window));
            }
          }
        }
        auto r = EvaluateHead(in, so);
        REQUIRE(r.ok());
        const SettingResult* exact = Find(r->settings, "exact", "per_head", 20, 20);
        const SettingResult* full =
            Find(r->settings, "roargraph", "per_head", 20, static_cast<size_t>(range.size()));
        REQUIRE((exact != nullptr && full != nullptr));
        CHECK(exact->recall == 1.0);
        CHECK(full->recall == 1.0);
        CHECK(full->recall_min == 1.0);
      }
    }
  }
}

TEST_CASE("CaptureRun refuses what it cannot run", "[bench][ann]") {
  auto backend = kernels::CreateCpuBackend(1);
  auto loaded = engine::LoadModel(testing::SharedDir() + "/models/tinystories-656k",
                                  engine::LoadOptions{}, *backend);
  REQUIRE(loaded.ok());
  const std::vector<int32_t> none;
  CHECK_FALSE(CaptureRun(*loaded->model, none, CaptureOptions{}).ok());
  const std::vector<int32_t> prompt(500, 1);
  CaptureOptions o;
  o.decode_steps = 32;  // 532 > the model's 512 positions
  auto r = CaptureRun(*loaded->model, prompt, o);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("context"));
  o.decode_steps = 1;
  o.train_stride = 0;
  CHECK_FALSE(CaptureRun(*loaded->model, prompt, o).ok());
}

}  // namespace
}  // namespace headwise::bench::ann
