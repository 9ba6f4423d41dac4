// The packer's per-chunk encoding policy over the codec registry.
#include "torshpkg/codec.hpp"
#include "torshpkg/filter.hpp"

namespace torshpkg {

ChunkEncoder::ChunkEncoder(int level) : zstd_(codec_for(format::Codec::kZstd).make_encoder(level)) {}

format::Codec ChunkEncoder::encode(std::span<const std::uint8_t> raw, std::vector<std::uint8_t> &out) {
  zstd_->encode(raw, out, EncodeInput::kPlain, 1);
  if (out.size() * 100 > raw.size() * (100 - kMinSavingPercent)) {
    out.assign(raw.begin(), raw.end());
    return format::Codec::kStored;
  }
  return format::Codec::kZstd;
}

std::size_t ChunkEncoder::encode_filtered(format::Filter f, unsigned phase, std::span<const std::uint8_t> raw,
                                          std::vector<std::uint8_t> &out) {
  filtered_.resize(raw.size() + 1);
  apply_filter(f, phase, raw, filtered_);
  zstd_->encode(filtered_, out, EncodeInput::kPlanes, filter_width(f));
  return out.size();
}

}  // namespace torshpkg
