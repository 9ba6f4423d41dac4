// The packer: walk -> classify -> chunk -> encode in a pool -> hash -> dedup -> append -> index
// -> manifest -> footer. Writes one pass to a temporary file, fsyncs and renames it into place.
#pragma once
#include <atomic>
#include <csignal>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "torshpkg/crypt.hpp"
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
  // Encryption (--encrypt-to, --encrypt-passphrase-file): every chunk sealed under a fresh content
  // key wrapped for each recipient and passphrase; none of them: not encrypted.
  std::vector<PublicKey> encrypt_to;  // X25519 public keys
  std::vector<std::string> encrypt_passphrases;
  unsigned scrypt_log_n = keyblock::kDefaultScryptLogN;
  bool seal_names = true;  // also seal the string table and the manifest (--public-names: false)
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
  std::size_t recipients = 0;  // key block entries (0: not encrypted)
  Digest root{};
};

PackResult pack(const PackOptions &opts);

// Adds (or replaces, for the same key) a signature in an existing package, rewriting only the
// signature block and the footer at the tail of the file; chunk data and index are not touched.
// `output`: write a signed copy there instead of changing `path` in place. An encrypted package's
// key block is kept as it is (no key is needed).
void sign_package(const std::string &path, const PrivateKey &key, const std::string &output = {});

// `torshpkg rekey`: who can open an encrypted package. The content key (from `keys`) is wrapped anew
// for each of `add` and `add_passphrases`; the entries for `remove` (by key id) and, with
// `remove_passphrases`, every passphrase entry, are dropped. Only the key block and the footer at
// the tail are rewritten: chunks, index and root digest (and so signatures) are unchanged. Someone
// removed who kept the content key can still read the package: rekey changes access, not the key.
struct RekeyOptions {
  std::vector<PublicKey> add, remove;
  std::vector<std::string> add_passphrases;
  bool remove_passphrases = false;
  unsigned scrypt_log_n = keyblock::kDefaultScryptLogN;
};
// Returns the number of entries the new key block holds.
std::size_t rekey_package(const std::string &path, const KeyRing &keys, const RekeyOptions &opts,
                          const std::string &output = {});

// --- What `torshpkg pack` asks beyond PackOptions: the output policy (--force, "-" for standard
// output), symbolic links (-L, the Hugging Face cache layout) and --dry-run.
// "-o -": the package goes to standard output.
inline constexpr std::string_view kStdoutName = "-";

enum class Dereference : std::uint8_t {
  kAuto,    // follow symlinks only when the source is a Hugging Face cache snapshot (and say so)
  kAlways,  // -L: store what every symlink points to, as a regular file or directory
  kNever,   // --no-dereference: keep every symlink a symlink
};

struct PackExtras {
  Dereference dereference = Dereference::kAuto;
  bool force = false;                             // replace an existing output file
  std::function<void(const std::string &)> note;  // one-line notices (the cache layout detected)
};

// One entry that a pack would store, for --dry-run.
struct PlannedEntry {
  enum class Type : std::uint8_t { kFile, kDirectory, kSymlink };
  std::string path;  // relative to the source, '/'-separated; "" is the root
  Type type = Type::kFile;
  std::uint64_t size = 0;
  std::string kind;         // files: the manifest's kind (weights, config, ...)
  std::string link_target;  // symlinks, and files or directories stored in place of one (-L)
  bool dereferenced = false;
};

struct PackPlan {
  std::vector<PlannedEntry> entries;  // in package order, the root first
  // Each --exclude pattern, in order, with the paths it matched (an excluded directory's contents
  // are not looked at, so they are not listed).
  std::vector<std::pair<std::string, std::vector<std::string>>> excluded;
  std::vector<std::string> left_out;  // the output and its temporary files, found inside the source
  bool dereferencing = false;         // symlinks are followed (-L, or a Hugging Face cache snapshot)
};

// pack(opts) plus `extras`. pack(opts) itself replaces an existing output, as it always did.
PackResult pack(const PackOptions &opts, const PackExtras &extras);
// Everything pack(opts, extras) checks before writing (options, output, tree, --strict), then what
// it would store; creates, writes and removes nothing.
PackPlan plan_pack(const PackOptions &opts, const PackExtras &extras);
// The checks of the output alone (exists without force, a directory, a directory that does not
// exist or is not writable, a terminal or pipe for "-"), for callers that do slow work first.
void check_pack_output(const PackOptions &opts, const PackExtras &extras);

}  // namespace torshpkg
