#include "bench/ann_capture.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>

#include "core/dtype.h"
#include "engine/attention_setup.h"
#include "engine/model_runner.h"
#include "kernels/host_copy.h"
#include "kvcache/kv_cache.h"
#include "kvcache/kv_layout.h"

namespace headwise::bench::ann {
namespace {

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Copies each observed layer's query rows into the layer's training or test rows by position.
class QueryCollector {
 public:
  QueryCollector(kernels::Backend& backend, RunCapture& run) : backend_(backend), run_(run) {
    seen_.resize(run.layers.size());
    for (size_t l = 0; l < run.layers.size(); ++l) {
      seen_[l].assign(static_cast<size_t>(run.layers[l].num_train) +
                          static_cast<size_t>(run.layers[l].num_test),
                      0);
    }
  }

  Status Observe(int layer, const Tensor& q, const kernels::PagedAttentionBatch& batch) {
    if (layer < 0 || static_cast<size_t>(layer) >= run_.layers.size()) {
      return Internal("observer called for layer {} of {}", layer, run_.layers.size());
    }
    const int64_t tokens = q.dim(0), heads = q.dim(1), dim = q.dim(2);
    if (heads != run_.num_heads || dim != run_.head_dim) {
      return Internal("observed q is [{}, {}, {}], the model has {} heads of {}", tokens, heads,
                      dim, run_.num_heads, run_.head_dim);
    }
    HW_RETURN_IF_ERROR(kernels::CopyToHostF32(backend_, q, q_, raw_));
    pos_.resize(static_cast<size_t>(tokens));
    backend_.CopyToHost(pos_.data(), batch.token_pos.Rows(0, tokens),
                        static_cast<size_t>(tokens) * sizeof(int32_t));
    LayerCapture& lc = run_.layers[static_cast<size_t>(layer)];
    const int L = run_.prompt_len, stride = run_.train_stride;
    const size_t d = static_cast<size_t>(dim);
    for (int64_t t = 0; t < tokens; ++t) {
      const int32_t p = pos_[static_cast<size_t>(t)];
      if (p < 0) continue;  // padding
      float* dst = nullptr;
      size_t rows = 0, row = 0, seen_at = 0;
      if (p < L) {
        if (p % stride != 0) continue;
        row = static_cast<size_t>(p / stride);
        rows = static_cast<size_t>(lc.num_train);
        dst = lc.train.data();
        seen_at = row;
      } else if (p - L < lc.num_test) {
        row = static_cast<size_t>(p - L);
        rows = static_cast<size_t>(lc.num_test);
        dst = lc.test.data();
        seen_at = static_cast<size_t>(lc.num_train) + row;
      } else {
        return Internal("observed a query at position {}, past the {} decode steps", p,
                        lc.num_test);
      }
      seen_[static_cast<size_t>(layer)][seen_at] = 1;
      for (int64_t h = 0; h < heads; ++h) {
        const float* src = q_.data() + (static_cast<size_t>(t * heads + h)) * d;
        std::copy_n(src, d, dst + (static_cast<size_t>(h) * rows + row) * d);
      }
    }
    return Status::Ok();
  }

  // Every training and test position of every layer was observed.
  Status CheckComplete() const {
    for (size_t l = 0; l < seen_.size(); ++l) {
      const auto it = std::find(seen_[l].begin(), seen_[l].end(), 0);
      if (it != seen_[l].end()) {
        return Internal("layer {}: no query observed for capture row {}", l, it - seen_[l].begin());
      }
    }
    return Status::Ok();
  }

 private:
  kernels::Backend& backend_;
  RunCapture& run_;
  std::vector<std::vector<char>> seen_;  // [layer][train rows, then test rows]
  std::vector<float> q_;
  std::vector<uint16_t> raw_;
  std::vector<int32_t> pos_;
};

int32_t Argmax(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// The prompt's keys [0, L) of every (layer, KV head) from the cache's pages: the pool comes to
// the host in one copy (on CUDA one transfer beats a copy per page: 100K pages at 32K tokens),
// then each page's rows are converted to f32.
Status ReadKeys(kernels::Backend& backend, const kvcache::KvCache& cache,
                const kvcache::SequenceKv& kv, RunCapture& run) {
  const kernels::KvPoolView pool = cache.pool_view();
  const DType dtype = pool.k.dtype;
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
    return Unimplemented("keys stored as {}: only f32, bf16 and f16 convert to f32",
                         DTypeName(dtype));
  }
  const int page_size = pool.page_size, L = run.prompt_len;
  const size_t d = static_cast<size_t>(run.head_dim), elem = DTypeSize(dtype);
  std::vector<uint8_t> raw(pool.k.nbytes());
  backend.CopyToHost(raw.data(), pool.k, raw.size());
  for (size_t l = 0; l < run.layers.size(); ++l) {
    LayerCapture& lc = run.layers[l];
    for (int h = 0; h < run.num_kv_heads; ++h) {
      for (int lp = 0; lp * page_size < L; ++lp) {
        const int64_t page = kv.Page(static_cast<int>(l), h, lp);
        if (page < 0 || page >= pool.k.dim(0)) {
          return Internal("layer {} KV head {}: page {} outside the pool of {}", l, h, page,
                          pool.k.dim(0));
        }
        const size_t count = static_cast<size_t>(std::min(page_size, L - lp * page_size)) * d;
        const uint8_t* src = raw.data() + static_cast<size_t>(page) * page_size * d * elem;
        float* dst = lc.keys.data() + (static_cast<size_t>(h) * L + lp * page_size) * d;
        for (size_t i = 0; i < count; ++i) {
          if (dtype == DType::kF32) {
            std::memcpy(dst + i, src + i * elem, sizeof(float));
          } else {
            uint16_t v;
            std::memcpy(&v, src + i * elem, sizeof(v));
            dst[i] = dtype == DType::kBF16 ? BF16ToF32(v) : F16ToF32(v);
          }
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace

void LayerCapture::Release() {
  std::vector<float>().swap(train);
  std::vector<float>().swap(test);
  std::vector<float>().swap(keys);
}

MatrixView RunCapture::Keys(int layer, int kv_head, IndexedRange r) const {
  const LayerCapture& lc = layers[static_cast<size_t>(layer)];
  const size_t d = static_cast<size_t>(head_dim);
  return {lc.keys.data() + (static_cast<size_t>(kv_head) * prompt_len + r.begin) * d,
          static_cast<size_t>(r.size()), d};
}

MatrixView RunCapture::Train(int layer, int query_head) const {
  const LayerCapture& lc = layers[static_cast<size_t>(layer)];
  const size_t d = static_cast<size_t>(head_dim), rows = static_cast<size_t>(lc.num_train);
  return {lc.train.data() + static_cast<size_t>(query_head) * rows * d, rows, d};
}

MatrixView RunCapture::Test(int layer, int query_head) const {
  const LayerCapture& lc = layers[static_cast<size_t>(layer)];
  const size_t d = static_cast<size_t>(head_dim), rows = static_cast<size_t>(lc.num_test);
  return {lc.test.data() + static_cast<size_t>(query_head) * rows * d, rows, d};
}

size_t CaptureBytes(const models::ModelConfig& c, int prompt_len, const CaptureOptions& o) {
  const size_t stride = static_cast<size_t>(std::max(o.train_stride, 1));
  const size_t train = (static_cast<size_t>(prompt_len) + stride - 1) / stride;
  const size_t per_layer = (static_cast<size_t>(c.num_heads) *
                                (train + static_cast<size_t>(std::max(o.decode_steps, 0))) +
                            static_cast<size_t>(c.num_kv_heads) * static_cast<size_t>(prompt_len)) *
                           static_cast<size_t>(c.head_dim) * sizeof(float);
  return per_layer * static_cast<size_t>(c.num_layers);
}

StatusOr<RunCapture> CaptureRun(models::LlamaModel& model, std::span<const int32_t> prompt,
                                const CaptureOptions& o,
                                const models::LlamaModel::AttentionObserver& also) {
  const models::ModelConfig& c = model.config();
  const int L = static_cast<int>(prompt.size());
  if (L == 0) return InvalidArgument("capture of an empty prompt");
  if (o.decode_steps < 1 || o.train_stride < 1 || o.prefill_chunk < 1) {
    return InvalidArgument(
        "capture needs decode steps, train stride and prefill chunk >= 1 (got {}, {}, {})",
        o.decode_steps, o.train_stride, o.prefill_chunk);
  }
  const int total = L + o.decode_steps;
  if (total > c.max_position_embeddings) {
    return InvalidArgument("a {}-token prompt and {} decode steps exceed the model's context of {}",
                           L, o.decode_steps, c.max_position_embeddings);
  }
  kernels::Backend& backend = model.backend();
  RunCapture run;
  run.prompt_len = L;
  run.num_heads = c.num_heads;
  run.num_kv_heads = c.num_kv_heads;
  run.head_dim = c.head_dim;
  run.train_stride = o.train_stride;
  run.layers.resize(static_cast<size_t>(c.num_layers));
  const size_t d = static_cast<size_t>(c.head_dim);
  for (LayerCapture& lc : run.layers) {
    lc.num_train = (L + o.train_stride - 1) / o.train_stride;
    lc.num_test = o.decode_steps;
    lc.train.assign(static_cast<size_t>(c.num_heads) * static_cast<size_t>(lc.num_train) * d, 0);
    lc.test.assign(static_cast<size_t>(c.num_heads) * static_cast<size_t>(lc.num_test) * d, 0);
    lc.keys.assign(static_cast<size_t>(c.num_kv_heads) * static_cast<size_t>(L) * d, 0);
  }

  // A dense cache with room for this one sequence.
  kvcache::KvLayout layout = kvcache::KvLayout::Dense(c.num_layers, c.num_kv_heads);
  kvcache::KvCacheConfig kvc = engine::KvConfigFor(c, 0);
  kvc.num_pages = kvcache::KvCache::PagesForSequence(kvc, layout, total);
  std::vector<kvcache::KvLayout> layouts;
  layouts.push_back(std::move(layout));
  kvcache::KvCache cache(kvc, std::move(layouts), backend);
  kvcache::SequenceKv kv(cache);
  HW_RETURN_IF_ERROR(kv.Reserve(total));
  engine::ModelRunner runner(model, cache);

  QueryCollector collector(backend, run);
  Status observed = Status::Ok();
  models::ScopedAttentionObserver scope(
      model, [&](int layer, const Tensor& q, const kernels::KvPoolView& pool,
                 const kernels::PagedAttentionBatch& batch) {
        if (!observed.ok()) return;
        observed = collector.Observe(layer, q, batch);
        if (observed.ok() && also) also(layer, q, pool, batch);
      });

  double t0 = Seconds();
  std::vector<float> logits;
  for (int start = 0; start < L; start += o.prefill_chunk) {
    const int n = std::min(o.prefill_chunk, L - start);
    const engine::BatchEntry e{
        &kv, prompt.subspan(static_cast<size_t>(start), static_cast<size_t>(n)), start, false};
    logits = runner.ForwardToHost(std::span<const engine::BatchEntry>(&e, 1));
    if (!observed.ok()) return observed;
  }
  run.prefill_s = Seconds() - t0;

  t0 = Seconds();
  int32_t input = Argmax(logits);
  for (int step = 0; step < o.decode_steps; ++step) {
    run.generated.push_back(input);
    const engine::BatchEntry e{&kv, std::span<const int32_t>(&input, 1), L + step, false};
    input = Argmax(runner.ForwardToHost(std::span<const engine::BatchEntry>(&e, 1)));
    if (!observed.ok()) return observed;
  }
  run.generated.push_back(input);
  run.decode_s = Seconds() - t0;
  HW_RETURN_IF_ERROR(collector.CheckComplete());

  t0 = Seconds();
  HW_RETURN_IF_ERROR(ReadKeys(backend, cache, kv, run));
  run.keys_s = Seconds() - t0;
  return run;
}

HeadInput HeadInputFor(const RunCapture& run, int layer, int kv_head, IndexedRange r) {
  HeadInput in;
  in.keys = run.Keys(layer, kv_head, r);
  const int g = run.group();
  const MatrixView first = run.Train(layer, kv_head * g);
  // The group's query heads are consecutive (query head h reads KV head h / g), so their
  // training rows are one block.
  in.train = {first.data, first.rows * static_cast<size_t>(g), first.dim};
  for (int h = kv_head * g; h < (kv_head + 1) * g; ++h) in.tests.push_back(run.Test(layer, h));
  return in;
}

}  // namespace headwise::bench::ann
