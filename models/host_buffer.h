// Uninitialised f32 host buffers for weights produced at load time (dequantized, converted or
// drawn). Large ones are anonymous mappings advised to use transparent huge pages: filling
// gigabytes through 4 KiB page faults costs more than computing the values.
#pragma once

#include <cstddef>
#include <memory>

namespace headwise::models {

// `n` floats, uninitialised; freed when the last shared_ptr goes. Out of memory throws
// std::bad_alloc, as operator new does.
std::shared_ptr<float[]> AllocateHostFloats(size_t n);

}  // namespace headwise::models
