// writer.hpp: options, refusals, excludes, cancellation, progress, reproducibility.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "helpers.hpp"
#include "torshpkg/codec.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/reader.hpp"
#include "torshpkg/writer.hpp"

using namespace torshpkg;
namespace fs = std::filesystem;

namespace {

PackOptions opts(const fs::path &src, const fs::path &out) { return th::pack_options(src, out); }

void small_tree(const fs::path &src) {
  fs::create_directories(src / "sub");
  th::write_file(src / "a.txt", "alpha\n");
  th::write_file(src / "sub/b.bin", th::random_bytes(70'000, 1));
}

// Files left in `dir` other than the named ones (a failed pack must leave no temporary file).
std::vector<std::string> leftovers(const fs::path &dir, std::initializer_list<std::string> expected) {
  std::vector<std::string> out;
  for (const auto &e : fs::directory_iterator(dir)) {
    const auto n = e.path().filename().string();
    if (std::find(expected.begin(), expected.end(), n) == expected.end()) out.push_back(n);
  }
  return out;
}

th::Bytes read_path(const std::shared_ptr<const Package> &p, std::string_view path) {
  Reader r(p, 16 << 20);
  const auto ino = p->resolve(path);
  REQUIRE(ino.has_value());
  th::Bytes out(p->inode(*ino).size);
  CHECK(r.read(*ino, 0, out) == out.size());
  return out;
}

struct EnvVar {
  std::string name;
  std::optional<std::string> old;
  EnvVar(std::string n, const char *value) : name(std::move(n)) {
    if (const char *o = std::getenv(name.c_str())) old = o;
    ::setenv(name.c_str(), value, 1);
  }
  ~EnvVar() {
    if (old)
      ::setenv(name.c_str(), old->c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
};

}  // namespace

TEST_SUITE("writer") {

TEST_CASE("valid_package_name") {
  for (const char *n : {"a", "model", "Model-2_b.v1", "@org/name", "a/b/c"}) {
    CAPTURE(n);
    CHECK(valid_package_name(n));
  }
  CHECK(valid_package_name(std::string(214, 'x')));
  for (std::string n : {std::string(), std::string("with space"), std::string("caf\xc3\xa9"), std::string("a:b"),
                        std::string("a\0b", 3), std::string(215, 'x'), std::string("tab\t"), std::string("q?")}) {
    CAPTURE(n);
    CHECK_FALSE(valid_package_name(n));
  }
}

TEST_CASE("invalid options are usage errors and create no output") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  const auto out = dir / "out.tpkg";
  SUBCASE("version") {
    for (const char *v : {"1.2", "01.2.3", "1.2.3-", "latest", "", "v1.2.3"}) {
      auto o = opts(src, out);
      o.version = v;
      CAPTURE(v);
      CHECK_THROWS_AS((void)pack(o), UsageError);
    }
  }
  SUBCASE("name") {
    for (const char *n : {"bad name", "caf\xc3\xa9", "a:b"}) {
      auto o = opts(src, out);
      o.name = n;
      CAPTURE(n);
      CHECK_THROWS_AS((void)pack(o), UsageError);
    }
  }
  SUBCASE("chunk size") {
    for (unsigned s : {0u, 15u, 23u, 31u, 32u, 64u}) {
      auto o = opts(src, out);
      o.chunk_shift = s;
      CAPTURE(s);
      CHECK_THROWS_AS((void)pack(o), UsageError);
    }
  }
  SUBCASE("no output") {
    auto o = opts(src, out);
    o.output.clear();
    CHECK_THROWS_AS((void)pack(o), UsageError);
  }
  SUBCASE("compression level") {
    auto o = opts(src, out);
    o.level = 1000;
    CHECK_THROWS_AS((void)pack(o), UsageError);
  }
  CHECK_FALSE(fs::exists(out));
  CHECK(leftovers(dir.path(), {"src"}).empty());
}

TEST_CASE("a root entry named .torshpkg is refused; deeper ones are fine") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  const auto out = dir / "out.tpkg";
  SUBCASE("file") { th::write_file(src / ".torshpkg", "x"); }
  SUBCASE("directory") {
    fs::create_directories(src / ".torshpkg");
    th::write_file(src / ".torshpkg/manifest.json", "{}");
  }
  SUBCASE("symlink") { fs::create_symlink("a.txt", src / ".torshpkg"); }
  CHECK_THROWS_AS((void)pack(opts(src, out)), UsageError);
  CHECK_FALSE(fs::exists(out));
  CHECK(leftovers(dir.path(), {"src"}).empty());

  // Excluding it makes the tree packable; inside a subdirectory the name is ordinary.
  auto o = opts(src, out);
  o.excludes = {".torshpkg"};
  CHECK_NOTHROW((void)pack(o));
  fs::remove_all(src / ".torshpkg");
  fs::create_directories(src / "sub/.torshpkg");
  th::write_file(src / "sub/.torshpkg/x", "x");
  th::write_file(src / ".torshpkgx", "y");
  (void)pack(opts(src, out));
  const auto p = Package::open(out.string());
  CHECK(p->resolve("sub/.torshpkg/x").has_value());
  CHECK(p->resolve(".torshpkgx").has_value());
  CHECK_FALSE(p->resolve(".torshpkg").has_value());
}

TEST_CASE("names that cannot be packed are refused") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  const auto out = dir / "out.tpkg";
  SUBCASE("invalid UTF-8 file name") { th::write_file(src / "sub/caf\xe9", "latin-1"); }
  SUBCASE("invalid UTF-8 directory name") { fs::create_directories(src / "\xff\xfe"); }
  CHECK_THROWS_AS((void)pack(opts(src, out)), UsageError);
  CHECK_FALSE(fs::exists(out));
  CHECK(leftovers(dir.path(), {"src"}).empty());
}

TEST_CASE("bad source or output paths") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  CHECK_THROWS_AS((void)pack(opts(dir / "missing", dir / "o.tpkg")), IoError);
  CHECK_THROWS_AS((void)pack(opts(src / "a.txt", dir / "o.tpkg")), UsageError);
  CHECK_THROWS_AS((void)pack(opts(src, dir / "no/such/dir/o.tpkg")), IoError);
  CHECK_FALSE(fs::exists(dir / "o.tpkg"));
}

TEST_CASE("excludes match the relative path and the base name") {
  th::TempDir dir;
  const auto src = dir / "src";
  fs::create_directories(src / "logs/deeper");
  fs::create_directories(src / "keep/skipdir/inner");
  fs::create_directories(src / "skipdir");
  th::write_file(src / "run.log", "x");
  th::write_file(src / "logs/deeper/a.log", "x");
  th::write_file(src / "logs/deeper/a.txt", "x");
  th::write_file(src / "keep/skipdir/inner/f", "x");
  th::write_file(src / "keep/only_here.txt", "x");
  th::write_file(src / "only_here.txt", "x");
  th::write_file(src / "skipdir/f", "x");
  th::write_file(src / "model.bin", "x");
  auto o = opts(src, dir / "o.tpkg");
  o.excludes = {"*.log", "skipdir", "keep/only_here.txt"};
  const auto r = pack(o);
  const auto p = Package::open(o.output);
  CHECK_FALSE(p->resolve("run.log").has_value());
  CHECK_FALSE(p->resolve("logs/deeper/a.log").has_value());
  CHECK(p->resolve("logs/deeper/a.txt").has_value());
  CHECK_FALSE(p->resolve("skipdir").has_value());
  CHECK_FALSE(p->resolve("keep/skipdir").has_value());
  CHECK_FALSE(p->resolve("keep/only_here.txt").has_value());
  CHECK(p->resolve("only_here.txt").has_value());
  CHECK(p->resolve("model.bin").has_value());
  CHECK(p->inode(*p->resolve("keep")).size == 0);
  CHECK(r.files == 3);
  const auto m = nlohmann::json::parse(p->manifest_text());
  CHECK_FALSE(m.at("files").contains("run.log"));
  CHECK(m.at("files").size() == 3);
  // A path glob with FNM_PATHNAME: '*' does not cross '/'.
  o.excludes = {"*/a.txt"};
  (void)pack(o);
  const auto p2 = Package::open(o.output);
  CHECK(p2->resolve("logs/deeper/a.txt").has_value());
  o.excludes = {"logs/*/a.txt"};
  (void)pack(o);
  CHECK_FALSE(Package::open(o.output)->resolve("logs/deeper/a.txt").has_value());
}

TEST_CASE("empty trees, empty files and empty directories") {
  th::TempDir dir;
  const auto src = dir / "src";
  fs::create_directories(src);
  auto o = opts(src, dir / "o.tpkg");
  auto r = pack(o);
  CHECK(r.directories == 1);
  CHECK(r.files == 0);
  CHECK(r.chunks == 0);
  auto p = Package::open(o.output);
  CHECK(p->inode_count() == 1);
  CHECK(p->chunk_count() == 0);
  CHECK(p->inode(0).size == 0);
  CHECK(p->footer().index_offset == format::kHeaderSize);

  fs::create_directories(src / "e1/e2/e3");
  th::write_file(src / "zero", "");
  th::write_file(src / "e1/zero2", "");
  r = pack(o);
  CHECK(r.files == 2);
  CHECK(r.chunks == 0);
  CHECK(r.stored_bytes == 0);
  p = Package::open(o.output);
  CHECK(p->chunk_count() == 0);
  CHECK(p->inode(*p->resolve("zero")).size == 0);
  CHECK(p->inode(*p->resolve("e1/e2/e3")).size == 0);
  CHECK(p->inode(*p->resolve("e1")).size == 2);
  CHECK(read_path(p, "e1/zero2").empty());
}

TEST_CASE("default name is the source directory's name, trailing slashes ignored") {
  th::TempDir dir;
  const auto src = dir / "my-model_v2";
  small_tree(src);
  auto o = opts(src, dir / "o.tpkg");
  o.name.clear();
  o.source_dir = src.string() + "//";
  (void)pack(o);
  const auto m = nlohmann::json::parse(Package::open(o.output)->manifest_text());
  CHECK(m.at("name") == "my-model_v2");
  CHECK(m.at("version") == "0.1.0");
}

TEST_CASE("special files are skipped with a warning") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  REQUIRE(::mkfifo((src / "fifo").c_str(), 0644) == 0);
  std::vector<std::string> warnings;
  auto o = opts(src, dir / "o.tpkg");
  o.warn = [&](const std::string &w) { warnings.push_back(w); };
  (void)pack(o);
  REQUIRE(warnings.size() == 1);
  CHECK(th::contains(warnings[0], "fifo"));
  CHECK_FALSE(Package::open(o.output)->resolve("fifo").has_value());
}

TEST_CASE("symlinks are stored, never followed") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  fs::create_directories(dir / "outside");
  th::write_file(dir / "outside/secret", "must not be packed");
  fs::create_symlink(dir / "outside", src / "to_outside");
  fs::create_symlink("sub", src / "to_sub");
  const std::string long_target(4095, 't');
  fs::create_symlink(long_target, src / "long");
  auto o = opts(src, dir / "o.tpkg");
  const auto r = pack(o);
  CHECK(r.symlinks == 3);
  const auto p = Package::open(o.output);
  CHECK(p->symlink_target(*p->resolve("to_outside")) == (dir / "outside").string());
  CHECK(p->symlink_target(*p->resolve("long")) == long_target);
  CHECK_FALSE(p->resolve("to_outside/secret").has_value());
  CHECK_FALSE(p->resolve("to_sub/b.bin").has_value());
  CHECK(p->manifest_text().find("secret") == std::string_view::npos);
}

TEST_CASE("permission bits beyond 0777 are not stored") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  ::chmod((src / "a.txt").c_str(), 04755);
  ::chmod((src / "sub").c_str(), 01777);
  auto o = opts(src, dir / "o.tpkg");
  (void)pack(o);
  const auto p = Package::open(o.output);
  CHECK(p->inode(*p->resolve("a.txt")).mode == (S_IFREG | 0755));
  CHECK(p->inode(*p->resolve("sub")).mode == (S_IFDIR | 0777));
}

TEST_CASE("cancellation leaves no output") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  std::atomic<bool> cancel{true};
  auto o = opts(src, dir / "o.tpkg");
  o.cancel = &cancel;
  CHECK_THROWS_AS((void)pack(o), Interrupted);
  CHECK_FALSE(fs::exists(o.output));
  CHECK(leftovers(dir.path(), {"src"}).empty());
  // Cancel from the progress callback, midway.
  th::write_file(src / "big", th::random_bytes(5 << 20, 9));
  cancel = false;
  o.progress = [&](const PackProgress &pr) {
    if (pr.bytes_done > 0) cancel = true;
  };
  try {
    (void)pack(o);
  } catch (const Interrupted &) {
  }
  if (cancel) {
    CHECK_FALSE(fs::exists(o.output));
    CHECK(leftovers(dir.path(), {"src"}).empty());
  }
}

TEST_CASE("progress reports reach the totals") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  th::write_file(src / "big", th::text_bytes(3 << 20, 2));
  std::vector<PackProgress> seen;
  auto o = opts(src, dir / "o.tpkg");
  o.progress = [&](const PackProgress &p) { seen.push_back(p); };
  (void)pack(o);
  REQUIRE_FALSE(seen.empty());
  const auto &last = seen.back();
  CHECK(last.bytes_total == 6 + 70'000 + (3u << 20));
  CHECK(last.bytes_done == last.bytes_total);
  CHECK(last.files_total == 3);
  CHECK(last.files_done == 3);
  for (std::size_t i = 1; i < seen.size(); ++i) CHECK(seen[i].bytes_done >= seen[i - 1].bytes_done);
}

TEST_CASE("SOURCE_DATE_EPOCH makes packing reproducible") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  th::write_file(src / "big", th::text_bytes(300'000, 2));
  EnvVar sde("SOURCE_DATE_EPOCH", "1700000000");
  auto o1 = opts(src, dir / "one.tpkg");
  auto o2 = opts(src, dir / "two.tpkg");
  o2.threads = 5;  // the thread count must not change the output
  const auto r1 = pack(o1);
  const auto r2 = pack(o2);
  CHECK(r1.root == r2.root);
  CHECK(th::read_file(o1.output) == th::read_file(o2.output));
  const auto m = nlohmann::json::parse(Package::open(o1.output)->manifest_text());
  CHECK(m.at("created") == "2023-11-14T22:13:20Z");
}

TEST_CASE("SOURCE_DATE_EPOCH clamps later mtimes and must be a number") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  th::set_mtime(src / "a.txt", 1'000'000'000, 123);  // before the epoch: kept
  th::set_mtime(src / "sub/b.bin", 1'800'000'000, 456);  // after: clamped
  {
    EnvVar sde("SOURCE_DATE_EPOCH", "1700000000");
    auto o = opts(src, dir / "o.tpkg");
    (void)pack(o);
    const auto p = Package::open(o.output);
    const auto a = p->inode(*p->resolve("a.txt"));
    CHECK(a.mtime_sec == 1'000'000'000);
    CHECK(a.mtime_nsec == 123);
    const auto b = p->inode(*p->resolve("sub/b.bin"));
    CHECK(b.mtime_sec == 1'700'000'000);
    CHECK(b.mtime_nsec == 0);
  }
  for (const char *bad : {"abc", "-1", "12x", "1.5", "99999999999999999999999"}) {
    CAPTURE(bad);
    EnvVar sde("SOURCE_DATE_EPOCH", bad);
    auto o = opts(src, dir / "bad.tpkg");
    CHECK_THROWS_AS((void)pack(o), UsageError);
    CHECK_FALSE(fs::exists(o.output));
  }
  {
    EnvVar sde("SOURCE_DATE_EPOCH", "");  // empty: unset
    auto o = opts(src, dir / "o2.tpkg");
    CHECK_NOTHROW((void)pack(o));
  }
}

TEST_CASE("metadata text must be UTF-8") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  auto o = opts(src, dir / "o.tpkg");
  SUBCASE("description") { o.description = "caf\xe9"; }
  SUBCASE("license") { o.license = std::string("\xff"); }
  SUBCASE("author") { o.authors = {"ok", "\xc0\xaf"}; }
  CHECK_THROWS_AS((void)pack(o), UsageError);
  CHECK_FALSE(fs::exists(o.output));
}

TEST_CASE("a file whose bytes equal another chunk's zstd frame does not alias it") {
  // The stored bytes of a compressed chunk of text.txt and the stored bytes of frame.bin (which is
  // that very frame, kept verbatim) have the same digest; they must not share a chunk entry's
  // meaning, or one file would read back as the other.
  th::TempDir dir;
  const auto src = dir / "src";
  fs::create_directories(src);
  const auto text = th::text_bytes(60'000, 8);
  ChunkEncoder enc(3);
  std::vector<std::uint8_t> frame;
  REQUIRE(enc.encode(text, frame) == format::Codec::kZstd);
  th::write_file(src / "text.txt", text);
  th::write_file(src / "frame.bin", frame);
  auto o = opts(src, dir / "o.tpkg");
  o.level = 3;
  const auto r = pack(o);
  const auto p = Package::open(o.output);
  CHECK(read_path(p, "text.txt") == text);
  CHECK(read_path(p, "frame.bin") == frame);
  // Read in the other order with a fresh cache, too.
  Reader rd(p, 16 << 20);
  th::Bytes f2(frame.size()), t2(text.size());
  CHECK(rd.read(*p->resolve("frame.bin"), 0, f2) == frame.size());
  CHECK(rd.read(*p->resolve("text.txt"), 0, t2) == text.size());
  CHECK(f2 == frame);
  CHECK(t2 == text);
  (void)r;
}

TEST_CASE("an existing output file is replaced") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  const auto out = dir / "o.tpkg";
  th::write_file(out, "old junk");
  (void)pack(opts(src, out));
  CHECK(Package::open(out.string())->resolve("a.txt").has_value());
  CHECK(leftovers(dir.path(), {"src", "o.tpkg"}).empty());
}

TEST_CASE("the same tree at every chunk size reads back identically") {
  th::TempDir dir;
  const auto src = dir / "src";
  small_tree(src);
  const auto big = th::text_bytes((4 << 20) + 17, 3);
  th::write_file(src / "big.txt", big);
  for (unsigned shift = format::kMinChunkShift; shift <= format::kMaxChunkShift; ++shift) {
    CAPTURE(shift);
    auto o = opts(src, dir / "o.tpkg");
    o.chunk_shift = shift;
    o.level = 1;
    const auto r = pack(o);
    const auto p = Package::open(o.output);
    CHECK(p->chunk_size() == (1u << shift));
    const std::uint64_t cs = 1ull << shift;
    CHECK(r.chunks == (big.size() + cs - 1) / cs + (70'000 + cs - 1) / cs + 1);
    CHECK(read_path(p, "big.txt") == big);
    CHECK(read_path(p, "sub/b.bin") == th::read_file(src / "sub/b.bin"));
  }
}

TEST_CASE("a safetensors file gets a summary in the manifest; a broken one only a warning") {
  th::TempDir dir;
  const auto src = dir / "src";
  fs::create_directories(src);
  const std::string hdr = R"({"w":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  th::Bytes st(8);
  for (int i = 0; i < 8; ++i) st[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(hdr.size() >> (8 * i));
  st.insert(st.end(), hdr.begin(), hdr.end());
  st.resize(st.size() + 16, 0x3c);
  th::write_file(src / "model.safetensors", st);
  auto broken = st;
  broken.erase(broken.end() - 4, broken.end());  // offsets now beyond the data
  th::write_file(src / "broken.safetensors", broken);
  std::vector<std::string> warnings;
  auto o = opts(src, dir / "o.tpkg");
  o.warn = [&](const std::string &w) { warnings.push_back(w); };
  (void)pack(o);
  const auto m = nlohmann::json::parse(Package::open(o.output)->manifest_text());
  const auto &s = m.at("files").at("model.safetensors").at("safetensors");
  CHECK(s.at("tensors") == 2);
  CHECK(s.at("parameters") == 6);
  CHECK(s.at("dtypes").at("F16") == 1);
  CHECK(s.at("dtypes").at("F32") == 1);
  CHECK(m.at("files").at("model.safetensors").at("kind") == "weights");
  CHECK_FALSE(m.at("files").at("broken.safetensors").contains("safetensors"));
  REQUIRE(warnings.size() == 1);
  CHECK(th::contains(warnings[0], "broken.safetensors"));
}

// The packer must never produce a package that its own reader refuses.
TEST_CASE("a tree deeper than the reader's limit is refused at pack time, or opens") {
  th::TempDir dir;
  const auto src = dir / "src";
  SUBCASE("at the limit: the deepest entry at depth kMaxDepth") {
    fs::path p = src;
    for (unsigned i = 0; i + 1 < format::kMaxDepth; ++i) p /= "d";
    fs::create_directories(p);
    th::write_file(p / "leaf", "x");
    auto o = opts(src, dir / "o.tpkg");
    (void)pack(o);
    const auto pkg = Package::open(o.output);
    std::string rel;
    for (unsigned i = 0; i + 1 < format::kMaxDepth; ++i) rel += "d/";
    CHECK(pkg->resolve(rel + "leaf").has_value());
  }
  SUBCASE("one level deeper") {
    fs::path p = src;
    for (unsigned i = 0; i < format::kMaxDepth; ++i) p /= "d";
    fs::create_directories(p);
    th::write_file(p / "leaf", "x");
    auto o = opts(src, dir / "o.tpkg");
    bool packed = false;
    try {
      (void)pack(o);
      packed = true;
    } catch (const UsageError &) {
    }
    if (packed) CHECK_NOTHROW((void)Package::open(o.output));
  }
}

}  // TEST_SUITE
