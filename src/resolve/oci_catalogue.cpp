// The catalogue of an OCI registry: package NAME lives at REGISTRY/NAME, its tags are its versions.
// A version is read from its signed manifest, opened by the manifest's digest so that what the
// lock records is exactly what was read.
#include <cerrno>
#include <map>

#include <fmt/format.h>

#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/oci_source.hpp"
#include "torshpkg/resolve.hpp"

namespace torshpkg {

namespace {

class OciCatalogue final : public Catalogue {
 public:
  OciCatalogue(std::string registry, PackageOpener open, RemoteOptions remote)
      : registry_(std::move(registry)), open_(std::move(open)), remote_(std::move(remote)) {
    while (registry_.ends_with('/')) registry_.pop_back();
    // REGISTRY alone is HOST[/ORG]: parsed as a reference to check it, with a placeholder repository.
    (void)parse_oci_reference(
        registry_ + (registry_.find('/', registry_.find("://") + 3) == std::string::npos ? "/placeholder" : ""));
  }

  [[nodiscard]] std::string where() const override { return registry_; }

  std::optional<std::vector<SemVer>> versions(const std::string &name) override {
    if (!valid_oci_repository(name))
      throw ResolveError(
          fmt::format("dependency '{}' cannot live in a registry: a repository name is lower-case "
                      "letters and digits, separated by '.', '_', '-' or '/'",
                      name));
    std::vector<std::string> tags;
    try {
      tags = oci_tags(repository(name), remote_);
    } catch (const IoError &e) {
      if (e.errnum == ENOENT) return std::nullopt;  // 404: no such repository
      throw;
    }
    std::vector<SemVer> out;
    for (const auto &t : tags)
      if (auto v = version_of_tag(t)) {
        tags_[{name, v->str()}] = t;
        out.push_back(std::move(*v));
      }
    return out;
  }

  CatalogueEntry load(const std::string &name, const SemVer &v) override {
    const auto tag = tags_.at({name, v.str()});
    const std::string by_tag = repository(name) + ":" + tag;
    RegistrySession session(parse_oci_reference(by_tag), by_tag, remote_);
    const auto blob = oci_resolve(session);
    const std::string by_digest = repository(name) + "@" + blob.manifest_digest;
    const auto pkg = open_(by_digest);
    const auto &m = pkg->manifest();
    if (m.name != name || m.version != v.str())
      throw FormatError(fmt::format("{} holds {}@{}, not {}@{}", by_tag, m.name.empty() ? "(no name)" : m.name,
                                    m.version.empty() ? "(no version)" : m.version, name, v.str()));
    if (pkg->synthesized()) throw FormatError(fmt::format("{} is not a .tpkg package", by_tag));
    return {m.dependencies, to_hex(pkg->root_digest()), by_digest};
  }

 private:
  [[nodiscard]] std::string repository(const std::string &name) const { return registry_ + "/" + name; }

  std::string registry_;
  PackageOpener open_;
  RemoteOptions remote_;
  std::map<std::pair<std::string, std::string>, std::string> tags_;  // (name, version) -> its tag
};

}  // namespace

std::unique_ptr<Catalogue> oci_catalogue(const std::string &registry, PackageOpener open, const RemoteOptions &remote) {
  if (!registry.starts_with("oci://") && !registry.starts_with("oci+http://"))
    throw UsageError(
        fmt::format("--registry {}: expected oci://HOST[:PORT]/ORG (oci+http:// for plain HTTP)", registry));
  return std::make_unique<OciCatalogue>(registry, std::move(open), remote);
}

}  // namespace torshpkg
