// The packer: walk -> classify -> chunk -> encode in a pool -> hash -> dedup -> append -> index
// -> manifest -> footer. Writes one pass to a temporary file, fsyncs and renames it into place.
#pragma once
#include <atomic>
#include <csignal>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "torshpkg/digest.hpp"
#include "torshpkg/format.hpp"
#include "torshpkg/safetensors.hpp"
#include "torshpkg/semver.hpp"
#include "torshpkg/signing.hpp"

namespace torshpkg {

struct PackProgress {
  std::uint64_t bytes_done = 0, bytes_total = 0;
  std::uint64_t files_done = 0, files_total = 0;
};

struct PackOptions {
  std::string source_dir;
  std::string output;
  std::string name;  // default: the source directory's name
  std::string version = "0.1.0";
  std::string description, license;
  std::vector<std::string> authors;
  std::vector<Dependency> dependencies;
  unsigned chunk_shift = format::kDefaultChunkShift;
  int level = 3;
  unsigned threads = 0;  // 0: one per core
  std::vector<std::string> excludes;  // shell globs, matched against the relative path and the base name
  bool filters = true;  // byte-grouping filters for float weights (--filters=auto|none)
  std::vector<PrivateKey> sign_with;  // signatures written in the same pass (--sign)
  std::function<void(const PackProgress &)> progress;  // called from the packing thread, about 10 times a second
  const std::atomic<bool> *cancel = nullptr;  // set to stop early; the output is then not created
  std::function<void(const std::string &)> warn;  // skipped entries, model format problems and notes
  bool strict = false;  // --strict: refuse to pack when the model format analysis finds problems
};

struct PackResult {
  std::uint64_t directories = 0, files = 0, symlinks = 0;
  std::uint64_t chunks = 0, unique_chunks = 0;
  std::uint64_t raw_bytes = 0, stored_bytes = 0, dedup_saved_bytes = 0;
  std::uint64_t package_bytes = 0;
  std::uint64_t filtered_chunks = 0;
  std::size_t signatures = 0;
  Digest root{};
};

PackResult pack(const PackOptions &opts);

// Adds (or replaces, for the same key) a signature in an existing package, rewriting only the
// signature block and the footer at the tail of the file; chunk data and index are not touched.
// `output`: write a signed copy there instead of changing `path` in place.
void sign_package(const std::string &path, const PrivateKey &key, const std::string &output = {});

}  // namespace torshpkg
