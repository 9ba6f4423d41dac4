// open_zip: a zip presented as a package. Archives are built here byte by byte, so that
// each hostile case changes exactly one field the parser must check.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <zlib.h>

#include <functional>

#include "helpers.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/reader.hpp"
#include "torshpkg/zip_package.hpp"
#include "torshpkg/zipio.hpp"

using namespace torshpkg;
using th::Bytes;

namespace {

Bytes raw_deflate(std::span<const std::uint8_t> in) {
  z_stream zs{};
  REQUIRE(deflateInit2(&zs, 6, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  Bytes out(deflateBound(&zs, in.size()));
  zs.next_in = const_cast<std::uint8_t *>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

struct Member {
  std::string name;
  Bytes data;
  bool deflate = false;
  std::uint32_t unix_mode = 0;  // 0: no Unix attributes
};

// Fields of one central header that a test may corrupt after the archive is laid out.
struct Central {
  std::uint32_t crc = 0;
  std::uint64_t comp = 0, size = 0, local = 0;
  std::uint16_t method = 0;
  std::string name;
};

class ZipBuilder {
 public:
  ZipBuilder &add(Member m) {
    members_.push_back(std::move(m));
    return *this;
  }
  // Called with each central header's fields before they are written.
  std::function<void(Central &)> edit_central;
  std::function<void(Bytes &, std::size_t cd_at)> edit_archive;
  std::int64_t entry_count_delta = 0;

  Bytes build() {
    Bytes z;
    std::vector<Central> cds;
    for (const auto &m : members_) {
      Central c;
      c.name = m.name;
      c.size = m.data.size();
      c.crc = static_cast<std::uint32_t>(crc32_z(0, m.data.data(), m.data.size()));
      const Bytes body = m.deflate ? raw_deflate(m.data) : m.data;
      c.comp = body.size();
      c.method = m.deflate ? 8 : 0;
      c.local = z.size();
      put32(z, 0x04034b50);
      put16(z, 20), put16(z, 0), put16(z, c.method), put16(z, 0), put16(z, 0x21);
      put32(z, c.crc), put32(z, static_cast<std::uint32_t>(c.comp)), put32(z, static_cast<std::uint32_t>(c.size));
      put16(z, static_cast<std::uint16_t>(m.name.size())), put16(z, 0);
      z.insert(z.end(), m.name.begin(), m.name.end());
      z.insert(z.end(), body.begin(), body.end());
      cds.push_back(c);
    }
    const std::size_t cd_at = z.size();
    for (std::size_t i = 0; i < cds.size(); ++i) {
      auto c = cds[i];
      if (edit_central) edit_central(c);
      put32(z, 0x02014b50);
      put16(z, members_[i].unix_mode ? 0x0314 : 20), put16(z, 20), put16(z, 0), put16(z, c.method);
      put16(z, 0), put16(z, 0x21);
      put32(z, c.crc), put32(z, static_cast<std::uint32_t>(c.comp)), put32(z, static_cast<std::uint32_t>(c.size));
      put16(z, static_cast<std::uint16_t>(c.name.size())), put16(z, 0), put16(z, 0), put16(z, 0), put16(z, 0);
      put32(z, members_[i].unix_mode << 16), put32(z, static_cast<std::uint32_t>(c.local));
      z.insert(z.end(), c.name.begin(), c.name.end());
    }
    const std::size_t cd_size = z.size() - cd_at;
    put32(z, 0x06054b50);
    put16(z, 0), put16(z, 0);
    const auto n = static_cast<std::uint16_t>(static_cast<std::int64_t>(cds.size()) + entry_count_delta);
    put16(z, n), put16(z, n);
    put32(z, static_cast<std::uint32_t>(cd_size)), put32(z, static_cast<std::uint32_t>(cd_at));
    put16(z, 0);
    if (edit_archive) edit_archive(z, cd_at);
    return z;
  }

 private:
  static void put16(Bytes &b, std::uint16_t v) { b.push_back(v & 0xff), b.push_back(v >> 8); }
  static void put32(Bytes &b, std::uint32_t v) { put16(b, v & 0xffff), put16(b, v >> 16); }
  std::vector<Member> members_;
};

std::shared_ptr<const Package> open_bytes(const th::TempDir &dir, const Bytes &zip) {
  const auto p = dir / "a.zip";
  th::write_file(p, zip);
  return open_zip(std::make_shared<FileSource>(p.string()));
}

Bytes read_all(Reader &r, std::string_view path) {
  const auto ino = r.package().resolve(path);
  REQUIRE(ino);
  Bytes out(r.package().inode(*ino).size);
  const auto n = r.read(*ino, 0, out);  // outside CHECK: doctest would swallow what it throws
  CHECK(n == out.size());
  return out;
}

}  // namespace

TEST_CASE("open_zip: stored, deflated, implied directories, modes, in any read order") {
  th::TempDir d;
  const Bytes big = th::text_bytes(5 * (1u << 20) + 1234, 7);  // six 1 MiB chunks, deflated
  const Bytes raw = th::random_bytes(2 * (1u << 20) + 5, 8);
  ZipBuilder b;
  b.add({"w/raw.bin", raw, false, S_IFREG | 0600})
      .add({"w/text.txt", big, true, S_IFREG | 0644})
      .add({"conf/", {}, false, S_IFDIR | 0755})
      .add({"conf/a.json", th::bytes_of("{\"a\": 1}"), true, 0})
      .add({"empty", {}, false, 0});
  const auto pkg = open_bytes(d, b.build());
  CHECK(pkg->synthesized() != nullptr);
  Reader r(pkg, 64ull << 20);
  CHECK(read_all(r, "w/raw.bin") == raw);
  CHECK(read_all(r, "conf/a.json") == th::bytes_of("{\"a\": 1}"));
  CHECK(read_all(r, "empty").empty());
  CHECK((pkg->inode(*pkg->resolve("w/raw.bin")).mode & 0777) == 0600);
  CHECK((pkg->inode(*pkg->resolve("conf/a.json")).mode & 0777) == 0644);  // no Unix attributes: default
  CHECK(pkg->type(*pkg->resolve("w")) == format::NodeType::kDirectory);   // implied
  // Deflated entry: far chunk, then back (the cursor restarts), then one in the ring.
  const auto ino = *pkg->resolve("w/text.txt");
  for (std::uint64_t off : {4ull << 20, 100ull, 3ull << 20, (2ull << 20) + 7, 5ull << 20}) {
    Bytes got(4096);
    const auto n = r.read(ino, off, got);
    got.resize(n);
    CHECK(got == Bytes(big.begin() + static_cast<std::ptrdiff_t>(off),
                       big.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(off + 4096, big.size()))));
  }
  CHECK(read_all(r, "w/text.txt") == big);
}

TEST_CASE("open_zip: hostile central directories are FormatErrors") {
  auto outcome = [](ZipBuilder b) {
    th::TempDir d;
    return th::isolated([&] {
      const auto pkg = open_bytes(d, b.build());
      Reader r(pkg, 16ull << 20);
      for (std::uint32_t i = 0; i < pkg->inode_count(); ++i)
        if (pkg->type(i) == format::NodeType::kRegular) (void)read_all(r, pkg->path_of(i));
    });
  };
  auto base = [] {
    ZipBuilder b;
    b.add({"a.txt", th::text_bytes(3000, 1), true, 0}).add({"b.bin", th::random_bytes(500, 2), false, 0});
    return b;
  };
  CHECK(outcome(base()) == th::Outcome::kOk);

  SUBCASE("no end record") {
    auto b = base();
    b.edit_archive = [](Bytes &z, std::size_t) { z.resize(z.size() - 22); };
    CHECK(outcome(b) == th::Outcome::kFormatError);
  }
  SUBCASE("central directory beyond the end") {
    auto b = base();
    b.edit_archive = [](Bytes &z, std::size_t) { store_le<std::uint32_t>(&z[z.size() - 6], 0xfffffff0u); };
    CHECK(outcome(b) == th::Outcome::kFormatError);
  }
  SUBCASE("more entries than the directory holds") {
    auto b = base();
    b.entry_count_delta = 5;
    CHECK(outcome(b) == th::Outcome::kFormatError);
  }
  SUBCASE("a deflate size claim beyond 1032:1") {
    auto b = base();
    b.edit_central = [](Central &c) {
      if (c.method == 8) c.size = c.comp * 5000;
    };
    CHECK(outcome(b) == th::Outcome::kFormatError);
  }
  SUBCASE("stored entry whose sizes differ") {
    auto b = base();
    b.edit_central = [](Central &c) {
      if (c.method == 0) c.size += 1;
    };
    CHECK(outcome(b) == th::Outcome::kFormatError);
  }
  SUBCASE("data offset past the central directory") {
    auto b = base();
    b.edit_central = [](Central &c) { c.local += 1u << 20; };
    CHECK(outcome(b) == th::Outcome::kFormatError);
  }
  SUBCASE("local header at the wrong place (read fails, mount does not)") {
    auto b = base();
    b.edit_central = [](Central &c) { c.local += 1; };
    CHECK(outcome(b) == th::Outcome::kFormatError);
  }
  SUBCASE("unsupported method") {
    auto b = base();
    b.edit_central = [](Central &c) { c.method = 12; };
    CHECK(outcome(b) == th::Outcome::kFormatError);
  }
  for (const char *name : {"../evil", "/abs", "a/../../b", ".torshpkg/x", "a\\b", "a//b"}) {
    CAPTURE(name);
    ZipBuilder b;
    b.add({name, th::bytes_of("x"), false, 0});
    CHECK(outcome(b) == th::Outcome::kFormatError);
  }
  SUBCASE("one directory entry twice") {
    ZipBuilder b;
    b.add({"d/", {}, false, 0}).add({"d/", {}, false, 0});
    CHECK(outcome(b) == th::Outcome::kFormatError);
  }
  SUBCASE("a file and a directory of one name") {
    ZipBuilder b;
    b.add({"x", th::bytes_of("1"), false, 0}).add({"x/y", th::bytes_of("2"), false, 0});
    CHECK(outcome(b) == th::Outcome::kFormatError);
  }
}

TEST_CASE("ZipTreeClaims: one rule for import and direct mounting") {
  auto accepts = [](std::initializer_list<std::pair<const char *, bool>> names) {
    ZipTreeClaims claims("t.zip");
    try {
      for (const auto &[name, dir] : names) claims.claim(name, dir);
      return true;
    } catch (const FormatError &) {
      return false;
    }
  };
  CHECK(accepts({{"a", true}, {"a/b", false}, {"a/c", true}, {"a/c/d", false}, {"e", false}}));
  CHECK(accepts({{"a/b", false}, {"a", true}}));       // a directory listed after its contents
  CHECK(accepts({{"a/b/c", false}, {"a/b/d", false}}));  // implied twice
  CHECK_FALSE(accepts({{"a", false}, {"a", false}}));    // the same file twice
  CHECK_FALSE(accepts({{"a", true}, {"a", true}}));      // the same directory entry twice
  CHECK_FALSE(accepts({{"a", false}, {"a/b", false}}));  // under a file
  CHECK_FALSE(accepts({{"a/b", false}, {"a", false}}));  // a file where a directory is implied
  CHECK_FALSE(accepts({{"a/b", false}, {"a/b/c", true}}));
  ZipTreeClaims claims("t.zip");
  claims.claim("x", false);
  try {
    claims.claim("x/y", false);
    FAIL("accepted an entry under a file");
  } catch (const FormatError &e) {
    CHECK(std::string(e.what()).find("t.zip: entry 'x/y' lies under a file") != std::string::npos);
  }
}

TEST_CASE("open_zip: damaged data is an IntegrityError, never wrong bytes") {
  auto outcome = [](ZipBuilder b) {
    th::TempDir d;
    return th::isolated([&] {
      const auto pkg = open_bytes(d, b.build());
      Reader r(pkg, 16ull << 20);
      (void)read_all(r, "f");
    });
  };
  for (const bool deflate : {false, true}) {
    CAPTURE(deflate);
    ZipBuilder crc;
    crc.add({"f", th::text_bytes(4000, 3), deflate, 0});
    crc.edit_central = [](Central &c) { c.crc ^= 1; };
    CHECK(outcome(crc) == th::Outcome::kIntegrityError);

    ZipBuilder shorter;  // the stream ends before the size the directory claims
    shorter.add({"f", th::text_bytes(4000, 3), deflate, 0});
    shorter.edit_central = [](Central &c) {
      if (c.method == 8) c.size += 100;
    };
    if (deflate) CHECK(outcome(shorter) == th::Outcome::kIntegrityError);
  }
  ZipBuilder garbage;  // a multi-chunk deflated entry whose stream is damaged midway
  garbage.add({"f", th::text_bytes(3u << 20, 4), true, 0});
  garbage.edit_archive = [](Bytes &z, std::size_t cd_at) {
    for (std::size_t i = cd_at / 2; i < cd_at / 2 + 64; ++i) z[i] ^= 0xa5;
  };
  CHECK(outcome(garbage) == th::Outcome::kIntegrityError);
}
