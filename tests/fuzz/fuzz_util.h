// Helpers shared by the fuzz targets.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace headwise::fuzz {

// The loaders under test take a path (they memory-map or stream the file), so each input is
// written to a file first. One file per process, rewritten for every input, in /dev/shm when
// there is one (no disk traffic at thousands of executions per second), removed at exit. The
// name keeps the extension the loader may look at (".gguf").
class InputFile {
 public:
  explicit InputFile(const std::string& file_name) {
    const char* shm = "/dev/shm";
    const char* tmp = std::getenv("TMPDIR");
    std::filesystem::path base = std::filesystem::is_directory(shm) ? shm : (tmp ? tmp : "/tmp");
    dir_ = base / ("headwise-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / file_name).string();
  }
  ~InputFile() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  const std::string& Write(const uint8_t* data, size_t size) {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    out.close();
    if (!out) std::abort();  // a full /dev/shm is not a finding: stop loudly
    return path_;
  }
  const std::string& path() const { return path_; }
  std::string dir() const { return dir_.string(); }

 private:
  std::filesystem::path dir_;
  std::string path_;
};

inline std::string_view AsText(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// $HEADWISE_SHARED, else ../shared beside the source tree (as tests/test_util.h does).
inline std::string SharedDir() {
  if (const char* env = std::getenv("HEADWISE_SHARED"); env && *env) return env;
  return std::string(HEADWISE_SOURCE_DIR) + "/../shared";
}

}  // namespace headwise::fuzz
