// A kernels::Communicator group for tensor-parallel ranks on one device (a one-GPU check of the
// sharded forward pass: NCCL takes one rank per GPU): each operation copies every rank's tensor to
// the host in f32, adds (or places) them there in rank order, and writes each rank's result back
// through its own backend. Host copies synchronize, so it is slow and cannot be captured: runners
// over it run eagerly (ModelRunner::set_use_graphs(false)).
#pragma once

#include <barrier>
#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "kernels/communicator.h"
#include "kernels/host_copy.h"

namespace headwise::testing {

class HostStagedCommunicator final : public kernels::Communicator {
 public:
  struct Group {
    explicit Group(int n) : barrier(n), host(static_cast<size_t>(n)) {}
    std::barrier<> barrier;
    std::vector<std::vector<float>> host;  // each rank's tensor of the operation in progress
  };
  HostStagedCommunicator(std::shared_ptr<Group> group, int rank, kernels::Backend& backend)
      : group_(std::move(group)), rank_(rank), backend_(backend) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(group_->host.size()); }

  void AllReduceSum(const Tensor& x) override {
    Publish(x);
    std::vector<float> sum(group_->host.front().size(), 0.0f);
    for (const auto& part : group_->host) {
      HW_CHECK_EQ(part.size(), sum.size());
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += part[i];
    }
    group_->barrier.arrive_and_wait();  // every rank has read every part
    HW_CHECK(kernels::CopyFromHostF32(backend_, x, sum.data(), raw_).ok(), "AllReduceSum");
  }

  void GatherColumns(const Tensor& local, const Tensor& out, int root) override {
    Publish(local);
    if (rank_ == root) {
      const int64_t rows = local.dim(0), cols = local.dim(1), width = out.dim(1);
      std::vector<float> all(static_cast<size_t>(rows * width));
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < width; ++c) {
          all[static_cast<size_t>(r * width + c)] =
              group_->host[static_cast<size_t>(c / cols)][static_cast<size_t>(r * cols + c % cols)];
        }
      }
      HW_CHECK(kernels::CopyFromHostF32(backend_, out, all.data(), raw_).ok(), "GatherColumns");
    }
    group_->barrier.arrive_and_wait();
  }

  static std::vector<std::unique_ptr<kernels::Communicator>> Create(
      const std::vector<kernels::Backend*>& backends) {
    auto group = std::make_shared<Group>(static_cast<int>(backends.size()));
    std::vector<std::unique_ptr<kernels::Communicator>> out;
    for (size_t r = 0; r < backends.size(); ++r) {
      out.push_back(
          std::make_unique<HostStagedCommunicator>(group, static_cast<int>(r), *backends[r]));
    }
    return out;
  }

 private:
  void Publish(const Tensor& t) {
    HW_CHECK(
        kernels::CopyToHostF32(backend_, t, group_->host[static_cast<size_t>(rank_)], raw_).ok(),
        "host-staged communicator: copy of a {} tensor", DTypeName(t.dtype));
    group_->barrier.arrive_and_wait();
  }

  std::shared_ptr<Group> group_;
  int rank_;
  kernels::Backend& backend_;
  std::vector<uint16_t> raw_;
};

}  // namespace headwise::testing
