#include "torshpkg/chunk_source.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <fmt/format.h>
#include <algorithm>

#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg {

namespace {
void check_range(std::uint64_t offset, std::size_t length, std::uint64_t size, const std::string &name) {
  if (!range_within(offset, length, size))
    throw FormatError(fmt::format("{}: read of {} bytes at offset {} runs past the end ({} bytes)", name, length,
                                  offset, size));
}
}  // namespace

// O_NONBLOCK: opening a FIFO must not wait for a writer; the type check below refuses it, and
// reads of regular files ignore the flag.
FileSource::FileSource(const std::string &path) : path_(path), fd_(open_read(path, O_NONBLOCK)) {
  struct stat st {};
  if (::fstat(fd_.get(), &st) != 0) throw_errno("stat", path);
  if (!S_ISREG(st.st_mode)) throw UsageError(path + " is not a regular file");
  size_ = static_cast<std::uint64_t>(st.st_size);
  mtime_ = st.st_mtim.tv_sec;
}

void FileSource::read(std::uint64_t offset, std::span<std::uint8_t> out) const {
  check_range(offset, out.size(), size_, path_);
  pread_exact(fd_.get(), out, offset, path_);
}

void MemorySource::read(std::uint64_t offset, std::span<std::uint8_t> out) const {
  check_range(offset, out.size(), bytes_.size(), name_);
  std::copy_n(bytes_.begin() + static_cast<std::ptrdiff_t>(offset), out.size(), out.begin());
}

}  // namespace torshpkg
