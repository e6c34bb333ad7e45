// A safetensors file (8-byte header length, JSON header, data) through SafetensorsFile::Open,
// then every tensor it accepts converted with ToF32: the header checks must keep every
// conversion inside the mapping.
#include <cstddef>
#include <cstdint>

#include "models/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Open takes a path (it maps the file), so the input goes through a file.
  static headwise::fuzz::InputFile input("model.safetensors");
  auto file = headwise::models::SafetensorsFile::Open(input.Write(data, size));
  if (!file.ok()) {
    (void)file.status().ToString();
    return 0;
  }
  for (const auto& [name, tensor] : (*file)->tensors()) {
    if ((*file)->Find(name) != &tensor) __builtin_trap();
    auto f32 = (*file)->ToF32(tensor);
    if (!f32.ok()) (void)f32.status().ToString();
  }
  return 0;
}
