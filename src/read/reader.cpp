#include "torshpkg/reader.hpp"

#include <fmt/format.h>
#include <algorithm>
#include <cstring>

#include "torshpkg/errors.hpp"

namespace torshpkg {

namespace {
constexpr std::size_t kMaxQueued = 64;  // bounds memory held by queued prefetches
}

namespace {
// A quarter of the chunks the budget holds, at most 16.
std::uint64_t quarter_of_chunks(std::uint64_t budget, std::uint32_t chunk_size) {
  return std::min<std::uint64_t>(budget / (4ull * chunk_size), 16);
}
// Enough shards to spread lock contention, few enough that each holds several chunks: the budget is
// split evenly and a shard smaller than a chunk would cache nothing.
unsigned shards_for(std::uint64_t budget, std::uint32_t chunk_size) {
  return static_cast<unsigned>(std::max<std::uint64_t>(quarter_of_chunks(budget, chunk_size), 1));
}
// Spare buffers kept for reuse: as many as shards (at least 2), so that the pool never costs more
// memory than a quarter of the cache (a 16 MiB cache keeps 4 spare 1 MiB buffers, not 16).
std::size_t spare_buffers_for(std::uint64_t budget, std::uint32_t chunk_size) {
  return static_cast<std::size_t>(std::max<std::uint64_t>(quarter_of_chunks(budget, chunk_size), 2));
}
}  // namespace

std::shared_ptr<ChunkBuffer> BufferPool::take(std::size_t size) {
  std::unique_ptr<ChunkBuffer> b;
  {
    std::lock_guard lock(mu_);
    if (!free_.empty()) {
      b = std::move(free_.back());
      free_.pop_back();
    }
  }
  if (!b) b = std::make_unique<ChunkBuffer>();
  b->resize(size);  // keeps capacity: no page faults when sizes repeat
  // The deleter holds the pool alive, so buffers may outlive the Reader that made them.
  return std::shared_ptr<ChunkBuffer>(b.release(), [pool = shared_from_this()](ChunkBuffer *p) { pool->give_back(p); });
}

void BufferPool::give_back(ChunkBuffer *b) noexcept {
  std::unique_ptr<ChunkBuffer> owned(b);
  std::lock_guard lock(mu_);
  if (free_.size() < max_free_) free_.push_back(std::move(owned));
}

Reader::Reader(std::shared_ptr<const Package> pkg, std::uint64_t cache_bytes)
    : pkg_(std::move(pkg)),
      cache_(cache_bytes, shards_for(cache_bytes, pkg_->chunk_size())),
      pool_(std::make_shared<BufferPool>(spare_buffers_for(cache_bytes, pkg_->chunk_size()))) {}

Reader::~Reader() {
  stop_workers();
}

void Reader::stop_workers() noexcept {
  workers_.reset();
}

ChunkPtr Reader::chunk(std::uint64_t index, std::uint32_t ino_for_errors, bool *decoded_now) {
  // Deduplicated chunks share one cache entry.
  return cache_.get(
      pkg_->cache_key(index),
      [&]() -> ChunkPtr {
        auto buf = pool_->take(pkg_->chunk(index).decoded_size);
        try {
          pkg_->load_chunk(index, *buf);
        } catch (const IntegrityError &e) {
          throw IntegrityError(fmt::format("{}: {}: {}", pkg_->path(), pkg_->path_of(ino_for_errors), e.what()));
        }
        return buf;
      },
      decoded_now);
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
    bool decoded = false;
    auto buf = chunk(e.first + k, ino, &decoded);
    if (in_chunk >= buf->size())  // cannot happen in a validated package; never read past a buffer
      throw FormatError(
          fmt::format("{}: {}: chunk {} shorter than its file says", pkg_->path(), pkg_->path_of(ino), k));
    const auto n = static_cast<std::uint32_t>(std::min<std::uint64_t>(length, buf->size() - in_chunk));
    out.push_back({std::move(buf), in_chunk, n, k, decoded});
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

void Reader::start_workers(unsigned threads) {
  workers_ = std::make_unique<ThreadPool>(threads);
}

void Reader::run_in_background(std::function<void()> job) {
  if (!workers_) {
    job();
    return;
  }
  (void)workers_->submit(std::move(job));
}

ChunkPtr Reader::decode_ahead(std::uint32_t ino, std::uint64_t k) {
  if (k >= pkg_->chunks_in_file(ino)) return nullptr;
  const std::uint64_t index = pkg_->inode(ino).first + k;
  if (cache_.contains(pkg_->cache_key(index))) return nullptr;
  bool decoded = false;
  try {
    auto c = chunk(index, ino, &decoded);
    return decoded ? c : nullptr;
  } catch (const std::exception &) {
    return nullptr;
  }
}

void Reader::prefetch(std::uint32_t ino, std::uint64_t first, std::uint64_t count) {
  if (!workers_) return;
  const std::uint64_t end = std::min(first + count, pkg_->chunks_in_file(ino));
  const auto base = pkg_->inode(ino).first;
  // A remote source: runs of neighbouring chunks become one request each, run in parallel.
  const std::uint64_t coalesce = pkg_->source().coalesce_bytes();
  for (std::uint64_t k = first; k < end;) {
    const std::uint64_t index = base + k;
    if (cache_.contains(pkg_->cache_key(index))) {
      ++k;
      continue;
    }
    // A run may reach past the window asked for, to the end of the file: the window moves a chunk
    // at a time, and requests of coalesce_bytes() each are what a remote source wants.
    std::uint64_t run = coalesce ? pkg_->adjacent_run(index, pkg_->chunks_in_file(ino) - k, coalesce) : 1;
    for (std::uint64_t j = 1; j < run; ++j)  // stop before a chunk that needs no fetching
      if (cache_.contains(pkg_->cache_key(index + j)) || pkg_->cache_key(index + j) != index + j) {
        run = j;
        break;
      }
    {
      std::lock_guard lock(queued_mu_);
      if (queued_.size() >= kMaxQueued) return;
      if (!queued_.insert(index).second) {
        ++k;
        continue;
      }
    }
    (void)workers_->submit([this, ino, k, index, run] {
      if (run > 1)
        decode_adjacent(index, run);
      else
        (void)decode_ahead(ino, k);
      std::lock_guard lock(queued_mu_);
      queued_.erase(index);
    });
    k += run;
  }
}

void Reader::decode_adjacent(std::uint64_t first, std::uint64_t count) noexcept {
  // Claimed chunks make readers of them wait for this one load instead of fetching them again;
  // chunks someone else is loading (or has) split the run.
  std::uint64_t i = 0;
  while (i < count) {
    std::uint64_t run = 0;
    while (i + run < count && cache_.claim(pkg_->cache_key(first + i + run))) ++run;
    if (run == 0) {
      ++i;
      continue;
    }
    const std::uint64_t start = first + i;
    try {
      std::vector<std::shared_ptr<ChunkBuffer>> bufs;
      std::vector<std::span<std::uint8_t>> outs;
      for (std::uint64_t j = start; j < start + run; ++j) {
        bufs.push_back(pool_->take(pkg_->chunk(j).decoded_size));
        outs.emplace_back(*bufs.back());
      }
      pkg_->load_adjacent(start, outs);
      for (std::uint64_t j = 0; j < run; ++j) cache_.fulfil(pkg_->cache_key(start + j), std::move(bufs[j]));
    } catch (const std::exception &) {
      // Decode-ahead is silent: readers waiting on these chunks load them themselves, and get the error.
      for (std::uint64_t j = 0; j < run; ++j) cache_.abandon(pkg_->cache_key(start + j));
    }
    i += run;
  }
}

}  // namespace torshpkg
