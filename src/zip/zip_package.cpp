// A zip archive presented as a package, for mounting .zip/.pt files without unpacking them.
//
// The central directory is parsed by hand (libzip hides where an entry's data starts, and the data
// path must pread it directly): EOCD, zip64 locator and record, then every central header, each
// field checked against the file before use. From it an index is synthesised in memory in exactly
// the shape a .tpkg index has (BFS inode order, sorted siblings, one chunk run per file) and put
// through the same tree validation, so the FUSE layer and the reader cannot tell the difference.
//
// Chunk data: a stored entry's chunk k is a pread at data + k * chunk size (no copy of the entry);
// a deflated entry is inflated by a per-entry cursor that keeps the last few chunks it produced,
// so sequential readers and the decode-ahead workers share one pass. Going backwards past that
// window restarts the entry from its beginning: a deflate stream has no other entry point.
// Integrity is the zip's CRC-32 per entry: checked before any byte is returned when the entry fits
// in one chunk, and at the end of a full pass for larger deflated entries.
#include <sys/stat.h>
#include <zlib.h>

#include <fmt/format.h>
#include <algorithm>
#include <array>
#include <atomic>
#include <ctime>
#include <list>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file_kinds.hpp"
#include "torshpkg/names.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/zip_package.hpp"
#include "torshpkg/zipio.hpp"

namespace torshpkg {

namespace {

constexpr std::uint32_t kSigLocal = 0x04034b50, kSigCentral = 0x02014b50, kSigEnd = 0x06054b50;
constexpr std::uint32_t kSigEnd64 = 0x06064b50, kSigLocator64 = 0x07064b50;
constexpr std::size_t kEndSize = 22, kLocatorSize = 20, kEnd64Size = 56, kCentralSize = 46, kLocalSize = 30;
constexpr std::uint16_t kMethodStored = 0, kMethodDeflate = 8;
// Deflate cannot expand data by more than 1032:1; a larger claim is a lie that would size the
// chunk table from nothing.
constexpr std::uint64_t kDeflateMaxRatio = 1032;
// The chunk table is held in memory (56 bytes per chunk): 4 Mi chunks is 4 TiB of 1 MiB chunks.
constexpr std::uint64_t kMaxZipChunks = 4ull << 20;
constexpr std::uint64_t kMaxCentralDirectory = 1ull << 30;

struct ZipEntry {
  std::string path;  // checked, without trailing '/'
  enum class Type { kFile, kDirectory, kSymlink } type = Type::kFile;
  std::uint16_t method = kMethodStored;
  std::uint32_t crc = 0;
  std::uint64_t comp_size = 0, size = 0, local_offset = 0;
  std::uint32_t perm = 0644;
  std::int64_t mtime = 0;
};

std::int64_t dos_to_unix(std::uint16_t date, std::uint16_t time) {
  std::tm t{};
  t.tm_year = 80 + (date >> 9);
  t.tm_mon = std::clamp((date >> 5) & 0xf, 1, 12) - 1;
  t.tm_mday = std::clamp(date & 0x1f, 1, 31);
  t.tm_hour = std::min(time >> 11, 23);
  t.tm_min = std::min((time >> 5) & 0x3f, 59);
  t.tm_sec = std::min((time & 0x1f) * 2, 59);
  return static_cast<std::int64_t>(::timegm(&t));
}

class CentralDirectory {
 public:
  explicit CentralDirectory(const ChunkSource &archive)
      : archive_(archive), size_(archive.size()), path_(archive.name()) {}

  // Reads the end records and every central header. Entries come back in archive order.
  std::vector<ZipEntry> read() {
    locate_end();
    if (cd_size_ > kMaxCentralDirectory) throw bad(fmt::format("central directory of {} bytes is too large", cd_size_));
    std::vector<std::uint8_t> cd(static_cast<std::size_t>(cd_size_));
    archive_.read(cd_offset_, cd);
    if (entries_ > cd_size_ / kCentralSize) throw bad("more entries than the central directory can hold");
    std::vector<ZipEntry> out;
    out.reserve(static_cast<std::size_t>(entries_));
    std::size_t at = 0;
    for (std::uint64_t i = 0; i < entries_; ++i) out.push_back(central_entry(cd, at, i));
    return out;
  }
  // Entry data must end before the central directory starts.
  [[nodiscard]] std::uint64_t data_limit() const noexcept { return cd_offset_; }

 private:
  FormatError bad(const std::string &why) const {
    return FormatError(fmt::format("{}: not a usable zip archive: {}", path_, why));
  }

  void locate_end() {
    if (size_ < kEndSize) throw bad("too small");
    const std::uint64_t tail_len = std::min<std::uint64_t>(size_, kEndSize + 0xffff + kLocatorSize);
    std::vector<std::uint8_t> tail(static_cast<std::size_t>(tail_len));
    archive_.read(size_ - tail_len, tail);
    // The end record is followed only by its comment; search from the end for one whose comment
    // length reaches exactly the end of the file.
    std::optional<std::size_t> end_at;
    for (std::size_t i = tail.size() - kEndSize + 1; i-- > 0;) {
      if (load_le<std::uint32_t>(&tail[i]) != kSigEnd) continue;
      if (i + kEndSize + load_le<std::uint16_t>(&tail[i + 20]) == tail.size()) {
        end_at = i;
        break;
      }
    }
    if (!end_at) throw bad("no end of central directory record");
    const std::uint8_t *e = &tail[*end_at];
    if (load_le<std::uint16_t>(e + 4) != 0 || load_le<std::uint16_t>(e + 6) != 0 ||
        load_le<std::uint16_t>(e + 8) != load_le<std::uint16_t>(e + 10))
      throw bad("multi-volume archives are not supported");
    entries_ = load_le<std::uint16_t>(e + 10);
    cd_size_ = load_le<std::uint32_t>(e + 12);
    cd_offset_ = load_le<std::uint32_t>(e + 16);
    const std::uint64_t end_pos = size_ - tail_len + *end_at;
    if (*end_at >= kLocatorSize && load_le<std::uint32_t>(&tail[*end_at - kLocatorSize]) == kSigLocator64) {
      const std::uint8_t *l = &tail[*end_at - kLocatorSize];
      const auto end64_at = load_le<std::uint64_t>(l + 8);
      if (load_le<std::uint32_t>(l + 4) != 0 || load_le<std::uint32_t>(l + 16) > 1)
        throw bad("multi-volume archives are not supported");
      if (!range_within(end64_at, kEnd64Size, end_pos - kLocatorSize)) throw bad("zip64 end record outside the file");
      std::array<std::uint8_t, kEnd64Size> r{};
      archive_.read(end64_at, r);
      if (load_le<std::uint32_t>(r.data()) != kSigEnd64) throw bad("zip64 end record has a bad signature");
      if (load_le<std::uint32_t>(&r[16]) != 0 || load_le<std::uint32_t>(&r[20]) != 0 ||
          load_le<std::uint64_t>(&r[24]) != load_le<std::uint64_t>(&r[32]))
        throw bad("multi-volume archives are not supported");
      entries_ = load_le<std::uint64_t>(&r[32]);
      cd_size_ = load_le<std::uint64_t>(&r[40]);
      cd_offset_ = load_le<std::uint64_t>(&r[48]);
      if (!range_within(cd_offset_, cd_size_, end64_at)) throw bad("central directory outside the file");
    } else if (!range_within(cd_offset_, cd_size_, end_pos)) {
      throw bad("central directory outside the file");
    }
  }

  ZipEntry central_entry(std::span<const std::uint8_t> cd, std::size_t &at, std::uint64_t i) {
    if (!range_within(at, kCentralSize, cd.size()) || load_le<std::uint32_t>(&cd[at]) != kSigCentral)
      throw bad(fmt::format("central header {} is damaged", i));
    const std::uint8_t *h = &cd[at];
    const auto made_by_os = static_cast<std::uint8_t>(load_le<std::uint16_t>(h + 4) >> 8);
    const auto flags = load_le<std::uint16_t>(h + 8);
    const auto name_len = load_le<std::uint16_t>(h + 28), extra_len = load_le<std::uint16_t>(h + 30),
               comment_len = load_le<std::uint16_t>(h + 32);
    const std::size_t var = std::size_t{name_len} + extra_len + comment_len;
    if (!range_within(at + kCentralSize, var, cd.size())) throw bad(fmt::format("central header {} is truncated", i));
    const std::string_view raw_name(reinterpret_cast<const char *>(h + kCentralSize), name_len);
    auto [path, is_dir] = checked_zip_entry_path(path_, raw_name);
    ZipEntry z;
    z.path = std::move(path);
    z.method = load_le<std::uint16_t>(h + 10);
    z.mtime = dos_to_unix(load_le<std::uint16_t>(h + 14), load_le<std::uint16_t>(h + 12));
    z.crc = load_le<std::uint32_t>(h + 16);
    z.comp_size = load_le<std::uint32_t>(h + 20);
    z.size = load_le<std::uint32_t>(h + 24);
    z.local_offset = load_le<std::uint32_t>(h + 42);
    if (load_le<std::uint16_t>(h + 34) != 0 && load_le<std::uint16_t>(h + 34) != 0xffff)
      throw bad(fmt::format("entry '{}' lives on another volume", z.path));
    read_extra(std::span(h + kCentralSize + name_len, extra_len), z);
    at += kCentralSize + var;

    z.type = is_dir ? ZipEntry::Type::kDirectory : ZipEntry::Type::kFile;
    const std::uint32_t mode = load_le<std::uint32_t>(h + 38) >> 16;
    if (made_by_os == 3 /* Unix */ && mode != 0) {
      if (S_ISDIR(mode)) z.type = ZipEntry::Type::kDirectory;
      if (S_ISLNK(mode) && !is_dir) z.type = ZipEntry::Type::kSymlink;
      if (mode & 0777) z.perm = mode & 0777;
    }
    if (z.type == ZipEntry::Type::kDirectory && !(z.perm & 0100)) z.perm = 0755;
    if (z.type == ZipEntry::Type::kDirectory) return z;
    auto entry_bad = [&](const std::string &why) { return bad(fmt::format("entry '{}' {}", z.path, why)); };
    if (flags & 0x41) throw entry_bad("is encrypted; not supported");
    if (z.method != kMethodStored && z.method != kMethodDeflate)
      throw entry_bad(
          fmt::format("uses compression method {}; only stored (0) and deflate (8) entries can be mounted "
                      "(torshpkg import reads every method libzip knows)",
                      z.method));
    if (z.method == kMethodStored && z.comp_size != z.size) throw entry_bad("is stored but its two sizes differ");
    std::uint64_t most = 0;
    if (z.method == kMethodDeflate && (mul_overflows(z.comp_size, kDeflateMaxRatio, most) || z.size > most + 64))
      throw entry_bad(
          fmt::format("claims {} bytes from {} deflated bytes, more than deflate can produce", z.size, z.comp_size));
    // Data follows a local header of at least 30 bytes plus the name; checked exactly on first read.
    if (!range_within(z.local_offset, kLocalSize + name_len + z.comp_size, cd_offset_))
      throw entry_bad("has data outside the archive");
    if (z.type == ZipEntry::Type::kSymlink && (z.size == 0 || z.size > format::kMaxSymlinkLength))
      throw entry_bad(fmt::format("is a symlink with a {}-byte target", z.size));
    return z;
  }

  // Zip64 sizes and offset (in this order, each present only when its 32-bit field is saturated)
  // and the Unix mtime of the extended timestamp field.
  void read_extra(std::span<const std::uint8_t> extra, ZipEntry &z) {
    bool need_size = z.size == 0xffffffffu, need_comp = z.comp_size == 0xffffffffu,
         need_off = z.local_offset == 0xffffffffu;
    std::size_t at = 0;
    while (at + 4 <= extra.size()) {
      const auto tag = load_le<std::uint16_t>(&extra[at]);
      const auto len = load_le<std::uint16_t>(&extra[at + 2]);
      if (!range_within(at + 4, len, extra.size())) break;  // trailing junk: writers pad with it
      const auto body = extra.subspan(at + 4, len);
      if (tag == 0x0001) {
        std::size_t p = 0;
        auto take = [&](std::uint64_t &v) {
          if (p + 8 > body.size()) throw bad(fmt::format("entry '{}' has a short zip64 field", z.path));
          v = load_le<std::uint64_t>(&body[p]);
          p += 8;
        };
        if (need_size) take(z.size), need_size = false;
        if (need_comp) take(z.comp_size), need_comp = false;
        if (need_off) take(z.local_offset), need_off = false;
      } else if (tag == 0x5455 && len >= 5 && (body[0] & 1)) {
        z.mtime = static_cast<std::int32_t>(load_le<std::uint32_t>(&body[1]));
      }
      at += 4 + len;
    }
    if (need_size || need_comp || need_off) throw bad(fmt::format("entry '{}' lacks its zip64 field", z.path));
  }

  const ChunkSource &archive_;
  std::uint64_t size_;
  const std::string &path_;
  std::uint64_t entries_ = 0, cd_size_ = 0, cd_offset_ = 0;
};

}  // namespace

// Name checks and magic live here rather than in zipio.cpp so that the driver does not link libzip.
bool looks_like_zip(const ChunkSource &source) {
  std::array<std::uint8_t, 4> magic{};
  if (source.size() < magic.size()) return false;
  source.read(0, magic);
  return magic[0] == 'P' && magic[1] == 'K' && ((magic[2] == 3 && magic[3] == 4) || (magic[2] == 5 && magic[3] == 6));
}

std::pair<std::string, bool> checked_zip_entry_path(const std::string &zip_path, std::string_view name) {
  auto bad = [&](const std::string &why) {
    return FormatError(fmt::format("{}: entry '{}' {}; refusing the archive", zip_path, name, why));
  };
  if (name.empty()) throw bad("has an empty name");
  if (name.front() == '/') throw bad("is an absolute path");
  if (name.find('\\') != std::string_view::npos) throw bad("contains a backslash");
  const bool dir = name.back() == '/';
  if (dir) name.remove_suffix(1);
  std::size_t i = 0;
  while (i <= name.size()) {
    const auto slash = std::min(name.find('/', i), name.size());
    const auto part = name.substr(i, slash - i);
    if (part == "..") throw bad("leaves the archive ('..')");
    if (const auto why = name_problem(part)) throw bad("has a bad path component: " + *why);
    i = slash + 1;
  }
  return {std::string(name), dir};
}

void ZipTreeClaims::claim(const std::string &path, bool is_directory) {
  auto refuse = [&](const char *why) {
    return FormatError(fmt::format("{}: entry '{}' {}; refusing the archive", zip_path_, path, why));
  };
  for (auto slash = path.find('/'); slash != std::string::npos; slash = path.find('/', slash + 1)) {
    if (!seen_.try_emplace(path.substr(0, slash)).first->second.directory) throw refuse("lies under a file");
  }
  const auto [it, fresh] = seen_.try_emplace(path, Seen{is_directory, true});
  if (fresh) return;
  if (it->second.named) throw refuse("appears twice");
  if (!is_directory) throw refuse("is both a file and a directory");
  it->second.named = true;  // a directory that earlier entries implied, now listed itself
}

// The bytes of a zip's regular files, decoded and laid end to end: file f occupies
// [files_[f].base, files_[f].base + size), and the synthesised chunk table points into that space.
// Reads come in whole chunks (the pipeline reads one chunk at a time); shared by every reader thread.
class ZipSource final : public ChunkSource {
 public:
  struct File {
    std::uint64_t base = 0, chunks = 0;
    ZipEntry entry;
  };

  ZipSource(std::shared_ptr<const ChunkSource> archive, std::uint32_t chunk_size, std::uint64_t data_limit)
      : archive_(std::move(archive)), path_(archive_->name()), chunk_size_(chunk_size), data_limit_(data_limit) {}

  // Adds the next regular file with data; returns where its bytes start. Before any read.
  std::uint64_t add(const ZipEntry &e, std::uint64_t chunks) {
    files_.push_back({size_, chunks, e});
    size_ += e.size;
    return files_.back().base;
  }
  void seal() { data_at_ = std::vector<std::atomic<std::uint64_t>>(files_.size()); }

  [[nodiscard]] std::uint64_t size() const noexcept override { return size_; }
  [[nodiscard]] const std::string &name() const noexcept override { return path_; }
  [[nodiscard]] std::int64_t mtime() const noexcept override { return archive_->mtime(); }

  void read(std::uint64_t offset, std::span<std::uint8_t> out) const override {
    const auto it = std::upper_bound(files_.begin(), files_.end(), offset,
                                     [](std::uint64_t o, const File &f) { return o < f.base; });
    if (it == files_.begin() || !range_within(offset, out.size(), size_))
      throw FormatError(fmt::format("{}: read outside the archive's entries", path_));
    const auto f = static_cast<std::size_t>(std::prev(it) - files_.begin());
    const std::uint64_t within = offset - files_[f].base;
    const std::uint64_t k = within / chunk_size_;
    const std::uint64_t chunk_bytes = std::min<std::uint64_t>(chunk_size_, files_[f].entry.size - k * chunk_size_);
    if (within % chunk_size_ != 0 || out.size() != chunk_bytes)
      throw InternalError("zip entries are read one whole chunk at a time");
    try {
      if (files_[f].entry.method == kMethodStored)
        load_stored(f, k, out);
      else
        load_deflated(f, k, out);
    } catch (const IntegrityError &e) {
      throw IntegrityError(fmt::format("zip entry '{}': {}", files_[f].entry.path, e.what()));
    }
  }

  // The whole (small) entry: symlink targets, read at open.
  std::string read_small(const ZipEntry &e) const {
    std::string out(static_cast<std::size_t>(e.size), '\0');
    const auto bytes = std::span(reinterpret_cast<std::uint8_t *>(out.data()), out.size());
    if (e.method == kMethodStored) {
      archive_->read(data_offset(e, SIZE_MAX), bytes);
    } else {
      Inflater inf;
      inf.reset(data_offset(e, SIZE_MAX));
      inflate_into(inf, e, bytes);
      finish(inf, e);
    }
    check_crc(e, bytes);
    return out;
  }

 private:
  static constexpr std::size_t kRing = 4;        // chunks a cursor keeps behind it
  static constexpr std::size_t kMaxCursors = 4;  // entries inflated concurrently
  static constexpr std::size_t kInputBuffer = 256 << 10;

  struct Inflater {
    z_stream zs{};
    bool live = false;
    std::uint64_t data = 0, consumed = 0;  // where the entry's data starts; compressed bytes read
    std::uint32_t crc = 0;
    std::vector<std::uint8_t> in;
    Inflater() = default;
    Inflater(const Inflater &) = delete;
    Inflater &operator=(const Inflater &) = delete;
    ~Inflater() {
      if (live) ::inflateEnd(&zs);
    }
    void reset(std::uint64_t data_offset) {
      if (live) ::inflateEnd(&zs);
      zs = z_stream{};
      if (::inflateInit2(&zs, -MAX_WBITS) != Z_OK) throw InternalError("zlib: cannot start an inflate stream");
      live = true;
      data = data_offset;
      consumed = 0;
      crc = static_cast<std::uint32_t>(::crc32(0, nullptr, 0));
    }
  };
  struct Cursor {
    std::mutex mu;
    Inflater inf;
    std::uint64_t next_chunk = 0;  // next chunk of the entry the stream will produce
    std::array<std::vector<std::uint8_t>, kRing> ring;
    std::array<std::uint64_t, kRing> ring_chunk{UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX};
  };

  // Where entry data starts, from its local header (read once per entry). `f` indexes data_at_.
  std::uint64_t data_offset(const ZipEntry &e, std::size_t f) const {
    if (f != SIZE_MAX)
      if (const auto known = data_at_[f].load(std::memory_order_acquire)) return known;
    std::array<std::uint8_t, kLocalSize> h{};
    archive_->read(e.local_offset, h);
    if (load_le<std::uint32_t>(h.data()) != kSigLocal)
      throw FormatError(fmt::format("{}: zip entry '{}': local header has a bad signature", path_, e.path));
    const std::uint64_t data =
        e.local_offset + kLocalSize + load_le<std::uint16_t>(&h[26]) + load_le<std::uint16_t>(&h[28]);
    if (!range_within(data, e.comp_size, data_limit_))
      throw FormatError(fmt::format("{}: zip entry '{}': data runs into the central directory", path_, e.path));
    if (f != SIZE_MAX) data_at_[f].store(data, std::memory_order_release);
    return data;
  }

  void check_crc(const ZipEntry &e, std::span<const std::uint8_t> whole) const {
    if (static_cast<std::uint32_t>(::crc32_z(0, whole.data(), whole.size())) != e.crc)
      throw IntegrityError(fmt::format("{}: zip entry '{}' fails its CRC-32", path_, e.path));
  }

  void load_stored(std::size_t f, std::uint64_t k, std::span<std::uint8_t> out) const {
    const auto &e = files_[f].entry;
    archive_->read(data_offset(e, f) + k * chunk_size_, out);
    if (files_[f].chunks == 1) check_crc(e, out);
  }

  // Produces exactly out.size() more bytes of the entry.
  void inflate_into(Inflater &inf, const ZipEntry &e, std::span<std::uint8_t> out) const {
    inf.zs.next_out = out.data();
    inf.zs.avail_out = static_cast<uInt>(out.size());
    while (inf.zs.avail_out > 0) {
      if (inf.zs.avail_in == 0) refill(inf, e);
      const int rc = ::inflate(&inf.zs, Z_NO_FLUSH);
      if (rc == Z_STREAM_END && inf.zs.avail_out > 0)
        throw IntegrityError(fmt::format("{}: zip entry '{}' inflates to less than its size", path_, e.path));
      if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
        throw IntegrityError(fmt::format("{}: zip entry '{}': damaged deflate data ({})", path_, e.path,
                                         inf.zs.msg ? inf.zs.msg : "zlib error"));
      if (rc == Z_BUF_ERROR && inf.zs.avail_in == 0 && inf.consumed == e.comp_size)
        throw IntegrityError(fmt::format("{}: zip entry '{}': deflate data ends early", path_, e.path));
    }
    inf.crc = static_cast<std::uint32_t>(::crc32_z(inf.crc, out.data(), out.size()));
  }

  void refill(Inflater &inf, const ZipEntry &e) const {
    const std::uint64_t left = e.comp_size - inf.consumed;
    if (left == 0) return;  // inflate reports the end (or its absence)
    inf.in.resize(static_cast<std::size_t>(std::min<std::uint64_t>(left, kInputBuffer)));
    archive_->read(inf.data + inf.consumed, inf.in);
    inf.consumed += inf.in.size();
    inf.zs.next_in = inf.in.data();
    inf.zs.avail_in = static_cast<uInt>(inf.in.size());
  }

  // After the last byte: the stream must end here, and the CRC must match.
  void finish(Inflater &inf, const ZipEntry &e) const {
    std::uint8_t extra = 0;
    for (;;) {
      if (inf.zs.avail_in == 0) refill(inf, e);
      inf.zs.next_out = &extra;
      inf.zs.avail_out = 1;
      const int rc = ::inflate(&inf.zs, Z_NO_FLUSH);
      if (rc == Z_STREAM_END && inf.zs.avail_out == 1) break;
      if (inf.zs.avail_out == 0)
        throw IntegrityError(fmt::format("{}: zip entry '{}' inflates to more than its size", path_, e.path));
      if (rc != Z_OK || (inf.zs.avail_in == 0 && inf.consumed == e.comp_size))
        throw IntegrityError(
            fmt::format("{}: zip entry '{}': deflate data does not end where it should", path_, e.path));
    }
    if (inf.crc != e.crc) throw IntegrityError(fmt::format("{}: zip entry '{}' fails its CRC-32", path_, e.path));
  }

  std::shared_ptr<Cursor> cursor_for(std::size_t f) const {
    std::lock_guard lock(cursors_mu_);
    for (auto it = cursors_.begin(); it != cursors_.end(); ++it) {
      if (it->first != f) continue;
      cursors_.splice(cursors_.begin(), cursors_, it);
      return it->second;
    }
    cursors_.emplace_front(f, std::make_shared<Cursor>());
    if (cursors_.size() > kMaxCursors) cursors_.pop_back();  // a user still holding it keeps it alive
    return cursors_.front().second;
  }

  void load_deflated(std::size_t f, std::uint64_t k, std::span<std::uint8_t> out) const {
    const auto &file = files_[f];
    const auto cur = cursor_for(f);
    std::lock_guard lock(cur->mu);
    if (cur->ring_chunk[k % kRing] != k) {
      if (!cur->inf.live || cur->next_chunk > k) {
        cur->inf.reset(data_offset(file.entry, f));
        cur->next_chunk = 0;
        cur->ring_chunk.fill(UINT64_MAX);
      }
      try {
        while (cur->next_chunk <= k) {
          const std::uint64_t j = cur->next_chunk;
          auto &buf = cur->ring[j % kRing];
          buf.resize(static_cast<std::size_t>(std::min<std::uint64_t>(chunk_size_, file.entry.size - j * chunk_size_)));
          cur->ring_chunk[j % kRing] = UINT64_MAX;
          inflate_into(cur->inf, file.entry, buf);
          ++cur->next_chunk;
          if (cur->next_chunk == file.chunks) finish(cur->inf, file.entry);
          cur->ring_chunk[j % kRing] = j;
        }
      } catch (...) {
        cur->inf.reset(cur->inf.data);  // never continue a stream that failed midway
        cur->next_chunk = 0;
        cur->ring_chunk.fill(UINT64_MAX);
        throw;
      }
    }
    const auto &buf = cur->ring[k % kRing];
    if (buf.size() != out.size()) throw InternalError("zip chunk size differs from the chunk table");
    std::copy(buf.begin(), buf.end(), out.begin());
  }

  std::shared_ptr<const ChunkSource> archive_;
  std::string path_;
  std::uint32_t chunk_size_;
  std::uint64_t data_limit_;
  std::uint64_t size_ = 0;
  std::vector<File> files_;  // regular files with data, in chunk order
  mutable std::vector<std::atomic<std::uint64_t>> data_at_;
  mutable std::mutex cursors_mu_;
  mutable std::list<std::pair<std::size_t, std::shared_ptr<Cursor>>> cursors_;  // most recent first
};

namespace {

// The tree of a zip archive, with implied parent directories, in the order a package lists it.
struct TreeNode {
  std::string name;
  ZipEntry::Type type = ZipEntry::Type::kDirectory;
  std::optional<std::size_t> entry;             // index into the archive's entries; none for implied directories
  std::map<std::string, std::size_t> children;  // sorted by name, as the inode table requires
  std::uint32_t parent = 0;
};

}  // namespace

std::shared_ptr<const Package> open_zip(std::shared_ptr<const ChunkSource> archive) {
  const std::string path = archive->name();
  CentralDirectory cd(*archive);
  const auto entries = cd.read();

  std::vector<TreeNode> nodes(1);
  nodes[0].name = "";
  auto refuse = [&](const std::string &name, const char *why) {
    return FormatError(fmt::format("{}: entry '{}' {}; refusing the archive", path, name, why));
  };
  ZipTreeClaims claims(path);
  for (const auto &e : entries) claims.claim(e.path, e.type == ZipEntry::Type::kDirectory);
  // The claims hold: every name once, parents are directories. Build the tree.
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const auto &e = entries[i];
    std::size_t cur = 0;
    std::size_t from = 0;
    for (;;) {
      const auto slash = e.path.find('/', from);
      const std::string part = e.path.substr(from, slash == std::string::npos ? std::string::npos : slash - from);
      const bool last = slash == std::string::npos;
      if (cur == 0 && part == format::kReservedRootName) throw refuse(e.path, "uses the reserved root name .torshpkg");
      auto [it, fresh] = nodes[cur].children.emplace(part, nodes.size());
      if (fresh) {
        TreeNode n;
        n.name = part;
        n.parent = static_cast<std::uint32_t>(cur);
        nodes.push_back(std::move(n));
      }
      const std::size_t child = it->second;
      if (last) {
        nodes[child].type = e.type;
        nodes[child].entry = i;
        break;
      }
      cur = child;
      from = slash + 1;
    }
  }
  if (nodes.size() > format::kMaxInodes) throw FormatError(path + ": too many entries");

  // BFS: each directory's children become consecutive inodes, in name order.
  std::vector<std::size_t> order = {0};
  std::vector<std::uint32_t> ino_of(nodes.size(), 0);
  for (std::size_t i = 0; i < order.size(); ++i)
    for (const auto &[name, child] : nodes[order[i]].children) {
      ino_of[child] = static_cast<std::uint32_t>(order.size());
      order.push_back(child);
    }

  SynthesizedIndex index;
  const std::uint32_t cs = 1u << index.chunk_shift;
  auto source = std::make_shared<ZipSource>(archive, cs, cd.data_limit());
  auto &strings = index.strings;
  auto &inodes = index.inodes;
  auto &chunks = index.chunks;
  inodes.resize(order.size());
  std::vector<std::pair<std::uint32_t, std::size_t>> symlinks;  // inode, entry
  const std::int64_t archive_mtime = archive->mtime();
  for (std::size_t ino = 0; ino < order.size(); ++ino) {
    const auto &n = nodes[order[ino]];
    auto &e = inodes[ino];
    const ZipEntry *z = n.entry ? &entries[*n.entry] : nullptr;
    e.parent = ino_of[n.parent];
    e.mtime_sec = z ? z->mtime : archive_mtime;
    if (ino != 0) {
      e.name_offset = strings.add(n.name);
      e.name_length = static_cast<std::uint32_t>(n.name.size());
    }
    switch (n.type) {
      case ZipEntry::Type::kDirectory:
        e.mode = S_IFDIR | (z ? z->perm : 0755);
        e.size = n.children.size();
        e.first = n.children.empty() ? 0 : ino_of[n.children.begin()->second];
        break;
      case ZipEntry::Type::kSymlink:
        e.mode = S_IFLNK | 0777;
        symlinks.emplace_back(static_cast<std::uint32_t>(ino), *n.entry);
        break;
      case ZipEntry::Type::kFile: {
        e.mode = S_IFREG | z->perm;
        e.size = z->size;
        e.kind = detect_kind(n.name, {});
        const std::uint64_t count = format::chunks_for(z->size, index.chunk_shift);
        if (count == 0) break;
        if (chunks.size() + count > kMaxZipChunks)
          throw FormatError(fmt::format("{}: entries claim more than {} chunks of data", path, kMaxZipChunks));
        e.first = static_cast<std::uint32_t>(chunks.size());
        const std::uint64_t base = source->add(*z, count);
        for (std::uint64_t k = 0; k < count; ++k) {
          format::ChunkEntry c;
          c.offset = base + k * cs;
          c.decoded_size = static_cast<std::uint32_t>(std::min<std::uint64_t>(cs, z->size - k * cs));
          c.stored_size = c.decoded_size;
          chunks.push_back(c);
        }
        break;
      }
    }
  }
  source->seal();
  for (const auto &[ino, entry] : symlinks) {
    const auto target = source->read_small(entries[entry]);
    if (const auto why = symlink_problem(target))
      throw FormatError(fmt::format("{}: symlink entry '{}': {}", path, entries[entry].path, *why));
    inodes[ino].size = target.size();
    inodes[ino].first = strings.add(target);
  }

  auto &m = index.manifest;
  m.kind = Manifest::Kind::kSynthesized;
  const auto slash = path.rfind('/');
  m.name = slash == std::string::npos ? path : path.substr(slash + 1);
  m.version = "0.0.0";
  m.description = "zip archive mounted directly: no signature, entries checked by CRC-32 only";
  m.source = "zip";
  m.chunk_size = cs;
  index.unsigned_because = kZipUnsignedBecause;
  index.remedy = kZipRemedy;
  index.summary = "a zip archive (no signature; entries checked by CRC-32)";
  return Package::from_index(std::move(index), std::move(source));
}

}  // namespace torshpkg
