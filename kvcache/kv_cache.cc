#include "kvcache/kv_cache.h"

#include <algorithm>
#include <limits>
#include <utility>

namespace headwise::kvcache {
namespace {

// The ids [first, last) of blocks of `pages` pages from `base` that overlap pages [lo, hi).
std::pair<int32_t, int32_t> OverlappingIds(int lo, int hi, int base, int pages, int count) {
  if (pages == 0 || count == 0) return {0, 0};
  const auto floor_div = [](int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  return {std::max(0, floor_div(lo - base, pages)),
          std::min(count, floor_div(hi - base + pages - 1, pages))};
}

int CeilDiv(int a, int b) {
  return (a + b - 1) / b;
}

}  // namespace

// --- StepTables ---

size_t StepTables::AppendTo(std::vector<int32_t>& data) const {
  const size_t offset = data.size();
  for (const auto* part :
       {&seq_layout, &blocks, &ring_blocks, &comp_blocks, &comp_from, &seq_slot}) {
    data.insert(data.end(), part->begin(), part->end());
  }
  return offset;
}

StepTables::DeviceViews StepTables::Views(const Tensor& uploaded, size_t offset) const {
  HW_CHECK(uploaded.dtype == DType::kI32, "step tables are i32");
  auto next = [&](const std::vector<int32_t>& part,
                  std::initializer_list<int64_t> shape) -> Tensor {
    if (part.empty()) return Tensor();
    Tensor t(uploaded.ptr<int32_t>() + offset, DType::kI32, uploaded.device, shape);
    offset += part.size();
    return t;
  };
  HW_CHECK_LE(offset + seq_layout.size() + blocks.size() + ring_blocks.size() + comp_blocks.size() +
                  comp_from.size() + seq_slot.size(),
              static_cast<size_t>(uploaded.numel()));
  DeviceViews v;
  v.seq_layout = next(seq_layout, {num_seqs});
  v.blocks = next(blocks, {num_seqs, max_blocks});
  v.ring_blocks = next(ring_blocks, {num_seqs, max_blocks});
  v.comp_blocks = next(comp_blocks, {num_seqs, max_blocks});
  v.comp_from = next(comp_from, {num_seqs});
  v.seq_slot = next(seq_slot, {num_seqs});
  return v;
}

UploadedTables::UploadedTables(const KvCache& cache, std::span<const SequenceKv* const> seqs,
                               int max_blocks, kernels::Backend& backend)
    : cache_(cache), tables_(cache.BuildStepTables(seqs, 0, max_blocks)) {
  std::vector<int32_t> data;
  tables_.AppendTo(data);
  buffer_ = backend.Allocate(DType::kI32, {static_cast<int64_t>(data.size())});
  backend.CopyFromHost(buffer_.view(), data.data(), data.size() * sizeof(int32_t));
  views_ = tables_.Views(buffer_.view(), 0);
}

// --- KvCache ---

KvCache::KvCache(const KvCacheConfig& config, std::vector<KvLayout> layouts,
                 kernels::Backend& backend)
    : KvCache(config, std::move(layouts), std::array<kernels::Backend*, 1>{&backend}) {}

std::array<int, 3> KvCache::KindPages(const KvCacheConfig& config, const KvLayout& layout,
                                      std::vector<int32_t>* head_page) {
  const int hkv = config.num_kv_heads, per_rank = hkv / config.num_ranks;
  std::vector<std::array<int, 3>> counts(static_cast<size_t>(config.num_ranks), {0, 0, 0});
  if (head_page != nullptr) head_page->assign(static_cast<size_t>(config.num_layers * hkv), 0);
  // Pages inside a block in (layer, head) order per kind and rank, so layouts whose heads are
  // all full storage share one page order and their prefix-cached blocks.
  for (int l = 0; l < config.num_layers; ++l) {
    for (int h = 0; h < hkv; ++h) {
      const KindRole role = RoleOf(layout.At(l, h));
      const int page = counts[static_cast<size_t>(h / per_rank)][role]++;
      if (head_page != nullptr) (*head_page)[static_cast<size_t>(l * hkv + h)] = page;
    }
  }
  std::array<int, 3> pages = {0, 0, 0};
  for (const auto& c : counts) {
    for (int role = 0; role < 3; ++role) pages[role] = std::max(pages[role], c[role]);
  }
  return pages;
}

KvCache::KvCache(const KvCacheConfig& config, std::vector<KvLayout> layouts,
                 std::span<kernels::Backend* const> rank_backends)
    : config_(config), backend_(rank_backends.empty() ? nullptr : rank_backends.front()) {
  HW_CHECK(config.page_size > 0 && config.head_dim > 0 && config.num_pages >= 0 &&
               config.chunk_tokens >= 0,
           "page_size {} head_dim {} num_pages {} chunk_tokens {}", config.page_size,
           config.head_dim, config.num_pages, config.chunk_tokens);
  HW_CHECK(!layouts.empty(), "a KV cache needs at least one layout");
  HW_CHECK(config.num_ranks >= 1 && static_cast<int>(rank_backends.size()) == config.num_ranks &&
               config.num_kv_heads % config.num_ranks == 0,
           "{} KV heads over {} ranks with {} backends", config.num_kv_heads, config.num_ranks,
           rank_backends.size());
  kernels::Backend& backend = *backend_;
  const int num_layers = config.num_layers, hkv = config.num_kv_heads;
  const int ps = config.page_size;
  const int per_rank = hkv / config.num_ranks;
  max_full_heads_.assign(static_cast<size_t>(config.num_ranks * num_layers), 0);
  max_ring_span_.assign(static_cast<size_t>(num_layers), 0);
  for (KvLayout& layout : layouts) {
    const Status valid = layout.Validate(num_layers, hkv);
    HW_CHECK(valid.ok(), "{}", valid.message());
    LayoutInfo& info = layouts_.emplace_back();
    const std::array<int, 3> pages = KindPages(config, layout, &info.head_page);
    std::copy(pages.begin(), pages.end(), info.kind_pages);
    std::vector<int> full_heads(max_full_heads_.size(), 0);  // by (rank, layer)
    for (int l = 0; l < num_layers; ++l) {
      for (int h = 0; h < hkv; ++h) {
        const KvRetention& r = layout.At(l, h);
        if (!r.ring()) ++full_heads[static_cast<size_t>((h / per_rank) * num_layers + l)];
        if (r.ring()) {
          max_ring_span_[static_cast<size_t>(l)] =
              std::max(max_ring_span_[static_cast<size_t>(l)], r.sink + r.window);
        }
        has_reindex_ = has_reindex_ || r.reindex();
      }
    }
    for (size_t i = 0; i < full_heads.size(); ++i) {
      max_full_heads_[i] = std::max(max_full_heads_[i], full_heads[i]);
    }
    if (info.kind_pages[kRing] > 0) {
      has_ring_ = true;
      const KvRetention ring = layout.ring();
      info.sink_blocks = CeilDiv(ring.sink, ps);
      // Past the sinks, position p lands on (p - sink pages' tokens) mod (window_blocks * ps) of
      // the window's pages: tokens that are live together (the window plus a step's new ones)
      // must span at most that many positions.
      info.window_blocks = CeilDiv(ring.window + config.chunk_tokens, ps);
    }
    has_comp_ = has_comp_ || info.kind_pages[kComp] > 0;
    info.layout = std::move(layout);
  }
  // Kinds: one grid per (block size, direction), shared by the layouts with that size.
  for (LayoutInfo& info : layouts_) {
    for (int role : {kFull, kComp, kRing}) {
      if (info.kind_pages[role] == 0) continue;
      info.kind[role] = KindFor(info.kind_pages[role], /*lowest_first=*/role == kFull);
      if (role == kFull && info.layout.all_full()) prefix_kind_ = info.kind[role];
    }
  }
  if (prefix_kind_ >= 0) blocks_.resize(static_cast<size_t>(kinds_[prefix_kind_].count));

  // The head tables the kernels read, [layer][layout][head], uploaded once; with selecting
  // layouts, their selection rules in the same order.
  const bool selecting = std::any_of(layouts_.begin(), layouts_.end(),
                                     [](const LayoutInfo& i) { return i.layout.selects_any(); });
  HW_CHECK(!selecting || config.num_ranks == 1,
           "decode-time selection and offload heads run on one rank, not {}", config.num_ranks);
  std::vector<std::vector<int32_t>> heads(static_cast<size_t>(config.num_ranks));
  std::vector<int32_t> selects;
  if (selecting) {
    select_ops_.assign(static_cast<size_t>(num_layers), 0);
    offload_layers_.assign(static_cast<size_t>(num_layers), 0);
  }
  for (int l = 0; l < num_layers; ++l) {
    for (const LayoutInfo& info : layouts_) {
      for (int h = 0; h < hkv; ++h) {
        kernels::KvHead head;
        head.retention = info.layout.At(l, h);
        head.page = info.head_page[static_cast<size_t>(l * hkv + h)];
        kernels::KvSelect sel;
        if (info.layout.selects_any()) sel = info.layout.SelectAt(l, h);
        head.decode = sel.decode;
        const auto* ints = reinterpret_cast<const int32_t*>(&head);
        auto& rank_heads = heads[static_cast<size_t>(h / per_rank)];
        rank_heads.insert(rank_heads.end(), ints, ints + kernels::kKvHeadInts);
        if (!selecting) continue;
        const auto* sel_ints = reinterpret_cast<const int32_t*>(&sel);
        selects.insert(selects.end(), sel_ints, sel_ints + kernels::kKvSelectInts);
        select_ops_[static_cast<size_t>(l)] |= static_cast<char>(kernels::SelectOpsOf(sel));
        offload_layers_[static_cast<size_t>(l)] |= sel.decode == kernels::kDecodeRetrieve;
        has_recycle_ = has_recycle_ || sel.decode == kernels::kDecodeRecycle;
      }
    }
  }
  auto upload = [](kernels::Backend& be, const std::vector<int32_t>& host) {
    kernels::Buffer b = be.Allocate(DType::kI32, {static_cast<int64_t>(host.size())});
    be.CopyFromHost(b.view(), host.data(), host.size() * sizeof(int32_t));
    return b;
  };
  if (selecting) {
    selects_ = upload(backend, selects);
    AllocateSelectState(backend);
  }
  if (std::any_of(layouts_.begin(), layouts_.end(),
                  [](const LayoutInfo& i) { return i.layout.offload.has_value(); })) {
    offload_tier_ = std::make_unique<OffloadTier>(
        OffloadTierConfig{num_layers, hkv, config.num_q_heads, config.head_dim,
                          config.attention_scale, config.select_slots, config.offload_threads,
                          config.offload_host_bytes, backend.kv_dtype() == DType::kBF16});
  }
  const auto& f = config.rope_inv_freq;
  HW_CHECK(!has_reindex_ || static_cast<int>(f.size()) * 2 == config.head_dim,
           "re-indexed heads need {} rotary frequencies, the config has {}", config.head_dim / 2,
           f.size());
  for (int r = 0; r < config.num_ranks; ++r) {
    RankPool& rank = ranks_.emplace_back();
    kernels::Backend& be = *rank_backends[static_cast<size_t>(r)];
    rank.backend = &be;
    rank.heads = upload(be, heads[static_cast<size_t>(r)]);
    if (has_reindex_) {
      rank.rope_inv_freq = be.Allocate(DType::kF32, {static_cast<int64_t>(f.size())});
      be.CopyFromHost(rank.rope_inv_freq.view(), f.data(), f.size() * sizeof(float));
    }
    rank.k_pool = be.Allocate(be.kv_dtype(), {config.num_pages, ps, config.head_dim});
    rank.v_pool = be.Allocate(be.kv_dtype(), {config.num_pages, ps, config.head_dim});
  }
  if (std::any_of(select_ops_.begin(), select_ops_.end(),
                  [](char ops) { return (ops & kernels::kSelectOpScorePages) != 0; })) {
    kmin_ = backend.Allocate(backend.kv_dtype(), {config.num_pages, config.head_dim});
    kmax_ = backend.Allocate(backend.kv_dtype(), {config.num_pages, config.head_dim});
  }
}

namespace {

struct SelectShape {
  int64_t sets = 0, budget = 0;
  bool q_ref = false;  // some recycle head refreshes by cosine
};

SelectShape SelectShapeOf(std::span<const KvLayout> layouts) {
  SelectShape shape;
  for (const KvLayout& layout : layouts) {
    shape.sets = std::max<int64_t>(shape.sets, layout.num_select_sets());
    shape.budget = std::max<int64_t>(shape.budget, layout.max_select_budget());
    for (const kernels::KvSelect& sel : layout.selects) {
      shape.q_ref = shape.q_ref || sel.refresh_below_cos != 0;
    }
  }
  return shape;
}

}  // namespace

void KvCache::AllocateSelectState(kernels::Backend& backend) {
  std::vector<KvLayout> layouts;
  for (const LayoutInfo& info : layouts_) layouts.push_back(info.layout);
  const SelectShape shape = SelectShapeOf(layouts);
  const int64_t slots = config_.select_slots, hq = config_.num_q_heads;
  HW_CHECK(slots > 0 && hq > 0 && shape.budget > 0,
           "decode-time selection needs select_slots ({}) and num_q_heads ({}) in the KV cache "
           "config, and layouts with a budget ({})",
           slots, hq, shape.budget);
  for (int32_t slot = static_cast<int32_t>(slots) - 1; slot >= 0; --slot) {
    free_slots_.push_back(slot);
  }
  // Offload heads use only the slots (the host tier's state is per slot); sets live here.
  if (shape.sets == 0) return;
  sel_positions_ = backend.Allocate(DType::kI32, {slots, shape.sets, hq, shape.budget});
  sel_counts_ = backend.Allocate(DType::kI32, {slots, shape.sets, hq});
  sel_chosen_len_ = backend.Allocate(DType::kI32, {slots, shape.sets});
  sel_steps_ = backend.Allocate(DType::kI32, {slots, shape.sets});
  sel_refresh_ = backend.Allocate(DType::kI32, {slots, shape.sets});
  if (shape.q_ref) {
    sel_q_ref_ = backend.Allocate(DType::kF32, {slots, shape.sets, hq * config_.head_dim});
  }
}

size_t KvCache::SelectStateBytes(const KvCacheConfig& config, std::span<const KvLayout> layouts) {
  const SelectShape shape = SelectShapeOf(layouts);
  if (shape.sets == 0) return 0;
  const size_t slots = static_cast<size_t>(config.select_slots);
  const size_t per_set =
      static_cast<size_t>(config.num_q_heads) * (static_cast<size_t>(shape.budget) + 1) + 3 +
      (shape.q_ref ? static_cast<size_t>(config.num_q_heads) * static_cast<size_t>(config.head_dim)
                   : 0);
  return slots * static_cast<size_t>(shape.sets) * per_set * 4;
}

kernels::SelectState KvCache::select_state() const {
  kernels::SelectState state;
  if (sel_positions_.empty()) return state;
  state.positions = sel_positions_.view();
  state.counts = sel_counts_.view();
  state.chosen_len = sel_chosen_len_.view();
  state.steps = sel_steps_.view();
  state.refresh = sel_refresh_.view();
  if (!sel_q_ref_.empty()) state.q_ref = sel_q_ref_.view();
  return state;
}

int KvCache::select_sets() const {
  return sel_chosen_len_.empty() ? 0 : static_cast<int>(sel_chosen_len_.view().dim(1));
}

void KvCache::CopyRefreshToHost(std::vector<int32_t>& refresh,
                                std::vector<int32_t>& chosen_len) const {
  HW_CHECK(!sel_chosen_len_.empty(), "no selection state to copy");
  for (auto [host, device] :
       {std::pair{&refresh, &sel_refresh_}, {&chosen_len, &sel_chosen_len_}}) {
    host->resize(static_cast<size_t>(device->view().numel()));
    backend_->CopyToHost(host->data(), device->view(), host->size() * sizeof(int32_t));
  }
}

int KvCache::layer_select_ops(int layer) const {
  return has_select_heads() ? select_ops_[static_cast<size_t>(layer)] : 0;
}

bool KvCache::layer_offloads(int layer) const {
  return has_select_heads() && offload_layers_[static_cast<size_t>(layer)] != 0;
}

int32_t KvCache::SelectSlotFor(const SequenceKv& kv, int num_keys) const {
  const KvLayout& layout = Info(kv.layout()).layout;
  if (!layout.selects_any() || num_keys <= layout.select_min_len) return -1;
  HW_CHECK(kv.select_slot() >= 0, "a sequence of selecting layout \"{}\" without a slot",
           layout.name);
  return kv.select_slot();
}

std::optional<int32_t> KvCache::TakeSelectSlot(int layout) {
  if (free_slots_.empty()) return std::nullopt;
  const int32_t slot = free_slots_.back();
  free_slots_.pop_back();
  const KvLayout& l = Info(layout).layout;
  if (l.offload) offload_tier_->Begin(slot, l);
  // No set yet: the sequence's first selecting step chooses every set anew (a preempted
  // sequence's state is never reused).
  if (sel_chosen_len_.empty()) return slot;
  const int64_t sets = sel_chosen_len_.view().dim(1);
  const std::vector<int32_t> none(static_cast<size_t>(sets), -1),
      zero(static_cast<size_t>(sets), 0);
  backend_->CopyFromHost(sel_chosen_len_.view().Rows(slot, 1), none.data(),
                         none.size() * sizeof(int32_t));
  backend_->CopyFromHost(sel_steps_.view().Rows(slot, 1), zero.data(),
                         zero.size() * sizeof(int32_t));
  return slot;
}

void KvCache::GiveSelectSlot(int32_t slot) {
  if (offload_tier_ != nullptr) offload_tier_->End(slot);
  free_slots_.push_back(slot);
}

int KvCache::KindFor(int pages, bool lowest_first) {
  for (size_t k = 0; k < kinds_.size(); ++k) {
    if (kinds_[k].pages == pages && kinds_[k].lowest_first == lowest_first) {
      return static_cast<int>(k);
    }
  }
  kinds_.emplace_back().Init(config_.num_pages, pages, lowest_first);
  return static_cast<int>(kinds_.size()) - 1;
}

kernels::KvPoolView KvCache::pool_view(int rank) const {
  const RankPool& pool = ranks_.at(static_cast<size_t>(rank));
  kernels::KvPoolView view{pool.k_pool.view(), pool.v_pool.view(), config_.page_size};
  if (has_page_bounds()) {
    view.kmin = kmin_.view();
    view.kmax = kmax_.view();
  }
  return view;
}

int KvCache::HeadPage(int layout, int layer, int kv_head) const {
  return Info(layout).head_page[static_cast<size_t>(layer * config_.num_kv_heads + kv_head)];
}

int KvCache::num_pages_used() const {
  int used = 0;
  for (const BlockKind& kind : kinds_) used += kind.num_held * kind.pages;
  return used - num_evictable_pages();
}

int KvCache::num_evictable_pages() const {
  return prefix_kind_ < 0 ? 0 : static_cast<int>(lru_.size()) * kinds_[prefix_kind_].pages;
}

size_t KvCache::PageBytes(const KvCacheConfig& config, DType dtype, bool page_bounds) {
  const size_t rows = static_cast<size_t>(config.page_size) + (page_bounds ? 1 : 0);
  return 2 * rows * static_cast<size_t>(config.head_dim) * DTypeSize(dtype);
}

int KvCache::PagesForSequence(const KvCacheConfig& config, const KvLayout& layout, int tokens) {
  const int ps = config.page_size;
  const std::array<int, 3> kind_pages = KindPages(config, layout);
  const int full = kind_pages[kFull], comp = kind_pages[kComp], ring = kind_pages[kRing];
  int pages = CeilDiv(tokens, ps) * (full + comp);
  if (ring > 0) {
    const KvRetention r = layout.ring();
    pages += (CeilDiv(r.sink, ps) + CeilDiv(r.window + config.chunk_tokens, ps)) * ring;
  }
  // Comp blocks start on their grid below the rings: up to a block's worth of pages between.
  if (ring > 0 && comp > 0) pages += comp - 1;
  return pages;
}

int KvCache::max_tokens_per_sequence(int layout) const {
  const LayoutInfo& info = Info(layout);
  const int per_page = info.kind_pages[kFull] + info.kind_pages[kComp];
  if (per_page == 0) return std::numeric_limits<int>::max();
  // Alone in the pool: rings at the top, comp blocks below them on their grid, full blocks from
  // the bottom; n logical pages fit while the two growing kinds do not meet.
  int top = config_.num_pages;
  if (info.kind_pages[kRing] > 0) {
    top -= (info.sink_blocks + info.window_blocks) * info.kind_pages[kRing];
    if (info.kind_pages[kComp] > 0) top -= info.kind_pages[kComp] - 1;
  }
  return std::max(0, top) / per_page * config_.page_size;
}

StepTables KvCache::BuildStepTables(std::span<const SequenceKv* const> seqs, int num_seqs,
                                    int max_blocks) const {
  StepTables t;
  t.num_seqs = std::max(static_cast<int>(seqs.size()), num_seqs);
  t.max_blocks = std::max(max_blocks, 1);
  t.ring = has_ring_;
  t.comp = has_comp_;
  const auto rows = static_cast<size_t>(t.num_seqs) * static_cast<size_t>(t.max_blocks);
  t.seq_layout.assign(static_cast<size_t>(t.num_seqs), 0);
  t.blocks.assign(rows, 0);
  if (t.ring) t.ring_blocks.assign(rows, 0);
  if (t.comp) {
    t.comp_blocks.assign(rows, 0);
    t.comp_from.assign(static_cast<size_t>(t.num_seqs), 0);
  }
  t.select = has_select_heads();
  if (t.select) t.seq_slot.assign(static_cast<size_t>(t.num_seqs), -1);
  // Straight from the block ids (this runs every step, for every logical page in the batch).
  const auto width = static_cast<size_t>(t.max_blocks);
  for (size_t s = 0; s < seqs.size(); ++s) {
    const SequenceKv& kv = *seqs[s];
    HW_CHECK(kv.cache_ == this, "sequence {} of another cache", s);
    const LayoutInfo& info = Info(kv.layout());
    t.seq_layout[s] = kv.layout();
    const int num_blocks = std::min(BlocksFor(kv.capacity_tokens()), t.max_blocks);
    if (info.kind[kFull] >= 0) {
      const BlockKind& k = kinds_[static_cast<size_t>(info.kind[kFull])];
      for (int j = 0; j < num_blocks; ++j) {
        t.blocks[s * width + static_cast<size_t>(j)] =
            k.FirstPage(kv.blocks_[static_cast<size_t>(j)]);
      }
    }
    if (info.kind[kComp] >= 0) {
      const BlockKind& k = kinds_[static_cast<size_t>(info.kind[kComp])];
      for (int j = 0; j < num_blocks; ++j) {
        const int32_t b = kv.comp_blocks_[static_cast<size_t>(j)];
        t.comp_blocks[s * width + static_cast<size_t>(j)] =
            b == SequenceKv::kFreedBlock ? SequenceKv::kFreedBlock : k.FirstPage(b);
      }
    }
    if (info.kind[kRing] >= 0 && !kv.ring_blocks_.empty()) {
      const BlockKind& k = kinds_[static_cast<size_t>(info.kind[kRing])];
      for (int j = 0, p = 0; j < num_blocks; ++j) {
        // Sink pages first, then the window's pages in turn (SequenceKv::RingBlockPage).
        t.ring_blocks[s * width + static_cast<size_t>(j)] =
            k.FirstPage(kv.ring_blocks_[static_cast<size_t>(p)]);
        p = p + 1 < info.sink_blocks + info.window_blocks ? p + 1 : info.sink_blocks;
      }
    }
    if (t.comp) t.comp_from[s] = kv.compacted_from();
  }
  return t;
}

kernels::BlockTable KvCache::LayerTable(int layer, const StepTables::DeviceViews& step,
                                        int rank) const {
  HW_CHECK(layer >= 0 && layer < config_.num_layers, "layer {} of {}", layer, config_.num_layers);
  const RankPool& pool = ranks_.at(static_cast<size_t>(rank));
  kernels::BlockTable table;
  const int64_t hkv = rank_kv_heads();
  const int64_t per_layer = static_cast<int64_t>(layouts_.size()) * hkv * kernels::kKvHeadInts;
  table.heads = Tensor(pool.heads.view().ptr<int32_t>() + layer * per_layer, DType::kI32,
                       pool.heads.view().device,
                       {static_cast<int64_t>(layouts_.size()), hkv, kernels::kKvHeadInts});
  table.seq_layout = step.seq_layout;
  table.blocks = step.blocks;
  table.ring_blocks = step.ring_blocks;
  table.comp_blocks = step.comp_blocks;
  table.comp_from = step.comp_from;
  if (has_reindex_) table.rope_inv_freq = pool.rope_inv_freq.view();
  if (has_select_heads()) {
    const int64_t per_layer_sel =
        static_cast<int64_t>(layouts_.size()) * config_.num_kv_heads * kernels::kKvSelectInts;
    table.seq_slot = step.seq_slot;
    table.selects = Tensor(
        selects_.view().ptr<int32_t>() + layer * per_layer_sel, DType::kI32, selects_.view().device,
        {static_cast<int64_t>(layouts_.size()), config_.num_kv_heads, kernels::kKvSelectInts});
  }
  table.max_full_heads = max_full_heads_[static_cast<size_t>(rank * config_.num_layers + layer)];
  table.max_ring_span = max_ring_span_[static_cast<size_t>(layer)];
  return table;
}

// --- the allocator ---

void KvCache::BlockKind::Init(int num_pages, int block_pages, bool lowest) {
  pages = block_pages;
  count = num_pages / block_pages;
  lowest_first = lowest;
  // Lowest-first grids start at page 0, highest-first ones end at the pool's last page.
  base = lowest ? 0 : num_pages - count * pages;
  held.assign(static_cast<size_t>(count), 0);
  overlapped.assign(static_cast<size_t>(count), 0);
  queued.assign(static_cast<size_t>(count), 1);
  heap.resize(static_cast<size_t>(count));
  for (int32_t id = 0; id < count; ++id) heap[static_cast<size_t>(id)] = lowest_first ? -id : id;
  std::make_heap(heap.begin(), heap.end());
}

// The heap is a max-heap of keys: -id when the lowest id comes first, id when the highest does.
void KvCache::BlockKind::Queue(int32_t id) {
  if (queued[static_cast<size_t>(id)]) return;
  queued[static_cast<size_t>(id)] = 1;
  heap.push_back(lowest_first ? -id : id);
  std::push_heap(heap.begin(), heap.end());
}

std::optional<int32_t> KvCache::BlockKind::PopReady() {
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const int32_t id = lowest_first ? -heap.back() : heap.back();
    heap.pop_back();
    queued[static_cast<size_t>(id)] = 0;
    if (Ready(id)) return id;  // else queued again once it is ready
  }
  return std::nullopt;
}

void KvCache::MarkOverlaps(int kind, int32_t id, int delta) {
  const BlockKind& k = kinds_[static_cast<size_t>(kind)];
  const int lo = k.FirstPage(id);
  for (size_t o = 0; o < kinds_.size(); ++o) {
    if (static_cast<int>(o) == kind) continue;
    BlockKind& other = kinds_[o];
    const auto [first, last] =
        OverlappingIds(lo, lo + k.pages, other.base, other.pages, other.count);
    for (int32_t j = first; j < last; ++j) {
      int32_t& n = other.overlapped[static_cast<size_t>(j)];
      n += delta;
      if (n == 0 && other.Ready(j)) other.Queue(j);
    }
  }
}

int32_t KvCache::EvictOldest() {
  const int32_t victim = lru_.front();
  lru_.pop_front();
  cached_.erase(blocks_[static_cast<size_t>(victim)].hash);
  blocks_[static_cast<size_t>(victim)] = Block();
  return victim;
}

std::optional<int32_t> KvCache::Take(int kind) {
  BlockKind& k = kinds_[static_cast<size_t>(kind)];
  std::optional<int32_t> id = k.PopReady();
  if (!id && kind == prefix_kind_ && !lru_.empty()) {
    // Take over the least recently used cached block: it is held by this kind already.
    const int32_t victim = EvictOldest();
    blocks_[static_cast<size_t>(victim)].refs = 1;
    return victim;
  }
  // Other kinds: evict cached blocks nobody uses, oldest first, until one of ours is free.
  while (!id && !lru_.empty()) {
    Give(prefix_kind_, EvictOldest());
    id = k.PopReady();
  }
  if (!id) return std::nullopt;
  k.held[static_cast<size_t>(*id)] = 1;
  ++k.num_held;
  MarkOverlaps(kind, *id, +1);
  if (kind == prefix_kind_) {
    blocks_[static_cast<size_t>(*id)] = Block();
    blocks_[static_cast<size_t>(*id)].refs = 1;
  }
  return id;
}

void KvCache::Give(int kind, int32_t id) {
  BlockKind& k = kinds_[static_cast<size_t>(kind)];
  HW_CHECK(id >= 0 && id < k.count && k.held[static_cast<size_t>(id)],
           "block {} of {} pages given back but not held", id, k.pages);
  k.held[static_cast<size_t>(id)] = 0;
  --k.num_held;
  if (k.Ready(id)) k.Queue(id);
  MarkOverlaps(kind, id, -1);
}

void KvCache::Return(int kind, int32_t id) {
  if (kind != prefix_kind_) {
    Give(kind, id);
    return;
  }
  Block& b = blocks_[static_cast<size_t>(id)];
  HW_CHECK(b.refs > 0, "block {} released more often than taken", id);
  if (--b.refs > 0) return;
  if (b.cached) {
    b.lru = lru_.insert(lru_.end(), id);  // stays findable until evicted
    return;
  }
  b = Block();
  Give(prefix_kind_, id);
}

std::optional<int32_t> KvCache::FindCached(uint64_t hash, uint64_t parent_hash,
                                           std::span<const int32_t> tokens) {
  ++prefix_stats_.queried_blocks;
  auto it = cached_.find(hash);
  if (it == cached_.end()) return std::nullopt;
  Block& b = blocks_[static_cast<size_t>(it->second)];
  if (b.parent_hash != parent_hash ||
      !std::equal(tokens.begin(), tokens.end(), b.tokens.begin(), b.tokens.end())) {
    return std::nullopt;  // a collision, not a hit
  }
  if (b.refs++ == 0) lru_.erase(b.lru);
  ++prefix_stats_.hit_blocks;
  return it->second;
}

void KvCache::CommitBlock(int32_t id, uint64_t hash, uint64_t parent_hash,
                          std::span<const int32_t> tokens) {
  Block& b = blocks_[static_cast<size_t>(id)];
  if (b.cached || cached_.count(hash)) return;  // already known, maybe from another sequence
  b.cached = true;
  b.hash = hash;
  b.parent_hash = parent_hash;
  b.tokens.assign(tokens.begin(), tokens.end());
  cached_.emplace(hash, id);
}

// --- SequenceKv ---

SequenceKv::SequenceKv(KvCache& cache, int layout) : cache_(&cache), layout_(layout) {
  HW_CHECK(layout >= 0 && layout < cache.num_layouts(), "KV layout {} of {}", layout,
           cache.num_layouts());
}

SequenceKv::~SequenceKv() {
  Release();
}

SequenceKv::SequenceKv(SequenceKv&& o) noexcept
    : cache_(o.cache_),
      layout_(o.layout_),
      blocks_(std::move(o.blocks_)),
      comp_blocks_(std::move(o.comp_blocks_)),
      ring_blocks_(std::move(o.ring_blocks_)),
      hashes_(std::move(o.hashes_)),
      capacity_tokens_(o.capacity_tokens_),
      compacted_from_(o.compacted_from_),
      num_freed_comp_(o.num_freed_comp_),
      select_slot_(o.select_slot_) {
  o.select_slot_ = -1;
  o.blocks_.clear();
  o.comp_blocks_.clear();
  o.ring_blocks_.clear();
  o.hashes_.clear();
  o.capacity_tokens_ = 0;
  o.compacted_from_ = 0;
  o.num_freed_comp_ = 0;
}

uint64_t SequenceKv::HashOf(size_t page, std::span<const int32_t> tokens) const {
  // FNV-1a over the parent hash and the page's tokens; hits are verified against the tokens.
  uint64_t h = page == 0 ? 0xcbf29ce484222325ull : hashes_[page - 1];
  auto mix = [&h](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 0x100000001b3ull;
    }
  };
  for (int32_t t : tokens) mix(static_cast<uint32_t>(t));
  return h;
}

int SequenceKv::AttachCachedPrefix(std::span<const int32_t> tokens) {
  HW_CHECK(blocks_.empty(), "prefix must be attached before anything is reserved");
  if (!cache_->prefix_caching(layout_)) return 0;
  const size_t ps = static_cast<size_t>(cache_->config().page_size);
  for (size_t p = 0; (p + 1) * ps <= tokens.size(); ++p) {
    const auto page_tokens = tokens.subspan(p * ps, ps);
    const uint64_t parent = p == 0 ? 0 : hashes_[p - 1];
    const uint64_t hash = HashOf(p, page_tokens);
    auto block = cache_->FindCached(hash, parent, page_tokens);
    if (!block) break;
    blocks_.push_back(*block);
    hashes_.push_back(hash);
  }
  capacity_tokens_ = static_cast<int>(blocks_.size() * ps);
  return capacity_tokens_;
}

Status SequenceKv::Reserve(int num_tokens) {
  // Selecting layouts: a slot of selection state, at the first reservation.
  if (select_slot_ < 0 && info().layout.selects_any()) {
    const auto slot = cache_->TakeSelectSlot(layout_);
    if (!slot) {
      return ResourceExhausted("KV cache: all {} selection slots are held (layout \"{}\")",
                               cache_->config().select_slots, info().layout.name);
    }
    select_slot_ = *slot;
  }
  if (num_tokens <= capacity_tokens_) return Status::Ok();
  const auto& kind = info().kind;
  const size_t have = blocks_.size(), have_comp = comp_blocks_.size(),
               have_ring = ring_blocks_.size();
  const auto undo = [&] {
    for (; blocks_.size() > have; blocks_.pop_back()) {
      cache_->Return(kind[KvCache::kFull], blocks_.back());
    }
    for (; comp_blocks_.size() > have_comp; comp_blocks_.pop_back()) {
      cache_->Return(kind[KvCache::kComp], comp_blocks_.back());
    }
    for (; ring_blocks_.size() > have_ring; ring_blocks_.pop_back()) {
      cache_->Return(kind[KvCache::kRing], ring_blocks_.back());
    }
  };
  // Ring heads: a fixed set of blocks, taken at the first reservation.
  bool ok = true;
  if (kind[KvCache::kRing] >= 0 && ring_blocks_.empty()) {
    const int want = cache_->sink_blocks(layout_) + cache_->window_blocks(layout_);
    while (ok && static_cast<int>(ring_blocks_.size()) < want) {
      const auto block = cache_->Take(kind[KvCache::kRing]);
      ok = block.has_value();
      if (ok) ring_blocks_.push_back(*block);
    }
  }
  // Full and comp heads: a block of each kind per new logical page.
  const int ps = cache_->config().page_size;
  const int want = cache_->BlocksFor(num_tokens);
  for (int page = capacity_tokens_ / ps; page < want && ok; ++page) {
    for (int role : {KvCache::kFull, KvCache::kComp}) {
      if (kind[role] < 0 || !ok) continue;
      const auto block = cache_->Take(kind[role]);
      ok = block.has_value();
      if (ok) (role == KvCache::kFull ? blocks_ : comp_blocks_).push_back(*block);
    }
  }
  if (!ok) {
    undo();
    return ResourceExhausted("KV cache: {} tokens of layout \"{}\" do not fit; {} of {} pages free",
                             num_tokens, info().layout.name, cache_->num_pages_free(),
                             cache_->num_pages());
  }
  capacity_tokens_ = want * ps;
  return Status::Ok();
}

void SequenceKv::CommitComputed(std::span<const int32_t> tokens, int num_computed) {
  if (!cache_->prefix_caching(layout_)) return;
  const size_t ps = static_cast<size_t>(cache_->config().page_size);
  const size_t full = std::min(static_cast<size_t>(num_computed), tokens.size()) / ps;
  for (size_t p = hashes_.size(); p < full && p < blocks_.size(); ++p) {
    const auto page_tokens = tokens.subspan(p * ps, ps);
    const uint64_t parent = p == 0 ? 0 : hashes_[p - 1];
    const uint64_t hash = HashOf(p, page_tokens);
    cache_->CommitBlock(blocks_[p], hash, parent, page_tokens);
    hashes_.push_back(hash);
  }
}

Status SequenceKv::ReserveHost(int tokens) {
  const KvLayout& layout = info().layout;
  if (!layout.offload) return Status::Ok();
  OffloadTier& tier = *cache_->offload_tier();
  HW_CHECK(select_slot_ >= 0, "ReserveHost before Reserve (layout \"{}\")", layout.name);
  const auto bytes = static_cast<int64_t>(OffloadTier::BytesFor(tier.config(), layout, tokens));
  if (!tier.TryReserve(select_slot_, bytes)) {
    return ResourceExhausted(
        "offload host memory: {} bytes for a sequence of up to {} tokens do not fit beside the "
        "{} reserved (budget {})",
        bytes, tokens, tier.reserved_bytes(), tier.config().host_budget_bytes);
  }
  return Status::Ok();
}

bool SequenceKv::offload_ready() const {
  return !info().layout.offload || cache_->offload_tier()->ready(select_slot_);
}

void SequenceKv::Release() {
  const auto& kind = info().kind;
  for (int32_t b : blocks_) cache_->Return(kind[KvCache::kFull], b);
  for (int32_t b : comp_blocks_) {
    if (b != kFreedBlock) cache_->Return(kind[KvCache::kComp], b);
  }
  for (int32_t b : ring_blocks_) cache_->Return(kind[KvCache::kRing], b);
  if (select_slot_ >= 0) cache_->GiveSelectSlot(select_slot_);
  select_slot_ = -1;
  blocks_.clear();
  comp_blocks_.clear();
  ring_blocks_.clear();
  hashes_.clear();
  capacity_tokens_ = 0;
  compacted_from_ = 0;
  num_freed_comp_ = 0;
}

int SequenceKv::num_pages_held() const {
  const auto& pages = info().kind_pages;
  return static_cast<int>(blocks_.size()) * pages[KvCache::kFull] +
         (static_cast<int>(comp_blocks_.size()) - num_freed_comp_) * pages[KvCache::kComp] +
         static_cast<int>(ring_blocks_.size()) * pages[KvCache::kRing];
}

void SequenceKv::MarkCompacted(int first_kept) {
  // Offload heads compact again as their window slides (the moved span is on the host first).
  const bool again = compacted_from_ > 0 && info().layout.offload.has_value();
  HW_CHECK((compacted_from_ == 0 || again) && first_kept > compacted_from_ &&
               first_kept <= capacity_tokens_,
           "compaction from {}: compacted already from {}, or beyond the {} tokens reserved",
           first_kept, compacted_from_, capacity_tokens_);
  compacted_from_ = first_kept;
  // Kept: [0, kept_head) (sinks, then the compensation token) and [first_kept, ...). A logical
  // page wholly between them holds only dropped positions, which attention never reads again.
  const KvRetention r = info().layout.compress();
  const int ps = cache_->config().page_size;
  const int kept_head = r.sink + (r.compensation ? 1 : 0);
  for (int page = (kept_head + ps - 1) / ps;
       (page + 1) * ps <= first_kept && page < static_cast<int>(comp_blocks_.size()); ++page) {
    int32_t& block = comp_blocks_[static_cast<size_t>(page)];
    if (block == kFreedBlock) continue;
    cache_->Return(info().kind[KvCache::kComp], block);
    block = kFreedBlock;
    ++num_freed_comp_;
  }
}

int32_t SequenceKv::FullBlockPage(int logical_page) const {
  HW_CHECK(logical_page >= 0 && static_cast<size_t>(logical_page) < blocks_.size(),
           "logical page {} of {} full blocks", logical_page, blocks_.size());
  return cache_->kinds_[static_cast<size_t>(info().kind[KvCache::kFull])].FirstPage(
      blocks_[static_cast<size_t>(logical_page)]);
}

int32_t SequenceKv::CompBlockPage(int logical_page) const {
  HW_CHECK(logical_page >= 0 && static_cast<size_t>(logical_page) < comp_blocks_.size(),
           "logical page {} of {} comp blocks", logical_page, comp_blocks_.size());
  const int32_t block = comp_blocks_[static_cast<size_t>(logical_page)];
  if (block == kFreedBlock) return kFreedBlock;
  return cache_->kinds_[static_cast<size_t>(info().kind[KvCache::kComp])].FirstPage(block);
}

int32_t SequenceKv::RingBlockPage(int logical_page) const {
  HW_CHECK(!ring_blocks_.empty() && logical_page >= 0, "no ring blocks for logical page {}",
           logical_page);
  const int sinks = info().sink_blocks;
  const int p =
      logical_page < sinks ? logical_page : sinks + (logical_page - sinks) % info().window_blocks;
  return cache_->kinds_[static_cast<size_t>(info().kind[KvCache::kRing])].FirstPage(
      ring_blocks_[static_cast<size_t>(p)]);
}

int32_t SequenceKv::Page(int layer, int kv_head, int logical_page) const {
  const KvRetention& r = info().layout.At(layer, kv_head);
  const int32_t first = r.ring()       ? RingBlockPage(logical_page)
                        : r.compacts() ? CompBlockPage(logical_page)
                                       : FullBlockPage(logical_page);
  HW_CHECK(first != kFreedBlock,
           "logical page {} of compress-once head ({}, {}) was freed by compaction from {}",
           logical_page, layer, kv_head, compacted_from_);
  return first + cache_->HeadPage(layout_, layer, kv_head);
}

int32_t SequenceKv::Slot(int layer, int kv_head, int position) const {
  const int ps = cache_->config().page_size;
  return Page(layer, kv_head, position / ps) * ps + position % ps;
}

}  // namespace headwise::kvcache
