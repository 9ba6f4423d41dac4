// torshpkg cache ls|gc|clear [--cache-dir DIR]: the shared chunk store (chunk_store.hpp).
#include <sys/stat.h>

#include <fmt/format.h>
#include <cerrno>
#include <cstdlib>
#include <ctime>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "torshpkg/chunk_store.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/sizes.hpp"

namespace torshpkg::cli {

namespace {

constexpr const char *kCacheDirEnv = "TORSHPKG_CACHE_DIR";

// --cache-dir, else $TORSHPKG_CACHE_DIR, else the default.
std::string cache_dir(const std::string &given) {
  if (!given.empty()) return given;
  if (const char *e = std::getenv(kCacheDirEnv); e && *e) return e;
  return kDefaultChunkStoreDir;
}

// False when DIR does not exist (nothing cached); throws IoError when it cannot be looked at.
bool exists(const std::string &dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) return true;
  if (errno == ENOENT) return false;
  throw_errno("stat", dir);
}

std::string utc_iso(std::int64_t sec) {
  const auto t = static_cast<std::time_t>(sec);
  std::tm tm{};
  if (!::gmtime_r(&t, &tm)) return std::to_string(sec);
  char buf[32];
  if (std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) return std::to_string(sec);
  return buf;
}

std::string chunks_word(std::uint64_t n) {
  return n == 1 ? "chunk" : "chunks";
}

int run_ls(const std::string &dir, bool json) {
  std::vector<ChunkStore::Entry> entries;
  if (exists(dir + "/chunks")) {  // made by the first daemon that caches: nothing is made here
    const ChunkStore store(dir, kDefaultChunkStoreBytes);
    if (!store.usable()) throw IoError(store.warning(), EIO);
    entries = store.list();
  }
  std::uint64_t total = 0;
  for (const auto &e : entries) total = total > UINT64_MAX - e.size ? UINT64_MAX : total + e.size;
  if (json) {
    nlohmann::ordered_json j;
    j["dir"] = dir;
    auto arr = nlohmann::ordered_json::array();
    for (const auto &e : entries)
      arr.push_back({{"sha256", to_hex(e.digest)}, {"size", e.size}, {"last_used", utc_iso(e.last_used)}});
    j["entries"] = std::move(arr);
    j["total_bytes"] = total;
    fmt::print("{}\n", j.dump(2));
    return kOk;
  }
  for (const auto &e : entries)
    fmt::print("{}  {:>10}  {}\n", to_hex(e.digest), human_bytes(e.size), utc_iso(e.last_used));
  fmt::print("{} {}, {} in {} (limit {})\n", entries.size(), chunks_word(entries.size()), human_bytes(total), dir,
             human_bytes(kDefaultChunkStoreBytes));
  return kOk;
}

int run_gc(const std::string &dir, std::uint64_t max_bytes, bool everything) {
  ChunkStore::GcResult r;
  if (exists(dir + "/chunks")) {
    ChunkStore store(dir, max_bytes);
    if (!store.usable()) throw IoError(store.warning(), EIO);
    r = everything ? store.clear() : store.gc(max_bytes);
  }
  if (everything)
    fmt::print("removed {} {} ({}) from {}\n", r.removed_entries, chunks_word(r.removed_entries),
               human_bytes(r.removed_bytes), dir);
  else
    fmt::print("removed {} {} ({}), kept {} ({}) in {} (limit {})\n", r.removed_entries, chunks_word(r.removed_entries),
               human_bytes(r.removed_bytes), r.kept_entries, human_bytes(r.kept_bytes), dir, human_bytes(max_bytes));
  return kOk;
}

}  // namespace

void add_cache(CLI::App &app, Action &action) {
  struct Args {
    std::string dir, max_size;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  const std::string dir_help =
      fmt::format("Cache directory (default ${}, else {})", kCacheDirEnv, kDefaultChunkStoreDir);
  auto *cmd = app.add_subcommand("cache", "List, collect or clear the shared chunk cache of mount.torshpkg");
  cmd->require_subcommand(1);

  auto *ls = cmd->add_subcommand("ls", "List cached chunks, least recently used first");
  ls->add_option("--cache-dir", a->dir, dir_help);
  ls->add_flag("--json", a->json, "Print JSON");
  ls->callback([&action, a] { action = [a]() -> int { return run_ls(cache_dir(a->dir), a->json); }; });

  auto *gc = cmd->add_subcommand("gc", "Remove least recently used chunks until the cache fits a size");
  gc->add_option("--cache-dir", a->dir, dir_help);
  gc->add_option("--max-size", a->max_size,
                 fmt::format("Keep at most this much, like 512M or 16G (default {}G)", kDefaultChunkStoreBytes >> 30));
  gc->callback([&action, a] {
    action = [a]() -> int {
      const std::uint64_t max = a->max_size.empty() ? kDefaultChunkStoreBytes : parse_size("--max-size", a->max_size);
      return run_gc(cache_dir(a->dir), max, false);
    };
  });

  auto *clear = cmd->add_subcommand("clear", "Remove every cached chunk");
  clear->add_option("--cache-dir", a->dir, dir_help);
  clear->callback([&action, a] { action = [a]() -> int { return run_gc(cache_dir(a->dir), 0, true); }; });
}

}  // namespace torshpkg::cli
