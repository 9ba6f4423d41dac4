// Byte-grouping filters for float tensors. A filter is a permutation of a chunk's bytes (plus one
// leading phase byte), so decoding is bit-exact for any input: a wrong guess of the dtype only costs
// compression ratio, never correctness.
//
// Filtered form of raw bytes R (length L), element width W, phase p < W (where the first whole
// element starts in the chunk):
//   F = [p] ++ R[0:p] ++ plane_0 ++ ... ++ plane_{W-1} ++ R[p+m*W : L]     (len(F) == L + 1)
// where m = (L - p) / W and plane_j holds byte j of each of the m elements. For bf16 and fp16 the
// high plane gathers sign and exponent bits, which zstd then codes in a few bits each; the
// mantissa plane stays near-random and zstd keeps it as raw blocks, which also decode faster.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "torshpkg/format.hpp"

namespace torshpkg {

// Element width of a filter (2 or 4); 0 for kNone. Throws FormatError for an unknown id.
[[nodiscard]] unsigned filter_width(format::Filter f);
[[nodiscard]] std::string_view filter_name(format::Filter f) noexcept;
// The filter for a safetensors dtype ("BF16", "F16", "F32"), or nullopt.
[[nodiscard]] std::optional<format::Filter> filter_for_dtype(std::string_view dtype) noexcept;

// out.size() must be raw.size() + 1; phase < width and phase <= raw.size().
void apply_filter(format::Filter f, unsigned phase, std::span<const std::uint8_t> raw, std::span<std::uint8_t> out);
// Inverse: filtered.size() must be out.size() + 1. Throws IntegrityError on a bad phase byte.
void undo_filter(format::Filter f, std::span<const std::uint8_t> filtered, std::span<std::uint8_t> out);

}  // namespace torshpkg
