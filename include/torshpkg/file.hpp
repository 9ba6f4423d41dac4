// RAII file descriptor and positional I/O that retries short reads and EINTR.
#pragma once
#include <cstdint>
#include <span>
#include <string>

namespace torshpkg {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd &&o) noexcept : fd_(o.release()) {}
  UniqueFd &operator=(UniqueFd &&o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd &) = delete;
  UniqueFd &operator=(const UniqueFd &) = delete;
  ~UniqueFd() { reset(); }

  [[nodiscard]] int get() const noexcept { return fd_; }
  [[nodiscard]] explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

// Opens read-only (O_CLOEXEC); throws IoError naming the path.
[[nodiscard]] UniqueFd open_read(const std::string &path, int extra_flags = 0);
// Reads exactly buf.size() bytes at offset; throws IoError, or FormatError on a short file.
void pread_exact(int fd, std::span<std::uint8_t> buf, std::uint64_t offset, const std::string &what);
// Reads up to buf.size() bytes from the current position, stopping early only at end of file.
[[nodiscard]] std::size_t read_full(int fd, std::span<std::uint8_t> buf, const std::string &what);
void write_all(int fd, std::span<const std::uint8_t> buf, const std::string &what);

// Output written under a temporary name beside `final_path` (mode 0644) and renamed into place by
// commit() after an fsync; removed on destruction unless committed. Readers never see a partial file.
class TempOutput {
 public:
  explicit TempOutput(const std::string &final_path);
  ~TempOutput();
  TempOutput(const TempOutput &) = delete;
  TempOutput &operator=(const TempOutput &) = delete;
  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  [[nodiscard]] const std::string &temp_path() const noexcept { return tmp_; }
  void commit();

 private:
  std::string final_, tmp_;
  UniqueFd fd_;
  bool committed_ = false;
};

}  // namespace torshpkg
