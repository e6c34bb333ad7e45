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

// Rows [first, first + count) of a matrix or vector, as a view of the same memory; rows past the
// end (a padded vocabulary share) come as zeros, in a copy.
HostTensor SliceRows(const HostTensor& t, int64_t first, int64_t count) {
  const int64_t rows = t.shape.dim(0), cols = t.shape.rank == 2 ? t.shape.dim(1) : 1;
  HostTensor out;
  out.shape = t.shape.rank == 2 ? Tensor(nullptr, DType::kF32, Device::kCpu, {count, cols})
                                : Tensor(nullptr, DType::kF32, Device::kCpu, {count});
  if (first + count <= rows) {
    out.data = t.data + first * cols;
    out.keepalive = t.keepalive;
    return out;
  }
  auto storage = std::make_shared<std::vector<float>>(static_cast<size_t>(count * cols), 0.0f);
  const int64_t have = std::max<int64_t>(0, rows - first);
  std::copy(t.data + first * cols, t.data + (first + have) * cols, storage->data());
  out.data = storage->data();
  out.keepalive = storage;
  return out;
}

// Columns [first, first + count) of a matrix, copied.
HostTensor SliceColumns(const HostTensor& t, int64_t first, int64_t count) {
  const int64_t rows = t.shape.dim(0), cols = t.shape.dim(1);
  auto storage = std::make_shared<std::vector<float>>(static_cast<size_t>(rows * count));
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(t.data + r * cols + first, t.data + r * cols + first + count,
              storage->data() + r * count);
  }
  HostTensor out;
  out.data = storage->data();
  out.keepalive = storage;
  out.shape = Tensor(nullptr, DType::kF32, Device::kCpu, {rows, count});
  return out;
}

}  // namespace

Status LlamaModel::CheckShardable(const ModelConfig& config, int size) {
  if (size < 1) return InvalidArgument("tensor-parallel size {} must be at least 1", size);
  const std::pair<const char*, int> dims[] = {{"attention heads", config.num_heads},
                                              {"KV heads", config.num_kv_heads},
                                              {"intermediate size", config.intermediate_size}};
  for (const auto& [what, n] : dims) {
    if (n % size != 0) {
      return InvalidArgument("tensor-parallel size {} does not divide the model's {} {}", size, n,
                             what);
    }
  }
  return Status::Ok();
}

StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const ModelConfig& config,
                                                       WeightSource& weights,
                                                       kernels::Backend& backend,
                                                       const ModelShard& shard) {
  HW_RETURN_IF_ERROR(config.Validate());
  HW_RETURN_IF_ERROR(CheckShardable(config, shard.size));
  HW_CHECK(shard.rank >= 0 && shard.rank < shard.size, "rank {} of {}", shard.rank, shard.size);
  HW_CHECK(shard.size == 1 || (shard.comm != nullptr && shard.comm->size() == shard.size &&
                               shard.comm->rank() == shard.rank),
           "rank {} of {} needs its communicator", shard.rank, shard.size);
  std::unique_ptr<LlamaModel> model(new LlamaModel(config, backend, shard));
  HW_RETURN_IF_ERROR(model->LoadWeights(weights));
  return model;
}

Status LlamaModel::LoadWeights(WeightSource& weights) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size, head_dim = c.head_dim;
  const int64_t q_dim = int64_t{c.num_heads} * head_dim,
                kv_dim = int64_t{c.num_kv_heads} * head_dim;
  // This rank's share (ModelShard): whole for one rank.
  const int64_t n = shard_.size, r = shard_.rank;
  const int64_t q_share = q_dim / n, kv_share = kv_dim / n, inter_share = c.intermediate_size / n;
  const auto vocab_share = [&](const HostTensor& t) {
    return n == 1 ? t : SliceRows(t, vocab_first(), vocab_rows());
  };
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
  embed_ = upload(vocab_share(embed));
  HW_ASSIGN_OR_RETURN(HostTensor norm, load("model.norm.weight", {hidden}));
  final_norm_ = upload(norm);
  if (!c.tie_word_embeddings) {
    HW_ASSIGN_OR_RETURN(HostTensor head, load("lm_head.weight", {c.vocab_size, hidden}));
    lm_head_ = upload(vocab_share(head));
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
    // Output rows of Q/K/V and gate/up, input columns of o_proj and down (ModelShard).
    const auto qkv = [&](const HostTensor& q, const HostTensor& k, const HostTensor& v) {
      return ConcatRows({SliceRows(q, r * q_share, q_share), SliceRows(k, r * kv_share, kv_share),
                         SliceRows(v, r * kv_share, kv_share)});
    };
    layer.qkv = upload(qkv(wq, wk, wv));
    layer.o_proj = upload(n == 1 ? wo : SliceColumns(wo, r * q_share, q_share));
    layer.gate_up = upload(ConcatRows({SliceRows(wg, r * inter_share, inter_share),
                                       SliceRows(wu, r * inter_share, inter_share)}));
    layer.down = upload(n == 1 ? wd : SliceColumns(wd, r * inter_share, inter_share));
    if (c.attention_bias) {
      HW_ASSIGN_OR_RETURN(HostTensor bq, load(p + "self_attn.q_proj.bias", {q_dim}));
      HW_ASSIGN_OR_RETURN(HostTensor bk, load(p + "self_attn.k_proj.bias", {kv_dim}));
      HW_ASSIGN_OR_RETURN(HostTensor bv, load(p + "self_attn.v_proj.bias", {kv_dim}));
      layer.qkv_bias = upload(qkv(bq, bk, bv));
    }
  }
  weights_hash_ = hasher.Digest();
  return Status::Ok();
}

bool LlamaModel::EnsureWorkspace(int64_t num_tokens, int64_t num_rows, int64_t score_elems) {
  kernels::Backend& be = *backend_;
  const ModelConfig& c = config_;
  bool grew = false;
  if (workspace_.tokens < num_tokens) {
    const int64_t hidden = c.hidden_size, q_dim = int64_t{num_heads()} * c.head_dim;
    const int64_t qkv_dim = q_dim + 2 * int64_t{num_kv_heads()} * c.head_dim;
    const int64_t cap = std::max<int64_t>(num_tokens, 2 * workspace_.tokens);
    const DType act = be.activation_dtype();
    workspace_.tokens = cap;
    workspace_.residual = be.Allocate(act, {cap, hidden});
    workspace_.normed = be.Allocate(act, {cap, hidden});
    workspace_.qkv = be.Allocate(act, {cap, qkv_dim});
    workspace_.q = be.Allocate(act, {cap, q_dim});
    workspace_.attn = be.Allocate(act, {cap, q_dim});
    workspace_.proj = be.Allocate(act, {cap, hidden});
    workspace_.gate_up = be.Allocate(act, {cap, 2 * int64_t{intermediate_size()}});
    workspace_.mlp = be.Allocate(act, {cap, intermediate_size()});
    workspace_.last = be.Allocate(act, {cap, hidden});
    grew = true;
  }
  // Rank 0 holds the logits; with several ranks each computes its vocabulary share apart.
  kernels::Buffer& rows_buffer = shard_.size > 1 ? shard_logits_ : logits_;
  if (rows_buffer.empty() || rows_buffer.view().dim(0) < num_rows) {
    const int64_t cap =
        std::max<int64_t>(num_rows, 2 * (rows_buffer.empty() ? 0 : rows_buffer.view().dim(0)));
    if (shard_.size > 1) shard_logits_ = be.Allocate(DType::kF32, {cap, vocab_rows()});
    if (shard_.rank == 0) logits_ = be.Allocate(DType::kF32, {cap, c.vocab_size});
    grew = true;
  }
  if (score_elems > 0 && (scores_.empty() || scores_.view().numel() < score_elems)) {
    const int64_t cap =
        std::max<int64_t>(score_elems, 2 * (scores_.empty() ? 0 : scores_.view().numel()));
    scores_ = be.Allocate(DType::kF32, {cap});
    grew = true;
  }
  return grew;
}

Tensor LlamaModel::Run(const StepInputs& step) {
  const ModelConfig& c = config_;
  kernels::Backend& be = *backend_;
  const int64_t num_tokens = step.ids.numel(), num_rows = step.logit_rows.numel();
  const kernels::Buffer& rows_buffer = shard_.size > 1 ? shard_logits_ : logits_;
  HW_CHECK(num_tokens <= workspace_.tokens && num_rows <= rows_buffer.view().dim(0),
           "step of {} tokens and {} rows beyond the workspace", num_tokens, num_rows);
  HW_CHECK_EQ(step.layer_tables.size(), static_cast<size_t>(c.num_layers));

  const int64_t head_dim = c.head_dim, heads = num_heads(), q_dim = heads * head_dim;
  const auto mark = [this](const char* op) {
    if (op_timer_) op_timer_(op);
  };
  // Partial sums of the ranks' shares meet here (ModelShard).
  const auto all_reduce = [&](const Tensor& x) {
    if (shard_.size == 1) return;
    shard_.comm->AllReduceSum(x);
    mark("all_reduce");
  };
  auto rows = [&](const Buffer& b, int64_t n) { return b.view().Rows(0, n); };
  const Tensor residual = rows(workspace_.residual, num_tokens);
  const Tensor normed = rows(workspace_.normed, num_tokens);
  const Tensor qkv = rows(workspace_.qkv, num_tokens);
  const Tensor q = rows(workspace_.q, num_tokens).Reshape({num_tokens, heads, head_dim});
  const Tensor attn = rows(workspace_.attn, num_tokens).Reshape({num_tokens, heads, head_dim});
  const Tensor proj = rows(workspace_.proj, num_tokens);
  const Tensor gate_up = rows(workspace_.gate_up, num_tokens);
  const Tensor mlp = rows(workspace_.mlp, num_tokens);
  const Tensor last = rows(workspace_.last, num_rows);

  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = AttentionScale(c);
  const Tensor no_bias;

  be.Embedding(embed_.view(), step.ids, static_cast<int32_t>(vocab_first()), residual);
  mark("embedding");
  all_reduce(residual);
  be.RmsNorm(residual, layers_.front().input_norm.view(), eps, normed);
  mark("norm");
  for (int l = 0; l < c.num_layers; ++l) {
    const Layer& layer = layers_[static_cast<size_t>(l)];
    const kernels::PagedAttentionBatch attn_batch{step.token_seq, step.token_pos,
                                                  step.layer_tables[static_cast<size_t>(l)],
                                                  step.query_start, step.max_query_len};
    be.Matmul(normed, layer.qkv.view(), layer.qkv_bias.view(), qkv);
    mark("qkv");
    be.RopeWriteKv(qkv, attn_batch, inv_freq_.view(), step.pool, q);
    mark("rope_write_kv");
    // This layer's entry of a per-layer list (0 when the step has none).
    const auto at_layer = [l](std::span<const char> per_layer) {
      return per_layer.empty() ? 0 : static_cast<int>(per_layer[static_cast<size_t>(l)]);
    };
    const bool offloads = at_layer(step.offload_layers) != 0;
    if (offloads) step.offload_send(q);
    const int ops = at_layer(step.select_ops);
    if (ops & kernels::kSelectOpScorePages) {
      be.UpdatePageSummaries(step.pool, attn_batch);
      mark("page_summaries");
    }
    be.PagedAttention(q, step.pool, attn_batch, scale, attn);
    mark("attention");
    if (ops != 0) {
      // The operations this layer's heads take part in, launched whether or not a sequence
      // selects this step (the kernels skip rows that do not), so a captured decode step
      // replays the same launches for any mix of sequences.
      const kernels::SelectDecodeBatch select{step.seq_token,
                                              step.seq_len,
                                              attn_batch.table,
                                              step.select_state,
                                              step.select_max_len,
                                              step.pool.page_size,
                                              ops};
      if (ops & kernels::kSelectOpGate) {
        be.SelectionGate(q, select);
        mark("select_gate");
      }
      if (ops & kernels::kSelectOpScore) {
        const Tensor scores(scores_.view().data, DType::kF32, scores_.view().device,
                            {step.seq_len.numel(), heads, step.select_max_len});
        HW_CHECK_LE(scores.numel(), scores_.view().numel());
        be.ScoreAttention(q, step.pool, select, scale, attn, scores);
        mark("select_score");
        be.SelectTopK(q, scores, select);
        mark("select_topk");
      }
      if (ops & kernels::kSelectOpAttend) {
        be.SelectedAttention(q, step.pool, select, scale, attn);
        mark("select_attention");
      }
    }
    if (offloads) {
      step.offload_host(l);
      be.OffloadAttention(
          q, step.pool,
          {step.seq_token, step.seq_len, attn_batch.table, step.offload_out, step.offload_lse},
          scale, attn);
      mark("offload_attention");
    }
    if (observer_) observer_(l, q, step.pool, attn_batch);
    be.Matmul(attn.Reshape({num_tokens, q_dim}), layer.o_proj.view(), no_bias, proj);
    mark("o_proj");
    all_reduce(proj);
    be.AddRmsNorm(residual, proj, layer.post_norm.view(), eps, normed);
    mark("norm");
    be.Matmul(normed, layer.gate_up.view(), no_bias, gate_up);
    mark("gate_up");
    be.SiluMul(gate_up, mlp);
    mark("silu_mul");
    be.Matmul(mlp, layer.down.view(), no_bias, proj);
    mark("down");
    all_reduce(proj);
    const Buffer& next_norm =
        l + 1 < c.num_layers ? layers_[static_cast<size_t>(l) + 1].input_norm : final_norm_;
    be.AddRmsNorm(residual, proj, next_norm.view(), eps, normed);
    mark("norm");
  }

  be.GatherRows(normed, step.logit_rows, last);
  mark("gather_rows");
  const Buffer& head = c.tie_word_embeddings ? embed_ : lm_head_;
  if (shard_.size == 1) {
    const Tensor logits = rows(logits_, num_rows);
    be.Matmul(last, head.view(), no_bias, logits);
    mark("lm_head");
    return logits;
  }
  const Tensor share = rows(shard_logits_, num_rows);
  be.Matmul(last, head.view(), no_bias, share);
  mark("lm_head");
  const Tensor logits = shard_.rank == 0 ? rows(logits_, num_rows) : Tensor();
  shard_.comm->GatherColumns(share, logits, 0);
  mark("gather_logits");
  return logits;
}

ScopedAttentionObserver::ScopedAttentionObserver(
    LlamaModel& model, std::function<void(int, const Tensor&, const kernels::KvPoolView&,
                                          const kernels::PagedAttentionBatch&)>
                           observer)
    : model_(model) {
  model_.set_attention_observer(std::move(observer));
}

ScopedAttentionObserver::~ScopedAttentionObserver() {
  model_.set_attention_observer(nullptr);
}

}  // namespace headwise::models
