// The manifest (docs/FORMAT.md, "Manifest"): one type that owns its schema. The packer and the zip
// synthesiser build one and serialise it; Package::open validates it (RapidJSON SAX) and parses it into
// this type on first use, once, and every reader -- xattrs, inspect, the FUSE layer -- uses the
// result (building it for 10,000 files was a third of a mount's time, and a mount rarely needs it).
//
// Parsing is lenient, as readers always were: a field of the wrong type is treated as absent. Only
// "not JSON" and "not an object" are format errors. Fields this reader does not know (a newer
// writer's) are skipped, never copied: a hostile 64 MiB value must cost nothing beyond the
// validating parse at mount (the hostile corpus holds that budget).
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "torshpkg/digest.hpp"
#include "torshpkg/semver.hpp"

namespace torshpkg {

struct ManifestFile {
  std::string path;  // package-relative
  std::string kind;  // format::kind_name
  std::uint64_t size = 0;
  std::optional<Digest> sha256;  // of the whole file
  struct Safetensors {
    std::uint64_t tensors = 0, parameters = 0;
    std::map<std::string, std::uint64_t> dtypes;  // dtype -> tensor count
  };
  std::optional<Safetensors> safetensors;
};

struct Manifest {
  // A package's manifest has every field below; a synthesised one (a zip mounted in place) has only
  // manifest_version, name, version, description, source and chunk_size.
  enum class Kind : std::uint8_t { kPackage, kSynthesized };
  Kind kind = Kind::kPackage;
  std::uint64_t manifest_version = 1;
  std::string name, version, description, license, created, tool;
  std::vector<std::string> authors;
  std::vector<Dependency> dependencies;
  std::string source;  // synthesised: where the tree comes from ("zip")
  std::uint64_t chunk_size = 0;
  // model_formats.hpp. The packer sets `formats`; parse() keeps only the minified text, which
  // formats_json() turns into JSON when someone asks (inspect): mounting never builds it.
  nlohmann::ordered_json formats = nlohmann::ordered_json::object();
  std::string formats_text;
  std::vector<ManifestFile> files;  // in package order

  [[nodiscard]] nlohmann::ordered_json formats_json() const;

  // The stored text (the packer writes it; the root digest covers it). Throws FormatError past
  // format::kMaxManifestSize.
  [[nodiscard]] std::string serialize() const;
  // The same document as JSON, for inspect --json.
  [[nodiscard]] nlohmann::ordered_json to_json() const;
  // Throws FormatError when `text` is not a JSON object.
  [[nodiscard]] static Manifest parse(std::string_view text);
  // What parse() checks, without building anything: after it, parse() of the same text only
  // throws std::bad_alloc.
  static void validate(std::string_view text);
};

}  // namespace torshpkg
