// Checks LaunchGemv against an fp32 CPU reference on random inputs (all supported row counts, odd
// shapes, f32/bf16 out, with and without bias, batch invariance), then times it at Llama-3-8B
// decode shapes against a device-to-device copy and cuBLAS. Standalone (this file +
// kernels/cuda/gemv.cu); cuBLAS is loaded at run time when it is there, so the binary also runs
// without it. bench/gpu/build-check.sh gemv builds it. --timing-only skips the checks; --chain
// times a decode step's GEMMs in one graph instead of one launch at a time.
// Exit code: 0 when every case matches, 1 on any mismatch or CUDA error.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "bench/gpu/check_util.cuh"
#include "kernels/cuda/gemv.h"

namespace {

using bf16 = __nv_bfloat16;
using headwise::bench::CopyBandwidth;
using headwise::bench::Median;
using headwise::bench::MedianReplayMs;
using headwise::kernels::cuda::kGemvKernelMaxRows;
using headwise::kernels::cuda::kGemvMaxRows;
using headwise::kernels::cuda::LaunchGemv;

// cuBLAS through dlopen: its libraries are far too large to carry, and the check must run where
// they are missing.
struct Cublas {
  using CreateFn = cublasStatus_t (*)(cublasHandle_t*);
  using SetStreamFn = cublasStatus_t (*)(cublasHandle_t, cudaStream_t);
  using SetWorkspaceFn = cublasStatus_t (*)(cublasHandle_t, void*, size_t);
  using GemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int,
                                      int, int, const void*, const void*, cudaDataType, int,
                                      const void*, cudaDataType, int, const void*, void*,
                                      cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
  cublasHandle_t handle = nullptr;
  GemmExFn gemm = nullptr;
  void* workspace = nullptr;

  bool Load(cudaStream_t stream) {
    void* lib = nullptr;
    for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) {
      if ((lib = dlopen(name, RTLD_NOW | RTLD_GLOBAL)) != nullptr) break;
    }
    if (lib == nullptr) {
      std::printf("cuBLAS not found (%s): no comparison\n", dlerror());
      return false;
    }
    const auto create = reinterpret_cast<CreateFn>(dlsym(lib, "cublasCreate_v2"));
    const auto set_stream = reinterpret_cast<SetStreamFn>(dlsym(lib, "cublasSetStream_v2"));
    const auto set_ws = reinterpret_cast<SetWorkspaceFn>(dlsym(lib, "cublasSetWorkspace_v2"));
    gemm = reinterpret_cast<GemmExFn>(dlsym(lib, "cublasGemmEx"));
    if (!create || !set_stream || !set_ws || !gemm || create(&handle) != CUBLAS_STATUS_SUCCESS) {
      std::printf("cuBLAS symbols missing: no comparison\n");
      return false;
    }
    // A fixed workspace keeps cuBLAS from allocating inside graph capture.
    constexpr size_t kWorkspace = size_t{64} << 20;
    CHECK_CUDA(cudaMalloc(&workspace, kWorkspace));
    set_stream(handle, stream);
    set_ws(handle, workspace, kWorkspace);
    return true;
  }

  // Row-major out[m, n] = x w^T in f32 is column-major out^T = (w as [k, n])^T x^T.
  void Run(const bf16* x, const bf16* w, float* out, int m, int n, int k) const {
    const float alpha = 1.0f, beta = 0.0f;
    const cublasStatus_t st =
        gemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, k, x, CUDA_R_16BF,
             k, &beta, out, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) {
      std::fprintf(stderr, "cublasGemmEx failed: %d\n", static_cast<int>(st));
      std::exit(1);
    }
  }
};

float RandomNonZero(std::mt19937& rng, float bound) {
  std::uniform_real_distribution<float> dist(-bound, bound);
  for (;;) {
    const float x = __bfloat162float(__float2bfloat16(dist(rng)));
    if (std::fabs(x) >= 1e-3f * bound) return x;
  }
}

void Fill(std::vector<float>& f, std::vector<bf16>& b, size_t count, float bound,
          std::mt19937& rng) {
  f.resize(count);
  b.resize(count);
  for (size_t i = 0; i < count; ++i) {
    f[i] = RandomNonZero(rng, bound);
    b[i] = __float2bfloat16(f[i]);
  }
}

template <typename Fn>
void ParallelFor(int count, Fn fn) {
  const int workers = std::max(1, std::min<int>(std::thread::hardware_concurrency(), count));
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      for (int i = w; i < count; i += workers) fn(i);
    });
  }
  for (auto& t : threads) t.join();
}

constexpr int kCheckRows[] = {1, 2, 3, 4, 5, 6, 7, 8, 13, 16, 31, 32, 33, 64};
constexpr size_t kGuardBytes = 4096;

// One (n, k): fresh inputs, every row count, both output types, with and without bias. Rows of
// every run must equal the same rows of the 64-row run bit for bit.
bool CheckShape(int n, int k, std::mt19937& rng) {
  constexpr int kRows = 64;
  std::vector<float> xf, wf, bf;
  std::vector<bf16> xb, wb, bb;
  Fill(xf, xb, static_cast<size_t>(kRows) * k, 1.0f, rng);
  Fill(wf, wb, static_cast<size_t>(n) * k, 0.05f, rng);
  Fill(bf, bb, n, 0.5f, rng);
  std::vector<double> ref(static_cast<size_t>(kRows) * n), mag(static_cast<size_t>(kRows) * n);
  ParallelFor(n, [&](int j) {
    for (int i = 0; i < kRows; ++i) {
      double s = 0.0, a = 0.0;
      for (int e = 0; e < k; ++e) {
        const double p =
            double{xf[static_cast<size_t>(i) * k + e]} * wf[static_cast<size_t>(j) * k + e];
        s += p;
        a += std::fabs(p);
      }
      ref[static_cast<size_t>(i) * n + j] = s;
      mag[static_cast<size_t>(i) * n + j] = a;
    }
  });
  bf16 *dx, *dw, *db;
  unsigned char* dout;
  const size_t out_bytes = static_cast<size_t>(kRows) * n * sizeof(float);
  CHECK_CUDA(cudaMalloc(&dx, xb.size() * sizeof(bf16)));
  CHECK_CUDA(cudaMalloc(&dw, wb.size() * sizeof(bf16)));
  CHECK_CUDA(cudaMalloc(&db, bb.size() * sizeof(bf16)));
  CHECK_CUDA(cudaMalloc(&dout, out_bytes + kGuardBytes));
  CHECK_CUDA(cudaMemcpy(dx, xb.data(), xb.size() * sizeof(bf16), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dw, wb.data(), wb.size() * sizeof(bf16), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(db, bb.data(), bb.size() * sizeof(bf16), cudaMemcpyHostToDevice));

  bool all_pass = true;
  std::vector<unsigned char> host(out_bytes + kGuardBytes);
  for (const bool f32 : {true, false}) {
    for (const bool with_bias : {false, true}) {
      const size_t elem = f32 ? 4 : 2;
      std::map<int, std::vector<unsigned char>> bits;  // per m: the m x n outputs as stored
      double worst_rel = 0.0, worst_ratio = 0.0;
      std::string failed;
      for (const int m : kCheckRows) {
        if (m > kGemvKernelMaxRows) continue;
        const size_t bytes = static_cast<size_t>(m) * n * elem;
        // 0xFF bytes are NaN in f32 and bf16: an element the kernel skips fails below.
        CHECK_CUDA(cudaMemset(dout, 0xFF, out_bytes + kGuardBytes));
        LaunchGemv(nullptr, dx, dw, with_bias ? db : nullptr, dout, f32, m, n, k);
        CHECK_CUDA(cudaGetLastError());
        CHECK_CUDA(cudaDeviceSynchronize());
        CHECK_CUDA(cudaMemcpy(host.data(), dout, bytes + kGuardBytes, cudaMemcpyDeviceToHost));
        bool ok = true;
        for (size_t i = bytes; i < bytes + kGuardBytes; ++i) ok &= host[i] == 0xFF;
        double err2 = 0.0, ref2 = 0.0;
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < n; ++j) {
            const size_t o = static_cast<size_t>(i) * n + j;
            float got;
            if (f32) {
              std::memcpy(&got, &host[o * 4], 4);
            } else {
              bf16 h;
              std::memcpy(&h, &host[o * 2], 2);
              got = __bfloat162float(h);
            }
            const double want = ref[o] + (with_bias ? bf[j] : 0.0f);
            const double diff = std::fabs(got - want);
            const double tol =
                4e-5 * (mag[o] + 1.0) + (f32 ? 0.0 : std::ldexp(std::fabs(want), -8));
            if (!std::isfinite(got) || !(diff <= tol)) ok = false;
            if (std::isfinite(got)) worst_ratio = std::max(worst_ratio, diff / tol);
            err2 += std::isfinite(got) ? diff * diff : 1e30;
            ref2 += want * want;
          }
        }
        const double rel = std::sqrt(err2 / std::max(ref2, 1e-30));
        worst_rel = std::max(worst_rel, rel);
        if (rel > (f32 ? 1e-5 : 1e-2)) ok = false;
        if (!ok) failed += " " + std::to_string(m);
        bits[m].assign(host.begin(), host.begin() + bytes);
      }
      // Batch invariance: rows of every m equal those rows inside the widest batch, bitwise.
      std::string variant;
      const int widest = bits.rbegin()->first;
      for (const auto& [m, b] : bits) {
        if (std::memcmp(b.data(), bits[widest].data(), b.size()) != 0)
          variant += " " + std::to_string(m);
      }
      const bool pass = failed.empty() && variant.empty();
      all_pass &= pass;
      std::printf("check n %6d k %5d %s %-7s m 1..%d: max rel %.2e  max err/tol %.3f  %s%s%s%s%s\n",
                  n, k, f32 ? "f32 " : "bf16", with_bias ? "bias" : "no-bias", widest, worst_rel,
                  worst_ratio, pass ? "PASS" : "FAIL", failed.empty() ? "" : "  wrong at m",
                  failed.c_str(), variant.empty() ? "" : "  batch-variant at m", variant.c_str());
    }
  }
  CHECK_CUDA(cudaFree(dx));
  CHECK_CUDA(cudaFree(dw));
  CHECK_CUDA(cudaFree(db));
  CHECK_CUDA(cudaFree(dout));
  return all_pass;
}

__global__ void FillRandom(bf16* p, size_t count, uint32_t seed, float bound) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed ^ static_cast<uint32_t>(i >> 32);
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    // Uniform in [-bound, bound], never zero.
    const float u = ((h >> 8) + 0.5f) * (1.0f / 16777216.0f);
    p[i] = __float2bfloat16((2.0f * u - 1.0f) * bound + (u < 0.5f ? -1e-3f : 1e-3f) * bound);
  }
}

// Median time of one product in microseconds: kLaunches products over rotating weight copies
// (together several times the L2) with an event between each two, queued behind a long copy so that
// the host stays ahead of the device and no launch gap lands in a sample.
template <typename Fn>
float TimeLaunches(cudaStream_t stream, int copies, void* scratch, size_t scratch_bytes,
                   Fn launch) {
  constexpr int kLaunches = 48, kRounds = 2;
  for (int i = 0; i < copies; ++i) launch(i);  // warm-up
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<cudaEvent_t> events(kLaunches + 1);
  for (auto& e : events) CHECK_CUDA(cudaEventCreate(&e));
  std::vector<float> us;
  for (int r = 0; r < kRounds; ++r) {
    CHECK_CUDA(cudaMemcpyAsync(static_cast<char*>(scratch) + scratch_bytes / 2, scratch,
                               scratch_bytes / 2, cudaMemcpyDeviceToDevice, stream));
    for (int i = 0; i < kLaunches; ++i) {
      CHECK_CUDA(cudaEventRecord(events[i], stream));
      launch(i % copies);
    }
    CHECK_CUDA(cudaEventRecord(events[kLaunches], stream));
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaStreamSynchronize(stream));
    for (int i = 0; i < kLaunches; ++i) {
      float t;
      CHECK_CUDA(cudaEventElapsedTime(&t, events[i], events[i + 1]));
      us.push_back(t * 1e3f);
    }
  }
  for (auto& e : events) CHECK_CUDA(cudaEventDestroy(e));
  return Median(us);
}

struct Shape {
  const char* name;
  int n, k;
  bool decode;  // counted in the per-layer sum
};

void RunTiming(cudaStream_t stream, double copy_gbs) {
  const Shape shapes[] = {{"qkv", 6144, 4096, true},
                          {"o", 4096, 4096, true},
                          {"gate_up", 28672, 4096, true},
                          {"down", 4096, 14336, true},
                          {"lm_head", 128256, 4096, false}};
  const int rows[] = {1, 2, 4, 8, 16, 32, 64};
  constexpr size_t kRotateBytes = size_t{256} << 20;
  size_t pool_elems = 0;
  for (const Shape& s : shapes) {
    const size_t bytes = static_cast<size_t>(s.n) * s.k * 2;
    const size_t copies = std::max<size_t>(2, (kRotateBytes + bytes - 1) / bytes);
    pool_elems = std::max(pool_elems, copies * s.n * s.k);
  }
  bf16 *pool, *x;
  float* out;
  void* scratch;
  constexpr size_t kScratch = size_t{512} << 20;
  CHECK_CUDA(cudaMalloc(&scratch, kScratch));
  CHECK_CUDA(cudaMalloc(&pool, pool_elems * sizeof(bf16)));
  CHECK_CUDA(cudaMalloc(&x, size_t{64} * 14336 * sizeof(bf16)));
  CHECK_CUDA(cudaMalloc(&out, size_t{64} * 128256 * sizeof(float)));
  FillRandom<<<4096, 256, 0, stream>>>(pool, pool_elems, 12345u, 0.05f);
  FillRandom<<<1024, 256, 0, stream>>>(x, size_t{64} * 14336, 777u, 1.0f);
  CHECK_CUDA(cudaGetLastError());
  Cublas cublas;
  const bool have_cublas = cublas.Load(stream);

  struct Sum {
    double bytes = 0, ours_us = 0, cublas_us = 0;
  };
  std::map<int, Sum> decode_sum, all_sum;
  std::printf("\n%-8s %6s %5s %3s | %9s %8s %6s | %9s %8s %6s | %7s\n", "shape", "n", "k", "m",
              "ours us", "GB/s", "copy%", "cuBLAS us", "GB/s", "copy%", "speedup");
  for (const Shape& s : shapes) {
    const size_t elems = static_cast<size_t>(s.n) * s.k;
    const int copies =
        static_cast<int>(std::max<size_t>(2, (kRotateBytes + elems * 2 - 1) / (elems * 2)));
    for (const int m : rows) {
      const double bytes = elems * 2.0;
      float ours = NAN, theirs = NAN;
      if (m <= kGemvKernelMaxRows) {
        ours = TimeLaunches(stream, copies, scratch, kScratch, [&](int c) {
          LaunchGemv(stream, x, pool + c * elems, nullptr, out, true, m, s.n, s.k);
        });
      }
      if (have_cublas) {
        theirs = TimeLaunches(stream, copies, scratch, kScratch,
                              [&](int c) { cublas.Run(x, pool + c * elems, out, m, s.n, s.k); });
      }
      const double ours_gbs = bytes / (ours * 1e-6) / 1e9;
      const double theirs_gbs = bytes / (theirs * 1e-6) / 1e9;
      std::printf("%-8s %6d %5d %3d | %9.2f %8.0f %5.1f%% | %9.2f %8.0f %5.1f%% | %6.2fx\n", s.name,
                  s.n, s.k, m, ours, ours_gbs, 100.0 * ours_gbs / copy_gbs, theirs, theirs_gbs,
                  100.0 * theirs_gbs / copy_gbs, theirs / ours);
      for (auto* sum : {&all_sum[m], s.decode ? &decode_sum[m] : nullptr}) {
        if (sum == nullptr) continue;
        sum->bytes += bytes;
        sum->ours_us += ours;
        sum->cublas_us += theirs;
      }
    }
  }
  CHECK_CUDA(cudaGetLastError());
  for (const auto* table : {&decode_sum, &all_sum}) {
    std::printf("\nsum over %s:\n",
                table == &decode_sum ? "qkv+o+gate_up+down (one layer)" : "all five shapes");
    std::printf("%3s | %9s %8s %6s | %9s %8s %6s\n", "m", "ours us", "GB/s", "copy%", "cuBLAS us",
                "GB/s", "copy%");
    for (const auto& [m, sum] : *table) {
      const double ours_gbs = sum.bytes / (sum.ours_us * 1e-6) / 1e9;
      const double theirs_gbs = sum.bytes / (sum.cublas_us * 1e-6) / 1e9;
      std::printf("%3d | %9.1f %8.0f %5.1f%% | %9.1f %8.0f %5.1f%%\n", m, sum.ours_us, ours_gbs,
                  100.0 * ours_gbs / copy_gbs, sum.cublas_us, theirs_gbs,
                  100.0 * theirs_gbs / copy_gbs);
    }
  }
  CHECK_CUDA(cudaFree(pool));
  CHECK_CUDA(cudaFree(x));
  CHECK_CUDA(cudaFree(out));
  CHECK_CUDA(cudaFree(scratch));
}

}  // namespace

// --chain: the GEMMs of a Llama-3-8B decode step (32 layers of distinct weights, then the
// lm_head) captured in one graph, as the engine runs them: each launch streams its weights while
// the one before drains, which timing one launch at a time leaves out.
void RunChain(cudaStream_t stream, double copy_gbs, int m) {
  const Shape shapes[] = {{"qkv", 6144, 4096, true},
                          {"o", 4096, 4096, true},
                          {"gate_up", 28672, 4096, true},
                          {"down", 4096, 14336, true}};
  constexpr int kLayers = 32;
  size_t layer_elems = 0;
  for (const Shape& s : shapes) layer_elems += size_t{1} * s.n * s.k;
  const size_t head_elems = size_t{128256} * 4096;
  const size_t total = layer_elems * kLayers + head_elems;
  bf16 *w, *x;
  float* out;
  CHECK_CUDA(cudaMalloc(&w, total * sizeof(bf16)));
  CHECK_CUDA(cudaMalloc(&x, size_t{64} * 14336 * sizeof(bf16)));
  CHECK_CUDA(cudaMalloc(&out, size_t{64} * 128256 * sizeof(float)));
  FillRandom<<<4096, 256, 0, stream>>>(w, total, 4242u, 0.05f);
  FillRandom<<<1024, 256, 0, stream>>>(x, size_t{64} * 14336, 777u, 1.0f);
  Cublas cublas;
  const bool have_cublas = cublas.Load(stream);
  const double bytes = total * 2.0;
  const auto time = [&](const char* name, bool layer_cublas, bool head_cublas) {
    if ((layer_cublas || head_cublas) && !have_cublas) return;
    cudaGraph_t graph;
    CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    size_t off = 0;
    for (int l = 0; l < kLayers; ++l) {
      for (const Shape& s : shapes) {
        if (layer_cublas) {
          cublas.Run(x, w + off, out, m, s.n, s.k);
        } else {
          LaunchGemv(stream, x, w + off, nullptr, out, true, m, s.n, s.k);
        }
        off += size_t{1} * s.n * s.k;
      }
    }
    if (head_cublas) {
      cublas.Run(x, w + off, out, m, 128256, 4096);
    } else {
      LaunchGemv(stream, x, w + off, nullptr, out, true, m, 128256, 4096);
    }
    CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
    const double t = MedianReplayMs(stream, graph, 3, 20);
    std::printf("chain m %d %-28s %8.3f ms  %6.1f%% of copy\n", m, name, t,
                100.0 * bytes / (t * 1e-3) / 1e9 / copy_gbs);
  };
  time("ours", false, false);
  time("cuBLAS", true, true);
  time("ours, cuBLAS lm_head", false, true);
  CHECK_CUDA(cudaFree(w));
  CHECK_CUDA(cudaFree(x));
  CHECK_CUDA(cudaFree(out));
}

int main(int argc, char** argv) {
  const bool timing_only = argc > 1 && (std::strcmp(argv[1], "--timing-only") == 0 ||
                                        std::strcmp(argv[1], "--chain") == 0);
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB, kGemvMaxRows %d (kernel up to %d)\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, kGemvMaxRows, kGemvKernelMaxRows);
  std::mt19937 rng(std::random_device{}());
  bool all_pass = true;
  if (!timing_only) {
    const std::pair<int, int> shapes[] = {
        {7, 8}, {1001, 4104}, {33, 72}, {4096, 14336}, {6144, 4096}};
    for (const auto& [n, k] : shapes) all_pass &= CheckShape(n, k, rng);
  }
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const double copy_gbs = CopyBandwidth(stream) / 1e9;
  std::printf("copy bandwidth (1 GiB D2D, read+write): %.0f GB/s\n", copy_gbs);
  if (argc > 1 && std::strcmp(argv[1], "--chain") == 0) {
    RunChain(stream, copy_gbs, 1);
    RunChain(stream, copy_gbs, 8);
  } else {
    RunTiming(stream, copy_gbs);
  }
  CHECK_CUDA(cudaStreamDestroy(stream));
  if (!timing_only) std::printf("%s\n", all_pass ? "ALL PASS" : "SOME FAILED");
  return all_pass ? 0 : 1;
}
