// Where a package's bytes come from. A ChunkSource reads exactly N bytes at an offset; the package
// above it neither knows nor cares whether they come from a file, memory, a zip entry or (later) a
// remote server. Every implementation is safe to call from many threads at once.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "torshpkg/file.hpp"

namespace torshpkg {

class ChunkSource {
 public:
  virtual ~ChunkSource() = default;
  // Fills `out` with the bytes at [offset, offset + out.size()). Throws IoError when the backend
  // fails, FormatError when the range runs past the end (the package lied about its layout).
  virtual void read(std::uint64_t offset, std::span<std::uint8_t> out) const = 0;
  [[nodiscard]] virtual std::uint64_t size() const noexcept = 0;
  // For messages: a path, or a URL without credentials.
  [[nodiscard]] virtual const std::string &name() const noexcept = 0;
  // Modification time of the whole (seconds since the epoch; 0 when unknown): the mtime of
  // directories that a synthesised tree implies.
  [[nodiscard]] virtual std::int64_t mtime() const noexcept { return 0; }

  // The rest matters to remote sources only.
  // True when reads cost a network round trip: worth keeping in the disk chunk cache (chunk_store.hpp).
  [[nodiscard]] virtual bool remote() const noexcept { return false; }
  // Reads of neighbouring ranges up to this many bytes are worth making one read (0: never).
  [[nodiscard]] virtual std::size_t coalesce_bytes() const noexcept { return 0; }
  // The bytes a recent read returned for [offset, offset + length) failed their digest: whoever
  // served them is not asked again. True when another origin may serve other bytes (retry the read).
  virtual bool distrust(std::uint64_t offset, std::size_t length, const std::string &why) const {
    (void)offset, (void)length, (void)why;
    return false;
  }
  // Members of a JSON object (no braces) with the source's counters, for .torshpkg/stats; "" if none.
  [[nodiscard]] virtual std::string stats_json() const { return {}; }
};

// A regular file read with pread (throws UsageError for a directory or a device).
class FileSource final : public ChunkSource {
 public:
  explicit FileSource(const std::string &path);
  void read(std::uint64_t offset, std::span<std::uint8_t> out) const override;
  [[nodiscard]] std::uint64_t size() const noexcept override { return size_; }
  [[nodiscard]] const std::string &name() const noexcept override { return path_; }
  [[nodiscard]] std::int64_t mtime() const noexcept override { return mtime_; }

 private:
  std::string path_;
  UniqueFd fd_;
  std::uint64_t size_ = 0;
  std::int64_t mtime_ = 0;
};

// Bytes held in memory (tests, fuzzing, small synthesised packages).
class MemorySource final : public ChunkSource {
 public:
  MemorySource(std::vector<std::uint8_t> bytes, std::string name) : bytes_(std::move(bytes)), name_(std::move(name)) {}
  void read(std::uint64_t offset, std::span<std::uint8_t> out) const override;
  [[nodiscard]] std::uint64_t size() const noexcept override { return bytes_.size(); }
  [[nodiscard]] const std::string &name() const noexcept override { return name_; }

 private:
  std::vector<std::uint8_t> bytes_;
  std::string name_;
};

}  // namespace torshpkg
