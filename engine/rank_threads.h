// Runs work on every tensor-parallel rank at once (models::ModelShard): rank 0 on the calling
// thread, rank r > 0 on a thread of its own, kept for the group's life and bound to rank r's
// backend (Backend::BindThread). So each rank issues its operations, and its collectives, from
// one thread in one order, and a collective's rendezvous never waits on a rank that is queued
// behind another (one thread per GPU: the scheduler, the KV cache's tables and the host memory
// stay single, where one process per GPU would ship every step across processes).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/backend.h"

namespace headwise::engine {

class RankThreads {
 public:
  // One rank per backend, rank 0 first.
  explicit RankThreads(std::vector<kernels::Backend*> backends);
  ~RankThreads();
  RankThreads(const RankThreads&) = delete;
  RankThreads& operator=(const RankThreads&) = delete;

  int size() const { return static_cast<int>(backends_.size()); }
  // fn(r) for every rank r, at once; returns when all have returned, rethrowing the first
  // exception any of them threw. Not reentrant.
  void Run(const std::function<void(int rank)>& fn);

 private:
  void Work(int rank);

  std::vector<kernels::Backend*> backends_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable start_, done_;
  const std::function<void(int)>* job_ = nullptr;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace headwise::engine
