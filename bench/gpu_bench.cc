// The speed table of one model on one backend, every figure a ratio to a bound measured in the
// same run: device copy bandwidth (the decode roofline: a step reads every weight and the KV of
// its context once) and the GEMM rate at the prefill shapes (the prefill bound).
//
// usage: hw_bench_gpu MODEL [--device cuda|cpu] [--load-format dummy] [--batches 1,8,32,64]
//                     [--contexts 1024,8192,32768] [--prefill 1024,8192] [--tokens N]
//                     [--attention-context N (0: none)] [--enforce-eager]
//                     [--tensor-parallel-size N]
// Prints one JSON object per line: roofline, decode (per batch x context), attention (the
// decode attention kernel alone, per layer of a graph that runs it for every layer), prefill.
// With --tensor-parallel-size N > 1 (N GPUs, models::ModelShard) the decode roofline is one
// rank's: its share of the weights and of the KV read at the copy bandwidth, plus the step's
// all-reduces and logits gather timed alone in the same run ("allreduce"); the attention and
// prefill rows are left out.
// Decode contexts are not prefilled: the KV pages are reserved and read as they are, which costs
// the same as real keys.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/attention_setup.h"
#include "engine/model_loader.h"
#include "engine/model_runner.h"
#include "engine/rank_threads.h"
#include "kernels/backend_factory.h"
#include "tools/flags.h"

namespace hw = headwise;
using hw::DType;
using hw::Tensor;
using hw::bench::Median;
using hw::bench::Now;
using hw::bench::ParseIntList;
using hw::bench::TimeIt;
using hw::kernels::Backend;
using hw::kernels::Buffer;

namespace {

Buffer RandomWeight(Backend& be, int64_t rows, int64_t cols, std::mt19937& rng) {
  auto data = std::make_shared<std::vector<float>>(static_cast<size_t>(rows * cols));
  std::uniform_real_distribution<float> dist(-0.05f, 0.05f);
  for (float& x : *data) x = dist(rng);
  hw::kernels::HostTensor h;
  h.keepalive = data;
  h.data = data->data();
  h.shape = Tensor(nullptr, DType::kF32, hw::Device::kCpu, {rows, cols});
  return be.LoadWeight(h);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: hw_bench_gpu MODEL [--device cuda] [--load-format dummy] ...\n");
    return 2;
  }
  const std::string model_path = argv[1];
  hw::tools::FlagParser flags(argc - 1, argv + 1);
  std::string device = "cuda", load_format = "auto", batches_s = "1,8,32,64",
              contexts_s = "1024,8192,32768", prefill_s = "1024,8192";
  int tokens = 16, attention_context = 32768, tensor_parallel_size = 1;
  bool enforce_eager = false;
  flags.String("device", device);
  flags.String("load-format", load_format);
  flags.String("batches", batches_s);
  flags.String("contexts", contexts_s);
  flags.String("prefill", prefill_s);
  flags.Int("tokens", tokens);
  flags.Int("attention-context", attention_context);
  flags.Bool("enforce-eager", enforce_eager);
  flags.Int("tensor-parallel-size", tensor_parallel_size);
  if (auto s = flags.Finish(); !s.ok()) {
    std::fprintf(stderr, "hw_bench_gpu: error: %s\n", s.message().c_str());
    return 2;
  }
  auto group = hw::engine::CreateRankGroup(device, tensor_parallel_size, 0);
  if (!group.ok()) {
    std::fprintf(stderr, "hw_bench_gpu: error: %s\n", group.status().message().c_str());
    return 2;
  }
  const hw::engine::RankDevices devices = group->devices();
  const int num_ranks = group->size();
  Backend& be = *devices.backends.front();
  hw::engine::LoadOptions options;
  if (load_format == "dummy") options.format = hw::models::LoadFormat::kDummy;
  auto loaded = hw::engine::LoadModel(model_path, options, devices);
  if (!loaded.ok()) {
    std::fprintf(stderr, "hw_bench_gpu: error: %s\n", loaded.status().message().c_str());
    return 2;
  }
  auto& model = *loaded->model;
  const std::vector<hw::models::LlamaModel*> ranks = loaded->ranks();
  const auto& c = model.config();
  // K and V of all layers, of the KV heads one rank holds.
  const double kv_bytes_per_token = 2.0 * c.num_layers * c.num_kv_heads / num_ranks * c.head_dim *
                                    static_cast<double>(hw::DTypeSize(be.kv_dtype()));
  std::mt19937 rng(1);

  // --- bounds: copy bandwidth and GEMM rate ---
  const double copy_bw = hw::bench::CopyBandwidth(be, 5);
  const int64_t h = c.hidden_size, inter = c.intermediate_size;
  const int64_t qkv_n = int64_t{c.num_heads + 2 * c.num_kv_heads} * c.head_dim;
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {qkv_n, h}, {h, int64_t{c.num_heads} * c.head_dim}, {2 * inter, h}, {h, inter}};
  double gemm_flops = 0, gemm_s = 0;
  std::string per_shape;
  {
    const int64_t m = 8192;
    const DType act = be.activation_dtype();
    // Random activations: tensor cores run faster (cooler) on zeros, which would flatter the
    // bound.
    Buffer x = RandomWeight(be, m, std::max(h, inter), rng);
    for (auto [n, k] : shapes) {
      Buffer w = RandomWeight(be, n, k, rng);
      Buffer out = be.Allocate(act, {m, n});
      const Tensor xv(x.view().data, act, be.device(), {m, k});
      const double s = TimeIt(be, 3, 3, [&] { be.Matmul(xv, w.view(), Tensor(), out.view()); });
      const double flops = 2.0 * m * n * k;
      gemm_flops += flops;
      gemm_s += s;
      per_shape += fmt::format(R"({}{{"m": {}, "n": {}, "k": {}, "tflops": {:.1f}}})",
                               per_shape.empty() ? "" : ", ", m, n, k, flops / s / 1e12);
    }
  }
  const double gemm_rate = gemm_flops / gemm_s;
  std::printf(
      "%s\n",
      fmt::format(R"({{"kind": "roofline", "copy_gb_s": {:.1f}, "gemm_tflops": {:.1f}, )"
                  R"("gemm_shapes": [{}], "weight_bytes": {}, "tensor_parallel_size": {}}})",
                  copy_bw / 1e9, gemm_rate / 1e12, per_shape, model.weight_bytes(), num_ranks)
          .c_str());
  std::fflush(stdout);

  // --- decode steps ---
  const auto layout = hw::kvcache::KvLayout::Dense(c.num_layers, c.num_kv_heads);
  auto make_cache = [&](int64_t seqs,
                        int64_t tokens_each) -> std::unique_ptr<hw::kvcache::KvCache> {
    hw::kvcache::KvCacheConfig kv = hw::engine::KvConfigFor(c, 0);
    kv.num_ranks = num_ranks;
    const int64_t pages =
        seqs * hw::kvcache::KvCache::PagesForSequence(kv, layout, static_cast<int>(tokens_each));
    const double bytes = static_cast<double>(pages) *
                         static_cast<double>(hw::kvcache::KvCache::PageBytes(kv, be.kv_dtype()));
    const double free = static_cast<double>(be.DeviceMemory().free_bytes);
    if (bytes + 4e9 > free) return nullptr;  // activations and scratch need room too
    kv.num_pages = static_cast<int>(pages);
    return std::make_unique<hw::kvcache::KvCache>(kv, std::vector<hw::kvcache::KvLayout>{layout},
                                                  devices.backends);
  };
  // With several ranks: what a decode step of `batch` sequences spends in collectives alone, 2
  // all-reduces per layer and one after the embedding on [batch, hidden] activations, and the
  // logits' gather to rank 0, issued on every rank at once as the step issues them.
  hw::engine::RankThreads rank_threads(devices.backends);
  const auto collective_s = [&](int batch) {
    std::vector<Buffer> x, part, logits;
    for (int r = 0; r < num_ranks; ++r) {
      Backend& rb = *devices.backends[static_cast<size_t>(r)];
      x.push_back(RandomWeight(rb, batch, c.hidden_size, rng));
      part.push_back(rb.Allocate(DType::kF32, {batch, (c.vocab_size + num_ranks - 1) / num_ranks}));
      logits.push_back(rb.Allocate(DType::kF32, {batch, c.vocab_size}));
    }
    const auto once = [&] {
      rank_threads.Run([&](int r) {
        const auto i = static_cast<size_t>(r);
        hw::kernels::Communicator& comm = *devices.comms[i];
        for (int k = 0; k < 2 * c.num_layers + 1; ++k) comm.AllReduceSum(x[i].view());
        comm.GatherColumns(part[i].view(), r == 0 ? logits[i].view() : Tensor(), 0);
        devices.backends[i]->Synchronize();
      });
    };
    once();
    std::vector<double> times;
    for (int i = 0; i < 10; ++i) {
      const double t0 = Now();
      once();
      times.push_back(Now() - t0);
    }
    return Median(times);
  };
  for (int batch : ParseIntList(batches_s)) {
    for (int context : ParseIntList(contexts_s)) {
      hw::bench::DecodeTiming timing;
      timing.steps = tokens;
      const int total = context + timing.TokensToReserve();
      auto cache = make_cache(batch, total);
      if (!cache) {
        std::printf("%s\n",
                    fmt::format(R"({{"kind": "decode", "batch": {}, "context": {}, "skipped": )"
                                R"("does not fit: {:.1f} GB of KV, {:.1f} GB free"}})",
                                batch, context, kv_bytes_per_token * batch * total / 1e9,
                                static_cast<double>(be.DeviceMemory().free_bytes) / 1e9)
                        .c_str());
        std::fflush(stdout);
        continue;
      }
      std::vector<hw::kvcache::SequenceKv> seqs;
      for (int s = 0; s < batch; ++s) {
        seqs.emplace_back(*cache);
        if (!seqs.back().Reserve(total).ok()) return 1;
      }
      hw::engine::ModelRunner runner(ranks, *cache);
      runner.set_use_graphs(!enforce_eager);
      const double median = hw::bench::TimeDecodeSteps(runner, seqs, context, timing).median();
      const double bytes = static_cast<double>(model.weight_bytes()) +
                           kv_bytes_per_token * batch * (context + tokens / 2.0);
      const double collectives = num_ranks > 1 ? collective_s(batch) : 0.0;
      const double roofline = bytes / copy_bw + collectives;
      std::printf(
          "%s\n",
          fmt::format(R"({{"kind": "decode", "batch": {}, "context": {}, "graphs": {}, )"
                      R"("ms": {:.3f}, "roofline_ms": {:.3f}, "fraction_of_roofline": {:.3f}, )"
                      R"("tokens_per_s": {:.0f}, "tensor_parallel_size": {}, )"
                      R"("collectives_ms": {:.3f}}})",
                      batch, context, !enforce_eager, median * 1e3, roofline * 1e3,
                      roofline / median, batch / median, num_ranks, collectives * 1e3)
              .c_str());
      std::fflush(stdout);
    }
  }

  if (num_ranks > 1) return 0;  // the rows below measure one device's kernels

  // --- decode attention alone, one layer, long context ---
  for (int batch : {1, 8}) {
    const int context = attention_context;
    if (context <= 0) break;
    auto cache = make_cache(batch, context);
    if (!cache) continue;
    std::vector<hw::kvcache::SequenceKv> seqs;
    seqs.reserve(static_cast<size_t>(batch));
    std::vector<const hw::kvcache::SequenceKv*> seq_ptrs;
    // One i32 array, uploaded once: each query's sequence, its position, then the cache's tables.
    std::vector<int32_t> data;
    for (int s = 0; s < batch; ++s) {
      seqs.emplace_back(*cache);
      if (!seqs.back().Reserve(context).ok()) return 1;
      seq_ptrs.push_back(&seqs.back());
      data.push_back(s);
    }
    data.insert(data.end(), static_cast<size_t>(batch), context - 1);
    const hw::kvcache::StepTables tables =
        cache->BuildStepTables(seq_ptrs, batch, cache->BlocksFor(context));
    const size_t tables_offset = tables.AppendTo(data);
    Buffer data_b = be.Allocate(DType::kI32, {static_cast<int64_t>(data.size())});
    be.CopyFromHost(data_b.view(), data.data(), data.size() * sizeof(int32_t));
    const Tensor seq_of(data_b.view().ptr<int32_t>(), DType::kI32, be.device(), {batch});
    const Tensor pos(data_b.view().ptr<int32_t>() + batch, DType::kI32, be.device(), {batch});
    const hw::kvcache::StepTables::DeviceViews views = tables.Views(data_b.view(), tables_offset);
    std::vector<hw::kernels::BlockTable> layer_tables;
    for (int l = 0; l < c.num_layers; ++l) layer_tables.push_back(cache->LayerTable(l, views));
    const DType act = be.activation_dtype();
    Buffer q = be.Allocate(act, {batch, c.num_heads, c.head_dim});
    Buffer out = be.Allocate(act, {batch, c.num_heads, c.head_dim});
    // As a decode step runs it: one call per layer (each layer's keys cold in L2), the calls of
    // all layers replayed as one graph where the backend captures.
    const auto all_layers = [&] {
      for (int l = 0; l < c.num_layers; ++l) {
        const hw::kernels::PagedAttentionBatch ab{seq_of, pos, layer_tables[static_cast<size_t>(l)],
                                                  Tensor(), 1};
        be.PagedAttention(q.view(), cache->pool_view(), ab, 0.088f, out.view());
      }
    };
    all_layers();  // sizes the backend's scratch before any capture
    std::unique_ptr<hw::kernels::CapturedOps> graph;
    if (be.SupportsCapture() && !enforce_eager) {
      be.BeginCapture();
      all_layers();
      graph = be.EndCapture();
    }
    const double s =
        TimeIt(be, 5, 4, [&] { graph ? graph->Replay() : all_layers(); }) / c.num_layers;
    const double bytes = kv_bytes_per_token / c.num_layers * batch * context;
    std::printf("%s\n",
                fmt::format(R"({{"kind": "attention", "op": "decode", "batch": {}, "context": {}, )"
                            R"("us": {:.1f}, "kv_gb_s": {:.1f}, "fraction_of_copy": {:.3f}}})",
                            batch, context, s * 1e6, bytes / s / 1e9, bytes / s / copy_bw)
                    .c_str());
    std::fflush(stdout);
  }

  // --- prefill of one prompt in one pass ---
  int64_t matmul_params = 0;
  for (auto [n, k] : shapes) matmul_params += n * k;
  matmul_params *= c.num_layers;
  for (int t : ParseIntList(prefill_s)) {
    auto cache = make_cache(1, t);
    if (!cache) continue;
    hw::kvcache::SequenceKv kv(*cache);
    if (!kv.Reserve(t).ok()) return 1;
    std::vector<int32_t> prompt(static_cast<size_t>(t));
    for (int i = 0; i < t; ++i) prompt[static_cast<size_t>(i)] = (i * 7919 + 13) % c.vocab_size;
    hw::engine::ModelRunner runner(model, *cache);
    runner.set_use_graphs(!enforce_eager);
    const hw::engine::BatchEntry e{&kv, prompt, 0, false};
    const double s = TimeIt(be, 3, 1, [&] { runner.Forward({&e, 1}); });
    const double attn_flops =
        4.0 * c.head_dim * c.num_heads * c.num_layers * (static_cast<double>(t) * (t + 1) / 2);
    const double flops = 2.0 * matmul_params * t + attn_flops +
                         2.0 * static_cast<double>(c.vocab_size) * c.hidden_size;
    std::printf(
        "%s\n",
        fmt::format(R"({{"kind": "prefill", "tokens": {}, "ms": {:.2f}, )"
                    R"("tokens_per_s": {:.0f}, "tflops": {:.1f}, "fraction_of_gemm": {:.3f}}})",
                    t, s * 1e3, t / s, flops / s / 1e12, flops / s / gemm_rate)
            .c_str());
    std::fflush(stdout);
  }
  return 0;
}
