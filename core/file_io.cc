#include "core/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace headwise {
namespace {

const char* FileTypeName(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

const char* Article(std::string_view what) {
  return !what.empty() && std::string_view("aeiouAEIOU").find(what[0]) != std::string_view::npos
             ? "an"
             : "a";
}

}  // namespace

StatusOr<int> OpenRegularFile(const std::string& path, size_t* size) {
  // O_NONBLOCK: open() of a FIFO would otherwise wait for a writer forever. It has no effect on
  // reads of regular files, the only ones we go on with.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return NotFound("{}: no such file", path);
    return InvalidArgument("{}: cannot open: {}", path, std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return InvalidArgument("{}: cannot stat: {}", path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument("{}: is {}, not a regular file", path, FileTypeName(st.st_mode));
  }
  *size = static_cast<size_t>(st.st_size);
  return fd;
}

StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes,
                                    std::string_view what) {
  size_t size = 0;
  HW_ASSIGN_OR_RETURN(const int fd, OpenRegularFile(path, &size));
  if (size > max_bytes) {
    ::close(fd);
    return InvalidArgument("{}: {} bytes is over the limit of {} for {} {}", path, size, max_bytes,
                           Article(what), what);
  }
  // Read to the end rather than `size` bytes: the file may change under us, and procfs-style
  // files report size 0. One byte past the cap is enough to know it is too big.
  std::string out;
  out.resize(size + 1 <= max_bytes ? size + 1 : max_bytes + 1);
  size_t got = 0;
  while (true) {
    if (got == out.size()) {
      if (out.size() > max_bytes) break;
      out.resize(std::min(out.size() * 2, max_bytes + 1));
    }
    const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return InvalidArgument("{}: read failed: {}", path, std::strerror(err));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (got > max_bytes) {
    return InvalidArgument("{}: grew past {} bytes while read, the limit for {} {}", path,
                           max_bytes, Article(what), what);
  }
  out.resize(got);
  return out;
}

}  // namespace headwise
