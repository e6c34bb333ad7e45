#include "models/host_buffer.h"

#include <sys/mman.h>

#include <new>

namespace headwise::models {

std::shared_ptr<float[]> AllocateHostFloats(size_t n) {
  constexpr size_t kHugeThreshold = size_t{8} << 20;  // below this, huge pages do not pay off
  const size_t bytes = n * sizeof(float);
  if (bytes < kHugeThreshold) return std::shared_ptr<float[]>(new float[n]);
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  // Advice only: without transparent huge pages the mapping simply stays on 4 KiB pages.
  ::madvise(p, bytes, MADV_HUGEPAGE);
  return std::shared_ptr<float[]>(static_cast<float*>(p),
                                  [bytes](float* q) { ::munmap(q, bytes); });
}

}  // namespace headwise::models
