#include "core/mapped_file.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/file_io.h"

namespace headwise {

StatusOr<std::shared_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  // Regular files only: mmap of /dev/zero would "succeed" with size 0, and a FIFO would block.
  size_t size = 0;
  HW_ASSIGN_OR_RETURN(const int fd, OpenRegularFile(path, &size));
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      return InvalidArgument("{}: mmap failed: {}", path, std::strerror(errno));
    }
    data = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return std::shared_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace headwise
