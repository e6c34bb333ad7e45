#include "kernels/cpu/thread_communicator.h"

#include <algorithm>
#include <barrier>
#include <cstring>

namespace headwise::kernels {
namespace {

// What the ranks of one group share: the barrier every operation waits at, and each rank's
// tensors of the operation in progress.
struct Group {
  explicit Group(int n) : size(n), barrier(n), inputs(static_cast<size_t>(n)) {}
  int size;
  std::barrier<> barrier;
  std::vector<Tensor> inputs;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<Group> group, int rank)
      : group_(std::move(group)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_->size; }

  void AllReduceSum(const Tensor& x) override {
    HW_CHECK(x.dtype == DType::kF32 && x.device == Device::kCpu, "AllReduceSum: f32 host tensor");
    if (group_->size == 1) return;
    const size_t n = static_cast<size_t>(x.numel());
    Publish(x);
    for (const Tensor& other : group_->inputs) {
      HW_CHECK_EQ(static_cast<size_t>(other.numel()), n);
    }
    // Every rank adds all ranks' values in rank order into its own scratch, so each ends with the
    // same bits; nobody writes its x until every rank has read them all.
    sum_.assign(n, 0.0f);
    for (const Tensor& other : group_->inputs) {
      const float* v = other.ptr<float>();
      for (size_t i = 0; i < n; ++i) sum_[i] += v[i];
    }
    group_->barrier.arrive_and_wait();
    std::memcpy(x.data, sum_.data(), n * sizeof(float));
  }

  void GatherColumns(const Tensor& local, const Tensor& out, int root) override {
    HW_CHECK(local.dtype == DType::kF32 && local.rank == 2, "GatherColumns: f32 [R, C] tensor");
    HW_CHECK(root >= 0 && root < group_->size, "GatherColumns: root {} of {}", root, group_->size);
    Publish(local);
    if (rank_ == root) {
      const int64_t rows = local.dim(0), width = out.dim(1);
      HW_CHECK(out.dtype == DType::kF32 && out.rank == 2 && out.dim(0) == rows,
               "GatherColumns: out must be f32 [{}, C]", rows);
      const int64_t cols = local.dim(1);
      HW_CHECK(width <= cols * group_->size, "GatherColumns: {} columns from {} x {}", width,
               group_->size, cols);
      int64_t col = 0;
      for (const Tensor& part : group_->inputs) {
        HW_CHECK(part.dim(0) == rows && part.dim(1) == cols, "GatherColumns: ranks' shapes differ");
        const int64_t c = std::min(cols, width - col);
        for (int64_t r = 0; r < rows && c > 0; ++r) {
          std::memcpy(out.ptr<float>() + r * width + col, part.ptr<float>() + r * cols,
                      static_cast<size_t>(c) * sizeof(float));
        }
        col += std::max<int64_t>(c, 0);
      }
    }
    group_->barrier.arrive_and_wait();  // the inputs stay untouched until the root has read them
  }

 private:
  // Puts this rank's tensor where the others see it and waits for theirs.
  void Publish(const Tensor& t) {
    group_->inputs[static_cast<size_t>(rank_)] = t;
    group_->barrier.arrive_and_wait();
  }

  std::shared_ptr<Group> group_;
  int rank_;
  std::vector<float> sum_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> CreateThreadCommunicators(int size) {
  HW_CHECK(size >= 1, "a group of {} ranks", size);
  auto group = std::make_shared<Group>(size);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < size; ++r) comms.push_back(std::make_unique<ThreadCommunicator>(group, r));
  return comms;
}

}  // namespace headwise::kernels
