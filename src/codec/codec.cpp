#include "torshpkg/codec.hpp"

// ZSTD_c_literalCompressionMode is in zstd's experimental section (stable since 1.4.5). Setting it
// is checked at run time: with a libzstd that refuses it, filtered planes use the LZ context alone.
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#include <fmt/format.h>
#include <algorithm>

#include "torshpkg/errors.hpp"
#include "torshpkg/filter.hpp"

namespace torshpkg {

void ChunkEncoder::Free::operator()(ZSTD_CCtx_s *c) const noexcept {
  ZSTD_freeCCtx(c);
}
void ChunkDecoder::Free::operator()(ZSTD_DCtx_s *d) const noexcept {
  ZSTD_freeDCtx(d);
}

ChunkEncoder::ChunkEncoder(int level)
    : cctx_(ZSTD_createCCtx()), filtered_cctx_(ZSTD_createCCtx()), filtered_lz_cctx_(ZSTD_createCCtx()), level_(level) {
  if (!cctx_ || !filtered_cctx_ || !filtered_lz_cctx_) throw Error("zstd: cannot create a compression context");
  if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
    throw UsageError(fmt::format("compression level {} outside {}..{}", level, ZSTD_minCLevel(), ZSTD_maxCLevel()));
  ZSTD_CCtx_setParameter(cctx_.get(), ZSTD_c_compressionLevel, level_);
  ZSTD_CCtx_setParameter(filtered_lz_cctx_.get(), ZSTD_c_compressionLevel,
                         level_ <= kFilteredLevelUpTo ? std::min(level_, kFilteredLevel) : level_);
  // Literals only: the fastest level skips nearly every match, and forcing Huffman-coded literals
  // (off by default at negative levels) leaves zstd an order-0 entropy coder per 128 KiB block.
  literals_only_ =
      !ZSTD_isError(ZSTD_CCtx_setParameter(filtered_cctx_.get(), ZSTD_c_compressionLevel, ZSTD_minCLevel())) &&
      !ZSTD_isError(ZSTD_CCtx_setParameter(filtered_cctx_.get(), ZSTD_c_literalCompressionMode, ZSTD_ps_enable));
  // The index records sizes and digests; frames need no checksum of their own.
  for (auto *c : {cctx_.get(), filtered_cctx_.get(), filtered_lz_cctx_.get()})
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0);
}

std::size_t ChunkEncoder::compress(ZSTD_CCtx_s *cctx, std::span<const std::uint8_t> in,
                                   std::vector<std::uint8_t> &out) {
  out.resize(ZSTD_compressBound(in.size()));
  const std::size_t n = ZSTD_compress2(cctx, out.data(), out.size(), in.data(), in.size());
  if (ZSTD_isError(n)) throw Error(fmt::format("zstd: {}", ZSTD_getErrorName(n)));
  out.resize(n);
  return n;
}

std::size_t ChunkEncoder::encode_filtered(format::Filter f, unsigned phase, std::span<const std::uint8_t> raw,
                                          std::vector<std::uint8_t> &out) {
  filtered_.resize(raw.size() + 1);
  apply_filter(f, phase, raw, filtered_);
  if (!literals_only_) return compress(filtered_lz_cctx_.get(), filtered_, out);
  const std::size_t n = compress(filtered_cctx_.get(), filtered_, out);
  // Entropy coding alone cannot go below about 1 bit per byte: zeros, padding and repeated values
  // need LZ matches. And zstd keeps one Huffman table per block of up to 128 KiB: planes smaller
  // than that (small chunks, file tails) share a table, which LZ level 1 then often beats. Only
  // such chunks pay for a second try.
  const bool small_planes = raw.size() / filter_width(f) < kZstdBlock;
  if (n * kRedundantBelow >= filtered_.size() && !small_planes) return n;
  if (compress(filtered_lz_cctx_.get(), filtered_, lz_out_) >= n) return n;
  out.swap(lz_out_);
  return out.size();
}

format::Codec ChunkEncoder::encode(std::span<const std::uint8_t> raw, std::vector<std::uint8_t> &out) {
  const std::size_t n = compress(cctx_.get(), raw, out);
  if (n * 100 > raw.size() * (100 - kMinSavingPercent)) {
    out.assign(raw.begin(), raw.end());
    return format::Codec::kStored;
  }
  return format::Codec::kZstd;
}

ChunkDecoder::ChunkDecoder() : dctx_(ZSTD_createDCtx()) {
  if (!dctx_) throw Error("zstd: cannot create a decompression context");
}

void ChunkDecoder::decode(format::Codec codec, format::Filter filter, std::span<const std::uint8_t> stored,
                          std::span<std::uint8_t> out) {
  if (filter != format::Filter::kNone) {
    (void)filter_width(filter);  // throws for an unknown id
    if (codec != format::Codec::kZstd) throw FormatError("a filter needs the zstd codec");
    // zstd decodes to the filtered form, one phase byte longer than the chunk; then the permutation is undone.
    filtered_.resize(out.size() + 1);
    const std::size_t n =
        ZSTD_decompressDCtx(dctx_.get(), filtered_.data(), filtered_.size(), stored.data(), stored.size());
    if (ZSTD_isError(n)) throw IntegrityError(fmt::format("zstd chunk does not decode: {}", ZSTD_getErrorName(n)));
    if (n != filtered_.size())
      throw IntegrityError(fmt::format("filtered chunk decodes to {} bytes, index says {}", n, filtered_.size()));
    undo_filter(filter, filtered_, out);
    return;
  }
  switch (codec) {
    case format::Codec::kStored:
      if (stored.size() != out.size()) throw IntegrityError("stored chunk size differs from its decoded size");
      std::copy(stored.begin(), stored.end(), out.begin());
      return;
    case format::Codec::kZstd: {
      const std::size_t n = ZSTD_decompressDCtx(dctx_.get(), out.data(), out.size(), stored.data(), stored.size());
      if (ZSTD_isError(n)) throw IntegrityError(fmt::format("zstd chunk does not decode: {}", ZSTD_getErrorName(n)));
      if (n != out.size())
        throw IntegrityError(fmt::format("zstd chunk decodes to {} bytes, index says {}", n, out.size()));
      return;
    }
  }
  throw FormatError(fmt::format("unknown codec id {}", static_cast<unsigned>(codec)));
}

}  // namespace torshpkg
