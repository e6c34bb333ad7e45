// Offload heads' decode attention on the CPU backend (Backend::OffloadAttention,
// kernels::OffloadDecodeBatch): the device's keys of a compacted (or not yet compacted) offload
// head merged with the host's (o, lse), against the rule computed in double on the same numbers
// (tests/kernels/offload_scenario.h); rows of other heads, dense sequences and dense layouts left
// alone; and the merge itself: two results over disjoint key lists merge into the result over
// their union.
#include "kernels/cpu/offload_attention.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/list_attention.h"
#include "tests/backend_util.h"
#include "tests/kernels/offload_scenario.h"

namespace headwise::kernels {
namespace {

using testing::Upload;
using testing::UploadI32;

// Elements where want is NaN (rows the operation leaves alone) must still be NaN (poisoned);
// elsewhere |got - want| <= tol.
void ExpectRows(const std::vector<float>& got, const std::vector<float>& want, double tol) {
  REQUIRE(got.size() == want.size());
  size_t written = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      INFO("element " << i << " was written, but the operation must leave it alone");
      REQUIRE(std::isnan(got[i]));
      continue;
    }
    ++written;
    INFO("element " << i);
    REQUIRE(std::fabs(got[i] - want[i]) <= tol);
  }
  CHECK(written > 0);
}

TEST_CASE("OffloadAttention merges the device's keys with the host's result", "[kernels]") {
  const unsigned seed = std::random_device{}();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  for (auto [hq, hkv] : {std::pair{4, 4}, std::pair{8, 2}, std::pair{16, 2}}) {
    INFO("hq " << hq << " hkv " << hkv);
    const testing::OffloadScenario s = testing::MakeOffloadScenario(hq, hkv, 16, rng);
    auto be = CreateCpuBackend(2);
    const auto num_seqs = static_cast<int64_t>(s.lens.size());
    const int64_t slots = int64_t{s.table.num_pages} * s.page_size;
    Buffer k = Upload(*be, s.k, {s.table.num_pages, s.page_size, s.d});
    Buffer v = Upload(*be, s.v, {s.table.num_pages, s.page_size, s.d});
    REQUIRE(static_cast<int64_t>(s.k.size()) == slots * s.d);
    KvPoolView pool{k.view(), v.view(), s.page_size};
    testing::BackendBlockTable table = testing::UploadTable(*be, s.table, {});
    Buffer q = Upload(*be, s.q, {num_seqs, hq, s.d});
    Buffer host_out = Upload(*be, s.host_out, {num_seqs, hq, s.d});
    Buffer host_lse = Upload(*be, s.host_lse, {num_seqs, hq});
    Buffer seq_token = UploadI32(*be, s.seq_token, {num_seqs});
    Buffer seq_len = UploadI32(*be, s.seq_len, {num_seqs});
    Buffer out =
        Upload(*be, std::vector<float>(s.q.size(), std::numeric_limits<float>::quiet_NaN()),
               {num_seqs, hq, s.d});
    be->OffloadAttention(
        q.view(), pool,
        {seq_token.view(), seq_len.view(), table.view, host_out.view(), host_lse.view()}, s.scale,
        out.view());
    ExpectRows(testing::Download(*be, out), testing::ExpectedOffload(s), 1e-5);
  }
}

TEST_CASE("MergeAttention of two disjoint key lists is attention over their union", "[kernels]") {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const int64_t d = 32;
  const int n_a = 37, n_b = 11;
  std::vector<float> q(d), keys((n_a + n_b) * d), values((n_a + n_b) * d);
  for (float& x : q) x = dist(rng);
  for (float& x : keys) x = dist(rng);
  for (float& x : values) x = dist(rng);
  auto attend = [&](int begin, int end, float* o, float* lse) {
    cpu::KeyList list;
    for (int j = begin; j < end; ++j) {
      list.k.push_back(keys.data() + j * d);
      list.v.push_back(values.data() + j * d);
    }
    cpu::ListScratch scratch;
    cpu::AttendList(q.data(), 1, d, list, 0.2f, {o, lse, nullptr, 0}, scratch);
  };
  std::vector<float> o_a(d), o_b(d), o_all(d);
  float lse_a = 0, lse_b = 0, lse_all = 0;
  attend(0, n_a, o_a.data(), &lse_a);
  attend(n_a, n_a + n_b, o_b.data(), &lse_b);
  attend(0, n_a + n_b, o_all.data(), &lse_all);
  std::vector<float> merged = o_a;
  float lse = lse_a;
  cpu::MergeAttention(merged.data(), lse, o_b.data(), lse_b, d);
  CHECK(testing::MaxAbsDiff(merged, o_all) < 1e-5);
  CHECK(std::fabs(lse - lse_all) < 1e-5);
  // Nothing on the other side leaves a result as it is; nothing on this side takes the other's.
  const float none = -std::numeric_limits<float>::infinity();
  std::vector<float> kept = o_a;
  float kept_lse = lse_a;
  cpu::MergeAttention(kept.data(), kept_lse, o_b.data(), none, d);
  CHECK(std::memcmp(kept.data(), o_a.data(), d * sizeof(float)) == 0);
  CHECK(kept_lse == lse_a);
  std::vector<float> empty(d, 0.0f);
  float empty_lse = none;
  cpu::MergeAttention(empty.data(), empty_lse, o_b.data(), lse_b, d);
  CHECK(std::memcmp(empty.data(), o_b.data(), d * sizeof(float)) == 0);
  CHECK(empty_lse == lse_b);
}

// The CPU's exact search for the index build against the double reference: near-ties may trade
// places only by f32 rounding; with exact scores (small integers, many ties at the k-th) the ids
// equal the reference's. k from 1 to the whole row, and k above what one row's candidates hold on
// the GPU (1024).
TEST_CASE("TopKeys returns each query's best keys, ties to the lower id", "[kernels]") {
  auto be = CreateCpuBackend(2);
  std::mt19937 rng(7);
  struct Shape {
    int64_t m, n, d, k;
    bool ties;
  };
  for (const Shape& sh :
       {Shape{5, 300, 16, 1, false}, Shape{9, 1000, 64, 100, false}, Shape{3, 64, 8, 64, false},
        Shape{4, 3000, 32, 1024, false}, Shape{6, 4000, 16, 100, true}}) {
    INFO("m " << sh.m << " n " << sh.n << " d " << sh.d << " k " << sh.k << " ties " << sh.ties);
    const testing::TopKeysCase c = testing::MakeTopKeysCase(sh.m, sh.n, sh.d, sh.k, sh.ties, rng);
    Buffer q = Upload(*be, c.queries, {c.m, c.d});
    Buffer keys = Upload(*be, c.keys, {c.n, c.d});
    Buffer ids = be->Allocate(DType::kI32, {c.m, c.k});
    be->TopKeys(q.view(), keys.view(), ids.view());
    std::vector<int32_t> got(static_cast<size_t>(c.m * c.k));
    be->CopyToHost(got.data(), ids.view(), got.size() * sizeof(int32_t));
    const int64_t differ = testing::CheckTopKeys(c, got, 1e-6);
    if (sh.ties) CHECK(differ == 0);
  }
}

}  // namespace
}  // namespace headwise::kernels
