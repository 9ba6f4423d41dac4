// Codec 1: one zstd frame per chunk, no frame checksum (the index holds each chunk's SHA-256).
//
// Byte planes of filtered chunks are coded as Huffman literals without LZ matches, whatever the
// level: on float planes matches cost more bits than they save, so this packs smaller than every
// zstd level tried (1 to 19) and compresses and decodes about twice as fast as level 1
// (docs/PERFORMANCE.md). Planes that shrink below 1/kRedundantBelow (zeros, repeats), or that are
// smaller than a zstd block (they then share one Huffman table), also try LZ and keep the smaller:
// at level kFilteredLevel when the requested one is at most kFilteredLevelUpTo, else at the
// requested level.
//
// ZSTD_c_literalCompressionMode is in zstd's experimental section (stable since 1.4.5). Setting it
// is checked at run time: with a libzstd that refuses it, planes use the LZ context alone.
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#include <fmt/format.h>
#include <algorithm>

#include "torshpkg/codec.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg {

namespace {

constexpr unsigned kRedundantBelow = 4;
constexpr std::size_t kZstdBlock = 128 * 1024;  // ZSTD_BLOCKSIZE_MAX: one Huffman table each
constexpr int kFilteredLevel = 1, kFilteredLevelUpTo = 9;

struct FreeCCtx {
  void operator()(ZSTD_CCtx *c) const noexcept { ZSTD_freeCCtx(c); }
};
struct FreeDCtx {
  void operator()(ZSTD_DCtx *d) const noexcept { ZSTD_freeDCtx(d); }
};
using UniqueCCtx = std::unique_ptr<ZSTD_CCtx, FreeCCtx>;
using UniqueDCtx = std::unique_ptr<ZSTD_DCtx, FreeDCtx>;

UniqueCCtx new_cctx() {
  UniqueCCtx c(ZSTD_createCCtx());
  if (!c) throw std::bad_alloc();
  return c;
}

class ZstdDecoder final : public CodecDecoder {
 public:
  ZstdDecoder() : dctx_(ZSTD_createDCtx()) {
    if (!dctx_) throw std::bad_alloc();
  }
  void decode(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) override {
    const std::size_t n = ZSTD_decompressDCtx(dctx_.get(), out.data(), out.size(), in.data(), in.size());
    if (ZSTD_isError(n)) throw IntegrityError(fmt::format("zstd chunk does not decode: {}", ZSTD_getErrorName(n)));
    if (n != out.size()) throw IntegrityError(fmt::format("zstd chunk decodes to {} bytes, index says {}", n, out.size()));
  }

 private:
  UniqueDCtx dctx_;
};

class ZstdEncoder final : public CodecEncoder {
 public:
  explicit ZstdEncoder(int level) : plain_(new_cctx()), literals_(new_cctx()), planes_lz_(new_cctx()) {
    if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
      throw UsageError(fmt::format("compression level {} outside {}..{}", level, ZSTD_minCLevel(), ZSTD_maxCLevel()));
    ZSTD_CCtx_setParameter(plain_.get(), ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(planes_lz_.get(), ZSTD_c_compressionLevel,
                           level <= kFilteredLevelUpTo ? std::min(level, kFilteredLevel) : level);
    // Literals only: the fastest level skips nearly every match, and forcing Huffman-coded literals
    // (off by default at negative levels) leaves zstd an order-0 entropy coder per 128 KiB block.
    literals_only_ =
        !ZSTD_isError(ZSTD_CCtx_setParameter(literals_.get(), ZSTD_c_compressionLevel, ZSTD_minCLevel())) &&
        !ZSTD_isError(ZSTD_CCtx_setParameter(literals_.get(), ZSTD_c_literalCompressionMode, ZSTD_ps_enable));
    for (auto *c : {plain_.get(), literals_.get(), planes_lz_.get()}) ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0);
  }

  void encode(std::span<const std::uint8_t> in, std::vector<std::uint8_t> &out, EncodeInput what,
              std::size_t plane_width) override {
    if (what == EncodeInput::kPlain) return compress(plain_.get(), in, out);
    if (!literals_only_) return compress(planes_lz_.get(), in, out);
    compress(literals_.get(), in, out);
    // Entropy coding alone cannot go below about 1 bit per byte: zeros, padding and repeated values
    // need LZ matches. And zstd keeps one Huffman table per block of up to 128 KiB: planes smaller
    // than that (small chunks, file tails) share a table, which LZ level 1 then often beats. Only
    // such chunks pay for a second try.
    const bool small_planes = (in.size() - 1) / std::max<std::size_t>(1, plane_width) < kZstdBlock;
    if (out.size() * kRedundantBelow >= in.size() && !small_planes) return;
    compress(planes_lz_.get(), in, lz_out_);
    if (lz_out_.size() < out.size()) out.swap(lz_out_);
  }

 private:
  static void compress(ZSTD_CCtx *cctx, std::span<const std::uint8_t> in, std::vector<std::uint8_t> &out) {
    out.resize(ZSTD_compressBound(in.size()));
    const std::size_t n = ZSTD_compress2(cctx, out.data(), out.size(), in.data(), in.size());
    if (ZSTD_isError(n)) throw InternalError(fmt::format("zstd: {}", ZSTD_getErrorName(n)));
    out.resize(n);
  }

  UniqueCCtx plain_, literals_, planes_lz_;
  bool literals_only_ = false;
  std::vector<std::uint8_t> lz_out_;  // scratch
};

}  // namespace

extern const ChunkCodec kZstdCodec;
const ChunkCodec kZstdCodec{
    .id = format::Codec::kZstd,
    .name = "zstd",
    .identity = false,
    .max_stored = [](std::size_t decoded) { return ZSTD_compressBound(decoded); },
    .make_decoder = []() -> std::unique_ptr<CodecDecoder> { return std::make_unique<ZstdDecoder>(); },
    .make_encoder = [](int level) -> std::unique_ptr<CodecEncoder> { return std::make_unique<ZstdEncoder>(level); },
};

}  // namespace torshpkg
