// torshpkg extract FILE DIR [PATH...]: restores the tree (or parts of it) under DIR; never writes
// outside it.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/open.hpp"
#include "torshpkg/reader.hpp"

namespace torshpkg::cli {

namespace {

// Every entry is created relative to its parent's directory fd with O_NOFOLLOW/O_EXCL, and names
// were validated at load (no '/', no '..'), so nothing in the package can steer a write outside DIR.
class Extractor {
 public:
  Extractor(Reader &r, std::string dest, bool force)
      : reader_(r),
        pkg_(r.package()),
        dest_(std::move(dest)),
        force_(force),
        want_(pkg_.inode_count(), true),
        created_(pkg_.inode_count(), false) {}

  // Only these package paths (files or whole directories) and the directories that lead to them.
  void select(const std::vector<std::string> &paths) {
    if (paths.empty()) return;
    std::vector<bool> chosen(pkg_.inode_count(), false);
    for (const auto &p : paths) chosen[resolve_in_package(pkg_, p, false)] = true;  // NotFoundError
    // Inside a chosen subtree: everything below a chosen directory.
    std::vector<bool> below(pkg_.inode_count(), false);
    for (std::uint32_t i = 0; i < pkg_.inode_count(); ++i)
      below[i] = chosen[i] || (i != 0 && below[pkg_.inode(i).parent]);  // parents precede children
    want_ = below;
    for (std::uint32_t i = 0; i < pkg_.inode_count(); ++i)
      if (chosen[i])
        for (std::uint32_t a = i; a != 0; a = pkg_.inode(a).parent) want_[pkg_.inode(a).parent] = true;
  }

  void run() {
    if (::mkdir(dest_.c_str(), 0700) == 0)
      created_root_ = true;
    else if (errno != EEXIST)
      throw_errno("create directory", dest_);
    root_ = UniqueFd(::open(dest_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root_) throw_errno("open directory", dest_);
    refuse_conflicts();
    std::uint64_t total = 0;
    for (std::uint32_t i = 0; i < pkg_.inode_count(); ++i)
      if (want_[i] && pkg_.type(i) == format::NodeType::kRegular) total += pkg_.inode(i).size;
    ProgressBar bar("extracting");
    std::uint64_t done = 0;
    // Parents precede children (BFS order), so one pass creates everything.
    for (std::uint32_t i = 1; i < pkg_.inode_count(); ++i) {
      if (!want_[i]) continue;
      const auto e = pkg_.inode(i);
      const int parent = dir_fd(e.parent);
      const std::string name(pkg_.name(i));
      const std::string shown = dest_ + "/" + pkg_.path_of(i);
      switch (pkg_.type(i)) {
        case format::NodeType::kDirectory: {
          if (::mkdirat(parent, name.c_str(), 0700) == 0) {
            created_[i] = true;
            break;
          }
          if (errno != EEXIST) throw_errno("create directory", shown);
          struct stat st {};
          if (::fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode))
            break;  // merged into, like an existing DIR: keeps its own mode and times
          if (!force_) throw_errno("create directory", shown, EEXIST);
          replace(parent, name, shown);
          if (::mkdirat(parent, name.c_str(), 0700) != 0) throw_errno("create directory", shown);
          created_[i] = true;
          break;
        }
        case format::NodeType::kSymlink: {
          const std::string target(pkg_.symlink_target(i));
          if (::symlinkat(target.c_str(), parent, name.c_str()) != 0) {
            if (errno != EEXIST || !force_) throw_errno("create symlink", shown);
            replace(parent, name, shown);
            if (::symlinkat(target.c_str(), parent, name.c_str()) != 0) throw_errno("create symlink", shown);
          }
          set_mtime(parent, name, e, shown);
          break;
        }
        case format::NodeType::kRegular: {
          constexpr int kFlags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
          UniqueFd fd(::openat(parent, name.c_str(), kFlags, 0600));
          if (!fd && errno == EEXIST && force_) {
            replace(parent, name, shown);  // a new inode: other hard links to the old file keep it
            fd = UniqueFd(::openat(parent, name.c_str(), kFlags, 0600));
          }
          if (!fd) throw_errno("create", shown);
          for (std::uint64_t off = 0; off < e.size; off += pkg_.chunk_size()) {
            reader_.prefetch(i, (off >> pkg_.chunk_shift()) + 1, kRemoteFetchers);  // no-op without workers
            for (const auto &s : reader_.slices(i, off, pkg_.chunk_size())) {
              write_all(fd.get(), std::span(s.chunk->data() + s.offset, s.length), shown);
              done += s.length;
            }
            bar.update(done, total);
          }
          if (::fchmod(fd.get(), e.mode & 0777) != 0) throw_errno("chmod", shown);
          const timespec ts[2] = {{e.mtime_sec, static_cast<long>(e.mtime_nsec)},
                                  {e.mtime_sec, static_cast<long>(e.mtime_nsec)}};
          if (::futimens(fd.get(), ts) != 0) throw_errno("set times of", shown);
          break;
        }
      }
    }
    // Directories last, deepest first, so their permissions and mtimes survive the writes inside them.
    created_[0] = created_root_;  // an existing DIR keeps its own mode and times
    for (std::uint32_t i = pkg_.inode_count(); i-- > 0;) {
      if (!created_[i] || pkg_.type(i) != format::NodeType::kDirectory) continue;
      const auto e = pkg_.inode(i);
      const std::string shown = dest_ + "/" + pkg_.path_of(i);
      const int fd = dir_fd(i);
      if (::fchmod(fd, e.mode & 0777) != 0) throw_errno("chmod", shown);
      const timespec ts[2] = {{e.mtime_sec, static_cast<long>(e.mtime_nsec)},
                              {e.mtime_sec, static_cast<long>(e.mtime_nsec)}};
      if (::futimens(fd, ts) != 0) throw_errno("set times of", shown);
    }
    bar.finish();
  }

 private:
  // Before anything is written: names that exist already are refused (unless --force), so that a
  // refusal leaves DIR as it was. A directory is never replaced by a file, even with --force.
  // (The lstat here may pass through a symlink in DIR; the writes never do, see dir_fd.)
  void refuse_conflicts() const {
    std::string first;
    std::size_t n = 0;
    for (std::uint32_t i = 1; i < pkg_.inode_count(); ++i) {
      if (!want_[i]) continue;
      const std::string rel = pkg_.path_of(i);
      struct stat st {};
      if (::fstatat(root_.get(), rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) continue;
        throw_errno("stat", dest_ + "/" + rel);
      }
      const bool pkg_dir = pkg_.type(i) == format::NodeType::kDirectory;
      if (pkg_dir && S_ISDIR(st.st_mode)) continue;  // merged
      if (force_ && S_ISDIR(st.st_mode))
        throw UsageError(fmt::format("{}/{} is a directory: not replaced by a {}, even with --force", dest_, rel,
                                     pkg_.type(i) == format::NodeType::kSymlink ? "symlink" : "file"));
      if (force_) continue;
      if (n++ == 0) first = dest_ + "/" + rel;
    }
    if (n)
      throw UsageError(fmt::format("{} exists{}: not overwritten (extract --force replaces existing files)", first,
                                   n > 1 ? fmt::format(" (and {} more)", n - 1) : ""));
  }

  static void replace(int dirfd, const std::string &name, const std::string &shown) {
    if (::unlinkat(dirfd, name.c_str(), 0) != 0) throw_errno("remove", shown);  // EISDIR for a directory
  }

  static void set_mtime(int dirfd, const std::string &name, const format::InodeEntry &e, const std::string &shown) {
    const timespec ts[2] = {{e.mtime_sec, static_cast<long>(e.mtime_nsec)},
                            {e.mtime_sec, static_cast<long>(e.mtime_nsec)}};
    if (::utimensat(dirfd, name.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0) throw_errno("set times of", shown);
  }

  // An fd for directory `ino` under DIR, opened component by component with O_NOFOLLOW. Siblings are
  // consecutive inodes, so caching the last one answers nearly every call without holding many fds.
  int dir_fd(std::uint32_t ino) {
    if (ino == 0) return root_.get();
    if (ino == cached_ino_ && cached_fd_) return cached_fd_.get();
    std::vector<std::uint32_t> chain;
    for (std::uint32_t i = ino; i != 0; i = pkg_.inode(i).parent) chain.push_back(i);
    UniqueFd cur;
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      const int at = cur ? cur.get() : root_.get();
      UniqueFd next(::openat(at, std::string(pkg_.name(*it)).c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!next) throw_errno("open directory", dest_ + "/" + pkg_.path_of(*it));
      cur = std::move(next);
    }
    cached_fd_ = std::move(cur);
    cached_ino_ = ino;
    return cached_fd_.get();
  }

  Reader &reader_;
  const Package &pkg_;
  std::string dest_;
  bool force_;
  std::vector<bool> want_;     // inodes to extract
  std::vector<bool> created_;  // directories made here (their mode and times are then set)
  UniqueFd root_;
  bool created_root_ = false;
  UniqueFd cached_fd_;
  std::uint32_t cached_ino_ = 0;
};

}  // namespace

void add_extract(CLI::App &app, Action &action) {
  struct Args {
    std::string file, dest;
    std::vector<std::string> paths;
    bool force = false;
    RemoteArgs remote;
    KeyArgs keys;
  };
  auto a = std::make_shared<Args>();
  auto *cmd =
      app.add_subcommand("extract", "Extract a package, or some of its files and directories, into a directory");
  cmd->add_option("FILE", a->file, "Package")->required();
  cmd->add_option("DIR", a->dest, "Destination directory (created if missing)")->required();
  cmd->add_option("PATH", a->paths, "Extract only these files or directories (with the directories above them)");
  cmd->add_flag("--force", a->force, "Replace existing files and symlinks (never a directory)");
  add_remote_options(cmd, a->remote);
  add_key_options(cmd, a->keys);
  cmd->callback([&action, a] {
    action = [a]() -> int {
      Reader reader(open_package(a->file, open_options(a->file, a->remote, a->keys)), 64ull << 20);
      if (reader.package().source().remote()) reader.start_workers(kRemoteFetchers);  // requests in flight ahead
      Extractor x(reader, a->dest, a->force);
      x.select(a->paths);
      x.run();
      return kOk;
    };
  });
}

}  // namespace torshpkg::cli
