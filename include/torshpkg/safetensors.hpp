// safetensors headers: tensor names, dtypes and byte ranges, parsed with bounds checks.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "torshpkg/file_kinds.hpp"

namespace torshpkg {

struct TensorRange {
  std::uint64_t begin = 0, end = 0;  // absolute offsets in the file
  std::string dtype;
  std::string name;                  // the tensor's key in the header
  std::vector<std::uint64_t> shape;  // dimensions; empty for a scalar
};
struct SafetensorsSummary {
  std::uint64_t tensors = 0;
  std::uint64_t parameters = 0;
  std::map<std::string, std::uint64_t> dtypes;  // dtype -> tensor count
  std::vector<TensorRange> ranges;              // sorted by begin, non-overlapping
  std::vector<std::string> names;               // tensor names, sorted bytewise (no __metadata__)
};
// Parses a safetensors header (given its first bytes and the file size) with bounds checks:
// header length <= 100 MB, JSON object, data offsets inside the data section, no overlaps.
// Returns nullopt when the bytes are not a safetensors file; throws FormatError with the reason
// when they claim to be one but are malformed.
[[nodiscard]] std::optional<SafetensorsSummary> parse_safetensors(std::span<const std::uint8_t> header_bytes,
                                                                   std::uint64_t file_size);

}  // namespace torshpkg
