// The codec registry: one line per codec. Adding a codec: a new file in this folder that defines
// its descriptor, a line here, a line in meson.build, its id in format.hpp and docs/FORMAT.md.
#include <fmt/format.h>

#include "torshpkg/codec.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg {

extern const ChunkCodec kStoredCodec;  // stored.cpp
extern const ChunkCodec kZstdCodec;    // zstd.cpp

namespace {
const ChunkCodec *const kCodecs[] = {&kStoredCodec, &kZstdCodec};
}  // namespace

const ChunkCodec *find_codec(std::uint8_t id) noexcept {
  for (const ChunkCodec *c : kCodecs)
    if (static_cast<std::uint8_t>(c->id) == id) return c;
  return nullptr;
}

const ChunkCodec &codec_for(format::Codec id) {
  if (const ChunkCodec *c = find_codec(static_cast<std::uint8_t>(id))) return *c;
  throw FormatError(fmt::format("unknown codec id {}", static_cast<unsigned>(id)));
}

std::string_view codec_name(format::Codec id) noexcept {
  const ChunkCodec *c = find_codec(static_cast<std::uint8_t>(id));
  return c ? c->name : "unknown";
}

}  // namespace torshpkg
