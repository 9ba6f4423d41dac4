// Shared helpers of the unit tests: temporary trees, deterministic data, crash isolation.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "torshpkg/writer.hpp"

namespace th {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

// Directory under which tests create their temporary trees: $TORSHPKG_TEST_TMP, else /var/tmp.
fs::path tmp_root();

// A fresh directory (mkdtemp) removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;
  [[nodiscard]] const fs::path &path() const noexcept { return path_; }
  [[nodiscard]] fs::path operator/(const fs::path &rel) const { return path_ / rel; }

 private:
  fs::path path_;
};

Bytes bytes_of(std::string_view s);
std::string string_of(std::span<const std::uint8_t> b);
// Incompressible (pseudo-random) bytes, deterministic for a seed.
Bytes random_bytes(std::size_t n, std::uint64_t seed);
// Compressible text-like bytes, deterministic for a seed.
Bytes text_bytes(std::size_t n, std::uint64_t seed);

void write_file(const fs::path &p, std::span<const std::uint8_t> data);
void write_file(const fs::path &p, std::string_view data);
Bytes read_file(const fs::path &p);
// Sets mtime (and atime) with nanoseconds; does not follow a final symlink.
void set_mtime(const fs::path &p, std::int64_t sec, std::uint32_t nsec);

// Outcome of running a function in a forked child, so that a crash (signal, sanitizer abort)
// is reported as a test failure instead of killing the whole test binary.
enum class Outcome { kOk, kFormatError, kIntegrityError, kOtherTorshpkgError, kOtherException, kCrash };
const char *outcome_name(Outcome o) noexcept;
Outcome isolated(const std::function<void()> &fn);

bool contains(std::string_view haystack, std::string_view needle);

// Pack options the unit tests share: name "pkg", 64 KiB chunks, 2 threads.
torshpkg::PackOptions pack_options(const fs::path &src, const fs::path &out);

}  // namespace th
