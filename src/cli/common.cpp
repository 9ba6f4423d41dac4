// Helpers shared by the subcommands.
#include <sys/ioctl.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <numeric>

#include "cli.hpp"
#include "torshpkg/chunk_store.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"

namespace torshpkg::cli {

bool stderr_is_tty() {
  return ::isatty(STDERR_FILENO) == 1;
}

std::string human_bytes(std::uint64_t n) {
  static constexpr const char *kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 5) v /= 1024, ++u;
  return u == 0 ? fmt::format("{} B", n) : fmt::format("{:.1f} {}", v, kUnits[u]);
}

std::string human_count(std::uint64_t n) {
  static constexpr const char *kUnits[] = {"", "K", "M", "B", "T"};
  if (n < 1000) return fmt::format("{}", n);
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 999.95 && u < 4) v /= 1000, ++u;
  return fmt::format("{:.1f}{}", v, kUnits[u]);
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  // Three rows of the optimal string alignment table: a swap of neighbours counts as one edit.
  std::vector<std::size_t> prev2(b.size() + 1), prev(b.size() + 1), cur(b.size() + 1);
  std::iota(prev.begin(), prev.end(), std::size_t{0});
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) cur[j] = std::min(cur[j], prev2[j - 2] + 1);
    }
    std::swap(prev2, prev);
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string closest_match(std::string_view word, const std::vector<std::string> &candidates) {
  // Dashes carry no information ("--jsn" vs "--json"); a third of the letters may be wrong.
  const auto bare = [](std::string_view s) { return s.substr(std::min(s.find_first_not_of('-'), s.size())); };
  const auto w = bare(word);
  if (w.size() < 3) return {};  // "-x" is one letter from almost every short option
  std::string best;
  std::size_t best_d = std::max<std::size_t>(1, w.size() / 3) + 1;
  std::vector<std::string> prefixed;
  for (const auto &c : candidates) {
    const auto d = edit_distance(w, bare(c));
    if (d < best_d) best = c, best_d = d;
    if (w.size() >= 2 && bare(c).starts_with(w)) prefixed.push_back(c);
  }
  if (best.empty() && prefixed.size() == 1) return prefixed[0];  // "insp": an abbreviation
  return best;
}

static double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::size_t stderr_columns() {
  winsize ws{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

static std::string human_duration(double s) {
  const auto t = static_cast<std::uint64_t>(std::llround(std::max(0.0, s)));
  if (t < 60) return fmt::format("{}s", t);
  if (t < 3600) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}h{:02}m", t / 3600, t / 60 % 60);
}

std::string progress_line(std::string_view label, std::uint64_t done, std::uint64_t total, double elapsed, bool eta,
                          std::size_t width) {
  done = std::min(done, total);
  const double frac = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0;
  // Fixed-width fields, so that the bar keeps its length from one frame to the next; the least
  // important go first when the terminal is narrow: the rate, then the sizes, then the ETA.
  std::string eta_s;
  if (eta && rate > 0 && done < total) eta_s = "ETA " + human_duration(static_cast<double>(total - done) / rate);
  std::vector<std::string> fields = {
      fmt::format("{:3.0f}%", frac * 100), fmt::format("{:>10}/{}", human_bytes(done), human_bytes(total)),
      fmt::format("{:>10}", eta_s),  // blank until the rate means something
      fmt::format("{:>10}/s", rate > 0 ? human_bytes(static_cast<std::uint64_t>(rate)) : "-")};
  const auto joined = [&fields] {
    std::string out;
    for (const auto &f : fields)
      if (!f.empty()) out += (out.empty() ? "" : " ") + f;
    return out;
  };
  constexpr std::size_t kMinBar = 10, kMaxBar = 60;
  constexpr std::size_t kDropOrder[] = {3, 1, 2};
  for (std::size_t dropped = 0;; ++dropped) {
    const std::string tail = joined();
    const std::size_t fixed = label.size() + 4 + tail.size();  // "LABEL [" ... "] " TAIL
    if (fixed + kMinBar <= width) {
      const std::size_t w = std::min(kMaxBar, width - fixed);
      const auto filled = static_cast<std::size_t>(frac * static_cast<double>(w));
      std::string bar(filled, '=');
      if (filled < w) bar += '>';
      bar.resize(w, ' ');
      return fmt::format("{} [{}] {}", label, bar, tail);
    }
    if (dropped == std::size(kDropOrder)) break;
    fields[kDropOrder[dropped]].clear();
  }
  std::string line = fmt::format("{} {}", label, joined());
  if (line.size() > width) line.resize(width);
  return line;
}

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)), enabled_(stderr_is_tty()), start_(now_seconds()) {}
ProgressBar::~ProgressBar() {
  if (drawn_) std::fputs("\n", stderr);
}

void ProgressBar::update(std::uint64_t done, std::uint64_t total) {
  if (!enabled_) return;
  const double now = now_seconds();
  const bool complete = done >= total;
  // A redraw costs a write to the terminal: 10 a second look continuous; the last one always counts.
  if (drawn_ && now - last_draw_ < 0.1 && !complete) return;
  const double elapsed = now - start_;
  const double frac = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  // Before 1 s or 2%, the rate is mostly start-up cost: an ETA from it would be wild.
  const bool eta = elapsed >= 1.0 || frac >= 0.02;
  const auto cols = stderr_columns();
  const std::string line = progress_line(label_, done, total, elapsed, eta, cols > 1 ? cols - 1 : cols);
  std::fprintf(stderr, "\r%s\033[K", line.c_str());  // one column spare: no wrap at the margin
  std::fflush(stderr);
  drawn_ = true;
  last_draw_ = now;
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
  cmd->add_option(
         "--cache-dir", args.cache_dir,
         fmt::format("Shared disk chunk cache (default $TORSHPKG_CACHE_DIR or {}; none: off)", kDefaultChunkStoreDir))
      ->group(g);
  cmd->add_option("--s3-endpoint", args.s3_endpoint,
                  "s3://: an S3-compatible store (default $AWS_ENDPOINT_URL, else AWS)")
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

void add_key_options(CLI::App *cmd, KeyArgs &args) {
  auto *g = "Encrypted packages";
  cmd->add_option("--key", args.keys, "X25519 private key from `torshpkg keygen --encryption` (repeatable)")
      ->allow_extra_args(false)
      ->group(g);
  cmd->add_option("--passphrase-file", args.passphrase_file,
                  "The package's passphrase: the first line of this file (default: asked on a terminal)")
      ->group(g);
}

std::shared_ptr<const KeyRing> load_keys(const KeyArgs &args) {
  auto ring = std::make_shared<KeyRing>();
  for (const auto &k : args.keys) ring->identities.push_back(PrivateKey::load(k, std::nullopt, KeyType::kX25519));
  if (auto p = read_passphrase_file(args.passphrase_file)) ring->passphrases.push_back(std::move(*p));
  ring->ask = ring->identities.empty() && ring->passphrases.empty();
  return ring;
}

OpenOptions open_options(const std::string &location, const RemoteArgs &args, const KeyArgs &keys) {
  auto o = open_options(location, args);
  o.keys = load_keys(keys);
  return o;
}

LoadedTrust load_trust(const TrustArgs &args) {
  return load_trust_store(args.pubkeys, args.dirs);
}

std::string_view signature_state_name(SignatureCheck::State s) noexcept {
  switch (s) {
    case SignatureCheck::State::kValid: return "valid, trusted";
    case SignatureCheck::State::kInvalid: return "INVALID";
    case SignatureCheck::State::kUntrusted: return "untrusted key";
  }
  return "?";
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
