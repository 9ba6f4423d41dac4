// chunk_store.hpp: the shared on-disk chunk store: round trips, sizes, sharing, atomic writes,
// LRU collection, stale temp files, unusable and full directories, threads.
#include <doctest/doctest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <ctime>
#include <thread>
#include <vector>

#include "helpers.hpp"
#include "torshpkg/chunk_store.hpp"
#include "torshpkg/digest.hpp"

using namespace torshpkg;
using th::Bytes;
namespace fs = std::filesystem;

namespace {

struct Chunk {
  Bytes bytes;
  Digest digest;
};

Chunk chunk(std::size_t size, std::uint64_t seed) {
  Chunk c{th::random_bytes(size, seed), {}};
  c.digest = sha256(c.bytes);
  return c;
}

fs::path path_in(const fs::path &dir, const Digest &d) {
  const auto hex = to_hex(d);
  return dir / "chunks" / hex.substr(0, 2) / hex;
}

std::size_t count_files(const fs::path &dir) {
  std::size_t n = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec))
    if (it->is_regular_file()) ++n;
  return n;
}

std::uint64_t total_bytes(const ChunkStore &s) {
  std::uint64_t t = 0;
  for (const auto &e : s.list()) t += e.size;
  return t;
}

// Mounts a tmpfs of `size` on `dir` (root only) and unmounts it on destruction.
class TmpfsMount {
 public:
  TmpfsMount(const fs::path &dir, const char *size) : dir_(dir) {
    mounted_ = ::geteuid() == 0 && ::mount("tmpfs", dir.c_str(), "tmpfs", 0, size) == 0;
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  TmpfsMount(const TmpfsMount &) = delete;
  TmpfsMount &operator=(const TmpfsMount &) = delete;
  [[nodiscard]] bool mounted() const noexcept { return mounted_; }

 private:
  fs::path dir_;
  bool mounted_ = false;
};

}  // namespace

TEST_SUITE("chunk_store") {
  TEST_CASE("put then get round-trips, and lays out chunks/AB/<hex>") {
    th::TempDir t;
    const auto dir = t / "cache";
    ChunkStore s(dir.string(), 1 << 20);
    REQUIRE(s.usable());
    CHECK(s.warning().empty());
    CHECK(fs::is_directory(dir / "chunks"));
    CHECK(fs::is_directory(dir / "tmp"));
    CHECK((fs::status(dir).permissions() & fs::perms::all) == fs::perms(0755));

    const auto c = chunk(5000, 1);
    CHECK_FALSE(s.contains(c.digest));
    s.put(c.digest, c.bytes);
    CHECK(s.contains(c.digest));
    const auto p = path_in(dir, c.digest);
    REQUIRE(fs::is_regular_file(p));
    CHECK((fs::status(p).permissions() & fs::perms::all) == fs::perms(0644));
    CHECK(th::read_file(p) == c.bytes);

    Bytes out(c.bytes.size());
    CHECK(s.get(c.digest, out));
    CHECK(out == c.bytes);
    s.put(c.digest, c.bytes);  // already there: a no-op
    const auto st = s.stats();
    CHECK(st.hits == 1);
    CHECK(st.misses == 0);
    CHECK(st.bytes_read == c.bytes.size());
    CHECK(st.bytes_written == c.bytes.size());
    CHECK(st.write_failures == 0);

    const auto l = s.list();
    REQUIRE(l.size() == 1);
    CHECK(l[0].digest == c.digest);
    CHECK(l[0].size == c.bytes.size());

    // An empty chunk is a chunk too.
    const auto e = chunk(0, 2);
    s.put(e.digest, e.bytes);
    Bytes none;
    CHECK(s.get(e.digest, none));
  }

  TEST_CASE("a missing chunk is a miss; a wrong size is a miss and removes the file") {
    th::TempDir t;
    ChunkStore s((t / "c").string(), 1 << 20);
    const auto c = chunk(4096, 3);
    Bytes out(c.bytes.size());
    CHECK_FALSE(s.get(c.digest, out));
    CHECK(s.stats().misses == 1);

    s.put(c.digest, c.bytes);
    Bytes small(c.bytes.size() - 1);
    CHECK_FALSE(s.get(c.digest, small));
    CHECK_FALSE(s.contains(c.digest));
    CHECK_FALSE(fs::exists(path_in(t / "c", c.digest)));
    CHECK(s.stats().misses == 2);
    CHECK(s.stats().hits == 0);

    // A truncated file (as after a crash before the data reached the disk) is found by its size too.
    s.put(c.digest, c.bytes);
    fs::resize_file(path_in(t / "c", c.digest), 0);
    CHECK_FALSE(s.get(c.digest, out));
    CHECK_FALSE(s.contains(c.digest));
  }

  TEST_CASE("drop removes an entry and counts it") {
    th::TempDir t;
    ChunkStore s((t / "c").string(), 1 << 20);
    const auto c = chunk(100, 4);
    s.put(c.digest, c.bytes);
    REQUIRE(s.contains(c.digest));
    s.drop(c.digest);
    CHECK_FALSE(s.contains(c.digest));
    CHECK(s.stats().dropped == 1);
    s.drop(c.digest);  // gone already: nothing to count
    CHECK(s.stats().dropped == 1);
    Bytes out(100);
    CHECK_FALSE(s.get(c.digest, out));
  }

  TEST_CASE("two stores on one directory share entries") {
    th::TempDir t;
    const auto dir = (t / "shared").string();
    ChunkStore a(dir, 1 << 20), b(dir, 1 << 20);
    const auto c = chunk(777, 5);
    a.put(c.digest, c.bytes);
    CHECK(b.contains(c.digest));
    Bytes out(c.bytes.size());
    CHECK(b.get(c.digest, out));
    CHECK(out == c.bytes);
    b.put(c.digest, c.bytes);
    CHECK(b.stats().bytes_written == 0);
    b.drop(c.digest);
    CHECK_FALSE(a.contains(c.digest));
  }

  TEST_CASE("writes go through tmp/ and leave nothing there") {
    th::TempDir t;
    const auto dir = t / "c";
    ChunkStore s(dir.string(), 1 << 20);
    for (std::uint64_t i = 0; i < 20; ++i) {
      const auto c = chunk(1000 + i, 100 + i);
      s.put(c.digest, c.bytes);
    }
    CHECK(fs::is_empty(dir / "tmp"));
    CHECK(count_files(dir / "chunks") == 20);
    CHECK(s.list().size() == 20);
  }

  TEST_CASE("list ignores names that are not digests, and collection leaves them alone") {
    th::TempDir t;
    const auto dir = t / "c";
    ChunkStore s(dir.string(), 1 << 20);
    const auto c = chunk(100, 6);
    s.put(c.digest, c.bytes);
    const auto hex = to_hex(c.digest);
    const auto sub = dir / "chunks" / hex.substr(0, 2);
    std::string upper = hex;
    for (auto &ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    th::write_file(sub / upper, "x");               // upper case
    th::write_file(sub / (hex + ".bak"), "x");      // suffix
    th::write_file(sub / "README", "x");            // not hex
    fs::create_directories(dir / "chunks" / "zz");  // not a hex folder
    th::write_file(dir / "chunks" / "zz" / hex, "x");
    const auto other = to_hex(chunk(1, 7).digest);  // a digest in the wrong folder
    if (other.substr(0, 2) != hex.substr(0, 2)) th::write_file(sub / other, "x");
    const auto l = s.list();
    REQUIRE(l.size() == 1);
    CHECK(l[0].digest == c.digest);
    const auto r = s.clear();
    CHECK(r.removed_entries == 1);
    CHECK(fs::exists(sub / upper));
    CHECK(fs::exists(sub / "README"));
    CHECK(fs::exists(dir / "chunks" / "zz" / hex));
  }

  TEST_CASE("gc removes the least recently used first, and stale temp files") {
    th::TempDir t;
    const auto dir = t / "c";
    ChunkStore s(dir.string(), 1 << 30);
    std::vector<Chunk> cs;
    const std::int64_t now = std::time(nullptr);
    // Chunk i was last used i hours after the oldest; 1000 bytes each.
    const int order[] = {3, 0, 4, 1, 2};
    for (int i = 0; i < 5; ++i) cs.push_back(chunk(1000, 200 + static_cast<std::uint64_t>(i)));
    for (int i = 0; i < 5; ++i) {
      s.put(cs[static_cast<std::size_t>(i)].digest, cs[static_cast<std::size_t>(i)].bytes);
      th::set_mtime(path_in(dir, cs[static_cast<std::size_t>(i)].digest), now - 86400 + order[i] * 3600, 0);
    }
    const auto l = s.list();
    REQUIRE(l.size() == 5);
    for (std::size_t k = 1; k < l.size(); ++k) CHECK(l[k - 1].last_used <= l[k].last_used);
    CHECK(l[0].digest == cs[1].digest);  // order 0
    CHECK(l[4].digest == cs[2].digest);  // order 4

    th::write_file(dir / "tmp" / "dead.1.2", "partial");
    th::set_mtime(dir / "tmp" / "dead.1.2", now - 7200, 0);
    th::write_file(dir / "tmp" / "live.1.2", "partial");

    const auto r = s.gc(2500);  // keeps the two most recently used
    CHECK(r.removed_entries == 3);
    CHECK(r.removed_bytes == 3000);
    CHECK(r.kept_entries == 2);
    CHECK(r.kept_bytes == 2000);
    CHECK_FALSE(s.contains(cs[1].digest));
    CHECK_FALSE(s.contains(cs[3].digest));
    CHECK_FALSE(s.contains(cs[4].digest));
    CHECK(s.contains(cs[0].digest));
    CHECK(s.contains(cs[2].digest));
    CHECK_FALSE(fs::exists(dir / "tmp" / "dead.1.2"));
    CHECK(fs::exists(dir / "tmp" / "live.1.2"));

    // A hit refreshes an old entry's mtime, which moves it to the end of the LRU order.
    Bytes out(1000);
    REQUIRE(s.get(cs[0].digest, out));
    const auto l2 = s.list();
    REQUIRE(l2.size() == 2);
    CHECK(l2[1].digest == cs[0].digest);
    CHECK(l2[1].last_used >= now);
    const auto r2 = s.gc(1000);
    CHECK(r2.removed_entries == 1);
    CHECK(s.contains(cs[0].digest));

    const auto r3 = s.gc(1 << 20);  // already under: nothing removed
    CHECK(r3.removed_entries == 0);
    CHECK(r3.kept_entries == 1);
  }

  TEST_CASE("clear removes every entry and temp file") {
    th::TempDir t;
    const auto dir = t / "c";
    ChunkStore s(dir.string(), 1 << 20);
    for (std::uint64_t i = 0; i < 7; ++i) {
      const auto c = chunk(300, 300 + i);
      s.put(c.digest, c.bytes);
    }
    th::write_file(dir / "tmp" / "x.1.2", "partial");
    const auto r = s.clear();
    CHECK(r.removed_entries == 7);
    CHECK(r.removed_bytes == 2100);
    CHECK(r.kept_entries == 0);
    CHECK(s.list().empty());
    CHECK(fs::is_empty(dir / "tmp"));
    // Still usable afterwards.
    const auto c = chunk(10, 1);
    s.put(c.digest, c.bytes);
    CHECK(s.contains(c.digest));
  }

  TEST_CASE("an unusable directory caches nothing and throws nothing") {
    th::TempDir t;
    th::write_file(t / "file", "not a directory");
    ChunkStore s((t / "file" / "cache").string(), 1 << 20);
    CHECK_FALSE(s.usable());
    CHECK(th::contains(s.warning(), "Not a directory"));
    CHECK(th::contains(s.warning(), "caching disabled"));
    CHECK(s.warning().find('\n') == std::string::npos);
    const auto c = chunk(100, 8);
    Bytes out(100);
    CHECK_NOTHROW(s.put(c.digest, c.bytes));
    CHECK_FALSE(s.contains(c.digest));
    CHECK_FALSE(s.get(c.digest, out));
    CHECK_NOTHROW(s.drop(c.digest));
    CHECK(s.stats().hits == 0);
  }

  TEST_CASE("a store whose tmp/ cannot be written still serves hits, and pauses writes") {
    th::TempDir t;
    const auto dir = t / "c";
    const auto c = chunk(4000, 9);
    {
      ChunkStore w(dir.string(), 1 << 20);
      w.put(c.digest, c.bytes);
    }
    fs::remove(dir / "tmp");
    th::write_file(dir / "tmp", "not a directory");
    ChunkStore s(dir.string(), 1 << 20);
    REQUIRE(s.usable());
    CHECK_FALSE(s.warning().empty());
    Bytes out(c.bytes.size());
    CHECK(s.get(c.digest, out));
    CHECK(out == c.bytes);
    const auto d = chunk(4000, 10);
    CHECK_NOTHROW(s.put(d.digest, d.bytes));
    CHECK(s.stats().write_failures == 1);
    CHECK_FALSE(s.contains(d.digest));
    CHECK(th::contains(s.warning(), "paused"));
    CHECK_NOTHROW(s.put(d.digest, d.bytes));  // paused: not even tried
    CHECK(s.stats().write_failures == 1);
    CHECK(s.get(c.digest, out));
  }

  TEST_CASE("a full disk degrades to write failures, and hits still work") {
    th::TempDir t;
    const auto dir = t / "full";
    fs::create_directories(dir);
    TmpfsMount m(dir, "size=64k");
    if (!m.mounted()) {
      MESSAGE("not root or no tmpfs: skipped");
      return;
    }
    ChunkStore s(dir.string(), 1 << 30);
    REQUIRE(s.usable());
    const auto small = chunk(1000, 11);
    s.put(small.digest, small.bytes);
    REQUIRE(s.contains(small.digest));
    const auto big = chunk(256 << 10, 12);
    CHECK_NOTHROW(s.put(big.digest, big.bytes));
    CHECK(s.stats().write_failures == 1);
    CHECK_FALSE(s.contains(big.digest));
    CHECK(fs::is_empty(dir / "tmp"));  // the partial temp file is gone
    CHECK(th::contains(s.warning(), "No space left on device"));
    const auto other = chunk(500, 13);
    s.put(other.digest, other.bytes);  // writes are paused for a while
    CHECK_FALSE(s.contains(other.digest));
    CHECK(s.stats().write_failures == 1);
    Bytes out(small.bytes.size());
    CHECK(s.get(small.digest, out));
    CHECK(out == small.bytes);
  }

  TEST_CASE("puts keep the store under max_bytes") {
    th::TempDir t;
    const auto dir = t / "c";
    constexpr std::uint64_t kMax = 40 * 1024;
    ChunkStore s(dir.string(), kMax);
    std::vector<Chunk> cs;
    for (std::uint64_t i = 0; i < 100; ++i) {
      cs.push_back(chunk(4096, 400 + i));
      s.put(cs.back().digest, cs.back().bytes);
      CHECK(total_bytes(s) <= kMax);
    }
    CHECK(s.list().size() >= 8);
    CHECK(s.contains(cs.back().digest));  // the newest survive
    CHECK(s.stats().bytes_written == 100 * 4096);
    // A second store on the directory scans it once, then counts.
    ChunkStore s2(dir.string(), kMax);
    for (std::uint64_t i = 0; i < 20; ++i) {
      const auto c = chunk(4096, 600 + i);
      s2.put(c.digest, c.bytes);
    }
    CHECK(total_bytes(s2) <= kMax);
  }

  TEST_CASE("puts and gets from four threads on one directory") {
    th::TempDir t;
    const auto dir = (t / "c").string();
    std::vector<Chunk> cs;
    for (std::uint64_t i = 0; i < 64; ++i) cs.push_back(chunk(2048 + i * 16, 700 + i));
    ChunkStore shared(dir, 48 * 2048);  // small enough that collections run while others read
    ChunkStore other(dir, 48 * 2048);
    std::atomic<int> bad{0};
    std::atomic<std::uint64_t> hits{0};
    std::vector<std::thread> threads;
    for (int w = 0; w < 4; ++w) {
      threads.emplace_back([&, w] {
        ChunkStore &s = w % 2 ? shared : other;
        Bytes out;
        for (int round = 0; round < 20; ++round) {
          for (std::size_t k = 0; k < cs.size(); ++k) {
            const auto &c =
                cs[(k * 7 + static_cast<std::size_t>(w) * 13 + static_cast<std::size_t>(round)) % cs.size()];
            out.assign(c.bytes.size(), 0);
            if (s.get(c.digest, out)) {
              ++hits;
              if (out != c.bytes) ++bad;
            } else {
              s.put(c.digest, c.bytes);
            }
          }
        }
      });
    }
    for (auto &thr : threads) thr.join();
    CHECK(bad == 0);
    CHECK(hits > 0);
    CHECK(shared.stats().write_failures == 0);
    CHECK(other.stats().write_failures == 0);
    for (const auto &e : shared.list()) {
      Bytes out(e.size);
      REQUIRE(shared.get(e.digest, out));
      CHECK(sha256(out) == e.digest);
    }
    CHECK(fs::is_empty(fs::path(dir) / "tmp"));
  }

}  // TEST_SUITE
