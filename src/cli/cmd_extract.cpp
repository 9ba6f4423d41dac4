// torshpkg extract FILE DIR: restores the tree under DIR; never writes outside it.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/open.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/reader.hpp"

namespace torshpkg::cli {

namespace {

// Every entry is created relative to its parent's directory fd with O_NOFOLLOW/O_EXCL, and names
// were validated at load (no '/', no '..'), so nothing in the package can steer a write outside DIR.
class Extractor {
 public:
  Extractor(Reader &r, std::string dest) : reader_(r), pkg_(r.package()), dest_(std::move(dest)) {}

  void run() {
    if (::mkdir(dest_.c_str(), 0700) == 0)
      created_root_ = true;
    else if (errno != EEXIST)
      throw_errno("create directory", dest_);
    std::uint64_t total = 0;
    for (std::uint32_t i = 0; i < pkg_.inode_count(); ++i)
      if (pkg_.type(i) == format::NodeType::kRegular) total += pkg_.inode(i).size;
    ProgressBar bar("extracting");
    root_ = UniqueFd(::open(dest_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root_) throw_errno("open directory", dest_);
    std::uint64_t done = 0;
    // Parents precede children (BFS order), so one pass creates everything.
    for (std::uint32_t i = 1; i < pkg_.inode_count(); ++i) {
      const auto e = pkg_.inode(i);
      const int parent = dir_fd(e.parent);
      const std::string name(pkg_.name(i));
      const std::string shown = dest_ + "/" + pkg_.path_of(i);
      switch (pkg_.type(i)) {
        case format::NodeType::kDirectory: {
          if (::mkdirat(parent, name.c_str(), 0700) != 0) throw_errno("create directory", shown);
          break;
        }
        case format::NodeType::kSymlink:
          if (::symlinkat(std::string(pkg_.symlink_target(i)).c_str(), parent, name.c_str()) != 0)
            throw_errno("create symlink", shown);
          set_mtime(parent, name, e, shown);
          break;
        case format::NodeType::kRegular: {
          UniqueFd fd(::openat(parent, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
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
    for (std::uint32_t i = pkg_.inode_count(); i-- > 0;) {
      if (pkg_.type(i) != format::NodeType::kDirectory) continue;
      if (i == 0 && !created_root_) continue;  // an existing DIR keeps its own mode and times
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
  static void set_mtime(int dirfd, const std::string &name, const format::InodeEntry &e, const std::string &shown) {
    const timespec ts[2] = {{e.mtime_sec, static_cast<long>(e.mtime_nsec)}, {e.mtime_sec, static_cast<long>(e.mtime_nsec)}};
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
  UniqueFd root_;
  bool created_root_ = false;
  UniqueFd cached_fd_;
  std::uint32_t cached_ino_ = 0;
};

}  // namespace

void add_extract(CLI::App &app, Action &action) {
  auto file = std::make_shared<std::string>();
  auto dest = std::make_shared<std::string>();
  auto remote = std::make_shared<RemoteArgs>();
  auto *cmd = app.add_subcommand("extract", "Extract a package into a directory (new or empty)");
  cmd->add_option("FILE", *file, "Package")->required();
  cmd->add_option("DIR", *dest, "Destination directory; existing files are never overwritten")->required();
  add_remote_options(cmd, *remote);
  cmd->callback([&action, file, dest, remote] {
    action = [file, dest, remote]() -> int {
      Reader reader(open_package(*file, open_options(*file, *remote)), 64ull << 20);
      if (reader.package().source().remote()) reader.start_workers(kRemoteFetchers);  // requests in flight ahead
      Extractor(reader, *dest).run();
      return kOk;
    };
  });
}

}  // namespace torshpkg::cli
