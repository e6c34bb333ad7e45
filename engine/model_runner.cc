#include "engine/model_runner.h"

#include <algorithm>

#include "kernels/host_copy.h"

namespace headwise::engine {

ModelRunner::ModelRunner(models::LlamaModel& model, kvcache::KvCache& cache)
    : ModelRunner(std::vector<models::LlamaModel*>{&model}, cache) {}

ModelRunner::ModelRunner(std::vector<models::LlamaModel*> ranks, kvcache::KvCache& cache)
    : cache_(cache) {
  HW_CHECK(!ranks.empty() && static_cast<int>(ranks.size()) == cache.num_ranks(),
           "{} model ranks for a KV cache of {} ranks", ranks.size(), cache.num_ranks());
  std::vector<kernels::Backend*> backends;
  for (size_t r = 0; r < ranks.size(); ++r) {
    const models::ModelShard& shard = ranks[r]->shard();
    HW_CHECK(shard.rank == static_cast<int>(r) && shard.size == static_cast<int>(ranks.size()),
             "model rank {} of {} given as rank {} of {}", shard.rank, shard.size, r, ranks.size());
    Rank& rank = ranks_.emplace_back();
    rank.model = ranks[r];
    rank.index = static_cast<int>(r);
    backends.push_back(&ranks[r]->backend());
  }
  threads_ = std::make_unique<RankThreads>(std::move(backends));
  const auto& c = model().config();
  const auto& kv = cache.config();
  HW_CHECK(kv.num_layers == c.num_layers && kv.num_kv_heads == c.num_kv_heads &&
               kv.head_dim == c.head_dim,
           "KV cache of {} layers x {} KV heads x {} dims for a model of {} x {} x {}",
           kv.num_layers, kv.num_kv_heads, kv.head_dim, c.num_layers, c.num_kv_heads, c.head_dim);
  if (cache.has_select_heads()) {
    for (int l = 0; l < c.num_layers; ++l) {
      select_ops_.push_back(static_cast<char>(cache.layer_select_ops(l)));
      offload_layers_.push_back(cache.layer_offloads(l) ? 1 : 0);
    }
  }
}

ModelRunner::Step ModelRunner::Pack(std::span<const BatchEntry> batch, int pad_seqs,
                                    int pad_blocks) const {
  const int num_seqs = static_cast<int>(batch.size());
  HW_CHECK(num_seqs > 0, "empty batch");
  Step step;
  step.num_seqs = std::max(num_seqs, pad_seqs);
  std::vector<int32_t> ids, token_seq, positions, query_start{0}, logit_rows;
  std::vector<const kvcache::SequenceKv*> kvs;
  kvs.reserve(batch.size());
  const int page_size = cache_.config().page_size;
  int max_blocks = std::max(pad_blocks, 1);
  for (int s = 0; s < num_seqs; ++s) {
    const BatchEntry& e = batch[static_cast<size_t>(s)];
    HW_CHECK(!e.tokens.empty() && e.kv != nullptr, "sequence {} has no tokens or no cache", s);
    if (const auto& rule = cache_.layout(e.kv->layout()).offload) {
      step.offload = true;
      // A prompt chunk (not a decode query) before compaction trains the sequence's indexes.
      if ((e.tokens.size() > 1 || e.all_logits) && e.kv->compacted_from() == 0 &&
          rule->index == kvcache::OffloadRule::Index::kRoarGraph) {
        for (size_t i = 0; i < e.tokens.size(); ++i) {
          const int32_t pos = e.start_pos + static_cast<int32_t>(i);
          if (pos % rule->train_stride != 0) continue;
          step.train.push_back({static_cast<int64_t>(ids.size() + i), e.kv->select_slot(), pos});
        }
      }
    }
    const int end = e.start_pos + static_cast<int>(e.tokens.size());
    HW_CHECK_LE(end, e.kv->capacity_tokens());
    max_blocks = std::max(max_blocks, (end + page_size - 1) / page_size);
    step.max_query_len = std::max(step.max_query_len, static_cast<int>(e.tokens.size()));
    for (size_t i = 0; i < e.tokens.size(); ++i) {
      if (e.all_logits || i + 1 == e.tokens.size()) {
        logit_rows.push_back(static_cast<int32_t>(ids.size()));
      }
      ids.push_back(e.tokens[i]);
      positions.push_back(e.start_pos + static_cast<int32_t>(i));
      token_seq.push_back(s);
    }
    query_start.push_back(static_cast<int32_t>(ids.size()));
    kvs.push_back(e.kv);
  }
  // Padding sequences of one token at position -1: the kernels skip them.
  for (int s = num_seqs; s < step.num_seqs; ++s) {
    logit_rows.push_back(static_cast<int32_t>(ids.size()));
    ids.push_back(0);
    positions.push_back(-1);
    token_seq.push_back(s);
    query_start.push_back(static_cast<int32_t>(ids.size()));
  }
  step.num_tokens = static_cast<int64_t>(ids.size());
  step.num_rows = static_cast<int64_t>(logit_rows.size());
  step.tables = cache_.BuildStepTables(kvs, step.num_seqs, max_blocks);
  for (const auto* part : {&ids, &token_seq, &positions, &query_start, &logit_rows}) {
    step.data.insert(step.data.end(), part->begin(), part->end());
  }
  if (step.tables.select) {
    // A sequence selects on a decode query (one token, no prompt logits) once it is longer than
    // its layout's select_min_len; its query row and its length go with the step.
    std::vector<int32_t> seq_token(static_cast<size_t>(step.num_seqs)),
        seq_len(static_cast<size_t>(step.num_seqs), 0);
    for (int s = 0; s < step.num_seqs; ++s) {
      seq_token[static_cast<size_t>(s)] = query_start[static_cast<size_t>(s)];
      if (s >= num_seqs) continue;
      const BatchEntry& e = batch[static_cast<size_t>(s)];
      const int keys = e.start_pos + static_cast<int>(e.tokens.size());
      seq_len[static_cast<size_t>(s)] = keys;
      if (e.tokens.size() == 1 && !e.all_logits) {
        step.tables.seq_slot[static_cast<size_t>(s)] = cache_.SelectSlotFor(*e.kv, keys);
      }
    }
    step.data.insert(step.data.end(), seq_token.begin(), seq_token.end());
    step.data.insert(step.data.end(), seq_len.begin(), seq_len.end());
    if (step.offload) {  // offload heads are selection heads: step.tables.select holds
      for (const Step::TrainToken& t : step.train) {
        step.data.push_back(static_cast<int32_t>(t.token));
      }
      step.data.insert(step.data.end(), seq_token.begin(), seq_token.end());
      step.num_host_rows = static_cast<int64_t>(step.train.size() + seq_token.size());
    }
    step.seq_token = std::move(seq_token);
    step.select_max_len = step.tables.max_blocks * page_size;
    step.select_heads = model().num_heads();
  }
  HW_CHECK(!step.offload || step.tables.select, "offload heads in a cache without selection");
  step.tables_offset = step.tables.AppendTo(step.data);
  return step;
}

void ModelRunner::Upload(const Rank& rank, const Step& step, kernels::Buffer& data) {
  kernels::Backend& be = rank.model->backend();
  if (data.empty() || data.view().numel() < static_cast<int64_t>(step.data.size())) {
    data = be.Allocate(DType::kI32, {static_cast<int64_t>(step.data.size()) * 2});
  }
  be.CopyFromHost(data.view(), step.data.data(), step.data.size() * sizeof(int32_t));
}

Tensor ModelRunner::Run(Rank& rank, const Step& step, const kernels::Buffer& data) {
  models::LlamaModel& model = *rank.model;
  const Tensor all = data.view();
  int64_t offset = 0;
  auto next = [&](int64_t n) {
    Tensor t(all.ptr<int32_t>() + offset, DType::kI32, all.device, {n});
    offset += n;
    return t;
  };
  models::StepInputs in;
  Tensor host_rows;  // offload steps: the rows of q the host reads (OffloadSend)
  in.ids = next(step.num_tokens);
  in.token_seq = next(step.num_tokens);
  in.token_pos = next(step.num_tokens);
  in.query_start = next(step.num_seqs + 1);
  in.logit_rows = next(step.num_rows);
  if (step.select_max_len > 0) {
    in.seq_token = next(step.num_seqs);
    in.seq_len = next(step.num_seqs);
    if (step.offload) host_rows = next(step.num_host_rows);
    in.select_state = cache_.select_state();
    in.select_max_len = step.select_max_len;
    in.select_ops = select_ops_;
  }
  if (step.offload) {  // one rank (KvCache refuses offload heads over several)
    const int64_t hq = model.num_heads(), d = model.config().head_dim;
    kernels::Backend& be = model.backend();
    if (offload_lse_.empty() || offload_lse_.view().numel() < step.num_seqs * hq) {
      offload_out_ = be.Allocate(DType::kF32, {step.num_seqs * hq * d});
      offload_lse_ = be.Allocate(DType::kF32, {step.num_seqs * hq});
    }
    in.offload_layers = offload_layers_;
    in.offload_send = [this, host_rows](const Tensor& q) { OffloadSend(host_rows, q); };
    in.offload_host = [this, &step](int layer) { OffloadLayer(step, layer); };
    in.offload_out = Tensor(offload_out_.view().data, DType::kF32, offload_out_.view().device,
                            {step.num_seqs, hq, d});
    in.offload_lse = Tensor(offload_lse_.view().data, DType::kF32, offload_lse_.view().device,
                            {step.num_seqs, hq});
  }
  in.max_query_len = step.max_query_len;
  in.pool = cache_.pool_view(rank.index);
  const kvcache::StepTables::DeviceViews views = step.tables.Views(all, step.tables_offset);
  rank.layer_tables.clear();
  for (int l = 0; l < model.config().num_layers; ++l) {
    rank.layer_tables.push_back(cache_.LayerTable(l, views, rank.index));
  }
  in.layer_tables = rank.layer_tables;
  return model.Run(in);
}

void ModelRunner::OffloadSend(const Tensor& host_rows, const Tensor& q) {
  kernels::Backend& be = model().backend();
  const int64_t hq = q.dim(1), d = q.dim(2), rows = host_rows.numel();
  if (offload_q_.empty() || offload_q_.view().numel() < rows * hq * d) {
    offload_q_ = be.Allocate(q.dtype, {rows * hq * d});
  }
  offload_q_sent_ = Tensor(offload_q_.view().data, q.dtype, q.device, {rows, hq * d});
  be.GatherRows(q.Reshape({q.dim(0), hq * d}), host_rows, offload_q_sent_);
  be.CopyToHostStart(offload_q_sent_, offload_q_sent_.nbytes());
}

void ModelRunner::OffloadLayer(const Step& step, int layer) {
  kernels::Backend& be = model().backend();
  kvcache::OffloadTier& tier = *cache_.offload_tier();
  const int64_t hq = model().num_heads(), d = model().config().head_dim;
  const auto row = static_cast<size_t>(hq * d);
  const Status copied = kernels::HostToF32(be.CopyToHostWait(), offload_q_sent_.dtype,
                                           static_cast<size_t>(offload_q_sent_.numel()), q_host_);
  HW_CHECK(copied.ok(), "offload layer {}: {}", layer, copied.ToString());
  for (size_t i = 0; i < step.train.size(); ++i) {
    const Step::TrainToken& t = step.train[i];
    tier.AddTrainingQueries(t.slot, layer, t.pos, q_host_.data() + i * row);
  }
  const float* q_rows = q_host_.data() + step.train.size() * row;  // row s: sequence s's query
  const auto seqs = static_cast<size_t>(step.num_seqs);
  out_host_.resize(seqs * row);
  lse_host_.resize(seqs * static_cast<size_t>(hq));
  tier.Retrieve(layer, step.tables.seq_slot, q_rows, out_host_.data(), lse_host_.data());
  be.CopyFromHost(offload_out_.view(), out_host_.data(), out_host_.size() * sizeof(float));
  be.CopyFromHost(offload_lse_.view(), lse_host_.data(), lse_host_.size() * sizeof(float));
}

int ModelRunner::GraphBatchBucket(int num_seqs) {
  for (int b : {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128}) {
    if (num_seqs <= b) return b;
  }
  return 0;
}

Tensor ModelRunner::Forward(std::span<const BatchEntry> batch) {
  kernels::Backend& be = model().backend();
  const int num_seqs = static_cast<int>(batch.size());
  const bool decode_only = std::all_of(batch.begin(), batch.end(), [](const BatchEntry& e) {
    return e.tokens.size() == 1 && !e.all_logits;
  });
  const int bucket = GraphBatchBucket(num_seqs);
  // Offload steps call the host tier inside the step: never captured.
  const bool offload = cache_.offload_tier() != nullptr &&
                       std::any_of(batch.begin(), batch.end(), [&](const BatchEntry& e) {
                         return cache_.layout(e.kv->layout()).offload.has_value();
                       });
  if (!use_graphs_ || !be.SupportsCapture() || !decode_only || bucket == 0 ||
      model().has_attention_observer() || model().has_op_timer() || offload) {
    const Step step = Pack(batch, 0, 0);
    Tensor logits;
    threads_->Run([&](int r) {
      Rank& rank = ranks_[static_cast<size_t>(r)];
      if (rank.model->EnsureWorkspace(step.num_tokens, step.num_rows, step.score_elems())) {
        rank.graphs.clear();
      }
      Upload(rank, step, rank.data);
      const Tensor out = Run(rank, step, rank.data);
      if (r == 0) logits = out;
    });
    return logits;
  }
  // Decode steps replay a graph per (batch bucket, block-table width): sequences and table
  // columns are padded up to the bucket, and the kernels take lengths from the inputs. Which
  // layout a sequence runs is data too, so one graph serves every mix of policies.
  int max_blocks = 1;
  const int page_size = cache_.config().page_size;
  for (const BatchEntry& e : batch) {
    max_blocks = std::max(max_blocks, (e.start_pos + 1 + page_size - 1) / page_size);
  }
  int width = 16;
  while (width < max_blocks) width *= 2;
  const Step step = Pack(batch, bucket, width);
  HW_CHECK_EQ(step.tables.max_blocks, width);
  threads_->Run([&](int r) {
    Rank& rank = ranks_[static_cast<size_t>(r)];
    kernels::Backend& rank_be = rank.model->backend();
    // Graphs hold the buffers they were recorded with.
    if (rank.model->EnsureWorkspace(step.num_tokens, step.num_rows, step.score_elems())) {
      rank.graphs.clear();
    }
    DecodeGraph& graph = rank.graphs[{bucket, width}];
    Upload(rank, step, graph.data);
    if (graph.ops == nullptr) {
      // One eager run sizes every backend scratch buffer, then the same launches are recorded.
      Run(rank, step, graph.data);
      rank_be.BeginCapture();
      Run(rank, step, graph.data);
      graph.ops = rank_be.EndCapture();
    } else {
      graph.ops->Replay();
    }
  });
  return model().logits(num_seqs);
}

std::vector<float> ModelRunner::ForwardToHost(std::span<const BatchEntry> batch) {
  const Tensor logits = Forward(batch);
  std::vector<float> host(static_cast<size_t>(logits.numel()));
  model().backend().CopyToHost(host.data(), logits, host.size() * sizeof(float));
  return host;
}

}  // namespace headwise::engine
