// Bounds-checked parsing of safetensors headers (the packer's filter planning and the analysis).
#include "torshpkg/safetensors.hpp"

#include <algorithm>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg {

std::optional<SafetensorsSummary> parse_safetensors(std::span<const std::uint8_t> bytes, std::uint64_t file_size) {
  if (bytes.size() < 9 || file_size < 9) return std::nullopt;
  const std::uint64_t n = load_le<std::uint64_t>(bytes.data());
  if (bytes[8] != '{') return std::nullopt;
  if (n < 2 || n > kMaxSafetensorsHeader) throw FormatError(fmt::format("safetensors header length {} out of range", n));
  if (!range_within(8, n, file_size)) throw FormatError("safetensors header runs past the end of the file");
  if (bytes.size() < 8 + n) throw FormatError("safetensors header incomplete");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  } catch (const nlohmann::json::exception &e) {
    throw FormatError(fmt::format("safetensors header is not JSON: {}", e.what()));
  }
  if (!j.is_object()) throw FormatError("safetensors header is not a JSON object");
  const std::uint64_t data_size = file_size - 8 - n;
  SafetensorsSummary s;
  const std::uint64_t data_at = 8 + n;
  for (const auto &[key, t] : j.items()) {
    if (key == "__metadata__") continue;
    auto bad = [&, &key = key](std::string_view why) { return FormatError(fmt::format("safetensors tensor '{}': {}", key, why)); };
    if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") || !t.contains("data_offsets"))
      throw bad("needs dtype, shape and data_offsets");
    const auto &dtype = t["dtype"];
    const auto &shape = t["shape"];
    const auto &offs = t["data_offsets"];
    if (!dtype.is_string() || !shape.is_array() || !offs.is_array() || offs.size() != 2 ||
        !offs[0].is_number_unsigned() || !offs[1].is_number_unsigned())
      throw bad("malformed fields");
    std::uint64_t count = 1;
    std::vector<std::uint64_t> dims;
    for (const auto &d : shape) {
      if (!d.is_number_unsigned() || mul_overflows(count, d.get<std::uint64_t>(), count)) throw bad("bad shape");
      dims.push_back(d.get<std::uint64_t>());
    }
    const auto begin = offs[0].get<std::uint64_t>(), end = offs[1].get<std::uint64_t>();
    if (begin > end || end > data_size) throw bad("data offsets outside the data section");
    s.ranges.push_back({data_at + begin, data_at + end, dtype.get<std::string>(), key, std::move(dims)});
    s.names.push_back(key);
    ++s.tensors;
    if (add_overflows(s.parameters, count, s.parameters)) throw bad("parameter count overflows");
    ++s.dtypes[dtype.get<std::string>()];
  }
  std::sort(s.ranges.begin(), s.ranges.end(), [](const auto &a, const auto &b) { return a.begin < b.begin; });
  for (std::size_t i = 1; i < s.ranges.size(); ++i)
    if (s.ranges[i].begin < s.ranges[i - 1].end) throw FormatError("safetensors tensors overlap");
  return s;
}

}  // namespace torshpkg
