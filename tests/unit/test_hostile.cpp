// Hostile input: mutated images of a small valid package, through Package::from_bytes and
// Package::open. A malformed package must raise FormatError (or IntegrityError where the root
// digest catches the damage first), never crash. Mutations that the root digest would catch are
// also tried with the digest recomputed, so that the semantic validators themselves are reached.
// Risky cases run in a forked child (th::isolated) so that a crash fails one check, not the binary.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <zstd.h>

#include <limits>
#include <random>

#include "helpers.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/signing.hpp"
#include "torshpkg/reader.hpp"
#include "torshpkg/writer.hpp"

using namespace torshpkg;
namespace fs = std::filesystem;
namespace f = torshpkg::format;

namespace {

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
constexpr std::uint32_t kMax32 = std::numeric_limits<std::uint32_t>::max();
constexpr unsigned kShift = 16;
constexpr std::uint32_t kCs = 1u << kShift;

// Footer field offsets.
constexpr std::size_t kFIndexOffset = 0, kFChunkCount = 8, kFInodeCount = 16, kFStringsSize = 24,
                      kFManifestSize = 32, kFReserved0 = 40, kFSigOffset = 48, kFSigSize = 56;

// A package image with accessors for its tables. The layout is taken from the valid original, so
// reroot() recomputes the digest over the same bytes a writer would have covered.
struct Image {
  th::Bytes b;
  f::Footer ft;  // as originally written
  std::uint64_t index_size = 0;

  explicit Image(th::Bytes bytes) : b(std::move(bytes)) {
    ft = f::decode_footer(std::span(b).last<f::kFooterSize>());
    index_size = ft.chunk_count * f::kChunkEntrySize + ft.inode_count * f::kInodeEntrySize + ft.strings_size +
                 ft.manifest_size;
  }
  [[nodiscard]] std::size_t chunks_at() const { return ft.index_offset; }
  [[nodiscard]] std::size_t inodes_at() const { return chunks_at() + ft.chunk_count * f::kChunkEntrySize; }
  [[nodiscard]] std::size_t strings_at() const { return inodes_at() + ft.inode_count * f::kInodeEntrySize; }
  [[nodiscard]] std::size_t manifest_at() const { return strings_at() + ft.strings_size; }
  [[nodiscard]] std::size_t manifest_end() const { return manifest_at() + ft.manifest_size; }
  [[nodiscard]] std::size_t footer_at() const { return b.size() - f::kFooterSize; }

  [[nodiscard]] f::ChunkEntry chunk(std::uint64_t i) const {
    return f::decode_chunk(std::span<const std::uint8_t>(b).subspan(chunks_at() + i * f::kChunkEntrySize).first<f::kChunkEntrySize>());
  }
  void set_chunk(std::uint64_t i, const f::ChunkEntry &c) {
    f::encode(c, std::span(b).subspan(chunks_at() + i * f::kChunkEntrySize).first<f::kChunkEntrySize>());
  }
  [[nodiscard]] f::InodeEntry inode(std::uint32_t i) const {
    return f::decode_inode(std::span<const std::uint8_t>(b).subspan(inodes_at() + std::size_t{i} * f::kInodeEntrySize).first<f::kInodeEntrySize>());
  }
  void set_inode(std::uint32_t i, const f::InodeEntry &e) {
    f::encode(e, std::span(b).subspan(inodes_at() + std::size_t{i} * f::kInodeEntrySize).first<f::kInodeEntrySize>());
  }
  [[nodiscard]] std::uint64_t footer_u64(std::size_t field) const { return load_le<std::uint64_t>(&b[footer_at() + field]); }
  void set_footer_u64(std::size_t field, std::uint64_t v) { store_le<std::uint64_t>(&b[footer_at() + field], v); }
  std::uint8_t *string_bytes(std::uint32_t off) { return &b[strings_at() + off]; }

  // SHA-256 over header[0..64) || footer[0..48) || index and manifest, stored at footer offset 64.
  void reroot() {
    Sha256 h;
    h.update(std::span(b).first(f::kHeaderSize));
    h.update(std::span(b).subspan(footer_at(), f::kFooterRootedSize));
    h.update(std::span(b).subspan(ft.index_offset, index_size));
    const auto d = h.finish();
    std::copy(d.begin(), d.end(), &b[footer_at() + 64]);
  }

  // A copy with one chunk (or inode) entry changed by `edit` and the root recomputed, so that the
  // change reaches the entry checks instead of stopping at the root digest.
  template <class Edit>
  [[nodiscard]] Image with_chunk(std::uint64_t i, Edit edit) const {
    Image img = *this;
    auto c = img.chunk(i);
    edit(c);
    img.set_chunk(i, c);
    img.reroot();
    return img;
  }
  template <class Edit>
  [[nodiscard]] Image with_inode(std::uint32_t i, Edit edit) const {
    Image img = *this;
    auto e = img.inode(i);
    edit(e);
    img.set_inode(i, e);
    img.reroot();
    return img;
  }
};

struct Small {
  th::TempDir dir;
  th::Bytes image;
  std::shared_ptr<const Package> pkg;
  std::map<std::string, std::uint32_t> ino;  // path -> inode
  std::map<std::string, th::Bytes> content;  // path -> bytes of regular files

  Small() {
    const auto src = dir / "src";
    fs::create_directories(src / "d");
    fs::create_directories(src / "emptydir");
    content["d/a.txt"] = th::text_bytes(100'000, 1);       // 2 zstd chunks
    content["d/b.bin"] = th::random_bytes(70'000, 2);      // 2 stored chunks
    content["d/c.txt"] = th::bytes_of("hello");            // 1 stored chunk
    content["e"] = {};                                     // no chunks
    content["z.json"] = th::bytes_of(R"({"k": "v", "n": [1, 2, 3]})");
    for (const auto &[path, data] : content) th::write_file(src / path, data);
    fs::create_symlink("d/a.txt", src / "link");
    PackOptions o;
    o.source_dir = src.string();
    o.output = (dir / "small.tpkg").string();
    o.name = "small";
    o.chunk_shift = kShift;
    o.threads = 2;
    (void)pack(o);
    image = th::read_file(o.output);
    pkg = Package::from_bytes(image, "small");
    for (const char *p : {"d", "d/a.txt", "d/b.bin", "d/c.txt", "e", "emptydir", "link", "z.json"})
      ino[p] = pkg->resolve(p).value();
  }
};

Small &small() {
  static Small s;
  return s;
}

std::string outcome_from_bytes(const th::Bytes &img) {
  return th::outcome_name(th::isolated([&] { (void)Package::from_bytes(img, "hostile"); }));
}

std::string outcome_open(const th::Bytes &img) {
  th::TempDir dir;
  const auto path = dir / "hostile.tpkg";
  th::write_file(path, img);
  return th::outcome_name(th::isolated([&] { (void)Package::open(path.string()); }));
}

// The image must be refused with FormatError, both from memory and from a file, without crashing.
#define CHECK_FORMAT_ERROR(img)                                   \
  do {                                                            \
    const th::Bytes &image_ = (img);                              \
    CHECK(outcome_from_bytes(image_) == std::string("FormatError")); \
    CHECK(outcome_open(image_) == std::string("FormatError"));       \
  } while (0)

// Opens the image and uses every part of it: names, paths, lookups, every file's bytes.
// Throws only torshpkg errors; returns normally when everything read is consistent.
void exercise(const th::Bytes &img) {
  const auto p = Package::from_bytes(img, "fuzz");
  Reader r(p, 1 << 20);
  for (std::uint32_t i = 0; i < p->inode_count(); ++i) {
    const auto path = p->path_of(i);
    if (p->resolve(path) != std::optional<std::uint32_t>(i)) throw std::runtime_error("resolve(path_of) mismatch");
    (void)p->name(i);
    const auto e = p->inode(i);
    switch (p->type(i)) {
      case f::NodeType::kDirectory:
        for (std::uint64_t k = 0; k < e.size; ++k) {
          const auto c = static_cast<std::uint32_t>(e.first + k);
          if (p->lookup(i, p->name(c)) != std::optional<std::uint32_t>(c)) throw std::runtime_error("lookup mismatch");
        }
        break;
      case f::NodeType::kSymlink: (void)p->symlink_target(i); break;
      case f::NodeType::kRegular: {
        th::Bytes buf(static_cast<std::size_t>(std::min<std::uint64_t>(e.size, 1 << 22)));
        try {
          if (r.read(i, 0, buf) != buf.size()) throw std::runtime_error("short read");
          if (e.size > 10) (void)r.read(i, e.size - 10, std::span(buf).first(10));
        } catch (const IntegrityError &) {
        }
        break;
      }
    }
  }
  (void)p->manifest_text();
}

}  // namespace

TEST_SUITE("hostile") {

TEST_CASE("the small package is valid and its image helpers agree with Package") {
  auto &s = small();
  Image img(s.image);
  CHECK(img.ft.index_offset == s.pkg->footer().index_offset);
  CHECK(img.manifest_end() == img.footer_at());
  CHECK(img.chunk(0).offset == s.pkg->chunk(0).offset);
  CHECK(img.inode(s.ino["d/a.txt"]).size == 100'000);
  auto copy = img;
  copy.reroot();
  CHECK(copy.b == s.image);  // reroot reproduces the writer's digest
  CHECK(outcome_from_bytes(s.image) == std::string("no exception"));
  CHECK(outcome_open(s.image) == std::string("no exception"));
  CHECK(th::outcome_name(th::isolated([&] { exercise(s.image); })) == std::string("no exception"));
  CHECK(s.pkg->chunk_count() == 6);
  CHECK(s.pkg->chunk(s.pkg->inode(s.ino["d/a.txt"]).first).codec == f::Codec::kZstd);
  CHECK(s.pkg->chunk(s.pkg->inode(s.ino["d/b.bin"]).first).codec == f::Codec::kStored);
  CHECK(s.pkg->chunk(s.pkg->inode(s.ino["d/c.txt"]).first).codec == f::Codec::kStored);
}

TEST_CASE("truncation at every section boundary and at many random lengths") {
  auto &s = small();
  const Image img(s.image);
  std::vector<std::size_t> cuts = {0, 1, 8, 63, 64, 65, 191, 192, 193};
  for (std::uint64_t i = 0; i < img.ft.chunk_count; ++i) {
    const auto c = img.chunk(i);
    cuts.push_back(c.offset);
    cuts.push_back(c.offset + c.stored_size - 1);
  }
  for (std::size_t at : {img.chunks_at(), img.inodes_at(), img.strings_at(), img.manifest_at(), img.footer_at()}) {
    cuts.push_back(at - 1);
    cuts.push_back(at);
    cuts.push_back(at + 1);
  }
  for (std::size_t k = 1; k < f::kFooterSize; k += 7) cuts.push_back(img.footer_at() + k);
  cuts.push_back(s.image.size() - 1);
  std::mt19937_64 rng(2024);
  for (int i = 0; i < 300; ++i) cuts.push_back(rng() % s.image.size());
  std::size_t n = 0;
  for (const auto len : cuts) {
    if (len >= s.image.size()) continue;
    CAPTURE(len);
    const th::Bytes cut(s.image.begin(), s.image.begin() + static_cast<std::ptrdiff_t>(len));
    CHECK_THROWS_AS((void)Package::from_bytes(cut, "cut"), FormatError);
    ++n;
  }
  CHECK(n > 300);
  // Through files too (a subset: every boundary and some random lengths).
  th::TempDir dir;
  for (std::size_t i = 0; i < cuts.size(); i += 3) {
    const auto len = cuts[i];
    if (len >= s.image.size()) continue;
    CAPTURE(len);
    th::write_file(dir / "cut.tpkg", std::span(s.image).first(len));
    CHECK_THROWS_AS((void)Package::open((dir / "cut.tpkg").string()), FormatError);
  }
}

TEST_CASE("bytes added before or after the package") {
  auto &s = small();
  auto longer = s.image;
  longer.push_back(0);
  CHECK_THROWS_AS((void)Package::from_bytes(longer, "x"), FormatError);
  auto appended = s.image;
  appended.insert(appended.end(), s.image.end() - 128, s.image.end());  // a second footer
  CHECK_THROWS_AS((void)Package::from_bytes(appended, "x"), FormatError);
  auto prepended = th::bytes_of("#!/bin/sh\n");
  prepended.insert(prepended.end(), s.image.begin(), s.image.end());
  CHECK_THROWS_AS((void)Package::from_bytes(prepended, "x"), FormatError);
}

TEST_CASE("every footer field at 0, UINT64_MAX, off by one and overflowing values") {
  auto &s = small();
  const Image orig(s.image);
  const std::uint64_t chunks_bytes = orig.ft.chunk_count * f::kChunkEntrySize;
  const std::uint64_t inodes_bytes = orig.ft.inode_count * f::kInodeEntrySize;
  struct Case {
    std::size_t field;
    std::uint64_t value;
  };
  std::vector<Case> cases;
  for (std::size_t field : {kFIndexOffset, kFChunkCount, kFInodeCount, kFStringsSize, kFManifestSize, kFReserved0,
                            kFSigOffset, kFSigSize}) {
    const auto v = orig.footer_u64(field);
    for (std::uint64_t x : {std::uint64_t{0}, kMax, kMax - 1, v + 1, v - 1, v + 2, v * 2, std::uint64_t{1} << 32,
                            std::uint64_t{1} << 63, (std::uint64_t{1} << 32) - 1, std::uint64_t{1} << 40})
      cases.push_back({field, x});
  }
  // Values that overflow when multiplied or added by a careless reader.
  cases.push_back({kFIndexOffset, kMax - orig.index_size + 1});
  cases.push_back({kFIndexOffset, kMax - 63});
  cases.push_back({kFChunkCount, kMax / f::kChunkEntrySize + 1});
  cases.push_back({kFInodeCount, kMax / f::kInodeEntrySize + 1});
  cases.push_back({kFInodeCount, (1ull << 32) - 16});
  cases.push_back({kFStringsSize, kMax - chunks_bytes - inodes_bytes + 1});
  cases.push_back({kFManifestSize, kMax - chunks_bytes - inodes_bytes - orig.ft.strings_size + 1});
  cases.push_back({kFManifestSize, f::kMaxManifestSize + 1});
  cases.push_back({kFSigOffset, orig.manifest_end() + 1});
  for (const auto &c : cases) {
    if (c.value == orig.footer_u64(c.field)) continue;
    CAPTURE(c.field);
    CAPTURE(c.value);
    Image img = orig;
    img.set_footer_u64(c.field, c.value);
    CHECK_THROWS_AS((void)Package::from_bytes(img.b, "x"), FormatError);
    img.reroot();
    CHECK_THROWS_AS((void)Package::from_bytes(img.b, "x"), FormatError);
  }
  SUBCASE("signature block fields together") {
    const std::uint64_t end = orig.manifest_end();
    for (auto [off, size] : std::initializer_list<std::pair<std::uint64_t, std::uint64_t>>{
             {end, kMax}, {end, kMax - end + 1}, {end, 1}, {end, 128}, {end - 1, 1}, {0, 1}, {kMax, kMax}, {kMax, 0},
             {1, 0}}) {
      CAPTURE(off);
      CAPTURE(size);
      Image img = orig;
      img.set_footer_u64(kFSigOffset, off);
      img.set_footer_u64(kFSigSize, size);
      CHECK_THROWS_AS((void)Package::from_bytes(img.b, "x"), FormatError);
    }
  }
  SUBCASE("several fields shifted consistently still do not tile the file") {
    // index_offset - 10 and manifest_size + 10: the sections tile the file again, and the digest
    // is recomputed over the region this footer describes; the tables are now misaligned.
    Image img = orig;
    img.set_footer_u64(kFIndexOffset, orig.ft.index_offset - 10);
    img.set_footer_u64(kFManifestSize, orig.ft.manifest_size + 10);
    Image re(img.b);
    re.reroot();
    CHECK(outcome_from_bytes(re.b) == std::string("FormatError"));
  }
}

TEST_CASE("a signature block between manifest and footer is accepted (it is not rooted)") {
  auto &s = small();
  const Image orig(s.image);
  auto b = s.image;
  const auto sig = encode_signature_block(std::vector{PrivateKey::generate().sign(orig.ft.root_digest)});
  b.insert(b.begin() + static_cast<std::ptrdiff_t>(orig.footer_at()), sig.begin(), sig.end());
  store_le<std::uint64_t>(&b[b.size() - f::kFooterSize + kFSigOffset], orig.manifest_end());
  store_le<std::uint64_t>(&b[b.size() - f::kFooterSize + kFSigSize], sig.size());
  const auto p = Package::from_bytes(b, "signed");
  CHECK(p->footer().signature_size == sig.size());
  CHECK(p->signatures().size() == 1);
  CHECK(p->resolve("d/a.txt").has_value());
  // A signature size that disagrees with the actual block is refused.
  store_le<std::uint64_t>(&b[b.size() - f::kFooterSize + kFSigSize], sig.size() - 1);
  CHECK_THROWS_AS((void)Package::from_bytes(b, "signed"), FormatError);
  // So are bytes that are not a signature block, and a block beyond the size limit.
  auto junk = s.image;
  const th::Bytes noise = th::random_bytes(sigblock::kHeaderSize + sigblock::kEntrySize, 5);
  junk.insert(junk.begin() + static_cast<std::ptrdiff_t>(orig.footer_at()), noise.begin(), noise.end());
  store_le<std::uint64_t>(&junk[junk.size() - f::kFooterSize + kFSigOffset], orig.manifest_end());
  store_le<std::uint64_t>(&junk[junk.size() - f::kFooterSize + kFSigSize], noise.size());
  CHECK_THROWS_AS((void)Package::from_bytes(junk, "junk"), FormatError);
  auto huge = s.image;
  huge.insert(huge.begin() + static_cast<std::ptrdiff_t>(orig.footer_at()), sigblock::kMaxSize + 1, 0);
  store_le<std::uint64_t>(&huge[huge.size() - f::kFooterSize + kFSigOffset], orig.manifest_end());
  store_le<std::uint64_t>(&huge[huge.size() - f::kFooterSize + kFSigSize], sigblock::kMaxSize + 1);
  CHECK_THROWS_WITH_AS((void)Package::from_bytes(huge, "huge"), doctest::Contains("limit"), FormatError);
}

TEST_CASE("header fields: refused or caught by the root digest") {
  auto &s = small();
  const Image orig(s.image);
  SUBCASE("every single bit of the header") {
    for (std::size_t bit = 0; bit < f::kHeaderSize * 8; ++bit) {
      CAPTURE(bit);
      auto b = s.image;
      b[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
      bool caught = false;
      try {
        (void)Package::from_bytes(b, "x");
      } catch (const FormatError &) {
        caught = true;
      } catch (const IntegrityError &) {
        caught = true;
      }
      CHECK(caught);
    }
  }
  SUBCASE("with the digest recomputed") {
    auto with = [&](auto mutate) {
      Image img = orig;
      mutate(img.b);
      img.reroot();
      return outcome_from_bytes(img.b);
    };
    CHECK(with([](th::Bytes &b) { b[0] = 0; }) == std::string("FormatError"));
    CHECK(with([](th::Bytes &b) { store_le<std::uint16_t>(&b[8], 2); }) == std::string("FormatError"));
    CHECK(with([](th::Bytes &b) { store_le<std::uint32_t>(&b[12], 65); }) == std::string("FormatError"));
    CHECK(with([](th::Bytes &b) { store_le<std::uint64_t>(&b[24], f::incompat::kEncrypted); }) == std::string("FormatError"));
    CHECK(with([](th::Bytes &b) { store_le<std::uint64_t>(&b[24], f::incompat::kBaseRefs); }) == std::string("FormatError"));
    CHECK(with([](th::Bytes &b) { store_le<std::uint64_t>(&b[24], f::incompat::kFilters | f::incompat::kEncrypted); }) ==
          std::string("FormatError"));
    CHECK(with([](th::Bytes &b) { store_le<std::uint64_t>(&b[24], 1ull << 40); }) == std::string("FormatError"));
    // Declaring filters without using any is fine.
    CHECK(with([](th::Bytes &b) { store_le<std::uint64_t>(&b[24], f::incompat::kFilters); }) == std::string("no exception"));
    for (std::uint8_t shift : {std::uint8_t{0}, std::uint8_t{15}, std::uint8_t{17}, std::uint8_t{20}, std::uint8_t{22},
                               std::uint8_t{23}, std::uint8_t{255}}) {
      CAPTURE(shift);
      CHECK(with([shift](th::Bytes &b) { b[32] = shift; }) == std::string("FormatError"));
    }
    // Additive changes a reader must accept: a newer minor version, unknown compat flags, padding.
    CHECK(with([](th::Bytes &b) { store_le<std::uint16_t>(&b[10], 9); }) == std::string("no exception"));
    CHECK(with([](th::Bytes &b) { store_le<std::uint64_t>(&b[16], kMax); }) == std::string("no exception"));
  }
}

TEST_CASE("every single bit of the footer") {
  auto &s = small();
  const Image orig(s.image);
  for (std::size_t bit = 0; bit < f::kFooterSize * 8; ++bit) {
    const std::size_t byte = bit / 8;
    CAPTURE(byte);
    CAPTURE(bit % 8);
    auto b = s.image;
    b[orig.footer_at() + byte] ^= static_cast<std::uint8_t>(1u << (bit % 8));
    std::string got = "no exception";
    try {
      (void)Package::from_bytes(b, "x");
    } catch (const FormatError &) {
      got = "FormatError";
    } catch (const IntegrityError &) {
      got = "IntegrityError";
    }
    if (byte < 64)
      CHECK(got == "FormatError");  // sizes and signature fields: the sections no longer tile the file
    else if (byte < 96)
      CHECK(got == "IntegrityError");  // the root digest itself
    else if (byte < 102 || byte >= 104)
      CHECK(got == "FormatError");  // footer size, major version, reserved bytes (must be zero), magic
    else
      CHECK(got == "no exception");  // minor version: any is accepted
  }
}

TEST_CASE("a random bit flip anywhere in the index and manifest is an IntegrityError") {
  auto &s = small();
  const Image orig(s.image);
  std::mt19937_64 rng(77);
  const std::size_t span = orig.footer_at() - orig.chunks_at();
  for (int i = 0; i < 400; ++i) {
    const std::size_t at = orig.chunks_at() + rng() % span;
    const unsigned bit = rng() % 8;
    CAPTURE(at);
    auto b = s.image;
    b[at] ^= static_cast<std::uint8_t>(1u << bit);
    CHECK_THROWS_AS((void)Package::from_bytes(b, "x"), IntegrityError);
  }
  // And through a file.
  auto b = s.image;
  b[orig.inodes_at() + 3] ^= 0x10;
  th::TempDir dir;
  th::write_file(dir / "p.tpkg", b);
  CHECK_THROWS_AS((void)Package::open((dir / "p.tpkg").string()), IntegrityError);
}

TEST_CASE("damaged chunk data: the package opens, the chunk fails with IntegrityError") {
  auto &s = small();
  const Image orig(s.image);
  for (const std::string path : {"d/a.txt", "d/b.bin", "d/c.txt", "z.json"}) {
    CAPTURE(path);
    const auto ino = s.ino[path];
    const auto first = s.pkg->inode(ino).first;
    const auto c = orig.chunk(first);
    for (std::uint64_t where : {std::uint64_t{0}, std::uint64_t{c.stored_size / 2}, std::uint64_t{c.stored_size - 1}}) {
      CAPTURE(where);
      auto b = s.image;
      b[c.offset + where] ^= 0x01;
      std::shared_ptr<const Package> p;
      REQUIRE_NOTHROW(p = Package::from_bytes(b, "damaged"));
      th::Bytes out(c.decoded_size);
      CHECK_THROWS_AS(p->load_chunk(first, out), IntegrityError);
      Reader r(p, 1 << 20);
      th::Bytes buf(10);
      try {
        (void)r.read(ino, 0, buf);
        FAIL("read of a damaged chunk did not throw");
      } catch (const IntegrityError &e) {
        CHECK(th::contains(e.what(), path));  // the message names the file
      }
      // Other files still read fine.
      for (const auto &[other, data] : s.content) {
        if (other == path || data.empty()) continue;
        th::Bytes all(data.size());
        CHECK(r.read(s.ino[other], 0, all) == data.size());
        CHECK(all == data);
      }
    }
  }
  // Through a file as well.
  auto b = s.image;
  const auto c = orig.chunk(s.pkg->inode(s.ino["d/b.bin"]).first);
  b[c.offset + 7] ^= 0x80;
  th::TempDir dir;
  th::write_file(dir / "p.tpkg", b);
  const auto p = Package::open((dir / "p.tpkg").string());
  Reader r(p, 1 << 20);
  th::Bytes buf(100);
  CHECK_THROWS_AS((void)r.read(s.ino["d/b.bin"], 0, buf), IntegrityError);
  CHECK(r.read(s.ino["d/b.bin"], kCs, buf) == 100);  // the second chunk is intact
}

TEST_CASE("chunk table entries, digest recomputed: FormatError") {
  auto &s = small();
  const Image orig(s.image);
  const auto a_first = orig.inode(s.ino["d/a.txt"]).first;   // zstd, 2 chunks
  const auto b_first = orig.inode(s.ino["d/b.bin"]).first;   // stored, 2 chunks
  const auto ca = orig.chunk(a_first);
  const auto cb = orig.chunk(b_first);
  auto mutate = [&](std::uint64_t index, auto fn) { return orig.with_chunk(index, fn); };
  SUBCASE("offset beyond or outside the data section") {
    for (std::uint64_t off : {orig.ft.index_offset, orig.ft.index_offset - ca.stored_size + 1, kMax,
                              kMax - ca.stored_size + 1, std::uint64_t{0}, std::uint64_t{63}, std::uint64_t{1} << 40,
                              static_cast<std::uint64_t>(s.image.size())}) {
      CAPTURE(off);
      CHECK_FORMAT_ERROR(mutate(a_first, [&](f::ChunkEntry &c) { c.offset = off; }).b);
    }
  }
  SUBCASE("stored_size 0, too large") {
    for (std::uint32_t sz : {0u, kMax32, static_cast<std::uint32_t>(ZSTD_compressBound(kCs) + 1), 1u << 30}) {
      CAPTURE(sz);
      CHECK_FORMAT_ERROR(mutate(a_first, [&](f::ChunkEntry &c) { c.stored_size = sz; }).b);
    }
  }
  SUBCASE("decoded_size 0, larger than the chunk size, or not what the file needs") {
    for (std::uint32_t sz : {0u, kCs + 1, kMax32, kCs - 1, 1u}) {
      CAPTURE(sz);
      CHECK_FORMAT_ERROR(mutate(a_first, [&](f::ChunkEntry &c) { c.decoded_size = sz; }).b);
    }
  }
  SUBCASE("unknown codec, filter or flags") {
    for (unsigned codec : {2u, 7u, 255u}) {
      CAPTURE(codec);
      CHECK_FORMAT_ERROR(mutate(a_first, [&](f::ChunkEntry &c) { c.codec = static_cast<f::Codec>(codec); }).b);
    }
    // Known filters, but the header does not declare kFilters; unknown filter ids.
    for (unsigned filter : {1u, 2u, 3u, 4u, 255u}) {
      CAPTURE(filter);
      CHECK_FORMAT_ERROR(mutate(a_first, [&](f::ChunkEntry &c) { c.filter = static_cast<f::Filter>(filter); }).b);
    }
    // With kFilters declared: a filter on a stored chunk, or an unknown id, is still refused.
    auto declared = [&](std::uint64_t index, unsigned filter) {
      Image img = orig;
      store_le<std::uint64_t>(&img.b[24], f::incompat::kFilters);
      auto c = img.chunk(index);
      c.filter = static_cast<f::Filter>(filter);
      img.set_chunk(index, c);
      img.reroot();
      return img.b;
    };
    CHECK_FORMAT_ERROR(declared(b_first, 1));  // stored codec
    CHECK_FORMAT_ERROR(declared(a_first, 4));
    CHECK_FORMAT_ERROR(declared(a_first, 255));
    // A known filter on a zstd chunk that was not filtered: the package opens, the read fails.
    const auto img = declared(a_first, 3);
    CHECK(outcome_from_bytes(img) == std::string("no exception"));
    const auto p = Package::from_bytes(img, "x");
    th::Bytes out(ca.decoded_size);
    CHECK_THROWS_AS(p->load_chunk(a_first, out), IntegrityError);
    for (std::uint16_t flags : {std::uint16_t{f::kChunkFlagBaseRef}, std::uint16_t{0x8000}, std::uint16_t{0xffff}}) {
      CAPTURE(flags);
      CHECK_FORMAT_ERROR(mutate(a_first, [&](f::ChunkEntry &c) { c.flags = flags; }).b);
    }
  }
  SUBCASE("a stored chunk whose sizes differ") {
    CHECK_FORMAT_ERROR(mutate(b_first, [&](f::ChunkEntry &c) { c.stored_size = cb.stored_size - 1; }).b);
    CHECK_FORMAT_ERROR(mutate(a_first, [&](f::ChunkEntry &c) { c.codec = f::Codec::kStored; }).b);
  }
  SUBCASE("chunk counts in the footer disagree with the files") {
    Image img = orig;  // drop the last chunk entry: the table shrinks, the files still claim it
    img.b.erase(img.b.begin() + static_cast<std::ptrdiff_t>(img.inodes_at() - f::kChunkEntrySize),
                img.b.begin() + static_cast<std::ptrdiff_t>(img.inodes_at()));
    const auto foot = img.b.size() - f::kFooterSize;
    store_le<std::uint64_t>(&img.b[foot + kFChunkCount], orig.ft.chunk_count - 1);
    Image re(img.b);  // layout of the edited image
    re.reroot();
    CHECK_FORMAT_ERROR(re.b);
  }
  SUBCASE("the same stored bytes under two entries that disagree on the codec") {
    // Stored bytes of a zstd chunk, also claimed as 'stored' by another entry: sizes must still agree
    // with the file, so this reaches the decoded/stored size checks.
    CHECK_FORMAT_ERROR(mutate(b_first + 1, [&](f::ChunkEntry &c) {
                         c.offset = ca.offset;
                         c.codec = f::Codec::kStored;
                         c.stored_size = ca.stored_size;
                       }).b);
  }
}

TEST_CASE("chunk runs of files, digest recomputed: FormatError") {
  auto &s = small();
  const Image orig(s.image);
  const auto ia = s.ino["d/a.txt"], ib = s.ino["d/b.bin"], ic = s.ino["d/c.txt"], ie = s.ino["e"],
             iz = s.ino["z.json"];
  auto mutate = [&](std::uint32_t ino, auto fn) { return orig.with_inode(ino, fn); };
  const auto a = orig.inode(ia), b = orig.inode(ib);
  SUBCASE("a run that does not follow the previous file's") {
    CHECK_FORMAT_ERROR(mutate(ib, [&](f::InodeEntry &e) { e.first = a.first; }).b);      // overlaps a.txt
    CHECK_FORMAT_ERROR(mutate(ib, [&](f::InodeEntry &e) { e.first = b.first + 1; }).b);  // leaves a gap
    CHECK_FORMAT_ERROR(mutate(ia, [&](f::InodeEntry &e) { e.first = 0; }).b);
    CHECK_FORMAT_ERROR(mutate(ic, [&](f::InodeEntry &e) { e.first = kMax32; }).b);
    CHECK_FORMAT_ERROR(mutate(iz, [&](f::InodeEntry &e) { e.first = 1; }).b);
    Image img = orig;  // swap the runs of a.txt and b.bin (both 2 chunks)
    auto ea = img.inode(ia), eb = img.inode(ib);
    std::swap(ea.first, eb.first);
    img.set_inode(ia, ea);
    img.set_inode(ib, eb);
    img.reroot();
    CHECK_FORMAT_ERROR(img.b);
  }
  SUBCASE("file sizes that disagree with the chunks") {
    for (std::uint64_t size : {a.size + 1, a.size - 1, std::uint64_t{kCs}, std::uint64_t{2} * kCs,
                               std::uint64_t{2} * kCs + 1, std::uint64_t{0}, kMax, kMax - kCs + 2,
                               std::uint64_t{1} << 48}) {
      CAPTURE(size);
      CHECK_FORMAT_ERROR(mutate(ia, [&](f::InodeEntry &e) { e.size = size; }).b);
    }
    CHECK_FORMAT_ERROR(mutate(ie, [&](f::InodeEntry &e) { e.size = 5; }).b);
    CHECK_FORMAT_ERROR(mutate(ic, [&](f::InodeEntry &e) { e.size = 0; }).b);  // its chunk belongs to no file
  }
}

TEST_CASE("inode table entries, digest recomputed: FormatError") {
  auto &s = small();
  const Image orig(s.image);
  const auto n = static_cast<std::uint32_t>(orig.ft.inode_count);
  const auto id = s.ino["d"], ia = s.ino["d/a.txt"], ib = s.ino["d/b.bin"], ic = s.ino["d/c.txt"],
             il = s.ino["link"], iz = s.ino["z.json"], iempty = s.ino["emptydir"];
  auto mutate = [&](std::uint32_t ino, auto fn) { return orig.with_inode(ino, fn); };
  SUBCASE("an inode whose parent follows it, or is not a directory") {
    for (std::uint32_t parent : {ia, ia + 1, n - 1, n, kMax32, iz, il}) {
      CAPTURE(parent);
      CHECK_FORMAT_ERROR(mutate(ia, [&](f::InodeEntry &e) { e.parent = parent; }).b);
    }
    CHECK_FORMAT_ERROR(mutate(id, [&](f::InodeEntry &e) { e.parent = id; }).b);
    CHECK_FORMAT_ERROR(mutate(iz, [&](f::InodeEntry &e) { e.parent = id; }).b);  // claims a parent that does not list it
  }
  SUBCASE("names breaking a rule") {
    const auto a = orig.inode(ia);  // "a.txt", first of d's 3 children
    auto with_name = [&](std::string_view nm) {
      Image img = orig;
      // Write the new name over the old one (it fits: at most 5 bytes) and set its length.
      REQUIRE(nm.size() <= a.name_length);
      std::copy(nm.begin(), nm.end(), img.string_bytes(a.name_offset));
      auto e = img.inode(ia);
      e.name_length = static_cast<std::uint32_t>(nm.size());
      img.set_inode(ia, e);
      img.reroot();
      return img.b;
    };
    CHECK_FORMAT_ERROR(with_name("a/txt"));
    CHECK_FORMAT_ERROR(with_name("/"));
    CHECK_FORMAT_ERROR(with_name(".."));
    CHECK_FORMAT_ERROR(with_name("."));
    CHECK_FORMAT_ERROR(with_name(""));
    CHECK_FORMAT_ERROR(with_name(std::string("a\0txt", 5)));
    CHECK_FORMAT_ERROR(with_name("a\xff"));
    CHECK_FORMAT_ERROR(with_name("\xc0\xae"));  // overlong '.'
    CHECK_FORMAT_ERROR(with_name("\xed\xa0\x80"));
  }
  SUBCASE("a name running past the end of the string table (by a little)") {
    // Values whose bytes still lie inside the index buffer (string table or manifest), so that the
    // early sibling comparison reads valid memory; the range check must then refuse them.
    const auto ss = static_cast<std::uint32_t>(orig.ft.strings_size);
    for (auto [off, len] : std::initializer_list<std::pair<std::uint32_t, std::uint32_t>>{
             {ss, 1}, {ss - 1, 2}, {0, ss + 1}, {0, 256}}) {
      CAPTURE(off);
      CAPTURE(len);
      CHECK_FORMAT_ERROR(mutate(iz, [&](f::InodeEntry &e) {
                           e.name_offset = off;
                           e.name_length = len;
                         }).b);
    }
  }
  SUBCASE("a directory whose children are unsorted or duplicated") {
    Image img = orig;  // swap the names of a.txt and b.bin
    auto ea = img.inode(ia), eb = img.inode(ib);
    std::swap(ea.name_offset, eb.name_offset);
    std::swap(ea.name_length, eb.name_length);
    img.set_inode(ia, ea);
    img.set_inode(ib, eb);
    img.reroot();
    CHECK_FORMAT_ERROR(img.b);
    const auto eb0 = orig.inode(ib);
    CHECK_FORMAT_ERROR(mutate(ic, [&](f::InodeEntry &e) {  // c.txt named like b.bin
                         e.name_offset = eb0.name_offset;
                         e.name_length = eb0.name_length;
                       }).b);
    CHECK_FORMAT_ERROR(mutate(ia, [&](f::InodeEntry &e) {  // a.txt named like b.bin
                         e.name_offset = eb0.name_offset;
                         e.name_length = eb0.name_length;
                       }).b);
  }
  SUBCASE("directory child ranges") {
    const auto d = orig.inode(id);
    for (std::uint64_t size : {d.size + 1, d.size - 1, std::uint64_t{0}, kMax, std::uint64_t{n}}) {
      CAPTURE(size);
      CHECK_FORMAT_ERROR(mutate(id, [&](f::InodeEntry &e) { e.size = size; }).b);
    }
    for (std::uint32_t first : {0u, id, d.first - 1, d.first + 1, n - 1, n, kMax32}) {
      CAPTURE(first);
      CHECK_FORMAT_ERROR(mutate(id, [&](f::InodeEntry &e) { e.first = first; }).b);
    }
    for (std::uint64_t size : {std::uint64_t{1}, std::uint64_t{3}}) {  // an empty directory claiming children
      CAPTURE(size);
      CHECK_FORMAT_ERROR(mutate(iempty, [&](f::InodeEntry &e) {
                           e.size = size;
                           e.first = ia;
                         }).b);
    }
    const auto root = orig.inode(0);
    CHECK_FORMAT_ERROR(mutate(0, [&](f::InodeEntry &e) { e.size = root.size - 1; }).b);  // an orphan
    CHECK_FORMAT_ERROR(mutate(0, [&](f::InodeEntry &e) { e.size = root.size + 1; }).b);
  }
  SUBCASE("symlink targets out of the string table or unacceptable") {
    const auto ss = orig.ft.strings_size;
    const auto l = orig.inode(il);
    for (auto [first, size] : std::initializer_list<std::pair<std::uint32_t, std::uint64_t>>{
             {static_cast<std::uint32_t>(ss), 1}, {static_cast<std::uint32_t>(ss - 1), 2}, {0, ss + 1},
             {kMax32, 1}, {l.first, kMax}, {l.first, std::uint64_t{1} << 32}, {l.first, 0}, {0, 4096}}) {
      CAPTURE(first);
      CAPTURE(size);
      CHECK_FORMAT_ERROR(mutate(il, [&](f::InodeEntry &e) {
                           e.first = first;
                           e.size = size;
                         }).b);
    }
    Image img = orig;  // a NUL inside the target
    img.string_bytes(l.first)[1] = 0;
    img.reroot();
    CHECK_FORMAT_ERROR(img.b);
  }
  SUBCASE("modes, kinds, reserved fields, times") {
    for (std::uint32_t mode : {std::uint32_t{0}, std::uint32_t{0644}, std::uint32_t{S_IFIFO | 0644},
                               std::uint32_t{S_IFCHR | 0644}, std::uint32_t{S_IFSOCK | 0644},
                               std::uint32_t{S_IFDIR | 0755}, std::uint32_t{S_IFLNK | 0777}, kMax32}) {
      CAPTURE(mode);
      CHECK_FORMAT_ERROR(mutate(ia, [&](f::InodeEntry &e) { e.mode = mode; }).b);
    }
    CHECK_FORMAT_ERROR(mutate(id, [&](f::InodeEntry &e) { e.mode = S_IFREG | 0755; }).b);
    CHECK_FORMAT_ERROR(mutate(il, [&](f::InodeEntry &e) { e.mode = S_IFREG | 0644; }).b);
    CHECK_FORMAT_ERROR(mutate(ia, [&](f::InodeEntry &e) { e.kind = static_cast<f::FileKind>(6); }).b);
    CHECK_FORMAT_ERROR(mutate(ia, [&](f::InodeEntry &e) { e.kind = static_cast<f::FileKind>(255); }).b);
    CHECK_FORMAT_ERROR(mutate(ia, [&](f::InodeEntry &e) { e.flags = 1; }).b);
    CHECK_FORMAT_ERROR(mutate(ia, [&](f::InodeEntry &e) { e.reserved = 1; }).b);
    CHECK_FORMAT_ERROR(mutate(ia, [&](f::InodeEntry &e) { e.mtime_nsec = 1'000'000'000; }).b);
    CHECK_FORMAT_ERROR(mutate(ia, [&](f::InodeEntry &e) { e.mtime_nsec = kMax32; }).b);
  }
  SUBCASE("the root") {
    CHECK_FORMAT_ERROR(mutate(0, [&](f::InodeEntry &e) { e.mode = S_IFREG | 0644; }).b);
    CHECK_FORMAT_ERROR(mutate(0, [&](f::InodeEntry &e) { e.mode = S_IFLNK | 0777; }).b);
    CHECK_FORMAT_ERROR(mutate(0, [&](f::InodeEntry &e) { e.parent = 1; }).b);
    CHECK_FORMAT_ERROR(mutate(0, [&](f::InodeEntry &e) { e.name_length = 1; }).b);
    CHECK_FORMAT_ERROR(mutate(0, [&](f::InodeEntry &e) { e.first = 0; }).b);
  }
  SUBCASE("harmless changes still open") {
    // Permission bits, times and kinds are not structural.
    CHECK(outcome_from_bytes(mutate(ia, [&](f::InodeEntry &e) { e.mode = S_IFREG | 0777; }).b) ==
          std::string("no exception"));
    CHECK(outcome_from_bytes(mutate(ia, [&](f::InodeEntry &e) { e.mtime_sec = -1; }).b) ==
          std::string("no exception"));
    CHECK(outcome_from_bytes(mutate(ia, [&](f::InodeEntry &e) { e.kind = f::FileKind::kData; }).b) ==
          std::string("no exception"));
  }
}

// Reserved and padding bytes must be zero (the hardening of commit 53fddd1). NOTE: docs/FORMAT.md
// ("Reserved and padding fields", header/chunk/inode/footer tables) still says a reader does NOT
// check header bytes 33..63, chunk bytes 20..23, inode bytes 30..31 or footer bytes 104..119; if the
// document wins, this test case must change.
TEST_CASE("reserved and padding bytes must be zero (digest recomputed where rooted)") {
  auto &s = small();
  const Image orig(s.image);
  auto rooted = [&](std::size_t at) {
    Image img = orig;
    img.b[at] = 0x01;
    img.reroot();
    return img.b;
  };
  for (std::size_t at : {std::size_t{33}, std::size_t{40}, std::size_t{63}}) {
    CAPTURE(at);
    CHECK_FORMAT_ERROR(rooted(at));  // header reserved
  }
  for (std::size_t k : {std::size_t{20}, std::size_t{23}}) {
    CAPTURE(k);
    CHECK_FORMAT_ERROR(rooted(orig.chunks_at() + 2 * f::kChunkEntrySize + k));  // chunk padding
  }
  for (std::size_t k : {std::size_t{30}, std::size_t{31}}) {
    CAPTURE(k);
    CHECK_FORMAT_ERROR(rooted(orig.inodes_at() + s.ino["d/b.bin"] * f::kInodeEntrySize + k));  // inode padding
  }
  for (std::size_t k : {std::size_t{104}, std::size_t{111}, std::size_t{119}}) {  // footer reserved: not rooted
    CAPTURE(k);
    auto b = s.image;
    b[orig.footer_at() + k] = 0x80;
    CHECK(outcome_from_bytes(b) == std::string("FormatError"));
  }
}

TEST_CASE("mode bits, empty files and directories, shared stored bytes, the reserved root name") {
  auto &s = small();
  const Image orig(s.image);
  auto mutate_inode = [&](std::uint32_t ino, auto fn) { return orig.with_inode(ino, fn).b; };
  SUBCASE("mode bits other than the type and 0777") {
    for (std::uint32_t extra : {std::uint32_t{S_ISUID}, std::uint32_t{S_ISGID}, std::uint32_t{S_ISVTX},
                                std::uint32_t{1u} << 20, std::uint32_t{1u} << 31}) {
      CAPTURE(extra);
      CHECK_FORMAT_ERROR(mutate_inode(s.ino["d/a.txt"], [&](f::InodeEntry &e) { e.mode |= extra; }));
      CHECK_FORMAT_ERROR(mutate_inode(s.ino["d"], [&](f::InodeEntry &e) { e.mode |= extra; }));
    }
  }
  SUBCASE("an empty file or directory with a non-zero first") {
    CHECK_FORMAT_ERROR(mutate_inode(s.ino["e"], [&](f::InodeEntry &e) { e.first = 1; }));
    CHECK_FORMAT_ERROR(mutate_inode(s.ino["e"], [&](f::InodeEntry &e) { e.first = kMax32; }));
    CHECK_FORMAT_ERROR(mutate_inode(s.ino["emptydir"], [&](f::InodeEntry &e) { e.first = s.ino["d/a.txt"]; }));
    CHECK_FORMAT_ERROR(mutate_inode(s.ino["emptydir"], [&](f::InodeEntry &e) { e.first = kMax32; }));
  }
  SUBCASE("entries sharing stored bytes must describe them identically") {
    const auto b_first = orig.inode(s.ino["d/b.bin"]).first;
    const auto c_first = orig.inode(s.ino["d/c.txt"]).first;
    const auto cb = orig.chunk(b_first);
    Image img = orig;  // c.txt's 5-byte stored chunk points at b.bin's stored bytes, valid digest
    auto cc = img.chunk(c_first);
    cc.offset = cb.offset;
    cc.digest = sha256(std::span(img.b).subspan(cb.offset, 5));
    img.set_chunk(c_first, cc);
    img.reroot();
    CHECK_FORMAT_ERROR(img.b);
  }
  SUBCASE("stored bytes in another order than the chunk table (legal, not what the writer does)") {
    // b.bin's two stored chunks swap places in the data section: the table is no longer in offset
    // order, which takes validation off its fast path; the file must still read back exactly.
    const auto b_first = orig.inode(s.ino["d/b.bin"]).first;
    auto c0 = orig.chunk(b_first), c1 = orig.chunk(b_first + 1);
    REQUIRE(c1.offset == c0.offset + c0.stored_size);
    Image img = orig;
    const th::Bytes x(orig.b.begin() + static_cast<std::ptrdiff_t>(c0.offset),
                      orig.b.begin() + static_cast<std::ptrdiff_t>(c1.offset + c1.stored_size));
    std::copy(x.begin() + c0.stored_size, x.end(), img.b.begin() + static_cast<std::ptrdiff_t>(c0.offset));
    std::copy(x.begin(), x.begin() + c0.stored_size,
              img.b.begin() + static_cast<std::ptrdiff_t>(c0.offset + c1.stored_size));
    const auto base = c0.offset;
    c1.offset = base;
    c0.offset = base + c1.stored_size;
    img.set_chunk(b_first, c0);
    img.set_chunk(b_first + 1, c1);
    img.reroot();
    const auto p = Package::from_bytes(img.b, "reordered");
    Reader r(p, 1 << 20);
    th::Bytes got(s.content["d/b.bin"].size());
    const auto n = r.read(s.ino["d/b.bin"], 0, got);
    CHECK(n == got.size());
    CHECK(got == s.content["d/b.bin"]);
    // ... and on that slow path a shared offset must still describe its bytes identically.
    auto cc = img.chunk(orig.inode(s.ino["d/c.txt"]).first);
    cc.offset = c0.offset;
    cc.digest = sha256(std::span(img.b).subspan(c0.offset, 5));
    img.set_chunk(orig.inode(s.ino["d/c.txt"]).first, cc);
    img.reroot();
    CHECK_FORMAT_ERROR(img.b);
  }
}

TEST_CASE("the manifest must be one JSON object (digest recomputed)") {
  auto &s = small();
  const Image orig(s.image);
  auto with = [&](auto fn) {
    Image img = orig;
    fn(img.b, orig.manifest_at(), orig.ft.manifest_size);
    img.reroot();
    return img.b;
  };
  CHECK_FORMAT_ERROR(with([](th::Bytes &b, std::size_t at, std::size_t) { b[at] = '['; }));
  CHECK_FORMAT_ERROR(with([](th::Bytes &b, std::size_t at, std::size_t n) { b[at + n - 1] = ' '; }));
  CHECK_FORMAT_ERROR(with([](th::Bytes &b, std::size_t at, std::size_t n) { b[at + n / 2] = 0xff; }));
  CHECK_FORMAT_ERROR(with([](th::Bytes &b, std::size_t at, std::size_t n) { std::fill_n(b.begin() + static_cast<std::ptrdiff_t>(at), n, ' '); }));
  CHECK_FORMAT_ERROR(with([](th::Bytes &b, std::size_t at, std::size_t n) {
    std::fill_n(b.begin() + static_cast<std::ptrdiff_t>(at), n, ' ');
    b[at] = '1';
  }));
  // Other whitespace is fine.
  CHECK(outcome_from_bytes(with([](th::Bytes &b, std::size_t at, std::size_t n) {
          const auto nl = std::find(b.begin() + static_cast<std::ptrdiff_t>(at), b.begin() + static_cast<std::ptrdiff_t>(at + n), '\n');
          REQUIRE(nl != b.begin() + static_cast<std::ptrdiff_t>(at + n));
          *nl = '\t';
        })) == std::string("no exception"));
}

TEST_CASE("ManifestCheck::kOnFirstUse: a malformed manifest opens, and manifest() refuses it every time") {
  auto &s = small();
  Image img(s.image);
  img.b[img.manifest_at()] = '[';
  img.reroot();
  const auto open_lazily = [&] {
    return Package::open(std::make_shared<MemorySource>(img.b, "lazy"), ChunkDigests::kVerify, nullptr,
                         ManifestCheck::kOnFirstUse);
  };
  CHECK(outcome_from_bytes(img.b) == std::string("FormatError"));  // the default checks at open
  std::shared_ptr<const Package> p;
  REQUIRE_NOTHROW(p = open_lazily());
  for (int attempt = 0; attempt < 2; ++attempt) CHECK_THROWS_AS((void)p->manifest(), FormatError);
  Reader r(p, 1 << 20);
  for (std::uint32_t i = 0; i < p->inode_count(); ++i) {
    if (p->type(i) != f::NodeType::kRegular) continue;
    th::Bytes buf(static_cast<std::size_t>(std::min<std::uint64_t>(p->inode(i).size, 1 << 16)));
    CHECK_NOTHROW((void)r.read(i, 0, buf));  // the files do not depend on it
  }
}

TEST_CASE("a root entry named .torshpkg inside a package is refused") {
  th::TempDir dir;
  const auto src = dir / "src";
  fs::create_directories(src / "y");
  th::write_file(src / "xtorshpkg", "x");  // renamed to .torshpkg in the image below
  th::write_file(src / "y/xtorshpkg", "y");
  PackOptions o;
  o.source_dir = src.string();
  o.output = (dir / "p.tpkg").string();
  o.name = std::string("p");
  o.chunk_shift = kShift;
  (void)pack(o);
  const auto image = th::read_file(o.output);
  const auto p = Package::from_bytes(image, "p");
  auto renamed = [&](const char *path) {
    Image img(image);
    const auto e = img.inode(p->resolve(path).value());
    REQUIRE(e.name_length == 9);
    *img.string_bytes(e.name_offset) = '.';
    img.reroot();
    return img.b;
  };
  // Root children are "xtorshpkg" and "y": renamed, ".torshpkg" still sorts before "y", so only
  // the reserved-name rule can refuse it. Below the root the name is ordinary.
  CHECK(outcome_from_bytes(renamed("y/xtorshpkg")) == std::string("no exception"));
  const auto bad = renamed("xtorshpkg");
  CHECK_FORMAT_ERROR(bad);
  try {
    (void)Package::from_bytes(bad, "p");
  } catch (const FormatError &e) {
    CHECK(th::contains(e.what(), ".torshpkg"));
  }
}

// Regression (fixed in 61e219a): sibling order used to be checked before the siblings' name ranges,
// so a child with name_offset near 2^32 made from_bytes/open read far outside the index (SIGSEGV).
TEST_CASE("a child's name far outside the string table, digest recomputed: FormatError, no crash") {
  auto &s = small();
  const Image orig(s.image);
  for (const std::string path : {"d/a.txt", "d/b.bin", "d/c.txt"}) {  // d has three children, all compared
    for (auto [off, len] : std::initializer_list<std::pair<std::uint32_t, std::uint32_t>>{
             {kMax32 - 4, 5}, {0x80000000u, 5}, {0x01000000u, 5}, {0, kMax32}, {0, 0x10000000u}}) {
      CAPTURE(path);
      CAPTURE(off);
      CAPTURE(len);
      Image img = orig;
      auto e = img.inode(s.ino[path]);
      e.name_offset = off;
      e.name_length = len;
      img.set_inode(s.ino[path], e);
      img.reroot();
      CHECK_FORMAT_ERROR(img.b);
    }
  }
}

// Reader caches decoded chunks by their stored offset, so entries sharing an offset must describe
// the stored bytes identically. A crafted package (valid digests) giving two entries the same offset
// but different sizes must be refused, or at least never make Reader copy past a cached buffer.
TEST_CASE("two chunk entries sharing stored bytes but not sizes: refused or read correctly, no overflow") {
  auto &s = small();
  const Image orig(s.image);
  const auto ib = s.ino["d/b.bin"], ic = s.ino["d/c.txt"];
  const auto b_first = orig.inode(ib).first;
  const auto c_first = orig.inode(ic).first;
  const auto cb = orig.chunk(b_first);  // stored, 65536 bytes of b.bin
  // c.txt's only chunk (5 bytes, stored) now points at the first 5 bytes of b.bin's first chunk,
  // with a correct digest for them.
  Image img = orig;
  auto cc = img.chunk(c_first);
  REQUIRE(cc.codec == f::Codec::kStored);
  REQUIRE(cc.decoded_size == 5);
  cc.offset = cb.offset;
  cc.digest = sha256(std::span(img.b).subspan(cb.offset, 5));
  img.set_chunk(c_first, cc);
  img.reroot();
  const th::Bytes b_data = s.content["d/b.bin"];
  const th::Bytes c_data(b_data.begin(), b_data.begin() + 5);
  auto reads = [&](bool c_first_then_b) -> std::string {
    return th::outcome_name(th::isolated([&] {
      const auto p = Package::from_bytes(img.b, "shared");
      Reader r(p, 64 << 20);
      th::Bytes cbuf(5), bbuf(1000);
      auto read_c = [&] {
        if (r.read(ic, 0, cbuf) != 5 || cbuf != c_data) throw std::runtime_error("c.txt reads wrong");
      };
      auto read_b = [&] {
        if (r.read(ib, 100, bbuf) != bbuf.size() ||
            !std::equal(bbuf.begin(), bbuf.end(), b_data.begin() + 100))
          throw std::runtime_error("b.bin reads wrong");
      };
      if (c_first_then_b) {
        read_c();
        read_b();
      } else {
        read_b();
        read_c();
      }
    }));
  };
  for (bool order : {true, false}) {
    CAPTURE(order);
    const auto got = reads(order);
    CHECK((got == "no exception" || got == "FormatError"));
  }
}

TEST_CASE("random mutations of the index with the digest recomputed: FormatError or a usable package") {
  auto &s = small();
  const Image orig(s.image);
  std::mt19937_64 rng(4242);
  const std::size_t tables = orig.strings_at() - orig.chunks_at();  // chunk and inode tables
  const std::size_t whole = orig.footer_at() - orig.chunks_at();
  static constexpr std::uint32_t kInteresting[] = {0, 1, 2, 3, 5, 6, 7, 8, 9, 0x7f, 0x80, 0xff, 0x100,
                                                   0xffff, 0x10000, 0x7fffffff, 0x80000000u, 0xfffffffeu, 0xffffffffu};
  int ok = 0, format = 0, other = 0;
  std::vector<std::string> problems;
  for (int iter = 0; iter < 600; ++iter) {
    Image img = orig;
    const int mutations = 1 + static_cast<int>(rng() % 3);
    for (int m = 0; m < mutations; ++m) {
      switch (rng() % 4) {
        case 0: {  // random byte anywhere in index + manifest
          img.b[orig.chunks_at() + rng() % whole] = static_cast<std::uint8_t>(rng());
          break;
        }
        case 1: {  // an interesting 32-bit value at a 4-aligned place in the tables
          const std::size_t at = orig.chunks_at() + (rng() % (tables / 4)) * 4;
          store_le<std::uint32_t>(&img.b[at], kInteresting[rng() % std::size(kInteresting)]);
          break;
        }
        case 2: {  // a small delta on a 32-bit field
          const std::size_t at = orig.chunks_at() + (rng() % (tables / 4)) * 4;
          const auto v = load_le<std::uint32_t>(&img.b[at]);
          store_le<std::uint32_t>(&img.b[at], v + static_cast<std::uint32_t>(rng() % 5) - 2u);
          break;
        }
        default: {  // a byte of the string table
          if (orig.ft.strings_size == 0) break;
          img.b[orig.strings_at() + rng() % orig.ft.strings_size] =
              static_cast<std::uint8_t>("./\0\xff\xc0" "az"[rng() % 7]);
          break;
        }
      }
    }
    img.reroot();
    const auto o = th::isolated([&] { exercise(img.b); });
    if (o == th::Outcome::kOk)
      ++ok;
    else if (o == th::Outcome::kFormatError)
      ++format;
    else {
      ++other;
      if (problems.size() < 10) problems.push_back("iteration " + std::to_string(iter) + ": " + th::outcome_name(o));
    }
  }
  for (const auto &p : problems) MESSAGE(p);
  CHECK(other == 0);
  CHECK(format > 0);
  MESSAGE("random mutations: " << ok << " still valid, " << format << " FormatError, " << other << " other");
}

}  // TEST_SUITE
