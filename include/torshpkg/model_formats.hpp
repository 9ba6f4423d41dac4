// Model-format analysis at pack time: recognises Hugging Face model directories, ONNX models with
// external data, MLflow models and pickle files in the tree being packed, checks that what they
// reference is in the package, and describes them for the manifest's "formats" object
// (docs/FORMAT.md, *Manifest*). Reads only bounded amounts of each file and never runs anything.
#pragma once
#include <atomic>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace torshpkg {

// One entry of the tree being packed, as the packer's walk found it.
struct TreeEntry {
  enum class Type : std::uint8_t { kFile, kDirectory, kSymlink };
  std::string path;        // package-relative, '/'-separated; "" is the root
  std::string source;      // where a regular file's bytes are read from (opened with O_NOFOLLOW)
  std::uint64_t size = 0;  // regular files
  Type type = Type::kFile;
  std::string link_target;  // symlinks: followed inside the package only
};

struct FormatAnalysis {
  nlohmann::ordered_json formats = nlohmann::ordered_json::object();
  // Broken layouts, references to files that are missing or out of bounds, dangerous or unscannable
  // pickles: printed as warnings, and `pack --strict` refuses the package.
  std::vector<std::string> problems;
  // Worth telling but not wrong (a pickle whose imports are all ordinary still runs code on load).
  std::vector<std::string> notes;
};

// Bounds on what the analysis reads.
inline constexpr std::uint64_t kMaxPickleBytes = 64ull << 20;      // per pickle file or zip member
inline constexpr std::uint64_t kMaxZipPickleBytes = 256ull << 20;  // all .pkl members of one zip
inline constexpr std::uint64_t kMaxZipEntries = 1'000'000;
inline constexpr std::uint64_t kMaxConfigJson = 64ull << 20;  // config.json, index files
inline constexpr std::uint64_t kMaxMlmodel = 1ull << 20;
inline constexpr std::size_t kMaxProblems = 200;  // then one "... and N more" line

// Analyses the tree. `entries` must include every directory, file and symlink of the package (the
// root, path "", may be left out).
// Files that cannot be read or parsed become problems, not exceptions; only Interrupted (when
// *cancel becomes true) is thrown.
[[nodiscard]] FormatAnalysis analyse_formats(std::span<const TreeEntry> entries,
                                             const std::atomic<bool> *cancel = nullptr);

// Tensor payload size of an ONNX TensorProto data type for `count` elements, or nullopt for
// variable-width (STRING) or unknown types.
[[nodiscard]] std::optional<std::uint64_t> onnx_tensor_bytes(std::int64_t data_type, std::uint64_t count);

}  // namespace torshpkg
