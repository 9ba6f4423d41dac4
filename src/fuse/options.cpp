#include "options.hpp"

#include <fmt/format.h>
#include <algorithm>
#include <string_view>

#include "torshpkg/errors.hpp"
#include "torshpkg/sizes.hpp"

namespace torshpkg::mount {

const char *const kUsageText = R"(usage: mount.torshpkg PACKAGE MOUNTPOINT [-o OPTION[,OPTION...]] [-f] [-d]

Mounts a .tpkg package read-only. Files are decompressed lazily, chunk by chunk,
and every chunk is checked against its SHA-256 before any byte is returned.
A zip archive (.zip, .pt, torch.package) is mounted in place, without unpacking;
it carries no signature, so it needs -o allow_unsigned (see mount.torshpkg(8)).

  -f              stay in the foreground
  -d              debug output (implies -f)
  -o uid=N        owner of every file (default: the mounting user)
  -o gid=N        group of every file (default: the mounting user's group)
  -o umask=OOO    clear these permission bits (octal; default: modes as packed)
  -o cache_size=S decoded-chunk cache budget, e.g. 512M (default 8M;
                  64M for a remote package)
  -o threads=N    FUSE worker threads (default 8)
  -o workers=N    background decoding threads (default: one per core)
  -o readahead=S  decode this far ahead of sequential readers (default 4M, 16M for a
                  remote package; at most half of cache_size; 0 disables)
  -o nopush       do not push whole decoded chunks into the kernel page cache
  -o random_prefetch=S  once a file is read at random, decode all of it into the
                  page cache in the background if it is at most S (default 4G; 0: never)
  -o trust=DIR    trust the Ed25519 keys (*.pub) in DIR (repeatable;
                  default /etc/torshpkg/trusted.d)
  -o pubkey=FILE  trust this public key (repeatable)
  -o allow_unsigned  mount a package that no trusted key signed
  -o key=FILE     open an encrypted package with this X25519 private key (repeatable)
  -o passphrase_file=FILE  or with the passphrase on this file's first line
                  (with -f on a terminal, asked for when neither is given)
  -o nonempty     mount over a directory that is not empty or is a mount point
  -o noexec       files of the mount cannot be executed (nosuid and nodev always apply)
  -o run_as=USER  serve as USER once mounted (default: nobody when started as root)
  -o nosandbox    keep the user and skip the seccomp filter (debugging only)
  -o deps[=LOCK]  show the dependencies LOCK names (torshpkg resolve) under
                  MOUNTPOINT/.deps/NAME (default: torshpkg.lock beside PACKAGE)
Remote packages (PACKAGE is an http:// or https:// URL, or s3://BUCKET/KEY):
  -o mirror=URL   another URL of the same package, tried in order on failure (repeatable)
  -o mirrors_file=FILE  URL-prefix mirror list (default /etc/torshpkg/mirrors.conf)
  -o timeout=SEC  per-request timeout (default 30)
  -o retries=N    rounds over the mirrors before a read fails (default 3)
  -o cacert=FILE  CA bundle for TLS (default: the system's)
  -o insecure     do not verify TLS certificates (prints a warning)
  -o cache_dir=DIR  shared disk chunk cache (default /var/cache/torshpkg; none: off)
  -o cache_dir_size=S  its bound, least recently used chunks go first (default 16G)
  -o prefetch=all|manifest|none  fetch in the background every file, every file
                  but the weights (default), or nothing until read
S3 (PACKAGE is s3://BUCKET/KEY; credentials as the AWS tools read them):
  -o s3_endpoint=URL  an S3-compatible store (default $AWS_ENDPOINT_URL, else AWS)
  -o s3_region=NAME   the region to sign for (default $AWS_REGION, else us-east-1)
  -o allow_other, allow_root, fsname=NAME, subtype=NAME
  -h, --help      this help
  -V, --version   version

See mount.torshpkg(8).
)";

namespace {

std::uint32_t parse_uint(const std::string &what, const std::string &text, int base) {
  std::size_t pos = 0;
  unsigned long v = 0;
  try {
    v = std::stoul(text, &pos, base);
  } catch (const std::exception &) {
    pos = 0;
  }
  if (pos != text.size() || text.empty() || v > UINT32_MAX)
    throw UsageError(fmt::format("bad value for {}: '{}'", what, text));
  return static_cast<std::uint32_t>(v);
}

bool is_ignored(std::string_view opt) {
  // What mount(8) and fstab pass that means nothing here (the mount is always read-only).
  static constexpr std::string_view kIgnored[] = {"ro",    "rw",      "defaults", "auto",        "noauto",
                                                  "user",  "nouser",  "users",    "nofail",      "_netdev",
                                                  "exec",  "suid",    "nosuid",   "dev",         "nodev",
                                                  "atime", "noatime", "relatime", "strictatime", "nodiratime",
                                                  "async", "sync",    "owner",    "comment",     "x-systemd.automount"};
  if (opt.starts_with("x-") || opt.starts_with("comment=")) return true;
  return std::find(std::begin(kIgnored), std::end(kIgnored), opt) != std::end(kIgnored);
}

void apply_option_list(Options &o, std::string_view list) {
  while (!list.empty()) {
    const auto comma = list.find(',');
    const std::string opt(list.substr(0, comma));
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
    if (opt.empty() || is_ignored(opt)) continue;
    const auto eq = opt.find('=');
    const std::string key = opt.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : opt.substr(eq + 1);
    if (key == "uid")
      o.uid = parse_uint("uid", value, 10);
    else if (key == "gid")
      o.gid = parse_uint("gid", value, 10);
    else if (key == "umask") {
      o.umask = parse_uint("umask", value, 8);
      if (*o.umask > 0777) throw UsageError(fmt::format("bad value for umask: '{}'", value));
    } else if (key == "cache_size")
      o.cache_bytes = parse_size("cache_size", value);
    else if (key == "threads") {
      o.threads = parse_uint("threads", value, 10);
      if (o.threads < 1 || o.threads > 256) throw UsageError("threads must be from 1 to 256");
    } else if (key == "workers") {
      o.workers = parse_uint("workers", value, 10);
      if (o.workers > 64) throw UsageError("workers must be from 0 to 64");
    } else if (key == "readahead") {
      o.readahead_bytes = parse_size("readahead", value);
    } else if (key == "random_prefetch") {
      o.random_prefetch_bytes = parse_size("random_prefetch", value);
    } else if (key == "trust" || key == "pubkey") {
      if (value.empty()) throw UsageError(fmt::format("{}= needs a path", key));
      (key == "trust" ? o.trust_dirs : o.pubkeys).push_back(value);
    } else if (key == "key") {
      if (value.empty()) throw UsageError("key= needs a path");
      o.keys.push_back(value);
    } else if (key == "passphrase_file") {
      if (value.empty()) throw UsageError("passphrase_file= needs a path");
      o.passphrase_file = value;
    } else if (key == "deps") {
      if (eq != std::string::npos && value.empty()) throw UsageError("deps= needs a lock file (or plain 'deps')");
      o.deps_lock = value;
    } else if (key == "run_as") {
      if (value.empty()) throw UsageError("run_as= needs a user name or uid");
      o.run_as = value;
    } else if (opt == "nosandbox") {
      o.no_sandbox = true;
    } else if (opt == "noexec") {
      o.noexec = true;
    } else if (opt == "nonempty") {
      o.nonempty = true;
    } else if (opt == "allow_unsigned") {
      o.allow_unsigned = true;
    } else if (opt == "unsafe_skip_chunk_digests") {
      o.skip_chunk_digests = true;
    } else if (opt == "nopush") {
      o.push_to_page_cache = false;
    } else if (key == "mirror") {
      if (value.empty()) throw UsageError("mirror= needs a URL");
      o.mirrors.push_back(value);
    } else if (key == "mirrors_file" || key == "cacert" || key == "cache_dir") {
      if (value.empty()) throw UsageError(fmt::format("{}= needs a path", key));
      (key == "mirrors_file" ? o.mirrors_file : key == "cacert" ? o.cacert : o.cache_dir) = value;
    } else if (key == "s3_endpoint" || key == "s3_region") {
      if (value.empty()) throw UsageError(fmt::format("{}= needs a value", key));
      (key == "s3_endpoint" ? o.s3_endpoint : o.s3_region) = value;
    } else if (key == "timeout") {
      o.timeout_seconds = parse_uint("timeout", value, 10);
      if (o.timeout_seconds < 1 || o.timeout_seconds > 3600) throw UsageError("timeout must be from 1 to 3600 seconds");
    } else if (key == "retries") {
      o.retries = parse_uint("retries", value, 10);
      if (o.retries > 100) throw UsageError("retries must be from 0 to 100");
    } else if (opt == "insecure") {
      o.insecure = true;
    } else if (key == "cache_dir_size") {
      o.cache_dir_bytes = parse_size("cache_dir_size", value);
    } else if (key == "prefetch") {
      if (value == "all")
        o.prefetch = Options::Prefetch::kAll;
      else if (value == "manifest")
        o.prefetch = Options::Prefetch::kManifest;
      else if (value == "none")
        o.prefetch = Options::Prefetch::kNone;
      else
        throw UsageError(fmt::format("bad value for prefetch: '{}' (all, manifest or none)", value));
    } else if (opt == "allow_other" || opt == "allow_root" || opt == "default_permissions" || key == "fsname" ||
               key == "subtype" || key == "max_read")
      o.fuse_options.push_back(opt);
    else
      throw UsageError(fmt::format("unknown mount option '{}' (see mount.torshpkg(8))", opt));
  }
}

}  // namespace

std::uint64_t cache_bytes_for(const Options &o, bool remote) noexcept {
  return o.cache_bytes.value_or(remote ? kRemoteCacheBytes : kLocalCacheBytes);
}

std::uint64_t readahead_bytes_for(const Options &o, bool remote) noexcept {
  return o.readahead_bytes.value_or(remote ? kRemoteReadaheadBytes : kLocalReadaheadBytes);
}

Options parse_options(int argc, char **argv) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "-o") {
      if (++i >= argc) throw UsageError("-o needs an option list");
      apply_option_list(o, argv[i]);
    } else if (a.starts_with("-o") && a.size() > 2) {
      apply_option_list(o, a.substr(2));
    } else if (a == "-f") {
      o.foreground = true;
    } else if (a == "-d" || a == "--debug") {
      o.debug = o.foreground = true;
    } else if (a == "-h" || a == "--help") {
      o.help = true;
    } else if (a == "-V" || a == "--version") {
      o.version = true;
    } else if (a == "-s" || a == "-n" || a == "-v") {
      // mount(8): sloppy, no mtab, verbose: nothing to do
    } else if (a == "-t") {
      ++i;  // mount(8) may pass the type
    } else if (a.size() > 1 && a[0] == '-') {
      throw UsageError(fmt::format("unknown argument '{}'", a));
    } else {
      positional.emplace_back(a);
    }
  }
  if (o.help || o.version) return o;
  if (positional.size() != 2) throw UsageError("expected PACKAGE and MOUNTPOINT (see --help)");
  o.package = positional[0];
  o.mountpoint = positional[1];
  return o;
}

}  // namespace torshpkg::mount
