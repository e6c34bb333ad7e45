// ReadSmallFile and MappedFile::Open: only regular files, read with a size cap, and every
// other kind of path (device, FIFO, directory) refused by name without blocking or reading.
#include "core/file_io.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <string>

#include "core/mapped_file.h"

namespace headwise {
namespace {

std::string TempPath(const std::string& name) {
  return std::string(HEADWISE_BINARY_DIR) + "/core_file_test_" + std::to_string(::getpid()) + "_" +
         name;
}

// A FIFO with no writer: opening it for reading blocks forever unless done without blocking.
struct Fifo {
  Fifo() : path(TempPath("fifo")) {
    std::remove(path.c_str());
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  }
  ~Fifo() { std::remove(path.c_str()); }
  std::string path;
};

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST_CASE("ReadSmallFile: reads a regular file under the cap", "[core][file]") {
  const std::string path = TempPath("ok.txt");
  std::ofstream(path, std::ios::binary) << std::string("line 1\nline 2\0x", 15);
  auto text = ReadSmallFile(path, 15, "test file");
  auto empty_cap = ReadSmallFile(path, 14, "test file");
  std::remove(path.c_str());
  REQUIRE(text.ok());
  CHECK(*text == std::string("line 1\nline 2\0x", 15));
  REQUIRE_FALSE(empty_cap.ok());
  CHECK(empty_cap.status().code() == StatusCode::kInvalidArgument);
  CHECK(empty_cap.status().message() ==
        path + ": 15 bytes is over the limit of 14 for a test file");

  const std::string zero = TempPath("empty.txt");
  std::ofstream(zero).flush();
  auto e = ReadSmallFile(zero, 0, "test file");
  std::remove(zero.c_str());
  REQUIRE(e.ok());
  CHECK(e->empty());
  CHECK(ReadSmallFile("/nonexistent/x", 10, "test file").status().code() == StatusCode::kNotFound);
}

TEST_CASE("ReadSmallFile: devices, FIFOs and directories are refused at once", "[core][file]") {
  Fifo fifo;
  struct Case {
    std::string path;
    const char* kind;
  };
  for (const Case& c :
       {Case{"/dev/zero", "is a character device"}, Case{"/dev/null", "is a character device"},
        Case{fifo.path, "is a FIFO"}, Case{"/tmp", "is a directory"}}) {
    INFO(c.path);
    const auto t0 = std::chrono::steady_clock::now();
    auto text = ReadSmallFile(c.path, size_t{1} << 30, "attention policy");
    CHECK(SecondsSince(t0) < 1.0);
    REQUIRE_FALSE(text.ok());
    CHECK(text.status().code() == StatusCode::kInvalidArgument);
    CHECK(text.status().message() == c.path + ": " + c.kind + ", not a regular file");
  }
}

TEST_CASE("MappedFile::Open: only regular files, FIFOs without blocking", "[core][file]") {
  Fifo fifo;
  for (const std::string& path : {std::string("/dev/zero"), fifo.path, std::string("/tmp")}) {
    INFO(path);
    const auto t0 = std::chrono::steady_clock::now();
    auto f = MappedFile::Open(path);
    CHECK(SecondsSince(t0) < 1.0);
    REQUIRE_FALSE(f.ok());
    CHECK_THAT(f.status().message(),
               Catch::Contains(path) && Catch::Contains("not a regular file"));
  }
}

}  // namespace
}  // namespace headwise
