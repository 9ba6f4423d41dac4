#include "torshpkg/reader.hpp"

#include <algorithm>
#include <cstring>
#include <fmt/format.h>

#include "torshpkg/errors.hpp"

namespace torshpkg {

Reader::Reader(std::shared_ptr<const Package> pkg, std::uint64_t cache_bytes)
    : pkg_(std::move(pkg)), cache_(cache_bytes) {}

ChunkPtr Reader::chunk(std::uint64_t index, std::uint32_t ino_for_errors) {
  const auto entry = pkg_->chunk(index);
  // Keyed by where the stored bytes live: deduplicated chunks share one cache entry.
  return cache_.get(entry.offset, [&]() -> ChunkPtr {
    thread_local std::vector<std::uint8_t> scratch;
    auto buf = std::make_shared<ChunkBuffer>(entry.decoded_size);
    try {
      pkg_->load_chunk(index, *buf, scratch);
    } catch (const IntegrityError &e) {
      throw IntegrityError(fmt::format("{}: {}: {}", pkg_->path(), pkg_->path_of(ino_for_errors), e.what()));
    }
    return buf;
  });
}

std::vector<ChunkSlice> Reader::slices(std::uint32_t ino, std::uint64_t offset, std::uint64_t length) {
  const auto e = pkg_->inode(ino);
  std::vector<ChunkSlice> out;
  if (format::node_type(e.mode) != format::NodeType::kRegular) throw UsageError("not a regular file");
  if (offset >= e.size) return out;
  length = std::min(length, e.size - offset);
  const std::uint32_t shift = pkg_->header().chunk_shift;
  const std::uint64_t mask = (std::uint64_t{1} << shift) - 1;
  while (length > 0) {
    const std::uint64_t k = offset >> shift;
    const auto in_chunk = static_cast<std::uint32_t>(offset & mask);
    auto buf = chunk(e.first + k, ino);
    const auto n = static_cast<std::uint32_t>(std::min<std::uint64_t>(length, buf->size() - in_chunk));
    out.push_back({std::move(buf), in_chunk, n});
    offset += n;
    length -= n;
  }
  return out;
}

std::size_t Reader::read(std::uint32_t ino, std::uint64_t offset, std::span<std::uint8_t> out) {
  std::size_t done = 0;
  for (const auto &s : slices(ino, offset, out.size())) {
    std::memcpy(out.data() + done, s.chunk->data() + s.offset, s.length);
    done += s.length;
  }
  return done;
}

}  // namespace torshpkg
