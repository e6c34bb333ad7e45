#include "models/safetensors.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include "core/dtype.h"
#include "core/json_file.h"
#include "models/host_buffer.h"

namespace headwise::models {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The reference implementation refuses headers above 100 MB; so do we, which also bounds what
// a garbled length can make us parse.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Bytes per element of every safetensors dtype (0: unknown dtype).
uint64_t DtypeSize(const std::string& dtype) {
  static const std::map<std::string, uint64_t, std::less<>> kSizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8},
  };
  auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

Status ParseEntry(const std::string& name, const json& entry, uint64_t data_size,
                  SafetensorsTensor* t) {
  if (!entry.is_object()) return InvalidArgument("tensor '{}': entry is not an object", name);
  t->name = name;
  auto dtype = entry.find("dtype");
  auto shape = entry.find("shape");
  auto offsets = entry.find("data_offsets");
  if (dtype == entry.end() || !dtype->is_string()) {
    return InvalidArgument("tensor '{}': missing or non-string 'dtype'", name);
  }
  t->dtype = dtype->get<std::string>();
  if (shape == entry.end() || !shape->is_array()) {
    return InvalidArgument("tensor '{}': missing or non-list 'shape'", name);
  }
  int64_t numel = 1;
  for (const json& d : *shape) {
    if (!d.is_number_unsigned()) {
      return InvalidArgument("tensor '{}': shape entry {} is not a non-negative integer", name,
                             d.dump());
    }
    const uint64_t dim = d.get<uint64_t>();
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        (dim != 0 && static_cast<uint64_t>(numel) >
                         static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / dim)) {
      return InvalidArgument("tensor '{}': shape {} overflows", name, shape->dump());
    }
    t->shape.push_back(static_cast<int64_t>(dim));
    numel *= static_cast<int64_t>(dim);
  }
  t->num_elements = numel;
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    return InvalidArgument("tensor '{}': 'data_offsets' must be two non-negative integers", name);
  }
  const uint64_t begin = (*offsets)[0].get<uint64_t>();
  const uint64_t end = (*offsets)[1].get<uint64_t>();
  if (begin > end) {
    return InvalidArgument("tensor '{}': data_offsets [{}, {}) are reversed", name, begin, end);
  }
  if (end > data_size) {
    return InvalidArgument(
        "tensor '{}' data range [{}, {}) beyond the data section's {} bytes "
        "(truncated file?)",
        name, begin, end, data_size);
  }
  t->num_bytes = end - begin;
  if (const uint64_t size = DtypeSize(t->dtype); size != 0) {
    // Overflow-safe: numel * size == num_bytes.
    if (t->num_bytes % size != 0 || t->num_bytes / size != static_cast<uint64_t>(numel)) {
      return InvalidArgument(
          "tensor '{}': {} {} elements of shape {} need {} bytes, data_offsets "
          "give {}",
          name, numel, t->dtype, ShapeString(t->shape),
          static_cast<double>(numel) * static_cast<double>(size), t->num_bytes);
    }
  }
  return Status::Ok();
}

}  // namespace

bool IsSupportedSafetensorsDtype(const std::string& dtype) {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16";
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  HW_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> mapped, MappedFile::Open(path));
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->file_ = mapped;
  const uint64_t size = mapped->size();
  if (size < 8) {
    return InvalidArgument("{}: {} bytes, too short for a safetensors header length", path, size);
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, mapped->data(), 8);
  if (header_len > size - 8) {
    return InvalidArgument(
        "{}: header length {} beyond file size {} (truncated or not a "
        "safetensors file)",
        path, header_len, size);
  }
  if (header_len > kMaxHeaderBytes) {
    return InvalidArgument("{}: header length {} exceeds the {}-byte limit", path, header_len,
                           kMaxHeaderBytes);
  }
  const std::string_view text(reinterpret_cast<const char*>(mapped->data() + 8),
                              static_cast<size_t>(header_len));
  HW_ASSIGN_OR_RETURN(json header, ParseJson(text, path + " header"));
  if (!header.is_object()) {
    return InvalidArgument("{}: header is a JSON {}, expected an object", path, header.type_name());
  }
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return InvalidArgument("{}: __metadata__ is not an object", path);
      for (const auto& [k, v] : entry.items()) {
        if (v.is_string()) f->metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    SafetensorsTensor t;
    if (Status s = ParseEntry(name, entry, data_size, &t); !s.ok()) return s.WithContext(path);
    const uint64_t begin = entry["data_offsets"][0].get<uint64_t>();
    t.data = mapped->data() + data_start + begin;
    f->tensors_.emplace(name, std::move(t));
  }
  return f;
}

const SafetensorsTensor* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

StatusOr<kernels::HostTensor> SafetensorsFile::ToF32(const SafetensorsTensor& t) const {
  if (t.shape.size() > static_cast<size_t>(Tensor::kMaxRank)) {
    return Unimplemented("{}: tensor '{}' has rank {} (at most {})", path(), t.name, t.shape.size(),
                         Tensor::kMaxRank);
  }
  kernels::HostTensor out;
  out.shape.rank = static_cast<int>(t.shape.size());
  std::copy(t.shape.begin(), t.shape.end(), out.shape.dims.begin());
  const size_t n = static_cast<size_t>(t.num_elements);
  if (t.dtype == "F32") {
    if (reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0) {
      out.keepalive = file_;  // zero-copy: the mapping outlives every alias of it
      out.data = reinterpret_cast<const float*>(t.data);
      return out;
    }
    // A header length that is not a multiple of 4 misaligns the data section.
    std::shared_ptr<float[]> buf = AllocateHostFloats(n);
    std::memcpy(buf.get(), t.data, n * sizeof(float));
    out.data = buf.get();
    out.keepalive = std::move(buf);
    return out;
  }
  if (t.dtype == "F16" || t.dtype == "BF16") {
    std::shared_ptr<float[]> buf = AllocateHostFloats(n);
    const bool bf16 = t.dtype == "BF16";
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, t.data + 2 * i, 2);
      buf[i] = bf16 ? BF16ToF32(h) : F16ToF32(h);
    }
    out.data = buf.get();
    out.keepalive = std::move(buf);
    return out;
  }
  return Unimplemented(
      "{}: tensor '{}' has dtype {}, which is not supported (supported: F32, "
      "F16, BF16)",
      path(), t.name, t.dtype);
}

StatusOr<std::unique_ptr<SafetensorsModel>> SafetensorsModel::OpenDirectory(
    const std::string& dir) {
  auto model = std::make_unique<SafetensorsModel>();
  std::error_code ec;
  const fs::path root(dir);
  const fs::path index_path = root / "model.safetensors.index.json";
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;  // tensor -> shard file name
  if (fs::exists(index_path, ec)) {
    HW_ASSIGN_OR_RETURN(json index, ReadJsonFile(index_path.string(), "safetensors index"));
    const auto wm = index.is_object() ? index.find("weight_map") : index.end();
    if (!index.is_object() || wm == index.end() || !wm->is_object()) {
      return InvalidArgument("{}: no 'weight_map' object", index_path.string());
    }
    std::set<std::string> shards;
    for (const auto& [tensor, shard] : wm->items()) {
      if (!shard.is_string()) {
        return InvalidArgument("{}: weight_map entry '{}' is not a file name", index_path.string(),
                               tensor);
      }
      const std::string file = shard.get<std::string>();
      // Shards live in the model directory; a path that leaves it is refused.
      const fs::path rel(file);
      if (file.empty() || rel.is_absolute() ||
          std::any_of(rel.begin(), rel.end(), [](const fs::path& p) { return p == ".."; })) {
        return InvalidArgument(
            "{}: weight_map entry '{}' names shard '{}' outside the model "
            "directory",
            index_path.string(), tensor, file);
      }
      weight_map[tensor] = file;
      shards.insert(file);
    }
    shard_names.assign(shards.begin(), shards.end());
  } else if (fs::exists(root / "model.safetensors", ec)) {
    shard_names.push_back("model.safetensors");
  } else {
    for (const auto& e : fs::directory_iterator(root, ec)) {
      if (e.path().extension() == ".safetensors") shard_names.push_back(e.path().filename());
    }
    std::sort(shard_names.begin(), shard_names.end());
  }
  if (shard_names.empty()) {
    return NotFound("{}: no model.safetensors, model.safetensors.index.json or *.safetensors", dir);
  }
  for (const std::string& shard : shard_names) {
    HW_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f,
                        SafetensorsFile::Open((root / shard).string()));
    for (const auto& [name, t] : f->tensors()) {
      auto [it, inserted] = model->index_.emplace(name, std::make_pair(&t, f.get()));
      if (!inserted) {
        return InvalidArgument("{}: tensor '{}' appears in both {} and {}", dir, name,
                               it->second.second->path(), f->path());
      }
    }
    model->files_.push_back(std::move(f));
  }
  for (const auto& [tensor, shard] : weight_map) {
    auto it = model->index_.find(tensor);
    if (it == model->index_.end()) {
      return InvalidArgument("{}: weight_map puts tensor '{}' in {}, which does not contain it",
                             index_path.string(), tensor, shard);
    }
  }
  return model;
}

std::pair<const SafetensorsTensor*, const SafetensorsFile*> SafetensorsModel::Find(
    const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return {nullptr, nullptr};
  return it->second;
}

}  // namespace headwise::models
