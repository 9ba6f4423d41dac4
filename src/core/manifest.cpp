#include "torshpkg/manifest.hpp"

#include <algorithm>
#include <cctype>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg {

namespace {

bool is_numeric_id(std::string_view s) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  return s.size() == 1 || s[0] != '0';
}

bool is_ident(std::string_view s, bool numeric_no_leading_zero) {
  if (s.empty()) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-')) return false;
  if (numeric_no_leading_zero && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return is_numeric_id(s);
  return true;
}

bool dot_separated(std::string_view s, bool prerelease) {
  while (true) {
    const auto dot = s.find('.');
    if (!is_ident(s.substr(0, dot), prerelease)) return false;
    if (dot == std::string_view::npos) return true;
    s = s.substr(dot + 1);
  }
}

// Checks and removes "+BUILD" and "-PRERELEASE" from the end of a version, leaving MAJOR.MINOR.PATCH.
bool strip_suffixes(std::string_view &v) {
  if (const auto plus = v.find('+'); plus != std::string_view::npos) {
    if (!dot_separated(v.substr(plus + 1), false)) return false;
    v = v.substr(0, plus);
  }
  if (const auto dash = v.find('-'); dash != std::string_view::npos) {
    if (!dot_separated(v.substr(dash + 1), true)) return false;
    v = v.substr(0, dash);
  }
  return true;
}

// A partial version in a range: "1", "1.2", "1.2.3", with x/X/* wildcards, optional suffixes.
bool valid_partial(std::string_view v) {
  if (!v.empty() && (v[0] == 'v' || v[0] == '=')) v.remove_prefix(1);
  if (!strip_suffixes(v)) return false;
  int parts = 0;
  while (true) {
    const auto dot = v.find('.');
    const auto p = v.substr(0, dot);
    if (!(p == "x" || p == "X" || p == "*" || is_numeric_id(p))) return false;
    if (++parts > 3) return false;
    if (dot == std::string_view::npos) return true;
    v = v.substr(dot + 1);
  }
}

bool valid_comparator(std::string_view c) {
  for (std::string_view op : {">=", "<=", ">", "<", "=", "^", "~"}) {
    if (c.substr(0, op.size()) == op) {
      c.remove_prefix(op.size());
      break;
    }
  }
  return valid_partial(c);
}

std::vector<std::string_view> split_ws(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && s[i] == ' ') ++i;
    std::size_t j = i;
    while (j < s.size() && s[j] != ' ') ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

}  // namespace

bool valid_semver(std::string_view v) {
  if (!strip_suffixes(v)) return false;
  int parts = 0;
  while (true) {
    const auto dot = v.find('.');
    if (!is_numeric_id(v.substr(0, dot)) || ++parts > 3) return false;
    if (dot == std::string_view::npos) return parts == 3;
    v = v.substr(dot + 1);
  }
}

bool valid_semver_range(std::string_view r) {
  if (r.empty() || r.size() > 256) return false;
  while (true) {
    const auto bar = r.find("||");
    const auto alt = r.substr(0, bar);
    const auto words = split_ws(alt);
    if (words.empty()) return false;
    if (words.size() == 3 && words[1] == "-") {  // hyphen range "1.2 - 2.3"
      if (!valid_partial(words[0]) || !valid_partial(words[2])) return false;
    } else {
      for (auto w : words)
        if (!valid_comparator(w)) return false;
    }
    if (bar == std::string_view::npos) return true;
    r = r.substr(bar + 2);
  }
}

bool valid_package_name(std::string_view name) {
  if (name.empty() || name.size() > 214) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("-_./@").find(c) != std::string_view::npos;
  });
}

Dependency parse_dependency(std::string_view spec) {
  const auto at = spec.find('@', 1);  // a leading '@' belongs to a scoped name
  Dependency d{std::string(spec.substr(0, at)), at == std::string_view::npos ? "*" : std::string(spec.substr(at + 1))};
  // A leading '@' starts a scoped name, which needs "@scope/name".
  if (d.name.starts_with('@') && (d.name.find('/') == std::string::npos || d.name.find('/') < 2 || d.name.back() == '/'))
    throw UsageError(fmt::format("dependency '{}': a name starting with '@' must be @scope/name", spec));
  if (!valid_package_name(d.name))
    throw UsageError(fmt::format("dependency '{}': name must be 1-214 characters of letters, digits, -_./@", spec));
  if (!valid_semver_range(d.range))
    throw UsageError(fmt::format("dependency '{}': '{}' is not a semantic version range", spec, d.range));
  return d;
}

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
    for (const auto &d : shape) {
      if (!d.is_number_unsigned() || mul_overflows(count, d.get<std::uint64_t>(), count)) throw bad("bad shape");
    }
    const auto begin = offs[0].get<std::uint64_t>(), end = offs[1].get<std::uint64_t>();
    if (begin > end || end > data_size) throw bad("data offsets outside the data section");
    s.ranges.push_back({data_at + begin, data_at + end, dtype.get<std::string>()});
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

format::FileKind detect_kind(std::string_view path, std::span<const std::uint8_t> head) {
  using format::FileKind;
  const auto slash = path.rfind('/');
  const std::string_view base = slash == std::string_view::npos ? path : path.substr(slash + 1);
  std::string lower(base);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  const auto ext_at = lower.rfind('.');
  const std::string_view ext = ext_at == std::string::npos ? std::string_view{} : std::string_view(lower).substr(ext_at);

  if (lower.starts_with("tokenizer") || lower.starts_with("vocab") || lower == "merges.txt" ||
      lower == "special_tokens_map.json" || lower == "added_tokens.json" || ext == ".tiktoken" ||
      lower.ends_with("spiece.model") || lower == "sentencepiece.bpe.model")
    return FileKind::kTokenizer;
  for (std::string_view e : {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".onnx_data", ".gguf", ".ggml",
                             ".h5", ".msgpack", ".npy", ".npz", ".pb", ".tflite", ".mlmodel", ".pdparams", ".model"})
    if (ext == e) return FileKind::kWeights;
  for (std::string_view e : {".py", ".pyi", ".sh", ".c", ".cc", ".cpp", ".h", ".hpp", ".cu", ".js", ".ts", ".rs",
                             ".go", ".java", ".jl", ".r", ".lua", ".ipynb"})
    if (ext == e) return FileKind::kCode;
  if (lower == "mlmodel" || lower == "dockerfile" || lower == "makefile") return FileKind::kConfig;
  for (std::string_view e : {".json", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".conf", ".xml"})
    if (ext == e) return FileKind::kConfig;
  for (std::string_view e : {".csv", ".tsv", ".jsonl", ".parquet", ".arrow", ".txt", ".tfrecord", ".avro", ".feather"})
    if (ext == e) return FileKind::kData;
  // Content sniffing for files without a telling name.
  if (head.size() >= 9 && head[8] == '{' && load_le<std::uint64_t>(head.data()) <= kMaxSafetensorsHeader)
    return FileKind::kWeights;
  if (head.size() >= 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4) return FileKind::kWeights;
  if (head.size() >= 2 && head[0] == '#' && head[1] == '!') return FileKind::kCode;
  return FileKind::kOther;
}

}  // namespace torshpkg
