// safetensors files (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__":
// {...}}, then the data section the offsets index. Files are memory-mapped; every header entry
// is checked against the file size before anything points into it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/status.h"
#include "kernels/backend.h"

namespace headwise::models {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;  // as written: "F32", "BF16", "I8", ...
  std::vector<int64_t> shape;
  int64_t num_elements = 0;
  const uint8_t* data = nullptr;  // into the mapping
  uint64_t num_bytes = 0;
};

class SafetensorsFile {
 public:
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::shared_ptr<MappedFile>& file() const { return file_; }
  const std::map<std::string, SafetensorsTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // nullptr when absent.
  const SafetensorsTensor* Find(const std::string& name) const;

  // The tensor as f32: F32 aliases the mapping (keepalive = the mapping) when aligned, F16 and
  // BF16 are converted into a new buffer. Unimplemented, naming the dtype, for anything else.
  StatusOr<kernels::HostTensor> ToF32(const SafetensorsTensor& tensor) const;

 private:
  SafetensorsFile() = default;
  std::shared_ptr<MappedFile> file_;
  std::map<std::string, SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Whether ToF32 handles this safetensors dtype.
bool IsSupportedSafetensorsDtype(const std::string& dtype);

// The tensors of a Hugging Face model directory: the shards named by
// model.safetensors.index.json's weight_map, else model.safetensors, else every *.safetensors
// file of the directory. A name found in two files, or an index entry whose shard lacks it, is
// an error.
class SafetensorsModel {
 public:
  static StatusOr<std::unique_ptr<SafetensorsModel>> OpenDirectory(const std::string& dir);

  // The tensor and the file holding it, or {nullptr, nullptr} when absent.
  std::pair<const SafetensorsTensor*, const SafetensorsFile*> Find(const std::string& name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  size_t num_tensors() const { return index_.size(); }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<const SafetensorsTensor*, const SafetensorsFile*>> index_;
};

}  // namespace headwise::models
