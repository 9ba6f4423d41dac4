// Decoded-chunk cache: byte budget, LRU eviction, sharded locks, single-flight misses.
// A miss is loaded once by whoever asked first; concurrent askers wait for that load.
// No lock is held while loading.
#pragma once
#include <cstdint>
#include <functional>
#include <future>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace torshpkg {

using ChunkBuffer = std::vector<std::uint8_t>;
using ChunkPtr = std::shared_ptr<const ChunkBuffer>;

class ChunkCache {
 public:
  explicit ChunkCache(std::uint64_t budget_bytes, unsigned shards = 16);
  using Loader = std::function<ChunkPtr()>;
  // Returns the cached buffer for `key`, or runs `load` (once across threads) and caches it.
  // A load that throws is not cached; every waiter sees the exception. When `loaded` is given it
  // tells whether this call ran the loader (so the caller can act once per decode).
  ChunkPtr get(std::uint64_t key, const Loader &load, bool *loaded = nullptr);
  // True when `key` is cached or being loaded.
  [[nodiscard]] bool contains(std::uint64_t key) const;

  // For loads of several keys at once (one request for adjacent chunks): claims `key` when it is
  // neither cached nor loading, so that get() of it waits for the claimant, who must then fulfil()
  // or abandon() it. An abandoned key is loaded by its waiters themselves, as on a plain miss.
  [[nodiscard]] bool claim(std::uint64_t key);
  void fulfil(std::uint64_t key, ChunkPtr value);
  void abandon(std::uint64_t key) noexcept;

  struct Stats {
    std::uint64_t hits = 0, misses = 0, evictions = 0, bytes = 0;
  };
  [[nodiscard]] Stats stats() const;
  [[nodiscard]] std::uint64_t budget() const noexcept { return budget_; }

 private:
  struct Entry {
    std::shared_future<ChunkPtr> value;
    std::list<std::uint64_t>::iterator lru;
    std::uint64_t bytes = 0;                           // 0 while loading
    std::shared_ptr<std::promise<ChunkPtr>> claimed;  // set while claim()ed
  };
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<std::uint64_t, Entry> map;
    std::list<std::uint64_t> lru;  // front: most recent
    std::uint64_t bytes = 0, hits = 0, misses = 0, evictions = 0;
  };
  void evict_locked(Shard &s);
  [[nodiscard]] Shard &shard_of(std::uint64_t key) const noexcept;
  // After a load: the entry's size counts, then the shard is trimmed to its budget.
  void settle_locked(Shard &s, std::uint64_t key, std::uint64_t bytes);

  std::uint64_t budget_;
  std::uint64_t shard_budget_;
  std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace torshpkg
