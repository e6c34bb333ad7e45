#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/prefill_attention.h"
#include "kernels/cuda/ptx.cuh"

// Tile configuration; the defines let bench/gpu build other shapes without editing this file.
// Measured on the H100 (Hq 32, Hkv 8, D 128, one sequence, TFLOP/s at 1K / 8K tokens):
//   8 warps x 16 rows, 64-key tiles, 3 stages (default)   150-158 / 229-235
//   4 warps x 32 rows (two m-tiles), 2 stages               113 / 247
//   4 warps x 16 rows                                       139 / 188
//   8 warps, Q re-read from shared memory, 2 blocks/SM      123 / 251
// 128-row tiles share each K/V tile among more rows (less L2 traffic per flop) than 64-row ones.
// The 1K case has only 256 such blocks: with one block per SM the hardware deals them out
// heaviest first as SMs free up, which balances the causal triangle; variants that fit every
// block at once (two per SM) lose that and leave SMs idle behind the longest tiles.
#ifndef HW_PREFILL_WARPS
#define HW_PREFILL_WARPS 8
#endif
#ifndef HW_PREFILL_M_TILES
#define HW_PREFILL_M_TILES 1  // 16-row mma tiles per warp
#endif
#ifndef HW_PREFILL_BLOCK_N
#define HW_PREFILL_BLOCK_N 64
#endif
// With three stages the prefetch of tile i+1 overwrites the stage of tile i-2, which every warp
// has left once it passed the barrier of tile i-1: one barrier per tile instead of two.
#ifndef HW_PREFILL_STAGES
#define HW_PREFILL_STAGES 3
#endif
// Q stays in registers with one m-tile per warp unless this is set; with two m-tiles each K/V
// fragment feeds two mmas (less shared-memory traffic per mma) and Q is re-read from shared
// memory.
#ifndef HW_PREFILL_Q_IN_SMEM
#define HW_PREFILL_Q_IN_SMEM 0
#endif
#ifndef HW_PREFILL_MIN_BLOCKS
#define HW_PREFILL_MIN_BLOCKS 1
#endif

namespace headwise::kernels::cuda {
namespace {

using ptx::CopyAsync16;
using ptx::CopyAsyncCommit;
using ptx::CopyAsyncWait;
using ptx::Exp2;
using ptx::LoadMatrixX4;
using ptx::LoadMatrixX4Trans;
using ptx::Mma;
using ptx::PackBf16;

using bf16 = __nv_bfloat16;

constexpr int kWarps = HW_PREFILL_WARPS;
constexpr int kThreads = 32 * kWarps;
constexpr int kMTiles = HW_PREFILL_M_TILES;
constexpr int kWarpRows = 16 * kMTiles;
constexpr int kBlockM = kWarpRows * kWarps;
constexpr int kBlockN = HW_PREFILL_BLOCK_N;
constexpr int kStages = HW_PREFILL_STAGES;
constexpr bool kQInRegisters = kMTiles == 1 && !HW_PREFILL_Q_IN_SMEM;
constexpr int kMinBlocksPerSm = HW_PREFILL_MIN_BLOCKS;
static_assert(kStages == 2 || kStages == 3);
static_assert(kBlockN % 16 == 0, "key tiles are consumed 16 keys per mma k-step");

constexpr float kLog2e = 1.4426950408889634f;

struct Params {
  const bf16* q;
  DecodeKvCache kv;
  const int32_t* query_start;
  const int32_t* seq_first_pos;
  bf16* out;
  int hq;
  int group;  // query heads per KV head
  float scale_log2;
};

// Element offset of 16-byte chunk `chunk` of row `row` in a [rows, D] shared tile. XOR-ing the
// chunk with the row spreads the 8 rows that one ldmatrix reads at the same column over all 32
// banks; without it every row of a 128- or 256-byte pitch starts in the same bank.
template <int D>
__device__ __forceinline__ int SwizzledOffset(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// Grid: x = query head (so that the heads of one GQA group run side by side and share K/V in L2),
// y = query tile counted from the end of the sequence (the longest tiles start first, shortening
// the tail), z = sequence.
template <int D>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) PagedPrefillAttentionKernel(Params p) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kDimTiles = D / 8;
  constexpr int kKeyTiles = kBlockN / 8;
  static_assert(kBlockN * kChunks % kThreads == 0 && kBlockM * kChunks % kThreads == 0,
                "whole rounds of 16-byte copies per thread");
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* s_q = reinterpret_cast<bf16*>(smem);
  bf16* s_k = s_q + kBlockM * D;
  bf16* s_v = s_k + kStages * kBlockN * D;

  const int qh = blockIdx.x;
  const int seq = blockIdx.z;
  const int q_begin = p.query_start[seq];
  const int num_q = p.query_start[seq + 1] - q_begin;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * kBlockM;
  if (m0 >= num_q) return;
  const int rows = min(kBlockM, num_q - m0);
  const int chunk_start = p.seq_first_pos[seq];
  const int pos0 = chunk_start + m0;  // position of the tile's first query row
  const int kv_head = qh / p.group;
  // Keys as indices 0 .. num_keys - 1 (positions through keys.Position): what the tile's last row
  // attends, which covers every row's keys on full, ring and compress-once heads alike (a ring's
  // window starts by the chunk, not the row; a compacted sequence's kept span by the sequence), so
  // the causal mask by position is all that differs between rows.
  // The sequence's head (its layout's retention and page), read once: the tiles only index.
  const KvHead head = p.kv.Head(seq, kv_head);
  // A selecting sequence's one decode query on a non-dense head: the selection operations write
  // that output (kernels::BlockTable::seq_slot).
  if (p.kv.LeftToSelection(seq, head)) return;
  const AttendedKeys keys =
      AttendedKeys::Of(p.kv, head.retention, seq, pos0 + rows - 1, chunk_start);
  const int num_keys = keys.count;
  const int num_tiles = (num_keys + kBlockN - 1) / kBlockN;
  const int32_t* blocks = p.kv.BlocksOf(seq, head.retention);
  const int64_t head_page = head.page;
  const int page_size = p.kv.page_size;

  const int64_t q_stride = int64_t{p.hq} * D;
  const bf16* q_tile = p.q + int64_t{q_begin + m0} * q_stride + int64_t{qh} * D;
#pragma unroll
  for (int j = 0; j < kBlockM * kChunks / kThreads; ++j) {
    const int i = threadIdx.x + j * kThreads;
    const int r = i / kChunks, c = i % kChunks;
    const bool valid = r < rows;
    CopyAsync16(s_q + SwizzledOffset<D>(r, c), valid ? q_tile + r * q_stride + c * 8 : p.q, valid);
  }

  const auto load_kv = [&](int tile, int stage) {
    bf16* k_dst = s_k + stage * kBlockN * D;
    bf16* v_dst = s_v + stage * kBlockN * D;
#pragma unroll
    for (int j = 0; j < kBlockN * kChunks / kThreads; ++j) {
      const int i = threadIdx.x + j * kThreads;
      const int r = i / kChunks, c = i % kChunks;
      const int key = tile * kBlockN + r;
      const bool valid = key < num_keys;
      int64_t offset = 0;
      if (valid) {
        const int pos = keys.Position(key);
        const int64_t page = blocks[pos / page_size] + head_page;
        offset = (page * page_size + pos % page_size) * D + c * 8;
      }
      CopyAsync16(k_dst + SwizzledOffset<D>(r, c), p.kv.k_pool + offset, valid);
      CopyAsync16(v_dst + SwizzledOffset<D>(r, c), p.kv.v_pool + offset, valid);
    }
  };

  // Key tiles run from the last to the first: the diagonal tiles that need masking come first and
  // the rest run without the mask arithmetic.
  load_kv(num_tiles - 1, 0);
  CopyAsyncCommit();
  CopyAsyncWait<0>();
  __syncthreads();

  // A re-indexed head's q and keys arrive unrotated: each row turns by its rank (the index of its
  // own position among the keys; every row's list is a prefix of the last row's), each key by its
  // index as its tile lands.
  // Thread t turns column t % (D/2) of rows t / (D/2), + kRotRows, ... (RankRotation).
  const bool by_rank = head.retention.reindex();
  constexpr int kHalf = D / 2, kRotRows = kThreads / kHalf;
  static_assert(kThreads % kHalf == 0);
  const int rot_col = threadIdx.x % kHalf, rot_row0 = threadIdx.x / kHalf;
  RankRotation rotation(by_rank ? p.kv.rope_inv_freq[rot_col] : 0.0f, kRotRows);
  const auto rotate = [&](bf16* tile, int r) {
    rotation.Apply(tile[SwizzledOffset<D>(r, rot_col / 8) + rot_col % 8],
                   tile[SwizzledOffset<D>(r, (rot_col + kHalf) / 8) + rot_col % 8]);
  };
  if (by_rank) {
    // Rows hold consecutive positions; their ranks (keys.Index) are consecutive too unless the
    // tile straddles the sinks' end, so each row starts its own rotation (once per block).
    for (int r = rot_row0; r < rows; r += kRotRows) {
      rotation.Start(keys.Index(pos0 + r));
      rotate(s_q, r);
    }
    __syncthreads();
  }

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_row = warp * kWarpRows;
  const auto load_q = [&](uint32_t(&a)[4], int mt, int ks) {
    LoadMatrixX4(a, s_q + SwizzledOffset<D>(warp_row + mt * 16 + lane % 16, ks * 2 + lane / 16));
  };
  uint32_t q_frag[kQInRegisters ? D / 16 : 1][4];
  if constexpr (kQInRegisters) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) load_q(q_frag[ks], 0, ks);
  }

  float o_acc[kMTiles][kDimTiles][4];
  // This thread's rows: warp_row + mt * 16 + lane / 4, and 8 below it (h = 0, 1).
  float row_max[kMTiles][2], row_sum[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int t = 0; t < kDimTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o_acc[mt][t][e] = 0.0f;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_max[mt][h] = -INFINITY;
      row_sum[mt][h] = 0.0f;
    }
  }
  // Position of the warp's first row; keys above it need the causal mask.
  const int warp_pos = pos0 + warp_row;

  for (int it = 0; it < num_tiles; ++it) {
    const int tile = num_tiles - 1 - it;
    const int stage = it % kStages;
    if (tile > 0) load_kv(tile - 1, (it + 1) % kStages);
    CopyAsyncCommit();
    CopyAsyncWait<1>();
    __syncthreads();
    if (by_rank) {
      rotation.Start(tile * kBlockN + rot_row0);  // a key's rank is its index
      for (int r = rot_row0; r < kBlockN && tile * kBlockN + r < num_keys; r += kRotRows) {
        rotate(s_k + stage * kBlockN * D, r);
      }
      __syncthreads();
    }
    const bf16* k_tile = s_k + stage * kBlockN * D;
    const bf16* v_tile = s_v + stage * kBlockN * D;
    const int key0 = tile * kBlockN;
    // On the diagonal the upper warps' rows sit below the whole tile, and in a short chunk the
    // lower warps hold only padding rows: nothing to compute for either. Index past num_keys maps
    // past every row's position, so the causal mask also hides the tile's padding keys.
    if (keys.Position(key0) <= warp_pos + kWarpRows - 1 && warp_row < rows) {
      float s[kMTiles][kKeyTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int t = 0; t < kKeyTiles; ++t) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mt][t][e] = 0.0f;
        }
      }
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t a[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          if constexpr (kQInRegisters) {
#pragma unroll
            for (int e = 0; e < 4; ++e) a[mt][e] = q_frag[ks][e];
          } else {
            load_q(a[mt], mt, ks);
          }
        }
#pragma unroll
        for (int np = 0; np < kKeyTiles / 2; ++np) {
          // Matrices: keys +0..7 at d chunk 2ks, same keys at 2ks+1, then keys +8..15.
          uint32_t b[4];
          LoadMatrixX4(b, k_tile + SwizzledOffset<D>(np * 16 + lane % 8 + (lane / 16) * 8,
                                                     ks * 2 + (lane / 8) % 2));
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            Mma(s[mt][2 * np], a[mt], b[0], b[1]);
            Mma(s[mt][2 * np + 1], a[mt], b[2], b[3]);
          }
        }
      }

      // A compacted sequence's compensation token carries log(tokens it stands for) on its logit
      // (AttendedKeys), in the raw q.k units of s: scaled by scale_log2 below.
      if (keys.bias_index >= key0 && keys.bias_index < key0 + kBlockN) {
        const float bias = keys.bias * kLog2e / p.scale_log2;
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
          for (int t = 0; t < kKeyTiles; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              if (key0 + t * 8 + (lane % 4) * 2 + (e & 1) == keys.bias_index) s[mt][t][e] += bias;
            }
          }
        }
      }
      if (keys.Position(key0 + kBlockN - 1) > warp_pos) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
          for (int t = 0; t < kKeyTiles; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int key = keys.Position(key0 + t * 8 + (lane % 4) * 2 + (e & 1));
              const int pos = warp_pos + mt * 16 + lane / 4 + (e >> 1) * 8;
              if (key > pos) s[mt][t][e] = -INFINITY;
            }
          }
        }
      }

#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float m = row_max[mt][h];
#pragma unroll
          for (int t = 0; t < kKeyTiles; ++t)
            m = fmaxf(m, fmaxf(s[mt][t][2 * h], s[mt][t][2 * h + 1]));
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
          // A row whose keys so far are all masked keeps max -inf; subtracting 0 instead keeps
          // exp2(-inf - -inf) = NaN out of it.
          const float m_scaled = m == -INFINITY ? 0.0f : m * p.scale_log2;
          const float alpha = Exp2(row_max[mt][h] * p.scale_log2 - m_scaled);
          row_max[mt][h] = m;
          row_sum[mt][h] *= alpha;
#pragma unroll
          for (int t = 0; t < kDimTiles; ++t) {
            o_acc[mt][t][2 * h] *= alpha;
            o_acc[mt][t][2 * h + 1] *= alpha;
          }
#pragma unroll
          for (int t = 0; t < kKeyTiles; ++t) {
            float& s0 = s[mt][t][2 * h];
            float& s1 = s[mt][t][2 * h + 1];
            s0 = Exp2(fmaf(s0, p.scale_log2, -m_scaled));
            s1 = Exp2(fmaf(s1, p.scale_log2, -m_scaled));
            row_sum[mt][h] += s0 + s1;
          }
        }
      }

#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        // The S accumulators of key tiles 2kk and 2kk+1 are exactly the A fragment of P.
        uint32_t a[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          a[mt][0] = PackBf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          a[mt][1] = PackBf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          a[mt][2] = PackBf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          a[mt][3] = PackBf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < kDimTiles / 2; ++dp) {
          // Transposed: matrices keys +0..7 and +8..15 at d chunk 2dp, then the same at 2dp+1.
          uint32_t b[4];
          LoadMatrixX4Trans(b, v_tile + SwizzledOffset<D>(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8,
                                                          dp * 2 + lane / 16));
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            Mma(o_acc[mt][2 * dp], a[mt], b[0], b[1]);
            Mma(o_acc[mt][2 * dp + 1], a[mt], b[2], b[3]);
          }
        }
      }
    }
    // With two stages the next iteration's prefetch overwrites this one.
    if constexpr (kStages == 2) __syncthreads();
  }

  // Each warp stages its output rows in its own rows of s_q (no other warp reads them) so that
  // the global stores go out as whole 16-byte chunks.
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = row_sum[mt][h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      const int r = warp_row + mt * 16 + lane / 4 + h * 8;
#pragma unroll
      for (int t = 0; t < kDimTiles; ++t) {
        *reinterpret_cast<uint32_t*>(s_q + SwizzledOffset<D>(r, t) + (lane % 4) * 2) =
            PackBf16(o_acc[mt][t][2 * h] * inv, o_acc[mt][t][2 * h + 1] * inv);
      }
    }
  }
  __syncwarp();
  bf16* out_tile = p.out + int64_t{q_begin + m0} * q_stride + int64_t{qh} * D;
#pragma unroll
  for (int i = lane; i < kWarpRows * kChunks; i += 32) {
    const int r = warp_row + i / kChunks, c = i % kChunks;
    if (r < rows) {
      *reinterpret_cast<uint4*>(out_tile + r * q_stride + c * 8) =
          *reinterpret_cast<const uint4*>(s_q + SwizzledOffset<D>(r, c));
    }
  }
}

template <int D>
bool Launch(cudaStream_t stream, const Params& params, int num_seqs, int max_query_len) {
  const size_t smem = sizeof(bf16) * D * (kBlockM + 2 * kStages * kBlockN);
  if (cudaFuncSetAttribute(PagedPrefillAttentionKernel<D>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)) != cudaSuccess) {
    return false;
  }
  const dim3 grid(params.hq, (max_query_len + kBlockM - 1) / kBlockM, num_seqs);
  PagedPrefillAttentionKernel<D><<<grid, kThreads, smem, stream>>>(params);
  return true;
}

}  // namespace

bool LaunchPagedPrefillAttention(cudaStream_t stream, const __nv_bfloat16* q,
                                 const DecodeKvCache& kv, const int32_t* query_start,
                                 const int32_t* seq_first_pos, int num_seqs, int max_query_len,
                                 int hq, int d, float scale, __nv_bfloat16* out) {
  if ((d != 64 && d != 128) || kv.hkv <= 0 || hq <= 0 || hq % kv.hkv != 0 || kv.page_size < 1 ||
      num_seqs > 65535 || (max_query_len + kBlockM - 1) / kBlockM > 65535) {
    return false;
  }
  if (num_seqs <= 0 || max_query_len <= 0) return true;
  const Params params{q, kv, query_start, seq_first_pos, out, hq, hq / kv.hkv, scale * kLog2e};
  return d == 64 ? Launch<64>(stream, params, num_seqs, max_query_len)
                 : Launch<128>(stream, params, num_seqs, max_query_len);
}

}  // namespace headwise::kernels::cuda
