#include "torshpkg/writer.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_map>

#include "torshpkg/codec.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/file_kinds.hpp"
#include "torshpkg/filter.hpp"
#include "torshpkg/manifest.hpp"
#if TORSHPKG_WITH_ANALYSIS
#include "torshpkg/model_formats.hpp"
#endif
#include "torshpkg/names.hpp"
#include "torshpkg/pool.hpp"
#include "torshpkg/version.hpp"

namespace torshpkg {

namespace {

struct Node {
  std::string name;
  std::string rel;     // path relative to the source root
  std::string source;  // where a file's bytes are read from (opened with O_NOFOLLOW): a real path
  struct stat st {};   // of the entry, or of what it points to when `followed`
  std::string link_target;
  bool followed = false;              // a symlink stored as the file or directory it points to (-L)
  std::vector<std::size_t> children;  // indices into the walk's node list, sorted by name
  std::uint32_t parent = 0;
  std::uint32_t ino = 0;
};

struct DigestHash {
  std::size_t operator()(const Digest &d) const noexcept {
    std::size_t h;
    std::memcpy(&h, d.data(), sizeof h);
    return h;
  }
};

bool matches(const std::string &glob, const std::string &rel, const std::string &name) {
  return ::fnmatch(glob.c_str(), rel.c_str(), FNM_PATHNAME) == 0 || ::fnmatch(glob.c_str(), name.c_str(), 0) == 0;
}

// Whether a symlink at `rel` pointing to `target` resolves outside the tree, reading the target
// lexically as the mount will (an absolute target never points into the package).
bool leaves_tree(std::string_view rel, std::string_view target) {
  if (target.starts_with('/')) return true;
  auto depth = static_cast<std::size_t>(std::count(rel.begin(), rel.end(), '/'));  // of the link's directory
  for (std::size_t pos = 0; pos <= target.size();) {
    const std::size_t end = std::min(target.find('/', pos), target.size());
    const auto part = target.substr(pos, end - pos);
    if (part == "..") {
      if (depth == 0) return true;
      --depth;
    } else if (!part.empty() && part != ".") {
      ++depth;
    }
    pos = end + 1;
  }
  return false;
}

// A Hugging Face hub cache snapshot, .../models--ORG--NAME/snapshots/REV, whose files are symlinks
// into ../../blobs: packed as links they would all dangle.
bool hf_cache_snapshot(const std::string &dir) {
  std::error_code ec;
  const auto real = std::filesystem::canonical(dir, ec);
  if (ec) return false;
  const auto snapshots = real.parent_path(), repo = snapshots.parent_path();
  const auto repo_name = repo.filename().string();
  // datasets-- and spaces-- repositories share the layout.
  const bool repo_dir =
      repo_name.starts_with("models--") || repo_name.starts_with("datasets--") || repo_name.starts_with("spaces--");
  return snapshots.filename() == "snapshots" && repo_dir && std::filesystem::is_directory(repo / "blobs", ec);
}

bool same_file(const struct stat &a, const struct stat &b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// The output as the walk must leave it out: in its directory, its name and NAME.tmp.* (the temporary
// files of this pack and of interrupted ones); anywhere, the files it is (by device and inode: a
// hard link, a symlink followed with -L, standard output redirected into the tree).
struct OutputSkip {
  std::optional<struct stat> dir;
  std::string name;
  std::vector<struct stat> files;
  [[nodiscard]] bool by_name(const struct stat &parent, const std::string &nm) const {
    return dir && same_file(*dir, parent) && (nm == name || nm.starts_with(name + ".tmp."));
  }
  [[nodiscard]] bool by_id(const struct stat &st) const {
    return S_ISREG(st.st_mode) &&
           std::any_of(files.begin(), files.end(), [&](const struct stat &f) { return same_file(f, st); });
  }
};

struct WalkRules {
  bool dereference = false;  // -L, or a Hugging Face cache snapshot
  OutputSkip skip;
  PackPlan *plan = nullptr;  // --dry-run: records what each --exclude matched and what was left out
};

std::string read_link(const std::string &path, std::size_t size_hint) {
  std::string buf(std::max<std::size_t>(size_hint, 64) + 1, '\0');
  for (;;) {
    const ssize_t n = ::readlink(path.c_str(), buf.data(), buf.size());
    if (n < 0) throw_errno("read link", path);
    if (static_cast<std::size_t>(n) < buf.size()) return buf.substr(0, static_cast<std::size_t>(n));
    buf.resize(buf.size() * 2);
  }
}

// Walks the source tree into nodes in BFS order so that every directory's children are
// consecutive inodes, sorted by name.
class Walker {
 public:
  Walker(const PackOptions &o, const WalkRules &r) : opts_(o), rules_(r) {
    if (rules_.plan)
      for (const auto &g : opts_.excludes) rules_.plan->excluded.emplace_back(g, std::vector<std::string>{});
  }
  std::vector<Node> walk() {
    Node root;
    root.source = opts_.source_dir;
    if (::lstat(opts_.source_dir.c_str(), &root.st) != 0) throw_errno("stat", opts_.source_dir);
    if (!S_ISDIR(root.st.st_mode)) throw UsageError(opts_.source_dir + " is not a directory");
    nodes_.push_back(std::move(root));
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      if (!S_ISDIR(nodes_[i].st.st_mode)) continue;
      list_dir(i);
    }
    // BFS order: children were appended in sorted order, directory by directory.
    for (std::size_t i = 0; i < nodes_.size(); ++i) nodes_[i].ino = static_cast<std::uint32_t>(i);
    if (nodes_.size() > format::kMaxInodes) throw UsageError("too many entries for one package");
    return std::move(nodes_);
  }

 private:
  void list_dir(std::size_t idx) {
    const std::string dir_path = full(nodes_[idx].rel);
    if (depth_of(idx) >= format::kMaxDepth)
      throw UsageError(fmt::format("{}: directory tree deeper than {} levels", dir_path, format::kMaxDepth));
    std::unique_ptr<DIR, int (*)(DIR *)> d(::opendir(dir_path.c_str()), ::closedir);
    if (!d) throw_errno("open directory", dir_path);
    std::vector<std::string> names;
    errno = 0;
    while (dirent *e = ::readdir(d.get())) {
      std::string nm = e->d_name;
      if (nm != "." && nm != "..") names.push_back(std::move(nm));
    }
    std::sort(names.begin(), names.end());
    for (auto &nm : names) {
      const std::string rel = nodes_[idx].rel.empty() ? nm : nodes_[idx].rel + "/" + nm;
      if (excluded(rel, nm)) continue;
      if (rules_.skip.by_name(nodes_[idx].st, nm)) {
        left_out(rel);
        continue;
      }
      if (auto why = name_problem(nm)) throw UsageError(fmt::format("{}: cannot pack this name: {}", full(rel), *why));
      if (idx == 0 && nm == format::kReservedRootName)
        throw UsageError(full(rel) + ": the name .torshpkg is reserved at the package root");
      Node n;
      n.name = nm;
      n.rel = rel;
      n.source = full(rel);
      n.parent = static_cast<std::uint32_t>(idx);
      if (::lstat(full(rel).c_str(), &n.st) != 0) throw_errno("stat", full(rel));
      if (S_ISLNK(n.st.st_mode)) {
        n.link_target = read_link(full(rel), static_cast<std::size_t>(n.st.st_size));
        std::optional<std::string> not_followed;
        if (rules_.dereference) not_followed = follow(n, idx);
        if (!n.followed) check_link(n, not_followed);
      } else if (!S_ISDIR(n.st.st_mode) && !S_ISREG(n.st.st_mode)) {
        if (opts_.warn) opts_.warn(fmt::format("skipping {}: not a regular file, directory or symlink", full(rel)));
        continue;
      }
      if (rules_.skip.by_id(n.st)) {
        left_out(rel);
        continue;
      }
      nodes_[idx].children.push_back(nodes_.size());
      nodes_.push_back(std::move(n));
    }
  }
  bool excluded(const std::string &rel, const std::string &name) {
    bool any = false;
    for (std::size_t i = 0; i < opts_.excludes.size(); ++i) {
      if (!matches(opts_.excludes[i], rel, name)) continue;
      if (!rules_.plan) return true;
      any = true;  // a dry run lists every pattern that matched
      rules_.plan->excluded[i].second.push_back(rel);
    }
    return any;
  }
  void left_out(const std::string &rel) {
    if (rules_.plan) rules_.plan->left_out.push_back(rel);
  }
  // -L: makes `n` the regular file or directory its link points to. Returns why it cannot (a
  // dangling link, a device, ...): the link is then kept.
  std::optional<std::string> follow(Node &n, std::size_t parent) {
    struct stat t {};
    if (::stat(n.source.c_str(), &t) != 0) return std::string(std::strerror(errno));
    if (S_ISDIR(t.st_mode)) {
      for (std::size_t a = parent;; a = nodes_[a].parent) {
        if (same_file(nodes_[a].st, t))
          throw UsageError(fmt::format("{} -> {}: a symlink loop (it points to {}), which -L cannot store", n.source,
                                       n.link_target, full(nodes_[a].rel)));
        if (a == 0) break;
      }
    } else if (S_ISREG(t.st_mode)) {
      // A real path, so that the packer and the format checks can open it with O_NOFOLLOW.
      std::unique_ptr<char, decltype(&std::free)> real(::realpath(n.source.c_str(), nullptr), &std::free);
      if (!real) return std::string(std::strerror(errno));
      n.source = real.get();
    } else {
      return std::string("it points to a device, FIFO or socket");
    }
    n.st = t;
    n.followed = true;
    return std::nullopt;
  }
  // A symlink kept as a link: a target outside the tree will dangle once packed.
  void check_link(const Node &n, const std::optional<std::string> &not_followed) const {
    if (auto why = symlink_problem(n.link_target)) throw UsageError(fmt::format("{}: {}", n.source, *why));
    const bool leaves = leaves_tree(n.rel, n.link_target);
    if (!leaves && !not_followed) return;
    std::string msg = leaves ? fmt::format("{} -> {} points outside {}: it will dangle in the package", n.source,
                                           n.link_target, opts_.source_dir)
                             : fmt::format("{} -> {}", n.source, n.link_target);
    struct stat t {};
    if (not_followed)
      msg += fmt::format(" (-L cannot follow it: {}; kept as a symlink)", *not_followed);
    else if (::stat(n.source.c_str(), &t) != 0)
      msg += " (it dangles here too)";  // -L could not help: no point suggesting it
    else
      msg += "; -L (--dereference) stores the file it points to instead";
    if (leaves && opts_.strict) throw UsageError("--strict: " + msg);
    if (opts_.warn) opts_.warn(msg);
  }
  std::uint32_t depth_of(std::size_t idx) const {
    std::uint32_t d = 0;
    for (; idx != 0; idx = nodes_[idx].parent) ++d;
    return d;
  }
  std::string full(const std::string &rel) const {
    return rel.empty() ? opts_.source_dir : opts_.source_dir + "/" + rel;
  }

  const PackOptions &opts_;
  const WalkRules &rules_;
  std::vector<Node> nodes_;
};

struct Encoded {
  std::vector<std::uint8_t> stored;
  format::Codec codec = format::Codec::kStored;
  format::Filter filter = format::Filter::kNone;
  std::uint32_t decoded_size = 0;
  Digest digest{};
  // What each attempt produced, for the per-file filter decision (0: not tried).
  std::size_t plain_size = 0;
  std::array<std::size_t, 4> filtered_size{};
};

struct FilterTry {
  format::Filter filter;
  unsigned phase;
};

// Encodes one chunk: plain zstd and/or each filter candidate; keeps the smallest, or stores the raw
// bytes when nothing saves ChunkEncoder::kMinSavingPercent.
Encoded encode_chunk(const std::vector<std::uint8_t> &raw, int level, bool try_plain,
                     const std::vector<FilterTry> &tries, const Sealer *sealer) {
  thread_local std::unique_ptr<ChunkEncoder> enc;
  thread_local int enc_level = 0;
  thread_local std::vector<std::uint8_t> attempt;
  if (!enc || enc_level != level) enc = std::make_unique<ChunkEncoder>(level), enc_level = level;
  Encoded e;
  e.decoded_size = static_cast<std::uint32_t>(raw.size());
  e.codec = format::Codec::kStored;
  const std::size_t worth = raw.size() * (100 - ChunkEncoder::kMinSavingPercent) / 100;
  auto keep = [&](format::Codec codec, format::Filter filter) {
    if (attempt.size() <= worth && (e.codec == format::Codec::kStored || attempt.size() < e.stored.size())) {
      e.stored.swap(attempt);
      e.codec = codec;
      e.filter = filter;
    }
  };
  if (try_plain) {
    e.plain_size = enc->encode(raw, attempt) == format::Codec::kZstd ? attempt.size() : raw.size();
    keep(format::Codec::kZstd, format::Filter::kNone);
  }
  for (const auto &t : tries) {
    if (t.phase > raw.size()) continue;
    e.filtered_size[static_cast<unsigned>(t.filter)] = enc->encode_filtered(t.filter, t.phase, raw, attempt);
    keep(format::Codec::kZstd, t.filter);
  }
  if (e.codec == format::Codec::kStored) e.stored.assign(raw.begin(), raw.end());  // nothing saved enough
  if (sealer) {
    const auto aad = chunk_aad(static_cast<std::uint8_t>(e.codec), static_cast<std::uint8_t>(e.filter), e.decoded_size);
    sealer->seal(aad, e.stored, attempt);
    e.stored.swap(attempt);
  }
  e.digest = sha256(e.stored);
  return e;
}

// Per-file filter policy. Safetensors files: the dtype under each chunk picks the filter, and the
// first few chunks per dtype also try plain zstd so that a dtype whose values do not group well
// falls back. Other weight files: sample the first chunks with each filter, keep the best only if it
// beats plain zstd by 3%.
class FilterPlan {
 public:
  FilterPlan() = default;
  FilterPlan(std::vector<TensorRange> ranges, bool sample) : ranges_(std::move(ranges)), sample_(sample) {}

  // True when the choice for this chunk waits on trial results still in flight: the caller then
  // commits finished chunks first, so the choice (and the package bytes) never depend on timing or
  // on the number of threads.
  [[nodiscard]] bool waiting(std::uint64_t chunk_begin, std::size_t len) const {
    if (sample_) return sample_submitted_ >= kSampleChunks && sampled_ < kSampleChunks;
    const auto t = target(chunk_begin, len);
    if (!t) return false;
    const auto &st = stats_[static_cast<unsigned>(t->filter)];
    return st.submitted >= kTrialChunks && st.trials < kTrialChunks;
  }

  void choose(std::uint64_t chunk_begin, std::size_t len, bool &try_plain, std::vector<FilterTry> &tries) {
    tries.clear();
    try_plain = true;
    if (sample_) {
      if (sample_submitted_ < kSampleChunks) {
        ++sample_submitted_;
        tries = {{format::Filter::kBf16, 0}, {format::Filter::kFp32, 0}};
      } else if (sample_choice_ != format::Filter::kNone) {
        tries = {{sample_choice_, 0}};
        try_plain = false;
      }
      return;
    }
    const auto t = target(chunk_begin, len);
    if (!t) return;
    auto &st = stats_[static_cast<unsigned>(t->filter)];
    if (st.submitted < kTrialChunks) {
      ++st.submitted;
      tries = {*t};
    } else if (st.filter_wins * 2 >= st.trials) {
      tries = {*t};
      try_plain = false;
    }
  }

  void learn(const Encoded &e) {
    if (sample_) {
      if (sampled_ >= kSampleChunks || e.plain_size == 0) return;
      sample_plain_ += e.plain_size;
      for (unsigned f = 1; f < 4; ++f) sample_filtered_[f] += e.filtered_size[f];
      if (++sampled_ == kSampleChunks) {
        std::size_t best = sample_plain_ * 97 / 100;  // a filter must win by 3%
        for (unsigned f = 1; f < 4; ++f)
          if (sample_filtered_[f] && sample_filtered_[f] < best)
            best = sample_filtered_[f], sample_choice_ = format::Filter(f);
      }
      return;
    }
    for (unsigned f = 1; f < 4; ++f) {
      if (!e.filtered_size[f] || !e.plain_size) continue;
      auto &st = stats_[f];
      ++st.trials;
      if (e.filtered_size[f] < e.plain_size) ++st.filter_wins;
    }
  }

 private:
  // The filter and phase for a chunk: the (filter, phase) pair whose tensors cover most of it, at
  // least half. Summing over tensors matters: a chunk is often many small tensors of one dtype
  // (norms, biases, small projections), and 2-byte tensors in safetensors usually share a phase.
  [[nodiscard]] std::optional<FilterTry> target(std::uint64_t chunk_begin, std::size_t len) const {
    std::array<std::array<std::uint64_t, 4>, 4> cover{};  // [filter][phase] -> bytes of the chunk
    const std::uint64_t chunk_end = chunk_begin + len;
    auto it = std::upper_bound(ranges_.begin(), ranges_.end(), chunk_begin,
                               [](std::uint64_t v, const TensorRange &r) { return v < r.begin; });
    if (it != ranges_.begin()) --it;
    for (; it != ranges_.end() && it->begin < chunk_end; ++it) {
      const std::uint64_t lo = std::max(it->begin, chunk_begin), hi = std::min(it->end, chunk_end);
      if (hi <= lo) continue;
      const auto f = filter_for_dtype(it->dtype);
      if (!f) continue;
      // The phase aligns the planes with the tensor's elements.
      const unsigned w = filter_width(*f);
      const unsigned phase = it->begin >= chunk_begin ? static_cast<unsigned>((it->begin - chunk_begin) % w)
                                                      : static_cast<unsigned>((w - (chunk_begin - it->begin) % w) % w);
      cover[static_cast<unsigned>(*f)][phase] += hi - lo;
    }
    std::optional<FilterTry> best;
    std::uint64_t best_cover = 0;
    for (unsigned f = 1; f < 4; ++f)
      for (unsigned phase = 0; phase < 4; ++phase)
        if (cover[f][phase] > best_cover) best_cover = cover[f][phase], best = FilterTry{format::Filter(f), phase};
    if (best_cover * 2 < len) return std::nullopt;
    return best;
  }

  static constexpr unsigned kTrialChunks = 4, kSampleChunks = 2;
  struct Stats {
    unsigned submitted = 0, trials = 0, filter_wins = 0;
  };
  std::vector<TensorRange> ranges_;
  bool sample_ = false;
  std::array<Stats, 4> stats_{};
  unsigned sampled_ = 0, sample_submitted_ = 0;
  std::size_t sample_plain_ = 0;
  std::array<std::size_t, 4> sample_filtered_{};
  format::Filter sample_choice_ = format::Filter::kNone;
};

std::string iso8601_utc(std::time_t t) {
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Reproducible builds: SOURCE_DATE_EPOCH, when set, is the creation time and clamps file mtimes.
std::optional<std::time_t> source_date_epoch() {
  const char *sde = std::getenv("SOURCE_DATE_EPOCH");
  if (!sde || !*sde) return std::nullopt;
  char *end = nullptr;
  errno = 0;
  const long long v = std::strtoll(sde, &end, 10);
  if (errno != 0 || !end || *end != '\0' || v < 0)
    throw UsageError(fmt::format("SOURCE_DATE_EPOCH='{}' is not a number of seconds", sde));
  return static_cast<std::time_t>(v);
}

// What is known of the output before anything is read; the dry run stops here.
struct OutputTarget {
  bool to_stdout = false;
  bool seekable = true;  // the header can be rewritten in place once the chunks are written
  std::string dir;       // the directory the output goes in
  std::string name;      // its base name
  std::optional<struct stat> existing;
};

// Refuses, before anything is read or compressed, an output that cannot or must not be written.
OutputTarget check_output(const PackOptions &o, bool force) {
  OutputTarget t;
  if (o.output == kStdoutName) {
    t.to_stdout = true;
    if (::isatty(STDOUT_FILENO))
      throw UsageError("refusing to write a package to a terminal: redirect standard output, or give -o FILE");
    struct stat st {};
    if (::fstat(STDOUT_FILENO, &st) != 0) throw_errno("stat", "standard output");
    // O_APPEND makes pwrite() append on Linux: no rewriting the header there either.
    const int flags = ::fcntl(STDOUT_FILENO, F_GETFL);
    t.seekable = S_ISREG(st.st_mode) && flags >= 0 && !(flags & O_APPEND) && ::lseek(STDOUT_FILENO, 0, SEEK_CUR) >= 0;
    if (!t.seekable && o.filters)
      throw UsageError(
          "cannot write a package to a pipe/stdout: standard output is not a seekable file, and with --filters auto "
          "the packer rewrites the header after the chunks (to declare the filters it used); add --filters none "
          "to stream the package, or give -o FILE");
    if (S_ISREG(st.st_mode)) t.existing = st;  // redirected into a file, perhaps inside the tree
    return t;
  }
  if (o.output.ends_with('/')) throw UsageError(fmt::format("-o {}: give the package's file name", o.output));
  const std::filesystem::path path(o.output);
  t.dir = path.has_parent_path() ? path.parent_path().string() : std::string(".");
  t.name = path.filename().string();
  struct stat st {};
  if (::lstat(o.output.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode))
      throw UsageError(fmt::format("{} is a directory; give the package's file name, e.g. -o {}", o.output,
                                   (path / "NAME.tpkg").string()));
    if (!force) throw UsageError(o.output + " exists; use --force to replace it");
    t.existing = st;
  } else if (errno != ENOENT) {
    throw_errno("stat", o.output);
  }
  struct stat d {};
  if (::stat(t.dir.c_str(), &d) != 0) throw_errno("use the output directory", t.dir);
  if (!S_ISDIR(d.st_mode)) throw_errno("use the output directory", t.dir, ENOTDIR);
  if (::access(t.dir.c_str(), W_OK | X_OK) != 0) throw_errno("write in the output directory", t.dir);
  return t;
}

OutputSkip skip_for(const OutputTarget &t, const UniqueFd &temp) {
  OutputSkip s;
  if (!t.to_stdout) {
    struct stat d {};
    if (::stat(t.dir.c_str(), &d) == 0) s.dir = d;
    s.name = t.name;
  }
  if (t.existing) s.files.push_back(*t.existing);
  struct stat st {};
  if (temp && ::fstat(temp.get(), &st) == 0) s.files.push_back(st);
  return s;
}

// Renames `from` to `to` unless `to` exists: without --force a file made there meanwhile is kept.
void rename_new(const std::string &from, const std::string &to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return;
  if (errno == EEXIST) throw UsageError(to + " was created while packing; use --force to replace it");
  if (errno != EINVAL && errno != ENOSYS) throw_errno("rename to " + to, from);
  // No RENAME_NOREPLACE on this file system: link() refuses an existing name as well.
  if (::link(from.c_str(), to.c_str()) == 0) {
    ::unlink(from.c_str());
    return;
  }
  if (errno == EEXIST) throw UsageError(to + " was created while packing; use --force to replace it");
  if (errno != EPERM && errno != EOPNOTSUPP) throw_errno("rename to " + to, from);
  // Nor hard links (vfat, some FUSE file systems): check, then rename.
  struct stat st {};
  if (::lstat(to.c_str(), &st) == 0) throw UsageError(to + " was created while packing; use --force to replace it");
  if (::rename(from.c_str(), to.c_str()) != 0) throw_errno("rename to " + to, from);
}

// The package's destination: a temporary file beside FILE, synced and renamed into place by
// commit() and removed otherwise (a failed or interrupted pack leaves nothing), or standard output.
// Made before the walk, so that an unwritable output fails before anything is read.
class Output {
 public:
  Output(const PackOptions &o, bool force) : target_(check_output(o, force)), final_(o.output), force_(force) {
    if (target_.to_stdout) {
      fd_ = STDOUT_FILENO;
      if (target_.seekable) base_ = static_cast<std::uint64_t>(::lseek(STDOUT_FILENO, 0, SEEK_CUR));
    } else {
      std::string templ = final_ + ".tmp.XXXXXX";
      const int fd = ::mkstemp(templ.data());
      if (fd < 0) throw_errno("create", templ);
      temp_.reset(fd);
      tmp_ = templ;
      fd_ = fd;
      ::fchmod(fd, 0644);
    }
    skip_ = skip_for(target_, temp_);
  }
  ~Output() {
    if (!tmp_.empty() && !committed_) ::unlink(tmp_.c_str());
  }
  Output(const Output &) = delete;
  Output &operator=(const Output &) = delete;

  [[nodiscard]] int fd() const noexcept { return fd_; }
  [[nodiscard]] bool seekable() const noexcept { return target_.seekable; }
  [[nodiscard]] std::uint64_t base() const noexcept { return base_; }  // where the package starts in fd()
  [[nodiscard]] std::string name() const { return target_.to_stdout ? "standard output" : final_; }
  [[nodiscard]] const OutputSkip &skip() const noexcept { return skip_; }

  void commit() {
    if (target_.to_stdout) {
      // A pipe cannot be synced; a file can, like any other output.
      if (target_.seekable && ::fsync(fd_) != 0) throw_errno("fsync", name());
      return;
    }
    if (::fsync(fd_) != 0) throw_errno("fsync", tmp_);
    temp_.reset();
    if (force_) {
      if (::rename(tmp_.c_str(), final_.c_str()) != 0) throw_errno("rename to " + final_, tmp_);
    } else {
      rename_new(tmp_, final_);
    }
    committed_ = true;
    UniqueFd d(::open(target_.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (d) ::fsync(d.get());  // makes the rename durable; failing here loses nothing already written
  }

 private:
  OutputTarget target_;
  std::string final_, tmp_;
  bool force_;
  UniqueFd temp_;
  int fd_ = -1;
  std::uint64_t base_ = 0;
  OutputSkip skip_;
  bool committed_ = false;
};

// -L, --no-dereference, or (by default) whether the source is a Hugging Face cache snapshot.
bool dereference_for(const PackOptions &o, const PackExtras &x) {
  if (x.dereference != Dereference::kAuto) return x.dereference == Dereference::kAlways;
  if (!hf_cache_snapshot(o.source_dir)) return false;
  if (x.note)
    x.note(
        fmt::format("{} is a Hugging Face cache snapshot: storing the files its symlinks point to, as -L does "
                    "(--no-dereference keeps the links)",
                    o.source_dir));
  return true;
}

// Recognises model formats in the walked tree (model_formats.hpp) before any data is written, so
// that --strict fails fast; the result goes into the manifest's "formats".
nlohmann::ordered_json analyse_model_formats(const PackOptions &opts, const std::vector<Node> &nodes) {
#if !TORSHPKG_WITH_ANALYSIS
  // Built with -Danalysis=disabled: the manifest's "formats" stays empty.
  (void)nodes;
  if (opts.strict) throw UsageError("--strict needs the model-format analysis, which this build does not include");
  return nlohmann::ordered_json::object();
#else
  std::vector<TreeEntry> entries;
  entries.reserve(nodes.size());
  for (const auto &n : nodes) {
    TreeEntry e;
    e.path = n.rel;
    e.source = n.source;
    e.type = S_ISDIR(n.st.st_mode)   ? TreeEntry::Type::kDirectory
             : S_ISLNK(n.st.st_mode) ? TreeEntry::Type::kSymlink
                                     : TreeEntry::Type::kFile;
    e.size = S_ISREG(n.st.st_mode) ? static_cast<std::uint64_t>(n.st.st_size) : 0;
    if (S_ISLNK(n.st.st_mode)) e.link_target = n.link_target;
    entries.push_back(std::move(e));
  }
  auto a = analyse_formats(entries, opts.cancel);
  if (opts.warn) {
    for (const auto &p : a.problems) opts.warn(p);
    for (const auto &p : a.notes) opts.warn(p);
  }
  if (opts.strict && !a.problems.empty())
    throw UsageError(fmt::format("--strict: {} model format problem{} found, the first: {}", a.problems.size(),
                                 a.problems.size() == 1 ? "" : "s", a.problems.front()));
  return std::move(a.formats);
#endif
}

class Packer {
 public:
  Packer(const PackOptions &o, const PackExtras &x)
      : opts_(o),
        extras_(x),
        chunk_size_(1u << o.chunk_shift),
        pool_(o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency())) {}

  PackResult run() {
    Output out(opts_, extras_.force);  // before the walk: the tree it lives in must leave it out
    out_name_ = out.name();
    WalkRules rules;
    rules.dereference = dereference_for(opts_, extras_);
    rules.skip = out.skip();
    nodes_ = Walker(opts_, rules).walk();
    for (const auto &n : nodes_)
      if (S_ISREG(n.st.st_mode))
        progress_.bytes_total += static_cast<std::uint64_t>(n.st.st_size), ++progress_.files_total;
    formats_json_ = analyse_model_formats(opts_, nodes_);

    fd_ = out.fd();
    header_.chunk_shift = static_cast<std::uint8_t>(opts_.chunk_shift);
    start_encryption();
    format::encode(header_, std::span(header_bytes_));
    write_all(fd_, header_bytes_, out_name());
    pos_ = format::kHeaderSize;

    inodes_.resize(nodes_.size());
    for (auto &n : nodes_) {
      if (S_ISREG(n.st.st_mode)) pack_file(n);
      if (S_ISDIR(n.st.st_mode)) ++result_.directories;
      if (S_ISLNK(n.st.st_mode)) ++result_.symlinks;
    }
    while (!inflight_.empty()) commit_one();
    report(true);
    if (result_.filtered_chunks) {
      // Readers that do not know filters must refuse this package: declare them in the header.
      header_.incompat_flags |= format::incompat::kFilters;
      format::encode(header_, std::span(header_bytes_));
      if (!out.seekable()) throw InternalError("filtered chunks in a package streamed to a pipe");
      if (::pwrite(fd_, header_bytes_.data(), header_bytes_.size(), static_cast<off_t>(out.base())) !=
          static_cast<ssize_t>(header_bytes_.size()))
        throw_errno("write", out_name());
    }
    write_index();
    out.commit();
    result_.package_bytes = pos_;
    return result_;
  }

 private:
  const std::string &out_name() const { return out_name_; }

  // A fresh content key, wrapped for every recipient and passphrase; the header declares it.
  void start_encryption() {
    if (opts_.encrypt_to.empty() && opts_.encrypt_passphrases.empty()) return;
    const auto key = ContentKey::generate();
    std::vector<KeyStanza> stanzas;
    for (const auto &r : opts_.encrypt_to) {
      const bool dup = std::any_of(stanzas.begin(), stanzas.end(), [&](const auto &s) { return s.id == r.id(); });
      if (!dup) stanzas.push_back(wrap_for(r, key));
    }
    for (const auto &p : opts_.encrypt_passphrases) stanzas.push_back(wrap_for_passphrase(p, key, opts_.scrypt_log_n));
    key_block_ = encode_key_block(stanzas);  // refuses more than 64
    result_.recipients = stanzas.size();
    sealer_ = std::make_unique<Sealer>(key);
    header_.incompat_flags |= format::incompat::kEncrypted;
    header_.cipher = crypt::kCipherAes256Gcm;
    header_.crypt_flags = opts_.seal_names ? crypt::kFlagSealedNames : 0;
    header_.key_check = key.check();
  }

  void check_cancel() const {
    if (opts_.cancel && opts_.cancel->load()) throw Interrupted();
  }

  void report(bool force) {
    if (!opts_.progress) return;
    const auto now = std::chrono::steady_clock::now();
    if (!force && now - last_report_ < std::chrono::milliseconds(100)) return;
    last_report_ = now;
    opts_.progress(progress_);
  }

  void pack_file(const Node &n) {
    const std::string &path = n.source;
    UniqueFd fd = open_read(path, O_NOFOLLOW);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw_errno("stat", path);
    const auto size = static_cast<std::uint64_t>(st.st_size);
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);

    auto &meta = manifest_.files.emplace_back();  // the reference lives until the next file
    meta.path = n.rel;
    const std::uint64_t first_chunk = submitted_;  // chunks commit in submission order
    // The whole-file digest is one serial SHA-256 per file: on its own thread it overlaps with
    // reading and encoding instead of holding up the thread that feeds the encoders.
    auto whole = std::make_shared<Sha256>();
    std::deque<std::future<void>> hashing;
    const std::size_t window = 2 * pool_.size() + 2;  // bounds memory at window * 3 chunks
    std::uint64_t done = 0;
    format::FileKind kind = format::FileKind::kOther;
    auto plan = std::make_shared<FilterPlan>();
    bool try_plain = true;
    std::vector<FilterTry> tries;
    for (;;) {
      check_cancel();
      // Sized to what is left (zero-filling a whole chunk for every small file was half the CPU
      // of packing 10,000 of them); one byte past the end tells a file that grew.
      const std::uint64_t left = size > done ? size - done : 1;
      auto raw = std::make_shared<std::vector<std::uint8_t>>(std::min<std::uint64_t>(chunk_size_, left));
      const std::size_t got = read_full(fd.get(), *raw, path);
      if (got == 0) break;
      raw->resize(got);
      if (done == 0) {
        kind = detect_kind(n.rel, *raw);
        auto ranges = summarise_safetensors(fd.get(), path, size, *raw, meta);
        const bool sample = ranges.empty() && weights_without_tensor_index(n.rel);
        if (opts_.filters && (sample || !ranges.empty())) *plan = FilterPlan(std::move(ranges), sample);
      }
      if (size <= chunk_size_) {
        whole->update(*raw);  // one chunk: a round trip to the hasher would hold up the next file
      } else {
        hashing.push_back(hasher_.submit([whole, raw] { whole->update(*raw); }));
        while (hashing.size() >= window) hashing.front().get(), hashing.pop_front();
      }
      if (opts_.filters) {
        while (plan->waiting(done, got) && !inflight_.empty()) commit_one();
        plan->choose(done, got, try_plain, tries);
      }
      done += got;
      if (done > size) throw IoError(path + ": file grew while it was being packed", EIO);
      inflight_.push_back({pool_.submit([raw, level = opts_.level, try_plain, tries, sealer = sealer_.get()] {
                             return encode_chunk(*raw, level, try_plain, tries, sealer);
                           }),
                           plan});
      ++submitted_;
      while (inflight_.size() >= window) commit_one();
      progress_.bytes_done += got;
      report(false);
    }
    // No wait for this file's chunks: small files pipeline through the encoders one after another.
    for (auto &h : hashing) h.get();
    if (done != size) throw IoError(path + ": file shrank while it was being packed", EIO);

    if (size == 0) kind = detect_kind(n.rel, {});
    auto &e = inodes_[n.ino];
    e.size = size;
    e.first = size ? static_cast<std::uint32_t>(first_chunk) : 0;
    e.kind = kind;
    meta.kind = format::kind_name(kind);
    meta.size = size;
    meta.sha256 = whole->finish();
    ++result_.files;
    ++progress_.files_done;
    result_.raw_bytes += size;
  }

  void commit_one() {
    Encoded enc = inflight_.front().encoded.get();
    const auto plan = std::move(inflight_.front().plan);
    inflight_.pop_front();
    plan->learn(enc);
    format::ChunkEntry c;
    c.codec = enc.codec;
    c.filter = enc.filter;
    if (enc.filter != format::Filter::kNone) ++result_.filtered_chunks;
    c.decoded_size = enc.decoded_size;
    c.stored_size = static_cast<std::uint32_t>(enc.stored.size());
    c.digest = enc.digest;
    // Equal digests mean equal stored bytes, but the same bytes can be a stored chunk of one file and
    // a zstd frame of another: share only when the entries would describe the bytes identically.
    const auto it = dedup_.find(enc.digest);
    if (it != dedup_.end() && it->second.codec == c.codec && it->second.filter == c.filter &&
        it->second.decoded_size == c.decoded_size) {
      c.offset = it->second.offset;
      result_.dedup_saved_bytes += c.stored_size;
    } else {
      c.offset = pos_;
      write_all(fd_, enc.stored, out_name());
      pos_ += enc.stored.size();
      dedup_.emplace(enc.digest, c);
      result_.stored_bytes += c.stored_size;
      ++result_.unique_chunks;
    }
    if (chunks_.size() >= (1ull << 32)) throw UsageError("too many chunks for one package; use a larger --chunk-size");
    chunks_.push_back(c);
    ++result_.chunks;
  }

  // Records the summary in the manifest and returns the tensors' byte ranges (empty if not safetensors).
  std::vector<TensorRange> summarise_safetensors(int fd, const std::string &path, std::uint64_t size,
                                                 const std::vector<std::uint8_t> &first, ManifestFile &meta) {
    if (first.size() < 9 || first[8] != '{') return {};
    const std::uint64_t n = load_le<std::uint64_t>(first.data());
    if (n > kMaxSafetensorsHeader || !range_within(8, n, size)) return {};
    std::vector<std::uint8_t> head(8 + n);
    if (head.size() <= first.size())
      std::copy_n(first.begin(), head.size(), head.begin());
    else
      pread_exact(fd, head, 0, path);
    try {
      if (auto s = parse_safetensors(head, size)) {
        meta.safetensors = ManifestFile::Safetensors{s->tensors, s->parameters, s->dtypes};
        return std::move(s->ranges);
      }
    } catch (const FormatError &e) {
      if (opts_.warn) opts_.warn(fmt::format("{}: {}", path, e.what()));
    }
    return {};
  }

  void write_index() {
    format::StringTable strings;
    for (const auto &n : nodes_) {
      auto &e = inodes_[n.ino];
      e.mode = (n.st.st_mode & S_IFMT) | (n.st.st_mode & 0777);
      e.parent = n.parent;
      e.mtime_sec = n.st.st_mtim.tv_sec;
      e.mtime_nsec = static_cast<std::uint32_t>(n.st.st_mtim.tv_nsec);
      if (epoch_ && e.mtime_sec >= *epoch_) e.mtime_sec = *epoch_, e.mtime_nsec = 0;
      if (n.ino != 0) {
        e.name_offset = strings.add(n.name);
        e.name_length = static_cast<std::uint32_t>(n.name.size());
      }
      if (S_ISDIR(n.st.st_mode)) {
        e.size = n.children.size();
        e.first = n.children.empty() ? 0 : nodes_[n.children.front()].ino;
      } else if (S_ISLNK(n.st.st_mode)) {
        e.size = n.link_target.size();
        e.first = strings.add(n.link_target);
      }
    }
    std::string manifest = build_manifest();
    std::vector<std::uint8_t> string_bytes = strings.bytes();
    if (sealer_ && opts_.seal_names) {
      std::vector<std::uint8_t> sealed;
      sealer_->seal(as_bytes(kStringsAad), string_bytes, sealed);
      string_bytes.swap(sealed);
      sealer_->seal(as_bytes(kManifestAad), as_bytes(manifest), sealed);
      manifest.assign(sealed.begin(), sealed.end());
      if (manifest.size() > format::kMaxManifestSize) throw UsageError("the manifest is too large to seal");
    }

    const auto index = format::encode_index(chunks_, inodes_, string_bytes, manifest);

    auto f = format::footer_for(pos_, chunks_.size(), inodes_.size(), string_bytes.size(), manifest.size());
    std::array<std::uint8_t, format::kFooterSize> footer{};
    format::encode(f, std::span(footer));
    Sha256 root;
    root.update(header_bytes_);
    root.update(std::span(footer).first<format::kFooterRootedSize>());
    root.update(index);
    f.root_digest = root.finish();
    // Signatures vouch for the root; their location lies outside it (footer bytes 48..64).
    // The tail: the key block (encrypted packages), then the signatures.
    std::vector<std::uint8_t> tail = key_block_;
    const auto signatures = signature_block_for(f.root_digest, opts_.sign_with);
    tail.insert(tail.end(), signatures.begin(), signatures.end());
    if (!tail.empty()) {
      f.signature_offset = pos_ + index.size();
      f.signature_size = tail.size();
    }
    format::encode(f, std::span(footer));
    write_all(fd_, index, out_name());
    write_all(fd_, tail, out_name());
    write_all(fd_, footer, out_name());
    pos_ += index.size() + tail.size() + footer.size();
    result_.root = f.root_digest;
    result_.signatures = opts_.sign_with.size();
  }

  std::string build_manifest() {
    auto &m = manifest_;
    m.name = opts_.name;
    m.version = opts_.version;
    m.description = opts_.description;
    m.authors = opts_.authors;
    m.license = opts_.license;
    m.created = iso8601_utc(epoch_ ? *epoch_ : std::time(nullptr));
    m.tool = fmt::format("torshpkg {}", kVersion);
    m.dependencies = opts_.dependencies;
    m.chunk_size = chunk_size_;
    m.formats = std::move(formats_json_);
    return m.serialize();
  }

  const PackOptions &opts_;
  const PackExtras &extras_;
  std::string out_name_;
  const std::uint32_t chunk_size_;
  const std::optional<std::time_t> epoch_ = source_date_epoch();
  ThreadPool pool_;
  // Chunks handed to the encoders and not yet written, across files, in submission order.
  struct InFlight {
    std::future<Encoded> encoded;
    std::shared_ptr<FilterPlan> plan;  // of the chunk's file: learns from trial results
  };
  std::deque<InFlight> inflight_;
  std::uint64_t submitted_ = 0;
  ThreadPool hasher_{1};  // one thread: whole-file digests take chunks in order
  std::vector<Node> nodes_;
  std::vector<format::InodeEntry> inodes_;
  std::vector<format::ChunkEntry> chunks_;
  std::unordered_map<Digest, format::ChunkEntry, DigestHash> dedup_;  // digest of stored bytes -> first entry
  Manifest manifest_;  // files appended as they are packed, the rest filled in at the end
  nlohmann::ordered_json formats_json_ = nlohmann::ordered_json::object();
  format::Header header_;
  std::array<std::uint8_t, format::kHeaderSize> header_bytes_{};
  std::unique_ptr<Sealer> sealer_;       // encrypted packages only
  std::vector<std::uint8_t> key_block_;  // written first in the tail
  int fd_ = -1;
  std::uint64_t pos_ = 0;
  PackResult result_;
  PackProgress progress_;
  std::chrono::steady_clock::time_point last_report_{};
};

// The options with their defaults filled in, or a UsageError before any work.
PackOptions normalised(const PackOptions &in, bool need_output) {
  PackOptions o = in;
  while (o.source_dir.size() > 1 && o.source_dir.back() == '/') o.source_dir.pop_back();
  if (o.name.empty()) {
    auto base = std::filesystem::absolute(o.source_dir).lexically_normal().filename().string();
    if (base.empty())
      base = std::filesystem::absolute(o.source_dir).lexically_normal().parent_path().filename().string();
    o.name = base;
  }
  if (!valid_package_name(o.name))
    throw UsageError(fmt::format("package name '{}': use 1-214 characters of letters, digits, -_./@", o.name));
  if (!valid_semver(o.version))
    throw UsageError(fmt::format("version '{}' is not a semantic version (MAJOR.MINOR.PATCH)", o.version));
  if (o.chunk_shift < format::kMinChunkShift || o.chunk_shift > format::kMaxChunkShift)
    throw UsageError("chunk size must be a power of two from 64 KiB to 4 MiB");
  if (need_output && o.output.empty()) throw UsageError("no output file given (-o FILE, or -o - for standard output)");
  (void)ChunkEncoder(o.level);  // rejects a bad level before any work
  auto check_text = [](std::string_view what, const std::string &v) {
    if (!valid_utf8(v)) throw UsageError(fmt::format("{} is not valid UTF-8", what));
  };
  check_text("--description", o.description);
  check_text("--license", o.license);
  for (const auto &a : o.authors) check_text("--author", a);
  return o;
}

}  // namespace

// The library's callers always had an existing output replaced: they keep that.
PackResult pack(const PackOptions &in) {
  PackExtras x;
  x.force = true;
  return pack(in, x);
}

PackResult pack(const PackOptions &in, const PackExtras &extras) {
  const PackOptions o = normalised(in, true);
  return Packer(o, extras).run();
}

void check_pack_output(const PackOptions &opts, const PackExtras &extras) {
  if (opts.output.empty()) throw UsageError("no output file given (-o FILE, or -o - for standard output)");
  (void)check_output(opts, extras.force);
}

PackPlan plan_pack(const PackOptions &in, const PackExtras &extras) {
  const PackOptions o = normalised(in, false);
  PackPlan plan;
  WalkRules rules;
  if (!o.output.empty()) rules.skip = skip_for(check_output(o, extras.force), UniqueFd());
  rules.plan = &plan;
  rules.dereference = plan.dereferencing = dereference_for(o, extras);
  const auto nodes = Walker(o, rules).walk();
  (void)analyse_model_formats(o, nodes);  // its warnings, and --strict, as in a real run
  for (const auto &n : nodes) {
    auto &e = plan.entries.emplace_back();
    e.path = n.rel;
    e.link_target = n.link_target;
    e.dereferenced = n.followed;
    if (S_ISDIR(n.st.st_mode)) {
      e.type = PlannedEntry::Type::kDirectory;
    } else if (S_ISLNK(n.st.st_mode)) {
      e.type = PlannedEntry::Type::kSymlink;
      e.size = n.link_target.size();  // what the package records as a link's size
    } else {
      e.type = PlannedEntry::Type::kFile;
      e.size = static_cast<std::uint64_t>(n.st.st_size);
      // The kind comes from the name and the first bytes (a safetensors header, a zip, "#!").
      std::array<std::uint8_t, 16> head{};
      UniqueFd fd = open_read(n.source, O_NOFOLLOW);
      const std::size_t got = read_full(fd.get(), head, n.source);
      e.kind = std::string(format::kind_name(detect_kind(n.rel, std::span(head).first(got))));
    }
  }
  return plan;
}

}  // namespace torshpkg
