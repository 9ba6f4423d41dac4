// Helpers shared by the subcommands.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/errors.hpp"

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

std::uint32_t resolve_in_package(const Package &pkg, std::string_view path, bool follow) {
  std::string current(path);
  for (int hops = 0; hops <= 40; ++hops) {
    const auto ino = pkg.resolve(current);
    if (!ino) throw NotFoundError(fmt::format("{}: no such path in {}", current, pkg.path()));
    if (!follow || pkg.type(*ino) != format::NodeType::kSymlink) return *ino;
    const auto target = pkg.symlink_target(*ino);
    if (target.starts_with('/'))
      throw NotFoundError(fmt::format("{}: symlink to absolute path {} leaves the package", current, target));
    // A relative target is resolved against the link's directory; ".." is applied lexically.
    std::vector<std::string> parts;
    const auto dir = pkg.path_of(pkg.inode(*ino).parent);
    std::string joined = dir.empty() ? std::string(target) : dir + "/" + std::string(target);
    std::size_t i = 0;
    while (i <= joined.size()) {
      const auto slash = std::min(joined.find('/', i), joined.size());
      const auto part = joined.substr(i, slash - i);
      if (part == "..") {
        if (parts.empty()) throw NotFoundError(fmt::format("{}: symlink leaves the package", current));
        parts.pop_back();
      } else if (!part.empty() && part != ".") {
        parts.push_back(part);
      }
      i = slash + 1;
    }
    current.clear();
    for (const auto &p : parts) current += (current.empty() ? "" : "/") + p;
  }
  throw NotFoundError(fmt::format("{}: too many levels of symbolic links", path));
}

}  // namespace torshpkg::cli
