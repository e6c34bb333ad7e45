// The backend a [cuda] test runs against the CPU reference: the CUDA backend, or, in the
// "pair" builds (HEADWISE_TEST_PAIR_CPU: CPU-only targets built on request, see
// tests/kernels/CMakeLists.txt), a second CPU backend, so that a test's own logic (scenarios,
// host-side expectations, sanity checks) is checked here before a device session spends GPU
// time on it. A pair run proves nothing about the CUDA kernels.
#pragma once

#include <memory>
#include <utility>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#ifndef HEADWISE_TEST_PAIR_CPU
#include "kernels/cuda/cuda_backend.h"
#endif

namespace headwise::testing {

// GPU `device_index` (the pair builds: another CPU backend).
inline std::unique_ptr<kernels::Backend> CreateGpuUnderTest(int device_index = 0) {
#ifdef HEADWISE_TEST_PAIR_CPU
  (void)device_index;
  return kernels::CreateCpuBackend(2);
#else
  auto created = kernels::CreateCudaBackend(device_index);
  HW_CHECK(created.ok(), "{}", created.status().ToString());
  return std::move(created).value();
#endif
}

// Whether the backend under test records CUDA graphs (BeginCapture / EndCapture).
constexpr bool kGpuUnderTestCaptures =
#ifdef HEADWISE_TEST_PAIR_CPU
    false;
#else
    true;
#endif

}  // namespace headwise::testing
