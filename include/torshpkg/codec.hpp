// Chunk codecs, in one registry keyed by the on-disk codec id (docs/FORMAT.md, chunk entry byte 16).
//
// A codec is one file in src/codec/ that defines a `ChunkCodec` descriptor (id, name, bound, factories
// for a per-thread decoder and encoder), plus one line in src/codec/registry.cpp. The package
// validator, the read pipeline, inspect and the packer all ask the registry; nothing else switches
// on codec ids.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "torshpkg/format.hpp"

namespace torshpkg {

// Per-thread decoding state (a zstd context, ...): never shared between threads.
class CodecDecoder {
 public:
  virtual ~CodecDecoder() = default;
  // Decodes `in` into exactly out.size() bytes; throws IntegrityError when the payload does not
  // decode to exactly that many.
  virtual void decode(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) = 0;
};

// What the packer knows about the bytes it hands to an encoder.
enum class EncodeInput : std::uint8_t {
  kPlain,   // a chunk as it is
  kPlanes,  // the byte planes of a filtered chunk (filter.hpp): near-random mantissas, skewed exponents
};

class CodecEncoder {
 public:
  virtual ~CodecEncoder() = default;
  // Encodes `in` into `out` (resized to the encoded size).
  virtual void encode(std::span<const std::uint8_t> in, std::vector<std::uint8_t> &out, EncodeInput what,
                      std::size_t plane_width) = 0;
};

struct ChunkCodec {
  format::Codec id;
  std::string_view name;
  // The stored bytes are the decoded bytes: the read path skips decoding (and copies) entirely.
  bool identity = false;
  // Largest stored size a chunk of `decoded` bytes may have; larger entries are malformed.
  std::size_t (*max_stored)(std::size_t decoded) = nullptr;
  std::unique_ptr<CodecDecoder> (*make_decoder)() = nullptr;
  // Throws UsageError for a level the codec does not have.
  std::unique_ptr<CodecEncoder> (*make_encoder)(int level) = nullptr;
};

// The codec with this on-disk id, or null when this reader does not know it.
[[nodiscard]] const ChunkCodec *find_codec(std::uint8_t id) noexcept;
// As find_codec, but throws FormatError naming the id.
[[nodiscard]] const ChunkCodec &codec_for(format::Codec id);
[[nodiscard]] std::string_view codec_name(format::Codec id) noexcept;  // "unknown" for unknown ids

// The packer's encoding policy for one chunk, over the registry's zstd encoder: plain chunks fall
// back to stored when zstd saves less than kMinSavingPercent; filtered chunks are coded as byte
// planes (see zstd.cpp for why literals only). Keep one per thread.
class ChunkEncoder {
 public:
  explicit ChunkEncoder(int level);
  // Encodes one chunk into `out` and returns the codec used: zstd, or stored.
  format::Codec encode(std::span<const std::uint8_t> raw, std::vector<std::uint8_t> &out);
  // zstd of the filtered form of `raw` (filter.hpp) into `out`; returns the compressed size.
  std::size_t encode_filtered(format::Filter f, unsigned phase, std::span<const std::uint8_t> raw,
                              std::vector<std::uint8_t> &out);
  static constexpr unsigned kMinSavingPercent = 3;

 private:
  std::unique_ptr<CodecEncoder> zstd_;
  std::vector<std::uint8_t> filtered_;  // scratch
};

}  // namespace torshpkg
