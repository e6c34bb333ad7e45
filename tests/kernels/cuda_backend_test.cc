// Every CUDA operation against the CPU reference on fresh random non-zero inputs, outputs
// poisoned with NaN before each run. bf16 storage: compared by relative L2 error.
#include "kernels/cuda/cuda_backend.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/backend_util.h"
#include "tests/kernels/block_tables.h"

namespace headwise::kernels {
namespace {

using testing::RelError;

struct Pair {
  std::unique_ptr<Backend> cpu = CreateCpuBackend(2);
  std::unique_ptr<Backend> gpu = std::move(CreateCudaBackend(0)).value();
  std::mt19937 rng{std::random_device{}()};

  // Random values rounded to bf16, so both backends start from identical inputs.
  std::vector<float> Random(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = BF16ToF32(F32ToBF16(dist(rng)));
    return v;
  }
  static HostTensor Host(const std::vector<float>& v, std::initializer_list<int64_t> shape) {
    HostTensor h;
    h.data = v.data();
    h.shape = Tensor(nullptr, DType::kF32, Device::kCpu, shape);
    return h;
  }
  // The same values on both backends: f32 on the CPU, bf16 on the GPU.
  std::pair<Buffer, Buffer> Upload(const std::vector<float>& v,
                                   std::initializer_list<int64_t> shape) {
    return {cpu->LoadWeight(Host(v, shape)), gpu->LoadWeight(Host(v, shape))};
  }
  std::pair<Buffer, Buffer> UploadI32(const std::vector<int32_t>& v,
                                      std::initializer_list<int64_t> shape) {
    Buffer c = cpu->Allocate(DType::kI32, shape), g = gpu->Allocate(DType::kI32, shape);
    cpu->CopyFromHost(c.view(), v.data(), v.size() * 4);
    gpu->CopyFromHost(g.view(), v.data(), v.size() * 4);
    return {std::move(c), std::move(g)};
  }
  std::pair<Buffer, Buffer> UploadF32(const std::vector<float>& v,
                                      std::initializer_list<int64_t> shape) {
    Buffer c = cpu->Allocate(DType::kF32, shape), g = gpu->Allocate(DType::kF32, shape);
    cpu->CopyFromHost(c.view(), v.data(), v.size() * 4);
    gpu->CopyFromHost(g.view(), v.data(), v.size() * 4);
    return {std::move(c), std::move(g)};
  }
  // Output buffers filled with NaN: an element the kernel does not write fails the check.
  std::pair<Buffer, Buffer> Outputs(std::initializer_list<int64_t> shape,
                                    DType gpu_dtype = DType::kBF16) {
    Buffer c = cpu->Allocate(DType::kF32, shape), g = gpu->Allocate(gpu_dtype, shape);
    std::vector<float> nan(static_cast<size_t>(c.view().numel()), NAN);
    cpu->CopyFromHost(c.view(), nan.data(), nan.size() * 4);
    if (gpu_dtype == DType::kF32) {
      gpu->CopyFromHost(g.view(), nan.data(), nan.size() * 4);
    } else {
      std::vector<uint16_t> nan16(nan.size(), 0x7fc0);
      gpu->CopyFromHost(g.view(), nan16.data(), nan16.size() * 2);
    }
    return {std::move(c), std::move(g)};
  }
  std::vector<float> Get(const Tensor& t) {
    const size_t n = static_cast<size_t>(t.numel());
    std::vector<float> out(n);
    if (t.device == Device::kCpu || t.dtype == DType::kF32) {
      (t.device == Device::kCpu ? cpu : gpu)->CopyToHost(out.data(), t, n * 4);
      return out;
    }
    std::vector<uint16_t> raw(n);
    gpu->CopyToHost(raw.data(), t, n * 2);
    for (size_t i = 0; i < n; ++i) out[i] = BF16ToF32(raw[i]);
    return out;
  }
};

constexpr double kBf16Tol = 1e-2;

TEST_CASE("CUDA elementwise ops, norms, embedding and row gather match the CPU", "[cuda]") {
  Pair p;
  // Widths of a multiple of 8 (16-byte vector paths; the norm keeps rows of 1, 2, 4 and 8
  // pieces per thread in registers, longer ones loop) and odd ones (scalar paths).
  for (auto [rows, h, inter] : {std::tuple<int64_t, int64_t, int64_t>{1, 576, 96},
                                {7, 576, 96},
                                {64, 576, 96},
                                {2, 4096, 96},
                                {3, 8192, 64},
                                {2, 12288, 64},
                                {1, 20480, 32},
                                {5, 101, 45}}) {
    const int64_t vocab = 300;
    auto table = p.Random(vocab * h);
    auto [tc, tg] = p.Upload(table, {vocab, h});
    std::vector<int32_t> ids(static_cast<size_t>(rows));
    for (auto& id : ids) id = static_cast<int32_t>(p.rng() % vocab);
    auto [ic, ig] = p.UploadI32(ids, {rows});
    auto [ec, eg] = p.Outputs({rows, h});
    p.cpu->Embedding(tc.view(), ic.view(), 0, ec.view());
    p.gpu->Embedding(tg.view(), ig.view(), 0, eg.view());
    CHECK(RelError(p.Get(eg.view()), p.Get(ec.view())) == 0.0);
    {  // a tensor-parallel rank's share of the vocabulary: rows 100 .. 199, zeros for other ids
      auto [sc, sg] = p.Outputs({rows, h});
      p.cpu->Embedding(tc.view().Rows(100, 100), ic.view(), 100, sc.view());
      p.gpu->Embedding(tg.view().Rows(100, 100), ig.view(), 100, sg.view());
      CHECK(RelError(p.Get(sg.view()), p.Get(sc.view())) == 0.0);
    }

    auto w = p.Random(h, 0.5f);
    auto [wc, wg] = p.Upload(w, {h});
    auto [nc, ng] = p.Outputs({rows, h});
    p.cpu->RmsNorm(ec.view(), wc.view(), 1e-5f, nc.view());
    p.gpu->RmsNorm(eg.view(), wg.view(), 1e-5f, ng.view());
    CHECK(RelError(p.Get(ng.view()), p.Get(nc.view())) < kBf16Tol);

    auto x = p.Random(static_cast<size_t>(rows * h));
    auto [xc, xg] = p.Upload(x, {rows, h});
    auto [ac, ag] = p.Outputs({rows, h});
    p.cpu->AddRmsNorm(ec.view(), xc.view(), wc.view(), 1e-5f, ac.view());
    p.gpu->AddRmsNorm(eg.view(), xg.view(), wg.view(), 1e-5f, ag.view());
    CHECK(RelError(p.Get(eg.view()), p.Get(ec.view())) < kBf16Tol);  // residual updated
    CHECK(RelError(p.Get(ag.view()), p.Get(ac.view())) < kBf16Tol);

    auto gu = p.Random(static_cast<size_t>(rows * 2 * inter));
    auto [gc, gg] = p.Upload(gu, {rows, 2 * inter});
    auto [sc, sg] = p.Outputs({rows, inter});
    p.cpu->SiluMul(gc.view(), sc.view());
    p.gpu->SiluMul(gg.view(), sg.view());
    CHECK(RelError(p.Get(sg.view()), p.Get(sc.view())) < kBf16Tol);

    std::vector<int32_t> pick = {static_cast<int32_t>(rows - 1), 0};
    auto [rc, rg] = p.UploadI32(pick, {2});
    auto [oc, og] = p.Outputs({2, h});
    p.cpu->GatherRows(ac.view(), rc.view(), oc.view());
    p.gpu->GatherRows(ag.view(), rg.view(), og.view());
    CHECK(RelError(p.Get(og.view()), p.Get(oc.view())) < kBf16Tol);
  }
}

TEST_CASE("CUDA matmul (bf16 and f32 out, with bias) matches the CPU", "[cuda]") {
  Pair p;
  // Decode-sized rows (1..8, the skinny kernels, odd n and k not a multiple of 256) and larger
  // ones (cuBLAS).
  for (auto [m, n, k] : {std::tuple{1, 1728, 576}, std::tuple{2, 33, 72}, std::tuple{3, 1001, 4104},
                         std::tuple{5, 7, 8}, std::tuple{8, 4096, 14336}, std::tuple{9, 300, 520},
                         std::tuple{33, 97, 64}, std::tuple{128, 512, 4096}}) {
    auto x = p.Random(static_cast<size_t>(m * k)), w = p.Random(static_cast<size_t>(n * k), 0.05f),
         b = p.Random(static_cast<size_t>(n));
    auto [xc, xg] = p.Upload(x, {m, k});
    auto [wc, wg] = p.Upload(w, {n, k});
    auto [bc, bg] = p.Upload(b, {n});
    for (DType out_type : {DType::kBF16, DType::kF32}) {
      for (bool bias : {false, true}) {
        auto [oc, og] = p.Outputs({m, n}, out_type);
        p.cpu->Matmul(xc.view(), wc.view(), bias ? bc.view() : Tensor(), oc.view());
        p.gpu->Matmul(xg.view(), wg.view(), bias ? bg.view() : Tensor(), og.view());
        INFO("m " << m << " n " << n << " k " << k << " f32 out " << (out_type == DType::kF32));
        CHECK(RelError(p.Get(og.view()), p.Get(oc.view())) < kBf16Tol);
      }
    }
  }
}

using testing::CompressOnceHead;
using testing::FullHead;
using testing::HostBlockTable;
using testing::LayoutSpec;
using testing::RingHead;

// Sequences of a batch and the KV layouts they run (kernels::BlockTable): sequence s runs
// layouts[layout[s]] (layout empty: all the first) and is compacted at from[s] > 0 (from empty:
// none), after its tokens are written. Positions never cycle in ring pages here: the kernels' key
// ranges and table picks are what is compared (tests/kvcache covers the recycling).
struct Layouts {
  std::vector<LayoutSpec> layouts;
  std::vector<int> layout;
  std::vector<int> from;
};

// Sink/window (ring) KV heads: with window > 0 the odd KV heads are ring heads, their pages in a
// table of their own; with reindex (StreamingLLM) they store k unrotated and attention rotates by
// rank.
struct Ring {
  int sink = 0, window = 0;
  bool reindex = false;
};

// Compress-once (RazorAttention) KV heads: with from non-empty the odd KV heads compress once,
// their pages in a table of their own; sequence s is compacted when from[s] > 0 (it attends
// positions [0, sink], the token at `sink` — the mean of [sink, from[s]) — with its logit +
// log(from[s] - sink), and [from[s], p]); its queries are the last ones past from[s].
struct Comp {
  int sink = 0;
  std::vector<int> from;
};

// One layout of odd ring or compress-once heads (or dense), for every sequence.
Layouts OneLayout(int hkv, Ring ring, const Comp& comp) {
  LayoutSpec spec(static_cast<size_t>(hkv), FullHead());
  for (int h = 1; h < hkv; h += 2) {
    if (ring.window > 0)
      spec[static_cast<size_t>(h)] = RingHead(ring.sink, ring.window, ring.reindex);
    if (!comp.from.empty()) spec[static_cast<size_t>(h)] = CompressOnceHead(comp.sink, 0);
  }
  return {{spec}, {}, comp.from};
}

// Layouts of every kind for hkv KV heads, with sinks and windows of their own: dense; odd rings;
// even re-indexed rings; odd compress-once (compensation by count); per head h % 4: re-indexed
// ring, compress-once (compensation, no count), ring, full; even compress-once without
// compensation; all rings.
std::vector<LayoutSpec> MixedLayouts(int hkv) {
  std::vector<LayoutSpec> layouts(7, LayoutSpec(static_cast<size_t>(hkv), FullHead()));
  for (int h = 0; h < hkv; ++h) {
    const auto i = static_cast<size_t>(h);
    if (h % 2 == 1) layouts[1][i] = RingHead(4, 40);
    if (h % 2 == 0) layouts[2][i] = RingHead(2, 100, true);
    if (h % 2 == 1) layouts[3][i] = CompressOnceHead(4, 64);
    layouts[4][i] = h % 4 == 0   ? RingHead(1, 64, true)
                    : h % 4 == 1 ? CompressOnceHead(2, 32, true, false)
                    : h % 4 == 2 ? RingHead(16, 256)
                                 : FullHead();
    if (h % 2 == 0) layouts[5][i] = CompressOnceHead(3, 50, false);
    layouts[6][i] = RingHead(0, 100 + 30 * h, h % 2 == 1);
  }
  return layouts;
}

// A batch of sequences with the given lengths, all tokens as queries (prefill) or only the
// last `last_n` (1: decode; more: a prefill chunk after a cached prefix; for a compacted
// sequence at most those past its compaction point), through RopeWriteKv, MeanKv for the
// compacted sequences' compensation tokens, then PagedAttention on both backends.
void CheckAttention(Pair& p, int hq, int hkv, int d, const std::vector<int>& lens, int last_n,
                    const Layouts& l) {
  const bool decode = last_n == 1;
  const int num_seqs = static_cast<int>(lens.size());
  const std::vector<int> from =
      l.from.empty() ? std::vector<int>(static_cast<size_t>(num_seqs), 0) : l.from;
  auto queries_of = [&](int s) {
    const int len = lens[static_cast<size_t>(s)];
    const int n = last_n == 0 ? len : std::min(last_n, len);
    // A compacted sequence's queries lie past its kept span's start (decode, or a preempted
    // request recomputing its generated tokens).
    if (from[static_cast<size_t>(s)] > 0) return std::min(n, len - from[static_cast<size_t>(s)]);
    return n;
  };
  auto is_query = [&](int s, int t) { return t >= lens[static_cast<size_t>(s)] - queries_of(s); };
  const int page_size = 16;
  // Shuffled blocks, as the KV cache hands them out; each block also holds pages of other (absent)
  // layers, and the heads' pages inside it are permuted.
  HostBlockTable table = testing::MakeBlockTable(
      l.layouts, l.layout.empty() ? std::vector<int>(static_cast<size_t>(num_seqs), 0) : l.layout,
      lens, page_size, p.rng);
  const int num_pages = table.num_pages;

  // Every position is written (as a prefill would); queries are all or the last per sequence.
  // Decode batches end with a padding query (position -1), as in a captured graph's bucket.
  std::vector<int32_t> pos, seq, qpos, qseq;
  std::vector<int64_t> slots;
  for (int s = 0; s < num_seqs; ++s) {
    for (int t = 0; t < lens[static_cast<size_t>(s)]; ++t) {
      pos.push_back(t);
      seq.push_back(s);
      for (int h = 0; h < hkv; ++h) slots.push_back(table.Slot(s, h, t));
      if (is_query(s, t)) {
        qpos.push_back(t);
        qseq.push_back(s);
      }
    }
  }
  const int64_t tokens = static_cast<int64_t>(pos.size()),
                queries = static_cast<int64_t>(qpos.size());
  auto qkv = p.Random(static_cast<size_t>(tokens * (hq + 2 * hkv) * d));
  std::vector<float> inv_freq(static_cast<size_t>(d / 2));
  for (int i = 0; i < d / 2; ++i)
    inv_freq[static_cast<size_t>(i)] = std::pow(500000.0f, -2.0f * i / d);
  auto [qkvc, qkvg] = p.Upload(qkv, {tokens, (hq + 2 * hkv) * d});
  auto [posc, posg] = p.UploadI32(pos, {tokens});
  auto [sqc, sqg] = p.UploadI32(seq, {tokens});
  auto [fc, fg] = p.UploadF32(inv_freq, {d / 2});
  auto [kc, kg] = p.Outputs({num_pages, page_size, d});
  auto [vc, vg] = p.Outputs({num_pages, page_size, d});
  auto [qc, qg] = p.Outputs({tokens, hq, d});
  KvPoolView pool_c{kc.view(), vc.view(), page_size}, pool_g{kg.view(), vg.view(), page_size};
  {
    const testing::BackendBlockTable tc = testing::UploadTable(*p.cpu, table, inv_freq),
                                     tg = testing::UploadTable(*p.gpu, table, inv_freq);
    // Writing needs only each token's sequence and position.
    p.cpu->RopeWriteKv(qkvc.view(),
                       PagedAttentionBatch{sqc.view(), posc.view(), tc.view, Tensor(), 1},
                       fc.view(), pool_c, qc.view());
    p.gpu->RopeWriteKv(qkvg.view(),
                       PagedAttentionBatch{sqg.view(), posg.view(), tg.view, Tensor(), 1},
                       fg.view(), pool_g, qg.view());
    CHECK(RelError(p.Get(qg.view()), p.Get(qc.view())) < kBf16Tol);
    // The compacted sequences' compensation tokens: the mean of the dropped span over `sink`.
    std::vector<int32_t> row_seq, row_head, begin, end;
    for (int s = 0; s < num_seqs; ++s) {
      for (int h = 0; h < hkv && from[static_cast<size_t>(s)] > 0; ++h) {
        const kernels::KvRetention r = table.Head(s, h).retention;
        if (!r.compress_once() || !r.compensation) continue;
        row_seq.push_back(s);
        row_head.push_back(h);
        begin.push_back(r.sink);
        end.push_back(from[static_cast<size_t>(s)]);
        slots.push_back(table.Slot(s, h, r.sink));  // compared below
      }
    }
    if (!row_seq.empty()) {
      const auto n = static_cast<int64_t>(row_seq.size());
      auto [rsc, rsg] = p.UploadI32(row_seq, {n});
      auto [rhc, rhg] = p.UploadI32(row_head, {n});
      auto [bc, bg] = p.UploadI32(begin, {n});
      auto [ec, eg] = p.UploadI32(end, {n});
      p.cpu->MeanKv(pool_c,
                    KvMeanBatch{rsc.view(), rhc.view(), bc.view(), ec.view(), bc.view(), tc.view});
      p.gpu->MeanKv(pool_g,
                    KvMeanBatch{rsg.view(), rhg.view(), bg.view(), eg.view(), bg.view(), tg.view});
    }
  }
  // Pages of positions every compress-once head dropped are freed (-1) now: never read.
  for (int s = 0; s < num_seqs; ++s) {
    if (from[static_cast<size_t>(s)] > 0) table.Compact(s, from[static_cast<size_t>(s)]);
  }
  const testing::BackendBlockTable table_c = testing::UploadTable(*p.cpu, table, inv_freq),
                                   table_g = testing::UploadTable(*p.gpu, table, inv_freq);

  // Queries: the rotated q rows of the query tokens, identical bf16 values on both sides.
  const auto q_all = p.Get(qg.view());
  std::vector<float> q_sel;
  for (size_t t = 0, qi = 0; t < pos.size() && qi < qpos.size(); ++t) {
    if (pos[t] == qpos[qi] && seq[t] == qseq[qi]) {
      q_sel.insert(q_sel.end(), q_all.begin() + static_cast<long>(t * hq * d),
                   q_all.begin() + static_cast<long>((t + 1) * hq * d));
      ++qi;
    }
  }
  // The K/V pages of both backends: copy the GPU's (bf16) into the CPU pool, so attention
  // itself is compared on identical inputs.
  const auto k_g = p.Get(kg.view()), v_g = p.Get(vg.view());
  const auto k_c = p.Get(kc.view()), v_c = p.Get(vc.view());
  std::vector<float> written_g, written_c;  // K and V rows at the written and averaged slots
  for (int64_t slot : slots) {
    const auto base = static_cast<long>(slot) * d;
    for (const auto* src : {&k_g, &v_g})
      written_g.insert(written_g.end(), src->begin() + base, src->begin() + base + d);
    for (const auto* src : {&k_c, &v_c})
      written_c.insert(written_c.end(), src->begin() + base, src->begin() + base + d);
  }
  CHECK(RelError(written_g, written_c) < kBf16Tol);
  p.cpu->CopyFromHost(kc.view(), k_g.data(), k_g.size() * 4);
  p.cpu->CopyFromHost(vc.view(), v_g.data(), v_g.size() * 4);
  if (decode) {
    qpos.push_back(-1);
    qseq.push_back(0);
    q_sel.resize(q_sel.size() + static_cast<size_t>(hq * d), 1.0f);
  }
  const int64_t rows = static_cast<int64_t>(qpos.size());
  // Query ranges per sequence (prefill kernels tile by them; the padding row has none).
  std::vector<int32_t> query_start = {0};
  int max_query_len = 1;
  for (int s = 0; s < num_seqs; ++s) {
    const int n = queries_of(s);
    query_start.push_back(query_start.back() + n);
    max_query_len = std::max(max_query_len, n);
  }
  auto [qstc, qstg] = p.UploadI32(query_start, {num_seqs + 1});
  auto [qsc, qsg] = p.Upload(q_sel, {rows, hq, d});
  auto [tsc, tsg] = p.UploadI32(qseq, {rows});
  auto [tpc, tpg] = p.UploadI32(qpos, {rows});
  auto [oc, og] = p.Outputs({rows, hq, d});
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.cpu->PagedAttention(
      qsc.view(), pool_c,
      PagedAttentionBatch{tsc.view(), tpc.view(), table_c.view, qstc.view(), max_query_len}, scale,
      oc.view());
  p.gpu->PagedAttention(
      qsg.view(), pool_g,
      PagedAttentionBatch{tsg.view(), tpg.view(), table_g.view, qstg.view(), max_query_len}, scale,
      og.view());
  std::string layouts;
  for (int s = 0; s < num_seqs; ++s) {
    layouts += std::to_string(table.seq_layout[static_cast<size_t>(s)]) + "/" +
               std::to_string(from[static_cast<size_t>(s)]) + " ";
  }
  INFO("hq " << hq << " hkv " << hkv << " d " << d << " last_n " << last_n << " seqs " << num_seqs
             << " of " << table.num_layouts()
             << " layouts; layout/compacted-at per sequence: " << layouts);
  auto real_rows = [&](std::vector<float> v) {  // the padding row's output is unspecified
    v.resize(static_cast<size_t>(queries * hq * d));
    return v;
  };
  CHECK(RelError(real_rows(p.Get(og.view())), real_rows(p.Get(oc.view()))) < kBf16Tol);
}

void CheckAttention(Pair& p, int hq, int hkv, int d, const std::vector<int>& lens, int last_n = 0,
                    Ring ring = {}, const Comp& comp = {}) {
  INFO("ring sink " << ring.sink << " window " << ring.window << " reindex " << ring.reindex
                    << " compress-once sink " << comp.sink);
  CheckAttention(p, hq, hkv, d, lens, last_n, OneLayout(hkv, ring, comp));
}

// cuBLASLt assumes 256-byte aligned operands unless told otherwise; views a row into a buffer
// start anywhere (here 72- and 74-byte rows: 8- and 2-byte aligned).
TEST_CASE("CUDA matmul on views that start mid-buffer matches the CPU", "[cuda]") {
  Pair p;
  const int64_t m = 20, n = 37, k = 36;
  auto x = p.Random(static_cast<size_t>((m + 1) * k)), w = p.Random(static_cast<size_t>(n * k));
  auto b = p.Random(static_cast<size_t>(n));
  auto [xc, xg] = p.Upload(x, {m + 1, k});
  auto [wc, wg] = p.Upload(w, {n, k});
  auto [bc, bg] = p.Upload(b, {n});
  for (bool bias : {false, true}) {
    auto [oc, og] = p.Outputs({m + 1, n});
    p.cpu->Matmul(xc.view().Rows(1, m), wc.view(), bias ? bc.view() : Tensor(),
                  oc.view().Rows(1, m));
    p.gpu->Matmul(xg.view().Rows(1, m), wg.view(), bias ? bg.view() : Tensor(),
                  og.view().Rows(1, m));
    INFO("bias " << bias);
    CHECK(RelError(p.Get(og.view().Rows(1, m)), p.Get(oc.view().Rows(1, m))) < kBf16Tol);
  }
}
TEST_CASE("CUDA rope + KV write and paged attention match the CPU", "[cuda]") {
  Pair p;
  // GQA groups of 1, 4, 8 and 16 (more than one block of heads per KV head).
  for (auto [hq, hkv] : {std::pair{8, 8}, std::pair{8, 2}, std::pair{32, 4}, std::pair{32, 2}}) {
    for (int d : {16, 64, 128}) {
      CheckAttention(p, hq, hkv, d, {1, 15, 16, 17, 50});      // prefill from 0
      CheckAttention(p, hq, hkv, d, {300, 40, 129, 77}, 33);   // chunks after a prefix
      CheckAttention(p, hq, hkv, d, {1, 16, 33, 1000, 7}, 1);  // decode
      CheckAttention(p, hq, hkv, d, {513, 2048, 5000}, 1);     // several KV splits
    }
  }
}

// Ring heads attend their sinks and a window that starts `window` before their chunk
// (kernels::BlockTable): every path — the prefill kernel (head dims 64, 128), the decode kernel
// for chunks (16) and decode, one split or many — against the CPU's ranges.
TEST_CASE("CUDA attention over sink/window ring heads matches the CPU", "[cuda]") {
  Pair p;
  for (auto [hq, hkv] : {std::pair{8, 2}, std::pair{32, 4}}) {
    for (int d : {16, 64, 128}) {
      for (Ring ring : {Ring{4, 40}, Ring{0, 100}, Ring{64, 256}}) {
        CheckAttention(p, hq, hkv, d, {1, 15, 16, 17, 50}, 0, ring);
        CheckAttention(p, hq, hkv, d, {300, 40, 129, 77}, 33, ring);
        CheckAttention(p, hq, hkv, d, {700, 90, 1500}, 200, ring);
        CheckAttention(p, hq, hkv, d, {1, 16, 33, 1000, 7}, 1, ring);
        CheckAttention(p, hq, hkv, d, {513, 2048, 5000}, 1, ring);
      }
    }
  }
}

// Re-indexed ring heads (StreamingLLM): keys stored unrotated, q and keys rotated by their rank
// in the attended list (kernels::PagedAttentionBatch), in the prefill kernel's q and K tiles and
// the decode kernel's (one split or many). Windows that start past the sinks make ranks differ
// from positions; a window wider than the sequence keeps them equal.
TEST_CASE("CUDA attention over re-indexed ring heads matches the CPU", "[cuda]") {
  Pair p;
  for (auto [hq, hkv] : {std::pair{8, 2}, std::pair{32, 4}}) {
    for (int d : {16, 64, 128}) {
      for (Ring ring :
           {Ring{4, 40, true}, Ring{0, 100, true}, Ring{64, 256, true}, Ring{4, 8000, true}}) {
        CheckAttention(p, hq, hkv, d, {1, 15, 16, 17, 50}, 0, ring);
        CheckAttention(p, hq, hkv, d, {300, 40, 129, 77}, 33, ring);
        CheckAttention(p, hq, hkv, d, {700, 90, 1500}, 200, ring);
        CheckAttention(p, hq, hkv, d, {1, 16, 33, 1000, 7}, 1, ring);
        CheckAttention(p, hq, hkv, d, {513, 2048, 5000}, 1, ring);
      }
    }
  }
}

// Compacted sequences decode, or recompute chunks past their compaction point (a preempted
// request), beside other sequences' prefill chunks (the prefill kernel at head dims 64 and 128
// takes such batches, with the compensation token's log-count bias), and decode alone (the decode
// kernel, one split or many).
TEST_CASE("CUDA attention over compress-once heads of compacted sequences matches the CPU",
          "[cuda]") {
  Pair p;
  for (auto [hq, hkv] : {std::pair{8, 2}, std::pair{32, 4}}) {
    for (int d : {16, 64, 128}) {
      CheckAttention(p, hq, hkv, d, {300, 700, 90, 1500}, 33, {}, Comp{4, {200, 0, 0, 1000}});
      CheckAttention(p, hq, hkv, d, {700, 90, 1500}, 200, {}, Comp{0, {0, 40, 300}});
      CheckAttention(p, hq, hkv, d, {1, 16, 33, 1000, 7}, 1, {}, Comp{4, {0, 10, 20, 600, 0}});
      CheckAttention(p, hq, hkv, d, {513, 2048, 5000}, 1, {}, Comp{64, {400, 1900, 4000}});
    }
  }
}

// Every head a ring (max_full_heads 0): the decode kernel's splits sized by the longest ring.
TEST_CASE("CUDA attention over a layout of ring heads only matches the CPU", "[cuda]") {
  Pair p;
  for (auto [hq, hkv] : {std::pair{8, 2}, std::pair{32, 4}}) {
    for (int d : {64, 128}) {
      const Layouts rings{{MixedLayouts(hkv)[6]}, {}, {}};
      CheckAttention(p, hq, hkv, d, {300, 40, 129, 77}, 33, rings);
      CheckAttention(p, hq, hkv, d, {1, 16, 33, 1000, 7}, 1, rings);
      CheckAttention(p, hq, hkv, d, {513, 2048, 5000}, 1, rings);
    }
  }
}

// Sequences of different KV layouts in one batch (kernels::BlockTable): dense, rings, re-indexed
// rings, compress-once (compacted or not; compensation with and without its count, or none), and
// layouts mixing them, each head with its own sink and window — through the prefill kernel
// (head dims 64, 128; first chunks and chunks after a prefix), the decode kernel for chunks
// (head dim 16) and decode (one split or many), RopeWriteKv and MeanKv.
TEST_CASE("CUDA attention over a batch of mixed KV layouts matches the CPU", "[cuda]") {
  Pair p;
  for (auto [hq, hkv] : {std::pair{8, 2}, std::pair{32, 4}, std::pair{32, 8}}) {
    for (int d : {16, 64, 128}) {
      const std::vector<LayoutSpec> layouts = MixedLayouts(hkv);
      // Prefill from 0, nothing compacted.
      CheckAttention(p, hq, hkv, d, {1, 15, 16, 17, 50, 130, 64, 200}, 0,
                     Layouts{layouts, {0, 1, 2, 3, 4, 5, 6, 2}, {}});
      // Chunks after a prefix; compacted sequences recompute past their kept span.
      CheckAttention(
          p, hq, hkv, d, {300, 40, 129, 77, 700, 90, 1500, 260, 333}, 33,
          Layouts{layouts, {0, 1, 2, 3, 4, 5, 6, 3, 4}, {0, 0, 0, 50, 300, 40, 0, 0, 280}});
      CheckAttention(p, hq, hkv, d, {700, 90, 1500, 420}, 200,
                     Layouts{layouts, {3, 2, 4, 1}, {300, 0, 1000, 0}});
      // Decode, one split or many.
      CheckAttention(p, hq, hkv, d, {1, 16, 33, 1000, 7, 90, 300, 45}, 1,
                     Layouts{layouts, {6, 5, 4, 3, 2, 1, 0, 4}, {0, 10, 20, 600, 0, 0, 0, 0}});
      CheckAttention(p, hq, hkv, d, {513, 2048, 5000, 3000, 700}, 1,
                     Layouts{layouts, {4, 3, 2, 5, 1}, {400, 1900, 0, 2500, 0}});
    }
  }
}

TEST_CASE("CUDA sparse decode over index lists with logit bias matches the CPU", "[cuda]") {
  Pair p;
  for (auto [hq, hkv] : {std::pair{8, 8}, std::pair{8, 2}, std::pair{32, 4}, std::pair{32, 2}}) {
    for (int d : {64, 128}) {
      // A dense sequence, one of odd ring heads, one of odd compress-once heads: a row's keys
      // come from its head's kind of block. A fourth sequence of re-indexed rings has no rows
      // (SparseDecodeBatch: not defined on them) but shares the table.
      const int seqs = 4, row_seqs = 3, page_size = 16, len = 640;
      const std::vector<LayoutSpec> layouts = MixedLayouts(hkv);
      const HostBlockTable table =
          testing::MakeBlockTable({layouts[0], layouts[1], layouts[3], layouts[2]}, {0, 1, 2, 3},
                                  {len, len, len, len}, page_size, p.rng);
      const int num_pages = table.num_pages;
      auto k = p.Random(static_cast<size_t>(num_pages) * page_size * d);
      auto v = p.Random(static_cast<size_t>(num_pages) * page_size * d);
      auto [kc, kg] = p.Upload(k, {num_pages, page_size, d});
      auto [vc, vg] = p.Upload(v, {num_pages, page_size, d});
      std::vector<float> inv_freq(static_cast<size_t>(d / 2));
      for (int i = 0; i < d / 2; ++i)
        inv_freq[static_cast<size_t>(i)] = std::pow(500000.0f, -2.0f * i / d);
      const testing::BackendBlockTable table_c = testing::UploadTable(*p.cpu, table, inv_freq),
                                       table_g = testing::UploadTable(*p.gpu, table, inv_freq);
      const BlockTable& tc = table_c.view;
      const BlockTable& tg = table_g.view;
      auto q = p.Random(static_cast<size_t>(seqs * hq * d));
      auto [qc, qg] = p.Upload(q, {seqs, hq, d});
      // Lists: random sizes (one empty), unsorted, repeats allowed; random biases.
      std::vector<int32_t> row_seq, row_head, indptr = {0}, indices;
      std::vector<float> bias;
      std::uniform_real_distribution<float> bdist(-2.0f, 2.0f);
      for (int s = 0; s < row_seqs; ++s)
        for (int h = 0; h < hkv; ++h) {
          row_seq.push_back(s);
          row_head.push_back(h);
          const int n = (s == 1 && h == 0) ? 0 : static_cast<int>(p.rng() % 600) + 1;
          for (int i = 0; i < n; ++i) {
            indices.push_back(static_cast<int32_t>(p.rng() % len));
            bias.push_back(bdist(p.rng));
          }
          indptr.push_back(static_cast<int32_t>(indices.size()));
        }
      const int64_t rows = static_cast<int64_t>(row_seq.size());
      auto [rsc, rsg] = p.UploadI32(row_seq, {rows});
      auto [rhc, rhg] = p.UploadI32(row_head, {rows});
      auto [ipc, ipg] = p.UploadI32(indptr, {rows + 1});
      auto [ixc, ixg] = p.UploadI32(indices, {static_cast<int64_t>(indices.size())});
      auto [bc, bg] = p.UploadF32(bias, {static_cast<int64_t>(bias.size())});
      auto [oc, og] = p.Outputs({rows, hq / hkv, d});
      auto [lc, lg] = p.Outputs({rows, hq / hkv}, DType::kF32);
      KvPoolView pool_c{kc.view(), vc.view(), page_size}, pool_g{kg.view(), vg.view(), page_size};
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      p.cpu->SparseDecodeAttention(
          qc.view(), pool_c,
          SparseDecodeBatch{rsc.view(), rhc.view(), ipc.view(), ixc.view(), bc.view(), tc}, scale,
          oc.view(), lc.view());
      p.gpu->SparseDecodeAttention(
          qg.view(), pool_g,
          SparseDecodeBatch{rsg.view(), rhg.view(), ipg.view(), ixg.view(), bg.view(), tg}, scale,
          og.view(), lg.view());
      INFO("hq " << hq << " hkv " << hkv << " d " << d);
      CHECK(RelError(p.Get(og.view()), p.Get(oc.view())) < kBf16Tol);
      const auto l_g = p.Get(lg.view()), l_c = p.Get(lc.view());
      for (size_t i = 0; i < l_c.size(); ++i) {
        if (std::isinf(l_c[i])) {
          CHECK(std::isinf(l_g[i]));
        } else {
          CHECK(std::abs(l_g[i] - l_c[i]) < 1e-2 * std::max(1.0f, std::abs(l_c[i])));
        }
      }
    }
  }
}

TEST_CASE("CUDA copies to the host that later work overlaps bring the bytes queued before them",
          "[cuda]") {
  Pair p;
  for (const int64_t n : {1000, 5000}) {  // the second one grows the pinned buffer
    INFO("n " << n);
    std::vector<uint16_t> bits(static_cast<size_t>(n));
    for (auto& b : bits) b = F32ToBF16(std::normal_distribution<float>(0.0f, 1.0f)(p.rng));
    Buffer src = p.gpu->Allocate(DType::kBF16, {n}), other = p.gpu->Allocate(DType::kBF16, {n});
    p.gpu->CopyFromHost(src.view(), bits.data(), bits.size() * 2);
    p.gpu->CopyToHostStart(src.view(), src.view().nbytes());
    // Queued after the copy: work that reads src (it must not write it) and writes elsewhere.
    p.gpu->CopyOnDevice(other.view(), src.view(), src.view().nbytes());
    const auto* got = static_cast<const uint16_t*>(p.gpu->CopyToHostWait());
    CHECK(std::memcmp(got, bits.data(), bits.size() * 2) == 0);
    p.gpu->Synchronize();
  }
}

}  // namespace
}  // namespace headwise::kernels
