// format.hpp / endian.hpp: field encoding, decoder checks, overflow helpers.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <limits>

#include "helpers.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/codec.hpp"
#include "torshpkg/format.hpp"

using namespace torshpkg;
namespace f = torshpkg::format;

namespace {
constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

std::array<std::uint8_t, f::kHeaderSize> encoded_header(const f::Header &h) {
  std::array<std::uint8_t, f::kHeaderSize> b{};
  f::encode(h, std::span(b));
  return b;
}
std::array<std::uint8_t, f::kFooterSize> encoded_footer(const f::Footer &ft) {
  std::array<std::uint8_t, f::kFooterSize> b{};
  f::encode(ft, std::span(b));
  return b;
}
}  // namespace

TEST_SUITE("format") {

TEST_CASE("endian: load_le/store_le round trips and byte order") {
  std::array<std::uint8_t, 8> b{};
  store_le<std::uint64_t>(b.data(), 0x0102030405060708ull);
  CHECK(b == std::array<std::uint8_t, 8>{8, 7, 6, 5, 4, 3, 2, 1});
  CHECK(load_le<std::uint64_t>(b.data()) == 0x0102030405060708ull);
  CHECK(load_le<std::uint32_t>(b.data()) == 0x05060708u);
  CHECK(load_le<std::uint16_t>(b.data()) == 0x0708u);

  for (std::uint64_t v : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{0x80}, std::uint64_t{0xff00ff00ff00ff00ull},
                          kMax, kMax - 1, std::uint64_t{1} << 63}) {
    store_le<std::uint64_t>(b.data(), v);
    CHECK(load_le<std::uint64_t>(b.data()) == v);
  }
  store_le<std::uint32_t>(b.data(), 0xffffffffu);
  CHECK(load_le<std::uint32_t>(b.data()) == 0xffffffffu);
  store_le<std::uint16_t>(b.data(), 0xbeef);
  CHECK(b[0] == 0xef);
  CHECK(b[1] == 0xbe);
  for (std::int64_t v : {std::int64_t{-1}, std::int64_t{-2}, std::numeric_limits<std::int64_t>::min(),
                         std::numeric_limits<std::int64_t>::max(), std::int64_t{0}}) {
    store_le<std::int64_t>(b.data(), v);
    CHECK(load_le<std::int64_t>(b.data()) == v);
  }
  store_le<std::int64_t>(b.data(), -1);
  for (auto x : b) CHECK(x == 0xff);
}

TEST_CASE("endian: add/mul overflow helpers at the edges") {
  std::uint64_t out = 0;
  CHECK_FALSE(add_overflows(0, 0, out));
  CHECK(out == 0);
  CHECK_FALSE(add_overflows(kMax, 0, out));
  CHECK(out == kMax);
  CHECK_FALSE(add_overflows(kMax - 1, 1, out));
  CHECK(out == kMax);
  CHECK(add_overflows(kMax, 1, out));
  CHECK(add_overflows(1, kMax, out));
  CHECK(add_overflows(kMax, kMax, out));
  CHECK(add_overflows(std::uint64_t{1} << 63, std::uint64_t{1} << 63, out));

  CHECK_FALSE(mul_overflows(0, kMax, out));
  CHECK(out == 0);
  CHECK_FALSE(mul_overflows(1, kMax, out));
  CHECK(out == kMax);
  CHECK_FALSE(mul_overflows(std::uint64_t{1} << 32, (std::uint64_t{1} << 32) - 1, out));
  CHECK(mul_overflows(std::uint64_t{1} << 32, std::uint64_t{1} << 32, out));
  CHECK(mul_overflows(kMax, 2, out));
  CHECK(mul_overflows(kMax / 56 + 1, 56, out));
  CHECK_FALSE(mul_overflows(kMax / 56, 56, out));
}

TEST_CASE("endian: range_within at the edges") {
  CHECK(range_within(0, 0, 0));
  CHECK(range_within(0, 10, 10));
  CHECK_FALSE(range_within(0, 11, 10));
  CHECK(range_within(10, 0, 10));
  CHECK_FALSE(range_within(11, 0, 10));
  CHECK(range_within(5, 5, 10));
  CHECK_FALSE(range_within(5, 6, 10));
  CHECK(range_within(0, kMax, kMax));
  CHECK(range_within(kMax, 0, kMax));
  CHECK(range_within(kMax - 1, 1, kMax));
  CHECK_FALSE(range_within(kMax, 1, kMax));
  CHECK_FALSE(range_within(1, kMax, kMax));
  CHECK_FALSE(range_within(kMax, kMax, kMax));
  CHECK_FALSE(range_within(kMax, 1, 0));
  CHECK_FALSE(range_within(2, kMax - 1, 100));  // wraps to 0 if unchecked
}

TEST_CASE("header: encode/decode round trip and layout") {
  f::Header h;
  h.version_minor = 7;
  h.compat_flags = 0xdeadbeefcafef00dull;  // unknown compat bits are fine
  h.incompat_flags = 0;
  h.chunk_shift = 17;
  const auto b = encoded_header(h);
  CHECK(std::equal(f::kHeaderMagic.begin(), f::kHeaderMagic.end(), b.begin()));
  CHECK(load_le<std::uint16_t>(&b[8]) == f::kVersionMajor);
  CHECK(load_le<std::uint16_t>(&b[10]) == 7);
  CHECK(load_le<std::uint32_t>(&b[12]) == f::kHeaderSize);
  CHECK(b[32] == 17);
  for (std::size_t i = 33; i < f::kHeaderSize; ++i) CHECK(b[i] == 0);
  const auto d = f::decode_header(b);
  CHECK(d.version_major == f::kVersionMajor);
  CHECK(d.version_minor == 7);
  CHECK(d.compat_flags == h.compat_flags);
  CHECK(d.incompat_flags == 0);
  CHECK(d.chunk_shift == 17);

  for (unsigned s = f::kMinChunkShift; s <= f::kMaxChunkShift; ++s) {
    h.chunk_shift = static_cast<std::uint8_t>(s);
    CHECK(f::decode_header(encoded_header(h)).chunk_shift == s);
  }
}

TEST_CASE("header: decode rejects bad magic") {
  const auto good = encoded_header(f::Header{});
  for (std::size_t i = 0; i < 8; ++i) {
    auto b = good;
    b[i] ^= 0x01;
    CAPTURE(i);
    CHECK_THROWS_AS((void)f::decode_header(b), FormatError);
  }
  std::array<std::uint8_t, f::kHeaderSize> zeros{};
  CHECK_THROWS_AS((void)f::decode_header(zeros), FormatError);
  auto footer_magic_at_start = good;
  std::copy(f::kFooterMagic.begin(), f::kFooterMagic.end(), footer_magic_at_start.begin());
  CHECK_THROWS_AS((void)f::decode_header(footer_magic_at_start), FormatError);
}

TEST_CASE("header: decode rejects unknown major versions, accepts any minor") {
  for (std::uint16_t major : {std::uint16_t{0}, std::uint16_t{2}, std::uint16_t{0xffff}}) {
    f::Header h;
    h.version_major = major;
    CAPTURE(major);
    CHECK_THROWS_AS((void)f::decode_header(encoded_header(h)), FormatError);
  }
  for (std::uint16_t minor : {std::uint16_t{0}, std::uint16_t{1}, std::uint16_t{0xffff}}) {
    f::Header h;
    h.version_minor = minor;
    CHECK(f::decode_header(encoded_header(h)).version_minor == minor);
  }
}

TEST_CASE("header: decode rejects unknown incompat flags, ignores compat flags") {
  for (std::uint64_t flag : {f::incompat::kEncrypted, f::incompat::kBaseRefs, std::uint64_t{1} << 3,
                             std::uint64_t{1} << 63, kMax, f::incompat::kFilters | f::incompat::kEncrypted}) {
    f::Header h;
    h.incompat_flags = flag;
    CAPTURE(flag);
    CHECK_THROWS_AS((void)f::decode_header(encoded_header(h)), FormatError);
  }
  f::Header h;
  h.compat_flags = kMax;
  CHECK(f::decode_header(encoded_header(h)).compat_flags == kMax);
  // Filters are implemented: the flag is known.
  CHECK((f::incompat::kKnown & f::incompat::kFilters) != 0);
  f::Header hf;
  hf.incompat_flags = f::incompat::kFilters;
  CHECK(f::decode_header(encoded_header(hf)).incompat_flags == f::incompat::kFilters);
}

TEST_CASE("header: decode rejects chunk_shift out of range") {
  for (unsigned s : {0u, 1u, 15u, 23u, 32u, 63u, 64u, 255u}) {
    f::Header h;
    h.chunk_shift = static_cast<std::uint8_t>(s);
    CAPTURE(s);
    CHECK_THROWS_AS((void)f::decode_header(encoded_header(h)), FormatError);
  }
}

TEST_CASE("header: decode rejects a bad header size field") {
  for (std::uint32_t size : {0u, 63u, 65u, 128u, 0xffffffffu}) {
    auto b = encoded_header(f::Header{});
    store_le<std::uint32_t>(&b[12], size);
    CAPTURE(size);
    CHECK_THROWS_AS((void)f::decode_header(b), FormatError);
  }
}

// Commit 53fddd1 made reserved bytes must-be-zero; docs/FORMAT.md still says "not checked".
TEST_CASE("header: decode rejects non-zero reserved bytes 33..63") {
  for (std::size_t i = 33; i < f::kHeaderSize; ++i) {
    auto b = encoded_header(f::Header{});
    b[i] = 0x40;
    CAPTURE(i);
    CHECK_THROWS_AS((void)f::decode_header(b), FormatError);
  }
}

TEST_CASE("footer: encode/decode round trip and layout") {
  f::Footer ft;
  ft.index_offset = 0x1122334455667788ull;
  ft.chunk_count = 1;
  ft.inode_count = kMax;
  ft.strings_size = 42;
  ft.manifest_size = 1ull << 40;
  ft.reserved0 = 9;
  ft.signature_offset = 77;
  ft.signature_size = kMax - 1;
  for (std::size_t i = 0; i < ft.root_digest.size(); ++i) ft.root_digest[i] = static_cast<std::uint8_t>(i * 7 + 1);
  const auto b = encoded_footer(ft);
  CHECK(load_le<std::uint64_t>(&b[0]) == ft.index_offset);
  CHECK(load_le<std::uint64_t>(&b[48]) == 77);
  CHECK(b[64] == ft.root_digest[0]);
  CHECK(b[95] == ft.root_digest[31]);
  CHECK(load_le<std::uint32_t>(&b[96]) == f::kFooterSize);
  CHECK(load_le<std::uint16_t>(&b[100]) == f::kVersionMajor);
  CHECK(load_le<std::uint16_t>(&b[102]) == f::kVersionMinor);
  CHECK(std::equal(f::kFooterMagic.begin(), f::kFooterMagic.end(), &b[120]));
  const auto d = f::decode_footer(b);
  CHECK(d.index_offset == ft.index_offset);
  CHECK(d.chunk_count == ft.chunk_count);
  CHECK(d.inode_count == ft.inode_count);
  CHECK(d.strings_size == ft.strings_size);
  CHECK(d.manifest_size == ft.manifest_size);
  CHECK(d.reserved0 == ft.reserved0);
  CHECK(d.signature_offset == ft.signature_offset);
  CHECK(d.signature_size == ft.signature_size);
  CHECK(d.root_digest == ft.root_digest);
}

TEST_CASE("footer: decode rejects bad magic, size and version") {
  const auto good = encoded_footer(f::Footer{});
  CHECK_NOTHROW((void)f::decode_footer(good));
  for (std::size_t i = 120; i < 128; ++i) {
    auto b = good;
    b[i] ^= 0x80;
    CAPTURE(i);
    CHECK_THROWS_AS((void)f::decode_footer(b), FormatError);
  }
  for (std::uint32_t size : {0u, 64u, 127u, 129u, 0xffffffffu}) {
    auto b = good;
    store_le<std::uint32_t>(&b[96], size);
    CAPTURE(size);
    CHECK_THROWS_AS((void)f::decode_footer(b), FormatError);
  }
  for (std::uint16_t major : {std::uint16_t{0}, std::uint16_t{2}, std::uint16_t{0xffff}}) {
    auto b = good;
    store_le<std::uint16_t>(&b[100], major);
    CAPTURE(major);
    CHECK_THROWS_AS((void)f::decode_footer(b), FormatError);
  }
  auto minor = good;
  store_le<std::uint16_t>(&minor[102], 0xffff);
  CHECK_NOTHROW((void)f::decode_footer(minor));
  for (std::size_t i = 104; i < 120; ++i) {  // reserved, must be zero (see the header test)
    auto b = good;
    b[i] = 1;
    CAPTURE(i);
    CHECK_THROWS_AS((void)f::decode_footer(b), FormatError);
  }
  std::array<std::uint8_t, f::kFooterSize> zeros{};
  CHECK_THROWS_AS((void)f::decode_footer(zeros), FormatError);
}

TEST_CASE("chunk entry: encode/decode round trip") {
  f::ChunkEntry c;
  c.offset = 0xfedcba9876543210ull;
  c.stored_size = 0xffffffffu;
  c.decoded_size = 65536;
  c.codec = f::Codec::kZstd;
  c.filter = f::Filter::kNone;
  c.flags = 0xa5a5;
  for (std::size_t i = 0; i < c.digest.size(); ++i) c.digest[i] = static_cast<std::uint8_t>(255 - i);
  std::array<std::uint8_t, f::kChunkEntrySize> b{};
  f::encode(c, std::span(b));
  CHECK(b[16] == 1);
  CHECK(load_le<std::uint16_t>(&b[18]) == 0xa5a5);
  for (std::size_t i = 20; i < 24; ++i) CHECK(b[i] == 0);
  const auto d = f::decode_chunk(b);
  CHECK(d.offset == c.offset);
  CHECK(d.stored_size == c.stored_size);
  CHECK(d.decoded_size == c.decoded_size);
  CHECK(d.codec == c.codec);
  CHECK(d.filter == c.filter);
  CHECK(d.flags == c.flags);
  CHECK(d.digest == c.digest);

  // decode then encode reproduces any bytes whose padding is zero, including unknown codec ids.
  auto raw = th::random_bytes(f::kChunkEntrySize, 99);
  std::fill(raw.begin() + 20, raw.begin() + 24, 0);
  std::array<std::uint8_t, f::kChunkEntrySize> in{}, out{};
  std::copy(raw.begin(), raw.end(), in.begin());
  f::encode(f::decode_chunk(in), std::span(out));
  CHECK(in == out);
}

TEST_CASE("inode entry: encode/decode round trip") {
  f::InodeEntry e;
  e.mode = S_IFREG | 0640;
  e.parent = 0xfffffffeu;
  e.name_offset = 123456;
  e.name_length = 255;
  e.mtime_sec = -1234567890123ll;
  e.mtime_nsec = 999'999'999u;
  e.kind = f::FileKind::kTokenizer;
  e.flags = 0x5a;
  e.size = kMax;
  e.first = 0x89abcdefu;
  e.reserved = 0x01020304u;
  std::array<std::uint8_t, f::kInodeEntrySize> b{};
  f::encode(e, std::span(b));
  CHECK(b[30] == 0);
  CHECK(b[31] == 0);
  const auto d = f::decode_inode(b);
  CHECK(d.mode == e.mode);
  CHECK(d.parent == e.parent);
  CHECK(d.name_offset == e.name_offset);
  CHECK(d.name_length == e.name_length);
  CHECK(d.mtime_sec == e.mtime_sec);
  CHECK(d.mtime_nsec == e.mtime_nsec);
  CHECK(d.kind == e.kind);
  CHECK(d.flags == e.flags);
  CHECK(d.size == e.size);
  CHECK(d.first == e.first);
  CHECK(d.reserved == e.reserved);

  auto raw = th::random_bytes(f::kInodeEntrySize, 7);
  raw[30] = raw[31] = 0;
  std::array<std::uint8_t, f::kInodeEntrySize> in{}, out{};
  std::copy(raw.begin(), raw.end(), in.begin());
  f::encode(f::decode_inode(in), std::span(out));
  CHECK(in == out);
}

TEST_CASE("node_type accepts directories, regular files and symlinks only") {
  CHECK(f::node_type(S_IFDIR | 0755) == f::NodeType::kDirectory);
  CHECK(f::node_type(S_IFREG | 0644) == f::NodeType::kRegular);
  CHECK(f::node_type(S_IFLNK | 0777) == f::NodeType::kSymlink);
  CHECK(f::node_type(S_IFREG) == f::NodeType::kRegular);
  for (std::uint32_t m : {std::uint32_t{0}, std::uint32_t{0644}, std::uint32_t{S_IFIFO | 0644},
                          std::uint32_t{S_IFCHR | 0600}, std::uint32_t{S_IFBLK | 0600},
                          std::uint32_t{S_IFSOCK | 0755}, 0xffffffffu}) {
    CAPTURE(m);
    CHECK_THROWS_AS((void)f::node_type(m), FormatError);
  }
}

TEST_CASE("kind_name and codec_name") {
  CHECK(f::kind_name(f::FileKind::kOther) == "other");
  CHECK(f::kind_name(f::FileKind::kWeights) == "weights");
  CHECK(f::kind_name(f::FileKind::kCode) == "code");
  CHECK(f::kind_name(f::FileKind::kConfig) == "config");
  CHECK(f::kind_name(f::FileKind::kTokenizer) == "tokenizer");
  CHECK(f::kind_name(f::FileKind::kData) == "data");
  CHECK(f::kind_name(static_cast<f::FileKind>(200)) == "other");
  CHECK(torshpkg::codec_name(f::Codec::kStored) == "stored");
  CHECK(torshpkg::codec_name(f::Codec::kZstd) == "zstd");
  CHECK(torshpkg::codec_name(static_cast<f::Codec>(9)) == "unknown");
}

TEST_CASE("format constants are consistent") {
  CHECK(f::kFooterRootedSize == 48);
  CHECK(f::kMinChunkShift <= f::kDefaultChunkShift);
  CHECK(f::kDefaultChunkShift <= f::kMaxChunkShift);
  CHECK(f::kHeaderMagic[0] == 0x89);
  CHECK(f::kReservedRootName == ".torshpkg");
  CHECK(f::kMaxInodes == (1ull << 32) - 16);
  CHECK(f::kFooterMagic[7] == 0);
}

}  // TEST_SUITE
