// A shared, persistent, content-addressed store of chunks' stored bytes on disk, keyed by the
// chunk's SHA-256 (the digest the index records for the stored bytes). Two versions of a model, or
// two mounts of one, share every chunk they have in common: mounting v2 after v1 fetches only the
// chunks v1 did not have.
//
// Layout under the directory (default /var/cache/torshpkg):
//   chunks/AB/ABCDEF...   one file per chunk: exactly its stored bytes, named by the 64 hex digits
//                         of its SHA-256, in a folder named by the first two
//   tmp/                  files being written; renamed into chunks/ when complete
//   gc.lock               flock()ed by whoever collects garbage, so that only one daemon does
// Least recently used goes first: a hit sets the file's mtime (at most once a minute per file).
//
// Safe to share between processes: writes are atomic (temp file + rename), readers check the size
// and the caller verifies the bytes against the digest again (a chunk read back is never trusted).
// No method throws for I/O: the cache is an optimisation, and a full, read-only or missing disk
// degrades to no caching (writes pause, then are retried), never to errors.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "torshpkg/digest.hpp"

namespace torshpkg {

inline constexpr const char *kDefaultChunkStoreDir = "/var/cache/torshpkg";
inline constexpr std::uint64_t kDefaultChunkStoreBytes = 16ull << 30;

class ChunkStore {
 public:
  // Makes the directory (0755) and its folders when missing. Never throws for I/O: an unusable
  // directory gives a store that caches nothing (see usable() and warning()).
  ChunkStore(std::string dir, std::uint64_t max_bytes);
  ~ChunkStore();
  ChunkStore(const ChunkStore &) = delete;
  ChunkStore &operator=(const ChunkStore &) = delete;

  [[nodiscard]] const std::string &dir() const noexcept { return dir_; }
  [[nodiscard]] std::uint64_t max_bytes() const noexcept { return max_bytes_; }
  // False when the directory could not be made or opened; warning() then says why, in one line.
  [[nodiscard]] bool usable() const noexcept { return usable_; }
  [[nodiscard]] std::string warning() const;

  // Fills `out` with the bytes stored under `digest`: true on a hit. A file of another size than
  // out.size() is a miss (and is removed). The caller verifies the bytes and calls drop() if wrong.
  bool get(const Digest &digest, std::span<std::uint8_t> out) noexcept;
  // Stores `bytes` (already verified by the caller) under `digest`, atomically; a no-op when it is
  // there already. Collects garbage when the store grows past max_bytes.
  void put(const Digest &digest, std::span<const std::uint8_t> bytes) noexcept;
  // The bytes under `digest` failed their digest on the way back: removes them.
  void drop(const Digest &digest) noexcept;
  [[nodiscard]] bool contains(const Digest &digest) const noexcept;

  // For `torshpkg cache`: every entry, least recently used first. Throws IoError when the
  // directory cannot be read.
  struct Entry {
    Digest digest{};
    std::uint64_t size = 0;
    std::int64_t last_used = 0;  // seconds since the epoch
  };
  [[nodiscard]] std::vector<Entry> list() const;
  struct GcResult {
    std::uint64_t removed_entries = 0, removed_bytes = 0, kept_entries = 0, kept_bytes = 0;
  };
  // Removes least recently used entries until at most `max_bytes` remain, and temp files older than
  // an hour (a writer that died). Waits for another process's collection to finish.
  GcResult gc(std::uint64_t max_bytes);
  GcResult clear();  // removes every entry

  struct Stats {
    std::uint64_t hits = 0, misses = 0, bytes_read = 0, bytes_written = 0, write_failures = 0, dropped = 0;
  };
  [[nodiscard]] Stats stats() const noexcept;

 private:
  [[nodiscard]] std::string path_of(const Digest &digest) const;
  void note_write_failure(int err) noexcept;
  void maybe_collect(std::uint64_t added) noexcept;
  // gc() and clear() with gc.lock held: removes the oldest entries beyond `max_bytes` (every entry
  // when `everything`), then stale temp files (every one when `everything`).
  GcResult collect_locked(std::uint64_t max_bytes, bool everything);

  std::string dir_;
  std::uint64_t max_bytes_;
  bool usable_ = false;
  std::string warning_;
  mutable std::mutex mu_;                    // warning_, the pause, the size estimate
  std::int64_t writes_paused_until_ = 0;     // after ENOSPC, EDQUOT, EROFS, EACCES: seconds (steady)
  std::uint64_t estimated_bytes_ = 0;        // of chunks/, from a scan at the first put, then counted
  bool estimated_ = false;
  std::uint64_t written_since_scan_ = 0;     // other processes write too: rescan after max_bytes / 8
  bool collecting_ = false;                  // a thread of this process is collecting
  std::uint64_t added_while_collecting_ = 0;  // puts its scan may have missed
  std::atomic<std::uint64_t> hits_{0}, misses_{0}, bytes_read_{0}, bytes_written_{0}, write_failures_{0}, dropped_{0};
};

}  // namespace torshpkg
