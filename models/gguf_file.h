// A GGUF (v2/v3) file: its metadata key/values and tensor directory, read from a memory
// mapping. Parsing checks every length, count and offset against the file size, so a truncated
// or garbled file is an error status, never an out-of-bounds read.
//
// Layout (ggml/docs/gguf.md): magic "GGUF", u32 version, u64 tensor count, u64 key/value count,
// the key/values, the tensor infos, padding to `general.alignment` (default 32), then the data
// section; tensor offsets are relative to the start of the data section.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/mapped_file.h"
#include "core/status.h"

namespace headwise::models {

// GGUF metadata value types, numbered as in the file.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view GgufTypeName(GgufType type);

// ggml tensor element types, numbered as in ggml.h (gaps are types ggml has removed).
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

// Storage of one ggml type: `block_size` elements take `type_size` bytes.
struct GgmlTypeTraits {
  std::string_view name;
  int64_t block_size = 0;
  int64_t type_size = 0;
};

// The traits of `type`, or nullptr for a type id this build does not know.
const GgmlTypeTraits* FindGgmlType(uint32_t type);
// "Q4_K", or "99 (unknown)" for an id this build does not know.
std::string GgmlTypeName(uint32_t type);

// One metadata value. Scalars use the field of their kind; arrays hold their elements in the
// vector of the element kind (nested arrays, rare, in `array`).
struct GgufValue {
  GgufType type = GgufType::kUint8;
  // Scalars: every integer type widens to `int_value`, except uint64 values above INT64_MAX
  // (kept in `uint_value`, flagged by `uint_overflow`); float32/64 widen to `float_value`.
  int64_t int_value = 0;
  uint64_t uint_value = 0;
  bool uint_overflow = false;
  double float_value = 0.0;
  bool bool_value = false;
  std::string string_value;
  // Arrays.
  GgufType element_type = GgufType::kUint8;
  uint64_t array_size = 0;
  std::vector<int64_t> int_array;  // integer and bool elements
  std::vector<double> float_array;
  std::vector<std::string> string_array;
  std::vector<GgufValue> array;  // array-of-array elements

  bool IsInteger() const;
  bool IsFloat() const { return type == GgufType::kFloat32 || type == GgufType::kFloat64; }
};

struct GgufTensorInfo {
  std::string name;
  // GGUF order: dims[0] is the fastest-varying (ggml's ne0), i.e. the reverse of a row-major
  // [out, in] shape.
  std::vector<int64_t> dims;
  uint32_t type = 0;    // a GgmlType id; may be one FindGgmlType does not know
  uint64_t offset = 0;  // relative to the data section
  int64_t num_elements = 0;
  // Bytes in the file; 0 when the type is unknown (such a tensor cannot be read, and its
  // range cannot be checked).
  uint64_t num_bytes = 0;
  const uint8_t* data = nullptr;  // into the mapping; nullptr when the type is unknown
};

class GgufFile {
 public:
  static StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  // The mapping every GgufTensorInfo::data points into; share it to keep tensors alive.
  const std::shared_ptr<MappedFile>& file() const { return file_; }

  // --- metadata ---
  bool Has(std::string_view key) const;
  // nullptr when absent.
  const GgufValue* Find(std::string_view key) const;
  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  // Typed getters: NotFound naming the key when absent, InvalidArgument naming the key and
  // both types when the stored type does not fit.
  StatusOr<std::string> GetString(std::string_view key) const;
  StatusOr<int64_t> GetInt(std::string_view key) const;   // any integer type
  StatusOr<double> GetFloat(std::string_view key) const;  // float32/64, or any integer type
  StatusOr<bool> GetBool(std::string_view key) const;
  StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;  // float or int elems
  StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;  // int or bool elems
  // The element count of an array value (without copying it).
  StatusOr<uint64_t> GetArraySize(std::string_view key) const;

  // --- tensors ---
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const GgufTensorInfo* FindTensor(std::string_view name) const;

 private:
  GgufFile() = default;
  StatusOr<const GgufValue*> FindOrError(std::string_view key) const;

  std::shared_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace headwise::models
