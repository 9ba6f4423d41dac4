// The mounted filesystem: the session object handed to every lowlevel op through fuse userdata.
#pragma once
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>

#include "options.hpp"
#include "torshpkg/read_pattern.hpp"
#include "torshpkg/reader.hpp"

namespace torshpkg::mount {

class Filesystem {
 public:
  Filesystem(std::shared_ptr<const Package> pkg, const Options &opts);
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
  void set_daemonized(bool d) noexcept { daemonized_ = d; }
  // Starts background decoding once the session exists (after fork: threads do not survive it).
  void start(fuse_session *se);
  // Joins background work; call before the session is destroyed.
  void stop();

 private:
  // FUSE inode numbers: package inode i is i+1 (the root is FUSE_ROOT_ID); three virtual inodes
  // follow the package's for the hidden /.torshpkg directory, its manifest.json and its stats.
  [[nodiscard]] fuse_ino_t meta_dir_ino() const noexcept { return pkg_->inode_count() + 1; }
  [[nodiscard]] fuse_ino_t manifest_ino() const noexcept { return pkg_->inode_count() + 2; }
  [[nodiscard]] fuse_ino_t stats_ino() const noexcept { return pkg_->inode_count() + 3; }
  [[nodiscard]] bool is_virtual_file(fuse_ino_t ino) const noexcept { return ino == manifest_ino() || ino == stats_ino(); }
  // .torshpkg/stats: the session's counters as one JSON object, made anew at each open.
  [[nodiscard]] std::string stats_json() const;
  [[nodiscard]] std::uint32_t to_pkg(fuse_ino_t ino) const;  // throws NotFoundError for unknown numbers
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
  bool plan_readahead(std::uint32_t ino, OpenFile *of, const std::vector<ChunkSlice> &slices) noexcept;
  // Once a file is read at random: decode all of it into the page cache on the background workers.
  void prefetch_whole_file(std::uint32_t ino) noexcept;
  void sweep(std::uint32_t ino, std::uint64_t k);  // decodes chunk k in the background, then k + workers
  void push_decoded(std::uint32_t ino, const std::vector<ChunkSlice> &slices) noexcept;
  void push_to_page_cache(std::uint32_t ino, std::uint64_t file_chunk, const ChunkPtr &chunk);
  // -o prefetch: fetches every chosen file into the disk chunk cache (or, without one, into the page
  // cache) on the background workers, a run of adjacent chunks per task.
  void prefetch_files();
  void prefetch_run(std::vector<std::uint32_t> files, std::size_t file, std::uint64_t k);

  std::shared_ptr<const Package> pkg_;
  Reader reader_;
  Options opts_;
  uid_t uid_;
  gid_t gid_;
  std::vector<std::uint32_t> subdirs_;  // per directory, for st_nlink
  std::mutex log_mu_;
  std::unordered_set<std::string> logged_;
  bool daemonized_ = false;
  fuse_session *se_ = nullptr;
  std::uint64_t readahead_chunks_ = 0;
  std::uint64_t stream_slack_chunks_ = 2;  // see ReadPattern
  unsigned workers_ = 1;
  std::atomic<bool> stopping_{false};  // ends whole-file prefetches at unmount
  std::mutex prefetched_mu_;
  std::unordered_set<std::uint32_t> prefetched_;  // files whose whole-file prefetch was started
};

}  // namespace torshpkg::mount
