// torshpkg push PKG oci://..., torshpkg pull oci://... -o FILE, torshpkg tags oci://HOST/REPO:
// packages as OCI artifacts in a registry (oci_source.hpp says how they are stored).
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>

#include "cli.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/oci_source.hpp"
#include "torshpkg/resolve.hpp"

namespace torshpkg::cli {

namespace {

constexpr std::size_t kPiece = 8 << 20;

// The SHA-256 of a whole file, with a progress bar.
std::string file_sha256_hex(const std::string &path, std::uint64_t size) {
  const auto fd = open_read(path);
  Sha256 h;
  std::vector<std::uint8_t> buf(kPiece);
  ProgressBar bar("hashing");
  for (std::uint64_t done = 0; done < size;) {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), size - done));
    pread_exact(fd.get(), std::span(buf.data(), n), done, path);
    h.update(std::span(buf.data(), n));
    done += n;
    bar.update(done, size);
  }
  bar.finish();
  return to_hex(h.finish());
}

void require_oci(const std::string &location) {
  if (!location.starts_with("oci://") && !location.starts_with("oci+http://"))
    throw UsageError(
        fmt::format("{}: expected oci://HOST[:PORT]/REPO[:TAG] (oci+http:// for a plain-HTTP registry)", location));
}

}  // namespace

void add_push(CLI::App &app, Action &action) {
  struct Args {
    std::string file, target;
    std::vector<std::string> mount_from;
    RemoteArgs remote;
  };
  auto a = std::make_shared<Args>();
  auto *cmd = app.add_subcommand("push", "Store a package in an OCI registry as an artifact");
  cmd->add_option("FILE", a->file, "Package")->required();
  cmd->add_option("REFERENCE", a->target, "oci://HOST[:PORT]/REPO[:TAG] (default tag: latest)")->required();
  cmd->add_option("--mount-from", a->mount_from,
                  "Repository of the same registry that may hold the package already: mounted, not uploaded "
                  "(repeatable)");
  add_remote_options(cmd, a->remote);
  cmd->callback([&action, a] {
    action = [a]() -> int {
      require_oci(a->target);
      // Only a package that opens (header, index, root digest) is pushed.
      const auto pkg = Package::open(a->file);
      std::map<std::string, std::string> ann;
      if (!pkg->manifest().name.empty()) ann["org.opencontainers.image.title"] = pkg->manifest().name;
      if (!pkg->manifest().version.empty()) ann["org.opencontainers.image.version"] = pkg->manifest().version;
      ann["dev.torshpkg.root.sha256"] = to_hex(pkg->root_digest());
      const auto size = pkg->file_size();
      const auto digest = file_sha256_hex(a->file, size);
      ProgressBar bar("pushing");
      const auto r = oci_push(a->file, digest, a->target, ann, open_options(a->target, a->remote).remote, a->mount_from,
                              [&bar, size](std::uint64_t sent) { bar.update(sent, size); });
      bar.finish();
      const char *how = r.blob == OciPushResult::Blob::kExisted   ? "package already there"
                        : r.blob == OciPushResult::Blob::kMounted ? "package mounted from another repository"
                                                                  : "uploaded";
      fmt::print("{}: {} ({}), manifest {}\n", a->target, how, human_bytes(size), r.manifest_digest);
      return kOk;
    };
  });
}

namespace {

// Downloads the package layer `source` names into `output` (replacing it), checked against the
// layer's digest, opened as a package and (if given) checked against `expected_root` before it is
// renamed into place.
void pull_file(const std::string &source, const std::string &output, const RemoteArgs &remote,
               std::string_view expected_root = {}) {
  require_oci(source);
  auto opts = open_options(source, remote).remote;
  auto session = std::make_shared<RegistrySession>(parse_oci_reference(source), source, opts);
  const auto blob = oci_resolve(*session);
  if (!session->auth_header().empty()) {
    opts.headers.push_back(session->auth_header());
    opts.reauthorize = [session] { return session->reauthorize(); };
  }
  opts.display_name = source;
  const auto src = open_http(blob.url, opts);
  if (src->size() != blob.size)
    throw FormatError(fmt::format("{}: the blob is {} bytes, the manifest says {}", source, src->size(), blob.size));
  TempOutput out(output);
  Sha256 h;
  std::vector<std::uint8_t> buf(kPiece);
  ProgressBar bar("pulling");
  for (std::uint64_t done = 0; done < blob.size;) {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), blob.size - done));
    src->read(done, std::span(buf.data(), n));
    h.update(std::span(buf.data(), n));
    write_all(out.fd(), std::span(buf.data(), n), out.temp_path());
    done += n;
    bar.update(done, blob.size);
  }
  bar.finish();
  if ("sha256:" + to_hex(h.finish()) != blob.digest)
    throw IntegrityError(fmt::format("{}: the blob does not match its digest {}", source, blob.digest));
  const auto root = to_hex(Package::open(out.temp_path())->root_digest());  // a package, whole
  if (!expected_root.empty() && root != expected_root)
    throw IntegrityError(fmt::format("{}: root digest {} is not the locked {}", source, root, expected_root));
  out.commit();
  fmt::print("{}: {} from {} ({})\n", output, human_bytes(blob.size), source, blob.digest);
}

bool exists(const std::string &path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// pull --lock: every locked package into DIR/NAME-VERSION.tpkg, by the digest the lock names.
void pull_locked(const std::string &lock_path, const std::string &dir, bool force, const RemoteArgs &remote) {
  const auto lock = read_lock_file(lock_path);
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) throw_errno("create directory", dir);
  for (const auto &p : lock.packages) {
    std::string file = p.name + "-" + p.version + ".tpkg";
    std::replace(file.begin(), file.end(), '/', '_');
    const std::string path = dir + "/" + file;
    if (exists(path)) {
      std::string have;
      try {
        have = to_hex(Package::open(path)->root_digest());
      } catch (const Error &) {
        // not a package: replaced with --force, refused without
      }
      if (have == p.root_sha256) {
        fmt::print("{}: up to date ({}@{})\n", path, p.name, p.version);
        continue;
      }
      if (!force)
        throw UsageError(
            fmt::format("{} exists and is not {}@{} as locked (--force replaces it)", path, p.name, p.version));
    }
    // The source names the manifest by digest: oci_resolve() checks the manifest's bytes against it,
    // the blob is checked against the manifest's layer digest, and the root digest against the lock.
    pull_file(p.source, path, remote, p.root_sha256);
  }
  fmt::print("{}: {} {} from {}\n", dir, lock.packages.size(), lock.packages.size() == 1 ? "package" : "packages",
             lock_path);
}

}  // namespace

void add_pull(CLI::App &app, Action &action) {
  struct Args {
    std::string source, output, lock;
    bool force = false;
    RemoteArgs remote;
  };
  auto a = std::make_shared<Args>();
  auto *cmd = app.add_subcommand("pull", "Fetch a package from an OCI registry into a file, verified");
  cmd->add_option("REFERENCE", a->source, "oci://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]");
  cmd->add_option("-o,--output", a->output, "File to write (with --lock: a directory)")->required();
  cmd->add_option("--lock", a->lock, "Fetch every package a lock file names (torshpkg resolve) into the -o directory");
  cmd->add_flag("--force", a->force, "Replace an existing output file");
  add_remote_options(cmd, a->remote);
  cmd->callback([&action, a] {
    action = [a]() -> int {
      if (!a->lock.empty()) {
        if (!a->source.empty()) throw UsageError("pull: give a REFERENCE or --lock, not both");
        pull_locked(a->lock, a->output, a->force, a->remote);
        return kOk;
      }
      if (a->source.empty()) throw UsageError("pull: a REFERENCE (or --lock FILE) is required");
      if (!a->force && exists(a->output)) throw UsageError(fmt::format("{} exists (--force replaces it)", a->output));
      (void)pull_file(a->source, a->output, a->remote);
      return kOk;
    };
  });
}

void add_tags(CLI::App &app, Action &action) {
  struct Args {
    std::string repo;
    RemoteArgs remote;
  };
  auto a = std::make_shared<Args>();
  auto *cmd = app.add_subcommand("tags", "List the tags of a repository in an OCI registry");
  cmd->add_option("REPOSITORY", a->repo, "oci://HOST[:PORT]/REPO")->required();
  add_remote_options(cmd, a->remote);
  cmd->callback([&action, a] {
    action = [a]() -> int {
      require_oci(a->repo);
      for (const auto &t : oci_tags(a->repo, open_options(a->repo, a->remote).remote)) fmt::print("{}\n", t);
      return kOk;
    };
  });
}

}  // namespace torshpkg::cli
