// Chunk codecs. Each object owns one zstd context: keep one per thread, never share.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "torshpkg/format.hpp"

struct ZSTD_CCtx_s;
struct ZSTD_DCtx_s;

namespace torshpkg {

class ChunkEncoder {
 public:
  explicit ChunkEncoder(int level);
  // Encodes one chunk into `out` and returns the codec used: zstd, or stored when
  // compression saves less than kMinSavingPercent.
  format::Codec encode(std::span<const std::uint8_t> raw, std::vector<std::uint8_t> &out);
  // zstd of the filtered form of `raw` (filter.hpp) into `out`; returns the compressed size.
  std::size_t encode_filtered(format::Filter f, unsigned phase, std::span<const std::uint8_t> raw,
                              std::vector<std::uint8_t> &out);
  static constexpr unsigned kMinSavingPercent = 3;
  // Filtered planes are coded as Huffman literals without LZ matches, whatever the level: on float
  // planes matches cost more bits than they save, so this packs smaller than every zstd level
  // tried (1 to 19) and compresses and decodes about twice as fast as level 1 (docs/PERFORMANCE.md).
  // A chunk whose planes shrink below 1/kRedundantBelow (zeros, repeats), or whose planes are
  // smaller than a zstd block (they then share one Huffman table), also tries LZ and keeps the
  // smaller: at level kFilteredLevel when the requested one is at most kFilteredLevelUpTo,
  // else at the requested level.
  static constexpr unsigned kRedundantBelow = 4;
  static constexpr std::size_t kZstdBlock = 128 * 1024;  // ZSTD_BLOCKSIZE_MAX: one Huffman table each
  static constexpr int kFilteredLevel = 1, kFilteredLevelUpTo = 9;

 private:
  struct Free {
    void operator()(ZSTD_CCtx_s *c) const noexcept;
  };
  static std::size_t compress(ZSTD_CCtx_s *cctx, std::span<const std::uint8_t> in, std::vector<std::uint8_t> &out);
  std::unique_ptr<ZSTD_CCtx_s, Free> cctx_;
  std::unique_ptr<ZSTD_CCtx_s, Free> filtered_cctx_;     // literals only
  std::unique_ptr<ZSTD_CCtx_s, Free> filtered_lz_cctx_;  // LZ, for redundant planes
  int level_;
  bool literals_only_ = false;                   // libzstd accepted the literal-compression parameter
  std::vector<std::uint8_t> filtered_, lz_out_;  // scratch
};

class ChunkDecoder {
 public:
  ChunkDecoder();
  // Decodes stored bytes into exactly `out.size()` bytes; throws IntegrityError when the payload
  // does not decode to exactly that many bytes, FormatError for an unknown codec or filter.
  void decode(format::Codec codec, format::Filter filter, std::span<const std::uint8_t> stored,
              std::span<std::uint8_t> out);

 private:
  struct Free {
    void operator()(ZSTD_DCtx_s *d) const noexcept;
  };
  std::unique_ptr<ZSTD_DCtx_s, Free> dctx_;
  std::vector<std::uint8_t> filtered_;  // scratch for filtered chunks
};

}  // namespace torshpkg
