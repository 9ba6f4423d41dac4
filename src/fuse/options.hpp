// Command line of mount.torshpkg, including what mount(8) passes to a helper.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace torshpkg::mount {

struct Options {
  std::string package;
  std::string mountpoint;
  bool foreground = false;
  bool debug = false;
  bool help = false;
  bool version = false;
  std::optional<std::uint32_t> uid, gid, umask;
  // Decoded-chunk cache. Unset: kLocalCacheBytes for a local package, kRemoteCacheBytes for a remote
  // one, whose coalesced fetches (runs of up to 4 MiB, several in flight) must fit while they wait.
  std::optional<std::uint64_t> cache_bytes;
  unsigned threads = 8;
  unsigned workers = 0;                              // background decoders; 0: one per core
  // Decode (remote: fetch) this far ahead of sequential readers; unset: kLocalReadaheadBytes or
  // kRemoteReadaheadBytes (several coalesced requests in flight hide the network's latency).
  std::optional<std::uint64_t> readahead_bytes;
  bool push_to_page_cache = true;                    // hand whole decoded chunks to the kernel page cache
  std::uint64_t random_prefetch_bytes = 4ull << 30;  // decode a file read at random whole, up to this size
  std::vector<std::string> trust_dirs;               // -o trust=DIR (repeatable); default /etc/torshpkg/trusted.d
  std::vector<std::string> pubkeys;                  // -o pubkey=FILE (repeatable)
  bool allow_unsigned = false;                       // mount without a trusted signature
  std::vector<std::string> keys;                     // -o key=FILE (repeatable): X25519 identities
  std::string passphrase_file;                       // -o passphrase_file=FILE: an encrypted package's passphrase
  bool nonempty = false;                             // mount over a non-empty directory or a mount
  bool noexec = false;                               // -o noexec: no file of the mount can be executed
  // The sandbox (sandbox.hpp): -o run_as=USER (default nobody when started as root), -o nosandbox.
  std::optional<std::string> run_as;
  bool no_sandbox = false;
  bool skip_chunk_digests = false;                   // benchmarking only: measure what lazy verification costs
  std::vector<std::string> fuse_options;             // passed to libfuse: allow_other, fsname=, ...
  // Remote packages (http://, https://)
  std::vector<std::string> mirrors;                  // -o mirror=URL (repeatable), before the mirrors file's
  std::string mirrors_file = "/etc/torshpkg/mirrors.conf";
  std::uint32_t timeout_seconds = 30;                // per request
  std::uint32_t retries = 3;
  std::string cacert;
  bool insecure = false;
  std::string cache_dir = "/var/cache/torshpkg";     // "none": no disk chunk cache
  std::uint64_t cache_dir_bytes = 16ull << 30;
  enum class Prefetch { kNone, kManifest, kAll } prefetch = Prefetch::kManifest;
  std::string s3_endpoint, s3_region;                // s3://: overrides of AWS_ENDPOINT_URL, AWS_REGION
  // -o deps[=LOCK]: the lock's packages under /.deps; "" for torshpkg.lock beside a local package.
  std::optional<std::string> deps_lock;
};

inline constexpr std::uint64_t kLocalCacheBytes = 8ull << 20;
inline constexpr std::uint64_t kRemoteCacheBytes = 64ull << 20;
inline constexpr std::uint64_t kLocalReadaheadBytes = 4ull << 20;
inline constexpr std::uint64_t kRemoteReadaheadBytes = 16ull << 20;
// The cache budget for one package: -o cache_size= or the default for its kind of source.
[[nodiscard]] std::uint64_t cache_bytes_for(const Options &o, bool remote) noexcept;
// How far ahead of a sequential reader, before the cap at half of the cache.
[[nodiscard]] std::uint64_t readahead_bytes_for(const Options &o, bool remote) noexcept;

// Throws UsageError with a message naming the bad argument.
Options parse_options(int argc, char **argv);
extern const char *const kUsageText;

}  // namespace torshpkg::mount
