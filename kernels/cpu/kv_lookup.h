// How the CPU backend finds keys through a block table (kernels::BlockTable): the checks every
// operation runs on a table once per call, and the per-key lookups that may then only index. A
// bad table is a bug upstream (the KV cache that built it), so every check stops the process with
// the context (sequence, layout, KV head, position).
#pragma once

#include <cstdint>

#include "kernels/backend.h"

namespace headwise::kernels::cpu {

void CheckF32(const Tensor& t, const char* what);
void CheckI32(const Tensor& t, const char* what);

// The KvHead / KvSelect of (layout, KV head), copied out of the table's i32 tensors.
KvHead LayoutHead(const BlockTable& table, int layout, int kv_head);
KvSelect LayoutSelect(const BlockTable& table, int layout, int kv_head);

// What every operation reads of a block table: shapes, layouts, retentions, the kinds of blocks
// they need, and with selecting heads seq_slot, selects and their agreement with heads.
void CheckTable(const BlockTable& table);
// BlockTable's host-known summaries bound every layout's heads (the CUDA backend sizes its work by
// them and cannot read the heads): a forgotten or stale summary fails here.
void CheckWorkSummaries(const BlockTable& table);

// Key positions and pool pages of (sequence, KV head): its layout's KvHead and its row of the
// block table of the head's storage kind.
struct SeqHead {
  KvHead head;
  const int32_t* blocks = nullptr;  // [max_blocks]: first page of each logical page's block
  int32_t seq = 0;
  int kv_head = 0;
};
SeqHead HeadOf(const BlockTable& table, int32_t seq, int kv_head);

// Pool slot (page * page_size + offset) of key `pos` of a sequence's KV head, bounds-checked.
int64_t SlotOf(const SeqHead& sh, const BlockTable& table, const KvPoolView& pool, int32_t pos);

// The selection slot of sequence seq this step (BlockTable::seq_slot), -1 when it does not select
// or the table has no selecting heads.
int32_t SelectSlot(const BlockTable& table, int32_t seq);

}  // namespace headwise::kernels::cpu
