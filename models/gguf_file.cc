#include "models/gguf_file.h"

#include <fmt/ranges.h>

#include <array>
#include <cstring>
#include <limits>

namespace headwise::models {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxDims = 4;  // GGML_MAX_DIMS
// Arrays of arrays are legal but unused by real files; bound the recursion so a crafted file
// cannot exhaust the stack.
constexpr int kMaxArrayNesting = 4;

struct TypeEntry {
  uint32_t id;
  GgmlTypeTraits traits;
};

// Block layouts from ggml-common.h: elements per block and bytes per block.
constexpr std::array kGgmlTypes = {
    TypeEntry{0, {"F32", 1, 4}},         TypeEntry{1, {"F16", 1, 2}},
    TypeEntry{2, {"Q4_0", 32, 18}},      TypeEntry{3, {"Q4_1", 32, 20}},
    TypeEntry{6, {"Q5_0", 32, 22}},      TypeEntry{7, {"Q5_1", 32, 24}},
    TypeEntry{8, {"Q8_0", 32, 34}},      TypeEntry{9, {"Q8_1", 32, 36}},
    TypeEntry{10, {"Q2_K", 256, 84}},    TypeEntry{11, {"Q3_K", 256, 110}},
    TypeEntry{12, {"Q4_K", 256, 144}},   TypeEntry{13, {"Q5_K", 256, 176}},
    TypeEntry{14, {"Q6_K", 256, 210}},   TypeEntry{15, {"Q8_K", 256, 292}},
    TypeEntry{16, {"IQ2_XXS", 256, 66}}, TypeEntry{17, {"IQ2_XS", 256, 74}},
    TypeEntry{18, {"IQ3_XXS", 256, 98}}, TypeEntry{19, {"IQ1_S", 256, 50}},
    TypeEntry{20, {"IQ4_NL", 32, 18}},   TypeEntry{21, {"IQ3_S", 256, 110}},
    TypeEntry{22, {"IQ2_S", 256, 82}},   TypeEntry{23, {"IQ4_XS", 256, 136}},
    TypeEntry{24, {"I8", 1, 1}},         TypeEntry{25, {"I16", 1, 2}},
    TypeEntry{26, {"I32", 1, 4}},        TypeEntry{27, {"I64", 1, 8}},
    TypeEntry{28, {"F64", 1, 8}},        TypeEntry{29, {"IQ1_M", 256, 56}},
    TypeEntry{30, {"BF16", 1, 2}},       TypeEntry{34, {"TQ1_0", 256, 54}},
    TypeEntry{35, {"TQ2_0", 256, 66}},   TypeEntry{39, {"MXFP4", 32, 17}},
};

bool IsIntegerType(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kUint16:
    case GgufType::kInt16:
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kUint64:
    case GgufType::kInt64:
      return true;
    default:
      return false;
  }
}

// Smallest encoded size of one value of `t`, used to reject element counts the remaining bytes
// cannot possibly hold before anything is allocated for them.
uint64_t MinEncodedSize(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
    case GgufType::kString:  // u64 length
      return 8;
    case GgufType::kArray:  // u32 type + u64 count
      return 12;
  }
  return 1;
}

bool IsKnownValueType(uint32_t t) {
  return t <= static_cast<uint32_t>(GgufType::kFloat64);
}

// Bounds-checked little-endian cursor over the mapping. Every read fails cleanly at the end.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  template <typename T>
  Status Read(T* out, std::string_view what) {
    if (remaining() < sizeof(T)) {
      return InvalidArgument("truncated at byte {} reading {} ({} bytes needed, {} left)", pos_,
                             what, sizeof(T), remaining());
    }
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }

  Status ReadString(std::string* out, std::string_view what) {
    uint64_t len = 0;
    HW_RETURN_IF_ERROR(Read(&len, what));
    if (len > remaining()) {
      return InvalidArgument(
          "{} at byte {} has length {}, past the end of the file ({} bytes left): truncated or "
          "garbled file",
          what, pos_ - 8, len, remaining());
    }
    out->assign(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return Status::Ok();
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

Status ReadScalar(Reader& r, GgufType type, GgufValue* v, std::string_view key) {
  v->type = type;
  switch (type) {
    case GgufType::kUint8: {
      uint8_t x = 0;
      HW_RETURN_IF_ERROR(r.Read(&x, key));
      v->int_value = x;
      return Status::Ok();
    }
    case GgufType::kInt8: {
      int8_t x = 0;
      HW_RETURN_IF_ERROR(r.Read(&x, key));
      v->int_value = x;
      return Status::Ok();
    }
    case GgufType::kUint16: {
      uint16_t x = 0;
      HW_RETURN_IF_ERROR(r.Read(&x, key));
      v->int_value = x;
      return Status::Ok();
    }
    case GgufType::kInt16: {
      int16_t x = 0;
      HW_RETURN_IF_ERROR(r.Read(&x, key));
      v->int_value = x;
      return Status::Ok();
    }
    case GgufType::kUint32: {
      uint32_t x = 0;
      HW_RETURN_IF_ERROR(r.Read(&x, key));
      v->int_value = x;
      return Status::Ok();
    }
    case GgufType::kInt32: {
      int32_t x = 0;
      HW_RETURN_IF_ERROR(r.Read(&x, key));
      v->int_value = x;
      return Status::Ok();
    }
    case GgufType::kUint64: {
      uint64_t x = 0;
      HW_RETURN_IF_ERROR(r.Read(&x, key));
      v->uint_value = x;
      if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        v->uint_overflow = true;
      } else {
        v->int_value = static_cast<int64_t>(x);
      }
      return Status::Ok();
    }
    case GgufType::kInt64: {
      int64_t x = 0;
      HW_RETURN_IF_ERROR(r.Read(&x, key));
      v->int_value = x;
      return Status::Ok();
    }
    case GgufType::kFloat32: {
      float x = 0;
      HW_RETURN_IF_ERROR(r.Read(&x, key));
      v->float_value = x;
      return Status::Ok();
    }
    case GgufType::kFloat64: {
      double x = 0;
      HW_RETURN_IF_ERROR(r.Read(&x, key));
      v->float_value = x;
      return Status::Ok();
    }
    case GgufType::kBool: {
      uint8_t x = 0;
      HW_RETURN_IF_ERROR(r.Read(&x, key));
      if (x > 1) return InvalidArgument("key '{}': bool value {} is neither 0 nor 1", key, x);
      v->bool_value = x != 0;
      v->int_value = x;
      return Status::Ok();
    }
    case GgufType::kString:
      return r.ReadString(&v->string_value, key);
    case GgufType::kArray:
      break;
  }
  return Internal("key '{}': ReadScalar on a non-scalar type", key);
}

Status ReadValue(Reader& r, uint32_t raw_type, GgufValue* v, const std::string& key, int depth) {
  if (!IsKnownValueType(raw_type)) {
    return InvalidArgument("key '{}' has unknown value type {}", key, raw_type);
  }
  const auto type = static_cast<GgufType>(raw_type);
  if (type != GgufType::kArray) return ReadScalar(r, type, v, key);

  if (depth >= kMaxArrayNesting) {
    return InvalidArgument("key '{}': arrays nested deeper than {}", key, kMaxArrayNesting);
  }
  v->type = GgufType::kArray;
  uint32_t raw_elem = 0;
  uint64_t count = 0;
  HW_RETURN_IF_ERROR(r.Read(&raw_elem, key));
  HW_RETURN_IF_ERROR(r.Read(&count, key));
  if (!IsKnownValueType(raw_elem)) {
    return InvalidArgument("key '{}': array has unknown element type {}", key, raw_elem);
  }
  const auto elem = static_cast<GgufType>(raw_elem);
  v->element_type = elem;
  v->array_size = count;
  // Overflow-safe: count * min_size <= remaining  <=>  count <= remaining / min_size.
  if (count > r.remaining() / MinEncodedSize(elem)) {
    return InvalidArgument(
        "key '{}': array of {} {} elements does not fit in the {} bytes left: truncated or "
        "garbled file",
        key, count, GgufTypeName(elem), r.remaining());
  }
  const size_t n = static_cast<size_t>(count);
  if (elem == GgufType::kArray) {
    v->array.resize(n);
    // An inner array is written without a type tag of its own (its element type and count
    // follow directly), as gguf-py and ggml do.
    for (size_t i = 0; i < n; ++i) {
      HW_RETURN_IF_ERROR(
          ReadValue(r, static_cast<uint32_t>(GgufType::kArray), &v->array[i], key, depth + 1));
    }
    return Status::Ok();
  }
  GgufValue scalar;
  if (elem == GgufType::kString) {
    v->string_array.resize(n);
    for (size_t i = 0; i < n; ++i) HW_RETURN_IF_ERROR(r.ReadString(&v->string_array[i], key));
  } else if (elem == GgufType::kFloat32 || elem == GgufType::kFloat64) {
    v->float_array.resize(n);
    for (size_t i = 0; i < n; ++i) {
      HW_RETURN_IF_ERROR(ReadScalar(r, elem, &scalar, key));
      v->float_array[i] = scalar.float_value;
    }
  } else {
    v->int_array.resize(n);
    for (size_t i = 0; i < n; ++i) {
      HW_RETURN_IF_ERROR(ReadScalar(r, elem, &scalar, key));
      if (scalar.uint_overflow) {
        return InvalidArgument("key '{}': array element {} = {} does not fit in int64", key, i,
                               scalar.uint_value);
      }
      v->int_array[i] = scalar.int_value;
    }
  }
  return Status::Ok();
}

std::string ValueTypeString(const GgufValue& v) {
  if (v.type == GgufType::kArray) return fmt::format("array of {}", GgufTypeName(v.element_type));
  return std::string(GgufTypeName(v.type));
}

std::string DimsString(const std::vector<int64_t>& dims) {
  return fmt::format("[{}]", fmt::join(dims, ", "));
}

}  // namespace

std::string_view GgufTypeName(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
      return "uint8";
    case GgufType::kInt8:
      return "int8";
    case GgufType::kUint16:
      return "uint16";
    case GgufType::kInt16:
      return "int16";
    case GgufType::kUint32:
      return "uint32";
    case GgufType::kInt32:
      return "int32";
    case GgufType::kFloat32:
      return "float32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kUint64:
      return "uint64";
    case GgufType::kInt64:
      return "int64";
    case GgufType::kFloat64:
      return "float64";
  }
  return "unknown";
}

const GgmlTypeTraits* FindGgmlType(uint32_t type) {
  for (const auto& e : kGgmlTypes) {
    if (e.id == type) return &e.traits;
  }
  return nullptr;
}

std::string GgmlTypeName(uint32_t type) {
  if (const GgmlTypeTraits* t = FindGgmlType(type)) return std::string(t->name);
  return fmt::format("{} (unknown)", type);
}

bool GgufValue::IsInteger() const {
  return IsIntegerType(type);
}

StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  HW_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> mapped, MappedFile::Open(path));
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->file_ = mapped;
  Reader r(mapped->data(), mapped->size());
  auto fail = [&](const Status& s) { return s.WithContext(path); };

  uint32_t magic = 0;
  if (Status s = r.Read(&magic, "magic"); !s.ok()) {
    return InvalidArgument("{}: not a GGUF file: {} bytes, too short for the magic", path,
                           mapped->size());
  }
  if (magic != kGgufMagic) {
    return InvalidArgument("{}: not a GGUF file: bad magic 0x{:08x} (expected \"GGUF\")", path,
                           magic);
  }
  if (Status s = r.Read(&f->version_, "version"); !s.ok()) return fail(s);
  // v1 used 32-bit counts and lengths; v2 and v3 share the layout (v3 only added big-endian
  // files, which announce themselves by a byte-swapped version and are rejected here).
  if (f->version_ != 0 && (f->version_ & 0xffff) == 0) {
    return Unimplemented("{}: big-endian GGUF files are not supported (version field {:#x})", path,
                         f->version_);
  }
  if (f->version_ != 2 && f->version_ != 3) {
    return Unimplemented("{}: unsupported GGUF version {} (supported: 2, 3)", path, f->version_);
  }
  uint64_t tensor_count = 0, kv_count = 0;
  if (Status s = r.Read(&tensor_count, "tensor count"); !s.ok()) return fail(s);
  if (Status s = r.Read(&kv_count, "metadata key/value count"); !s.ok()) return fail(s);
  // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor info at
  // least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset): reject counts the file cannot
  // hold before reserving anything.
  if (kv_count > r.remaining() / 13) {
    return InvalidArgument(
        "{}: metadata key/value count {} is impossible for a {}-byte file (truncated or garbled "
        "file)",
        path, kv_count, mapped->size());
  }
  if (tensor_count > r.remaining() / 24) {
    return InvalidArgument(
        "{}: tensor count {} is impossible for a {}-byte file (truncated or garbled file)", path,
        tensor_count, mapped->size());
  }

  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key;
    if (Status s = r.ReadString(&key, fmt::format("metadata key #{}", i)); !s.ok()) {
      return fail(s);
    }
    uint32_t type = 0;
    if (Status s = r.Read(&type, fmt::format("type of key '{}'", key)); !s.ok()) return fail(s);
    GgufValue value;
    if (Status s = ReadValue(r, type, &value, key, 0); !s.ok()) return fail(s);
    if (!f->metadata_.emplace(key, std::move(value)).second) {
      return InvalidArgument("{}: duplicate metadata key '{}'", path, key);
    }
  }

  if (const GgufValue* a = f->Find("general.alignment")) {
    if (!a->IsInteger() || a->uint_overflow || a->int_value <= 0 ||
        (a->int_value & (a->int_value - 1)) != 0) {
      return InvalidArgument("{}: general.alignment must be a positive power of two, got {} {}",
                             path, ValueTypeString(*a),
                             a->IsInteger() ? std::to_string(a->int_value) : "value");
    }
    f->alignment_ = static_cast<uint64_t>(a->int_value);
  } else {
    f->alignment_ = kDefaultAlignment;
  }

  f->tensors_.resize(static_cast<size_t>(tensor_count));
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo& t = f->tensors_[static_cast<size_t>(i)];
    if (Status s = r.ReadString(&t.name, fmt::format("name of tensor #{}", i)); !s.ok()) {
      return fail(s);
    }
    uint32_t n_dims = 0;
    if (Status s = r.Read(&n_dims, fmt::format("rank of tensor '{}'", t.name)); !s.ok()) {
      return fail(s);
    }
    if (n_dims > kMaxDims) {
      return InvalidArgument("{}: tensor '{}' has {} dimensions (at most {})", path, t.name, n_dims,
                             kMaxDims);
    }
    t.dims.resize(n_dims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim = 0;
      if (Status s = r.Read(&dim, fmt::format("dims of tensor '{}'", t.name)); !s.ok()) {
        return fail(s);
      }
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return InvalidArgument("{}: tensor '{}' dimension {} is {}, out of range", path, t.name, d,
                               dim);
      }
      t.dims[d] = static_cast<int64_t>(dim);
      if (t.dims[d] != 0 && numel > std::numeric_limits<int64_t>::max() / t.dims[d]) {
        return InvalidArgument("{}: tensor '{}' element count overflows (dims {})", path, t.name,
                               DimsString(t.dims));
      }
      numel *= t.dims[d];
    }
    t.num_elements = numel;
    if (Status s = r.Read(&t.type, fmt::format("type of tensor '{}'", t.name)); !s.ok()) {
      return fail(s);
    }
    if (Status s = r.Read(&t.offset, fmt::format("offset of tensor '{}'", t.name)); !s.ok()) {
      return fail(s);
    }
    if (t.offset % f->alignment_ != 0) {
      return InvalidArgument("{}: tensor '{}' offset {} is not a multiple of the alignment {}",
                             path, t.name, t.offset, f->alignment_);
    }
    if (const GgmlTypeTraits* traits = FindGgmlType(t.type)) {
      const int64_t row = n_dims > 0 ? t.dims[0] : 1;
      if (row % traits->block_size != 0) {
        return InvalidArgument(
            "{}: tensor '{}' of type {} has rows of {} elements, not a "
            "multiple of its block size {}",
            path, t.name, traits->name, row, traits->block_size);
      }
      const uint64_t blocks = static_cast<uint64_t>(numel / traits->block_size);
      if (blocks > std::numeric_limits<uint64_t>::max() / traits->type_size) {
        return InvalidArgument("{}: tensor '{}' byte size overflows", path, t.name);
      }
      t.num_bytes = blocks * static_cast<uint64_t>(traits->type_size);
    }
    if (!f->tensor_index_.emplace(t.name, static_cast<size_t>(i)).second) {
      return InvalidArgument("{}: duplicate tensor name '{}'", path, t.name);
    }
  }

  const uint64_t pos = r.pos();
  f->data_offset_ = (pos + f->alignment_ - 1) / f->alignment_ * f->alignment_;
  const uint64_t file_size = mapped->size();
  for (GgufTensorInfo& t : f->tensors_) {
    if (FindGgmlType(t.type) == nullptr) continue;  // reported when someone reads it
    // Overflow-safe: data_offset + offset + num_bytes <= file_size.
    const bool fits = f->data_offset_ <= file_size && t.offset <= file_size - f->data_offset_ &&
                      t.num_bytes <= file_size - f->data_offset_ - t.offset;
    if (!fits) {
      return InvalidArgument(
          "{}: tensor '{}' data range [{}, {}) beyond file size {} (truncated file?)", path, t.name,
          f->data_offset_ + t.offset, f->data_offset_ + t.offset + t.num_bytes, file_size);
    }
    t.data = mapped->data() + f->data_offset_ + t.offset;
  }
  return f;
}

bool GgufFile::Has(std::string_view key) const {
  return metadata_.find(key) != metadata_.end();
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

StatusOr<const GgufValue*> GgufFile::FindOrError(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound("{}: metadata key '{}' not found", path(), key);
  return v;
}

StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  HW_ASSIGN_OR_RETURN(const GgufValue* v, FindOrError(key));
  if (v->type != GgufType::kString) {
    return InvalidArgument("{}: metadata key '{}' is {}, expected string", path(), key,
                           ValueTypeString(*v));
  }
  return v->string_value;
}

StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  HW_ASSIGN_OR_RETURN(const GgufValue* v, FindOrError(key));
  if (!v->IsInteger()) {
    return InvalidArgument("{}: metadata key '{}' is {}, expected an integer", path(), key,
                           ValueTypeString(*v));
  }
  if (v->uint_overflow) {
    return OutOfRange("{}: metadata key '{}' = {} does not fit in int64", path(), key,
                      v->uint_value);
  }
  return v->int_value;
}

StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  HW_ASSIGN_OR_RETURN(const GgufValue* v, FindOrError(key));
  if (v->IsFloat()) return v->float_value;
  if (v->IsInteger()) {
    return v->uint_overflow ? static_cast<double>(v->uint_value)
                            : static_cast<double>(v->int_value);
  }
  return InvalidArgument("{}: metadata key '{}' is {}, expected a number", path(), key,
                         ValueTypeString(*v));
}

StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  HW_ASSIGN_OR_RETURN(const GgufValue* v, FindOrError(key));
  if (v->type != GgufType::kBool) {
    return InvalidArgument("{}: metadata key '{}' is {}, expected bool", path(), key,
                           ValueTypeString(*v));
  }
  return v->bool_value;
}

StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  HW_ASSIGN_OR_RETURN(const GgufValue* v, FindOrError(key));
  if (v->type != GgufType::kArray || v->element_type != GgufType::kString) {
    return InvalidArgument("{}: metadata key '{}' is {}, expected array of string", path(), key,
                           ValueTypeString(*v));
  }
  return v->string_array;
}

StatusOr<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  HW_ASSIGN_OR_RETURN(const GgufValue* v, FindOrError(key));
  if (v->type == GgufType::kArray) {
    if (v->element_type == GgufType::kFloat32 || v->element_type == GgufType::kFloat64) {
      return std::vector<float>(v->float_array.begin(), v->float_array.end());
    }
    if (IsIntegerType(v->element_type)) {
      return std::vector<float>(v->int_array.begin(), v->int_array.end());
    }
  }
  return InvalidArgument("{}: metadata key '{}' is {}, expected array of float", path(), key,
                         ValueTypeString(*v));
}

StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  HW_ASSIGN_OR_RETURN(const GgufValue* v, FindOrError(key));
  if (v->type == GgufType::kArray &&
      (IsIntegerType(v->element_type) || v->element_type == GgufType::kBool)) {
    return v->int_array;
  }
  return InvalidArgument("{}: metadata key '{}' is {}, expected array of integers", path(), key,
                         ValueTypeString(*v));
}

StatusOr<uint64_t> GgufFile::GetArraySize(std::string_view key) const {
  HW_ASSIGN_OR_RETURN(const GgufValue* v, FindOrError(key));
  if (v->type != GgufType::kArray) {
    return InvalidArgument("{}: metadata key '{}' is {}, expected an array", path(), key,
                           ValueTypeString(*v));
  }
  return v->array_size;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace headwise::models
