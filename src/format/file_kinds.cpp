// File kinds from names and first bytes: the one table of extensions (docs/FORMAT.md, inode kind).
#include "torshpkg/file_kinds.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

#include "torshpkg/endian.hpp"

namespace torshpkg {

namespace {

using format::FileKind;

struct Extension {
  std::string_view ext;  // lower case, with the dot
  FileKind kind;
  bool sample_filters;  // weights with no tensor index: sample byte-grouping filters on them
  PickleHint pickle = PickleHint::kNo;
};

// The one list: detect_kind, the packer's filter sampling and the model-format analysis read it.
constexpr std::array kExtensions = {
    Extension{".safetensors", FileKind::kWeights, false},  // has its own tensor index
    Extension{".bin", FileKind::kWeights, true, PickleHint::kIfMagicLegacyTorch},
    Extension{".pt", FileKind::kWeights, true, PickleHint::kIfMagicLegacyTorch},
    Extension{".pth", FileKind::kWeights, true, PickleHint::kIfMagicLegacyTorch},
    Extension{".ckpt", FileKind::kWeights, true, PickleHint::kIfMagicLegacyTorch},
    Extension{".onnx", FileKind::kWeights, false},
    Extension{".onnx_data", FileKind::kWeights, true},
    Extension{".gguf", FileKind::kWeights, true},
    Extension{".ggml", FileKind::kWeights, false},
    Extension{".h5", FileKind::kWeights, true},
    Extension{".msgpack", FileKind::kWeights, true},
    Extension{".npy", FileKind::kWeights, true},
    Extension{".npz", FileKind::kWeights, false},
    Extension{".pb", FileKind::kWeights, false},
    Extension{".tflite", FileKind::kWeights, false},
    Extension{".mlmodel", FileKind::kWeights, false},
    Extension{".pdparams", FileKind::kWeights, false},
    Extension{".model", FileKind::kWeights, false},
    // ONNX external data is often just "*.data"; a data file of any other kind gains little from a
    // sample (two chunks) when the filters do not fit it.
    Extension{".data", FileKind::kOther, true},
    Extension{".pkl", FileKind::kOther, false, PickleHint::kYes},
    Extension{".pickle", FileKind::kOther, false, PickleHint::kYes},
    Extension{".joblib", FileKind::kOther, false, PickleHint::kIfMagic},
    Extension{".py", FileKind::kCode, false},
    Extension{".pyi", FileKind::kCode, false},
    Extension{".sh", FileKind::kCode, false},
    Extension{".c", FileKind::kCode, false},
    Extension{".cc", FileKind::kCode, false},
    Extension{".cpp", FileKind::kCode, false},
    Extension{".h", FileKind::kCode, false},
    Extension{".hpp", FileKind::kCode, false},
    Extension{".cu", FileKind::kCode, false},
    Extension{".js", FileKind::kCode, false},
    Extension{".ts", FileKind::kCode, false},
    Extension{".rs", FileKind::kCode, false},
    Extension{".go", FileKind::kCode, false},
    Extension{".java", FileKind::kCode, false},
    Extension{".jl", FileKind::kCode, false},
    Extension{".r", FileKind::kCode, false},
    Extension{".lua", FileKind::kCode, false},
    Extension{".ipynb", FileKind::kCode, false},
    Extension{".json", FileKind::kConfig, false},
    Extension{".yaml", FileKind::kConfig, false},
    Extension{".yml", FileKind::kConfig, false},
    Extension{".toml", FileKind::kConfig, false},
    Extension{".cfg", FileKind::kConfig, false},
    Extension{".ini", FileKind::kConfig, false},
    Extension{".conf", FileKind::kConfig, false},
    Extension{".xml", FileKind::kConfig, false},
    Extension{".csv", FileKind::kData, false},
    Extension{".tsv", FileKind::kData, false},
    Extension{".jsonl", FileKind::kData, false},
    Extension{".parquet", FileKind::kData, false},
    Extension{".arrow", FileKind::kData, false},
    Extension{".txt", FileKind::kData, false},
    Extension{".tfrecord", FileKind::kData, false},
    Extension{".avro", FileKind::kData, false},
    Extension{".feather", FileKind::kData, false},
};

std::string lower_base(std::string_view path) {
  const auto slash = path.rfind('/');
  std::string lower(slash == std::string_view::npos ? path : path.substr(slash + 1));
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  return lower;
}

const Extension *find_extension(std::string_view lower_name) {
  const auto dot = lower_name.rfind('.');
  if (dot == std::string_view::npos) return nullptr;
  const auto ext = lower_name.substr(dot);
  for (const auto &e : kExtensions)
    if (e.ext == ext) return &e;
  return nullptr;
}

}  // namespace

format::FileKind detect_kind(std::string_view path, std::span<const std::uint8_t> head) {
  const std::string lower = lower_base(path);
  if (lower.starts_with("tokenizer") || lower.starts_with("vocab") || lower == "merges.txt" ||
      lower == "special_tokens_map.json" || lower == "added_tokens.json" || lower.ends_with(".tiktoken") ||
      lower.ends_with("spiece.model") || lower == "sentencepiece.bpe.model")
    return FileKind::kTokenizer;
  if (const auto *e = find_extension(lower); e && e->kind != FileKind::kOther) return e->kind;
  if (lower == "mlmodel" || lower == "dockerfile" || lower == "makefile") return FileKind::kConfig;
  // Content sniffing for files without a telling name.
  if (head.size() >= 9 && head[8] == '{' && load_le<std::uint64_t>(head.data()) <= kMaxSafetensorsHeader)
    return FileKind::kWeights;
  if (head.size() >= 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4) return FileKind::kWeights;
  if (head.size() >= 2 && head[0] == '#' && head[1] == '!') return FileKind::kCode;
  return FileKind::kOther;
}

PickleHint pickle_hint(std::string_view path) {
  const auto *e = find_extension(lower_base(path));
  return e ? e->pickle : PickleHint::kNo;
}

bool weights_without_tensor_index(std::string_view path) {
  // Case-sensitive, on the whole path, as the packer always matched: packages stay byte-identical.
  for (const auto &e : kExtensions)
    if (e.sample_filters && path.size() > e.ext.size() && path.ends_with(e.ext)) return true;
  return false;
}

}  // namespace torshpkg
