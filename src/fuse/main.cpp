// mount.torshpkg: validates the package, mounts it, daemonises once the mount is usable.
#include <dirent.h>
#include <malloc.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "audit.hpp"
#include "fs.hpp"
#include "sandbox.hpp"
#include "torshpkg/chunk_store.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/exit_codes.hpp"
#include "torshpkg/open.hpp"
#include "torshpkg/resolve.hpp"
#include "torshpkg/trust_policy.hpp"
#include "torshpkg/version.hpp"

namespace torshpkg::mount {

namespace {

// kOk, kFailure, ...: the exit codes shared with torshpkg(1) (torshpkg/exit_codes.hpp).
using enum ExitCode;

struct SessionDeleter {
  void operator()(fuse_session *se) const noexcept { fuse_session_destroy(se); }
};
struct DirCloser {
  void operator()(DIR *d) const noexcept { ::closedir(d); }
};
struct ArgsDeleter {
  void operator()(fuse_args *a) const noexcept { fuse_opt_free_args(a); }
};

// Before daemonising, notices go to stderr; after, to syslog.
struct Notices {
  std::atomic<bool> daemonized{false};
  void operator()(const std::string &msg) const {
    if (daemonized.load())
      ::syslog(LOG_WARNING, "%s", msg.c_str());
    else
      fmt::print(stderr, "mount.torshpkg: {}\n", msg);
  }
};

// How to open `location` (the package, or a dependency from the lock): the same verification
// and remote settings for all; mirrors are looked up per location; one disk chunk cache for all.
OpenOptions open_options(const Options &opts, const std::string &location, const std::shared_ptr<Notices> &notices,
                         std::shared_ptr<ChunkStore> &store, const std::shared_ptr<const KeyRing> &keys) {
  OpenOptions o;
  o.keys = keys;
  o.digests = opts.skip_chunk_digests ? ChunkDigests::kSkipForBenchmark : ChunkDigests::kVerify;
  o.manifest_check = ManifestCheck::kOnFirstUse;  // xattrs and -o deps read it; files never do
  o.any_container = true;
  o.allow_unsigned = opts.allow_unsigned;
  if (!is_remote_location(location)) return o;
  if (location == opts.package) o.remote.mirrors = opts.mirrors;
  for (auto &m : mirrors_from_file(location, opts.mirrors_file)) o.remote.mirrors.push_back(std::move(m));
  o.remote.timeout = std::chrono::seconds(opts.timeout_seconds);
  o.remote.retries = opts.retries;
  o.remote.cacert = opts.cacert;
  o.remote.insecure = opts.insecure;
  o.remote.s3_endpoint = opts.s3_endpoint;
  o.remote.s3_region = opts.s3_region;
  o.remote.log = [notices](const std::string &msg) { (*notices)(msg); };
  if (opts.cache_dir != "none") {
    if (!store) {
      store = std::make_shared<ChunkStore>(opts.cache_dir, opts.cache_dir_bytes);
      if (!store->usable()) (*notices)("warning: " + store->warning());
    }
    o.store = store;
  }
  return o;
}

// -o key=, -o passphrase_file=; with neither, a terminal in the foreground is asked for a
// passphrase when the package can only be opened with one. Identities are read once for all packages.
std::shared_ptr<const KeyRing> key_ring(const Options &opts) {
  auto ring = std::make_shared<KeyRing>();
  for (const auto &k : opts.keys) ring->identities.push_back(PrivateKey::load(k, std::nullopt, KeyType::kX25519));
  if (auto p = read_passphrase_file(opts.passphrase_file)) ring->passphrases.push_back(std::move(*p));
  ring->ask = ring->identities.empty() && ring->passphrases.empty() && opts.foreground;
  return ring;
}

// -o deps: the lock must be for exactly this package (name, version, root digest), and each
// dependency must be exactly what the lock names (its root digest), held to the same trust policy.
std::vector<MountedDependency> open_dependencies(const Options &opts, const Package &pkg, const LoadedTrust &trust,
                                                 const std::shared_ptr<Notices> &notices,
                                                 std::shared_ptr<ChunkStore> &store,
                                                 const std::shared_ptr<const KeyRing> &keys) {
  std::string lock_path = *opts.deps_lock;
  if (lock_path.empty()) {
    if (is_remote_location(opts.package))
      throw UsageError("-o deps: a remote package needs -o deps=LOCK (there is no directory beside it)");
    const auto slash = opts.package.rfind('/');
    lock_path = (slash == std::string::npos ? std::string() : opts.package.substr(0, slash + 1)) + "torshpkg.lock";
  }
  const auto lock = read_lock_file(lock_path);
  const auto &m = pkg.manifest();
  if (pkg.synthesized()) throw UsageError(fmt::format("-o deps: {} is a zip, which has no dependencies", pkg.path()));
  const auto root = to_hex(pkg.root_digest());
  if (lock.root_name != m.name || lock.root_version != m.version || lock.root_sha256 != root)
    throw ResolveError(fmt::format("{} is the lock of {}@{} (root {}), not of {}@{} (root {}): run torshpkg resolve",
                                   lock_path, lock.root_name, lock.root_version, lock.root_sha256.substr(0, 16), m.name,
                                   m.version, root.substr(0, 16)));
  std::vector<MountedDependency> deps;
  for (const auto &p : lock.packages) {
    auto dep = open_package(p.source, open_options(opts, p.source, notices, store, keys));
    const auto decision = enforce_trust(*dep, check_signatures(*dep, trust), opts.allow_unsigned);
    if (!decision.trusted)
      (*notices)(
          fmt::format("warning: dependency {} is {}; mounting it because of allow_unsigned", p.name, decision.summary));
    if (dep->synthesized() || to_hex(dep->root_digest()) != p.root_sha256)
      throw IntegrityError(fmt::format("{}: {} is not the {}@{} that {} locked (root {}, locked {})", p.source,
                                       dep->path(), p.name, p.version, lock_path,
                                       dep->synthesized() ? "none" : to_hex(dep->root_digest()).substr(0, 16),
                                       p.root_sha256.substr(0, 16)));
    std::string entry = p.name;  // a registry name: '/' is the one character a directory name cannot hold
    std::replace(entry.begin(), entry.end(), '/', '+');
    deps.push_back({std::move(entry), std::move(dep)});
  }
  return deps;
}

// The mount point as an absolute path (the daemon changes to / and must still find it to
// unmount), refused when it is not an empty directory or is already a mount point, unless
// -o nonempty: mounting over files hides them, and stacking mounts hides the first one.
std::string checked_mountpoint(const Options &opts) {
  struct stat st {};
  if (::stat(opts.mountpoint.c_str(), &st) != 0) throw_errno("use mount point", opts.mountpoint);
  if (!S_ISDIR(st.st_mode)) throw UsageError(opts.mountpoint + ": mount point is not a directory");
  const std::unique_ptr<char, decltype(&std::free)> real(::realpath(opts.mountpoint.c_str(), nullptr), &std::free);
  if (!real) throw_errno("resolve mount point", opts.mountpoint);
  std::string path = real.get();
  if (opts.nonempty) return path;
  struct stat parent {};
  if (path != "/" && ::stat((path + "/..").c_str(), &parent) == 0 &&
      (parent.st_dev != st.st_dev || parent.st_ino == st.st_ino))
    throw UsageError(
        fmt::format("{} is already a mount point (unmount it first, or -o nonempty to mount over it)", path));
  std::unique_ptr<DIR, DirCloser> dir(::opendir(path.c_str()));
  if (!dir) throw_errno("open mount point", path);
  errno = 0;
  while (const dirent *e = ::readdir(dir.get())) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    throw UsageError(fmt::format("{} is not empty (it holds {}; -o nonempty mounts over it anyway)", path, e->d_name));
  }
  return path;
}

int serve(const Options &opts) {
  // Everything that can fail for a reason the user can fix is checked before mounting.
  const std::string mountpoint = checked_mountpoint(opts);
  const SandboxPlan sandbox = plan_sandbox(opts);
  if (::access("/dev/fuse", R_OK | W_OK) != 0)
    throw IoError("cannot open /dev/fuse: is the fuse module loaded and are you allowed to use it?", errno);
  // Validates header, footer, root digest and the whole index, then the signatures over the root:
  // the cost depends on the index size only, never on the amount of data.
  // A zip (.pt, torch.package, any .zip) is mounted in place; it cannot carry a signature, so the
  // trust policy holds it to the same rule as an unsigned package.
  // A URL: only the tail is fetched here (one or two range requests); chunks come on demand.
  const auto notices = std::make_shared<Notices>();
  if (opts.insecure) (*notices)("warning: insecure: TLS certificates are NOT verified");
  std::shared_ptr<ChunkStore> store;
  const auto keys = key_ring(opts);
  const auto pkg = open_package(opts.package, open_options(opts, opts.package, notices, store, keys));
  const auto trust = load_trust_store(opts.pubkeys, opts.trust_dirs);
  const auto decision = enforce_trust(*pkg, check_signatures(*pkg, trust), opts.allow_unsigned);
  auto deps =
      opts.deps_lock ? open_dependencies(opts, *pkg, trust, notices, store, keys) : std::vector<MountedDependency>{};
  if (!decision.trusted)
    fmt::print(stderr, "mount.torshpkg: warning: {} is {}; mounting it because of allow_unsigned\n", pkg->path(),
               decision.summary);
  if (opts.skip_chunk_digests)
    fmt::print(stderr,
               "mount.torshpkg: WARNING: unsafe_skip_chunk_digests: chunks are NOT verified (benchmarks only)\n");

  std::vector<std::string> argv_store = {"mount.torshpkg"};
  // nosuid and nodev always. The sandboxed daemon cannot unmount (no umount2, no setuid
  // fusermount3 under no_new_privs): auto_unmount leaves fusermount3 watching the mount, which it
  // unmounts when the daemon's /dev/fuse descriptor closes, however the daemon ends.
  std::string base_opts = std::string("ro,nosuid,nodev,default_permissions") + (opts.noexec ? ",noexec" : "") +
                          (sandbox.enabled ? ",auto_unmount" : "");
  std::string fuse_opts = base_opts + ",subtype=torshpkg";
  bool has_fsname = false;
  for (const auto &o : opts.fuse_options) {
    if (o.starts_with("fsname=")) has_fsname = true;
    if (o.starts_with("subtype=")) fuse_opts = base_opts;
    fuse_opts += "," + o;
  }
  if (!has_fsname) {
    std::string name = pkg->path();  // a URL without credentials or query: /proc/mounts is world-readable
    for (char &c : name)
      if (c == ',') c = '_';  // commas would split the option list
    fuse_opts += ",fsname=" + name;
  }
  argv_store.push_back("-o");
  argv_store.push_back(fuse_opts);
  if (opts.debug) argv_store.push_back("-d");
  std::vector<char *> argv;
  for (auto &s : argv_store) argv.push_back(s.data());
  fuse_args raw_args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  std::unique_ptr<fuse_args, ArgsDeleter> args(&raw_args);

  Filesystem fs(pkg, opts, std::move(deps));
  std::unique_ptr<fuse_session, SessionDeleter> se(
      fuse_session_new(args.get(), &Filesystem::operations(), sizeof(fuse_lowlevel_ops), &fs));
  if (!se) throw UsageError("libfuse refused the mount options (see the message above)");
  if (fuse_set_signal_handlers(se.get()) != 0) throw InternalError("cannot install signal handlers");
  if (fuse_session_mount(se.get(), mountpoint.c_str()) != 0) {
    fuse_remove_signal_handlers(se.get());
    throw IoError(fmt::format("cannot mount on {} (see the message above)", mountpoint), EIO);
  }
  // The parent exits only after this: by then the mount is in place.
  if (fuse_daemonize(opts.foreground ? 1 : 0) != 0) {
    const int err = errno;  // of the pipe() or fork() that failed; libfuse printed it
    fuse_session_unmount(se.get());
    fuse_remove_signal_handlers(se.get());
    throw IoError("cannot daemonise (see the message above)", err != 0 ? err : EIO);
  }
  // Decoded chunks (64 KiB..4 MiB) come from mmap, so an evicted chunk goes back to the OS at once
  // instead of fragmenting per-thread heaps (glibc would raise its threshold after the first free).
  ::mallopt(M_MMAP_THRESHOLD, 64 * 1024);
  if (!opts.foreground) {
    ::openlog("mount.torshpkg", LOG_PID, LOG_DAEMON);
    fs.set_daemonized(true);
    notices->daemonized = true;
    ::syslog(LOG_INFO, "mounted %s on %s: %s", pkg->path().c_str(), mountpoint.c_str(), decision.summary.c_str());
  } else {
    fmt::print(stderr, "mount.torshpkg: mounted {} at {}; Ctrl-C to unmount\n", pkg->path(), mountpoint);
  }
  audit_mount(*pkg, mountpoint, decision, sandbox.user);
  // Into the sandbox before any worker starts; the package file, the connections and the cache
  // directory are open already. A failure here leaves a mount nobody serves: unmount, then report.
  try {
    if (store && store->usable()) hand_over_directory(sandbox, opts.cache_dir);
    enter_sandbox(sandbox);
    if (store && store->usable() && ::access(opts.cache_dir.c_str(), W_OK | X_OK) != 0)
      (*notices)(
          fmt::format("warning: the disk chunk cache {} is out of reach for {} (a directory above it is "
                      "closed to it): remote chunks are not cached",
                      opts.cache_dir, sandbox.user));
  } catch (...) {
    fuse_session_unmount(se.get());
    fuse_remove_signal_handlers(se.get());
    throw;
  }
  fs.start(se.get());
  fuse_loop_config *cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(cfg, opts.threads);
  fuse_loop_cfg_set_idle_threads(cfg, std::max(1u, opts.threads / 2));
  const int rc = fuse_session_loop_mt(se.get(), cfg);
  fuse_loop_cfg_destroy(cfg);
  fs.stop();
  // Sandboxed, the auto_unmount helper unmounts when the descriptor closes (umount2 would be fatal).
  if (!sandbox.enabled) fuse_session_unmount(se.get());
  fuse_remove_signal_handlers(se.get());
  // libfuse returns the number of the signal that ended the loop: SIGINT, SIGTERM and SIGHUP are
  // how a foreground mount is meant to end, and the unmount above is clean.
  return rc == 0 || rc == SIGINT || rc == SIGTERM || rc == SIGHUP ? kOk : kFailure;
}

// The one place where exceptions become exit codes: exit_code_for(), shared with torshpkg(1).
int run(int argc, char **argv) {
  ::openlog("mount.torshpkg", LOG_PID, LOG_DAEMON);
  std::string package;
  try {
    const auto opts = parse_options(argc, argv);
    package = opts.package;
    if (opts.help) {
      std::fputs(kUsageText, stdout);
      return kOk;
    }
    if (opts.version) {
      fmt::print("mount.torshpkg {} (libfuse {})\n", kVersion, fuse_pkgversion());
      return kOk;
    }
    return serve(opts);
  } catch (...) {
    const auto e = std::current_exception();
    const auto report = exit_report(e, Tool::kMountHelper);
    // Refusals of a package (trust, keys, damage, malformed) go to the audit log too.
    if (!package.empty() &&
        (report.code == kUntrusted || report.code == kNoKey || report.code == kIntegrity || report.code == kFormat))
      audit_refusal(package, report.message);
    return exit_code_for(e, Tool::kMountHelper);
  }
}

}  // namespace

}  // namespace torshpkg::mount

int main(int argc, char **argv) {
  return torshpkg::mount::run(argc, argv);
}
