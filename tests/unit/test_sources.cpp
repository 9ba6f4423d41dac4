// chunk_source.hpp and open_source (open.hpp): where a package's bytes come from.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"
#include "torshpkg/chunk_source.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/open.hpp"

using namespace torshpkg;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

th::Bytes read_range(const ChunkSource &s, std::uint64_t offset, std::size_t n) {
  th::Bytes out(n, 0xcc);
  s.read(offset, out);
  return out;
}

th::Bytes slice(const th::Bytes &b, std::size_t offset, std::size_t n) {
  return th::Bytes(b.begin() + static_cast<std::ptrdiff_t>(offset),
                   b.begin() + static_cast<std::ptrdiff_t>(offset + n));
}

// The contract every source shares: exact ranges, size, FormatError past the end (with and
// without offset + length overflowing).
void check_ranges(const ChunkSource &s, const th::Bytes &content) {
  const std::uint64_t size = content.size();
  REQUIRE(s.size() == size);
  CHECK(read_range(s, 0, content.size()) == content);
  for (std::size_t off : {std::size_t{0}, std::size_t{1}, std::size_t{4095}, std::size_t{4096}, std::size_t{9999}}) {
    for (std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{4096}}) {
      if (off + n > content.size()) continue;
      CAPTURE(off);
      CAPTURE(n);
      CHECK(read_range(s, off, n) == slice(content, off, n));
    }
  }
  // The last byte, and empty reads anywhere up to the end.
  CHECK(read_range(s, size - 1, 1) == slice(content, content.size() - 1, 1));
  CHECK_NOTHROW(s.read(0, {}));
  CHECK_NOTHROW(s.read(size, {}));
  // A read that does not fit throws and says where.
  th::Bytes buf(16);
  CHECK_THROWS_AS(s.read(size, std::span(buf).first(1)), FormatError);
  CHECK_THROWS_AS(s.read(size - 15, buf), FormatError);
  CHECK_THROWS_AS(s.read(size + 1, {}), FormatError);
  th::Bytes too_big(content.size() + 1);
  CHECK_THROWS_AS(s.read(0, too_big), FormatError);
  try {
    s.read(size - 1, buf);
    FAIL("no exception");
  } catch (const FormatError &e) {
    CHECK(th::contains(e.what(), s.name()));
    CHECK(th::contains(e.what(), "past the end"));
  }
  // offset + length wraps around 2^64: still past the end, never a wrapped in-range read.
  CHECK_THROWS_AS(s.read(kMax, std::span(buf).first(1)), FormatError);
  CHECK_THROWS_AS(s.read(kMax - 7, buf), FormatError);
  CHECK_THROWS_AS(s.read(kMax - 14, buf), FormatError);  // end == 2^64 + 1 wraps to 1
  CHECK_THROWS_AS(s.read(kMax, {}), FormatError);
}

// Many threads reading overlapping ranges at once get exactly the right bytes.
void check_concurrent(const ChunkSource &s, const th::Bytes &content) {
  constexpr unsigned kThreads = 8, kReads = 400;
  std::atomic<unsigned> wrong{0}, errors{0};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::uint64_t x = 0x9e3779b97f4a7c15ull * (t + 1);
      th::Bytes buf;
      for (unsigned i = 0; i < kReads; ++i) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        const std::size_t off = x % content.size();
        const std::size_t n = 1 + (x >> 32) % std::min<std::size_t>(8192, content.size() - off);
        buf.assign(n, 0);
        try {
          s.read(off, buf);
        } catch (...) {
          ++errors;
          continue;
        }
        if (!std::equal(buf.begin(), buf.end(), content.begin() + static_cast<std::ptrdiff_t>(off))) ++wrong;
      }
    });
  for (auto &t : threads) t.join();
  CHECK(errors.load() == 0);
  CHECK(wrong.load() == 0);
}

}  // namespace

TEST_SUITE("sources") {

TEST_CASE("FileSource: exact ranges, size, name, mtime") {
  th::TempDir dir;
  const auto path = dir / "blob.bin";
  const auto content = th::random_bytes(100'003, 11);
  th::write_file(path, content);
  th::set_mtime(path, 1'650'000'000, 987'654'321);
  const FileSource s(path.string());
  CHECK(s.name() == path.string());
  CHECK(s.mtime() == 1'650'000'000);  // whole seconds
  check_ranges(s, content);
}

TEST_CASE("FileSource: a pre-epoch mtime and a one-byte file") {
  th::TempDir dir;
  const auto path = dir / "one";
  th::write_file(path, "x");
  th::set_mtime(path, -86'400, 0);
  const FileSource s(path.string());
  CHECK(s.mtime() == -86'400);
  CHECK(s.size() == 1);
  CHECK(read_range(s, 0, 1) == th::bytes_of("x"));
  th::Bytes two(2);
  CHECK_THROWS_AS(s.read(0, two), FormatError);
}

TEST_CASE("FileSource: an empty file has size 0 and only empty reads") {
  th::TempDir dir;
  th::write_file(dir / "empty", "");
  const FileSource s((dir / "empty").string());
  CHECK(s.size() == 0);
  CHECK_NOTHROW(s.read(0, {}));
  th::Bytes one(1);
  CHECK_THROWS_AS(s.read(0, one), FormatError);
  CHECK_THROWS_AS(s.read(1, {}), FormatError);
}

TEST_CASE("FileSource: a directory or device is a UsageError, a missing file an IoError") {
  th::TempDir dir;
  fs::create_directories(dir / "sub");
  CHECK_THROWS_AS(FileSource((dir / "sub").string()), UsageError);
  try {
    FileSource s((dir / "sub").string());
    FAIL("no exception");
  } catch (const UsageError &e) {
    CHECK(th::contains(e.what(), (dir / "sub").string()));
  }
  if (fs::exists("/dev/null")) CHECK_THROWS_AS(FileSource("/dev/null"), UsageError);

  const auto missing = (dir / "missing.tpkg").string();
  try {
    FileSource s(missing);
    FAIL("no exception");
  } catch (const IoError &e) {
    CHECK(e.errnum == ENOENT);
    CHECK(th::contains(e.what(), missing));
  }
}

// Opened with O_NONBLOCK, then refused by type: an open must never wait for a FIFO writer.
TEST_CASE("FileSource: a FIFO is a UsageError, not a hang") {
  th::TempDir dir;
  const auto fifo = dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const auto outcome = th::isolated([&] {
    ::itimerval t{};
    t.it_value.tv_usec = 200'000;
    ::setitimer(ITIMER_REAL, &t, nullptr);
    FileSource s(fifo.string());  // a UsageError is "other torshpkg::Error"
  });
  CHECK_MESSAGE(outcome == th::Outcome::kOtherTorshpkgError, std::string(th::outcome_name(outcome)));
}

TEST_CASE("FileSource: the size is fixed when opened") {
  th::TempDir dir;
  const auto path = dir / "grows";
  th::write_file(path, th::bytes_of("0123456789"));
  const FileSource s(path.string());
  th::write_file(path, th::bytes_of("0123456789abcdef"));  // same inode, truncated and rewritten
  CHECK(s.size() == 10);
  CHECK(read_range(s, 6, 4) == th::bytes_of("6789"));
  th::Bytes buf(4);
  CHECK_THROWS_AS(s.read(8, buf), FormatError);  // the bytes exist now, but not in this source
}

TEST_CASE("FileSource: concurrent reads from several threads") {
  th::TempDir dir;
  const auto content = th::random_bytes(256 * 1024 + 17, 12);
  th::write_file(dir / "blob", content);
  const FileSource s((dir / "blob").string());
  check_concurrent(s, content);
}

TEST_CASE("MemorySource: exact ranges, size, name, mtime 0") {
  const auto content = th::random_bytes(100'003, 13);
  const MemorySource s(content, "in-memory thing");
  CHECK(s.name() == "in-memory thing");
  CHECK(s.mtime() == 0);
  check_ranges(s, content);
}

TEST_CASE("MemorySource: empty") {
  const MemorySource s({}, "nothing");
  CHECK(s.size() == 0);
  CHECK_NOTHROW(s.read(0, {}));
  th::Bytes one(1);
  CHECK_THROWS_AS(s.read(0, one), FormatError);
  CHECK_THROWS_AS(s.read(kMax, one), FormatError);
  CHECK_THROWS_AS(s.read(1, {}), FormatError);
}

TEST_CASE("MemorySource: concurrent reads from several threads") {
  const auto content = th::random_bytes(256 * 1024 + 17, 14);
  const MemorySource s(content, "mem");
  check_concurrent(s, content);
}

TEST_CASE("open_source: a plain path and a file:// URL") {
  th::TempDir dir;
  const auto path = dir / "pkg.bin";
  const auto content = th::random_bytes(5000, 15);
  th::write_file(path, content);

  const auto plain = open_source(path.string());
  REQUIRE(plain);
  CHECK(plain->name() == path.string());
  CHECK(plain->size() == content.size());
  CHECK(read_range(*plain, 0, content.size()) == content);

  const auto url = open_source("file://" + path.string());
  REQUIRE(url);
  CHECK(url->name() == path.string());  // the path, without the scheme
  CHECK(read_range(*url, 100, 50) == slice(content, 100, 50));

  // The path's own errors come through: missing -> IoError, directory -> UsageError.
  CHECK_THROWS_AS((void)open_source((dir / "nope").string()), IoError);
  CHECK_THROWS_AS((void)open_source("file://" + (dir / "nope").string()), IoError);
  CHECK_THROWS_AS((void)open_source(dir.path().string()), UsageError);
}

TEST_CASE("open_source: a relative path containing \"://\" after a slash is a path") {
  th::TempDir dir;
  fs::create_directories(dir / "a:");
  th::write_file(dir / "a:" / "b", "bytes");
  // "x/a://b" has a '/' before "://", so it is no URL: the file "x/a:/b".
  const auto s = open_source((dir / "a:").string() + "//b");
  CHECK(s->size() == 5);
}

TEST_CASE("open_source: schemes without a backend are UsageErrors naming the scheme") {
  for (const std::string loc : {"ftp://x/y", "gs://b/k", "gopher://host/model.tpkg", "ipfs://r/x"}) {
    CAPTURE(loc);
    const std::string scheme = loc.substr(0, loc.find("://"));
    try {
      (void)open_source(loc);
      FAIL("no exception");
    } catch (const UsageError &e) {
      CHECK(th::contains(e.what(), scheme + "://"));
      CHECK(th::contains(e.what(), loc));
    } catch (const std::exception &e) {
      FAIL("wrong exception: " << e.what());
    }
  }
}

}  // TEST_SUITE
