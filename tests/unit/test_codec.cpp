// codec.hpp: chunk encoder/decoder round trips and decoder error handling.
#include <doctest/doctest.h>

#include <cstring>
#include <zstd.h>

#include <cstdint>
#include <vector>

#include "helpers.hpp"
#include "torshpkg/codec.hpp"
#include "torshpkg/pipeline.hpp"
#include "torshpkg/errors.hpp"

using namespace torshpkg;
using format::Codec;
using format::Filter;

namespace {

th::Bytes decode(ChunkDecoder &dec, Codec c, const th::Bytes &stored, std::size_t size) {
  th::Bytes out(size, 0xcc);
  dec.decode(c, Filter::kNone, stored, out);
  return out;
}

th::Bytes decode_filtered(ChunkDecoder &dec, Filter f, const th::Bytes &stored, std::size_t size) {
  th::Bytes out(size, 0xcc);
  dec.decode(Codec::kZstd, f, stored, out);
  return out;
}

// A raw zstd frame (with content size) made directly with libzstd.
th::Bytes zstd_frame(const th::Bytes &raw, int level = 3) {
  th::Bytes out(ZSTD_compressBound(raw.size()));
  const auto n = ZSTD_compress(out.data(), out.size(), raw.data(), raw.size(), level);
  REQUIRE_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

}  // namespace

TEST_SUITE("codec") {

TEST_CASE("round trips at several sizes, compressible and incompressible") {
  ChunkEncoder enc(3);
  ChunkDecoder dec;
  for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{7}, std::size_t{4095},
                           std::size_t{65535}, std::size_t{65536}, std::size_t{65537}, std::size_t{100'003},
                           std::size_t{1} << 20, std::size_t{4} << 20}) {
    for (bool compressible : {true, false}) {
      CAPTURE(size);
      CAPTURE(compressible);
      const auto raw = compressible ? th::text_bytes(size, size) : th::random_bytes(size, size);
      std::vector<std::uint8_t> stored;
      const Codec c = enc.encode(raw, stored);
      CHECK((c == Codec::kStored || c == Codec::kZstd));
      if (c == Codec::kStored) CHECK(stored == raw);
      if (c == Codec::kZstd) CHECK(stored.size() * 100 <= raw.size() * (100 - ChunkEncoder::kMinSavingPercent));
      if (compressible && size >= 4095) CHECK(c == Codec::kZstd);
      if (!compressible && size >= 64) CHECK(c == Codec::kStored);
      CHECK(decode(dec, c, stored, size) == raw);
    }
  }
}

TEST_CASE("all-zero chunks compress well; the encoder is reusable across sizes") {
  ChunkEncoder enc(1);
  ChunkDecoder dec;
  std::vector<std::uint8_t> stored;
  for (int round = 0; round < 3; ++round) {
    const th::Bytes zeros(std::size_t{1} << 20, 0);
    CHECK(enc.encode(zeros, stored) == Codec::kZstd);
    CHECK(stored.size() < 1000);
    CHECK(decode(dec, Codec::kZstd, stored, zeros.size()) == zeros);
    const th::Bytes small = th::text_bytes(5000, 3);
    const Codec c = enc.encode(small, stored);
    CHECK(decode(dec, c, stored, small.size()) == small);
  }
}

TEST_CASE("encoder levels: negative levels work, out-of-range levels are a usage error") {
  const auto raw = th::text_bytes(200'000, 1);
  for (int level : {-5, -1, 1, 3, 9, 19}) {
    CAPTURE(level);
    ChunkEncoder enc(level);
    ChunkDecoder dec;
    std::vector<std::uint8_t> stored;
    const Codec c = enc.encode(raw, stored);
    CHECK(c == Codec::kZstd);
    CHECK(decode(dec, c, stored, raw.size()) == raw);
  }
  CHECK_THROWS_AS(ChunkEncoder(ZSTD_maxCLevel() + 1), UsageError);
  CHECK_THROWS_AS(ChunkEncoder(1000), UsageError);
  CHECK_THROWS_AS(ChunkEncoder(ZSTD_minCLevel() - 1), UsageError);
}

TEST_CASE("incompressible data is stored verbatim") {
  ChunkEncoder enc(19);
  const auto raw = th::random_bytes(65536, 42);
  std::vector<std::uint8_t> stored;
  CHECK(enc.encode(raw, stored) == Codec::kStored);
  CHECK(stored == raw);
  // Data that compresses by less than 3%: 98% random, 2% zeros.
  auto mostly = th::random_bytes(100'000, 43);
  std::fill(mostly.begin(), mostly.begin() + 2000, 0);
  CHECK(enc.encode(mostly, stored) == Codec::kStored);
  CHECK(stored == mostly);
  // Half random, half zeros: clearly worth compressing.
  auto half = th::random_bytes(100'000, 44);
  std::fill(half.begin(), half.begin() + 50'000, 0);
  CHECK(enc.encode(half, stored) == Codec::kZstd);
}

TEST_CASE("stored codec: sizes must match") {
  ChunkDecoder dec;
  const auto raw = th::random_bytes(100, 1);
  CHECK(decode(dec, Codec::kStored, raw, 100) == raw);
  CHECK_THROWS_AS(decode(dec, Codec::kStored, raw, 99), IntegrityError);
  CHECK_THROWS_AS(decode(dec, Codec::kStored, raw, 101), IntegrityError);
  CHECK_THROWS_AS(decode(dec, Codec::kStored, {}, 1), IntegrityError);
  CHECK(decode(dec, Codec::kStored, {}, 0).empty());
}

TEST_CASE("zstd: truncated frames throw IntegrityError at every length") {
  ChunkDecoder dec;
  const auto raw = th::text_bytes(3000, 9);
  const auto frame = zstd_frame(raw);
  REQUIRE(frame.size() < raw.size());
  for (std::size_t len = 0; len < frame.size(); ++len) {
    CAPTURE(len);
    const th::Bytes cut(frame.begin(), frame.begin() + static_cast<std::ptrdiff_t>(len));
    CHECK_THROWS_AS(decode(dec, Codec::kZstd, cut, raw.size()), IntegrityError);
  }
  CHECK(decode(dec, Codec::kZstd, frame, raw.size()) == raw);  // the context recovers
}

TEST_CASE("zstd: corrupted frames throw IntegrityError, never crash") {
  ChunkDecoder dec;
  const auto raw = th::text_bytes(3000, 10);
  const auto frame = zstd_frame(raw);
  SUBCASE("bad magic") {
    for (std::size_t i = 0; i < 4; ++i) {
      auto bad = frame;
      bad[i] ^= 0xff;
      CHECK_THROWS_AS(decode(dec, Codec::kZstd, bad, raw.size()), IntegrityError);
    }
  }
  SUBCASE("garbage") {
    for (std::uint64_t seed = 0; seed < 50; ++seed) {
      const auto junk = th::random_bytes(1 + seed * 37, seed);
      CHECK_THROWS_AS(decode(dec, Codec::kZstd, junk, raw.size()), IntegrityError);
    }
    CHECK_THROWS_AS(decode(dec, Codec::kZstd, {}, raw.size()), IntegrityError);
  }
  SUBCASE("random byte damage: an error or a chunk of the right size, never more") {
    // Without a frame checksum zstd cannot always notice damage (the package's SHA-256 does);
    // the decoder must still either throw IntegrityError or fill exactly the output.
    for (std::uint64_t seed = 0; seed < 300; ++seed) {
      auto bad = frame;
      const auto r = th::random_bytes(16, seed);
      const std::size_t pos = (r[0] | (std::size_t{r[1]} << 8)) % bad.size();
      bad[pos] ^= static_cast<std::uint8_t>(r[2] | 1);
      th::Bytes out(raw.size());
      try {
        dec.decode(Codec::kZstd, Filter::kNone, bad, out);
      } catch (const IntegrityError &) {
      }
    }
    CHECK(decode(dec, Codec::kZstd, frame, raw.size()) == raw);
  }
}

TEST_CASE("zstd: a frame that decodes to a different size than expected throws IntegrityError") {
  ChunkDecoder dec;
  const auto raw = th::text_bytes(1000, 11);
  const auto frame = zstd_frame(raw);
  CHECK_THROWS_AS(decode(dec, Codec::kZstd, frame, 999), IntegrityError);   // larger than the output
  CHECK_THROWS_AS(decode(dec, Codec::kZstd, frame, 1), IntegrityError);
  CHECK_THROWS_AS(decode(dec, Codec::kZstd, frame, 0), IntegrityError);
  CHECK_THROWS_AS(decode(dec, Codec::kZstd, frame, 1001), IntegrityError);  // smaller than the output
  CHECK_THROWS_AS(decode(dec, Codec::kZstd, frame, 1 << 20), IntegrityError);

  // Same without a content size in the frame header (streamed frame).
  th::Bytes streamed(ZSTD_compressBound(raw.size()));
  ZSTD_CCtx *cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
  const auto n = ZSTD_compress2(cctx, streamed.data(), streamed.size(), raw.data(), raw.size());
  ZSTD_freeCCtx(cctx);
  REQUIRE_FALSE(ZSTD_isError(n));
  streamed.resize(n);
  CHECK(decode(dec, Codec::kZstd, streamed, 1000) == raw);
  CHECK_THROWS_AS(decode(dec, Codec::kZstd, streamed, 999), IntegrityError);
  CHECK_THROWS_AS(decode(dec, Codec::kZstd, streamed, 1001), IntegrityError);

  // A "zip bomb": a tiny frame of a huge output never writes past the output buffer.
  const th::Bytes zeros(std::size_t{8} << 20, 0);
  const auto bomb = zstd_frame(zeros, 19);
  CHECK(bomb.size() < 2000);
  CHECK_THROWS_AS(decode(dec, Codec::kZstd, bomb, 65536), IntegrityError);
}

TEST_CASE("unknown codec or filter throws FormatError") {
  ChunkDecoder dec;
  const auto raw = th::random_bytes(64, 5);
  th::Bytes out(64);
  for (unsigned c : {2u, 3u, 7u, 255u}) {
    CAPTURE(c);
    CHECK_THROWS_AS(dec.decode(static_cast<Codec>(c), Filter::kNone, raw, out), FormatError);
  }
  for (unsigned f : {4u, 5u, 128u, 255u}) {
    CAPTURE(f);
    CHECK_THROWS_AS(dec.decode(Codec::kStored, static_cast<Filter>(f), raw, out), FormatError);
    CHECK_THROWS_AS(dec.decode(Codec::kZstd, static_cast<Filter>(f), zstd_frame(raw), out), FormatError);
  }
  // A known filter needs the zstd codec.
  for (Filter f : {Filter::kBf16, Filter::kFp16, Filter::kFp32}) {
    CAPTURE(static_cast<unsigned>(f));
    CHECK_THROWS_AS(dec.decode(Codec::kStored, f, raw, out), FormatError);
    CHECK_THROWS_AS(dec.decode(static_cast<Codec>(9), f, raw, out), FormatError);
  }
}

TEST_CASE("filtered chunks: encode_filtered + decode round trip at several sizes and phases") {
  ChunkEncoder enc(3);
  ChunkDecoder dec;
  for (Filter f : {Filter::kBf16, Filter::kFp16, Filter::kFp32}) {
    const unsigned w = f == Filter::kFp32 ? 4 : 2;
    for (std::size_t size : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{5}, std::size_t{4097},
                             std::size_t{65536}, std::size_t{65537}}) {
      for (unsigned phase = 0; phase < w && phase <= size; ++phase) {
        CAPTURE(static_cast<unsigned>(f));
        CAPTURE(size);
        CAPTURE(phase);
        const auto raw = th::text_bytes(size, size + phase);
        std::vector<std::uint8_t> stored;
        const auto n = enc.encode_filtered(f, phase, raw, stored);
        CHECK(n == stored.size());
        CHECK(decode_filtered(dec, f, stored, size) == raw);
        // The same frame read as unfiltered is the filtered form, one byte longer: a size mismatch.
        CHECK_THROWS_AS(decode(dec, Codec::kZstd, stored, size), IntegrityError);
      }
    }
  }
  std::vector<std::uint8_t> stored;
  CHECK_THROWS_AS((void)enc.encode_filtered(Filter::kNone, 0, th::random_bytes(10, 1), stored), Error);
  CHECK_THROWS_AS((void)enc.encode_filtered(Filter::kBf16, 2, th::random_bytes(10, 1), stored), Error);
  CHECK_THROWS_AS((void)enc.encode_filtered(Filter::kFp32, 3, th::random_bytes(2, 1), stored), Error);
}

TEST_CASE("filtered chunks: weight-like planes beat plain zstd; redundant planes still get LZ") {
  ChunkEncoder enc(3);
  ChunkDecoder dec;
  // bf16 values about normal with a small scale, as in trained weights.
  th::Bytes weights(1 << 20);
  std::uint64_t state = 7;
  for (std::size_t i = 0; i + 1 < weights.size(); i += 2) {
    float v = 0;
    for (int k = 0; k < 4; ++k) {
      state ^= state >> 12, state ^= state << 25, state ^= state >> 27;
      v += static_cast<float>((state * 0x2545f4914f6cdd1dull) >> 40) / static_cast<float>(1 << 24);
    }
    v = 0.02f * (v - 2.0f);
    std::uint32_t bits;
    std::memcpy(&bits, &v, 4);
    weights[i] = static_cast<std::uint8_t>(bits >> 16);
    weights[i + 1] = static_cast<std::uint8_t>(bits >> 24);
  }
  std::vector<std::uint8_t> plain, filtered;
  REQUIRE(enc.encode(weights, plain) == Codec::kZstd);
  const auto n = enc.encode_filtered(Filter::kBf16, 0, weights, filtered);
  CHECK(n < plain.size() * 95 / 100);
  CHECK(decode_filtered(dec, Filter::kBf16, filtered, weights.size()) == weights);
  // Zeros (padding, pruned weights): entropy coding alone stops near 1/8; LZ takes it far lower.
  const th::Bytes zeros(1 << 20, 0);
  const auto z = enc.encode_filtered(Filter::kBf16, 0, zeros, filtered);
  CHECK(z < zeros.size() / 1000);
  CHECK(decode_filtered(dec, Filter::kBf16, filtered, zeros.size()) == zeros);
  // Higher levels take the same literals-only path for weights: same bytes.
  ChunkEncoder enc19(19);
  std::vector<std::uint8_t> filtered19;
  CHECK(enc19.encode_filtered(Filter::kBf16, 0, weights, filtered19) == n);
}

TEST_CASE("filtered chunks: damaged or mismatched frames throw IntegrityError") {
  ChunkDecoder dec;
  const auto raw = th::text_bytes(1000, 4);
  // A hand-made filtered form with a bad phase byte, compressed correctly.
  for (auto [f, phase] : std::initializer_list<std::pair<Filter, unsigned>>{
           {Filter::kBf16, 2}, {Filter::kFp16, 255}, {Filter::kFp32, 4}, {Filter::kFp32, 200}}) {
    CAPTURE(phase);
    th::Bytes form(raw.size() + 1);
    form[0] = static_cast<std::uint8_t>(phase);
    std::copy(raw.begin(), raw.end(), form.begin() + 1);
    CHECK_THROWS_AS(decode_filtered(dec, f, zstd_frame(form), raw.size()), IntegrityError);
  }
  ChunkEncoder enc(3);
  std::vector<std::uint8_t> stored;
  (void)enc.encode_filtered(Filter::kFp32, 1, raw, stored);
  CHECK_THROWS_AS(decode_filtered(dec, Filter::kFp32, stored, raw.size() - 1), IntegrityError);
  CHECK_THROWS_AS(decode_filtered(dec, Filter::kFp32, stored, raw.size() + 1), IntegrityError);
  for (std::size_t len = 0; len < stored.size(); len += 3) {
    CAPTURE(len);
    const th::Bytes cut(stored.begin(), stored.begin() + static_cast<std::ptrdiff_t>(len));
    CHECK_THROWS_AS(decode_filtered(dec, Filter::kFp32, cut, raw.size()), IntegrityError);
  }
  // Decoding with another width permutes differently: no error, but not the original bytes.
  th::Bytes out(raw.size());
  dec.decode(Codec::kZstd, Filter::kBf16, stored, out);
  CHECK(out != raw);
  CHECK(decode_filtered(dec, Filter::kFp32, stored, raw.size()) == raw);
}

}  // TEST_SUITE
