#include "torshpkg/codec.hpp"

#include <zstd.h>

#include <algorithm>
#include <fmt/format.h>

#include "torshpkg/errors.hpp"

namespace torshpkg {

void ChunkEncoder::Free::operator()(ZSTD_CCtx_s *c) const noexcept { ZSTD_freeCCtx(c); }
void ChunkDecoder::Free::operator()(ZSTD_DCtx_s *d) const noexcept { ZSTD_freeDCtx(d); }

ChunkEncoder::ChunkEncoder(int level) : cctx_(ZSTD_createCCtx()), level_(level) {
  if (!cctx_) throw Error("zstd: cannot create a compression context");
  if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
    throw UsageError(fmt::format("compression level {} outside {}..{}", level, ZSTD_minCLevel(), ZSTD_maxCLevel()));
  ZSTD_CCtx_setParameter(cctx_.get(), ZSTD_c_compressionLevel, level_);
  // The index records sizes and digests; the frame needs neither its own checksum nor content size.
  ZSTD_CCtx_setParameter(cctx_.get(), ZSTD_c_checksumFlag, 0);
  ZSTD_CCtx_setParameter(cctx_.get(), ZSTD_c_contentSizeFlag, 1);
}

format::Codec ChunkEncoder::encode(std::span<const std::uint8_t> raw, std::vector<std::uint8_t> &out) {
  out.resize(ZSTD_compressBound(raw.size()));
  const std::size_t n = ZSTD_compress2(cctx_.get(), out.data(), out.size(), raw.data(), raw.size());
  if (ZSTD_isError(n)) throw Error(fmt::format("zstd: {}", ZSTD_getErrorName(n)));
  if (n * 100 > raw.size() * (100 - kMinSavingPercent)) {
    out.assign(raw.begin(), raw.end());
    return format::Codec::kStored;
  }
  out.resize(n);
  return format::Codec::kZstd;
}

ChunkDecoder::ChunkDecoder() : dctx_(ZSTD_createDCtx()) {
  if (!dctx_) throw Error("zstd: cannot create a decompression context");
}

void ChunkDecoder::decode(format::Codec codec, format::Filter filter, std::span<const std::uint8_t> stored,
                          std::span<std::uint8_t> out) {
  if (filter != format::Filter::kNone)
    throw FormatError(fmt::format("unknown filter id {}", static_cast<unsigned>(filter)));
  switch (codec) {
    case format::Codec::kStored:
      if (stored.size() != out.size()) throw IntegrityError("stored chunk size differs from its decoded size");
      std::copy(stored.begin(), stored.end(), out.begin());
      return;
    case format::Codec::kZstd: {
      const std::size_t n = ZSTD_decompressDCtx(dctx_.get(), out.data(), out.size(), stored.data(), stored.size());
      if (ZSTD_isError(n))
        throw IntegrityError(fmt::format("zstd chunk does not decode: {}", ZSTD_getErrorName(n)));
      if (n != out.size())
        throw IntegrityError(fmt::format("zstd chunk decodes to {} bytes, index says {}", n, out.size()));
      return;
    }
  }
  throw FormatError(fmt::format("unknown codec id {}", static_cast<unsigned>(codec)));
}

}  // namespace torshpkg
