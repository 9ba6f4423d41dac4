// The mounted filesystem: the session object handed to every lowlevel op through fuse userdata.
#pragma once
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "options.hpp"
#include "torshpkg/read_pattern.hpp"
#include "torshpkg/reader.hpp"

namespace torshpkg::mount {

// One package in the tree: the mounted package itself, or a dependency under /.deps (-o deps).
// Its inode i is FUSE inode base + i.
struct Volume {
  Volume(std::shared_ptr<const Package> p, std::uint64_t cache_bytes, fuse_ino_t first_ino, std::string entry_name);
  Volume(const Volume &) = delete;
  Volume &operator=(const Volume &) = delete;
  [[nodiscard]] fuse_ino_t fuse_ino(std::uint32_t i) const noexcept { return base + i; }
  [[nodiscard]] fuse_ino_t end() const noexcept { return base + pkg->inode_count(); }

  std::shared_ptr<const Package> pkg;
  Reader reader;
  fuse_ino_t base;
  std::string name;                    // its directory under /.deps; empty for the mounted package
  std::vector<std::uint32_t> subdirs;  // per directory, for st_nlink
  std::uint64_t readahead_chunks = 0;
  std::uint64_t stream_slack_chunks = 2;  // see ReadPattern
  std::mutex prefetched_mu;
  std::unordered_set<std::uint32_t> prefetched;  // files whose whole-file prefetch was started
};

// A resolved dependency to show under /.deps/NAME.
struct MountedDependency {
  std::string entry_name;
  std::shared_ptr<const Package> pkg;
};

class Filesystem {
 public:
  Filesystem(std::shared_ptr<const Package> pkg, const Options &opts, std::vector<MountedDependency> deps = {});
  [[nodiscard]] static const fuse_lowlevel_ops &operations();

  // Lowlevel-op bodies; exceptions escape to the one mapping in fs.cpp.
  void lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
  void getattr(fuse_req_t req, fuse_ino_t ino);
  void readlink(fuse_req_t req, fuse_ino_t ino);
  void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info *fi);
  void release(fuse_req_t req, fuse_file_info *fi);
  void read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info *fi);
  void opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info *fi);
  void readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus);
  void statfs(fuse_req_t req);
  void getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
  void listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);

  void log_error(const std::string &msg);
  // log_error() plus the audit log's integrity line (audit.hpp), once per distinct failure.
  void log_integrity_failure(const std::string &msg);
  void set_daemonized(bool d) noexcept { daemonized_ = d; }
  // Starts background decoding once the session exists (after fork: threads do not survive it).
  void start(fuse_session *se);
  // Joins background work; call before the session is destroyed.
  void stop();

 private:
  // FUSE inode numbers: the mounted package's inode i is i+1 (its root is FUSE_ROOT_ID); four
  // virtual inodes follow for /.torshpkg, its manifest.json and stats, and /.deps; then each
  // dependency's inodes, its root being /.deps/NAME.
  [[nodiscard]] const Volume &main() const noexcept { return *volumes_.front(); }
  [[nodiscard]] fuse_ino_t meta_dir_ino() const noexcept { return main().end(); }
  [[nodiscard]] fuse_ino_t manifest_ino() const noexcept { return main().end() + 1; }
  [[nodiscard]] fuse_ino_t stats_ino() const noexcept { return main().end() + 2; }
  [[nodiscard]] fuse_ino_t deps_dir_ino() const noexcept { return main().end() + 3; }
  [[nodiscard]] bool has_deps() const noexcept { return volumes_.size() > 1; }
  [[nodiscard]] bool is_virtual_file(fuse_ino_t ino) const noexcept {
    return ino == manifest_ino() || ino == stats_ino();
  }
  [[nodiscard]] bool is_virtual_dir(fuse_ino_t ino) const noexcept {
    return ino == meta_dir_ino() || (ino == deps_dir_ino() && has_deps());
  }
  // The volume and package inode of a FUSE inode; throws NotFoundError for unknown numbers.
  [[nodiscard]] std::pair<Volume *, std::uint32_t> locate(fuse_ino_t ino) const;
  [[nodiscard]] fuse_ino_t parent_of(const Volume &v, std::uint32_t i) const noexcept;
  // .torshpkg/stats: the session's counters as one JSON object, made anew at each open.
  [[nodiscard]] std::string stats_json() const;
  [[nodiscard]] struct stat attr(fuse_ino_t ino) const;
  [[nodiscard]] fuse_entry_param entry(fuse_ino_t ino) const;
  [[nodiscard]] std::vector<std::pair<std::string, std::string>> xattrs(fuse_ino_t ino) const;
  // Per open file: where its reader is, to tell a sequential stream from random access.
  struct OpenFile {
    OpenFile(std::uint64_t readahead_chunks, std::uint64_t slack_chunks) : pattern(readahead_chunks, slack_chunks) {}
    ReadPattern pattern;
    std::mutex mu;
    // The contents of a virtual file as it was opened; shared, because the kernel may release the
    // handle while a reply from it is still being written.
    std::shared_ptr<const std::string> snapshot;
  };
  // Queues decode-ahead for a sequential stream; returns whether this read continued one.
  bool plan_readahead(Volume &v, std::uint32_t ino, OpenFile *of, const std::vector<ChunkSlice> &slices) noexcept;
  // Once a file is read at random: decode all of it into the page cache on the background workers.
  void prefetch_whole_file(Volume &v, std::uint32_t ino) noexcept;
  void sweep(Volume &v, std::uint32_t ino, std::uint64_t k);  // decodes chunk k in the background, then k + workers
  void push_decoded(Volume &v, std::uint32_t ino, const std::vector<ChunkSlice> &slices) noexcept;
  void push_to_page_cache(const Volume &v, std::uint32_t ino, std::uint64_t file_chunk, const ChunkPtr &chunk);
  // -o prefetch: fetches every chosen file into the disk chunk cache (or, without one, into the page
  // cache) on the background workers, a run of adjacent chunks per task.
  void prefetch_files(Volume &v);
  void prefetch_run(Volume &v, std::vector<std::uint32_t> files, std::size_t file, std::uint64_t k);

  std::vector<std::unique_ptr<Volume>> volumes_;  // the mounted package first, then dependencies by name
  Options opts_;
  uid_t uid_;
  gid_t gid_;
  std::mutex log_mu_;
  std::unordered_set<std::string> logged_;
  bool daemonized_ = false;
  fuse_session *se_ = nullptr;
  unsigned workers_ = 1;
  std::atomic<bool> stopping_{false};  // ends whole-file prefetches at unmount
};

}  // namespace torshpkg::mount
