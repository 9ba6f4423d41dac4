// File reads through the cache: maps (inode, offset, length) to chunk slices, and decodes ahead
// of sequential readers on a small pool of background workers.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_set>
#include <vector>

#include "torshpkg/cache.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/pool.hpp"

namespace torshpkg {

struct ChunkSlice {
  ChunkPtr chunk;  // keeps the bytes alive
  std::uint32_t offset = 0;
  std::uint32_t length = 0;
  std::uint64_t file_chunk = 0;  // index of the chunk within the file
  bool decoded_now = false;      // this call decoded it (it was neither cached nor in flight)
};

// Recycles decoded-chunk buffers: a fresh 1 MiB buffer costs 256 page faults and zeroing (a third
// of the daemon's system time on a cold 1 GiB read); a recycled one costs nothing.
class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  explicit BufferPool(std::size_t max_free) : max_free_(max_free) {}
  // A buffer of `size` bytes (contents undefined) that returns here when its last user drops it.
  [[nodiscard]] std::shared_ptr<ChunkBuffer> take(std::size_t size);

 private:
  void give_back(ChunkBuffer *b) noexcept;
  std::mutex mu_;
  std::vector<std::unique_ptr<ChunkBuffer>> free_;
  std::size_t max_free_;
};

class Reader {
 public:
  Reader(std::shared_ptr<const Package> pkg, std::uint64_t cache_bytes);
  ~Reader();
  [[nodiscard]] const Package &package() const noexcept { return *pkg_; }
  [[nodiscard]] ChunkCache &cache() noexcept { return cache_; }
  [[nodiscard]] const ChunkCache &cache() const noexcept { return cache_; }

  // Slices covering [offset, offset+length) of a regular file, clipped at its end.
  // Throws IntegrityError naming the file when a chunk fails its digest.
  [[nodiscard]] std::vector<ChunkSlice> slices(std::uint32_t ino, std::uint64_t offset, std::uint64_t length);
  // Copies into `out`; returns bytes copied (short only at end of file).
  std::size_t read(std::uint32_t ino, std::uint64_t offset, std::span<std::uint8_t> out);
  // The decoded chunk `index` of the package (verified), through the cache.
  [[nodiscard]] ChunkPtr chunk(std::uint64_t index, std::uint32_t ino_for_errors, bool *decoded_now = nullptr);
  [[nodiscard]] std::uint64_t chunks_in_file(std::uint32_t ino) const { return pkg_->chunks_in_file(ino); }

  // Background decoding. Start after fork(): threads do not survive it.
  void start_workers(unsigned threads);
  void stop_workers() noexcept;  // finishes queued work and joins
  // Queues chunks [first, first+count) of a file for background decoding; skips chunks that are
  // cached, in flight or past the end, and drops work when the queue is full (prefetch is a hint).
  void prefetch(std::uint32_t ino, std::uint64_t first, std::uint64_t count);
  // Runs `job` on a background worker (or inline when there are none).
  void run_in_background(std::function<void()> job);
  // Background decode of chunk `k` of a file, in the calling thread, unless it is cached or in
  // flight. Returns the chunk when this call decoded it, else null. Silent on damage: a reader that
  // asks gets the error.
  ChunkPtr decode_ahead(std::uint32_t ino, std::uint64_t k);
  // Background decode of package chunks [first, first + count), an adjacent_run(), with one source
  // read, into the cache. Silent on damage, like decode_ahead().
  void decode_adjacent(std::uint64_t first, std::uint64_t count) noexcept;

 private:
  std::shared_ptr<const Package> pkg_;
  ChunkCache cache_;
  std::shared_ptr<BufferPool> pool_;
  std::mutex queued_mu_;
  std::unordered_set<std::uint64_t> queued_;  // package chunk indices waiting for a worker
  std::unique_ptr<ThreadPool> workers_;       // last: joined first on destruction
};

}  // namespace torshpkg
