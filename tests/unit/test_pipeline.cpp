// pipeline.hpp, codec.hpp's registry and Package's per-chunk queries: each stage on its own, the
// pipeline over a MemorySource, and a package read from memory. Real data throughout: zstd frames
// from ChunkEncoder, filters from apply_filter, SHA-256 from digest.hpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"
#include "torshpkg/chunk_source.hpp"
#include "torshpkg/codec.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/filter.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/pipeline.hpp"
#include "torshpkg/writer.hpp"

using namespace torshpkg;
using format::ChunkEntry;
using format::Codec;
using format::Filter;
namespace fs = std::filesystem;

namespace {

constexpr Filter kFilters[] = {Filter::kBf16, Filter::kFp16, Filter::kFp32};

ChunkWork work(std::uint64_t index, const ChunkEntry &e) { return ChunkWork{index, e}; }

ChunkEntry entry(Codec c, Filter f, std::size_t stored, std::size_t decoded) {
  ChunkEntry e;
  e.codec = c;
  e.filter = f;
  e.stored_size = static_cast<std::uint32_t>(stored);
  e.decoded_size = static_cast<std::uint32_t>(decoded);
  return e;
}

// A real zstd frame of `raw`, as the packer makes it.
th::Bytes zstd_of(const th::Bytes &raw) {
  ChunkEncoder enc(3);
  th::Bytes out;
  REQUIRE(enc.encode(raw, out) == Codec::kZstd);
  return out;
}

// The filtered form of `raw` (raw.size() + 1 bytes).
th::Bytes filtered_of(Filter f, unsigned phase, const th::Bytes &raw) {
  th::Bytes out(raw.size() + 1);
  apply_filter(f, phase, raw, out);
  return out;
}

// A zstd frame of the filtered form of `raw`, as the packer makes it.
th::Bytes zstd_filtered_of(Filter f, unsigned phase, const th::Bytes &raw) {
  ChunkEncoder enc(3);
  th::Bytes out;
  enc.encode_filtered(f, phase, raw, out);
  return out;
}

// Little-endian floats of a smooth signal: what filters are for (skewed exponent bytes).
th::Bytes float_bytes(Filter f, std::size_t n, std::uint64_t seed) {
  const auto noise = th::random_bytes(n, seed);
  th::Bytes out(n);
  const unsigned w = filter_width(f);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t j = i % w;
    // High byte: sign + exponent from a small set; low bytes: noise (mantissa).
    out[i] = j + 1 == w ? static_cast<std::uint8_t>(0x3c + (noise[i] & 3)) : noise[i];
  }
  return out;
}

th::Bytes xor5a(std::span<const std::uint8_t> in) {
  th::Bytes out(in.begin(), in.end());
  for (auto &b : out) b ^= 0x5a;
  return out;
}

// A test-only stage, to show that a new stage is one class: XOR with 0x5a (in the position of the
// reserved decryption stage, its own inverse).
class XorStage final : public ChunkStage {
 public:
  [[nodiscard]] std::string_view name() const noexcept override { return "xor 0x5a"; }
  [[nodiscard]] bool applies(const ChunkEntry &) const noexcept override { return true; }
  [[nodiscard]] bool transforms() const noexcept override { return true; }
  [[nodiscard]] std::size_t output_size(const ChunkEntry &, std::size_t in) const override { return in; }
  void run(const ChunkWork &, std::span<const std::uint8_t> in, std::span<std::uint8_t> out,
           PipelineContext &) const override {
    REQUIRE(in.size() == out.size());
    for (std::size_t i = 0; i < in.size(); ++i) out[i] = in[i] ^ 0x5a;
    ++runs;
  }
  mutable std::atomic<unsigned> runs{0};
};

// A test-only checking stage: records the SHA-256 of the bytes it is shown.
class ObserveStage final : public ChunkStage {
 public:
  [[nodiscard]] std::string_view name() const noexcept override { return "observe"; }
  [[nodiscard]] bool applies(const ChunkEntry &) const noexcept override { return true; }
  [[nodiscard]] bool transforms() const noexcept override { return false; }
  [[nodiscard]] std::size_t output_size(const ChunkEntry &, std::size_t in) const override { return in; }
  void run(const ChunkWork &, std::span<const std::uint8_t> in, std::span<std::uint8_t> out,
           PipelineContext &) const override {
    CHECK(out.empty());
    std::lock_guard lock(mu);
    seen.push_back(sha256(in));
  }
  mutable std::mutex mu;
  mutable std::vector<Digest> seen;
};

// Chunks laid out in one memory image behind a fake 64-byte header, as a package lays them out.
struct Chunk {
  ChunkEntry entry;
  th::Bytes raw;     // what a reader must see
  th::Bytes stored;  // what lies in the image
};

struct Image {
  th::Bytes bytes = th::Bytes(64, 0xee);
  std::vector<Chunk> chunks;

  // `scramble`: write the stored bytes XORed with 0x5a (the digest covers them as written).
  void add(Codec c, Filter f, th::Bytes raw, th::Bytes stored, bool scramble = false) {
    if (scramble) stored = xor5a(stored);
    Chunk k{entry(c, f, stored.size(), raw.size()), std::move(raw), std::move(stored)};
    k.entry.offset = bytes.size();
    k.entry.digest = sha256(k.stored);
    bytes.insert(bytes.end(), k.stored.begin(), k.stored.end());
    bytes.insert(bytes.end(), 3, 0xdd);  // a gap, so that an off-by-one read shows
    chunks.push_back(std::move(k));
  }
  [[nodiscard]] std::shared_ptr<const ChunkSource> source() const {
    return std::make_shared<MemorySource>(bytes, "memory image");
  }
};

// One chunk of each kind the reader knows: stored, zstd, zstd + each filter at several phases.
Image standard_image(bool scramble = false) {
  Image img;
  auto raw = th::random_bytes(5000, 1);
  img.add(Codec::kStored, Filter::kNone, raw, raw, scramble);
  raw = th::text_bytes(70'000, 2);
  img.add(Codec::kZstd, Filter::kNone, raw, zstd_of(raw), scramble);
  raw = float_bytes(Filter::kBf16, 65'536, 3);
  img.add(Codec::kZstd, Filter::kBf16, raw, zstd_filtered_of(Filter::kBf16, 0, raw), scramble);
  raw = float_bytes(Filter::kFp16, 40'001, 4);
  img.add(Codec::kZstd, Filter::kFp16, raw, zstd_filtered_of(Filter::kFp16, 1, raw), scramble);
  raw = float_bytes(Filter::kFp32, 30'003, 5);
  img.add(Codec::kZstd, Filter::kFp32, raw, zstd_filtered_of(Filter::kFp32, 3, raw), scramble);
  raw = th::bytes_of("x");
  img.add(Codec::kStored, Filter::kNone, raw, raw, scramble);
  return img;
}

th::Bytes load(const ChunkPipeline &p, std::uint64_t index, const ChunkEntry &e) {
  th::Bytes out(e.decoded_size, 0xcc);
  p.load(work(index, e), out);
  return out;
}

}  // namespace

TEST_SUITE("pipeline") {

// ------------------------------------------------------------------------------------------------
// The codec registry.

TEST_CASE("registry: the known codecs and their properties") {
  const ChunkCodec *stored = find_codec(0);
  const ChunkCodec *zstd = find_codec(1);
  REQUIRE(stored != nullptr);
  REQUIRE(zstd != nullptr);
  CHECK(stored->id == Codec::kStored);
  CHECK(zstd->id == Codec::kZstd);
  CHECK(stored->name == "stored");
  CHECK(zstd->name == "zstd");
  CHECK(stored->identity);
  CHECK_FALSE(zstd->identity);
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{65536}, std::size_t{4} << 20}) {
    CAPTURE(n);
    CHECK(stored->max_stored(n) == n);
    CHECK(zstd->max_stored(n) >= n);  // incompressible data grows a little
  }
  CHECK(&codec_for(Codec::kStored) == stored);
  CHECK(&codec_for(Codec::kZstd) == zstd);
  CHECK(codec_name(Codec::kStored) == "stored");
  CHECK(codec_name(Codec::kZstd) == "zstd");
  for (const ChunkCodec *c : {stored, zstd}) {
    REQUIRE(static_cast<bool>(c->make_decoder));
    REQUIRE(static_cast<bool>(c->make_encoder));
    CHECK(c->make_decoder() != nullptr);
    CHECK(c->make_encoder(3) != nullptr);
  }
  CHECK_THROWS_AS((void)zstd->make_encoder(1000), UsageError);
}

TEST_CASE("registry: unknown ids") {
  for (unsigned id = 2; id <= 255; ++id) {
    CAPTURE(id);
    CHECK(find_codec(static_cast<std::uint8_t>(id)) == nullptr);
    CHECK(codec_name(static_cast<Codec>(id)) == "unknown");
  }
  for (unsigned id : {2u, 7u, 200u, 255u}) {
    CAPTURE(id);
    try {
      (void)codec_for(static_cast<Codec>(id));
      FAIL("no exception");
    } catch (const FormatError &e) {
      CHECK(th::contains(e.what(), std::to_string(id)));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// PipelineContext.

TEST_CASE("context: two scratch buffers, one decoder per codec made on first use") {
  PipelineContext ctx;
  CHECK(&ctx.scratch(0) != &ctx.scratch(1));
  CHECK(&ctx.scratch(2) == &ctx.scratch(0));
  CHECK(&ctx.scratch(3) == &ctx.scratch(1));
  CodecDecoder &z = ctx.decoder(Codec::kZstd);
  CHECK(&ctx.decoder(Codec::kZstd) == &z);
  CodecDecoder &s = ctx.decoder(Codec::kStored);
  CHECK(&s != &z);
  CHECK(&ctx.decoder(Codec::kZstd) == &z);  // making another does not move the first
  CHECK_THROWS_AS((void)ctx.decoder(static_cast<Codec>(9)), FormatError);
  CHECK(&ctx.decoder(Codec::kStored) == &s);
}

// ------------------------------------------------------------------------------------------------
// Each stage on its own.

TEST_CASE("stage verify: applies to every chunk, checks only, passes on the right digest") {
  const auto v = verify_digest_stage();
  CHECK(v->name() == "verify");
  CHECK_FALSE(v->transforms());
  for (Codec c : {Codec::kStored, Codec::kZstd})
    for (Filter f : {Filter::kNone, Filter::kBf16, Filter::kFp32}) CHECK(v->applies(entry(c, f, 10, 10)));

  const auto stored = zstd_of(th::text_bytes(20'000, 6));
  auto e = entry(Codec::kZstd, Filter::kNone, stored.size(), 20'000);
  e.digest = sha256(stored);
  PipelineContext ctx;
  CHECK_NOTHROW(v->run(work(7, e), stored, {}, ctx));
  // An empty input has a digest too.
  auto empty = entry(Codec::kStored, Filter::kNone, 0, 0);
  empty.digest = sha256({});
  CHECK_NOTHROW(v->run(work(0, empty), {}, {}, ctx));
}

TEST_CASE("stage verify: a one-bit flip anywhere is an IntegrityError naming the chunk") {
  const auto v = verify_digest_stage();
  const auto stored = th::random_bytes(4096, 7);
  auto e = entry(Codec::kStored, Filter::kNone, stored.size(), stored.size());
  e.digest = sha256(stored);
  PipelineContext ctx;
  for (std::size_t at : {std::size_t{0}, std::size_t{1}, std::size_t{2047}, std::size_t{4095}}) {
    for (unsigned bit : {0u, 7u}) {
      CAPTURE(at);
      CAPTURE(bit);
      auto bad = stored;
      bad[at] ^= static_cast<std::uint8_t>(1u << bit);
      try {
        v->run(work(1234567, e), bad, {}, ctx);
        FAIL("no exception");
      } catch (const IntegrityError &err) {
        CHECK(th::contains(err.what(), "chunk 1234567"));
      }
    }
  }
  // A flip in the digest, not the bytes, fails the same way.
  auto wrong = e;
  wrong.digest[31] ^= 0x80;
  CHECK_THROWS_AS(v->run(work(3, wrong), stored, {}, ctx), IntegrityError);
  // One byte more or less is also a mismatch.
  CHECK_THROWS_AS(v->run(work(3, e), std::span(stored).first(4095), {}, ctx), IntegrityError);
}

TEST_CASE("stage decode: applies to zstd, not to stored; output size") {
  const auto d = decode_stage();
  CHECK(d->name() == "decode");
  CHECK(d->transforms());
  CHECK_FALSE(d->applies(entry(Codec::kStored, Filter::kNone, 100, 100)));
  CHECK(d->applies(entry(Codec::kZstd, Filter::kNone, 10, 100)));
  CHECK(d->applies(entry(Codec::kZstd, Filter::kBf16, 10, 100)));
  // An unknown codec reaches run(), which refuses it.
  CHECK(d->applies(entry(static_cast<Codec>(9), Filter::kNone, 10, 100)));

  CHECK(d->output_size(entry(Codec::kZstd, Filter::kNone, 10, 1000), 10) == 1000);
  CHECK(d->output_size(entry(Codec::kZstd, Filter::kNone, 10, 1000), 5000) == 1000);  // input size is irrelevant
  for (Filter f : kFilters) {
    CAPTURE(static_cast<int>(f));
    CHECK(d->output_size(entry(Codec::kZstd, f, 10, 1000), 10) == 1001);
  }
  CHECK(d->output_size(entry(Codec::kZstd, Filter::kNone, 10, 0xffffffffu), 10) == std::size_t{0xffffffffu});
  CHECK(d->output_size(entry(Codec::kZstd, Filter::kFp32, 10, 0xffffffffu), 10) == std::size_t{0x100000000u});
}

TEST_CASE("stage decode: decodes real frames, plain and filtered") {
  const auto d = decode_stage();
  PipelineContext ctx;
  const auto raw = th::text_bytes(100'000, 8);
  const auto frame = zstd_of(raw);
  const auto e = entry(Codec::kZstd, Filter::kNone, frame.size(), raw.size());
  th::Bytes out(d->output_size(e, frame.size()), 0xcc);
  d->run(work(0, e), frame, out, ctx);
  CHECK(out == raw);

  for (Filter f : kFilters) {
    for (unsigned phase = 0; phase < filter_width(f); ++phase) {
      CAPTURE(static_cast<int>(f));
      CAPTURE(phase);
      const auto fraw = float_bytes(f, 10'000 + phase, 9 + phase);
      const auto fframe = zstd_filtered_of(f, phase, fraw);
      const auto fe = entry(Codec::kZstd, f, fframe.size(), fraw.size());
      th::Bytes fout(d->output_size(fe, fframe.size()), 0xcc);
      d->run(work(1, fe), fframe, fout, ctx);
      CHECK(fout == filtered_of(f, phase, fraw));  // the filtered form, for the next stage
    }
  }
  // The same context decodes again (its zstd state is reused).
  std::fill(out.begin(), out.end(), 0);
  d->run(work(0, e), frame, out, ctx);
  CHECK(out == raw);
}

TEST_CASE("stage decode: truncated or garbage frames and wrong sizes are IntegrityErrors") {
  const auto d = decode_stage();
  PipelineContext ctx;
  const auto raw = th::text_bytes(50'000, 10);
  const auto frame = zstd_of(raw);
  auto run = [&](std::span<const std::uint8_t> in, std::size_t out_size) {
    const auto e = entry(Codec::kZstd, Filter::kNone, in.size(), out_size);
    th::Bytes out(out_size);
    d->run(work(5, e), in, out, ctx);
  };
  CHECK_NOTHROW(run(frame, raw.size()));
  CHECK_THROWS_AS(run(std::span(frame).first(frame.size() - 1), raw.size()), IntegrityError);
  CHECK_THROWS_AS(run(std::span(frame).first(frame.size() / 2), raw.size()), IntegrityError);
  CHECK_THROWS_AS(run(std::span(frame).first(4), raw.size()), IntegrityError);
  CHECK_THROWS_AS(run({}, raw.size()), IntegrityError);
  CHECK_THROWS_AS(run(th::random_bytes(1000, 11), raw.size()), IntegrityError);
  auto bad_magic = frame;
  bad_magic[0] ^= 0xff;
  CHECK_THROWS_AS(run(bad_magic, raw.size()), IntegrityError);
  // A valid frame whose content is not the size the index says, either way.
  CHECK_THROWS_AS(run(frame, raw.size() + 1), IntegrityError);
  CHECK_THROWS_AS(run(frame, raw.size() - 1), IntegrityError);
  CHECK_THROWS_AS(run(frame, 0), IntegrityError);
  // After all these errors the context still decodes.
  CHECK_NOTHROW(run(frame, raw.size()));

  // An unknown codec is a FormatError (this reader does not implement it), not damage.
  const auto unknown = entry(static_cast<Codec>(9), Filter::kNone, frame.size(), raw.size());
  th::Bytes out(raw.size());
  CHECK_THROWS_AS(d->run(work(5, unknown), frame, out, ctx), FormatError);
}

TEST_CASE("stage undo filter: applies only with a filter; output size") {
  const auto u = undo_filter_stage();
  CHECK(u->name() == "undo filter");
  CHECK(u->transforms());
  CHECK_FALSE(u->applies(entry(Codec::kZstd, Filter::kNone, 10, 100)));
  CHECK_FALSE(u->applies(entry(Codec::kStored, Filter::kNone, 100, 100)));
  for (Filter f : kFilters) {
    CHECK(u->applies(entry(Codec::kZstd, f, 10, 100)));
    CHECK(u->output_size(entry(Codec::kZstd, f, 10, 100), 101) == 100);
    CHECK(u->output_size(entry(Codec::kZstd, f, 10, 100), 1) == 0);
    CHECK(u->output_size(entry(Codec::kZstd, f, 10, 100), 0) == 0);
  }
}

TEST_CASE("stage undo filter: round-trips apply_filter for every filter, phase and small size") {
  const auto u = undo_filter_stage();
  PipelineContext ctx;
  for (Filter f : kFilters) {
    const unsigned w = filter_width(f);
    for (unsigned phase = 0; phase < w; ++phase) {
      for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{4},
                            std::size_t{5}, std::size_t{7}, std::size_t{8}, std::size_t{9}, std::size_t{31},
                            std::size_t{1001}, std::size_t{65536}, std::size_t{65539}}) {
        if (n < phase) continue;
        CAPTURE(static_cast<int>(f));
        CAPTURE(phase);
        CAPTURE(n);
        const auto raw = th::random_bytes(n, 100 * n + phase);
        const auto filtered = filtered_of(f, phase, raw);
        CHECK(filtered[0] == phase);
        if (n >= 64) CHECK_FALSE(std::equal(raw.begin(), raw.end(), filtered.begin() + 1));  // it did permute
        const auto e = entry(Codec::kZstd, f, 1, n);
        th::Bytes out(u->output_size(e, filtered.size()), 0xcc);
        REQUIRE(out.size() == n);
        u->run(work(0, e), filtered, out, ctx);
        CHECK(out == raw);
      }
    }
  }
}

TEST_CASE("stage undo filter: a bad phase byte is an IntegrityError") {
  const auto u = undo_filter_stage();
  PipelineContext ctx;
  for (Filter f : kFilters) {
    const unsigned w = filter_width(f);
    CAPTURE(static_cast<int>(f));
    const auto raw = th::random_bytes(100, 12);
    auto filtered = filtered_of(f, 0, raw);
    const auto e = entry(Codec::kZstd, f, 1, raw.size());
    th::Bytes out(raw.size());
    for (unsigned bad : {w, w + 1, 255u}) {
      CAPTURE(bad);
      filtered[0] = static_cast<std::uint8_t>(bad);
      CHECK_THROWS_AS(u->run(work(0, e), filtered, out, ctx), IntegrityError);
    }
  }
  // A phase below the width but past the end of a tiny chunk.
  const th::Bytes one = {0x42};
  auto filtered = filtered_of(Filter::kFp32, 1, one);
  th::Bytes out(1);
  const auto e = entry(Codec::kZstd, Filter::kFp32, 1, 1);
  CHECK_NOTHROW(u->run(work(0, e), filtered, out, ctx));
  CHECK(out == one);
  filtered[0] = 2;
  CHECK_THROWS_AS(u->run(work(0, e), filtered, out, ctx), IntegrityError);
}

// ------------------------------------------------------------------------------------------------
// The pipeline over a MemorySource.

TEST_CASE("pipeline: stored, zstd and zstd+filter chunks land in the output") {
  const auto img = standard_image();
  const ChunkPipeline p(img.source(), ChunkPipeline::standard_stages(true));
  CHECK(p.source().name() == "memory image");
  for (std::size_t i = 0; i < img.chunks.size(); ++i) {
    const auto &c = img.chunks[i];
    CAPTURE(i);
    CHECK(load(p, i, c.entry) == c.raw);
    // decode() runs the same stages over bytes already in hand.
    th::Bytes out(c.raw.size(), 0xcc);
    p.decode(work(i, c.entry), c.stored, out);
    CHECK(out == c.raw);
  }
  // Loading again (idle contexts reused) gives the same bytes.
  for (std::size_t i = img.chunks.size(); i-- > 0;) CHECK(load(p, i, img.chunks[i].entry) == img.chunks[i].raw);
}

TEST_CASE("pipeline: a digest mismatch is an IntegrityError, for every kind of chunk") {
  const auto img = standard_image();
  const ChunkPipeline p(img.source(), ChunkPipeline::standard_stages(true));
  for (std::size_t i = 0; i < img.chunks.size(); ++i) {
    CAPTURE(i);
    auto e = img.chunks[i].entry;
    e.digest[0] ^= 1;
    th::Bytes out(e.decoded_size);
    try {
      p.load(work(40 + i, e), out);
      FAIL("no exception");
    } catch (const IntegrityError &err) {
      CHECK(th::contains(err.what(), "chunk " + std::to_string(40 + i)));
    }
    CHECK_THROWS_AS(p.decode(work(i, e), img.chunks[i].stored, out), IntegrityError);
  }
  // Damage in the stored bytes, not the index: one bit in each chunk's bytes.
  auto damaged = img.bytes;
  for (const auto &c : img.chunks) damaged[c.entry.offset + c.entry.stored_size / 2] ^= 0x10;
  const ChunkPipeline pd(std::make_shared<MemorySource>(damaged, "damaged"), ChunkPipeline::standard_stages(true));
  for (std::size_t i = 0; i < img.chunks.size(); ++i) {
    CAPTURE(i);
    th::Bytes out(img.chunks[i].entry.decoded_size);
    CHECK_THROWS_AS(pd.load(work(i, img.chunks[i].entry), out), IntegrityError);
  }
}

TEST_CASE("pipeline: standard_stages(false) skips verification") {
  const auto img = standard_image();
  CHECK(ChunkPipeline::standard_stages(true).size() == 3);
  const auto unverified = ChunkPipeline::standard_stages(false);
  REQUIRE(unverified.size() == 2);
  CHECK(unverified[0]->name() == "decode");
  CHECK(unverified[1]->name() == "undo filter");
  const ChunkPipeline p(img.source(), ChunkPipeline::standard_stages(false));
  for (std::size_t i = 0; i < img.chunks.size(); ++i) {
    CAPTURE(i);
    auto e = img.chunks[i].entry;
    e.digest = Digest{};  // wrong
    CHECK(load(p, i, e) == img.chunks[i].raw);
  }
}

TEST_CASE("pipeline: an output buffer of the wrong size is an InternalError") {
  const auto img = standard_image();
  const ChunkPipeline p(img.source(), ChunkPipeline::standard_stages(true));
  for (std::size_t i = 0; i < img.chunks.size(); ++i) {
    CAPTURE(i);
    const auto &e = img.chunks[i].entry;
    for (std::size_t n : {std::size_t{0}, std::size_t{e.decoded_size} - 1, std::size_t{e.decoded_size} + 1}) {
      if (n == e.decoded_size) continue;
      CAPTURE(n);
      th::Bytes out(n);
      CHECK_THROWS_AS(p.load(work(i, e), out), InternalError);
    }
  }
}

TEST_CASE("pipeline: entries that lie about the layout") {
  const auto img = standard_image();
  const ChunkPipeline p(img.source(), ChunkPipeline::standard_stages(true));
  const auto &stored = img.chunks[0].entry;  // stored codec
  const auto &zstd = img.chunks[1].entry;

  // Stored bytes past the end of the source: FormatError from the source.
  for (const auto &base : {stored, zstd}) {
    auto e = base;
    e.offset = img.bytes.size() - 1;
    th::Bytes out(e.decoded_size);
    CHECK_THROWS_AS(p.load(work(0, e), out), FormatError);
    e.offset = ~std::uint64_t{0} - 2;
    CHECK_THROWS_AS(p.load(work(0, e), out), FormatError);
  }
  // A stored chunk whose sizes differ.
  auto e = stored;
  e.decoded_size += 1;
  th::Bytes out(e.decoded_size);
  CHECK_THROWS_AS(p.load(work(0, e), out), FormatError);
  // A zstd chunk read one byte short (its digest then fails first).
  e = zstd;
  e.stored_size -= 1;
  out.assign(e.decoded_size, 0);
  CHECK_THROWS_AS(p.load(work(0, e), out), IntegrityError);
  // An unknown codec or filter: this reader does not implement it.
  e = zstd;
  e.codec = static_cast<Codec>(9);
  CHECK_THROWS_AS(p.load(work(0, e), out), FormatError);
  const auto &bf16 = img.chunks[2].entry;
  e = bf16;
  e.filter = static_cast<Filter>(9);
  out.assign(e.decoded_size, 0);
  CHECK_THROWS_AS(p.load(work(0, e), out), FormatError);
}

TEST_CASE("pipeline: a new stage is one class (XOR in the decryption slot)") {
  // The image holds every chunk's stored bytes XORed with 0x5a, the digest covers them as stored:
  // verify, then the test stage unscrambles, then decode and undo filter as usual. This runs one
  // (stored), two (zstd) and three (zstd + filter) transforming stages.
  const auto img = standard_image(true);
  ChunkPipeline::Stages stages;
  stages.push_back(verify_digest_stage());
  auto xs = std::make_unique<XorStage>();
  const XorStage &x = *xs;
  stages.push_back(std::move(xs));
  stages.push_back(decode_stage());
  stages.push_back(undo_filter_stage());
  const ChunkPipeline p(img.source(), std::move(stages));
  for (std::size_t i = 0; i < img.chunks.size(); ++i) {
    CAPTURE(i);
    const auto &c = img.chunks[i];
    CHECK(load(p, i, c.entry) == c.raw);
  }
  CHECK(x.runs.load() == img.chunks.size());
  // The digest is still checked before the new stage runs.
  auto e = img.chunks[1].entry;
  e.digest[5] ^= 4;
  th::Bytes out(e.decoded_size);
  CHECK_THROWS_AS(p.load(work(1, e), out), IntegrityError);
  CHECK(x.runs.load() == img.chunks.size());

  // Without the stage the scrambled bytes do not decode (or decode to the wrong bytes).
  const ChunkPipeline plain(img.source(), ChunkPipeline::standard_stages(true));
  out.assign(img.chunks[0].raw.size(), 0);
  plain.load(work(0, img.chunks[0].entry), out);
  CHECK(out == xor5a(img.chunks[0].raw));
  out.assign(img.chunks[1].raw.size(), 0);
  CHECK_THROWS_AS(plain.load(work(1, img.chunks[1].entry), out), IntegrityError);
}

TEST_CASE("pipeline: a stage after the last standard one, and a checking stage in between") {
  const auto img = standard_image();
  ChunkPipeline::Stages stages = ChunkPipeline::standard_stages(true);
  auto obs = std::make_unique<ObserveStage>();
  const ObserveStage &o = *obs;
  stages.insert(stages.begin() + 2, std::move(obs));  // between decode and undo filter
  stages.push_back(std::make_unique<XorStage>());     // last: writes the caller's buffer
  const ChunkPipeline p(img.source(), std::move(stages));
  for (std::size_t i = 0; i < img.chunks.size(); ++i) {
    CAPTURE(i);
    const auto &c = img.chunks[i];
    CHECK(load(p, i, c.entry) == xor5a(c.raw));
  }
  // The checking stage saw each chunk as decode left it: the filtered form when there is a filter.
  REQUIRE(o.seen.size() == img.chunks.size());
  const unsigned phases[] = {0, 0, 0, 1, 3, 0};
  for (std::size_t i = 0; i < img.chunks.size(); ++i) {
    CAPTURE(i);
    const auto &c = img.chunks[i];
    const auto expect = c.entry.filter == Filter::kNone ? sha256(c.raw)
                                                        : sha256(filtered_of(c.entry.filter, phases[i], c.raw));
    CHECK(o.seen[i] == expect);
  }
}

TEST_CASE("pipeline: up to eight stages; more is an InternalError") {
  const auto img = standard_image();
  ChunkPipeline::Stages eight;
  for (int i = 0; i < 8; ++i) eight.push_back(std::make_unique<XorStage>());  // an even count: identity
  const ChunkPipeline p(img.source(), std::move(eight));
  // Without decode, only the stored chunks come out right; eight transforms ping-pong between the
  // two scratch buffers and the output.
  CHECK(load(p, 0, img.chunks[0].entry) == img.chunks[0].raw);
  CHECK(load(p, 5, img.chunks[5].entry) == img.chunks[5].raw);

  ChunkPipeline::Stages nine;
  for (int i = 0; i < 9; ++i) nine.push_back(std::make_unique<XorStage>());
  CHECK_THROWS_AS(ChunkPipeline(img.source(), std::move(nine)), InternalError);

  // No stages at all: every chunk is its stored bytes.
  const ChunkPipeline none(img.source(), {});
  CHECK(load(none, 0, img.chunks[0].entry) == img.chunks[0].raw);
  th::Bytes out(img.chunks[1].raw.size());
  CHECK_THROWS_AS(none.load(work(1, img.chunks[1].entry), out), FormatError);  // sizes differ
}

TEST_CASE("pipeline: many threads through one pipeline (contexts are leased, not shared)") {
  const auto img = standard_image();
  const ChunkPipeline p(img.source(), ChunkPipeline::standard_stages(true));
  constexpr unsigned kThreads = 8, kLoads = 60;
  std::atomic<unsigned> wrong{0}, unexpected{0}, refused{0};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      th::Bytes out;
      for (unsigned k = 0; k < kLoads; ++k) {
        const std::size_t i = (t + k * 7) % img.chunks.size();
        auto e = img.chunks[i].entry;
        const bool corrupt = (k % 11) == 5;  // failures return their context too
        if (corrupt) e.digest[3] ^= 1;
        out.assign(e.decoded_size, 0);
        try {
          p.load(work(i, e), out);
          if (corrupt) ++unexpected;
          else if (out != img.chunks[i].raw) ++wrong;
        } catch (const IntegrityError &) {
          if (corrupt) ++refused;
          else ++unexpected;
        } catch (...) {
          ++unexpected;
        }
      }
    });
  for (auto &t : threads) t.join();
  CHECK(wrong.load() == 0);
  CHECK(unexpected.load() == 0);
  CHECK(refused.load() > 0);
  // Afterwards the pool's contexts still work.
  for (std::size_t i = 0; i < img.chunks.size(); ++i) CHECK(load(p, i, img.chunks[i].entry) == img.chunks[i].raw);
}

TEST_CASE("ChunkDecoder: every kind of chunk without a source") {
  ChunkDecoder dec;
  const auto img = standard_image();
  for (const auto &c : img.chunks) {
    th::Bytes out(c.raw.size(), 0xcc);
    dec.decode(c.entry.codec, c.entry.filter, c.stored, out);
    CHECK(out == c.raw);
  }
  th::Bytes out(10);
  CHECK_THROWS_AS(dec.decode(Codec::kStored, Filter::kBf16, th::Bytes(11), out), FormatError);
  CHECK_THROWS_AS(dec.decode(static_cast<Codec>(4), Filter::kNone, th::Bytes(10), out), FormatError);
  CHECK_THROWS_AS(dec.decode(Codec::kZstd, static_cast<Filter>(4), th::Bytes(10), out), FormatError);
  CHECK_THROWS_AS(dec.decode(Codec::kStored, Filter::kNone, th::Bytes(11), out), IntegrityError);
}

}  // TEST_SUITE

// ------------------------------------------------------------------------------------------------
// Package's per-chunk and per-file queries, over a MemorySource of a real package.

namespace {

constexpr std::uint64_t kCs = 1u << 16;  // th::pack_options' chunk size

struct PackageFixture {
  th::TempDir dir;
  fs::path src, out;
  th::Bytes image;
  std::shared_ptr<const Package> pkg;

  PackageFixture() {
    src = dir / "tree";
    out = dir / "tree.tpkg";
    fs::create_directories(src / "sub/deeper");
    th::write_file(src / "dup1.dat", th::random_bytes(150'000, 21));
    th::write_file(src / "dup2.dat", th::random_bytes(150'000, 21));
    th::Bytes mixed = th::text_bytes(kCs, 22);  // one zstd chunk, then one stored chunk
    const auto noise = th::random_bytes(kCs, 23);
    mixed.insert(mixed.end(), noise.begin(), noise.end());
    th::write_file(src / "mixed.dat", mixed);
    th::write_file(src / "text.txt", th::text_bytes(100'000, 24));
    th::write_file(src / "noise.dat", th::random_bytes(70'000, 25));
    const auto block = th::random_bytes(kCs, 26);
    th::Bytes rep = block;
    rep.insert(rep.end(), block.begin(), block.end());
    rep.insert(rep.end(), block.begin(), block.begin() + 100);
    th::write_file(src / "rep.dat", rep);
    th::write_file(src / "empty.txt", "");
    th::write_file(src / "sub/deeper/x.txt", "deep\n");
    fs::create_symlink("text.txt", src / "link");
    (void)pack(th::pack_options(src, out));
    image = th::read_file(out);
    pkg = Package::open(std::make_shared<MemorySource>(image, "memory:tree.tpkg"));
  }
  [[nodiscard]] std::uint32_t ino(std::string_view path) const {
    const auto i = pkg->resolve(path);
    REQUIRE_MESSAGE(i.has_value(), "not in package: " << std::string(path));
    return *i;
  }
};

PackageFixture &pfx() {
  static PackageFixture f;
  return f;
}

th::Bytes file_bytes(const Package &p, std::uint32_t ino) {
  const auto in = p.inode(ino);
  th::Bytes out;
  for (std::uint64_t k = 0; k < p.chunks_in_file(ino); ++k) {
    const auto c = p.chunk(in.first + k);
    th::Bytes buf(c.decoded_size);
    p.load_chunk(in.first + k, buf);
    out.insert(out.end(), buf.begin(), buf.end());
  }
  return out;
}

}  // namespace

TEST_SUITE("pipeline") {

TEST_CASE("package over a MemorySource: opens, names its source, reads every file") {
  const auto &f = pfx();
  const auto &p = *f.pkg;
  CHECK(p.path() == "memory:tree.tpkg");
  CHECK(p.file_size() == f.image.size());
  CHECK(p.chunk_size() == kCs);
  CHECK(p.root_digest() == Package::open(f.out.string())->root_digest());
  for (const std::string rel : {"dup1.dat", "dup2.dat", "mixed.dat", "text.txt", "noise.dat", "rep.dat", "empty.txt",
                          "sub/deeper/x.txt"}) {
    CAPTURE(rel);
    CHECK(file_bytes(p, f.ino(rel)) == th::read_file(f.src / rel));
  }
}

TEST_CASE("package: cache_key and first_use for duplicated chunks") {
  const auto &f = pfx();
  const auto &p = *f.pkg;
  const auto a = f.ino("dup1.dat"), b = f.ino("dup2.dat");
  REQUIRE(p.chunks_in_file(a) == 3);
  REQUIRE(p.chunks_in_file(b) == 3);
  const std::uint64_t lo = std::min(p.inode(a).first, p.inode(b).first);
  const std::uint64_t hi = std::max(p.inode(a).first, p.inode(b).first);
  REQUIRE(lo != hi);
  for (std::uint64_t k = 0; k < 3; ++k) {
    CAPTURE(k);
    CHECK(p.cache_key(lo + k) == lo + k);
    CHECK(p.first_use(lo + k));
    CHECK(p.cache_key(hi + k) == lo + k);  // the second file's chunks are keyed by the first's
    CHECK_FALSE(p.first_use(hi + k));
    CHECK(p.chunk(hi + k).offset == p.chunk(lo + k).offset);
  }
  // Within one file: rep.dat's second block is its first.
  const auto r = p.inode(f.ino("rep.dat")).first;
  REQUIRE(p.chunks_in_file(f.ino("rep.dat")) == 3);
  CHECK(p.first_use(r));
  CHECK(p.cache_key(r + 1) == r);
  CHECK_FALSE(p.first_use(r + 1));
  CHECK(p.first_use(r + 2));

  // Exactly those four chunks are aliases; every other chunk is its own key.
  std::uint64_t aliases = 0;
  for (std::uint64_t i = 0; i < p.chunk_count(); ++i) {
    CHECK(p.cache_key(i) <= i);
    CHECK(p.first_use(p.cache_key(i)));
    if (!p.first_use(i)) ++aliases;
  }
  CHECK(aliases == 4);
}

TEST_CASE("package: codec_summary") {
  const auto &f = pfx();
  const auto &p = *f.pkg;
  CHECK(p.codec_summary(f.ino("text.txt")) == "zstd");
  CHECK(p.codec_summary(f.ino("noise.dat")) == "stored");
  CHECK(p.codec_summary(f.ino("mixed.dat")) == "zstd+stored");
  CHECK(p.codec_summary(f.ino("empty.txt")) == "none");
  CHECK(p.codec_summary(f.ino("sub")) == "none");  // a directory has no chunks
  CHECK(p.codec_summary(f.ino("link")) == "none");
}

TEST_CASE("package: file_sha256") {
  const auto &f = pfx();
  const auto &p = *f.pkg;
  for (const std::string rel : {"dup1.dat", "dup2.dat", "mixed.dat", "text.txt", "noise.dat", "rep.dat", "empty.txt",
                          "sub/deeper/x.txt"}) {
    CAPTURE(rel);
    const auto d = p.file_sha256(f.ino(rel));
    REQUIRE(d.has_value());
    CHECK(*d == sha256(th::read_file(f.src / rel)));
  }
  CHECK(*p.file_sha256(f.ino("empty.txt")) == sha256({}));
  CHECK_FALSE(p.file_sha256(0).has_value());  // the root
  CHECK_FALSE(p.file_sha256(f.ino("sub")).has_value());
  CHECK_FALSE(p.file_sha256(f.ino("sub/deeper")).has_value());
  CHECK_FALSE(p.file_sha256(f.ino("link")).has_value());
  CHECK_FALSE(p.file_sha256(p.inode_count()).has_value());  // out of range
  CHECK_FALSE(p.file_sha256(~std::uint32_t{0}).has_value());
}

TEST_CASE("package: file_sha256 resolved once, from many threads at once") {
  // A package of its own, so that the first use happens here, concurrently.
  const auto &f = pfx();
  const auto p = Package::open(std::make_shared<MemorySource>(f.image, "fresh"));
  const auto ino = f.ino("text.txt");
  const auto expect = sha256(th::read_file(f.src / "text.txt"));
  std::atomic<unsigned> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t)
    threads.emplace_back([&] {
      for (int k = 0; k < 20; ++k)
        if (p->file_sha256(ino) != expect) ++wrong;
    });
  for (auto &t : threads) t.join();
  CHECK(wrong.load() == 0);
}

}  // TEST_SUITE
