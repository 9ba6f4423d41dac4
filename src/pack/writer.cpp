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
  std::string rel;  // path relative to the source root
  struct stat st {};
  std::string link_target;
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

// Unlinks the temporary output unless committed, so a failed or interrupted pack leaves nothing.
bool excluded(const std::vector<std::string> &globs, const std::string &rel, const std::string &name) {
  return std::any_of(globs.begin(), globs.end(), [&](const std::string &g) {
    return ::fnmatch(g.c_str(), rel.c_str(), FNM_PATHNAME) == 0 || ::fnmatch(g.c_str(), name.c_str(), 0) == 0;
  });
}

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
  Walker(const PackOptions &o) : opts_(o) {}
  std::vector<Node> walk() {
    Node root;
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
      if (excluded(opts_.excludes, rel, nm)) continue;
      if (auto why = name_problem(nm)) throw UsageError(fmt::format("{}: cannot pack this name: {}", full(rel), *why));
      if (idx == 0 && nm == format::kReservedRootName)
        throw UsageError(full(rel) + ": the name .torshpkg is reserved at the package root");
      Node n;
      n.name = nm;
      n.rel = rel;
      n.parent = static_cast<std::uint32_t>(idx);
      if (::lstat(full(rel).c_str(), &n.st) != 0) throw_errno("stat", full(rel));
      if (S_ISLNK(n.st.st_mode)) {
        n.link_target = read_link(full(rel), static_cast<std::size_t>(n.st.st_size));
        if (auto why = symlink_problem(n.link_target)) throw UsageError(fmt::format("{}: {}", full(rel), *why));
      } else if (!S_ISDIR(n.st.st_mode) && !S_ISREG(n.st.st_mode)) {
        if (opts_.warn) opts_.warn(fmt::format("skipping {}: not a regular file, directory or symlink", full(rel)));
        continue;
      }
      nodes_[idx].children.push_back(nodes_.size());
      nodes_.push_back(std::move(n));
    }
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
                     const std::vector<FilterTry> &tries) {
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

class Packer {
 public:
  explicit Packer(const PackOptions &o)
      : opts_(o),
        chunk_size_(1u << o.chunk_shift),
        pool_(o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency())) {}

  PackResult run() {
    nodes_ = Walker(opts_).walk();
    for (const auto &n : nodes_)
      if (S_ISREG(n.st.st_mode))
        progress_.bytes_total += static_cast<std::uint64_t>(n.st.st_size), ++progress_.files_total;
    analyse_model_formats();

    TempOutput out(opts_.output);
    fd_ = out.fd();
    format::Header header;
    header.chunk_shift = static_cast<std::uint8_t>(opts_.chunk_shift);
    format::encode(header, std::span(header_bytes_));
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
      format::Header header;
      header.chunk_shift = static_cast<std::uint8_t>(opts_.chunk_shift);
      header.incompat_flags |= format::incompat::kFilters;
      format::encode(header, std::span(header_bytes_));
      if (::pwrite(fd_, header_bytes_.data(), header_bytes_.size(), 0) != static_cast<ssize_t>(header_bytes_.size()))
        throw_errno("write", out_name());
    }
    write_index();
    out.commit();
    result_.package_bytes = pos_;
    return result_;
  }

 private:
  std::string out_name() const { return opts_.output; }
  // Recognises model formats in the walked tree (model_formats.hpp) before any data is written, so
  // that --strict fails fast; the result goes into the manifest's "formats".
  void analyse_model_formats() {
#if !TORSHPKG_WITH_ANALYSIS
    // Built with -Danalysis=disabled: the manifest's "formats" stays empty.
    if (opts_.strict) throw UsageError("--strict needs the model-format analysis, which this build does not include");
#else
    std::vector<TreeEntry> entries;
    entries.reserve(nodes_.size());
    for (const auto &n : nodes_) {
      TreeEntry e;
      e.path = n.rel;
      e.source = n.rel.empty() ? opts_.source_dir : opts_.source_dir + "/" + n.rel;
      e.type = S_ISDIR(n.st.st_mode)   ? TreeEntry::Type::kDirectory
               : S_ISLNK(n.st.st_mode) ? TreeEntry::Type::kSymlink
                                       : TreeEntry::Type::kFile;
      e.size = S_ISREG(n.st.st_mode) ? static_cast<std::uint64_t>(n.st.st_size) : 0;
      e.link_target = n.link_target;
      entries.push_back(std::move(e));
    }
    auto a = analyse_formats(entries, opts_.cancel);
    if (opts_.warn) {
      for (const auto &p : a.problems) opts_.warn(p);
      for (const auto &p : a.notes) opts_.warn(p);
    }
    if (opts_.strict && !a.problems.empty())
      throw UsageError(fmt::format("--strict: {} model format problem{} found, the first: {}", a.problems.size(),
                                   a.problems.size() == 1 ? "" : "s", a.problems.front()));
    formats_json_ = std::move(a.formats);
#endif
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
    const std::string path = opts_.source_dir + "/" + n.rel;
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
      inflight_.push_back({pool_.submit([raw, level = opts_.level, try_plain, tries] {
                             return encode_chunk(*raw, level, try_plain, tries);
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
    const std::string manifest = build_manifest();

    const auto index = format::encode_index(chunks_, inodes_, strings.bytes(), manifest);

    auto f = format::footer_for(pos_, chunks_.size(), inodes_.size(), strings.bytes().size(), manifest.size());
    std::array<std::uint8_t, format::kFooterSize> footer{};
    format::encode(f, std::span(footer));
    Sha256 root;
    root.update(header_bytes_);
    root.update(std::span(footer).first<format::kFooterRootedSize>());
    root.update(index);
    f.root_digest = root.finish();
    // Signatures vouch for the root; their location lies outside it (footer bytes 48..64).
    const auto signatures = signature_block_for(f.root_digest, opts_.sign_with);
    if (!signatures.empty()) {
      f.signature_offset = pos_ + index.size();
      f.signature_size = signatures.size();
    }
    format::encode(f, std::span(footer));
    write_all(fd_, index, out_name());
    write_all(fd_, signatures, out_name());
    write_all(fd_, footer, out_name());
    pos_ += index.size() + signatures.size() + footer.size();
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
  std::array<std::uint8_t, format::kHeaderSize> header_bytes_{};
  int fd_ = -1;
  std::uint64_t pos_ = 0;
  PackResult result_;
  PackProgress progress_;
  std::chrono::steady_clock::time_point last_report_{};
};

}  // namespace

PackResult pack(const PackOptions &in) {
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
  if (o.output.empty()) throw UsageError("no output file given (-o FILE)");
  (void)ChunkEncoder(o.level);  // rejects a bad level before any work
  auto check_text = [](std::string_view what, const std::string &v) {
    if (!valid_utf8(v)) throw UsageError(fmt::format("{} is not valid UTF-8", what));
  };
  check_text("--description", o.description);
  check_text("--license", o.license);
  for (const auto &a : o.authors) check_text("--author", a);
  return Packer(o).run();
}

}  // namespace torshpkg
