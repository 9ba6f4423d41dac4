#include "torshpkg/file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <fmt/format.h>

#include "torshpkg/errors.hpp"

namespace torshpkg {

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

UniqueFd open_read(const std::string &path, int extra_flags) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | extra_flags);
  if (fd < 0) throw_errno("open", path);
  return UniqueFd(fd);
}

void pread_exact(int fd, std::span<std::uint8_t> buf, std::uint64_t offset, const std::string &what) {
  std::size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::pread(fd, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("read", what);
    }
    if (n == 0) throw FormatError(fmt::format("{}: unexpected end of file at offset {}", what, offset + done));
    done += static_cast<std::size_t>(n);
  }
}

std::size_t read_full(int fd, std::span<std::uint8_t> buf, const std::string &what) {
  std::size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::read(fd, buf.data() + done, buf.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("read", what);
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

void write_all(int fd, std::span<const std::uint8_t> buf, const std::string &what) {
  std::size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::write(fd, buf.data() + done, buf.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("write", what);
    }
    done += static_cast<std::size_t>(n);
  }
}

}  // namespace torshpkg
