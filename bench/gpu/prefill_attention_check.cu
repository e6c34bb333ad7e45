// Checks LaunchPagedPrefillAttention against an fp32 CPU reference on random paged inputs, then
// times it at Llama-3-8B shapes. Standalone (this file + kernels/cuda/prefill_attention.cu), so
// the binary runs on a bare GPU machine; bench/gpu/build-check.sh prefill builds it.
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
#include <thread>
#include <vector>

#include "bench/gpu/check_util.cuh"
#include "kernels/cuda/prefill_attention.h"

namespace {

using bf16 = __nv_bfloat16;
using headwise::bench::DeviceArray;
using headwise::bench::kUnusedBlock;

struct Case {
  const char* name;
  int hq, hkv, d, page_size;
  std::vector<int> num_q;     // query rows per sequence
  std::vector<int> prefix;    // cached keys before the sequence's first query
  int extra_query_bound = 0;  // added to max_query_len: blocks past every sequence must exit
};

// Inputs of one case: host copies (float, already bf16-rounded, logical layout) and the paged
// device layout the kernel reads.
struct Problem {
  Case c;
  int num_seqs = 0, total_q = 0, max_q = 0, max_blocks = 0, pages_per_block = 0;
  std::vector<int32_t> query_start, first_pos, block_table, head_page;
  std::vector<float> q;                  // [T, hq, d]
  std::vector<std::vector<float>> k, v;  // per sequence: [hkv, keys, d]
  std::vector<bf16> q_bf, k_pool, v_pool;
  float scale = 0.0f;
};

float RandomNonZero(std::mt19937& rng, float bound) {
  std::uniform_real_distribution<float> dist(-bound, bound);
  for (;;) {
    const float x = __bfloat162float(__float2bfloat16(dist(rng)));
    if (std::fabs(x) >= 1e-3f * bound) return x;
  }
}

Problem Build(const Case& c, std::mt19937& rng) {
  Problem p;
  p.c = c;
  p.num_seqs = static_cast<int>(c.num_q.size());
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
  p.query_start.push_back(0);
  int blocks_needed = 0;
  for (int s = 0; s < p.num_seqs; ++s) {
    p.query_start.push_back(p.query_start.back() + c.num_q[s]);
    p.first_pos.push_back(c.prefix[s]);
    p.max_q = std::max(p.max_q, c.num_q[s]);
    const int keys = c.prefix[s] + c.num_q[s];
    const int blocks = (keys + c.page_size - 1) / c.page_size;
    p.max_blocks = std::max(p.max_blocks, blocks);
    blocks_needed += blocks;
  }
  p.max_blocks += 2;
  p.total_q = p.query_start.back();

  // Two layers' pages per block; this layer's KV heads sit in a shuffled half of them.
  p.pages_per_block = 2 * c.hkv;
  std::vector<int32_t> slots(p.pages_per_block);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  p.head_page.assign(slots.begin(), slots.begin() + c.hkv);

  const int pool_blocks = blocks_needed + 7;
  std::vector<int32_t> block_ids(pool_blocks);
  std::iota(block_ids.begin(), block_ids.end(), 0);
  std::shuffle(block_ids.begin(), block_ids.end(), rng);
  p.block_table.assign(static_cast<size_t>(p.num_seqs) * p.max_blocks, kUnusedBlock);

  // Every pool slot starts as NaN: a kernel reading a slot it has no business reading shows up.
  const size_t pool_elems =
      static_cast<size_t>(pool_blocks) * p.pages_per_block * c.page_size * c.d;
  const bf16 nan = __float2bfloat16(NAN);
  p.k_pool.assign(pool_elems, nan);
  p.v_pool.assign(pool_elems, nan);

  int next_block = 0;
  p.k.resize(p.num_seqs);
  p.v.resize(p.num_seqs);
  for (int s = 0; s < p.num_seqs; ++s) {
    const int keys = c.prefix[s] + c.num_q[s];
    const int blocks = (keys + c.page_size - 1) / c.page_size;
    for (int b = 0; b < blocks; ++b) {  // a block's first page
      p.block_table[s * p.max_blocks + b] = block_ids[next_block++] * p.pages_per_block;
    }
    p.k[s].resize(static_cast<size_t>(c.hkv) * keys * c.d);
    p.v[s].resize(p.k[s].size());
    for (int h = 0; h < c.hkv; ++h) {
      for (int j = 0; j < keys; ++j) {
        const int64_t page =
            int64_t{p.block_table[s * p.max_blocks + j / c.page_size]} + p.head_page[h];
        const int64_t base = (page * c.page_size + j % c.page_size) * c.d;
        for (int e = 0; e < c.d; ++e) {
          const size_t idx = (static_cast<size_t>(h) * keys + j) * c.d + e;
          p.k[s][idx] = RandomNonZero(rng, 1.0f);
          p.v[s][idx] = RandomNonZero(rng, 1.0f);
          p.k_pool[base + e] = __float2bfloat16(p.k[s][idx]);
          p.v_pool[base + e] = __float2bfloat16(p.v[s][idx]);
        }
      }
    }
  }
  // |q| up to 4 against |k| up to 1 puts the logits' spread near 1.3: a peaked softmax, so that
  // a missing or extra key moves the output well past the tolerance.
  p.q.resize(static_cast<size_t>(p.total_q) * c.hq * c.d);
  p.q_bf.resize(p.q.size());
  for (size_t i = 0; i < p.q.size(); ++i) {
    p.q[i] = RandomNonZero(rng, 4.0f);
    p.q_bf[i] = __float2bfloat16(p.q[i]);
  }
  return p;
}

// fp32 softmax(q k^T * scale) v per (query row, head), causal; threads split the query heads.
std::vector<float> Reference(const Problem& p) {
  const Case& c = p.c;
  std::vector<float> out(p.q.size(), 0.0f);
  const int group = c.hq / c.hkv;
  const auto run_heads = [&](int h_begin, int h_end) {
    std::vector<float> logits;
    for (int s = 0; s < p.num_seqs; ++s) {
      const int keys = c.prefix[s] + c.num_q[s];
      for (int i = 0; i < c.num_q[s]; ++i) {
        const int row = p.query_start[s] + i;
        const int pos = c.prefix[s] + i;
        for (int qh = h_begin; qh < h_end; ++qh) {
          const float* qv = &p.q[(static_cast<size_t>(row) * c.hq + qh) * c.d];
          const float* kh = &p.k[s][static_cast<size_t>(qh / group) * keys * c.d];
          const float* vh = &p.v[s][static_cast<size_t>(qh / group) * keys * c.d];
          logits.resize(pos + 1);
          float mx = -INFINITY;
          for (int j = 0; j <= pos; ++j) {
            float dot = 0.0f;
            for (int e = 0; e < c.d; ++e) dot += qv[e] * kh[static_cast<size_t>(j) * c.d + e];
            logits[j] = dot * p.scale;
            mx = std::max(mx, logits[j]);
          }
          float sum = 0.0f;
          for (int j = 0; j <= pos; ++j) sum += (logits[j] = std::exp(logits[j] - mx));
          float* o = &out[(static_cast<size_t>(row) * c.hq + qh) * c.d];
          for (int j = 0; j <= pos; ++j) {
            const float w = logits[j] / sum;
            for (int e = 0; e < c.d; ++e) o[e] += w * vh[static_cast<size_t>(j) * c.d + e];
          }
        }
      }
    }
  };
  std::vector<std::thread> threads;
  const int workers = std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(), c.hq));
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back(run_heads, c.hq * w / workers, c.hq * (w + 1) / workers);
  }
  for (auto& t : threads) t.join();
  return out;
}

// One KV layout of full heads (kernels::KvHead) at the problem's pages inside a block.
std::vector<headwise::kernels::KvHead> FullHeads(const Problem& p) {
  std::vector<headwise::kernels::KvHead> heads(p.head_page.size());
  for (size_t h = 0; h < heads.size(); ++h) heads[h].page = p.head_page[h];
  return heads;
}

struct Device {
  DeviceArray<bf16> q, k_pool, v_pool, out;
  DeviceArray<int32_t> query_start, first_pos, block_table, seq_layout;
  DeviceArray<headwise::kernels::KvHead> heads;
  explicit Device(const Problem& p)
      : q(p.q_bf),
        k_pool(p.k_pool),
        v_pool(p.v_pool),
        out(p.q_bf.size()),
        query_start(p.query_start),
        first_pos(p.first_pos),
        block_table(p.block_table),
        seq_layout(std::vector<int32_t>(static_cast<size_t>(p.num_seqs), 0)),
        heads(FullHeads(p)) {}
};

bool Launch(const Problem& p, Device& dev, cudaStream_t stream) {
  const headwise::kernels::cuda::DecodeKvCache kv{
      dev.k_pool.ptr,      dev.v_pool.ptr, dev.heads.ptr, dev.seq_layout.ptr,
      dev.block_table.ptr, p.max_blocks,   p.c.page_size, p.c.hkv};
  return headwise::kernels::cuda::LaunchPagedPrefillAttention(
      stream, dev.q.ptr, kv, dev.query_start.ptr, dev.first_pos.ptr, p.num_seqs,
      p.max_q + p.c.extra_query_bound, p.c.hq, p.c.d, p.scale, dev.out.ptr);
}

bool RunCheck(const Case& c, std::mt19937& rng) {
  const Problem p = Build(c, rng);
  Device dev(p);
  // 0xFFFF is a bf16 NaN: any output element the kernel skips fails the comparison.
  CHECK_CUDA(cudaMemset(dev.out.ptr, 0xFF, p.q_bf.size() * sizeof(bf16)));
  if (!Launch(p, dev, nullptr)) {
    std::printf("%-22s launcher refused the shape  FAIL\n", c.name);
    return false;
  }
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<bf16> got(p.q_bf.size());
  CHECK_CUDA(
      cudaMemcpy(got.data(), dev.out.ptr, got.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
  const std::vector<float> ref = Reference(p);
  constexpr float kAbsTol = 1e-2f, kRelTol = 2e-2f;
  double max_diff = 0.0, err2 = 0.0, ref2 = 0.0;
  size_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float g = __bfloat162float(got[i]);
    const double diff = std::fabs(static_cast<double>(g) - ref[i]);
    if (!std::isfinite(g) || diff > kAbsTol + kRelTol * std::fabs(ref[i])) ++bad;
    if (std::isfinite(g)) max_diff = std::max(max_diff, diff);
    err2 += std::isfinite(g) ? diff * diff : 1e30;
    ref2 += static_cast<double>(ref[i]) * ref[i];
  }
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : 0.0;
  const bool pass = bad == 0 && rel < 1e-2;
  std::printf("%-22s hq %2d hkv %d d %3d ps %2d rows %5d  max|diff| %.3e  rel %.2e  bad %zu  %s\n",
              c.name, c.hq, c.hkv, c.d, c.page_size, p.total_q, max_diff, rel, bad,
              pass ? "PASS" : "FAIL");
  return pass;
}

void RunTiming(int tokens, std::mt19937& rng) {
  Case c{"timing", 32, 8, 128, 16, {tokens}, {0}};
  const Problem p = Build(c, rng);
  Device dev(p);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 5; ++i) Launch(p, dev, stream);
  CHECK_CUDA(cudaGetLastError());
  constexpr int kRuns = 40;
  std::vector<float> ms(kRuns);
  for (int i = 0; i < kRuns; ++i) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    Launch(p, dev, stream);
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    CHECK_CUDA(cudaEventElapsedTime(&ms[i], start, stop));
  }
  CHECK_CUDA(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  const double attended = 0.5 * tokens * (tokens + 1.0);  // sum over queries of keys seen
  const double flops = 4.0 * c.d * c.hq * attended;
  const double median = ms[kRuns / 2];
  std::printf("timing hq 32 hkv 8 d 128 T %5d: median %.4f ms (min %.4f)  %.1f TFLOP/s\n", tokens,
              median, ms[0], flops / (median * 1e-3) / 1e12);
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  CHECK_CUDA(cudaStreamDestroy(stream));
}

}  // namespace

int main() {
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::mt19937 rng(std::random_device{}());
  const std::vector<int> mixed_q = {1, 7, 16, 33, 0, 100, 300};
  const std::vector<Case> cases = {
      {"g1 d64 mixed", 4, 4, 64, 16, mixed_q, {0, 37, 512, 5, 9, 0, 13}},
      {"g4 d128 mixed", 8, 2, 128, 16, {300, 0, 33, 1, 100, 7, 16}, {37, 9, 0, 512, 512, 0, 3}},
      {"g8 d128 mixed", 16, 2, 128, 16, {100, 300, 1, 7, 0, 16, 33}, {0, 512, 37, 0, 100, 64, 1}},
      {"g8 d64 mixed", 8, 1, 64, 16, {33, 1, 300, 0, 100, 16, 7}, {512, 0, 37, 3, 0, 1, 100}},
      {"g4 d64 bound+70", 8, 2, 64, 16, {7, 100, 0, 1}, {5, 0, 0, 2}, 70},
      {"g1 d128 mixed", 2, 2, 128, 16, mixed_q, {3, 0, 37, 512, 0, 64, 1}},
      {"g4 d128 ps8", 8, 2, 128, 8, {300, 33, 1}, {37, 0, 512}},
      {"g8 d64 ps32", 16, 2, 64, 32, {100, 7, 0, 16}, {512, 37, 0, 0}},
      {"llama3 d128 T1024", 32, 8, 128, 16, {1024}, {0}},
  };
  bool all_pass = true;
  for (const Case& c : cases) all_pass &= RunCheck(c, rng);
  for (int tokens : {1024, 8192}) RunTiming(tokens, rng);
  std::printf("%s\n", all_pass ? "ALL PASS" : "SOME FAILED");
  return all_pass ? 0 : 1;
}
