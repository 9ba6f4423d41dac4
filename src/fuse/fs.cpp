#include "fs.hpp"

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <syslog.h>

#include <unistd.h>
#include "audit.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <optional>
#include <thread>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "torshpkg/chunk_store.hpp"
#include "torshpkg/codec.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg::mount {

namespace {

constexpr double kForever = 365.0 * 24 * 3600;  // content is immutable: cache names and attributes for good
constexpr std::string_view kMetaDir = ".torshpkg";
constexpr std::string_view kManifestName = "manifest.json";
constexpr std::string_view kStatsName = "stats";
constexpr std::string_view kDepsDir = ".deps";

Filesystem &fs_of(fuse_req_t req) {
  return *static_cast<Filesystem *>(fuse_req_userdata(req));
}

// The one place where core exceptions become errno replies.
template <typename F>
void guarded(fuse_req_t req, F &&body) noexcept {
  int err = EIO;
  try {
    body();
    return;
  } catch (const NotFoundError &) {
    err = ENOENT;
  } catch (const IntegrityError &e) {
    fs_of(req).log_integrity_failure(e.what());
    err = EIO;
  } catch (const FormatError &e) {
    fs_of(req).log_error(e.what());
    err = EIO;
  } catch (const IoError &e) {
    fs_of(req).log_error(e.what());
    err = e.errnum ? e.errnum : EIO;
  } catch (const UsageError &) {
    err = EINVAL;
  } catch (const InternalError &e) {
    fs_of(req).log_error(e.what());
    err = EIO;
  } catch (const std::bad_alloc &) {
    err = ENOMEM;
  } catch (const std::exception &e) {
    fs_of(req).log_error(e.what());
    err = EIO;
  } catch (...) {
    err = EIO;
  }
  fuse_reply_err(req, err);
}

}  // namespace

Volume::Volume(std::shared_ptr<const Package> p, std::uint64_t cache_bytes, fuse_ino_t first_ino,
               std::string entry_name)
    : pkg(std::move(p)),
      reader(pkg, cache_bytes),
      base(first_ino),
      name(std::move(entry_name)),
      subdirs(pkg->inode_count(), 0) {
  for (std::uint32_t i = 1; i < pkg->inode_count(); ++i)
    if (pkg->type(i) == format::NodeType::kDirectory) ++subdirs[pkg->inode(i).parent];
}

Filesystem::Filesystem(std::shared_ptr<const Package> pkg, const Options &opts, std::vector<MountedDependency> deps)
    : opts_(opts), uid_(opts.uid.value_or(::getuid())), gid_(opts.gid.value_or(::getgid())) {
  // Each package gets the cache its kind of source needs (remote fetches wait in it).
  const auto add_volume = [&](std::shared_ptr<const Package> p, fuse_ino_t first_ino, std::string name) {
    const auto budget = cache_bytes_for(opts, p->source().remote());
    volumes_.push_back(std::make_unique<Volume>(std::move(p), budget, first_ino, std::move(name)));
  };
  add_volume(std::move(pkg), FUSE_ROOT_ID, std::string());
  std::sort(deps.begin(), deps.end(), [](const auto &x, const auto &y) { return x.entry_name < y.entry_name; });
  fuse_ino_t next = deps_dir_ino() + 1;
  for (auto &d : deps) {
    if (d.entry_name.empty() || d.entry_name == "." || d.entry_name == ".." ||
        d.entry_name.find('/') != std::string::npos || d.entry_name.size() > format::kMaxNameLength)
      throw UsageError(fmt::format("'{}' cannot be a directory name under /.deps", d.entry_name));
    if (volumes_.size() > 1 && volumes_.back()->name == d.entry_name)
      throw UsageError(fmt::format("two dependencies named '{}' under /.deps", d.entry_name));
    add_volume(std::move(d.pkg), next, d.entry_name);
    next = volumes_.back()->end();
  }
  if (has_deps() && main().pkg->lookup(0, kDepsDir))
    throw UsageError(
        fmt::format("{} has a /{} of its own: it cannot be mounted with -o deps", main().pkg->path(), kDepsDir));
}

void Filesystem::stop() {
  stopping_ = true;
  for (auto &v : volumes_) v->reader.stop_workers();
}

void Filesystem::start(fuse_session *se) {
  se_ = se;
  // Remote chunks wait on the network more than on a core: more workers, more requests in flight.
  const unsigned default_workers =
      main().pkg->source().remote() ? 8u : std::max(1u, std::thread::hardware_concurrency());
  workers_ = opts_.workers ? opts_.workers : default_workers;
  for (auto &v : volumes_) {
    const auto chunk = v->pkg->chunk_size();
    // Decoded-ahead chunks wait in the cache for their reader: at most half of it, or they would
    // evict one another before they are read.
    v->readahead_chunks =
        std::min(readahead_bytes_for(opts_, v->pkg->source().remote()), v->reader.cache().budget() / 2) / chunk;
    // Each FUSE thread may hold one read request (at most 1 MiB) of a sequential stream out of order.
    v->stream_slack_chunks =
        std::max<std::uint64_t>(2, std::uint64_t{opts_.threads} * std::max<std::uint64_t>(1, (1u << 20) / chunk));
    v->reader.start_workers(workers_);
    if (v->pkg->source().remote() && opts_.prefetch != Options::Prefetch::kNone) prefetch_files(*v);
  }
}

void Filesystem::prefetch_files(Volume &v) {
  std::vector<std::uint32_t> files;
  const auto &pkg = *v.pkg;
  for (std::uint32_t i = 0; i < pkg.inode_count(); ++i) {
    if (pkg.type(i) != format::NodeType::kRegular || pkg.chunks_in_file(i) == 0) continue;
    if (opts_.prefetch == Options::Prefetch::kManifest && pkg.inode(i).kind == format::FileKind::kWeights) continue;
    files.push_back(i);
  }
  if (!files.empty()) prefetch_run(v, std::move(files), 0, 0);
}

void Filesystem::prefetch_run(Volume &v, std::vector<std::uint32_t> files, std::size_t file, std::uint64_t k) {
  // One task fetches one run of adjacent chunks and queues the next: readers' own fetches and
  // decode-ahead interleave with a long prefetch instead of waiting behind it.
  v.reader.run_in_background([this, &v, files = std::move(files), file, k]() mutable {
    if (stopping_.load(std::memory_order_relaxed)) return;
    const auto &pkg = *v.pkg;
    const std::uint32_t ino = files[file];
    const std::uint64_t chunks = pkg.chunks_in_file(ino);
    const std::uint64_t index = pkg.inode(ino).first + k;
    const std::uint64_t run =
        std::max<std::uint64_t>(1, pkg.adjacent_run(index, chunks - k, pkg.source().coalesce_bytes()));
    if (pkg.store())
      pkg.fetch_into_store(index, run);
    else
      for (std::uint64_t j = 0; j < run; ++j)
        if (auto c = v.reader.decode_ahead(ino, k + j); c && opts_.push_to_page_cache)
          push_to_page_cache(v, ino, k + j, c);
    k += run;
    if (k >= chunks) ++file, k = 0;
    if (file < files.size()) prefetch_run(v, std::move(files), file, k);
  });
}

void Filesystem::push_to_page_cache(const Volume &v, std::uint32_t ino, std::uint64_t file_chunk,
                                    const ChunkPtr &chunk) {
  // For random readers: neighbouring reads of this chunk then never reach the daemon, as with a
  // kernel filesystem. Sequential streams are not pushed: the kernel's own read-ahead asks for those
  // pages anyway, and pushing them cost 1.5 CPU-s per GiB more (docs/PERFORMANCE.md).
  // Failure is harmless (e.g. ENOENT when the kernel has forgotten the inode): reads still work.
  fuse_bufvec bufv{};  // FUSE_BUFVEC_INIT is a C compound literal
  bufv.count = 1;
  bufv.buf[0].size = chunk->size();
  bufv.buf[0].fd = -1;
  bufv.buf[0].mem = const_cast<std::uint8_t *>(chunk->data());
  (void)fuse_lowlevel_notify_store(se_, v.fuse_ino(ino), static_cast<off_t>(file_chunk << v.pkg->header().chunk_shift),
                                   &bufv, FUSE_BUF_NO_SPLICE);
}

bool Filesystem::plan_readahead(Volume &v, std::uint32_t ino, OpenFile *of,
                                const std::vector<ChunkSlice> &slices) noexcept {
  // Runs before the reply: once the reply is in, the kernel may release the handle and free `of`.
  if (slices.empty() || !of) return false;
  ReadPattern::Plan plan;
  {
    std::lock_guard lock(of->mu);
    plan = of->pattern.observe(slices.front().file_chunk, slices.back().file_chunk);
  }
  try {
    if (plan.turned_random) prefetch_whole_file(v, ino);
    if (plan.ahead_count) v.reader.prefetch(ino, plan.ahead_from, plan.ahead_count);
  } catch (const std::exception &e) {
    log_error(e.what());  // decode-ahead is a hint: the read itself goes on
  }
  return plan.sequential;
}

void Filesystem::prefetch_whole_file(Volume &v, std::uint32_t ino) noexcept {
  // Random readers of a weights file end up touching most of it; decoding it ahead, in order, on
  // every worker puts it in the page cache at full decode speed, where chunk-by-chunk misses would
  // each cost a decode on the reader's critical path. Pages stay evictable kernel memory.
  if (!opts_.push_to_page_cache || opts_.random_prefetch_bytes == 0) return;
  if (v.pkg->inode(ino).size > opts_.random_prefetch_bytes || v.reader.chunks_in_file(ino) < 2) return;
  try {
    {
      std::lock_guard lock(v.prefetched_mu);
      if (!v.prefetched.insert(ino).second) return;  // once per file per mount
    }
    for (unsigned w = 0; w < workers_; ++w) sweep(v, ino, w);
  } catch (const std::exception &e) {
    log_error(e.what());
  }
}

void Filesystem::sweep(Volume &v, std::uint32_t ino, std::uint64_t k) {
  // One chunk per task, then requeue: pushes and decode-ahead for other readers interleave with a
  // long sweep instead of waiting behind it. Workers take chunks w, w+workers, ... in order.
  v.reader.run_in_background([this, &v, ino, k] {
    if (stopping_.load(std::memory_order_relaxed)) return;
    if (auto c = v.reader.decode_ahead(ino, k)) push_to_page_cache(v, ino, k, c);
    if (k + workers_ < v.reader.chunks_in_file(ino) && !stopping_.load(std::memory_order_relaxed))
      sweep(v, ino, k + workers_);
  });
}

void Filesystem::push_decoded(Volume &v, std::uint32_t ino, const std::vector<ChunkSlice> &slices) noexcept {
  // Runs after the reply: the pages of this request are unlocked only once its reply is in, so the
  // push must not happen before that. Nothing here may throw into `guarded`, which would reply twice.
  if (!opts_.push_to_page_cache) return;
  try {
    for (const auto &s : slices)
      if (s.decoded_now)
        v.reader.run_in_background(
            [this, &v, ino, k = s.file_chunk, c = s.chunk] { push_to_page_cache(v, ino, k, c); });
  } catch (const std::exception &e) {
    log_error(e.what());
  }
}

void Filesystem::log_integrity_failure(const std::string &msg) {
  {
    std::lock_guard lock(log_mu_);
    if (logged_.size() > 10000 || logged_.count(msg)) return;
  }
  audit_integrity(volumes_.empty() ? std::string_view("-") : std::string_view(volumes_.front()->pkg->path()), msg);
  log_error(msg);
}

void Filesystem::log_error(const std::string &msg) {
  {
    std::lock_guard lock(log_mu_);
    if (logged_.size() > 10000 || !logged_.insert(msg).second) return;  // one line per distinct failure
  }
  if (daemonized_)
    ::syslog(LOG_ERR, "%s", msg.c_str());
  else
    fmt::print(stderr, "mount.torshpkg: {}\n", msg);
}

std::pair<Volume *, std::uint32_t> Filesystem::locate(fuse_ino_t ino) const {
  // Volumes are in inode order: the last one starting at or below ino.
  const auto it = std::upper_bound(volumes_.begin(), volumes_.end(), ino,
                                   [](fuse_ino_t n, const std::unique_ptr<Volume> &v) { return n < v->base; });
  if (it == volumes_.begin() || ino >= (*(it - 1))->end()) throw NotFoundError("no such inode");
  return {it[-1].get(), static_cast<std::uint32_t>(ino - it[-1]->base)};
}

fuse_ino_t Filesystem::parent_of(const Volume &v, std::uint32_t i) const noexcept {
  if (i != 0) return v.fuse_ino(v.pkg->inode(i).parent);
  return v.name.empty() ? FUSE_ROOT_ID : deps_dir_ino();
}

struct stat Filesystem::attr(fuse_ino_t ino) const {
  struct stat st {};
  st.st_ino = ino;
  st.st_uid = uid_;
  st.st_gid = gid_;
  st.st_blksize = main().pkg->chunk_size();
  const std::uint32_t umask = opts_.umask.value_or(0);
  if (is_virtual_dir(ino)) {
    st.st_mode = S_IFDIR | (0555 & ~umask);
    st.st_nlink = 2 + (ino == deps_dir_ino() ? volumes_.size() - 1 : 0);
  } else if (ino == manifest_ino()) {
    st.st_mode = S_IFREG | (0444 & ~umask);
    st.st_nlink = 1;
    st.st_size = static_cast<off_t>(main().pkg->manifest_text().size());
  } else if (ino == stats_ino()) {
    st.st_mode = S_IFREG | (0444 & ~umask);
    st.st_nlink = 1;  // size 0: its contents change; opened with direct_io, read to the end
  } else {
    const auto [v, i] = locate(ino);
    const auto &pkg = *v->pkg;
    const auto e = pkg.inode(i);
    st.st_blksize = pkg.chunk_size();
    st.st_mode = (e.mode & S_IFMT) | (e.mode & 0777 & ~umask);
    st.st_mtim = {e.mtime_sec, static_cast<long>(e.mtime_nsec)};
    st.st_ctim = st.st_atim = st.st_mtim;
    st.st_size = static_cast<off_t>(e.size);
    st.st_nlink = 1;
    if (pkg.type(i) == format::NodeType::kDirectory)
      st.st_nlink = 2 + v->subdirs[i] + (ino == FUSE_ROOT_ID && has_deps() ? 1 : 0);
  }
  st.st_blocks = (st.st_size + 511) / 512;
  return st;
}

fuse_entry_param Filesystem::entry(fuse_ino_t ino) const {
  fuse_entry_param e{};
  e.ino = ino;
  e.generation = 1;
  e.attr = attr(ino);
  e.attr_timeout = kForever;
  e.entry_timeout = kForever;
  return e;
}

void Filesystem::lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  const std::string_view nm(name);
  std::optional<fuse_ino_t> found;
  if (parent == FUSE_ROOT_ID && nm == kMetaDir) {
    found = meta_dir_ino();
  } else if (parent == FUSE_ROOT_ID && nm == kDepsDir && has_deps()) {
    found = deps_dir_ino();
  } else if (parent == meta_dir_ino()) {
    if (nm == kManifestName) found = manifest_ino();
    if (nm == kStatsName) found = stats_ino();
  } else if (parent == deps_dir_ino() && has_deps()) {
    for (std::size_t k = 1; k < volumes_.size() && !found; ++k)
      if (volumes_[k]->name == nm) found = volumes_[k]->base;
  } else {
    const auto [v, i] = locate(parent);
    if (const auto child = v->pkg->lookup(i, nm)) found = v->fuse_ino(*child);
  }
  if (!found) {
    // A negative entry may be cached for good too: the tree never changes.
    fuse_entry_param e{};
    e.entry_timeout = kForever;
    fuse_reply_entry(req, &e);
    return;
  }
  const auto e = entry(*found);
  fuse_reply_entry(req, &e);
}

void Filesystem::getattr(fuse_req_t req, fuse_ino_t ino) {
  const auto st = attr(ino);
  fuse_reply_attr(req, &st, kForever);
}

void Filesystem::readlink(fuse_req_t req, fuse_ino_t ino) {
  if (is_virtual_dir(ino) || is_virtual_file(ino)) throw UsageError("not a symlink");
  const auto [v, i] = locate(ino);
  if (v->pkg->type(i) != format::NodeType::kSymlink) throw UsageError("not a symlink");
  fuse_reply_readlink(req, std::string(v->pkg->symlink_target(i)).c_str());
}

void Filesystem::open(fuse_req_t req, fuse_ino_t ino, fuse_file_info *fi) {
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (is_virtual_dir(ino)) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  std::unique_ptr<OpenFile> of;
  if (ino == stats_ino()) {
    of = std::make_unique<OpenFile>(0, 2);
    of->snapshot = std::make_shared<const std::string>(stats_json());
    fi->direct_io = 1;  // its size is not known ahead
  } else if (ino != manifest_ino()) {
    const auto [v, i] = locate(ino);
    if (v->pkg->type(i) != format::NodeType::kRegular) {
      fuse_reply_err(req, EISDIR);
      return;
    }
    of = std::make_unique<OpenFile>(v->readahead_chunks, v->stream_slack_chunks);
  }
  fi->keep_cache = ino == stats_ino() ? 0 : 1;  // immutable content: page cache stays valid across opens
  fi->fh = reinterpret_cast<std::uint64_t>(of.get());
  if (fuse_reply_open(req, fi) == 0) of.release();  // owned by the kernel's handle until release
}

void Filesystem::release(fuse_req_t req, fuse_file_info *fi) {
  delete reinterpret_cast<OpenFile *>(fi->fh);
  fuse_reply_err(req, 0);
}

void Filesystem::read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info *fi) {
  if (off < 0) throw UsageError("negative offset");
  if (is_virtual_file(ino)) {
    const auto snapshot = ino == manifest_ino() ? nullptr : reinterpret_cast<OpenFile *>(fi->fh)->snapshot;
    const std::string_view text = snapshot ? std::string_view(*snapshot) : main().pkg->manifest_text();
    const auto start = std::min<std::size_t>(static_cast<std::size_t>(off), text.size());
    const auto n = std::min(size, text.size() - start);
    fuse_reply_buf(req, text.data() + start, n);
    return;
  }
  const auto [v, i] = locate(ino);
  const auto slices = v->reader.slices(i, static_cast<std::uint64_t>(off), size);
  std::vector<iovec> iov;
  iov.reserve(slices.size());
  for (const auto &s : slices) iov.push_back({const_cast<std::uint8_t *>(s.chunk->data() + s.offset), s.length});
  const bool sequential = plan_readahead(*v, i, reinterpret_cast<OpenFile *>(fi->fh), slices);
  // The slices hold the chunks alive until the reply has been written.
  fuse_reply_iov(req, iov.data(), static_cast<int>(iov.size()));
  if (!sequential) push_decoded(*v, i, slices);
}

void Filesystem::opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info *fi) {
  if (!is_virtual_dir(ino)) {
    const auto [v, i] = locate(ino);
    if (v->pkg->type(i) != format::NodeType::kDirectory) {
      fuse_reply_err(req, ENOTDIR);
      return;
    }
  }
  fi->cache_readdir = 1;
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

void Filesystem::readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus) {
  // Offsets: 0 ".", 1 "..", 2+k the k-th entry. The hidden /.torshpkg is never listed; /.deps (with
  // -o deps) is listed after the root's own entries.
  std::vector<char> buf(size);
  std::size_t used = 0;
  std::uint64_t count = 0;
  fuse_ino_t parent_ino = FUSE_ROOT_ID;
  const Volume *vol = nullptr;
  std::uint32_t dir = 0;
  if (ino == meta_dir_ino()) {
    count = 2;
  } else if (ino == deps_dir_ino() && has_deps()) {
    count = volumes_.size() - 1;
  } else {
    const auto [v, i] = locate(ino);
    vol = v;
    dir = i;
    count = v->pkg->inode(i).size + (ino == FUSE_ROOT_ID && has_deps() ? 1 : 0);
    parent_ino = parent_of(*v, i);
  }
  for (auto pos = static_cast<std::uint64_t>(off); pos < 2 + count; ++pos) {
    std::string name;
    fuse_ino_t child;
    if (pos == 0) {
      name = ".", child = ino;
    } else if (pos == 1) {
      name = "..", child = parent_ino;
    } else if (ino == meta_dir_ino()) {
      name = pos == 2 ? kManifestName : kStatsName, child = pos == 2 ? manifest_ino() : stats_ino();
    } else if (!vol) {
      const auto &dep = *volumes_[pos - 1];
      name = dep.name, child = dep.base;
    } else if (pos - 2 == vol->pkg->inode(dir).size) {
      name = kDepsDir, child = deps_dir_ino();
    } else {
      const auto c = static_cast<std::uint32_t>(vol->pkg->inode(dir).first + pos - 2);
      name = vol->pkg->name(c);
      child = vol->fuse_ino(c);
    }
    std::size_t n;
    if (plus) {
      fuse_entry_param e = pos < 2 ? fuse_entry_param{} : entry(child);
      if (pos < 2) e.attr = attr(child);  // "." and "..": attributes only, no lookup count
      n = fuse_add_direntry_plus(req, buf.data() + used, size - used, name.c_str(), &e, static_cast<off_t>(pos + 1));
    } else {
      const auto st = attr(child);
      n = fuse_add_direntry(req, buf.data() + used, size - used, name.c_str(), &st, static_cast<off_t>(pos + 1));
    }
    if (n > size - used) break;
    used += n;
  }
  fuse_reply_buf(req, buf.data(), used);
}

namespace {
// Paths need not be UTF-8: such bytes become U+FFFD rather than an exception (EIO on the read).
std::string json_quoted(const std::string &text) {
  return nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// One package's counters: the body of a JSON object, without braces.
std::string volume_stats(const Volume &v) {
  const auto &pkg = *v.pkg;
  const auto p = pkg.pipeline_stats();
  const auto m = v.reader.cache().stats();
  std::string source = pkg.source().stats_json();
  if (source.empty())  // a local file: nothing is fetched
    source = fmt::format(R"("source":{},"mirror":null,"requests":0,"retries":0,"failovers":0,"bytes_fetched":0)",
                         json_quoted(pkg.path()));
  std::string disk = "null";
  if (const auto *store = pkg.store()) {
    const auto d = store->stats();
    disk = fmt::format(
        R"({{"dir":{},"usable":{},"hits":{},"misses":{},"bytes_read":{},"bytes_written":{},"write_failures":{},"dropped":{}}})",
        json_quoted(store->dir()), store->usable(), d.hits, d.misses, d.bytes_read, d.bytes_written, d.write_failures,
        d.dropped);
  }
  return fmt::format(
      "{},\"bytes_from_cache\":{},\"bytes_decoded\":{},\"chunks_decoded\":{},\"digest_failures\":{},"
      "\"memory_cache\":{{\"hits\":{},\"misses\":{},\"evictions\":{},\"bytes\":{}}},\"disk_cache\":{}",
      source, p.bytes_from_store, p.bytes_decoded, p.chunks_decoded, p.digest_failures, m.hits, m.misses, m.evictions,
      m.bytes, disk);
}
}  // namespace

std::string Filesystem::stats_json() const {
  std::string out = "{" + volume_stats(main());
  if (has_deps()) {
    out += ",\"deps\":{";
    for (std::size_t k = 1; k < volumes_.size(); ++k)
      out += (k > 1 ? "," : "") + json_quoted(volumes_[k]->name) + ":{" + volume_stats(*volumes_[k]) + "}";
    out += "}";
  }
  return out + "}\n";
}

void Filesystem::statfs(fuse_req_t req) {
  struct statvfs s {};
  s.f_bsize = main().pkg->chunk_size();
  s.f_frsize = 4096;
  for (const auto &v : volumes_) {
    s.f_blocks += (v->pkg->file_size() + 4095) / 4096;
    s.f_files += v->pkg->inode_count();
  }
  s.f_namemax = format::kMaxNameLength;
  s.f_flag = ST_RDONLY;
  fuse_reply_statfs(req, &s);
}

std::vector<std::pair<std::string, std::string>> Filesystem::xattrs(fuse_ino_t ino) const {
  std::vector<std::pair<std::string, std::string>> out;
  if (is_virtual_dir(ino) || is_virtual_file(ino)) return out;
  const auto [v, i] = locate(ino);
  const auto &pkg = *v->pkg;
  if (i == 0) {  // the root of a package: the mounted one, or a dependency's /.deps/NAME
    out.emplace_back("user.torshpkg.name", pkg.manifest().name);
    out.emplace_back("user.torshpkg.version", pkg.manifest().version);
    // A synthesised index (a zip) has no root digest: say where the tree comes from instead of zeros.
    if (pkg.synthesized())
      out.emplace_back("user.torshpkg.source", pkg.manifest().source);
    else
      out.emplace_back("user.torshpkg.root_sha256", to_hex(pkg.root_digest()));
    return out;
  }
  if (pkg.type(i) != format::NodeType::kRegular) return out;
  const auto e = pkg.inode(i);
  out.emplace_back("user.torshpkg.kind", std::string(format::kind_name(e.kind)));
  if (const auto sha = pkg.file_sha256(i)) out.emplace_back("user.torshpkg.sha256", to_hex(*sha));
  if (pkg.synthesized()) return out;  // its chunk table says nothing about storage
  out.emplace_back("user.torshpkg.stored_size", std::to_string(pkg.stored_size(i)));
  out.emplace_back("user.torshpkg.codec", pkg.codec_summary(i));
  return out;
}

namespace {
// getxattr/listxattr protocol: size 0 asks for the length, a smaller buffer gets ERANGE.
void reply_xattr_bytes(fuse_req_t req, std::string_view bytes, size_t size) {
  if (size == 0)
    fuse_reply_xattr(req, bytes.size());
  else if (size < bytes.size())
    fuse_reply_err(req, ERANGE);
  else
    fuse_reply_buf(req, bytes.data(), bytes.size());
}
}  // namespace

void Filesystem::getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  // ls and cp ask for security.* and system.* names on every file: answer those without building
  // the list, which parses the manifest on first use.
  if (!std::string_view(name).starts_with("user.torshpkg.")) {
    fuse_reply_err(req, ENODATA);
    return;
  }
  for (const auto &[key, value] : xattrs(ino)) {
    if (key != name) continue;
    reply_xattr_bytes(req, value, size);
    return;
  }
  fuse_reply_err(req, ENODATA);
}

void Filesystem::listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  std::string names;
  for (const auto &[key, value] : xattrs(ino)) names.append(key).push_back('\0');
  reply_xattr_bytes(req, names, size);
}

const fuse_lowlevel_ops &Filesystem::operations() {
  static const fuse_lowlevel_ops ops = [] {
    fuse_lowlevel_ops o{};
    o.init = [](void *userdata, fuse_conn_info *conn) {
      (void)userdata;
      conn->max_readahead = std::min<unsigned>(conn->max_readahead, 1u << 20);
      if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
    };
    o.lookup = [](fuse_req_t r, fuse_ino_t p, const char *n) { guarded(r, [&] { fs_of(r).lookup(r, p, n); }); };
    o.getattr = [](fuse_req_t r, fuse_ino_t i, fuse_file_info *) { guarded(r, [&] { fs_of(r).getattr(r, i); }); };
    o.readlink = [](fuse_req_t r, fuse_ino_t i) { guarded(r, [&] { fs_of(r).readlink(r, i); }); };
    o.open = [](fuse_req_t r, fuse_ino_t i, fuse_file_info *fi) { guarded(r, [&] { fs_of(r).open(r, i, fi); }); };
    o.read = [](fuse_req_t r, fuse_ino_t i, size_t s, off_t off, fuse_file_info *fi) {
      guarded(r, [&] { fs_of(r).read(r, i, s, off, fi); });
    };
    o.release = [](fuse_req_t r, fuse_ino_t, fuse_file_info *fi) { guarded(r, [&] { fs_of(r).release(r, fi); }); };
    o.opendir = [](fuse_req_t r, fuse_ino_t i, fuse_file_info *fi) { guarded(r, [&] { fs_of(r).opendir(r, i, fi); }); };
    o.readdir = [](fuse_req_t r, fuse_ino_t i, size_t s, off_t off, fuse_file_info *) {
      guarded(r, [&] { fs_of(r).readdir(r, i, s, off, false); });
    };
    o.readdirplus = [](fuse_req_t r, fuse_ino_t i, size_t s, off_t off, fuse_file_info *) {
      guarded(r, [&] { fs_of(r).readdir(r, i, s, off, true); });
    };
    o.statfs = [](fuse_req_t r, fuse_ino_t) { guarded(r, [&] { fs_of(r).statfs(r); }); };
    o.getxattr = [](fuse_req_t r, fuse_ino_t i, const char *n, size_t s) {
      guarded(r, [&] { fs_of(r).getxattr(r, i, n, s); });
    };
    o.listxattr = [](fuse_req_t r, fuse_ino_t i, size_t s) { guarded(r, [&] { fs_of(r).listxattr(r, i, s); }); };
    return o;
  }();
  return ops;
}

}  // namespace torshpkg::mount
