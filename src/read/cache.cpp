#include "torshpkg/cache.hpp"

#include <algorithm>

#include "torshpkg/errors.hpp"

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

namespace {
// What waiters on an abandoned claim see: they then load the key themselves.
struct Abandoned {};
}  // namespace

ChunkCache::Shard &ChunkCache::shard_of(std::uint64_t key) const noexcept {
  return *shards_[mix(key) % shards_.size()];
}

bool ChunkCache::contains(std::uint64_t key) const {
  const Shard &s = shard_of(key);
  std::lock_guard lock(s.mu);
  return s.map.count(key) != 0;
}

ChunkPtr ChunkCache::get(std::uint64_t key, const Loader &load, bool *loaded) {
  if (loaded) *loaded = false;
  Shard &s = shard_of(key);
  std::promise<ChunkPtr> promise;
  for (;;) {
    std::unique_lock lock(s.mu);
    if (auto it = s.map.find(key); it != s.map.end()) {
      ++s.hits;
      s.lru.splice(s.lru.begin(), s.lru, it->second.lru);
      auto fut = it->second.value;
      lock.unlock();
      try {
        return fut.get();  // waits when another thread is still loading it
      } catch (const Abandoned &) {
        continue;  // its claimant gave up: load it here (the entry is gone)
      }
    }
    ++s.misses;
    s.lru.push_front(key);
    s.map.emplace(key, Entry{promise.get_future().share(), s.lru.begin(), 0, nullptr});
    break;
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
  settle_locked(s, key, value->size());
  return value;
}

void ChunkCache::settle_locked(Shard &s, std::uint64_t key, std::uint64_t bytes) {
  if (auto it = s.map.find(key); it != s.map.end()) {
    it->second.bytes = bytes;
    it->second.claimed.reset();
    s.bytes += bytes;
    evict_locked(s);
  }
}

bool ChunkCache::claim(std::uint64_t key) {
  Shard &s = shard_of(key);
  auto promise = std::make_shared<std::promise<ChunkPtr>>();
  std::lock_guard lock(s.mu);
  if (s.map.count(key)) return false;
  ++s.misses;
  s.lru.push_front(key);
  s.map.emplace(key, Entry{promise->get_future().share(), s.lru.begin(), 0, promise});
  return true;
}

void ChunkCache::fulfil(std::uint64_t key, ChunkPtr value) {
  Shard &s = shard_of(key);
  std::shared_ptr<std::promise<ChunkPtr>> promise;
  {
    std::lock_guard lock(s.mu);
    auto it = s.map.find(key);
    if (it == s.map.end() || !it->second.claimed) throw InternalError("ChunkCache::fulfil of a key not claimed");
    promise = it->second.claimed;
    settle_locked(s, key, value->size());
  }
  promise->set_value(std::move(value));
}

void ChunkCache::abandon(std::uint64_t key) noexcept {
  Shard &s = shard_of(key);
  std::shared_ptr<std::promise<ChunkPtr>> promise;
  {
    std::lock_guard lock(s.mu);
    auto it = s.map.find(key);
    if (it == s.map.end() || !it->second.claimed) return;
    promise = std::move(it->second.claimed);
    s.lru.erase(it->second.lru);
    s.map.erase(it);  // before waking the waiters: they load it themselves
  }
  promise->set_exception(std::make_exception_ptr(Abandoned{}));
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
