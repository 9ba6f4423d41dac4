// The shared on-disk chunk store (chunk_store.hpp): one file per chunk, named by its SHA-256,
// written through tmp/ and a rename, least recently used collected first under an flock.
#include "torshpkg/chunk_store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <exception>

#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"

namespace torshpkg {

namespace {

constexpr mode_t kDirMode = 0755;
constexpr mode_t kFileMode = 0644;
constexpr std::int64_t kTouchAfterSeconds = 60;   // a hit refreshes mtime at most this often
constexpr std::int64_t kPauseSeconds = 30;        // writes pause this long after a failure
constexpr std::int64_t kStaleTempSeconds = 3600;  // temp files older than this belong to dead writers
constexpr std::size_t kDigestHex = 2 * std::tuple_size_v<Digest>;

std::int64_t steady_seconds() noexcept {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) noexcept {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

std::string errno_text(int err) {
  return std::strerror(err);
}

bool is_lower_hex(std::string_view s) noexcept {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// mkdir -p with kDirMode for what it creates. Returns 0, or the errno of the first failure.
int make_dirs(const std::string &path) {
  if (path.empty()) return ENOENT;
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, pos);
    if (prefix.empty() || prefix.back() == '/') continue;  // "//" or a trailing slash
    if (::mkdir(prefix.c_str(), kDirMode) == 0) {
      ::chmod(prefix.c_str(), kDirMode);  // whatever the umask: the store is shared between users
      continue;
    }
    const int err = errno;
    struct stat st {};
    if (err == EEXIST && ::stat(prefix.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) return ENOTDIR;
      continue;
    }
    return err;
  }
  return 0;
}

// Writes all of `buf`; 0 or an errno.
int write_fully(int fd, std::span<const std::uint8_t> buf) noexcept {
  std::size_t done = 0;
  while (done < buf.size()) {
    const ssize_t n = ::write(fd, buf.data() + done, buf.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    done += static_cast<std::size_t>(n);
  }
  return 0;
}

// Reads exactly buf.size() bytes from offset 0; false on an error or a short file.
bool pread_fully(int fd, std::span<std::uint8_t> buf) noexcept {
  std::size_t done = 0;
  while (done < buf.size()) {
    const ssize_t n = ::pread(fd, buf.data() + done, buf.size() - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

// A directory stream that closes itself.
struct DirStream {
  explicit DirStream(const std::string &path) : d(::opendir(path.c_str())) {}
  ~DirStream() {
    if (d) ::closedir(d);
  }
  DirStream(const DirStream &) = delete;
  DirStream &operator=(const DirStream &) = delete;
  DIR *d;
};

// Calls fn(name) for each entry but . and ..; throws IoError (unless the directory is missing and
// `missing_ok`).
template <typename Fn>
void for_each_name(const std::string &path, bool missing_ok, Fn &&fn) {
  DirStream ds(path);
  if (!ds.d) {
    if (missing_ok && errno == ENOENT) return;
    throw_errno("open directory", path);
  }
  for (;;) {
    errno = 0;
    const dirent *e = ::readdir(ds.d);
    if (!e) {
      if (errno != 0) throw_errno("read directory", path);
      return;
    }
    const std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    fn(name);
  }
}

// The exclusive lock on DIR/gc.lock, released on destruction.
UniqueFd open_lock(const std::string &path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, kFileMode);
  if (fd < 0) fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);  // a store we may only read
  return UniqueFd(fd);
}

bool lock(const UniqueFd &fd, bool wait) noexcept {
  for (;;) {
    if (::flock(fd.get(), LOCK_EX | (wait ? 0 : LOCK_NB)) == 0) return true;
    if (errno != EINTR) return false;
  }
}

// Unlinks; true when it is gone (by us or by someone else), throws IoError otherwise.
bool remove_file(const std::string &path) {
  if (::unlink(path.c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  throw_errno("remove", path);
}

}  // namespace

ChunkStore::ChunkStore(std::string dir, std::uint64_t max_bytes) : dir_(std::move(dir)), max_bytes_(max_bytes) {
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  try {
    if (const int err = make_dirs(dir_ + "/chunks"); err != 0) {
      warning_ = fmt::format("cache dir {}: {}; caching disabled", dir_, errno_text(err));
      return;
    }
    // Only reads need chunks/: a store we may not write to still serves hits (writes then fail and pause).
    if (::access((dir_ + "/chunks").c_str(), R_OK | X_OK) != 0) {
      warning_ = fmt::format("cache dir {}: {}; caching disabled", dir_, errno_text(errno));
      return;
    }
    usable_ = true;
    if (const int err = make_dirs(dir_ + "/tmp"); err != 0)
      warning_ = fmt::format("cache dir {}: tmp: {}; chunks are not written", dir_, errno_text(err));
  } catch (...) {  // bad_alloc: no caching rather than no daemon
    usable_ = false;
  }
}

ChunkStore::~ChunkStore() = default;

std::string ChunkStore::warning() const {
  std::lock_guard lk(mu_);
  return warning_;
}

std::string ChunkStore::path_of(const Digest &digest) const {
  const std::string hex = to_hex(digest);
  return fmt::format("{}/chunks/{}/{}", dir_, std::string_view(hex).substr(0, 2), hex);
}

bool ChunkStore::get(const Digest &digest, std::span<std::uint8_t> out) noexcept {
  try {
    if (usable_) {
      const std::string path = path_of(digest);
      UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
      struct stat st {};
      if (fd && ::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode)) {
        if (st.st_size < 0 || static_cast<std::uint64_t>(st.st_size) != out.size()) {
          // Removes it only if the name still means the file we looked at (not one renamed in since).
          struct stat now {};
          if (::stat(path.c_str(), &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino)
            ::unlink(path.c_str());
        } else if (pread_fully(fd.get(), out)) {
          hits_.fetch_add(1, std::memory_order_relaxed);
          bytes_read_.fetch_add(out.size(), std::memory_order_relaxed);
          const std::int64_t now = std::time(nullptr);
          if (now - static_cast<std::int64_t>(st.st_mtim.tv_sec) > kTouchAfterSeconds)
            ::futimens(fd.get(), nullptr);  // LRU; a store we may not write keeps its order
          return true;
        }
      }
    }
  } catch (...) {
  }
  misses_.fetch_add(1, std::memory_order_relaxed);
  return false;
}

void ChunkStore::put(const Digest &digest, std::span<const std::uint8_t> bytes) noexcept {
  if (!usable_) return;
  std::string tmp;
  try {
    if (contains(digest)) return;
    {
      std::lock_guard lk(mu_);
      if (steady_seconds() < writes_paused_until_) return;
    }
    const std::string hex = to_hex(digest);
    std::uint64_t nonce = 0;
    if (::getrandom(&nonce, sizeof nonce, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof nonce)) {
      static std::atomic<std::uint64_t> counter{0};
      nonce = counter.fetch_add(1) ^
              static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    }
    tmp = fmt::format("{}/tmp/{}.{}.{:016x}", dir_, hex, ::getpid(), nonce);
    UniqueFd fd(::open(tmp.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, kFileMode));
    if (!fd) {
      const int err = errno;
      tmp.clear();  // not ours: never unlink it
      note_write_failure(err);
      return;
    }
    int err = 0;
    if (::fchmod(fd.get(), kFileMode) != 0) err = errno;  // whatever the umask
    if (err == 0) err = write_fully(fd.get(), bytes);
    // close() reports deferred write errors (NFS, quotas): check it.
    if (::close(fd.release()) != 0 && err == 0 && errno != EINTR) err = errno;
    if (err == 0) {
      const std::string final_path = path_of(digest);
      if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
        err = errno;
        if (err == ENOENT) {  // chunks/AB/ is made on first use (or was removed)
          const std::string sub = final_path.substr(0, final_path.size() - kDigestHex - 1);
          err = make_dirs(sub);
          if (err == 0 && ::rename(tmp.c_str(), final_path.c_str()) != 0) err = errno;
        }
      }
    }
    if (err != 0) {
      ::unlink(tmp.c_str());
      note_write_failure(err);
      return;
    }
    bytes_written_.fetch_add(bytes.size(), std::memory_order_relaxed);
  } catch (...) {  // bad_alloc
    if (!tmp.empty()) ::unlink(tmp.c_str());
    note_write_failure(ENOMEM);
    return;
  }
  maybe_collect(bytes.size());
}

void ChunkStore::note_write_failure(int err) noexcept {
  write_failures_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard lk(mu_);
  writes_paused_until_ = steady_seconds() + kPauseSeconds;
  try {
    warning_ = fmt::format("cache dir {}: {}; writes paused for {} s", dir_, errno_text(err), kPauseSeconds);
  } catch (...) {
  }
}

void ChunkStore::drop(const Digest &digest) noexcept {
  try {
    if (::unlink(path_of(digest).c_str()) == 0) dropped_.fetch_add(1, std::memory_order_relaxed);
  } catch (...) {
  }
}

bool ChunkStore::contains(const Digest &digest) const noexcept {
  if (!usable_) return false;
  try {
    struct stat st {};
    return ::stat(path_of(digest).c_str(), &st) == 0 && S_ISREG(st.st_mode);
  } catch (...) {
    return false;
  }
}

std::vector<ChunkStore::Entry> ChunkStore::list() const {
  struct Found {
    Entry entry;
    long nsec;  // orders entries used within one second (a put's mtime is its creation)
  };
  std::vector<Found> found;
  const std::string chunks = dir_ + "/chunks";
  for_each_name(chunks, false, [&](std::string_view sub) {
    if (sub.size() != 2 || !is_lower_hex(sub)) return;
    const std::string subdir = fmt::format("{}/{}", chunks, sub);
    struct stat sst {};
    if (::lstat(subdir.c_str(), &sst) != 0 || !S_ISDIR(sst.st_mode)) return;
    for_each_name(subdir, true, [&](std::string_view name) {
      if (name.size() != kDigestHex || !is_lower_hex(name) || name.substr(0, 2) != sub) return;
      struct stat st {};
      if (::lstat(fmt::format("{}/{}", subdir, name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return;
      const auto digest = from_hex(name);
      if (!digest) return;
      found.push_back(Found{Entry{*digest, static_cast<std::uint64_t>(std::max<off_t>(st.st_size, 0)),
                                  static_cast<std::int64_t>(st.st_mtim.tv_sec)},
                            st.st_mtim.tv_nsec});
    });
  });
  std::sort(found.begin(), found.end(), [](const Found &a, const Found &b) {
    if (a.entry.last_used != b.entry.last_used) return a.entry.last_used < b.entry.last_used;
    if (a.nsec != b.nsec) return a.nsec < b.nsec;
    return a.entry.digest < b.entry.digest;
  });
  std::vector<Entry> out;
  out.reserve(found.size());
  for (const auto &f : found) out.push_back(f.entry);
  return out;
}

ChunkStore::GcResult ChunkStore::collect_locked(std::uint64_t max_bytes, bool everything) {
  GcResult r;
  const auto entries = list();
  std::uint64_t total = 0;
  for (const auto &e : entries) total = saturating_add(total, e.size);
  for (const auto &e : entries) {
    if (!everything && total <= max_bytes) {
      ++r.kept_entries;
      r.kept_bytes = saturating_add(r.kept_bytes, e.size);
      continue;
    }
    if (remove_file(path_of(e.digest))) {  // false: someone else removed it
      ++r.removed_entries;
      r.removed_bytes = saturating_add(r.removed_bytes, e.size);
    }
    total -= std::min(total, e.size);
  }
  // Temp files: those of writers that died (or, for clear(), all of them).
  const std::string tmp = dir_ + "/tmp";
  const std::int64_t now = std::time(nullptr);
  std::vector<std::string> stale;
  for_each_name(tmp, true, [&](std::string_view name) {
    std::string path = fmt::format("{}/{}", tmp, name);
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return;
    if (everything || now - static_cast<std::int64_t>(st.st_mtim.tv_sec) > kStaleTempSeconds)
      stale.push_back(std::move(path));
  });
  for (const auto &p : stale) remove_file(p);
  return r;
}

ChunkStore::GcResult ChunkStore::gc(std::uint64_t max_bytes) {
  const std::string lock_path = dir_ + "/gc.lock";
  const UniqueFd fd = open_lock(lock_path);
  if (!fd) throw_errno("open", lock_path);
  if (!lock(fd, true)) throw_errno("lock", lock_path);
  const auto r = collect_locked(max_bytes, false);
  std::lock_guard lk(mu_);
  if (estimated_) estimated_bytes_ = r.kept_bytes;
  return r;
}

ChunkStore::GcResult ChunkStore::clear() {
  const std::string lock_path = dir_ + "/gc.lock";
  const UniqueFd fd = open_lock(lock_path);
  if (!fd) throw_errno("open", lock_path);
  if (!lock(fd, true)) throw_errno("lock", lock_path);
  const auto r = collect_locked(0, true);
  std::lock_guard lk(mu_);
  if (estimated_) estimated_bytes_ = r.kept_bytes;
  return r;
}

void ChunkStore::maybe_collect(std::uint64_t added) noexcept {
  try {
    {
      std::lock_guard lk(mu_);
      written_since_scan_ = saturating_add(written_since_scan_, added);
      // Other daemons on this directory write too, unseen: a scan now and then keeps the bound
      // shared (at most an eighth of it written here between scans).
      if (written_since_scan_ > max_bytes_ / 8 && !collecting_) estimated_ = false;
      if (!estimated_) {
        // One scan, which already counts the chunk just added.
        written_since_scan_ = 0;
        std::uint64_t total = 0;
        try {
          for (const auto &e : list()) total = saturating_add(total, e.size);
        } catch (const std::exception &) {
        }
        estimated_bytes_ = total;
        estimated_ = true;
      } else {
        estimated_bytes_ = saturating_add(estimated_bytes_, added);
      }
      if (collecting_) added_while_collecting_ = saturating_add(added_while_collecting_, added);
      if (estimated_bytes_ <= max_bytes_ || collecting_) return;  // the collector sees this put when done
      collecting_ = true;
      added_while_collecting_ = 0;
    }
    // One collector at a time, across processes (flock) and threads (collecting_): the others carry
    // on. Puts made while it scans are added to what it kept, and another round runs if that is
    // still too much, so the bound holds after the last put too.
    for (int round = 0; round < 3; ++round) {
      std::uint64_t kept = 0;
      try {
        const UniqueFd fd = open_lock(dir_ + "/gc.lock");
        if (!fd || !lock(fd, false)) break;  // another process collects
        kept = collect_locked(max_bytes_ / 10 * 9 + max_bytes_ % 10 * 9 / 10, false).kept_bytes;
      } catch (...) {  // I/O errors while collecting, bad_alloc: the next put tries again
        break;
      }
      std::lock_guard lk(mu_);
      estimated_bytes_ = saturating_add(kept, added_while_collecting_);
      added_while_collecting_ = 0;
      if (estimated_bytes_ <= max_bytes_) break;
    }
    std::lock_guard lk(mu_);
    collecting_ = false;
  } catch (...) {
    std::lock_guard lk(mu_);
    collecting_ = false;
  }
}

ChunkStore::Stats ChunkStore::stats() const noexcept {
  Stats s;
  s.hits = hits_.load(std::memory_order_relaxed);
  s.misses = misses_.load(std::memory_order_relaxed);
  s.bytes_read = bytes_read_.load(std::memory_order_relaxed);
  s.bytes_written = bytes_written_.load(std::memory_order_relaxed);
  s.write_failures = write_failures_.load(std::memory_order_relaxed);
  s.dropped = dropped_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace torshpkg
