// cache.hpp: hits, misses, LRU eviction under a budget, single-flight loading, failed loads.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <latch>
#include <stdexcept>
#include <thread>
#include <vector>

#include "torshpkg/cache.hpp"

using namespace torshpkg;
using namespace std::chrono_literals;

namespace {

ChunkPtr buffer(std::size_t size, std::uint8_t fill) { return std::make_shared<const ChunkBuffer>(size, fill); }

// A loader that counts its calls and returns `size` bytes of `fill`.
struct CountingLoader {
  std::atomic<int> calls{0};
  ChunkCache::Loader make(std::size_t size, std::uint8_t fill) {
    return [this, size, fill] {
      ++calls;
      return buffer(size, fill);
    };
  }
};

}  // namespace

TEST_SUITE("cache") {

TEST_CASE("hits and misses") {
  ChunkCache cache(1000, 1);
  CHECK(cache.budget() == 1000);
  CountingLoader l;
  const auto a = cache.get(1, l.make(100, 0xaa));
  REQUIRE(a);
  CHECK(a->size() == 100);
  CHECK(l.calls == 1);
  const auto b = cache.get(1, l.make(100, 0xbb));
  CHECK(l.calls == 1);
  CHECK(b.get() == a.get());  // the same buffer, not a copy
  CHECK((*b)[0] == 0xaa);
  const auto c = cache.get(2, l.make(50, 0xcc));
  CHECK(l.calls == 2);
  CHECK((*c)[0] == 0xcc);
  const auto s = cache.stats();
  CHECK(s.hits == 1);
  CHECK(s.misses == 2);
  CHECK(s.evictions == 0);
  CHECK(s.bytes == 150);
}

TEST_CASE("contains and the loaded flag") {
  ChunkCache cache(1000, 2);
  CHECK_FALSE(cache.contains(5));
  bool loaded = true;
  (void)cache.get(5, [] { return buffer(10, 1); }, &loaded);
  CHECK(loaded);
  CHECK(cache.contains(5));
  (void)cache.get(5, [] { return buffer(10, 1); }, &loaded);
  CHECK_FALSE(loaded);
  loaded = true;
  CHECK_THROWS((void)cache.get(6, []() -> ChunkPtr { throw std::runtime_error("x"); }, &loaded));
  CHECK_FALSE(loaded);
  CHECK_FALSE(cache.contains(6));
  // In flight counts as contained.
  std::latch started(1), release(1);
  std::thread t([&] {
    (void)cache.get(7, [&] {
      started.count_down();
      release.wait();
      return buffer(10, 7);
    });
  });
  started.wait();
  CHECK(cache.contains(7));
  release.count_down();
  t.join();
  CHECK(cache.contains(7));
  // Evicted entries are no longer contained.
  ChunkCache small(100, 1);
  (void)small.get(1, [] { return buffer(100, 1); });
  (void)small.get(2, [] { return buffer(100, 2); });
  CHECK_FALSE(small.contains(1));
  CHECK(small.contains(2));
}

TEST_CASE("LRU eviction under the budget") {
  ChunkCache cache(300, 1);
  CountingLoader l;
  (void)cache.get(1, l.make(100, 1));
  (void)cache.get(2, l.make(100, 2));
  (void)cache.get(3, l.make(100, 3));
  CHECK(cache.stats().bytes == 300);
  CHECK(cache.stats().evictions == 0);
  (void)cache.get(1, l.make(100, 1));  // touch 1: now 2 is the least recently used
  CHECK(l.calls == 3);
  (void)cache.get(4, l.make(100, 4));  // over budget: evicts 2
  CHECK(l.calls == 4);
  CHECK(cache.stats().evictions == 1);
  CHECK(cache.stats().bytes == 300);
  (void)cache.get(1, l.make(100, 1));
  (void)cache.get(3, l.make(100, 3));
  (void)cache.get(4, l.make(100, 4));
  CHECK(l.calls == 4);  // all still cached
  (void)cache.get(2, l.make(100, 2));  // was evicted: loads again (and evicts 1, now the coldest)
  CHECK(l.calls == 5);
  CHECK(cache.stats().evictions == 2);
  (void)cache.get(3, l.make(100, 3));
  CHECK(l.calls == 5);
  (void)cache.get(1, l.make(100, 1));
  CHECK(l.calls == 6);
}

TEST_CASE("an evicted buffer stays valid for whoever holds it") {
  ChunkCache cache(100, 1);
  const auto a = cache.get(1, [] { return buffer(100, 7); });
  (void)cache.get(2, [] { return buffer(100, 8); });
  CHECK(cache.stats().evictions == 1);
  CHECK(a->size() == 100);
  CHECK((*a)[99] == 7);
}

TEST_CASE("an entry larger than the whole budget is returned but not kept") {
  ChunkCache cache(100, 1);
  CountingLoader l;
  const auto big = cache.get(1, l.make(1000, 9));
  CHECK(big->size() == 1000);
  CHECK(cache.stats().bytes <= 100);
  (void)cache.get(1, l.make(1000, 9));
  CHECK(l.calls == 2);
}

TEST_CASE("many keys over many shards never exceed the budget") {
  const std::uint64_t budget = 16 * 1000;
  ChunkCache cache(budget, 16);
  CountingLoader l;
  for (std::uint64_t k = 0; k < 2000; ++k) {
    const auto p = cache.get(k * 65536, l.make(100, static_cast<std::uint8_t>(k)));
    CHECK((*p)[0] == static_cast<std::uint8_t>(k));
    CHECK(cache.stats().bytes <= budget);
  }
  const auto s = cache.stats();
  CHECK(s.misses == 2000);
  CHECK(s.evictions > 0);
  CHECK(s.bytes == (2000 - s.evictions) * 100);
}

TEST_CASE("single flight: N threads asking for one key run the loader once") {
  ChunkCache cache(1 << 20, 4);
  constexpr int kThreads = 16;
  std::atomic<int> calls{0};
  std::latch start(kThreads);
  std::vector<ChunkPtr> got(kThreads);
  std::atomic<int> loaded_count{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      start.arrive_and_wait();
      bool loaded = false;
      got[t] = cache.get(
          42,
          [&] {
            ++calls;
            std::this_thread::sleep_for(200ms);
            return buffer(4096, 0x42);
          },
          &loaded);
      if (loaded) ++loaded_count;
    });
  }
  for (auto &t : ts) t.join();
  CHECK(calls == 1);
  CHECK(loaded_count == 1);  // exactly one caller ran the loader
  for (int t = 0; t < kThreads; ++t) {
    REQUIRE(got[t]);
    CHECK(got[t].get() == got[0].get());
  }
  const auto s = cache.stats();
  CHECK(s.misses == 1);
  CHECK(s.hits == kThreads - 1);
  CHECK(s.bytes == 4096);
}

TEST_CASE("a throwing loader is not cached; every waiter sees the exception; the next call retries") {
  ChunkCache cache(1 << 20, 4);
  constexpr int kThreads = 8;
  std::atomic<int> calls{0}, caught{0}, wrong{0};
  std::latch start(kThreads);
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&] {
      start.arrive_and_wait();
      try {
        (void)cache.get(7, [&]() -> ChunkPtr {
          ++calls;
          std::this_thread::sleep_for(300ms);
          throw std::runtime_error("disk on fire");
        });
        ++wrong;
      } catch (const std::runtime_error &e) {
        if (std::string(e.what()) == "disk on fire")
          ++caught;
        else
          ++wrong;
      } catch (...) {
        ++wrong;
      }
    });
  }
  for (auto &t : ts) t.join();
  CHECK(calls == 1);
  CHECK(caught == kThreads);
  CHECK(wrong == 0);
  CHECK(cache.stats().bytes == 0);

  // Not cached: the next call runs its loader, which now succeeds and is cached.
  CountingLoader l;
  const auto p = cache.get(7, l.make(10, 1));
  CHECK(l.calls == 1);
  CHECK(p->size() == 10);
  (void)cache.get(7, l.make(10, 1));
  CHECK(l.calls == 1);
  CHECK(cache.stats().bytes == 10);
}

TEST_CASE("a loader failing repeatedly is retried every time") {
  ChunkCache cache(1000, 1);
  int calls = 0;
  for (int i = 0; i < 5; ++i) {
    CHECK_THROWS_AS((void)cache.get(3,
                                    [&]() -> ChunkPtr {
                                      ++calls;
                                      throw std::logic_error("nope");
                                    }),
                    std::logic_error);
  }
  CHECK(calls == 5);
  CHECK(cache.stats().bytes == 0);
  CHECK(cache.stats().evictions == 0);
}

TEST_CASE("concurrent stress: contents always match the key, budget holds") {
  ChunkCache cache(64 * 256, 8);
  constexpr int kThreads = 8;
  std::atomic<int> bad{0};
  std::atomic<int> loads{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      std::uint64_t x = 0x9e3779b97f4a7c15ull * static_cast<std::uint64_t>(t + 1);
      for (int i = 0; i < 3000; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        const std::uint64_t key = x % 200;
        try {
          const auto p = cache.get(key, [&]() -> ChunkPtr {
            ++loads;
            if (key % 37 == 0 && (x & 1)) throw std::runtime_error("flaky");
            return buffer(256, static_cast<std::uint8_t>(key));
          });
          if (p->size() != 256 || (*p)[0] != static_cast<std::uint8_t>(key) || (*p)[255] != static_cast<std::uint8_t>(key))
            ++bad;
        } catch (const std::runtime_error &) {
        }
      }
    });
  }
  for (auto &t : ts) t.join();
  CHECK(bad == 0);
  const auto s = cache.stats();
  CHECK(s.bytes <= cache.budget());
  CHECK(s.hits + s.misses == static_cast<std::uint64_t>(kThreads) * 3000);
}

}  // TEST_SUITE
