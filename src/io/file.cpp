#include "torshpkg/file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <vector>
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


TempOutput::TempOutput(const std::string &final_path) : final_(final_path) {
  std::string templ = final_path + ".tmp.XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  const int fd = ::mkstemp(buf.data());
  if (fd < 0) throw_errno("create", templ);
  fd_.reset(fd);
  tmp_ = buf.data();
  ::fchmod(fd, 0644);
}

TempOutput::~TempOutput() {
  if (!committed_) ::unlink(tmp_.c_str());
}

void TempOutput::commit() {
  if (::fsync(fd_.get()) != 0) throw_errno("fsync", tmp_);
  fd_.reset();
  if (::rename(tmp_.c_str(), final_.c_str()) != 0) throw_errno("rename to " + final_, tmp_);
  committed_ = true;
  const auto dir = std::filesystem::path(final_).parent_path();
  UniqueFd d(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d) ::fsync(d.get());  // make the rename durable; failure here loses nothing already written
}

}  // namespace torshpkg
