#include <cooperative_groups.h>

#include <algorithm>

#include "kernels/cuda/gemv.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ptx.cuh"

// Tuning knobs; the defines let bench/gpu build variants without editing this file.
#ifndef HW_GEMV_STEP_CHUNKS
#define HW_GEMV_STEP_CHUNKS 4  // 32-wide k chunks per pipeline step
#endif
#ifndef HW_GEMV_WARPS
#define HW_GEMV_WARPS 4
#endif
#ifndef HW_GEMV_SMEM_BUDGET
#define HW_GEMV_SMEM_BUDGET (110 * 1024)  // per block: two blocks per SM
#endif
// Four stages beat six at m <= 8 on the H100 (83% against 77% of copy bandwidth over a layer):
// smaller blocks fit three to an SM, and more blocks hide the barrier of each step better than
// deeper stages do.
#ifndef HW_GEMV_MAX_STAGES
#define HW_GEMV_MAX_STAGES 4
#endif
#ifndef HW_GEMV_SLOTS_PER_SM
#define HW_GEMV_SLOTS_PER_SM 3  // blocks per SM that the K split assumes (those of m <= 8)
#endif

namespace headwise::kernels::cuda {
namespace {

using ptx::AllowDependentLaunch;
using ptx::CopyAsync16;
using ptx::CopyAsyncCommit;
using ptx::CopyAsyncWait;
using ptx::Mma;
using ptx::SharedAddress;
using ptx::WaitForPriorGrids;

namespace cg = cooperative_groups;
using bf16 = __nv_bfloat16;

// A block is a few warps over 16 weight rows each (one mma M tile) and one K slice; the blocks of a
// cluster split K among them and reduce through distributed shared memory. Weights and
// activations of a step travel by cp.async into a deep shared-memory pipeline: the bytes in flight
// per SM then do not depend on registers, and one block alone can pull more than its share of the
// bandwidth, so that partly filled waves cost little.
constexpr int kWarps = HW_GEMV_WARPS;
constexpr int kThreads = 32 * kWarps;
constexpr int kBlockRows = 16 * kWarps;
constexpr int kStepChunks = HW_GEMV_STEP_CHUNKS;
constexpr int kStepK = 32 * kStepChunks;
constexpr int kStepVecs = kStepK / 8;          // 16-byte pieces per activation row and step
constexpr int kMaxSplit = 8;                   // portable cluster size
constexpr int kPartialPitch = kBlockRows + 4;  // floats; the +4 spreads fragment stores over banks
static_assert(kStepVecs >= 16, "the activation swizzle spans 16 pieces");

struct Params {
  const bf16* x;
  const bf16* w;
  const bf16* bias;
  void* out;
  int m, n, k;
  int steps;  // kStepK-wide steps over the whole of k
  bool out_f32;
};

// A stage holds the block's weight rows and the (padded) activation rows for one step.
template <int Tiles>
__host__ __device__ constexpr int StageElems() {
  return (kBlockRows + 8 * Tiles) * kStepK;
}
template <int Tiles>
__host__ __device__ constexpr int Stages() {
  const int fit = HW_GEMV_SMEM_BUDGET / (StageElems<Tiles>() * 2);
  return fit < HW_GEMV_MAX_STAGES ? fit : HW_GEMV_MAX_STAGES;
}
template <int Tiles>
constexpr int SharedBytes() {
  const int stages = Stages<Tiles>() * StageElems<Tiles>() * 2;
  const int partials = 8 * Tiles * kPartialPitch * 4;
  return stages > partials ? stages : partials;
}

// Weights stream past L1 (.cg) with a 256-byte L2 prefetch, since the next pieces of the same
// rows follow.
__device__ __forceinline__ void CopyAsync16Prefetch(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(SharedAddress(dst)),
               "l"(src), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ uint4 LoadShared16(const bf16* p) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(SharedAddress(p)));
  return v;
}

// Element offset of 16-byte piece `vec` of activation row `row` in one stage. A warp reads rows
// g = 0..7 at pieces 4c + t; XOR-ing bits 2-3 of the piece with the row puts the four rows that a
// quarter-warp and its neighbour read into different 64-byte bank ranges.
__device__ __forceinline__ int StageOffset(int row, int vec) {
  return row * kStepK + ((vec ^ ((row & 3) << 2)) << 3);
}

// Lane (g, t) reads 16 contiguous bytes of weight rows g and g + 8 at k = 32 c + 8 t and uses them
// as the A fragments of two k16 mmas; the sum over k does not care which k sits in which fragment
// slot as long as the activation fragment (16 bytes of activation row g at the same k) follows the
// same order. So every copy is 16 bytes wide, consecutive threads copy consecutive pieces of a row,
// and no shuffle or ldmatrix rearranges anything.
template <int Tiles>
__global__ void __launch_bounds__(kThreads, 2) SkinnyGemmKernel(Params p) {
  constexpr int kXRows = 8 * Tiles;
  constexpr int kStages = Stages<Tiles>();
  constexpr int kStageElems = StageElems<Tiles>();
  constexpr int kWeightVecs = kBlockRows * kStepVecs, kVecs = (kBlockRows + kXRows) * kStepVecs;
  static_assert(kStages >= 2 && kWeightVecs % kThreads == 0);
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* s_stages = reinterpret_cast<bf16*>(smem);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  cg::cluster_group cluster = cg::this_cluster();
  const int split = static_cast<int>(cluster.num_blocks());
  const int rank = static_cast<int>(cluster.block_rank());
  const int row_block = blockIdx.x / split;
  const int step_begin = static_cast<int>(int64_t{p.steps} * rank / split);
  const int steps = static_cast<int>(int64_t{p.steps} * (rank + 1) / split) - step_begin;
  const int64_t row0 = int64_t{row_block} * kBlockRows;

  // Rows past n and m, and k past its end, are zero-filled without reading memory. Weight and
  // activation pieces of a step go out separately or together (one commit group either way).
  const auto load = [&](int step, bool weights, bool activations) {
    if (step < steps) {
      const int k0 = (step_begin + step) * kStepK;
      bf16* dst = s_stages + (step % kStages) * kStageElems;
#pragma unroll
      for (int i0 = 0; i0 < kVecs; i0 += kThreads) {
        const int i = i0 + threadIdx.x;
        if (kVecs % kThreads == 0 || i < kVecs) {
          const int r = i / kStepVecs, v = i % kStepVecs;
          const int kk = k0 + 8 * v;
          if (i0 < kWeightVecs) {
            if (!weights) continue;
            const bool valid = row0 + r < p.n && kk < p.k;
            CopyAsync16Prefetch(dst + StageOffset(r, v), valid ? p.w + (row0 + r) * p.k + kk : p.w,
                                valid);
          } else if (activations) {
            const int xr = r - kBlockRows;
            const bool valid = xr < p.m && kk < p.k;
            CopyAsync16(dst + StageOffset(r, v), valid ? p.x + int64_t{xr} * p.k + kk : p.x, valid);
          }
        }
      }
    }
    // An empty group past the end keeps the wait count below uniform.
    CopyAsyncCommit();
  };

  float acc[Tiles][4] = {};
  const auto compute = [&](int step) {
    const bf16* stage = s_stages + (step % kStages) * kStageElems;
#pragma unroll
    for (int c = 0; c < kStepChunks; ++c) {
      const uint4 lo = LoadShared16(stage + StageOffset(warp * 16 + g, 4 * c + t));
      const uint4 hi = LoadShared16(stage + StageOffset(warp * 16 + g + 8, 4 * c + t));
#pragma unroll
      for (int j = 0; j < Tiles; ++j) {
        const uint4 b = LoadShared16(stage + StageOffset(kBlockRows + 8 * j + g, 4 * c + t));
        Mma(acc[j], lo.x, hi.x, lo.y, hi.y, b.x, b.y);
        Mma(acc[j], lo.z, hi.z, lo.w, hi.w, b.z, b.w);
      }
    }
  };

  // The weights do not depend on the kernels before this one (see LaunchGemv): the first stages'
  // weights stream in while those still run, the activations only after they are done. (Pulling
  // further steps into L2 with prefetch instructions as well was slower at every depth tried on
  // the H100: batch 1 at 1K took 5.89 ms without, 6.06 / 6.35 / 6.67 ms with 2 / 4 / 16 steps.)
  // Groups: W0..W(S-2), X0..X(S-2), then one per step, so that at step s waiting for all but the
  // newest S-2 groups always covers stage s.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) load(s, true, false);
  WaitForPriorGrids();
  AllowDependentLaunch();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) load(s, false, true);
  // One barrier per step: the stage refilled at step s was last read at step s - 1, which every
  // warp has finished once it passes the barrier of step s.
  for (int step = 0; step < steps; ++step) {
    CopyAsyncWait<kStages - 2>();
    __syncthreads();
    load(step + kStages - 1, true, true);
    compute(step);
  }
  CopyAsyncWait<0>();
  __syncthreads();

  // Partials as [activation row][weight row], over the stages now that every warp is done.
  float* partial = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int j = 0; j < Tiles; ++j) {
    const int col = 8 * j + 2 * t, row = warp * 16 + g;
    partial[col * kPartialPitch + row] = acc[j][0];
    partial[(col + 1) * kPartialPitch + row] = acc[j][1];
    partial[col * kPartialPitch + row + 8] = acc[j][2];
    partial[(col + 1) * kPartialPitch + row + 8] = acc[j][3];
  }
  cluster.sync();

  // Block `rank` finishes its share of the rows, summing the K slices in rank order.
  const int rows_per_rank = kBlockRows / split;
  const int first = rank * rows_per_rank;
  const int count = p.m * rows_per_rank;
  for (int idx = threadIdx.x; idx < count; idx += kThreads) {
    const int i = idx / rows_per_rank, r = first + idx % rows_per_rank;
    const int row = row_block * kBlockRows + r;
    if (row >= p.n) continue;
    float v = 0.0f;
    for (int s = 0; s < split; ++s) v += cluster.map_shared_rank(partial, s)[i * kPartialPitch + r];
    if (p.bias != nullptr) v += __bfloat162float(p.bias[row]);
    const int64_t o = int64_t{i} * p.n + row;
    if (p.out_f32) {
      static_cast<float*>(p.out)[o] = v;
    } else {
      static_cast<bf16*>(p.out)[o] = __float2bfloat16(v);
    }
  }
  // Peers may still be reading this block's partials.
  cluster.sync();
}

int MultiprocessorCount() {
  constexpr int kMaxDevices = 64;
  static int counts[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return 132;
  if (counts[device] == 0) {
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      sms = 132;
    }
    counts[device] = sms;
  }
  return counts[device];
}

// The K split depends on n, k and the device only, never on m, so that a row's sum runs in the
// same order whatever the batch. It picks the smallest split whose block waves per unit of work
// come within 5% of the fewest: more blocks only where they fill the machine, since each carries
// a fixed prologue and cluster reduction. (The lm_head of Llama-3-8B, 2004 row blocks: 41 cost
// units at split 8, 42 at split 4; in a graph of a decode step's GEMMs on the H100 split 4 took
// 5.345 ms and split 8 5.39, bench/gpu/gemv_check.cu --chain.)
int ChooseSplit(int row_blocks, int steps) {
  const int64_t slots = int64_t{HW_GEMV_SLOTS_PER_SM} * MultiprocessorCount();
  int64_t costs[kMaxSplit + 1] = {};
  int64_t best_cost = -1;
  for (int s = 1; s <= kMaxSplit && s <= steps; s *= 2) {
    const int64_t waves = (int64_t{row_blocks} * s + slots - 1) / slots;
    costs[s] = waves * (kMaxSplit / s);
    if (best_cost < 0 || costs[s] < best_cost) best_cost = costs[s];
  }
  for (int s = 1; s <= kMaxSplit && s <= steps; s *= 2) {
    if (costs[s] * 20 <= best_cost * 21) return s;
  }
  return 1;
}

template <int Tiles>
void LaunchTiles(cudaStream_t stream, const Params& p, int row_blocks, int split) {
  constexpr int kSmem = SharedBytes<Tiles>();
  static const cudaError_t configured = cudaFuncSetAttribute(
      SkinnyGemmKernel<Tiles>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  (void)configured;
  // A failed launch leaves its error for the caller's cudaGetLastError.
  (void)PdlLaunch(dim3(static_cast<unsigned>(row_blocks * split)), dim3(kThreads), kSmem, stream)
      .Cluster(static_cast<unsigned>(split))(SkinnyGemmKernel<Tiles>, p);
}

}  // namespace

void LaunchGemv(cudaStream_t stream, const bf16* x, const bf16* w, const bf16* bias, void* out,
                bool out_f32, int m, int n, int k) {
  if (m <= 0 || n <= 0) return;
  Params p{x, w, bias, out, m, n, k, (k + kStepK - 1) / kStepK, out_f32};
  const int row_blocks = (n + kBlockRows - 1) / kBlockRows;
  const int split = ChooseSplit(row_blocks, p.steps);
  if (m <= 8) {
    LaunchTiles<1>(stream, p, row_blocks, split);
  } else if (m <= 16) {
    LaunchTiles<2>(stream, p, row_blocks, split);
  } else if (m <= 32) {
    LaunchTiles<4>(stream, p, row_blocks, split);
  } else {
    LaunchTiles<8>(stream, p, row_blocks, split);
  }
}

}  // namespace headwise::kernels::cuda
