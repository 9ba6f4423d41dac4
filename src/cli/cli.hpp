// The torshpkg command: one file per subcommand; main.cpp maps errors to exit codes (exit_codes.hpp).
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <string_view>

#include "torshpkg/exit_codes.hpp"
#include "torshpkg/open.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/signing.hpp"
#include "torshpkg/trust_policy.hpp"

namespace torshpkg::cli {

// kOk, kUsage, kIntegrity, ...: the exit codes shared with mount.torshpkg (torshpkg/exit_codes.hpp).
using enum ExitCode;

using Action = std::function<int()>;
// Each subcommand registers itself and sets `action` when chosen.
void add_pack(CLI::App &app, Action &action);
void add_inspect(CLI::App &app, Action &action);
void add_diff(CLI::App &app, Action &action);
void add_ls(CLI::App &app, Action &action);
void add_cat(CLI::App &app, Action &action);
void add_extract(CLI::App &app, Action &action);
void add_verify(CLI::App &app, Action &action);
void add_keygen(CLI::App &app, Action &action);
void add_sign(CLI::App &app, Action &action);
void add_rekey(CLI::App &app, Action &action);
void add_export(CLI::App &app, Action &action);
void add_import(CLI::App &app, Action &action);
void add_push(CLI::App &app, Action &action);
void add_pull(CLI::App &app, Action &action);
void add_tags(CLI::App &app, Action &action);
void add_resolve(CLI::App &app, Action &action);
void add_cache(CLI::App &app, Action &action);
void add_trust(CLI::App &app, Action &action);

// Shared helpers for the subcommands.
[[nodiscard]] bool stderr_is_tty();
std::string human_bytes(std::uint64_t n);
// Resolves a path inside the package; with `follow`, follows relative symlinks that stay inside it.
// Throws NotFoundError naming the path.
std::uint32_t resolve_in_package(const Package &pkg, std::string_view path, bool follow);
// --pubkey FILE / --trust DIR, shared by the commands that check signatures.
struct TrustArgs {
  std::vector<std::string> pubkeys, dirs;
  // True when the user named keys: then a trusted signature is required.
  [[nodiscard]] bool explicit_trust() const noexcept { return !pubkeys.empty() || !dirs.empty(); }
};
void add_trust_options(CLI::App *cmd, TrustArgs &args);
// The named keys, or the default trust directory when none was named; a named directory must
// exist. Refusals built from it name the trusted keys (trust_policy.hpp).
[[nodiscard]] LoadedTrust load_trust(const TrustArgs &args);
// --mirror, --timeout, --retries, --cacert, --insecure, --cache-dir: for packages given as URLs.
struct RemoteArgs {
  std::vector<std::string> mirrors;
  unsigned timeout = 30, retries = 3;
  std::string cacert, cache_dir, s3_endpoint, s3_region;
  bool insecure = false;
};
void add_remote_options(CLI::App *cmd, RemoteArgs &args);
// --key FILE (X25519 identities, repeatable) and --passphrase-file FILE: for encrypted packages.
struct KeyArgs {
  std::vector<std::string> keys;
  std::string passphrase_file;
  // False when neither option was given (inspect and verify then open locked, asking nothing).
  [[nodiscard]] bool given() const noexcept { return !keys.empty() || !passphrase_file.empty(); }
};
void add_key_options(CLI::App *cmd, KeyArgs &args);
// The identities and passphrase named; with neither, a terminal is asked for a passphrase when a
// package can only be opened with one.
[[nodiscard]] std::shared_ptr<const KeyRing> load_keys(const KeyArgs &args);
// Background fetchers (and chunks read ahead) for cat and extract of a remote package.
inline constexpr unsigned kRemoteFetchers = 8;
// How to open `location`: for a URL, its mirrors (given, then the mirrors file's), TLS and the disk
// chunk cache (--cache-dir, else $TORSHPKG_CACHE_DIR, else the default; "none" for no cache).
[[nodiscard]] OpenOptions open_options(const std::string &location, const RemoteArgs &args);
// The same, with the keys of `keys` for encrypted packages.
[[nodiscard]] OpenOptions open_options(const std::string &location, const RemoteArgs &args, const KeyArgs &keys);
// "valid (trusted key)", "INVALID", "untrusted key": the words inspect and verify print.
[[nodiscard]] std::string_view signature_state_name(SignatureCheck::State s) noexcept;

// A one-line progress bar on stderr, drawn only when stderr is a terminal: as wide as the terminal
// (80 columns when it cannot tell), redrawn at most 10 times a second (and at 100%), and with an
// ETA only once the rate means something (after 1 s, or 2% done).
class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  ~ProgressBar();
  void update(std::uint64_t done, std::uint64_t total);
  void finish();

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  double start_;
  double last_draw_ = 0;
};
// The line ProgressBar draws, `width` columns at most (no terminal control characters); the
// ETA is left out while `eta` is false.
[[nodiscard]] std::string progress_line(std::string_view label, std::uint64_t done, std::uint64_t total, double elapsed,
                                        bool eta, std::size_t width);
// Columns of the terminal on stderr (TIOCGWINSZ), else 80.
[[nodiscard]] std::size_t stderr_columns();
// "16.8M", "7.0B", "512": parameter counts as people say them.
[[nodiscard]] std::string human_count(std::uint64_t n);
// Optimal string alignment distance (edits and adjacent swaps): "did you mean" suggestions.
[[nodiscard]] std::size_t edit_distance(std::string_view a, std::string_view b);
// The candidate closest to `word`, when it is close enough to be a likely typo; "" otherwise.
[[nodiscard]] std::string closest_match(std::string_view word, const std::vector<std::string> &candidates);

}  // namespace torshpkg::cli
