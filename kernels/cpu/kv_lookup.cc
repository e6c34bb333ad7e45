#include "kernels/cpu/kv_lookup.h"

#include <cstring>
#include <type_traits>
#include <utility>

namespace headwise::kernels::cpu {

void CheckF32(const Tensor& t, const char* what) {
  HW_CHECK(t.dtype == DType::kF32 && t.device == Device::kCpu, "{} must be f32 on the CPU", what);
}
void CheckI32(const Tensor& t, const char* what) {
  HW_CHECK(t.dtype == DType::kI32 && t.device == Device::kCpu, "{} must be i32 on the CPU", what);
}

KvHead LayoutHead(const BlockTable& table, int layout, int kv_head) {
  static_assert(std::is_trivially_copyable_v<KvHead>);
  KvHead head;
  const int32_t* src =
      table.heads.ptr<int32_t>() + (int64_t{layout} * table.num_kv_heads() + kv_head) * kKvHeadInts;
  std::memcpy(static_cast<void*>(&head), src, sizeof head);
  return head;
}

KvSelect LayoutSelect(const BlockTable& table, int layout, int kv_head) {
  static_assert(std::is_trivially_copyable_v<KvSelect>);
  KvSelect sel;
  const int32_t* src = table.selects.ptr<int32_t>() +
                       (int64_t{layout} * table.num_kv_heads() + kv_head) * kKvSelectInts;
  std::memcpy(static_cast<void*>(&sel), src, sizeof sel);
  return sel;
}

namespace {

// seq_slot and selects, and each selecting head's rule against its KvHead: selection reads full
// storage at original positions (kvcache::KvLayout::ValidateSelects refuses the rest).
void CheckSelects(const BlockTable& table) {
  CheckI32(table.seq_slot, "BlockTable::seq_slot");
  CheckI32(table.selects, "BlockTable::selects");
  HW_CHECK(table.seq_slot.numel() == table.num_seqs(),
           "BlockTable::seq_slot {} must be [S] with S = {}", table.seq_slot.ShapeString(),
           table.num_seqs());
  HW_CHECK(table.selects.rank == 3 && table.selects.dim(0) == table.num_layouts() &&
               table.selects.dim(1) == table.num_kv_heads() &&
               table.selects.dim(2) == kKvSelectInts,
           "BlockTable::selects {} must be [{}, {}, {}] like heads", table.selects.ShapeString(),
           table.num_layouts(), table.num_kv_heads(), kKvSelectInts);
  for (int s = 0; s < table.num_seqs(); ++s) {
    const int32_t slot = table.seq_slot.ptr<int32_t>()[s];
    HW_CHECK(slot >= -1, "sequence {} has selection slot {}", s, slot);
  }
  for (int l = 0; l < table.num_layouts(); ++l) {
    for (int h = 0; h < table.num_kv_heads(); ++h) {
      const KvHead head = LayoutHead(table, l, h);
      const KvSelect sel = LayoutSelect(table, l, h);
      HW_CHECK(sel.decode == head.decode,
               "layout {} KV head {}: KvSelect::decode {} but KvHead::decode {}", l, h, sel.decode,
               head.decode);
      if (sel.decode == kDecodeDense) continue;
      if (sel.decode == kDecodeRetrieve) {
        HW_CHECK(head.retention.offload() && sel.set == -1 && sel.budget >= 1,
                 "layout {} KV head {}: retrieve with storage {}, set {}, budget {}", l, h,
                 head.retention.storage, sel.set, sel.budget);
        continue;
      }
      HW_CHECK(head.retention.storage == kStorageFull && !head.retention.reindex(),
               "layout {} KV head {}: decode role {} needs full storage at original positions", l,
               h, sel.decode);
      HW_CHECK(sel.set >= 0 && sel.budget >= 1 && sel.sink >= 0 && sel.recent >= 1,
               "layout {} KV head {}: decode role {} with set {}, budget {}, sink {}, recent {}", l,
               h, sel.decode, sel.set, sel.budget, sel.sink, sel.recent);
      HW_CHECK(sel.per_q_head || (sel.reduce >= kReduceSumSoftmax && sel.reduce <= kReduceMax),
               "layout {} KV head {}: reduce {}", l, h, sel.reduce);
      HW_CHECK(sel.decode != kDecodeRecycle || sel.refresh_every >= 1,
               "layout {} KV head {}: refresh every {} steps", l, h, sel.refresh_every);
    }
  }
}

}  // namespace

void CheckTable(const BlockTable& table) {
  CheckI32(table.heads, "BlockTable::heads");
  CheckI32(table.seq_layout, "BlockTable::seq_layout");
  CheckI32(table.blocks, "BlockTable::blocks");
  HW_CHECK(table.heads.rank == 3 && table.heads.dim(2) == kKvHeadInts && table.num_layouts() > 0,
           "BlockTable::heads {} must be [layouts, Hkv, {}]", table.heads.ShapeString(),
           kKvHeadInts);
  HW_CHECK(table.blocks.rank == 2 && table.seq_layout.numel() == table.num_seqs(),
           "BlockTable::blocks {} and seq_layout {} must be [S, max_blocks] and [S]",
           table.blocks.ShapeString(), table.seq_layout.ShapeString());
  for (const auto& [kind, t] : {std::pair{"ring_blocks", &table.ring_blocks},
                                std::pair{"comp_blocks", &table.comp_blocks}}) {
    if (t->data == nullptr) continue;
    CheckI32(*t, kind);
    HW_CHECK(t->rank == 2 && t->dim(0) == table.blocks.dim(0) && t->dim(1) == table.blocks.dim(1),
             "BlockTable::{} {} must have the shape of blocks {}", kind, t->ShapeString(),
             table.blocks.ShapeString());
  }
  if (table.has_compressed_heads()) {
    CheckI32(table.comp_from, "BlockTable::comp_from");
    HW_CHECK_EQ(table.comp_from.numel(), table.num_seqs());
  }
  for (int s = 0; s < table.num_seqs(); ++s) {
    const int32_t layout = table.seq_layout.ptr<int32_t>()[s];
    HW_CHECK(layout >= 0 && layout < table.num_layouts(), "sequence {} runs layout {} of {}", s,
             layout, table.num_layouts());
  }
  for (int l = 0; l < table.num_layouts(); ++l) {
    for (int h = 0; h < table.num_kv_heads(); ++h) {
      const KvHead head = LayoutHead(table, l, h);
      const KvRetention& r = head.retention;
      HW_CHECK(r.storage >= kStorageFull && r.storage <= kStorageOffload,
               "layout {} KV head {}: storage {}", l, h, r.storage);
      HW_CHECK(r.sink >= 0 && r.window >= 0 && head.page >= 0,
               "layout {} KV head {}: sink {}, window {}, page {}", l, h, r.sink, r.window,
               head.page);
      HW_CHECK(!r.ring() || table.has_ring_heads(),
               "layout {} KV head {} is a ring head but the table has no ring_blocks", l, h);
      HW_CHECK(!r.compacts() || table.has_compressed_heads(),
               "layout {} KV head {} compacts but the table has no comp_blocks", l, h);
      HW_CHECK(r.offload() == (head.decode == kDecodeRetrieve),
               "layout {} KV head {}: storage {} with decode role {} (offload heads, and only "
               "they, retrieve)",
               l, h, r.storage, head.decode);
      HW_CHECK(!r.reindex() || r.ring(),
               "layout {} KV head {} re-indexes positions but is no ring head", l, h);
      HW_CHECK(head.decode >= kDecodeDense && head.decode <= kDecodeRetrieve,
               "layout {} KV head {}: decode role {}", l, h, head.decode);
    }
  }
  if (table.has_select_heads()) CheckSelects(table);
}

void CheckWorkSummaries(const BlockTable& table) {
  for (int l = 0; l < table.num_layouts(); ++l) {
    int full_heads = 0;
    for (int h = 0; h < table.num_kv_heads(); ++h) {
      const KvHead head = LayoutHead(table, l, h);
      if (head.retention.ring()) {
        HW_CHECK(head.retention.sink + head.retention.window <= table.max_ring_span,
                 "layout {} KV head {}: ring sink {} + window {} over max_ring_span {}", l, h,
                 head.retention.sink, head.retention.window, table.max_ring_span);
      } else {
        ++full_heads;
      }
    }
    HW_CHECK(full_heads <= table.max_full_heads,
             "layout {} has {} full and compress-once KV heads, max_full_heads is {}", l,
             full_heads, table.max_full_heads);
  }
}

SeqHead HeadOf(const BlockTable& table, int32_t seq, int kv_head) {
  HW_CHECK(seq >= 0 && seq < table.num_seqs() && kv_head >= 0 && kv_head < table.num_kv_heads(),
           "KV head {} of sequence {} outside the block table [{}, {}]", kv_head, seq,
           table.num_seqs(), table.num_kv_heads());
  SeqHead sh;
  sh.seq = seq;
  sh.kv_head = kv_head;
  sh.head = LayoutHead(table, table.seq_layout.ptr<int32_t>()[seq], kv_head);
  const KvRetention& r = sh.head.retention;
  const Tensor& blocks = r.ring()            ? table.ring_blocks
                         : r.compacts() ? table.comp_blocks
                                             : table.blocks;
  sh.blocks = blocks.ptr<int32_t>() + int64_t{seq} * table.max_blocks();
  return sh;
}

int64_t SlotOf(const SeqHead& sh, const BlockTable& table, const KvPoolView& pool, int32_t pos) {
  const int64_t logical = pos / pool.page_size;
  HW_CHECK(pos >= 0 && logical < table.max_blocks(),
           "key {} of sequence {} outside the block table's {} pages of {}", pos, sh.seq,
           table.max_blocks(), pool.page_size);
  const int32_t first_page = sh.blocks[logical];
  // A freed comp page: its positions were dropped by compaction, and nothing may read them.
  HW_CHECK(first_page >= 0, "key {} of sequence {} on KV head {}: its page was freed (block {})",
           pos, sh.seq, sh.kv_head, first_page);
  const int64_t page = int64_t{first_page} + sh.head.page;
  HW_CHECK(page < pool.k.dim(0), "KV page {} (block {} + head page {}) outside pool of {}", page,
           first_page, sh.head.page, pool.k.dim(0));
  return page * pool.page_size + pos % pool.page_size;
}

int32_t SelectSlot(const BlockTable& table, int32_t seq) {
  return table.has_select_heads() ? table.seq_slot.ptr<int32_t>()[seq] : -1;
}

}  // namespace headwise::kernels::cpu
