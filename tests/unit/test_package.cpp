// writer + package + reader: pack a tree, open it, and check every query against the source.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "helpers.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/reader.hpp"
#include "torshpkg/writer.hpp"

using namespace torshpkg;
namespace fs = std::filesystem;

namespace {

constexpr unsigned kShift = 16;
constexpr std::uint64_t kCs = 1ull << kShift;

struct Fixture {
  th::TempDir dir;
  fs::path src, out;
  PackResult result;
  std::shared_ptr<const Package> pkg;
  th::Bytes rep_block;

  Fixture() {
    src = dir / "tree";
    out = dir / "tree.tpkg";
    fs::create_directories(src / "weights");
    fs::create_directories(src / "emptydir");
    fs::create_directories(src / "deep/a/b/c/d");
    fs::create_directories(src / "\xf0\x9f\x98\x80" "dir");
    th::write_file(src / "config.json", R"({"hidden_size": 4096, "layers": 32})");
    th::write_file(src / "weights/a.bin", th::random_bytes(kCs - 1, 1));
    th::write_file(src / "weights/b.bin", th::random_bytes(kCs, 2));
    th::write_file(src / "weights/c.bin", th::random_bytes(kCs + 1, 3));
    th::write_file(src / "weights/two.bin", th::random_bytes(2 * kCs, 4));
    th::write_file(src / "weights/big.txt", th::text_bytes(3 * kCs + 1234, 5));
    th::write_file(src / "weights/dup1.bin", th::random_bytes(150'000, 6));
    th::write_file(src / "weights/dup2.bin", th::random_bytes(150'000, 6));
    rep_block = th::random_bytes(kCs, 7);
    th::Bytes rep;
    for (int i = 0; i < 4; ++i) rep.insert(rep.end(), rep_block.begin(), rep_block.end());
    th::write_file(src / "weights/rep.bin", rep);
    th::write_file(src / "empty.txt", "");
    th::write_file(src / "script.sh", "#!/bin/sh\necho hello\n");
    th::write_file(src / "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e.txt", "nihongo\n");
    th::write_file(src / "\xc3\xa9", "e-acute");
    th::write_file(src / "\xf0\x9f\x98\x80" "dir/inner", "inside the emoji dir");
    th::write_file(src / "deep/a/b/c/d/leaf.py", "print('leaf')\n");
    th::write_file(src / std::string(255, 'L'), "long name");
    fs::create_symlink("weights/a.bin", src / "link_rel");
    fs::create_symlink("/etc/passwd", src / "link_abs");
    fs::create_symlink("../../config.json", src / "deep/a/up");
    fs::create_symlink("nowhere/target", src / "dangling");
    ::chmod((src / "script.sh").c_str(), 0755);
    ::chmod((src / "config.json").c_str(), 0600);
    ::chmod((src / "weights/a.bin").c_str(), 0444);
    ::chmod((src / "weights").c_str(), 0750);
    ::chmod((src / "emptydir").c_str(), 0700);
    th::set_mtime(src / "config.json", 1'600'000'000, 123'456'789);
    th::set_mtime(src / "empty.txt", -86400, 5);  // before the epoch
    th::set_mtime(src / "link_rel", 1'500'000'000, 999'999'999);
    th::set_mtime(src / "emptydir", 2'000'000'000, 1);
    th::set_mtime(src / "weights", 1'234'567'890, 0);

    PackOptions o;
    o.source_dir = src.string();
    o.output = out.string();
    o.name = "@org/test-pkg";
    o.version = "1.2.3-rc.1+build.5";
    o.description = "unit test package \xe2\x9c\x93";
    o.authors = {"Ada", "Grace"};
    o.license = "Apache-2.0";
    o.dependencies = {{"base-model", "^1.0"}, {"tok", "*"}};
    o.chunk_shift = kShift;
    o.threads = 3;
    result = pack(o);
    pkg = Package::open(out.string());
  }
};

Fixture &fx() {
  static Fixture f;
  return f;
}

struct SrcEntry {
  std::string rel;
  struct stat st {};
};

std::vector<SrcEntry> walk(const fs::path &root) {
  std::vector<SrcEntry> out;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    SrcEntry e;
    e.rel = it->path().lexically_relative(root).generic_string();
    REQUIRE(::lstat(it->path().c_str(), &e.st) == 0);
    out.push_back(std::move(e));
  }
  return out;
}

std::uint64_t chunks_of(std::uint64_t size) { return size / kCs + (size % kCs != 0); }

std::uint32_t ino_of(const Package &p, std::string_view path) {
  const auto i = p.resolve(path);
  REQUIRE_MESSAGE(i.has_value(), "not in package: " << std::string(path));
  return *i;
}

th::Bytes read_all(Reader &r, std::uint32_t ino) {
  const auto size = r.package().inode(ino).size;
  th::Bytes out(size);
  CHECK(r.read(ino, 0, out) == size);
  return out;
}

}  // namespace

TEST_SUITE("package") {

TEST_CASE("pack result and package header/footer") {
  auto &f = fx();
  const auto &p = *f.pkg;
  CHECK(p.chunk_size() == kCs);
  CHECK(p.header().chunk_shift == kShift);
  CHECK(p.file_size() == fs::file_size(f.out));
  CHECK(f.result.package_bytes == p.file_size());
  CHECK(f.result.root == p.root_digest());
  CHECK(p.path() == f.out.string());
  CHECK(p.footer().signature_offset == 0);
  CHECK(p.footer().signature_size == 0);

  std::uint64_t dirs = 1, files = 0, links = 0, raw = 0, chunks = 0;
  for (const auto &e : walk(f.src)) {
    if (S_ISDIR(e.st.st_mode)) ++dirs;
    if (S_ISLNK(e.st.st_mode)) ++links;
    if (S_ISREG(e.st.st_mode)) {
      ++files;
      raw += static_cast<std::uint64_t>(e.st.st_size);
      chunks += chunks_of(static_cast<std::uint64_t>(e.st.st_size));
    }
  }
  CHECK(f.result.directories == dirs);
  CHECK(f.result.files == files);
  CHECK(f.result.symlinks == links);
  CHECK(f.result.raw_bytes == raw);
  CHECK(f.result.chunks == chunks);
  CHECK(p.chunk_count() == chunks);
  CHECK(p.inode_count() == dirs + files + links);
  // dup2 repeats dup1's 3 chunks, rep.bin repeats its first chunk 3 times.
  CHECK(f.result.unique_chunks == chunks - 3 - 3);
  const auto dup2 = ino_of(p, "weights/dup2.bin");
  const auto rep = ino_of(p, "weights/rep.bin");
  CHECK(f.result.dedup_saved_bytes == p.stored_size(dup2) + 3 * p.chunk(p.inode(rep).first).stored_size);
  std::uint64_t stored = 0;
  std::map<std::uint64_t, std::uint32_t> by_offset;
  for (std::uint64_t i = 0; i < p.chunk_count(); ++i) by_offset[p.chunk(i).offset] = p.chunk(i).stored_size;
  for (const auto &[off, sz] : by_offset) stored += sz;
  CHECK(f.result.stored_bytes == stored);
  CHECK(by_offset.size() == f.result.unique_chunks);
  // header | unique stored bytes | index ... footer
  CHECK(p.footer().index_offset == format::kHeaderSize + stored);
}

TEST_CASE("every source entry resolves with matching type, name, mode, mtime, size and contents") {
  auto &f = fx();
  const auto &p = *f.pkg;
  Reader reader(f.pkg, 1 << 20);
  std::size_t checked = 0;
  for (const auto &e : walk(f.src)) {
    CAPTURE(e.rel);
    const auto ino = ino_of(p, e.rel);
    CHECK(ino != 0);
    CHECK(p.path_of(ino) == e.rel);
    CHECK(p.name(ino) == fs::path(e.rel).filename().string());
    const auto in = p.inode(ino);
    CHECK(in.mode == ((e.st.st_mode & S_IFMT) | (e.st.st_mode & 0777)));
    CHECK(in.mtime_sec == e.st.st_mtim.tv_sec);
    CHECK(in.mtime_nsec == static_cast<std::uint32_t>(e.st.st_mtim.tv_nsec));
    const auto parent_rel = fs::path(e.rel).parent_path().generic_string();
    CHECK(in.parent == ino_of(p, parent_rel));
    if (S_ISREG(e.st.st_mode)) {
      CHECK(p.type(ino) == format::NodeType::kRegular);
      CHECK(in.size == static_cast<std::uint64_t>(e.st.st_size));
      CHECK(read_all(reader, ino) == th::read_file(f.src / e.rel));
    } else if (S_ISDIR(e.st.st_mode)) {
      CHECK(p.type(ino) == format::NodeType::kDirectory);
      const auto n = static_cast<std::uint64_t>(std::distance(fs::directory_iterator(f.src / e.rel), fs::directory_iterator{}));
      CHECK(in.size == n);
      for (std::uint64_t k = 0; k < in.size; ++k) CHECK(p.inode(static_cast<std::uint32_t>(in.first + k)).parent == ino);
    } else {
      REQUIRE(S_ISLNK(e.st.st_mode));
      CHECK(p.type(ino) == format::NodeType::kSymlink);
      const auto target = fs::read_symlink(f.src / e.rel).string();
      CHECK(p.symlink_target(ino) == target);
      CHECK(in.size == target.size());
    }
    ++checked;
  }
  CHECK(checked + 1 == p.inode_count());
}

TEST_CASE("specific attributes as set on the source") {
  auto &f = fx();
  const auto &p = *f.pkg;
  const auto cfg = p.inode(ino_of(p, "config.json"));
  CHECK(cfg.mode == (S_IFREG | 0600));
  CHECK(cfg.mtime_sec == 1'600'000'000);
  CHECK(cfg.mtime_nsec == 123'456'789u);
  CHECK(cfg.kind == format::FileKind::kConfig);
  CHECK(p.inode(ino_of(p, "script.sh")).mode == (S_IFREG | 0755));
  CHECK(p.inode(ino_of(p, "script.sh")).kind == format::FileKind::kCode);
  CHECK(p.inode(ino_of(p, "weights/a.bin")).mode == (S_IFREG | 0444));
  CHECK(p.inode(ino_of(p, "weights/a.bin")).kind == format::FileKind::kWeights);
  CHECK(p.inode(ino_of(p, "weights/big.txt")).kind == format::FileKind::kData);
  CHECK(p.inode(ino_of(p, "weights")).mode == (S_IFDIR | 0750));
  CHECK(p.inode(ino_of(p, "weights")).mtime_sec == 1'234'567'890);
  CHECK(p.inode(ino_of(p, "emptydir")).mode == (S_IFDIR | 0700));
  CHECK(p.inode(ino_of(p, "emptydir")).mtime_sec == 2'000'000'000);
  CHECK(p.inode(ino_of(p, "emptydir")).mtime_nsec == 1);
  CHECK(p.inode(ino_of(p, "emptydir")).size == 0);
  CHECK(p.inode(ino_of(p, "empty.txt")).mtime_sec == -86400);
  CHECK(p.inode(ino_of(p, "empty.txt")).mtime_nsec == 5);
  const auto lr = p.inode(ino_of(p, "link_rel"));
  CHECK((lr.mode & S_IFMT) == S_IFLNK);
  CHECK(lr.mtime_sec == 1'500'000'000);
  CHECK(lr.mtime_nsec == 999'999'999u);
  CHECK(p.symlink_target(ino_of(p, "link_rel")) == "weights/a.bin");
  CHECK(p.symlink_target(ino_of(p, "link_abs")) == "/etc/passwd");
  CHECK(p.symlink_target(ino_of(p, "deep/a/up")) == "../../config.json");
  CHECK(p.symlink_target(ino_of(p, "dangling")) == "nowhere/target");
  const auto root = p.inode(0);
  CHECK((root.mode & S_IFMT) == S_IFDIR);
  CHECK(root.parent == 0);
  CHECK(root.name_length == 0);
  CHECK(p.path_of(0).empty());
  CHECK(p.type(0) == format::NodeType::kDirectory);
}

TEST_CASE("resolve and lookup") {
  auto &f = fx();
  const auto &p = *f.pkg;
  CHECK(p.resolve("") == std::optional<std::uint32_t>(0));
  CHECK(p.resolve(".") == std::optional<std::uint32_t>(0));
  CHECK(p.resolve("/") == std::optional<std::uint32_t>(0));
  const auto w = ino_of(p, "weights");
  const auto a = ino_of(p, "weights/a.bin");
  CHECK(p.lookup(0, "weights") == std::optional<std::uint32_t>(w));
  CHECK(p.lookup(w, "a.bin") == std::optional<std::uint32_t>(a));
  CHECK(p.resolve("./weights/./a.bin") == std::optional<std::uint32_t>(a));
  CHECK(p.resolve("weights//a.bin") == std::optional<std::uint32_t>(a));
  CHECK(p.resolve("weights/a.bin/") == std::optional<std::uint32_t>(a));
  CHECK(p.resolve("/weights/a.bin") == std::optional<std::uint32_t>(a));
  CHECK(p.resolve("weights/") == std::optional<std::uint32_t>(w));
  CHECK_FALSE(p.resolve("..").has_value());
  CHECK_FALSE(p.resolve("../weights").has_value());
  CHECK_FALSE(p.resolve("weights/../config.json").has_value());
  CHECK_FALSE(p.resolve("missing").has_value());
  CHECK_FALSE(p.resolve("weights/missing").has_value());
  CHECK_FALSE(p.resolve("config.json/x").has_value());  // not a directory
  CHECK_FALSE(p.resolve("link_rel/x").has_value());     // symlinks are not followed
  CHECK_FALSE(p.resolve("Weights").has_value());        // case-sensitive
  CHECK_FALSE(p.resolve(".torshpkg").has_value());
  CHECK_FALSE(p.lookup(a, "x").has_value());
  CHECK_FALSE(p.lookup(ino_of(p, "link_rel"), "x").has_value());
  CHECK_FALSE(p.lookup(ino_of(p, "emptydir"), "x").has_value());
  CHECK_FALSE(p.lookup(0, "").has_value());
  CHECK_FALSE(p.lookup(0, "weight").has_value());
  CHECK_FALSE(p.lookup(0, "weightsz").has_value());
  // Unicode names resolve byte-exactly.
  CHECK(p.resolve("\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e.txt").has_value());
  CHECK(p.resolve("\xc3\xa9").has_value());
  CHECK_FALSE(p.resolve("e\xcc\x81").has_value());  // NFD form is a different name
  CHECK(p.resolve("\xf0\x9f\x98\x80" "dir/inner").has_value());
  CHECK(p.resolve(std::string(255, 'L')).has_value());
  // Every child of every directory is found by lookup, in sorted order.
  for (std::uint32_t i = 0; i < p.inode_count(); ++i) {
    if (p.type(i) != format::NodeType::kDirectory) continue;
    const auto d = p.inode(i);
    for (std::uint64_t k = 0; k < d.size; ++k) {
      const auto c = static_cast<std::uint32_t>(d.first + k);
      CHECK(p.lookup(i, p.name(c)) == std::optional<std::uint32_t>(c));
      if (k > 0) CHECK(p.name(c - 1) < p.name(c));
    }
  }
}

TEST_CASE("chunk counts at chunk size - 1, exactly, + 1 and twice") {
  auto &f = fx();
  const auto &p = *f.pkg;
  struct Want {
    const char *path;
    std::vector<std::uint32_t> sizes;
  };
  for (const auto &w : {Want{"weights/a.bin", {65535}}, Want{"weights/b.bin", {65536}},
                        Want{"weights/c.bin", {65536, 1}}, Want{"weights/two.bin", {65536, 65536}},
                        Want{"weights/big.txt", {65536, 65536, 65536, 1234}}}) {
    CAPTURE(w.path);
    const auto e = p.inode(ino_of(p, w.path));
    REQUIRE(chunks_of(e.size) == w.sizes.size());
    for (std::size_t k = 0; k < w.sizes.size(); ++k) CHECK(p.chunk(e.first + k).decoded_size == w.sizes[k]);
  }
  // Random data is stored; text is compressed.
  CHECK(p.chunk(p.inode(ino_of(p, "weights/a.bin")).first).codec == format::Codec::kStored);
  const auto big = p.inode(ino_of(p, "weights/big.txt"));
  for (std::uint32_t k = 0; k < 4; ++k) CHECK(p.chunk(big.first + k).codec == format::Codec::kZstd);
  CHECK(p.stored_size(ino_of(p, "weights/big.txt")) < big.size / 2);
  CHECK(p.stored_size(ino_of(p, "weights/a.bin")) == 65535);
  CHECK(p.stored_size(ino_of(p, "empty.txt")) == 0);
  CHECK(p.stored_size(ino_of(p, "weights")) == 0);
  CHECK(p.stored_size(ino_of(p, "link_rel")) == 0);
  // Runs are consecutive in inode order and cover the table.
  std::uint64_t next = 0;
  for (std::uint32_t i = 0; i < p.inode_count(); ++i) {
    if (p.type(i) != format::NodeType::kRegular || p.inode(i).size == 0) continue;
    CHECK(p.inode(i).first == next);
    next += chunks_of(p.inode(i).size);
  }
  CHECK(next == p.chunk_count());
}

TEST_CASE("identical files and identical chunks share stored bytes") {
  auto &f = fx();
  const auto &p = *f.pkg;
  const auto d1 = p.inode(ino_of(p, "weights/dup1.bin"));
  const auto d2 = p.inode(ino_of(p, "weights/dup2.bin"));
  REQUIRE(d1.size == d2.size);
  CHECK(d1.first != d2.first);  // own chunk entries ...
  for (std::uint32_t k = 0; k < chunks_of(d1.size); ++k) {
    const auto c1 = p.chunk(d1.first + k), c2 = p.chunk(d2.first + k);
    CHECK(c1.offset == c2.offset);  // ... pointing at the same stored bytes
    CHECK(c1.digest == c2.digest);
    CHECK(c1.stored_size == c2.stored_size);
  }
  const auto rep = p.inode(ino_of(p, "weights/rep.bin"));
  REQUIRE(chunks_of(rep.size) == 4);
  for (std::uint32_t k = 1; k < 4; ++k) CHECK(p.chunk(rep.first + k).offset == p.chunk(rep.first).offset);
  // Different content, different offsets.
  CHECK(p.chunk(d1.first).offset != p.chunk(rep.first).offset);
  Reader r(f.pkg, 1 << 20);
  CHECK(read_all(r, ino_of(p, "weights/dup2.bin")) == th::read_file(f.src / "weights/dup1.bin"));
  th::Bytes whole(rep.size);
  CHECK(r.read(ino_of(p, "weights/rep.bin"), 0, whole) == rep.size);
  for (int i = 0; i < 4; ++i)
    CHECK(std::equal(f.rep_block.begin(), f.rep_block.end(), whole.begin() + static_cast<std::ptrdiff_t>(i * kCs)));
}

TEST_CASE("Reader::read of ranges across chunk boundaries equals the source") {
  auto &f = fx();
  const auto &p = *f.pkg;
  for (const char *path : {"weights/big.txt", "weights/c.bin", "weights/two.bin", "weights/dup2.bin"}) {
    CAPTURE(path);
    const auto src = th::read_file(f.src / path);
    const auto ino = ino_of(p, path);
    // A small cache forces evictions and reloads.
    Reader r(f.pkg, 2 * kCs);
    auto check_range = [&](std::uint64_t off, std::uint64_t len) {
      CAPTURE(off);
      CAPTURE(len);
      th::Bytes buf(len, 0xee);
      const auto n = r.read(ino, off, buf);
      const std::uint64_t want = off >= src.size() ? 0 : std::min<std::uint64_t>(len, src.size() - off);
      REQUIRE(n == want);
      CHECK(std::equal(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n),
                       src.begin() + static_cast<std::ptrdiff_t>(std::min<std::uint64_t>(off, src.size()))));
    };
    for (std::uint64_t b = kCs; b < src.size(); b += kCs) {
      check_range(b - 1, 2);
      check_range(b - 10, 20);
      check_range(b - 1, 1);
      check_range(b, 1);
      check_range(b - kCs, kCs);
      check_range(b - kCs + 1, kCs);
    }
    check_range(0, src.size());
    check_range(0, src.size() + 100);     // short read at end of file
    check_range(src.size() - 5, 100);
    check_range(src.size(), 10);           // at end of file
    check_range(src.size() + 1000, 10);    // past end of file
    check_range(0, 0);
    check_range(1, 2 * kCs + 7);
    std::mt19937_64 rng(12345);
    for (int i = 0; i < 200; ++i) {
      const std::uint64_t off = rng() % (src.size() + 10);
      const std::uint64_t len = rng() % (kCs * 3);
      check_range(off, len);
    }
  }
}

TEST_CASE("Reader::slices") {
  auto &f = fx();
  const auto &p = *f.pkg;
  Reader r(f.pkg, 1 << 20);
  const auto ino = ino_of(p, "weights/big.txt");
  auto s = r.slices(ino, kCs - 10, 20);
  REQUIRE(s.size() == 2);
  CHECK(s[0].offset == kCs - 10);
  CHECK(s[0].length == 10);
  CHECK(s[1].offset == 0);
  CHECK(s[1].length == 10);
  s = r.slices(ino, 0, ~0ull);
  REQUIRE(s.size() == 4);
  CHECK(s[3].length == 1234);
  CHECK(r.slices(ino, p.inode(ino).size, 10).empty());
  CHECK(r.slices(ino, ~0ull, ~0ull).empty());
  CHECK(r.slices(ino, 5, 0).empty());
  CHECK_THROWS_AS((void)r.slices(ino_of(p, "weights"), 0, 10), UsageError);
  CHECK_THROWS_AS((void)r.slices(ino_of(p, "link_rel"), 0, 10), UsageError);
  const auto empty = ino_of(p, "empty.txt");
  CHECK(r.slices(empty, 0, 100).empty());
  th::Bytes buf(10);
  CHECK(r.read(empty, 0, buf) == 0);
  // Deduplicated chunks share one cache entry (keyed by stored offset).
  Reader r2(f.pkg, 256ull << 20);
  (void)r2.read(ino_of(p, "weights/dup1.bin"), 0, std::span<std::uint8_t>());
  th::Bytes d(150'000);
  (void)r2.read(ino_of(p, "weights/dup1.bin"), 0, d);
  const auto misses = r2.cache().stats().misses;
  (void)r2.read(ino_of(p, "weights/dup2.bin"), 0, d);
  CHECK(r2.cache().stats().misses == misses);
}

TEST_CASE("concurrent reads through one Reader") {
  auto &f = fx();
  const auto &p = *f.pkg;
  Reader r(f.pkg, 3 * kCs);
  std::vector<std::pair<std::uint32_t, th::Bytes>> files;
  for (const char *path : {"weights/big.txt", "weights/c.bin", "weights/dup1.bin", "weights/dup2.bin", "weights/rep.bin"})
    files.emplace_back(ino_of(p, path), th::read_file(f.src / path));
  std::atomic<int> bad{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 6; ++t) {
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<unsigned>(t));
      for (int i = 0; i < 300; ++i) {
        const auto &[ino, src] = files[rng() % files.size()];
        const std::uint64_t off = rng() % src.size();
        th::Bytes buf(rng() % (2 * kCs) + 1);
        const auto n = r.read(ino, off, buf);
        if (n != std::min<std::uint64_t>(buf.size(), src.size() - off) ||
            !std::equal(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n), src.begin() + static_cast<std::ptrdiff_t>(off)))
          ++bad;
      }
    });
  }
  for (auto &t : ts) t.join();
  CHECK(bad == 0);
  CHECK(r.cache().stats().bytes <= 3 * kCs);
}

// The cache splits its budget over shards; a small budget must still keep what was just read.
TEST_CASE("a reader whose cache holds a few chunks keeps a chunk just read") {
  auto &f = fx();
  const auto &p = *f.pkg;
  Reader r(f.pkg, 8 * kCs);
  const auto ino = ino_of(p, "weights/big.txt");
  th::Bytes buf(100);
  (void)r.read(ino, 0, buf);
  const auto misses = r.cache().stats().misses;
  (void)r.read(ino, 50, buf);  // same chunk, right after
  CHECK(r.cache().stats().misses == misses);
  CHECK(r.cache().stats().bytes == kCs);
}

TEST_CASE("Reader: slices report the file chunk and whether this call decoded it") {
  auto &f = fx();
  const auto &p = *f.pkg;
  Reader r(f.pkg, 64 << 20);
  const auto ino = ino_of(p, "weights/big.txt");
  CHECK(r.chunks_in_file(ino) == 4);
  CHECK(r.chunks_in_file(ino_of(p, "weights/a.bin")) == 1);
  CHECK(r.chunks_in_file(ino_of(p, "weights/c.bin")) == 2);
  CHECK(r.chunks_in_file(ino_of(p, "empty.txt")) == 0);
  CHECK(r.chunks_in_file(ino_of(p, "weights")) == 0);
  CHECK(r.chunks_in_file(ino_of(p, "link_rel")) == 0);
  auto s = r.slices(ino, kCs - 1, kCs + 2);
  REQUIRE(s.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(s[i].file_chunk == i);
    CHECK(s[i].decoded_now);
  }
  s = r.slices(ino, kCs - 1, kCs + 2);
  for (const auto &x : s) CHECK_FALSE(x.decoded_now);
  bool decoded = true;
  (void)r.chunk(p.inode(ino).first + 3, ino, &decoded);
  CHECK(decoded);
  (void)r.chunk(p.inode(ino).first + 3, ino, &decoded);
  CHECK_FALSE(decoded);
}

TEST_CASE("Reader: background workers decode ahead and report each decode once") {
  auto &f = fx();
  const auto &p = *f.pkg;
  const auto ino = ino_of(p, "weights/big.txt");
  const auto src = th::read_file(f.src / "weights/big.txt");
  SUBCASE("without workers prefetch does nothing and jobs run inline") {
    Reader r(f.pkg, 64 << 20);
    r.prefetch(ino, 0, 4);
    CHECK_FALSE(r.cache().contains(p.chunk(p.inode(ino).first).offset));
    bool ran = false;
    r.run_in_background([&] { ran = true; });
    CHECK(ran);
    const auto c = r.decode_ahead(ino, 1);  // a fresh decode comes back, verified
    REQUIRE(c);
    CHECK(std::equal(c->begin(), c->end(), src.begin() + static_cast<std::ptrdiff_t>(kCs)));
    CHECK(c->size() == kCs);
  }
  SUBCASE("with workers") {
    Reader r(f.pkg, 64 << 20);
    r.start_workers(3);
    r.prefetch(ino, 0, 100);  // clipped to the file's 4 chunks
    r.prefetch(ino, 2, 2);    // already queued or cached: no second decode
    r.prefetch(ino, 10, 5);   // past the end: nothing
    r.prefetch(ino_of(p, "weights"), 0, 5);  // not a file: nothing
    std::atomic<bool> bg{false};
    r.run_in_background([&] { bg = true; });
    r.stop_workers();  // finishes queued work
    CHECK(bg);
    for (std::uint64_t k = 0; k < 4; ++k) CHECK(r.cache().contains(p.cache_key(p.inode(ino).first + k)));
    // decode_ahead hands back only a chunk it decoded itself: cached, past the end and
    // not-a-file give nothing.
    CHECK_FALSE(r.decode_ahead(ino, 1));
    CHECK_FALSE(r.decode_ahead(ino, 4));
    CHECK_FALSE(r.decode_ahead(ino_of(p, "weights"), 0));
    // Reads now hit the cache: nothing decoded by this call.
    for (const auto &x : r.slices(ino, 0, src.size())) CHECK_FALSE(x.decoded_now);
    th::Bytes all(src.size());
    CHECK(r.read(ino, 0, all) == src.size());
    CHECK(all == src);
    r.stop_workers();  // twice is fine
  }
  SUBCASE("a reader destroyed with prefetches queued") {
    for (int i = 0; i < 5; ++i) {
      Reader r(f.pkg, 64 << 20);
      r.start_workers(2);
      r.prefetch(ino, 0, 4);
      r.prefetch(ino_of(p, "weights/dup1.bin"), 0, 3);
    }
  }
}

TEST_CASE("load_chunk checks the output size") {
  auto &f = fx();
  const auto &p = *f.pkg;
  const auto c = p.chunk(0);
  th::Bytes out(c.decoded_size);
  CHECK_NOTHROW(p.load_chunk(0, out));
  th::Bytes wrong(c.decoded_size + 1);
  CHECK_THROWS_AS(p.load_chunk(0, wrong), Error);
  for (std::uint64_t i = 0; i < p.chunk_count(); ++i) {
    th::Bytes o(p.chunk(i).decoded_size);
    CHECK_NOTHROW(p.load_chunk(i, o));
  }
}

TEST_CASE("manifest JSON") {
  auto &f = fx();
  const auto &p = *f.pkg;
  const auto m = nlohmann::json::parse(p.manifest_text());
  CHECK(m.at("manifest_version") == 1);
  CHECK(m.at("name") == "@org/test-pkg");
  CHECK(m.at("version") == "1.2.3-rc.1+build.5");
  CHECK(m.at("description") == "unit test package \xe2\x9c\x93");
  CHECK(m.at("authors") == nlohmann::json::array({"Ada", "Grace"}));
  CHECK(m.at("license") == "Apache-2.0");
  CHECK(m.at("chunk_size") == kCs);
  CHECK(m.at("tool").get<std::string>().starts_with("torshpkg "));
  {
    const auto created = m.at("created").get<std::string>();  // YYYY-MM-DDTHH:MM:SSZ
    REQUIRE(created.size() == 20);
    for (std::size_t i = 0; i < created.size(); ++i) {
      CAPTURE(i);
      const char c = created[i];
      if (i == 4 || i == 7) CHECK(c == '-');
      else if (i == 10) CHECK(c == 'T');
      else if (i == 13 || i == 16) CHECK(c == ':');
      else if (i == 19) CHECK(c == 'Z');
      else CHECK((c >= '0' && c <= '9'));
    }
  }
  REQUIRE(m.at("dependencies").size() == 2);
  CHECK(m["dependencies"][0].at("name") == "base-model");
  CHECK(m["dependencies"][0].at("range") == "^1.0");
  CHECK(m["dependencies"][1].at("range") == "*");
  const auto &files = m.at("files");
  std::size_t regular = 0;
  for (const auto &e : walk(f.src)) {
    if (!S_ISREG(e.st.st_mode)) {
      CHECK_FALSE(files.contains(e.rel));
      continue;
    }
    ++regular;
    CAPTURE(e.rel);
    REQUIRE(files.contains(e.rel));
    const auto &fe = files.at(e.rel);
    CHECK(fe.at("size") == static_cast<std::uint64_t>(e.st.st_size));
    CHECK(fe.at("sha256") == to_hex(sha256(th::read_file(f.src / e.rel))));
    CHECK(fe.at("kind") == std::string(format::kind_name(p.inode(ino_of(p, e.rel)).kind)));
  }
  CHECK(files.size() == regular);
  CHECK(files.at("config.json").at("kind") == "config");
  CHECK(files.at("weights/a.bin").at("kind") == "weights");
  CHECK(files.at("deep/a/b/c/d/leaf.py").at("kind") == "code");
  CHECK(files.at("empty.txt").at("kind") == "data");
}

TEST_CASE("Package::open on things that are not packages") {
  th::TempDir dir;
  CHECK_THROWS_AS((void)Package::open((dir / "missing.tpkg").string()), IoError);
  CHECK_THROWS_AS((void)Package::open(dir.path().string()), UsageError);
  th::write_file(dir / "empty", "");
  CHECK_THROWS_AS((void)Package::open((dir / "empty").string()), FormatError);
  th::write_file(dir / "text", std::string(10'000, 'x'));
  CHECK_THROWS_AS((void)Package::open((dir / "text").string()), FormatError);
  th::write_file(dir / "small", th::random_bytes(191, 1));
  CHECK_THROWS_AS((void)Package::open((dir / "small").string()), FormatError);
  CHECK_THROWS_AS((void)Package::from_bytes(th::random_bytes(191, 1), "small"), FormatError);
  CHECK_THROWS_AS((void)Package::from_bytes({}, "none"), FormatError);
  // A package's error message names the file.
  try {
    (void)Package::open((dir / "text").string());
  } catch (const FormatError &e) {
    CHECK(th::contains(e.what(), "text"));
  }
}

TEST_CASE("from_bytes of a packed image equals open") {
  auto &f = fx();
  const auto image = th::read_file(f.out);
  const auto q = Package::from_bytes(image, "in-memory");
  CHECK(q->path() == "in-memory");
  CHECK(q->root_digest() == f.pkg->root_digest());
  CHECK(q->inode_count() == f.pkg->inode_count());
  CHECK(q->manifest_text() == f.pkg->manifest_text());
  Reader r(q, 1 << 20);
  const auto ino = ino_of(*q, "weights/big.txt");
  CHECK(read_all(r, ino) == th::read_file(f.src / "weights/big.txt"));
}

}  // TEST_SUITE
