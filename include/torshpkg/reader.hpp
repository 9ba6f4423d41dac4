// File reads through the cache: maps (inode, offset, length) to chunk slices.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "torshpkg/cache.hpp"
#include "torshpkg/package.hpp"

namespace torshpkg {

struct ChunkSlice {
  ChunkPtr chunk;  // keeps the bytes alive
  std::uint32_t offset = 0;
  std::uint32_t length = 0;
};

class Reader {
 public:
  Reader(std::shared_ptr<const Package> pkg, std::uint64_t cache_bytes);
  [[nodiscard]] const Package &package() const noexcept { return *pkg_; }
  [[nodiscard]] ChunkCache &cache() noexcept { return cache_; }

  // Slices covering [offset, offset+length) of a regular file, clipped at its end.
  // Throws IntegrityError naming the file when a chunk fails its digest.
  [[nodiscard]] std::vector<ChunkSlice> slices(std::uint32_t ino, std::uint64_t offset, std::uint64_t length);
  // Copies into `out`; returns bytes copied (short only at end of file).
  std::size_t read(std::uint32_t ino, std::uint64_t offset, std::span<std::uint8_t> out);
  // The decoded chunk `index` of the package (verified), through the cache.
  [[nodiscard]] ChunkPtr chunk(std::uint64_t index, std::uint32_t ino_for_errors);

 private:
  std::shared_ptr<const Package> pkg_;
  ChunkCache cache_;
};

}  // namespace torshpkg
