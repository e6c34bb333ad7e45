// Checks LaunchPagedDecodeAttention and LaunchSparseDecodeAttention against an fp32 CPU reference
// on random paged inputs, then times paged decode at Llama-3-8B shapes against the copy bandwidth
// measured here. Standalone (this file + kernels/cuda/decode_attention.cu), so the binary runs on
// a bare GPU machine; bench/gpu/build-check.sh decode builds it.
// Exit code: 0 when every case matches, 1 on any mismatch or CUDA error.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string_view>
#include <thread>
#include <vector>

#include "bench/gpu/check_util.cuh"
#include "kernels/cuda/decode_attention.h"

namespace {

using bf16 = __nv_bfloat16;
namespace hw = headwise::kernels::cuda;
using headwise::bench::CopyBandwidth;
using headwise::bench::DeviceArray;
using headwise::bench::kUnusedBlock;
using headwise::bench::Median;
using headwise::bench::MedianReplayMs;
using headwise::kernels::KvHead;

float RandomNonZero(std::mt19937& rng, float bound) {
  std::uniform_real_distribution<float> dist(-bound, bound);
  for (;;) {
    const float x = __bfloat162float(__float2bfloat16(dist(rng)));
    if (std::fabs(x) >= 1e-3f * bound) return x;
  }
}

// A paged cache of `lens[s]` keys per sequence: shuffled blocks, two layers' pages per block with
// this layer's heads in a shuffled subset, NaN in every slot no sequence owns. One KV layout, of
// full heads (kernels::BlockTable): blocks holds each block's first page.
struct Cache {
  int hkv, d, page_size, max_blocks, pages_per_block;
  std::vector<int> lens;
  std::vector<int32_t> blocks, head_page;
  std::vector<std::vector<float>> k, v;  // per sequence [hkv, len, d]
  std::vector<bf16> k_pool, v_pool;
};

Cache BuildCache(int hkv, int d, int page_size, const std::vector<int>& lens, std::mt19937& rng) {
  Cache c{hkv, d, page_size, 0, 2 * hkv, lens, {}, {}, {}, {}, {}, {}};
  int needed = 0;
  for (int len : lens) {
    const int b = (len + page_size - 1) / page_size;
    c.max_blocks = std::max(c.max_blocks, b);
    needed += b;
  }
  c.max_blocks += 2;
  std::vector<int32_t> slots(c.pages_per_block);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  c.head_page.assign(slots.begin(), slots.begin() + hkv);
  const int pool_blocks = needed + 5;
  std::vector<int32_t> ids(pool_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  c.blocks.assign(lens.size() * c.max_blocks, kUnusedBlock);
  const size_t elems = static_cast<size_t>(pool_blocks) * c.pages_per_block * page_size * d;
  c.k_pool.assign(elems, __float2bfloat16(NAN));
  c.v_pool.assign(elems, __float2bfloat16(NAN));
  int next = 0;
  c.k.resize(lens.size());
  c.v.resize(lens.size());
  for (size_t s = 0; s < lens.size(); ++s) {
    const int len = lens[s];
    for (int b = 0; b < (len + page_size - 1) / page_size; ++b) {
      c.blocks[s * c.max_blocks + b] = ids[next++] * c.pages_per_block;
    }
    c.k[s].resize(static_cast<size_t>(hkv) * len * d);
    c.v[s].resize(c.k[s].size());
    for (int h = 0; h < hkv; ++h) {
      for (int j = 0; j < len; ++j) {
        const int64_t page = int64_t{c.blocks[s * c.max_blocks + j / page_size]} + c.head_page[h];
        const int64_t base = (page * page_size + j % page_size) * d;
        for (int e = 0; e < d; ++e) {
          const size_t idx = (static_cast<size_t>(h) * len + j) * d + e;
          c.k[s][idx] = RandomNonZero(rng, 1.0f);
          c.v[s][idx] = RandomNonZero(rng, 1.0f);
          c.k_pool[base + e] = __float2bfloat16(c.k[s][idx]);
          c.v_pool[base + e] = __float2bfloat16(c.v[s][idx]);
        }
      }
    }
  }
  return c;
}

// Full heads (one KV layout, kernels::KvHead) at the given pages inside their blocks.
std::vector<KvHead> FullHeads(const std::vector<int32_t>& head_page) {
  std::vector<KvHead> heads(head_page.size());
  for (size_t h = 0; h < heads.size(); ++h) heads[h].page = head_page[h];
  return heads;
}

struct DeviceCache {
  DeviceArray<bf16> k, v;
  DeviceArray<int32_t> blocks, seq_layout;
  DeviceArray<KvHead> heads;
  hw::DecodeKvCache view;
  explicit DeviceCache(const Cache& c)
      : k(c.k_pool),
        v(c.v_pool),
        blocks(c.blocks),
        seq_layout(std::vector<int32_t>(c.lens.size(), 0)),
        heads(FullHeads(c.head_page)) {
    view = {k.ptr, v.ptr, heads.ptr, seq_layout.ptr, blocks.ptr, c.max_blocks, c.page_size, c.hkv};
  }
};

// The split launches' arrival counters: zeroed once, as the launchers require.
struct SplitCounters {
  DeviceArray<uint32_t> array;
  explicit SplitCounters(int64_t n) : array(static_cast<size_t>(n)) {
    CHECK_CUDA(cudaMemset(array.ptr, 0, std::max<size_t>(array.n, 1) * sizeof(uint32_t)));
  }
  bool AllZero() const {
    const std::vector<uint32_t> h = array.Host();
    return std::all_of(h.begin(), h.end(), [](uint32_t x) { return x == 0; });
  }
};

// softmax(scale * q . k + bias) v over the given keys of one sequence and KV head; lse natural.
void Attend(const Cache& c, int seq, int kv_head, const float* q, float scale,
            const std::vector<int>& keys, const std::vector<float>& bias, float* out, float* lse) {
  const int d = c.d, len = c.lens[seq];
  const float* kh = &c.k[seq][static_cast<size_t>(kv_head) * len * d];
  const float* vh = &c.v[seq][static_cast<size_t>(kv_head) * len * d];
  std::vector<double> logits(keys.size());
  double mx = -INFINITY;
  for (size_t i = 0; i < keys.size(); ++i) {
    double dot = 0.0;
    for (int e = 0; e < d; ++e) dot += double{q[e]} * kh[static_cast<size_t>(keys[i]) * d + e];
    logits[i] = dot * scale + (bias.empty() ? 0.0 : bias[i]);
    mx = std::max(mx, logits[i]);
  }
  std::vector<double> acc(d, 0.0);
  double sum = 0.0;
  for (size_t i = 0; i < keys.size(); ++i) {
    const double w = std::exp(logits[i] - mx);
    sum += w;
    for (int e = 0; e < d; ++e) acc[e] += w * vh[static_cast<size_t>(keys[i]) * d + e];
  }
  for (int e = 0; e < d; ++e) out[e] = keys.empty() ? 0.0f : static_cast<float>(acc[e] / sum);
  if (lse != nullptr) *lse = keys.empty() ? -INFINITY : static_cast<float>(mx + std::log(sum));
}

template <typename F>
void ParallelFor(int n, F f) {
  std::vector<std::thread> threads;
  const int workers = std::max(1, std::min<int>(std::thread::hardware_concurrency(), n));
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      for (int i = w; i < n; i += workers) f(i);
    });
  }
  for (auto& t : threads) t.join();
}

struct Compare {
  double max_diff = 0.0, err2 = 0.0, ref2 = 0.0;
  size_t bad = 0;
  void Add(float got, float ref) {
    const double diff = std::fabs(static_cast<double>(got) - ref);
    if (!std::isfinite(got) || diff > 1e-2 + 2e-2 * std::fabs(ref)) ++bad;
    if (std::isfinite(got)) max_diff = std::max(max_diff, diff);
    err2 += std::isfinite(got) ? diff * diff : 1e30;
    ref2 += static_cast<double>(ref) * ref;
  }
  double Rel() const { return ref2 > 0 ? std::sqrt(err2 / ref2) : 0.0; }
  bool Pass() const { return bad == 0 && Rel() < 5e-3; }
};

int g_num_sms = 0;

struct PagedCase {
  const char* name;
  int hq, hkv, d, page_size;
  std::vector<int> lens;
  int splits;  // 0: PagedDecodeSplits
};

bool RunPaged(const PagedCase& pc, std::mt19937& rng) {
  const Cache c = BuildCache(pc.hkv, pc.d, pc.page_size, pc.lens, rng);
  // One decode token per sequence at its last key, one more at an earlier position of the
  // longest sequence (several tokens of one sequence), and a padding token in the middle.
  std::vector<int32_t> seq, pos;
  for (size_t s = 0; s < pc.lens.size(); ++s) {
    seq.push_back(static_cast<int32_t>(s));
    pos.push_back(pc.lens[s] - 1);
    if (s == pc.lens.size() / 2) {
      seq.push_back(0);
      pos.push_back(-1);
    }
  }
  const int longest =
      static_cast<int>(std::max_element(pc.lens.begin(), pc.lens.end()) - pc.lens.begin());
  seq.push_back(longest);
  pos.push_back(pc.lens[longest] / 2);
  const int tokens = static_cast<int>(seq.size());
  const int d = pc.d, hq = pc.hq;
  std::vector<float> q(static_cast<size_t>(tokens) * hq * d);
  std::vector<bf16> q_bf(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    q[i] = RandomNonZero(rng, 4.0f);
    q_bf[i] = __float2bfloat16(q[i]);
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int splits = pc.splits > 0
                         ? pc.splits
                         : hw::PagedDecodeSplits(tokens, hq, pc.hkv,
                                                 int64_t{c.max_blocks} * pc.page_size, g_num_sms);
  DeviceCache dc(c);
  DeviceArray<bf16> dq(q_bf), dout(q.size());
  DeviceArray<int32_t> dseq(seq), dpos(pos);
  const size_t scratch_bytes = hw::DecodeAttentionScratchBytes(int64_t{tokens} * hq, splits, d);
  DeviceArray<unsigned char> scratch(scratch_bytes);
  SplitCounters counters(int64_t{tokens} * hq);
  // Twice, poisoned before each: the second run finds the counters as the first left them.
  for (int run = 0; run < 2; ++run) {
    CHECK_CUDA(cudaMemset(dout.ptr, 0xFF, dout.n * sizeof(bf16)));  // bf16 NaN
    CHECK_CUDA(cudaMemset(scratch.ptr, 0xFF, std::max<size_t>(scratch_bytes, 1)));
    if (!hw::LaunchPagedDecodeAttention(nullptr, dq.ptr, dc.view, dseq.ptr, dpos.ptr, nullptr,
                                        tokens, hq, d, scale, splits, scratch.ptr, scratch_bytes,
                                        counters.array.ptr, dout.ptr)) {
      std::printf("paged  %-26s launcher refused the shape  FAIL\n", pc.name);
      return false;
    }
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaDeviceSynchronize());
  }
  const std::vector<bf16> got = dout.Host();
  std::vector<float> ref(q.size());
  const int group = hq / pc.hkv;
  ParallelFor(tokens * hq, [&](int i) {
    const int t = i / hq, qh = i % hq;
    float* o = &ref[static_cast<size_t>(i) * d];
    std::vector<int> keys;
    for (int j = 0; j <= pos[t]; ++j) keys.push_back(j);
    Attend(c, seq[t], qh / group, &q[static_cast<size_t>(i) * d], scale, keys, {}, o, nullptr);
  });
  Compare cmp;
  size_t pad_bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float g = __bfloat162float(got[i]);
    cmp.Add(g, ref[i]);
    if (pos[i / (static_cast<size_t>(hq) * d)] < 0 && g != 0.0f) ++pad_bad;
  }
  const bool zeroed = counters.AllZero();
  const bool pass = cmp.Pass() && pad_bad == 0 && zeroed;
  std::printf(
      "paged  %-26s hq %2d hkv %d d %3d ps %2d T %2d splits %3d  max|diff| %.2e rel %.2e "
      "bad %zu pad %zu%s %s\n",
      pc.name, hq, pc.hkv, d, pc.page_size, tokens, splits, cmp.max_diff, cmp.Rel(), cmp.bad,
      pad_bad, zeroed ? "" : " counters left set", pass ? "PASS" : "FAIL");
  return pass;
}

struct SparseCase {
  const char* name;
  int hq, hkv, d, page_size;
  std::vector<int> lens;
  int rows, max_list;
  bool bias;
  int splits;  // 0: SparseDecodeSplits
};

bool RunSparse(const SparseCase& sc, std::mt19937& rng) {
  const Cache c = BuildCache(sc.hkv, sc.d, sc.page_size, sc.lens, rng);
  const int num_seqs = static_cast<int>(sc.lens.size()), d = sc.d, hq = sc.hq;
  const int group = hq / sc.hkv;
  std::vector<int32_t> row_seq, row_kv, indptr{0}, indices;
  std::vector<float> bias;
  std::uniform_int_distribution<int> pick_seq(0, num_seqs - 1), pick_head(0, sc.hkv - 1);
  std::uniform_int_distribution<int> pick_size(0, sc.max_list);
  std::uniform_real_distribution<float> pick_bias(-3.0f, 3.0f);
  for (int r = 0; r < sc.rows; ++r) {
    const int s = pick_seq(rng);
    row_seq.push_back(s);
    row_kv.push_back(pick_head(rng));
    // Row 1 empty, row 2 a single key; the rest random sizes (repeats allowed).
    const int size = r == 1 ? 0 : r == 2 ? 1 : pick_size(rng);
    std::uniform_int_distribution<int> pick_pos(0, sc.lens[s] - 1);
    for (int i = 0; i < size; ++i) {
      indices.push_back(pick_pos(rng));
      bias.push_back(pick_bias(rng));
    }
    indptr.push_back(static_cast<int32_t>(indices.size()));
  }
  if (!sc.bias) bias.clear();
  std::vector<float> q(static_cast<size_t>(num_seqs) * hq * d);
  std::vector<bf16> q_bf(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    q[i] = RandomNonZero(rng, 4.0f);
    q_bf[i] = __float2bfloat16(q[i]);
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int splits =
      sc.splits > 0 ? sc.splits : hw::SparseDecodeSplits(sc.rows, group, sc.max_list, g_num_sms);
  DeviceCache dc(c);
  DeviceArray<bf16> dq(q_bf), dout(static_cast<size_t>(sc.rows) * group * d);
  DeviceArray<float> dlse(static_cast<size_t>(sc.rows) * group), dbias(bias);
  DeviceArray<int32_t> drs(row_seq), drk(row_kv), dptr(indptr), didx(indices);
  const size_t scratch_bytes = hw::DecodeAttentionScratchBytes(int64_t{sc.rows} * group, splits, d);
  DeviceArray<unsigned char> scratch(scratch_bytes);
  SplitCounters counters(int64_t{sc.rows} * group);
  for (int run = 0; run < 2; ++run) {
    CHECK_CUDA(cudaMemset(dout.ptr, 0xFF, dout.n * sizeof(bf16)));
    CHECK_CUDA(cudaMemset(dlse.ptr, 0xFF, dlse.n * sizeof(float)));
    CHECK_CUDA(cudaMemset(scratch.ptr, 0xFF, std::max<size_t>(scratch_bytes, 1)));
    if (!hw::LaunchSparseDecodeAttention(nullptr, dq.ptr, dc.view, drs.ptr, drk.ptr, dptr.ptr,
                                         didx.ptr, sc.bias ? dbias.ptr : nullptr, sc.rows, hq, d,
                                         scale, splits, scratch.ptr, scratch_bytes,
                                         counters.array.ptr, dout.ptr, dlse.ptr)) {
      std::printf("sparse %-26s launcher refused the shape  FAIL\n", sc.name);
      return false;
    }
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaDeviceSynchronize());
  }
  const std::vector<bf16> got = dout.Host();
  const std::vector<float> got_lse = dlse.Host();
  std::vector<float> ref(dout.n), ref_lse(dlse.n);
  ParallelFor(sc.rows * group, [&](int i) {
    const int r = i / group, g = i % group;
    const std::vector<int> keys(indices.begin() + indptr[r], indices.begin() + indptr[r + 1]);
    std::vector<float> b;
    if (sc.bias) b.assign(bias.begin() + indptr[r], bias.begin() + indptr[r + 1]);
    const float* qv = &q[(static_cast<size_t>(row_seq[r]) * hq + row_kv[r] * group + g) * d];
    Attend(c, row_seq[r], row_kv[r], qv, scale, keys, b, &ref[static_cast<size_t>(i) * d],
           &ref_lse[i]);
  });
  Compare cmp;
  for (size_t i = 0; i < ref.size(); ++i) cmp.Add(__bfloat162float(got[i]), ref[i]);
  size_t lse_bad = 0;
  double lse_max = 0.0;
  for (size_t i = 0; i < ref_lse.size(); ++i) {
    if (std::isinf(ref_lse[i])) {
      if (!(std::isinf(got_lse[i]) && got_lse[i] < 0)) ++lse_bad;
      continue;
    }
    const double diff = std::fabs(static_cast<double>(got_lse[i]) - ref_lse[i]);
    if (!std::isfinite(got_lse[i]) || diff > 1e-3 + 1e-4 * std::fabs(ref_lse[i])) ++lse_bad;
    if (std::isfinite(got_lse[i])) lse_max = std::max(lse_max, diff);
  }
  const bool zeroed = counters.AllZero();
  const bool pass = cmp.Pass() && lse_bad == 0 && zeroed;
  std::printf(
      "sparse %-26s hq %2d hkv %d d %3d ps %2d R %3d splits %3d  max|diff| %.2e rel %.2e "
      "bad %zu lse max|diff| %.1e bad %zu%s %s\n",
      sc.name, hq, sc.hkv, d, sc.page_size, sc.rows, splits, cmp.max_diff, cmp.Rel(), cmp.bad,
      lse_max, lse_bad, zeroed ? "" : " counters left set", pass ? "PASS" : "FAIL");
  return pass;
}

__global__ void FillRandom(bf16* x, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = __float2bfloat16((static_cast<float>(h & 0xffff) + 1.0f) / 32768.0f - 1.0f);
  }
}

// Microseconds per call of `launch(i)` for i < 16, captured as one graph and replayed (median
// of 10 replays after 3 warm-ups).
template <typename Launch>
double TimeGraph(cudaStream_t stream, Launch launch) {
  constexpr int kCalls = 16;
  cudaGraph_t graph;
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  for (int i = 0; i < kCalls; ++i) {
    if (!launch(i)) {
      std::fprintf(stderr, "launch refused\n");
      std::exit(1);
    }
  }
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  return MedianReplayMs(stream, graph, 3, 10) * 1e3 / kCalls;
}

// Paged decode of `batch` sequences of `context` keys each, Llama-3-8B layer shapes. Rotates over
// enough copies of the cache that L2 holds none of it between calls; times graph replays.
void RunTiming(int batch, int context, double copy_bw, const std::vector<double>& split_scales) {
  constexpr int kHq = 32, kHkv = 8, kD = 128, kPs = 16;
  const double kv_bytes = 2.0 * batch * context * kHkv * kD * sizeof(bf16);
  const int rot = std::max(2, static_cast<int>(std::ceil(512e6 / kv_bytes)));
  const int blocks_per_seq = context / kPs;
  const size_t pool_blocks = size_t{1} * rot * batch * blocks_per_seq;
  const size_t pool_elems = pool_blocks * kHkv * kPs * kD;
  DeviceArray<bf16> k(pool_elems), v(pool_elems), q(static_cast<size_t>(batch) * kHq * kD),
      out(q.n);
  FillRandom<<<1024, 256>>>(k.ptr, k.n, 1);
  FillRandom<<<1024, 256>>>(v.ptr, v.n, 2);
  FillRandom<<<64, 256>>>(q.ptr, q.n, 3);
  CHECK_CUDA(cudaGetLastError());
  std::mt19937 rng(7);
  std::vector<int32_t> ids(pool_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  for (int32_t& id : ids) id *= kHkv;  // a block's first page
  DeviceArray<int32_t> table(ids);     // rotation i: rows i * batch .. of [rot * batch, blocks]
  std::vector<int32_t> head_page(kHkv), seq(batch), pos(batch, context - 1);
  std::iota(head_page.begin(), head_page.end(), 0);
  std::shuffle(head_page.begin(), head_page.end(), rng);
  std::iota(seq.begin(), seq.end(), 0);
  DeviceArray<KvHead> dheads(FullHeads(head_page));
  DeviceArray<int32_t> dseq(seq), dpos(pos), dlayout(std::vector<int32_t>(batch, 0));
  const int auto_splits =
      hw::PagedDecodeSplits(batch, kHq, kHkv, int64_t{blocks_per_seq} * kPs, g_num_sms);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (double scale : split_scales) {
    const int splits = std::max(1, static_cast<int>(std::lround(auto_splits * scale)));
    const size_t scratch_bytes = hw::DecodeAttentionScratchBytes(int64_t{batch} * kHq, splits, kD);
    DeviceArray<unsigned char> scratch(scratch_bytes);
    SplitCounters counters(int64_t{batch} * kHq);
    const double us = TimeGraph(stream, [&](int i) {
      const hw::DecodeKvCache kv{k.ptr,
                                 v.ptr,
                                 dheads.ptr,
                                 dlayout.ptr,
                                 table.ptr + size_t{1} * (i % rot) * batch * blocks_per_seq,
                                 blocks_per_seq,
                                 kPs,
                                 kHkv};
      return hw::LaunchPagedDecodeAttention(stream, q.ptr, kv, dseq.ptr, dpos.ptr, nullptr, batch,
                                            kHq, kD, 0.088f, splits, scratch.ptr, scratch_bytes,
                                            counters.array.ptr, out.ptr);
    });
    const double bw = kv_bytes / (us * 1e-6);
    std::printf(
        "timing batch %3d ctx %6d splits %3d%s: %8.2f us  KV %7.1f GB/s  %5.1f%% of copy (rot "
        "%d)\n",
        batch, context, splits, scale == 1.0 ? " (auto)" : "       ", us, bw / 1e9,
        100.0 * bw / copy_bw, rot);
  }
  CHECK_CUDA(cudaStreamDestroy(stream));
}

// The pool laid out as the engine's KV cache does, with `layers` layers of 8 KV heads: a block
// of 16 tokens holds every (layer, head) page. Block-major (block_major): page = block *
// layers * 8 + layer * 8 + head, so one layer's pages of a sequence lie a block's bytes apart;
// layer-major: page = (layer * 8 + head) * num_blocks + block, one layer's pages contiguous.
// Each call reads the next layer (that of the engine's step), graph of 16 calls.
void RunLayoutTiming(int batch, int context, int layers, bool block_major, double copy_bw) {
  constexpr int kHq = 32, kHkv = 8, kD = 128, kPs = 16;
  const double kv_bytes = 2.0 * batch * context * kHkv * kD * sizeof(bf16);
  const int blocks_per_seq = context / kPs;
  const int num_blocks = batch * blocks_per_seq;
  const int ppb = layers * kHkv;
  const size_t pool_elems = size_t{1} * num_blocks * ppb * kPs * kD;
  DeviceArray<bf16> k(pool_elems), v(pool_elems), q(static_cast<size_t>(batch) * kHq * kD),
      out(q.n);
  FillRandom<<<1024, 256>>>(k.ptr, k.n, 1);
  FillRandom<<<1024, 256>>>(v.ptr, v.n, 2);
  FillRandom<<<64, 256>>>(q.ptr, q.n, 3);
  CHECK_CUDA(cudaGetLastError());
  std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
  std::iota(ids.begin(), ids.end(), 0);  // sequences get consecutive blocks, as Reserve does
  if (block_major) {
    for (int32_t& id : ids) id *= ppb;  // a block's first page
  }
  DeviceArray<int32_t> table(ids);
  std::vector<int32_t> head_page(static_cast<size_t>(layers) * kHkv), seq(batch),
      pos(batch, context - 1);
  for (int l = 0; l < layers; ++l) {
    for (int h = 0; h < kHkv; ++h) {
      head_page[static_cast<size_t>(l) * kHkv + h] =
          block_major ? l * kHkv + h : (l * kHkv + h) * num_blocks;
    }
  }
  std::iota(seq.begin(), seq.end(), 0);
  DeviceArray<KvHead> dheads(FullHeads(head_page));  // layer l's layout: kHkv heads from l * kHkv
  DeviceArray<int32_t> dseq(seq), dpos(pos), dlayout(std::vector<int32_t>(batch, 0));
  const int splits =
      hw::PagedDecodeSplits(batch, kHq, kHkv, int64_t{blocks_per_seq} * kPs, g_num_sms);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const size_t scratch_bytes = hw::DecodeAttentionScratchBytes(int64_t{batch} * kHq, splits, kD);
  DeviceArray<unsigned char> scratch(scratch_bytes);
  SplitCounters counters(int64_t{batch} * kHq);
  const double us = TimeGraph(stream, [&](int i) {
    const hw::DecodeKvCache kv{k.ptr,       v.ptr,     dheads.ptr + (i % layers) * kHkv,
                               dlayout.ptr, table.ptr, blocks_per_seq,
                               kPs,         kHkv};
    return hw::LaunchPagedDecodeAttention(stream, q.ptr, kv, dseq.ptr, dpos.ptr, nullptr, batch,
                                          kHq, kD, 0.088f, splits, scratch.ptr, scratch_bytes,
                                          counters.array.ptr, out.ptr);
  });
  const double bw = kv_bytes / (us * 1e-6);
  std::printf(
      "layout %-12s batch %3d ctx %6d layers %2d splits %3d: %8.2f us  KV %7.1f GB/s  "
      "%5.1f%% of copy\n",
      block_major ? "block-major" : "layer-major", batch, context, layers, splits, us, bw / 1e9,
      100.0 * bw / copy_bw);
  CHECK_CUDA(cudaStreamDestroy(stream));
}

}  // namespace

int main(int argc, char** argv) {
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  g_num_sms = prop.multiProcessorCount;
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, g_num_sms, prop.l2CacheSize >> 20);
  std::mt19937 rng(std::random_device{}());
  const std::vector<int> mixed = {1, 15, 16, 17, 1000, 5000};
  const std::vector<PagedCase> paged = {
      {"g1 d64 mixed", 4, 4, 64, 16, mixed, 0},
      {"g4 d128 mixed", 32, 8, 128, 16, mixed, 0},
      {"g4 d128 mixed 1 split", 32, 8, 128, 16, mixed, 1},
      {"g4 d128 mixed 7 splits", 32, 8, 128, 16, mixed, 7},
      {"g8 d128 mixed", 16, 2, 128, 16, mixed, 0},
      {"g16 d128 mixed", 32, 2, 128, 16, mixed, 0},
      {"g16 d64 mixed 1 split", 16, 1, 64, 16, mixed, 1},
      {"g4 d64 ps8", 8, 2, 64, 8, mixed, 0},
      {"g8 d128 ps32", 16, 2, 128, 32, mixed, 0},
      {"g4 d16 mixed", 8, 2, 16, 16, mixed, 0},
      {"g4 d16 ps1 1 split", 8, 2, 16, 1, {1, 17, 300}, 1},
      {"g2 d24", 4, 2, 24, 16, mixed, 0},
      {"g12 d96", 24, 2, 96, 16, mixed, 0},
      {"g32 d128 (two head tiles)", 32, 1, 128, 16, mixed, 0},
      {"g4 d256", 8, 2, 256, 16, mixed, 0},
      {"g4 d128 long 32K", 32, 8, 128, 16, {32768, 20000}, 0},
      {"g4 d128 long 1000 splits", 32, 8, 128, 16, {32768}, 1000},
  };
  const std::vector<SparseCase> sparse = {
      {"g4 d128 bias", 32, 8, 128, 16, mixed, 40, 700, true, 1},
      {"g4 d128 bias split", 32, 8, 128, 16, mixed, 40, 700, true, 0},
      {"g4 d128 no bias", 32, 8, 128, 16, mixed, 40, 300, false, 1},
      {"g1 d64 bias", 4, 4, 64, 16, mixed, 30, 200, true, 3},
      {"g16 d64 bias", 16, 1, 64, 16, mixed, 20, 2000, true, 0},
      {"g8 d16 bias ps8", 16, 2, 16, 8, mixed, 20, 100, true, 1},
      {"g12 d24 bias", 24, 2, 24, 16, mixed, 20, 150, true, 2},
  };
  // --no-timing: checks only; --timing-only: timings only (builds with experimental flags that
  // break the results).
  const std::string_view mode = argc > 1 ? argv[1] : "";
  bool all_pass = true;
  if (mode != "--timing-only" && mode != "--layouts") {
    for (const PagedCase& c : paged) all_pass &= RunPaged(c, rng);
    for (const SparseCase& c : sparse) all_pass &= RunSparse(c, rng);
  }
  if (mode != "--no-timing" && mode != "--layouts") {
    const double copy_bw = CopyBandwidth();
    std::printf("copy bandwidth (read + write): %.1f GB/s\n", copy_bw / 1e9);
    const std::vector<double> scales = {1.0, 0.5, 0.25, 2.0};
    RunTiming(1, 32768, copy_bw, scales);
    RunTiming(8, 32768, copy_bw, scales);
    RunTiming(1, 8192, copy_bw, scales);
    RunTiming(64, 1024, copy_bw, scales);
    RunTiming(32, 8192, copy_bw, scales);
  }
  if (mode == "--layouts") {
    const double copy_bw = CopyBandwidth();
    for (bool block_major : {true, false}) {
      RunLayoutTiming(1, 32768, 32, block_major, copy_bw);
      RunLayoutTiming(8, 32768, 8, block_major, copy_bw);
      RunLayoutTiming(1, 1024, 32, block_major, copy_bw);
    }
  }
  std::printf("%s\n", all_pass ? "ALL PASS" : "SOME FAILED");
  return all_pass ? 0 : 1;
}
