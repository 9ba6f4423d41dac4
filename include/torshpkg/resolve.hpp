// Dependency resolution: the manifest's dependencies (NAME + semver range) against the versions a
// catalogue offers, over the whole graph, and the lock file that records the answer.
//
// The resolver knows nothing of registries: a Catalogue lists a package's versions and loads one
// (its dependencies, root digest and where it came from). oci_catalogue.cpp is the one over an OCI
// registry; the unit tests use one over a table.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "torshpkg/http_source.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/semver.hpp"

namespace torshpkg {

// One version of a package, as the catalogue read it (from its signed manifest).
struct CatalogueEntry {
  std::vector<Dependency> dependencies;
  std::string root_sha256;  // hex
  std::string source;       // a location that names exactly these bytes (e.g. oci://.../NAME@sha256:...)
};

class Catalogue {
 public:
  virtual ~Catalogue() = default;
  // Where packages come from, for messages ("oci://host/org").
  [[nodiscard]] virtual std::string where() const = 0;
  // Every version of `name` on offer, in any order; nullopt when there is no such package.
  [[nodiscard]] virtual std::optional<std::vector<SemVer>> versions(const std::string &name) = 0;
  // The version `v` of `name` (one of versions(name)). Throws for a package that cannot be read
  // or is not what its version claims (FormatError, IntegrityError, TrustError, IoError, ...).
  [[nodiscard]] virtual CatalogueEntry load(const std::string &name, const SemVer &v) = 0;
};

struct LockedPackage {
  std::string name, version, root_sha256, source;
  std::vector<Dependency> dependencies;
  std::vector<std::string> required_by;  // "NAME@VERSION" of the packages that depend on it
};

struct Lock {
  static constexpr int kVersion = 1;
  std::string root_name, root_version, root_sha256;  // the package resolved for
  std::string registry;
  std::vector<LockedPackage> packages;  // sorted by name
};

struct ResolveLimits {
  std::uint64_t max_steps = 20000;  // candidate versions tried, over all backtracking
};

// Chooses, for every package reachable from `root_deps`, the highest version that satisfies every
// range that applies to it, backtracking from a choice whose dependencies conflict. Throws
// ResolveError naming the package and the constraints (with who required each) when no choice
// works: a missing package, a range no version satisfies (the versions on offer listed), or two
// ranges that exclude each other. `note` gets warnings (a tag whose package is skipped).
[[nodiscard]] Lock resolve_dependencies(const std::string &root_name, const std::string &root_version,
                                        const std::vector<Dependency> &root_deps, Catalogue &catalogue,
                                        const std::function<void(const std::string &)> &note = {},
                                        ResolveLimits limits = {});

// torshpkg.lock as JSON (docs/FORMAT.md, "Lock files"), and back. parse_lock() checks every field
// (names, versions, 64-hex digests) and throws FormatError naming `where`.
[[nodiscard]] std::string lock_to_json(const Lock &lock);
[[nodiscard]] Lock parse_lock(std::string_view text, const std::string &where);
[[nodiscard]] Lock read_lock_file(const std::string &path);

// An OCI repository name (the distribution spec's grammar: lower-case components separated by
// '.', '_', '__' or dashes, joined by '/'), which a dependency name must be to live in a registry.
[[nodiscard]] bool valid_oci_repository(std::string_view name) noexcept;
// A registry's tags as versions: OCI tags cannot hold '+', so "1.0.0_build5" is 1.0.0+build5
// (Helm's convention); and back.
[[nodiscard]] std::optional<SemVer> version_of_tag(std::string_view tag);
[[nodiscard]] std::string tag_of_version(const SemVer &v);

// The package versions under REGISTRY/NAME of an OCI registry (oci[+http]://HOST[:PORT]/ORG).
// `open` opens a location (with the caller's remote options, disk cache and trust policy applied).
using PackageOpener = std::function<std::shared_ptr<const Package>(const std::string &location)>;
[[nodiscard]] std::unique_ptr<Catalogue> oci_catalogue(const std::string &registry, PackageOpener open,
                                                       const RemoteOptions &remote);

}  // namespace torshpkg
