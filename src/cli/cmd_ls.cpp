// torshpkg ls FILE [PATH] [-l] [-R]
#include <sys/stat.h>

#include <fmt/format.h>
#include <ctime>

#include "cli.hpp"
#include "torshpkg/open.hpp"
#include "torshpkg/package.hpp"

namespace torshpkg::cli {

namespace {

std::string mode_string(std::uint32_t mode) {
  std::string s = S_ISDIR(mode) ? "d" : S_ISLNK(mode) ? "l" : "-";
  for (int shift = 6; shift >= 0; shift -= 3) {
    s += (mode >> shift) & 4 ? 'r' : '-';
    s += (mode >> shift) & 2 ? 'w' : '-';
    s += (mode >> shift) & 1 ? 'x' : '-';
  }
  return s;
}

void print_entry(const Package &pkg, std::uint32_t ino, const std::string &shown, bool long_format) {
  if (!long_format) {
    fmt::print("{}\n", shown);
    return;
  }
  const auto e = pkg.inode(ino);
  std::tm tm{};
  const std::time_t t = e.mtime_sec;
  ::localtime_r(&t, &tm);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm);
  const bool is_dir = pkg.type(ino) == format::NodeType::kDirectory;
  // Stored bytes, their ratio to the file's and the kind: only a regular file has them.
  std::string stored = "-", ratio = "-", kind = "-";
  if (pkg.type(ino) == format::NodeType::kRegular) {
    const auto st = pkg.stored_size(ino);
    stored = fmt::format("{}", st);
    if (e.size) ratio = fmt::format("{:.3f}", static_cast<double>(st) / static_cast<double>(e.size));
    kind = format::kind_name(e.kind);
  }
  fmt::print("{} {:>14} {:>14} {:>6} {:<9} {} {}", mode_string(e.mode), is_dir ? 0 : e.size, stored, ratio, kind, when,
             shown);
  if (pkg.type(ino) == format::NodeType::kSymlink) fmt::print(" -> {}", pkg.symlink_target(ino));
  fmt::print("\n");
}

void list(const Package &pkg, std::uint32_t dir, const std::string &prefix, bool long_format, bool recursive) {
  const auto e = pkg.inode(dir);
  for (std::uint64_t k = 0; k < e.size; ++k) {
    const auto child = static_cast<std::uint32_t>(e.first + k);
    const std::string shown = prefix + std::string(pkg.name(child));
    print_entry(pkg, child, shown, long_format);
    if (recursive && pkg.type(child) == format::NodeType::kDirectory)
      list(pkg, child, shown + "/", long_format, recursive);
  }
}

}  // namespace

void add_ls(CLI::App &app, Action &action) {
  struct Args {
    std::string file, path;
    bool long_format = false, recursive = false;
    RemoteArgs remote;
    KeyArgs keys;
  };
  auto a = std::make_shared<Args>();
  auto *cmd = app.add_subcommand("ls", "List a directory of a package (default: its root)");
  cmd->add_option("FILE", a->file, "Package")->required();
  cmd->add_option("PATH", a->path, "Path inside the package");
  cmd->add_flag("-l", a->long_format, "Long format: mode, size, stored size, ratio, kind, mtime, link target");
  cmd->add_flag("-R,--recursive", a->recursive, "List subdirectories recursively");
  add_remote_options(cmd, a->remote);
  add_key_options(cmd, a->keys);
  cmd->callback([&action, a] {
    action = [a]() -> int {
      auto opts = open_options(a->file, a->remote, a->keys);
      opts.locked = Package::Locked::kAllowed;  // public names list without a key
      const auto pkg = open_package(a->file, opts);
      if (pkg->names_hidden()) pkg->require_key();
      const auto ino = resolve_in_package(*pkg, a->path, false);
      if (pkg->type(ino) != format::NodeType::kDirectory) {
        print_entry(*pkg, ino, pkg->path_of(ino), a->long_format);
        return kOk;
      }
      std::string prefix = a->recursive ? pkg->path_of(ino) : "";
      if (!prefix.empty()) prefix += '/';
      list(*pkg, ino, prefix, a->long_format, a->recursive);
      return kOk;
    };
  });
}

}  // namespace torshpkg::cli
