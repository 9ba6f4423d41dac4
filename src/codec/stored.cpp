// Codec 0: the stored bytes are the chunk.
#include <algorithm>

#include "torshpkg/codec.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg {

namespace {

class StoredDecoder final : public CodecDecoder {
 public:
  void decode(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) override {
    if (in.size() != out.size()) throw IntegrityError("stored chunk size differs from its decoded size");
    std::copy(in.begin(), in.end(), out.begin());
  }
};

class StoredEncoder final : public CodecEncoder {
 public:
  void encode(std::span<const std::uint8_t> in, std::vector<std::uint8_t> &out, EncodeInput, std::size_t) override {
    out.assign(in.begin(), in.end());
  }
};

}  // namespace

extern const ChunkCodec kStoredCodec;
const ChunkCodec kStoredCodec{
    .id = format::Codec::kStored,
    .name = "stored",
    .identity = true,
    .max_stored = [](std::size_t decoded) { return decoded; },
    .make_decoder = []() -> std::unique_ptr<CodecDecoder> { return std::make_unique<StoredDecoder>(); },
    .make_encoder = [](int) -> std::unique_ptr<CodecEncoder> { return std::make_unique<StoredEncoder>(); },
};

}  // namespace torshpkg
