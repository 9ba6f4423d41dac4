// Tells a sequential stream from random access, one instance per open file. FUSE-free so the rules
// can be tested alone; the caller serialises calls.
#pragma once
#include <cstdint>

namespace torshpkg {

class ReadPattern {
 public:
  // What the caller should do after a read of chunks [first, last] of the file.
  struct Plan {
    bool sequential = false;       // the read continued a stream
    std::uint64_t ahead_from = 0;  // chunks to decode ahead: [ahead_from, ahead_from + ahead_count)
    std::uint64_t ahead_count = 0;
    bool turned_random = false;  // true exactly once: the read that made this file random
  };
  // A third jump means random access (an mmap loader, a database): one jump is just a seek.
  static constexpr unsigned kJumpsForRandom = 3;

  // `slack_chunks`: how far behind the stream's furthest chunk a read may land and still belong to
  // it. The kernel's read-ahead requests run on several FUSE threads and arrive out of order, by at
  // most one request per thread, each at most a chunk here.
  ReadPattern(std::uint64_t readahead_chunks, std::uint64_t slack_chunks) noexcept
      : readahead_chunks_(readahead_chunks), slack_chunks_(slack_chunks) {}
  Plan observe(std::uint64_t first, std::uint64_t last) noexcept;

 private:
  static constexpr std::uint64_t kNone = UINT64_MAX;
  std::uint64_t readahead_chunks_;
  std::uint64_t slack_chunks_;
  std::uint64_t furthest_ = kNone;  // furthest chunk the current stream touched
  std::uint64_t ahead_until_ = 0;   // chunks before this were queued for decode-ahead
  unsigned jumps_ = 0;              // reads that were not sequential
};

}  // namespace torshpkg
