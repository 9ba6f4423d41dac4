// What a file is, from its name and first bytes: the one table of file kinds and extensions.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>

#include "torshpkg/format.hpp"

namespace torshpkg {

// safetensors caps its JSON header at 100 MB; a larger length field means "not safetensors".
inline constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;

// Kind of a file from its path and its first bytes (may be empty).
[[nodiscard]] format::FileKind detect_kind(std::string_view path, std::span<const std::uint8_t> head);
// Whether a file of this name is a pickle: always, only if it starts with a pickle PROTO opcode, or
// (legacy torch.save) only if it does and then it is a torch checkpoint. A zip of any of them is
// scanned member by member.
enum class PickleHint : std::uint8_t { kNo, kYes, kIfMagic, kIfMagicLegacyTorch };
[[nodiscard]] PickleHint pickle_hint(std::string_view path);
// Weight files without a tensor index of their own (pickles, raw arrays): the packer samples their
// first chunks with each byte-grouping filter.
[[nodiscard]] bool weights_without_tensor_index(std::string_view path);

}  // namespace torshpkg
