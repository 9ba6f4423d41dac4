#include "torshpkg/cache.hpp"

#include <algorithm>

namespace torshpkg {

namespace {
std::uint64_t mix(std::uint64_t k) noexcept {  // spread keys (chunk indices) over shards
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  return k;
}
}  // namespace

ChunkCache::ChunkCache(std::uint64_t budget_bytes, unsigned shards)
    : budget_(budget_bytes), shard_budget_(budget_bytes / std::max(1u, shards)) {
  shards_.reserve(std::max(1u, shards));
  for (unsigned i = 0; i < std::max(1u, shards); ++i) shards_.push_back(std::make_unique<Shard>());
}

bool ChunkCache::contains(std::uint64_t key) const {
  const Shard &s = *shards_[mix(key) % shards_.size()];
  std::lock_guard lock(s.mu);
  return s.map.count(key) != 0;
}

ChunkPtr ChunkCache::get(std::uint64_t key, const Loader &load, bool *loaded) {
  if (loaded) *loaded = false;
  Shard &s = *shards_[mix(key) % shards_.size()];
  std::promise<ChunkPtr> promise;
  {
    std::unique_lock lock(s.mu);
    if (auto it = s.map.find(key); it != s.map.end()) {
      ++s.hits;
      s.lru.splice(s.lru.begin(), s.lru, it->second.lru);
      auto fut = it->second.value;
      lock.unlock();
      return fut.get();  // waits when another thread is still loading it
    }
    ++s.misses;
    s.lru.push_front(key);
    s.map.emplace(key, Entry{promise.get_future().share(), s.lru.begin(), 0});
  }
  ChunkPtr value;
  try {
    value = load();
  } catch (...) {
    promise.set_exception(std::current_exception());
    std::lock_guard lock(s.mu);
    if (auto it = s.map.find(key); it != s.map.end()) {
      s.lru.erase(it->second.lru);
      s.map.erase(it);
    }
    throw;
  }
  promise.set_value(value);
  if (loaded) *loaded = true;
  std::lock_guard lock(s.mu);
  if (auto it = s.map.find(key); it != s.map.end()) {
    it->second.bytes = value->size();
    s.bytes += value->size();
    evict_locked(s);
  }
  return value;
}

void ChunkCache::evict_locked(Shard &s) {
  // Walk from the cold end; entries still loading (bytes == 0) are skipped, never evicted.
  auto it = s.lru.end();
  while (s.bytes > shard_budget_ && it != s.lru.begin()) {
    --it;
    auto entry = s.map.find(*it);
    if (entry->second.bytes == 0) continue;
    s.bytes -= entry->second.bytes;
    ++s.evictions;
    s.map.erase(entry);
    it = s.lru.erase(it);
  }
}

ChunkCache::Stats ChunkCache::stats() const {
  Stats t;
  for (const auto &s : shards_) {
    std::lock_guard lock(s->mu);
    t.hits += s->hits;
    t.misses += s->misses;
    t.evictions += s->evictions;
    t.bytes += s->bytes;
  }
  return t;
}

}  // namespace torshpkg
