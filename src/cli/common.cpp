// Helpers shared by the subcommands.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/chunk_store.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"

namespace torshpkg::cli {

bool stderr_is_tty() { return ::isatty(STDERR_FILENO) == 1; }

std::string human_bytes(std::uint64_t n) {
  static constexpr const char *kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 5) v /= 1024, ++u;
  return u == 0 ? fmt::format("{} B", n) : fmt::format("{:.1f} {}", v, kUnits[u]);
}

static double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

ProgressBar::ProgressBar(std::string label) : label_(std::move(label)), enabled_(stderr_is_tty()), start_(now_seconds()) {}
ProgressBar::~ProgressBar() {
  if (drawn_) std::fputs("\n", stderr);
}

void ProgressBar::update(std::uint64_t done, std::uint64_t total) {
  if (!enabled_) return;
  const double elapsed = std::max(1e-3, now_seconds() - start_);
  const double rate = static_cast<double>(done) / elapsed;
  const double frac = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<std::size_t>(filled), '=');
  if (filled < kWidth) bar += '>';
  bar.resize(kWidth, ' ');
  const double eta = rate > 0 ? static_cast<double>(total - std::min(done, total)) / rate : 0;
  std::fprintf(stderr, "\r%s [%s] %3.0f%% %s/%s %s/s ETA %.0fs\033[K", label_.c_str(), bar.c_str(), frac * 100,
               human_bytes(done).c_str(), human_bytes(total).c_str(), human_bytes(static_cast<std::uint64_t>(rate)).c_str(),
               eta);
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::finish() {
  if (drawn_) std::fputs("\n", stderr);
  drawn_ = false;
}

void add_trust_options(CLI::App *cmd, TrustArgs &args) {
  cmd->add_option("--pubkey", args.pubkeys, "Trust this public key (repeatable); a trusted signature is then required")
      ->allow_extra_args(false);
  cmd->add_option("--trust", args.dirs,
                  fmt::format("Trust every *.pub in this directory (repeatable; default {})", kDefaultTrustDir))
      ->allow_extra_args(false);
}

void add_remote_options(CLI::App *cmd, RemoteArgs &args) {
  auto *g = "Remote packages (http://, https://, s3://)";
  cmd->add_option("--mirror", args.mirrors, "Another URL of the same package, tried in order on failure (repeatable)")
      ->allow_extra_args(false)
      ->group(g);
  cmd->add_option("--timeout", args.timeout, "Per-request timeout in seconds (default 30)")
      ->check(CLI::Range(1u, 3600u))
      ->group(g);
  cmd->add_option("--retries", args.retries, "Rounds over the mirrors before a read fails (default 3)")
      ->check(CLI::Range(0u, 100u))
      ->group(g);
  cmd->add_option("--cacert", args.cacert, "CA bundle for TLS (default: the system's)")->group(g);
  cmd->add_flag("--insecure", args.insecure, "Do not verify TLS certificates (prints a warning)")->group(g);
  cmd->add_option("--cache-dir", args.cache_dir,
                  fmt::format("Shared disk chunk cache (default $TORSHPKG_CACHE_DIR or {}; none: off)",
                              kDefaultChunkStoreDir))
      ->group(g);
  cmd->add_option("--s3-endpoint", args.s3_endpoint, "s3://: an S3-compatible store (default $AWS_ENDPOINT_URL, else AWS)")
      ->group(g);
  cmd->add_option("--s3-region", args.s3_region, "s3://: the region to sign for (default $AWS_REGION, else us-east-1)")
      ->group(g);
}

OpenOptions open_options(const std::string &location, const RemoteArgs &args) {
  OpenOptions o;
  if (!is_remote_location(location)) return o;
  o.remote.mirrors = args.mirrors;
  for (auto &m : mirrors_from_file(location, kDefaultMirrorsFile)) o.remote.mirrors.push_back(std::move(m));
  o.remote.timeout = std::chrono::seconds(args.timeout);
  o.remote.retries = args.retries;
  o.remote.cacert = args.cacert;
  o.remote.insecure = args.insecure;
  o.remote.s3_endpoint = args.s3_endpoint;
  o.remote.s3_region = args.s3_region;
  if (args.insecure) fmt::print(stderr, "torshpkg: warning: --insecure: TLS certificates are NOT verified\n");
  std::string dir = args.cache_dir;
  if (dir.empty()) {
    const char *env = std::getenv("TORSHPKG_CACHE_DIR");
    dir = env && *env ? env : kDefaultChunkStoreDir;
  }
  if (dir != "none") o.store = std::make_shared<ChunkStore>(dir, kDefaultChunkStoreBytes);  // unusable: no caching
  return o;
}

TrustStore load_trust(const TrustArgs &args) {
  return TrustStore::from(args.pubkeys, args.dirs);
}

std::string_view signature_state_name(SignatureCheck::State s) noexcept {
  switch (s) {
    case SignatureCheck::State::kValid: return "valid, trusted";
    case SignatureCheck::State::kInvalid: return "INVALID";
    case SignatureCheck::State::kUntrusted: return "untrusted key";
  }
  return "?";
}

std::optional<std::string> read_passphrase_file(const std::string &path) {
  if (path.empty()) return std::nullopt;
  const auto fd = open_read(path);
  std::string text(4097, '\0');
  const auto n = read_full(fd.get(), std::span(reinterpret_cast<std::uint8_t *>(text.data()), text.size()), path);
  text.resize(n);
  if (const auto nl = text.find('\n'); nl != std::string::npos) text.resize(nl);
  if (text.size() > 4096) throw UsageError(path + ": passphrase longer than 4096 bytes");
  return text;
}

std::uint32_t resolve_in_package(const Package &pkg, std::string_view path, bool follow) {
  // Component by component, like the kernel: a symlink met in the middle of the path (or at its
  // end, with `follow`) is replaced by its target, relative to the link's directory. Targets that
  // leave the package (absolute, or ".." above the root) are not followed.
  std::vector<std::string> todo;  // remaining components, last first
  auto push_path = [&todo](std::string_view p) {
    std::vector<std::string> parts;
    std::size_t i = 0;
    while (i <= p.size()) {
      const auto slash = std::min(p.find('/', i), p.size());
      if (slash > i) parts.emplace_back(p.substr(i, slash - i));
      i = slash + 1;
    }
    todo.insert(todo.end(), parts.rbegin(), parts.rend());
  };
  push_path(path);
  std::uint32_t cur = 0;
  int hops = 0;
  while (!todo.empty()) {
    const std::string part = std::move(todo.back());
    todo.pop_back();
    if (part == ".") continue;
    if (part == "..") {
      if (cur == 0) throw NotFoundError(fmt::format("{}: path leaves the package", path));
      cur = pkg.inode(cur).parent;
      continue;
    }
    const auto next = pkg.lookup(cur, part);
    if (!next) throw NotFoundError(fmt::format("{}: no such path in {}", path, pkg.path()));
    const bool last = todo.empty();
    if (pkg.type(*next) == format::NodeType::kSymlink && (!last || follow)) {
      if (++hops > 40) throw NotFoundError(fmt::format("{}: too many levels of symbolic links", path));
      const auto target = pkg.symlink_target(*next);
      if (target.starts_with('/'))
        throw NotFoundError(fmt::format("{}: symlink to absolute path {} leaves the package", path, target));
      push_path(target);  // resolved from `cur`, the link's directory
      continue;
    }
    cur = *next;
  }
  return cur;
}

}  // namespace torshpkg::cli
