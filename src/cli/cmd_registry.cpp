// torshpkg push PKG oci://..., torshpkg pull oci://... -o FILE, torshpkg tags oci://HOST/REPO:
// packages as OCI artifacts in a registry (oci_source.hpp says how they are stored).
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/oci_source.hpp"

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
    throw UsageError(fmt::format("{}: expected oci://HOST[:PORT]/REPO[:TAG] (oci+http:// for a plain-HTTP registry)",
                                 location));
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
      const auto r = oci_push(a->file, digest, a->target, ann, open_options(a->target, a->remote).remote,
                              a->mount_from, [&bar, size](std::uint64_t sent) { bar.update(sent, size); });
      bar.finish();
      const char *how = r.blob == OciPushResult::Blob::kExisted  ? "package already there"
                        : r.blob == OciPushResult::Blob::kMounted ? "package mounted from another repository"
                                                                  : "uploaded";
      fmt::print("{}: {} ({}), manifest {}\n", a->target, how, human_bytes(size), r.manifest_digest);
      return kOk;
    };
  });
}

void add_pull(CLI::App &app, Action &action) {
  struct Args {
    std::string source, output;
    bool force = false;
    RemoteArgs remote;
  };
  auto a = std::make_shared<Args>();
  auto *cmd = app.add_subcommand("pull", "Fetch a package from an OCI registry into a file, verified");
  cmd->add_option("REFERENCE", a->source, "oci://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]")->required();
  cmd->add_option("-o,--output", a->output, "File to write")->required();
  cmd->add_flag("--force", a->force, "Replace an existing output file");
  add_remote_options(cmd, a->remote);
  cmd->callback([&action, a] {
    action = [a]() -> int {
      require_oci(a->source);
      struct stat st {};
      if (!a->force && ::lstat(a->output.c_str(), &st) == 0)
        throw UsageError(fmt::format("{} exists (--force replaces it)", a->output));
      auto opts = open_options(a->source, a->remote).remote;
      auto session = std::make_shared<RegistrySession>(parse_oci_reference(a->source), a->source, opts);
      const auto blob = oci_resolve(*session);
      if (!session->auth_header().empty()) {
        opts.headers.push_back(session->auth_header());
        opts.reauthorize = [session] { return session->reauthorize(); };
      }
      opts.display_name = a->source;
      const auto src = open_http(blob.url, opts);
      if (src->size() != blob.size)
        throw FormatError(fmt::format("{}: the blob is {} bytes, the manifest says {}", a->source, src->size(), blob.size));
      TempOutput out(a->output);
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
        throw IntegrityError(fmt::format("{}: the blob does not match its digest {}", a->source, blob.digest));
      (void)Package::open(out.temp_path());  // a package, whole: header, index, root digest
      out.commit();
      fmt::print("{}: {} from {} ({})\n", a->output, human_bytes(blob.size), a->source, blob.digest);
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
