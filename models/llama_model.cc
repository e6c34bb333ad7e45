#include "models/llama_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "models/weight_hash.h"

namespace headwise::models {
namespace {

using kernels::Buffer;
using kernels::HostTensor;

// Concatenates f32 matrices along dimension 0 into one owned host tensor: fused projections
// (q|k|v, gate|up) turn several GEMMs into one.
HostTensor ConcatRows(const std::vector<HostTensor>& parts) {
  int64_t rows = 0;
  const int64_t cols = parts.front().shape.rank == 2 ? parts.front().shape.dim(1) : 1;
  for (const auto& p : parts) rows += p.shape.dim(0);
  auto storage = std::make_shared<std::vector<float>>(static_cast<size_t>(rows * cols));
  size_t offset = 0;
  for (const auto& p : parts) {
    const size_t n = static_cast<size_t>(p.shape.numel());
    std::memcpy(storage->data() + offset, p.data, n * sizeof(float));
    offset += n;
  }
  HostTensor out;
  out.data = storage->data();
  out.keepalive = storage;
  out.shape = parts.front().shape.rank == 2
                  ? Tensor(nullptr, DType::kF32, Device::kCpu, {rows, cols})
                  : Tensor(nullptr, DType::kF32, Device::kCpu, {rows});
  return out;
}

}  // namespace

StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const ModelConfig& config,
                                                       WeightSource& weights,
                                                       kernels::Backend& backend) {
  HW_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<LlamaModel> model(new LlamaModel(config, backend));
  HW_RETURN_IF_ERROR(model->LoadWeights(weights));
  return model;
}

Status LlamaModel::LoadWeights(WeightSource& weights) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size, head_dim = c.head_dim;
  const int64_t q_dim = int64_t{c.num_heads} * head_dim,
                kv_dim = int64_t{c.num_kv_heads} * head_dim;
  WeightsHasher hasher;
  auto load = [&](const std::string& name,
                  const std::vector<int64_t>& shape) -> StatusOr<HostTensor> {
    StatusOr<HostTensor> t = weights.Load(name, shape);
    if (t.ok()) hasher.Add(name, *t);
    return t;
  };
  auto upload = [&](const HostTensor& t) {
    Buffer b = backend_->LoadWeight(t);
    weight_bytes_ += b.view().nbytes();
    return b;
  };

  HW_ASSIGN_OR_RETURN(HostTensor embed, load("model.embed_tokens.weight", {c.vocab_size, hidden}));
  embed_ = upload(embed);
  HW_ASSIGN_OR_RETURN(HostTensor norm, load("model.norm.weight", {hidden}));
  final_norm_ = upload(norm);
  if (!c.tie_word_embeddings) {
    HW_ASSIGN_OR_RETURN(HostTensor head, load("lm_head.weight", {c.vocab_size, hidden}));
    lm_head_ = upload(head);
  }
  // Rotary frequencies stay f32 on every backend: bf16 would shift angles at long positions.
  const std::vector<float> inv_freq = RopeInverseFrequencies(c);
  inv_freq_ = backend_->Allocate(DType::kF32, {static_cast<int64_t>(inv_freq.size())});
  backend_->CopyFromHost(inv_freq_.view(), inv_freq.data(), inv_freq.size() * sizeof(float));

  layers_.resize(static_cast<size_t>(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    Layer& layer = layers_[static_cast<size_t>(l)];
    HW_ASSIGN_OR_RETURN(HostTensor in_norm, load(p + "input_layernorm.weight", {hidden}));
    HW_ASSIGN_OR_RETURN(HostTensor post_norm,
                        load(p + "post_attention_layernorm.weight", {hidden}));
    HW_ASSIGN_OR_RETURN(HostTensor wq, load(p + "self_attn.q_proj.weight", {q_dim, hidden}));
    HW_ASSIGN_OR_RETURN(HostTensor wk, load(p + "self_attn.k_proj.weight", {kv_dim, hidden}));
    HW_ASSIGN_OR_RETURN(HostTensor wv, load(p + "self_attn.v_proj.weight", {kv_dim, hidden}));
    HW_ASSIGN_OR_RETURN(HostTensor wo, load(p + "self_attn.o_proj.weight", {hidden, q_dim}));
    HW_ASSIGN_OR_RETURN(HostTensor wg,
                        load(p + "mlp.gate_proj.weight", {c.intermediate_size, hidden}));
    HW_ASSIGN_OR_RETURN(HostTensor wu,
                        load(p + "mlp.up_proj.weight", {c.intermediate_size, hidden}));
    HW_ASSIGN_OR_RETURN(HostTensor wd,
                        load(p + "mlp.down_proj.weight", {hidden, c.intermediate_size}));
    layer.input_norm = upload(in_norm);
    layer.post_norm = upload(post_norm);
    layer.qkv = upload(ConcatRows({wq, wk, wv}));
    layer.o_proj = upload(wo);
    layer.gate_up = upload(ConcatRows({wg, wu}));
    layer.down = upload(wd);
    if (c.attention_bias) {
      HW_ASSIGN_OR_RETURN(HostTensor bq, load(p + "self_attn.q_proj.bias", {q_dim}));
      HW_ASSIGN_OR_RETURN(HostTensor bk, load(p + "self_attn.k_proj.bias", {kv_dim}));
      HW_ASSIGN_OR_RETURN(HostTensor bv, load(p + "self_attn.v_proj.bias", {kv_dim}));
      layer.qkv_bias = upload(ConcatRows({bq, bk, bv}));
    }
  }
  weights_hash_ = hasher.Digest();
  return Status::Ok();
}

kvcache::KvCacheConfig LlamaModel::KvConfig(int num_pages, int page_size) const {
  kvcache::KvCacheConfig kv;
  kv.num_layers = config_.num_layers;
  kv.num_kv_heads = config_.num_kv_heads;
  kv.head_dim = config_.head_dim;
  kv.page_size = page_size;
  kv.num_pages = num_pages;
  return kv;
}

LlamaModel::StepMeta LlamaModel::BuildMeta(std::span<const BatchEntry> batch,
                                           const kvcache::KvCache& cache, int pad_seqs,
                                           int pad_blocks) const {
  const int num_seqs = static_cast<int>(batch.size());
  const int page_size = cache.config().page_size;
  HW_CHECK(num_seqs > 0, "empty batch");
  StepMeta m;
  m.num_seqs = std::max(num_seqs, pad_seqs);
  std::vector<int32_t> ids, positions, token_seq, logit_rows, query_start{0};
  for (int s = 0; s < num_seqs; ++s) {
    const BatchEntry& e = batch[static_cast<size_t>(s)];
    const int end = e.start_pos + static_cast<int>(e.tokens.size());
    HW_CHECK(!e.tokens.empty() && e.kv != nullptr, "sequence {} has no tokens or no cache", s);
    HW_CHECK_LE(end, e.kv->capacity_tokens());
    m.max_blocks = std::max(m.max_blocks, (end + page_size - 1) / page_size);
    m.max_query_len = std::max(m.max_query_len, static_cast<int>(e.tokens.size()));
    for (size_t i = 0; i < e.tokens.size(); ++i) {
      if (e.all_logits || i + 1 == e.tokens.size())
        logit_rows.push_back(static_cast<int32_t>(ids.size()));
      ids.push_back(e.tokens[i]);
      positions.push_back(e.start_pos + static_cast<int32_t>(i));
      token_seq.push_back(s);
    }
    query_start.push_back(static_cast<int32_t>(ids.size()));
  }
  m.max_blocks = std::max(m.max_blocks, pad_blocks);
  // Padding sequences of one token at position -1: the kernels skip them.
  for (int s = num_seqs; s < m.num_seqs; ++s) {
    logit_rows.push_back(static_cast<int32_t>(ids.size()));
    ids.push_back(0);
    positions.push_back(-1);
    token_seq.push_back(s);
    query_start.push_back(static_cast<int32_t>(ids.size()));
  }
  m.num_tokens = static_cast<int64_t>(ids.size());
  m.num_rows = static_cast<int64_t>(logit_rows.size());

  // All integer metadata of the step in one host array and one upload: token ids, positions,
  // sequence of each token, logit rows, query ranges, the block table (one for all layers and
  // heads) and each layer's page of every KV head inside a block.
  const int hkv = config_.num_kv_heads;
  m.data.reserve(4 * ids.size() + query_start.size() +
                 static_cast<size_t>(m.num_seqs * m.max_blocks + config_.num_layers * hkv));
  for (const auto* part : {&ids, &positions, &token_seq, &logit_rows, &query_start}) {
    m.data.insert(m.data.end(), part->begin(), part->end());
  }
  for (int s = 0; s < m.num_seqs; ++s) {
    const size_t row_end = m.data.size() + static_cast<size_t>(m.max_blocks);
    if (s < num_seqs) {
      const std::vector<int32_t>& blocks = batch[static_cast<size_t>(s)].kv->blocks();
      const size_t used = std::min(blocks.size(), static_cast<size_t>(m.max_blocks));
      m.data.insert(m.data.end(), blocks.begin(),
                    blocks.begin() + static_cast<std::ptrdiff_t>(used));
    }
    m.data.resize(row_end, 0);
  }
  // Ring heads: each logical page's current ring block; per layer the head flags follow (ring,
  // compress-once, re-indexed).
  m.rings = cache.ring_pages_per_block() > 0;
  m.reindex = cache.has_reindexed_heads();
  if (m.rings) {
    for (int s = 0; s < m.num_seqs; ++s) {
      for (int j = 0; j < m.max_blocks; ++j) {
        m.data.push_back(s < num_seqs ? batch[static_cast<size_t>(s)].kv->RingBlock(j) : 0);
      }
    }
  }
  // Compress-once heads: where each sequence's kept tokens resume (0: not compacted), then
  // each logical page's comp block (-1 where compaction freed it; padding 0, as above). A
  // compacted sequence's chunk (a preempted request recomputing its generated tokens) lies past
  // the compaction point and attends what its decode steps did.
  m.compress = cache.has_compressed_heads();
  if (m.compress) {
    for (int s = 0; s < m.num_seqs; ++s) {
      const int from = s < num_seqs ? batch[static_cast<size_t>(s)].kv->compacted_from() : 0;
      m.data.push_back(from);
    }
    for (int s = 0; s < m.num_seqs; ++s) {
      const size_t row_end = m.data.size() + static_cast<size_t>(m.max_blocks);
      if (s < num_seqs) {
        const std::vector<int32_t>& blocks = batch[static_cast<size_t>(s)].kv->comp_blocks();
        const size_t used = std::min(blocks.size(), static_cast<size_t>(m.max_blocks));
        m.data.insert(m.data.end(), blocks.begin(),
                      blocks.begin() + static_cast<std::ptrdiff_t>(used));
      }
      m.data.resize(row_end, 0);
    }
  }
  for (int l = 0; l < config_.num_layers; ++l) {
    for (int h = 0; h < hkv; ++h) m.data.push_back(cache.PageIndex(l, h));
    if (m.rings) {
      for (int h = 0; h < hkv; ++h) m.data.push_back(cache.IsRing(l, h) ? 1 : 0);
    }
    if (m.compress) {
      for (int h = 0; h < hkv; ++h) m.data.push_back(cache.IsCompressed(l, h) ? 1 : 0);
    }
    if (m.reindex) {
      for (int h = 0; h < hkv; ++h) m.data.push_back(cache.IsReindexed(l, h) ? 1 : 0);
    }
  }
  return m;
}

bool LlamaModel::EnsureWorkspace(int64_t num_tokens, int64_t num_rows) {
  kernels::Backend& be = *backend_;
  const ModelConfig& c = config_;
  bool grew = false;
  if (workspace_.tokens < num_tokens) {
    const int64_t hidden = c.hidden_size, q_dim = int64_t{c.num_heads} * c.head_dim;
    const int64_t qkv_dim = q_dim + 2 * int64_t{c.num_kv_heads} * c.head_dim;
    const int64_t cap = std::max<int64_t>(num_tokens, 2 * workspace_.tokens);
    const DType act = be.activation_dtype();
    workspace_.tokens = cap;
    workspace_.residual = be.Allocate(act, {cap, hidden});
    workspace_.normed = be.Allocate(act, {cap, hidden});
    workspace_.qkv = be.Allocate(act, {cap, qkv_dim});
    workspace_.q = be.Allocate(act, {cap, q_dim});
    workspace_.attn = be.Allocate(act, {cap, q_dim});
    workspace_.proj = be.Allocate(act, {cap, hidden});
    workspace_.gate_up = be.Allocate(act, {cap, 2 * int64_t{c.intermediate_size}});
    workspace_.mlp = be.Allocate(act, {cap, c.intermediate_size});
    workspace_.last = be.Allocate(act, {cap, hidden});
    grew = true;
  }
  if (logits_.empty() || logits_.view().dim(0) < num_rows) {
    const int64_t cap =
        std::max<int64_t>(num_rows, 2 * (logits_.empty() ? 0 : logits_.view().dim(0)));
    logits_ = be.Allocate(DType::kF32, {cap, c.vocab_size});
    grew = true;
  }
  return grew;
}

Tensor LlamaModel::Run(const StepMeta& m, const kernels::Buffer& meta, kvcache::KvCache& cache) {
  const ModelConfig& c = config_;
  kernels::Backend& be = *backend_;
  const int hkv = c.num_kv_heads;
  const int64_t num_tokens = m.num_tokens, num_rows = m.num_rows;
  int64_t offset = 0;
  auto part = [&](std::initializer_list<int64_t> shape) {
    Tensor t(meta.view().ptr<int32_t>() + offset, DType::kI32, be.device(), shape);
    offset += t.numel();
    return t;
  };
  const Tensor ids_t = part({num_tokens}), pos_t = part({num_tokens}), seq_t = part({num_tokens});
  const Tensor rows_t = part({num_rows});
  const Tensor query_start_t = part({m.num_seqs + 1});
  const Tensor blocks_t = part({m.num_seqs, m.max_blocks});
  const Tensor ring_blocks_t = m.rings ? part({m.num_seqs, m.max_blocks}) : Tensor();
  const Tensor comp_from_t = m.compress ? part({m.num_seqs}) : Tensor();
  const Tensor comp_blocks_t = m.compress ? part({m.num_seqs, m.max_blocks}) : Tensor();

  const int64_t head_dim = c.head_dim, q_dim = int64_t{c.num_heads} * head_dim;
  auto rows = [&](const Buffer& b, int64_t n) { return b.view().Rows(0, n); };
  const Tensor residual = rows(workspace_.residual, num_tokens);
  const Tensor normed = rows(workspace_.normed, num_tokens);
  const Tensor qkv = rows(workspace_.qkv, num_tokens);
  const Tensor q = rows(workspace_.q, num_tokens).Reshape({num_tokens, c.num_heads, head_dim});
  const Tensor attn =
      rows(workspace_.attn, num_tokens).Reshape({num_tokens, c.num_heads, head_dim});
  const Tensor proj = rows(workspace_.proj, num_tokens);
  const Tensor gate_up = rows(workspace_.gate_up, num_tokens);
  const Tensor mlp = rows(workspace_.mlp, num_tokens);
  const Tensor last = rows(workspace_.last, num_rows);
  const Tensor logits = rows(logits_, num_rows);

  const kernels::KvPoolView pool = cache.pool_view();
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const Tensor no_bias;

  be.Embedding(embed_.view(), ids_t, residual);
  be.RmsNorm(residual, layers_.front().input_norm.view(), eps, normed);
  for (int l = 0; l < c.num_layers; ++l) {
    const Layer& layer = layers_[static_cast<size_t>(l)];
    kernels::BlockTable table{blocks_t, part({hkv}), cache.pages_per_block()};
    if (m.rings) {
      table.head_ring = part({hkv});
      table.ring_blocks = ring_blocks_t;
      table.ring_pages_per_block = cache.ring_pages_per_block();
      table.ring_sink = cache.ring_retention().sink;
      table.ring_window = cache.ring_retention().window;
      for (int h = 0; h < hkv; ++h) table.num_ring_heads += cache.IsRing(l, h) ? 1 : 0;
    }
    if (m.compress) {
      const kvcache::Retention& r = cache.compress_retention();
      table.head_comp = part({hkv});
      table.comp_blocks = comp_blocks_t;
      table.comp_pages_per_block = cache.comp_pages_per_block();
      table.comp_from = comp_from_t;
      table.comp_sink = r.sink;
      table.comp_token = r.compensation;
      table.comp_log_count = r.compensation_by_count;
    }
    if (m.reindex) {
      table.head_reindex = part({hkv});
      table.rope_inv_freq = inv_freq_.view();
    }
    const kernels::PagedAttentionBatch attn_batch{seq_t, pos_t, table, query_start_t,
                                                  m.max_query_len};
    be.Matmul(normed, layer.qkv.view(), layer.qkv_bias.view(), qkv);
    be.RopeWriteKv(qkv, attn_batch, inv_freq_.view(), pool, q);
    be.PagedAttention(q, pool, attn_batch, scale, attn);
    if (observer_) observer_(l, q, pool, attn_batch);
    be.Matmul(attn.Reshape({num_tokens, q_dim}), layer.o_proj.view(), no_bias, proj);
    be.AddRmsNorm(residual, proj, layer.post_norm.view(), eps, normed);
    be.Matmul(normed, layer.gate_up.view(), no_bias, gate_up);
    be.SiluMul(gate_up, mlp);
    be.Matmul(mlp, layer.down.view(), no_bias, proj);
    const Buffer& next_norm =
        l + 1 < c.num_layers ? layers_[static_cast<size_t>(l) + 1].input_norm : final_norm_;
    be.AddRmsNorm(residual, proj, next_norm.view(), eps, normed);
  }

  be.GatherRows(normed, rows_t, last);
  const Buffer& head = c.tie_word_embeddings ? embed_ : lm_head_;
  be.Matmul(last, head.view(), no_bias, logits);
  return logits;
}

void LlamaModel::Upload(const StepMeta& m, kernels::Buffer& meta) {
  if (meta.empty() || meta.view().numel() < static_cast<int64_t>(m.data.size())) {
    meta = backend_->Allocate(DType::kI32, {static_cast<int64_t>(m.data.size()) * 2});
  }
  backend_->CopyFromHost(meta.view(), m.data.data(), m.data.size() * sizeof(int32_t));
}

int LlamaModel::GraphBatchBucket(int num_seqs) {
  for (int b : {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128}) {
    if (num_seqs <= b) return b;
  }
  return 0;
}

Tensor LlamaModel::Forward(std::span<const BatchEntry> batch, kvcache::KvCache& cache) {
  const int num_seqs = static_cast<int>(batch.size());
  const bool decode_only = std::all_of(batch.begin(), batch.end(), [](const BatchEntry& e) {
    return e.tokens.size() == 1 && !e.all_logits;
  });
  const int bucket = GraphBatchBucket(num_seqs);
  if (!use_graphs_ || !backend_->SupportsCapture() || !decode_only || bucket == 0 || observer_) {
    const StepMeta m = BuildMeta(batch, cache, 0, 0);
    if (EnsureWorkspace(m.num_tokens, m.num_rows)) graphs_.clear();
    Upload(m, meta_);
    return Run(m, meta_, cache);
  }
  // Decode steps replay a graph per (batch bucket, block-table width): sequences and table
  // columns are padded up to the bucket, and the kernels take lengths from the metadata.
  int max_blocks = 1;
  const int page_size = cache.config().page_size;
  for (const BatchEntry& e : batch) {
    max_blocks = std::max(max_blocks, (e.start_pos + 1 + page_size - 1) / page_size);
  }
  int width = 16;
  while (width < max_blocks) width *= 2;
  const StepMeta m = BuildMeta(batch, cache, bucket, width);
  // Graphs hold the buffers and the cache they were recorded with.
  if (EnsureWorkspace(m.num_tokens, m.num_rows) || graphs_cache_id_ != cache.instance_id()) {
    graphs_.clear();
    graphs_cache_id_ = cache.instance_id();
  }
  DecodeGraph& graph = graphs_[{bucket, width}];
  Upload(m, graph.meta);
  if (graph.ops == nullptr) {
    // One eager run sizes every backend scratch buffer, then the same launches are recorded.
    Run(m, graph.meta, cache);
    backend_->BeginCapture();
    Run(m, graph.meta, cache);
    graph.ops = backend_->EndCapture();
  } else {
    graph.ops->Replay();
  }
  return logits_.view().Rows(0, num_seqs);
}

std::vector<float> LlamaModel::ForwardToHost(std::span<const BatchEntry> batch,
                                             kvcache::KvCache& cache) {
  const Tensor logits = Forward(batch, cache);
  std::vector<float> host(static_cast<size_t>(logits.numel()));
  backend_->CopyToHost(host.data(), logits, host.size() * sizeof(float));
  return host;
}

}  // namespace headwise::models
