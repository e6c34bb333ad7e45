// Builders for the model files the models tests need: safetensors and GGUF written from scratch
// (or from the small shared models), so broken variants can be made byte by byte.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

namespace headwise::models::testing {

inline std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void WriteFileBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A fresh directory under the system temp dir, removed with the object.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("hw_models_test_" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

template <typename T>
void Append(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// safetensors: tensors laid out back to back in insertion order.
class SafetensorsBuilder {
 public:
  void Add(const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
           std::string bytes) {
    header_[name] = {{"dtype", dtype},
                     {"shape", shape},
                     {"data_offsets", {data_.size(), data_.size() + bytes.size()}}};
    data_ += bytes;
  }
  void AddF32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
    Add(name, "F32", std::move(shape),
        std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
  }
  nlohmann::json& header() { return header_; }
  std::string Build() const {
    std::string json = header_.dump();
    std::string out;
    Append<uint64_t>(&out, json.size());
    return out + json + data_;
  }

 private:
  nlohmann::json header_ = nlohmann::json::object();
  std::string data_;
};

// GGUF v3 writer covering the value types the tests use.
class GgufBuilder {
 public:
  void AddString(const std::string& key, const std::string& value) {
    Key(key, 8);
    Str(&kv_, value);
    ++kv_count_;
  }
  void AddU32(const std::string& key, uint32_t value) {
    Key(key, 4);
    Append(&kv_, value);
    ++kv_count_;
  }
  void AddF32(const std::string& key, float value) {
    Key(key, 6);
    Append(&kv_, value);
    ++kv_count_;
  }
  void AddStringArray(const std::string& key, const std::vector<std::string>& values) {
    Key(key, 9);
    Append<uint32_t>(&kv_, 8);
    Append<uint64_t>(&kv_, values.size());
    for (const auto& v : values) Str(&kv_, v);
    ++kv_count_;
  }
  // `dims` in GGUF order (fastest-varying first).
  void AddTensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type,
                 const std::string& bytes) {
    Str(&info_, name);
    Append<uint32_t>(&info_, static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) Append(&info_, d);
    Append(&info_, type);
    Append<uint64_t>(&info_, data_.size());
    data_ += bytes;
    data_.resize((data_.size() + kAlign - 1) / kAlign * kAlign, '\0');
    ++tensor_count_;
  }
  std::string Build(uint32_t version = 3) const {
    std::string out = "GGUF";
    Append(&out, version);
    Append(&out, tensor_count_);
    Append(&out, kv_count_);
    out += kv_;
    out += info_;
    out.resize((out.size() + kAlign - 1) / kAlign * kAlign, '\0');
    return out + data_;
  }
  // Size of everything before the tensor infos, so tests can patch fields at known places.
  size_t HeaderAndKvSize() const { return 24 + kv_.size(); }

 private:
  static constexpr size_t kAlign = 32;
  void Key(const std::string& key, uint32_t type) {
    Str(&kv_, key);
    Append(&kv_, type);
  }
  static void Str(std::string* out, const std::string& s) {
    Append<uint64_t>(out, s.size());
    *out += s;
  }
  std::string kv_, info_, data_;
  uint64_t kv_count_ = 0, tensor_count_ = 0;
};

inline std::string FloatBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

}  // namespace headwise::models::testing
