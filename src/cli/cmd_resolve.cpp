// torshpkg resolve PKG --registry oci://HOST/ORG [-o torshpkg.lock]: the package's dependencies,
// and theirs, resolved against the registry's tags (resolve.hpp), written to a lock file.
#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/resolve.hpp"

namespace torshpkg::cli {

void add_resolve(CLI::App &app, Action &action) {
  struct Args {
    std::string package, registry, output = "torshpkg.lock";
    TrustArgs trust;
    RemoteArgs remote;
  };
  auto a = std::make_shared<Args>();
  auto *cmd = app.add_subcommand("resolve", "Resolve a package's dependencies against a registry into a lock file");
  cmd->add_option("PACKAGE", a->package, "Package (a file or any location)")->required();
  cmd->add_option("--registry", a->registry,
                  "oci://HOST[:PORT]/ORG: dependency NAME is ORG/NAME, its tags its versions")
      ->required();
  cmd->add_option("-o,--output", a->output, "Lock file to write (default torshpkg.lock; replaced)");
  add_trust_options(cmd, a->trust);
  add_remote_options(cmd, a->remote);
  cmd->callback([&action, a] {
    action = [a]() -> int {
      const auto root = open_package(a->package, open_options(a->package, a->remote));
      const auto &m = root->manifest();
      if (m.name.empty() || m.version.empty())
        throw UsageError(fmt::format("{}: a package needs a name and a version to be resolved", a->package));
      const auto trust = load_trust(a->trust);
      // Dependencies are held to the policy the root would be: with --pubkey/--trust, a version
      // without a trusted signature is skipped (and said so).
      PackageOpener open = [a, &trust](const std::string &location) {
        auto pkg = open_package(location, open_options(location, a->remote));
        (void)enforce_trust(*pkg, check_signatures(*pkg, trust), !a->trust.explicit_trust());
        return pkg;
      };
      const auto catalogue = oci_catalogue(a->registry, open, open_options(a->registry, a->remote).remote);
      auto lock = resolve_dependencies(m.name, m.version, m.dependencies, *catalogue,
                                       [](const std::string &msg) { fmt::print(stderr, "torshpkg: {}\n", msg); });
      if (!root->synthesized()) lock.root_sha256 = to_hex(root->root_digest());
      const std::string text = lock_to_json(lock);
      TempOutput out(a->output);
      write_all(out.fd(), std::span(reinterpret_cast<const std::uint8_t *>(text.data()), text.size()), out.temp_path());
      out.commit();
      for (const auto &p : lock.packages) {
        std::string by;
        for (const auto &b : p.required_by) by += (by.empty() ? "" : ", ") + b;
        fmt::print("{} {}  root {}  (required by {})\n", p.name, p.version, p.root_sha256.substr(0, 16), by);
      }
      fmt::print("{}: {} {} for {}@{}\n", a->output, lock.packages.size(),
                 lock.packages.size() == 1 ? "package" : "packages", m.name, m.version);
      return kOk;
    };
  });
}

}  // namespace torshpkg::cli
