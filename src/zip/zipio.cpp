#include "torshpkg/zipio.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>
#include <zlib.h>

#include <fmt/format.h>
#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <set>
#include <vector>

#include "torshpkg/libzip.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/names.hpp"
#include "torshpkg/reader.hpp"

namespace torshpkg {

namespace {

using libzip::UniqueZip;
using libzip::UniqueZipFile;

constexpr std::size_t kCopyBuffer = 1u << 20;

// ---- import ----

struct PlannedEntry {
  zip_uint64_t index = 0;
  std::string path;  // without a trailing '/'
  enum class Type { kFile, kDirectory, kSymlink } type = Type::kFile;
  mode_t perm = 0644;
  time_t mtime = 0;
  std::uint64_t size = 0;
};

std::vector<PlannedEntry> plan_import(zip_t *za, const std::string &zip_path) {
  const zip_int64_t n = zip_get_num_entries(za, 0);
  if (n < 0) throw FormatError(zip_path + ": cannot count the archive's entries");
  std::vector<PlannedEntry> plan;
  ZipTreeClaims claims(zip_path);
  for (zip_int64_t i = 0; i < n; ++i) {
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(za, static_cast<zip_uint64_t>(i), 0, &st) != 0 || !(st.valid & ZIP_STAT_NAME))
      throw FormatError(fmt::format("{}: entry {}: {}", zip_path, i, zip_strerror(za)));
    if ((st.valid & ZIP_STAT_ENCRYPTION_METHOD) && st.encryption_method != ZIP_EM_NONE)
      throw FormatError(fmt::format("{}: entry '{}' is encrypted; not supported", zip_path, st.name));
    auto [path, is_dir] = checked_zip_entry_path(zip_path, st.name);
    PlannedEntry e;
    e.index = static_cast<zip_uint64_t>(i);
    e.path = path;
    e.size = (st.valid & ZIP_STAT_SIZE) ? st.size : 0;
    e.mtime = (st.valid & ZIP_STAT_MTIME) ? st.mtime : 0;
    e.type = is_dir ? PlannedEntry::Type::kDirectory : PlannedEntry::Type::kFile;
    zip_uint8_t opsys = 0;
    zip_uint32_t attr = 0;
    if (zip_file_get_external_attributes(za, e.index, 0, &opsys, &attr) == 0 && opsys == ZIP_OPSYS_UNIX) {
      const mode_t mode = attr >> 16;
      if (S_ISLNK(mode) && !is_dir) e.type = PlannedEntry::Type::kSymlink;
      if (S_ISDIR(mode)) e.type = PlannedEntry::Type::kDirectory;
      if (mode & 0777) e.perm = mode & 0777;
    }
    if (e.type == PlannedEntry::Type::kDirectory && !(e.perm & 0100)) e.perm = 0755;
    if (e.type == PlannedEntry::Type::kSymlink && e.size > 4095)
      throw FormatError(fmt::format("{}: symlink entry '{}' has a {}-byte target", zip_path, path, e.size));
    claims.claim(path, e.type == PlannedEntry::Type::kDirectory);
    plan.push_back(std::move(e));
  }
  return plan;
}

void set_times(const std::string &path, time_t mtime) {
  const struct timespec ts[2] = {{mtime, 0}, {mtime, 0}};
  if (::utimensat(AT_FDCWD, path.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0) throw_errno("set times of", path);
}

// ---- torch layout writer ----

// PyTorch's writer (caffe2/serialize/inline_container.cc) stores every record uncompressed and pads
// the local header's extra field with a "FB" block so that record data starts on a 64-byte boundary,
// which is what lets readers mmap tensors in place. Written by hand because libzip decides header
// sizes (zip64 extras) itself and cannot be told to align.
class TorchZipWriter {
 public:
  explicit TorchZipWriter(int fd, std::string name) : fd_(fd), name_(std::move(name)) {}

  // Starts a record of known size; returns the data offset. Data follows with append().
  void begin(const std::string &path, std::uint64_t size, time_t mtime, mode_t perm) {
    Record r;
    r.path = path;
    r.size = size;
    r.header_at = pos_;
    r.dos_time = dos_time(mtime);
    r.perm = perm;
    r.zip64 = size >= 0xffffffffull;
    std::vector<std::uint8_t> extra;
    if (r.zip64) {  // local zip64 extra: both sizes
      put16(extra, 0x0001);
      put16(extra, 16);
      put64(extra, size);
      put64(extra, size);
    }
    const std::uint64_t unpadded = pos_ + 30 + path.size() + extra.size() + 4;
    const std::size_t pad = static_cast<std::size_t>((64 - unpadded % 64) % 64);
    put16(extra, 0x4246);  // "FB": padding, as PyTorch writes it
    put16(extra, static_cast<std::uint16_t>(pad));
    extra.insert(extra.end(), pad, 'Z');
    std::vector<std::uint8_t> h;
    put32(h, 0x04034b50);
    put16(h, r.zip64 ? 45 : 20);
    put16(h, flags(path));
    put16(h, 0);  // stored
    put32(h, r.dos_time);
    put32(h, 0);  // crc, patched in end()
    put32(h, r.zip64 ? 0xffffffffu : static_cast<std::uint32_t>(size));
    put32(h, r.zip64 ? 0xffffffffu : static_cast<std::uint32_t>(size));
    put16(h, static_cast<std::uint16_t>(path.size()));
    put16(h, static_cast<std::uint16_t>(extra.size()));
    h.insert(h.end(), path.begin(), path.end());
    h.insert(h.end(), extra.begin(), extra.end());
    write(h);
    r.crc = crc32(0L, Z_NULL, 0);
    records_.push_back(std::move(r));
  }

  void append(std::span<const std::uint8_t> data) {
    auto &r = records_.back();
    for (std::size_t at = 0; at < data.size();) {  // zlib's crc32 takes a uInt length
      const auto n = static_cast<uInt>(std::min<std::size_t>(data.size() - at, 1u << 30));
      r.crc = crc32(r.crc, data.data() + at, n);
      at += n;
    }
    r.written += data.size();
    write(data);
  }

  void end() {
    auto &r = records_.back();
    if (r.written != r.size)
      throw InternalError(fmt::format("{}: record {} has {} bytes, expected {}", name_, r.path, r.written, r.size));
    std::array<std::uint8_t, 4> crc{};
    store_le<std::uint32_t>(crc.data(), static_cast<std::uint32_t>(r.crc));
    if (::pwrite(fd_, crc.data(), crc.size(), static_cast<off_t>(r.header_at + 14)) != 4) throw_errno("write", name_);
  }

  void finish() {
    const std::uint64_t cd_at = pos_;
    for (const auto &r : records_) {
      std::vector<std::uint8_t> extra;
      const bool big_offset = r.header_at >= 0xffffffffull;
      if (r.zip64 || big_offset) {
        put16(extra, 0x0001);
        put16(extra, static_cast<std::uint16_t>((r.zip64 ? 16 : 0) + (big_offset ? 8 : 0)));
        if (r.zip64) put64(extra, r.size), put64(extra, r.size);
        if (big_offset) put64(extra, r.header_at);
      }
      std::vector<std::uint8_t> c;
      put32(c, 0x02014b50);
      put16(c, 3u << 8 | 45);  // made by Unix, spec 4.5
      put16(c, r.zip64 || big_offset ? 45 : 20);
      put16(c, flags(r.path));
      put16(c, 0);
      put32(c, r.dos_time);
      put32(c, static_cast<std::uint32_t>(r.crc));
      put32(c, r.zip64 ? 0xffffffffu : static_cast<std::uint32_t>(r.size));
      put32(c, r.zip64 ? 0xffffffffu : static_cast<std::uint32_t>(r.size));
      put16(c, static_cast<std::uint16_t>(r.path.size()));
      put16(c, static_cast<std::uint16_t>(extra.size()));
      put16(c, 0);  // comment
      put16(c, 0);  // disk
      put16(c, 0);  // internal attributes
      put32(c, static_cast<std::uint32_t>(S_IFREG | r.perm) << 16);
      put32(c, big_offset ? 0xffffffffu : static_cast<std::uint32_t>(r.header_at));
      c.insert(c.end(), r.path.begin(), r.path.end());
      c.insert(c.end(), extra.begin(), extra.end());
      write(c);
    }
    const std::uint64_t cd_size = pos_ - cd_at, count = records_.size();
    std::vector<std::uint8_t> e;
    if (count >= 0xffff || cd_at >= 0xffffffffull || cd_size >= 0xffffffffull ||
        std::any_of(records_.begin(), records_.end(), [](const Record &r) { return r.zip64; })) {
      const std::uint64_t eocd64_at = pos_;
      put32(e, 0x06064b50);
      put64(e, 44);
      put16(e, 3u << 8 | 45);
      put16(e, 45);
      put32(e, 0);
      put32(e, 0);
      put64(e, count);
      put64(e, count);
      put64(e, cd_size);
      put64(e, cd_at);
      put32(e, 0x07064b50);  // locator
      put32(e, 0);
      put64(e, eocd64_at);
      put32(e, 1);
    }
    put32(e, 0x06054b50);
    put16(e, 0);
    put16(e, 0);
    put16(e, static_cast<std::uint16_t>(std::min<std::uint64_t>(count, 0xffff)));
    put16(e, static_cast<std::uint16_t>(std::min<std::uint64_t>(count, 0xffff)));
    put32(e, static_cast<std::uint32_t>(std::min<std::uint64_t>(cd_size, 0xffffffff)));
    put32(e, static_cast<std::uint32_t>(std::min<std::uint64_t>(cd_at, 0xffffffff)));
    put16(e, 0);
    write(e);
  }

 private:
  struct Record {
    std::string path;
    std::uint64_t size = 0, written = 0, header_at = 0;
    std::uint32_t dos_time = 0;
    mode_t perm = 0644;
    uLong crc = 0;
    bool zip64 = false;
  };
  static void put16(std::vector<std::uint8_t> &v, std::uint16_t x) { v.push_back(x & 0xff), v.push_back(x >> 8); }
  static void put32(std::vector<std::uint8_t> &v, std::uint32_t x) {
    put16(v, x & 0xffff), put16(v, static_cast<std::uint16_t>(x >> 16));
  }
  static void put64(std::vector<std::uint8_t> &v, std::uint64_t x) {
    put32(v, x & 0xffffffff), put32(v, static_cast<std::uint32_t>(x >> 32));
  }
  static std::uint16_t flags(const std::string &path) {
    const bool ascii =
        std::all_of(path.begin(), path.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
    return ascii ? 0 : 0x0800;  // bit 11: the name is UTF-8
  }
  static std::uint32_t dos_time(time_t t) {
    struct tm tm {};
    if (!::gmtime_r(&t, &tm) || tm.tm_year < 80) return (1u << 21) | (1u << 16);  // 1980-01-01
    return static_cast<std::uint32_t>((tm.tm_year - 80) << 25 | (tm.tm_mon + 1) << 21 | tm.tm_mday << 16 |
                                      tm.tm_hour << 11 | tm.tm_min << 5 | tm.tm_sec / 2);
  }
  void write(std::span<const std::uint8_t> b) {
    write_all(fd_, b, name_);
    pos_ += b.size();
  }

  int fd_;
  std::string name_;
  std::uint64_t pos_ = 0;
  std::vector<Record> records_;
};

// ---- general zip through libzip: file contents are pulled from the Reader as libzip writes ----

struct PackageSource {
  PackageSource(Reader &r, std::uint32_t i, std::uint64_t sz, time_t mt) : reader(&r), ino(i), size(sz), mtime(mt) {
    zip_error_init(&error);
  }
  ~PackageSource() { zip_error_fini(&error); }
  PackageSource(const PackageSource &) = delete;
  PackageSource &operator=(const PackageSource &) = delete;
  Reader *reader;
  std::uint32_t ino;
  std::uint64_t size, offset = 0;
  time_t mtime;
  zip_error_t error;
  std::string failure;  // the exception text, rethrown after zip_close fails
};

zip_int64_t package_source_cb(void *state, void *data, zip_uint64_t len, zip_source_cmd_t cmd) {
  auto *s = static_cast<PackageSource *>(state);
  switch (cmd) {
    case ZIP_SOURCE_OPEN: s->offset = 0; return 0;
    case ZIP_SOURCE_READ:
      try {
        const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(len, s->size - s->offset));
        const auto n = s->reader->read(s->ino, s->offset, std::span(static_cast<std::uint8_t *>(data), want));
        s->offset += n;
        return static_cast<zip_int64_t>(n);
      } catch (const std::exception &e) {
        s->failure = e.what();
        zip_error_set(&s->error, ZIP_ER_READ, EIO);
        return -1;
      }
    case ZIP_SOURCE_CLOSE: return 0;
    case ZIP_SOURCE_STAT: {
      auto *st = static_cast<zip_stat_t *>(data);
      zip_stat_init(st);
      st->size = s->size;
      st->mtime = s->mtime;
      st->valid |= ZIP_STAT_SIZE | ZIP_STAT_MTIME;
      return sizeof(*st);
    }
    case ZIP_SOURCE_ERROR: return zip_error_to_data(&s->error, data, len);
    case ZIP_SOURCE_FREE: return 0;
    case ZIP_SOURCE_SUPPORTS:
      return zip_source_make_command_bitmap(ZIP_SOURCE_OPEN, ZIP_SOURCE_READ, ZIP_SOURCE_CLOSE, ZIP_SOURCE_STAT,
                                            ZIP_SOURCE_ERROR, ZIP_SOURCE_FREE, -1);
    default: zip_error_set(&s->error, ZIP_ER_OPNOTSUPP, 0); return -1;
  }
}

}  // namespace

ZipImportResult extract_zip(const std::string &zip_path, const std::string &dest, const ByteProgress &progress) {
  (void)open_read(zip_path);  // a missing or unreadable file is an IoError, not a format problem
  int err = 0;
  UniqueZip za(zip_open(zip_path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &err));
  if (!za && err == ZIP_ER_EXISTS)  // libzip's own check: two entries with one name
    throw FormatError(fmt::format("{}: two entries have the same name; refusing the archive", zip_path));
  if (!za) throw FormatError(fmt::format("{}: not a readable zip archive: {}", zip_path, libzip::error_text(err)));
  const auto plan = plan_import(za.get(), zip_path);  // every name checked before anything is written

  ZipImportResult r;
  std::uint64_t total = 0;
  for (const auto &e : plan)
    if (e.type == PlannedEntry::Type::kFile) total += e.size;
  std::set<std::string> made;
  auto make_dir = [&](const std::string &rel, mode_t perm) {
    if (!made.insert(rel).second) return;
    const std::string full = dest + "/" + rel;
    if (::mkdir(full.c_str(), perm | 0700) != 0 && errno != EEXIST) throw_errno("create directory", full);
    ++r.directories;
  };
  auto make_parents = [&](const std::string &rel) {
    for (auto slash = rel.find('/'); slash != std::string::npos; slash = rel.find('/', slash + 1))
      make_dir(rel.substr(0, slash), 0755);
  };
  std::vector<std::uint8_t> buf(kCopyBuffer);
  std::vector<const PlannedEntry *> dirs;
  for (const auto &e : plan) {
    make_parents(e.path);
    const std::string full = dest + "/" + e.path;
    if (e.type == PlannedEntry::Type::kDirectory) {
      make_dir(e.path, e.perm);
      dirs.push_back(&e);
      continue;
    }
    UniqueZipFile zf(zip_fopen_index(za.get(), e.index, 0));
    if (!zf) throw FormatError(fmt::format("{}: entry '{}': {}", zip_path, e.path, zip_strerror(za.get())));
    std::string link_target;
    UniqueFd fd;
    if (e.type == PlannedEntry::Type::kFile) {
      fd = UniqueFd(::open(full.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, e.perm));
      if (!fd) throw_errno("create", full);
    }
    std::uint64_t got = 0;
    for (;;) {
      const zip_int64_t n = zip_fread(zf.get(), buf.data(), buf.size());
      if (n < 0) throw IntegrityError(fmt::format("{}: entry '{}': {}", zip_path, e.path, zip_file_strerror(zf.get())));
      if (n == 0) break;
      got += static_cast<std::uint64_t>(n);
      if (got > e.size)
        throw FormatError(fmt::format("{}: entry '{}' holds more than its {} bytes", zip_path, e.path, e.size));
      const auto chunk = std::span(buf).first(static_cast<std::size_t>(n));
      if (fd) {
        write_all(fd.get(), chunk, full);
        r.bytes += chunk.size();
        if (progress) progress(r.bytes, total);
      } else {
        link_target.append(chunk.begin(), chunk.end());
      }
    }
    if (got != e.size)
      throw FormatError(
          fmt::format("{}: entry '{}' holds {} bytes, its header says {}", zip_path, e.path, got, e.size));
    if (e.type == PlannedEntry::Type::kSymlink) {
      if (const auto why = symlink_problem(link_target))
        throw FormatError(fmt::format("{}: symlink '{}': {}", zip_path, e.path, *why));
      if (::symlink(link_target.c_str(), full.c_str()) != 0) throw_errno("create symlink", full);
    } else {
      ++r.files;
      fd.reset();
    }
    set_times(full, e.mtime);
  }
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) set_times(dest + "/" + (*it)->path, (*it)->mtime);
  return r;
}

ZipExportResult export_zip(Reader &reader, const std::string &output, ZipLayout layout, const ByteProgress &progress) {
  const Package &pkg = reader.package();
  ZipExportResult r;
  std::uint64_t total = 0;
  for (std::uint32_t i = 1; i < pkg.inode_count(); ++i)
    if (pkg.type(i) == format::NodeType::kRegular) total += pkg.inode(i).size;

  if (layout == ZipLayout::kTorch) {
    TempOutput out(output);
    TorchZipWriter w(out.fd(), out.temp_path());
    std::vector<std::uint8_t> buf(kCopyBuffer);
    for (std::uint32_t i = 1; i < pkg.inode_count(); ++i) {
      if (pkg.type(i) != format::NodeType::kRegular) continue;  // PyTorch archives hold records only
      const auto e = pkg.inode(i);
      w.begin(pkg.path_of(i), e.size, static_cast<time_t>(e.mtime_sec), e.mode & 0777);
      for (std::uint64_t off = 0; off < e.size;) {
        const auto n = reader.read(
            i, off, std::span(buf).first(static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), e.size - off))));
        if (n == 0) throw FormatError(fmt::format("{}: {} ends early", pkg.path(), pkg.path_of(i)));
        w.append(std::span(buf).first(n));
        off += n;
        r.bytes += n;
        if (progress) progress(r.bytes, total);
      }
      w.end();
      ++r.entries;
    }
    w.finish();
    out.commit();
    return r;
  }

  // General zip: libzip writes to its own temporary file and renames it on zip_close.
  int err = 0;
  UniqueZip za(zip_open(output.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err));
  if (!za) throw IoError(fmt::format("{}: cannot create the zip: {}", output, libzip::error_text(err)), EIO);
  std::vector<std::unique_ptr<PackageSource>> sources;  // owned here; libzip pulls from them at close
  std::vector<std::string> symlink_targets;
  symlink_targets.reserve(pkg.inode_count());
  for (std::uint32_t i = 1; i < pkg.inode_count(); ++i) {
    const auto e = pkg.inode(i);
    const std::string path = pkg.path_of(i);
    zip_int64_t idx = -1;
    mode_t type = S_IFREG;
    switch (pkg.type(i)) {
      case format::NodeType::kDirectory:
        idx = zip_dir_add(za.get(), path.c_str(), ZIP_FL_ENC_UTF_8);
        type = S_IFDIR;
        break;
      case format::NodeType::kSymlink: {
        symlink_targets.emplace_back(pkg.symlink_target(i));
        const auto &t = symlink_targets.back();
        zip_source_t *src = zip_source_buffer(za.get(), t.data(), t.size(), 0);
        if (src && (idx = zip_file_add(za.get(), path.c_str(), src, ZIP_FL_ENC_UTF_8)) < 0) zip_source_free(src);
        type = S_IFLNK;
        break;
      }
      case format::NodeType::kRegular: {
        auto s = std::make_unique<PackageSource>(reader, i, e.size, static_cast<time_t>(e.mtime_sec));
        zip_source_t *src = zip_source_function(za.get(), package_source_cb, s.get());
        if (src && (idx = zip_file_add(za.get(), path.c_str(), src, ZIP_FL_ENC_UTF_8)) < 0) zip_source_free(src);
        // Float weights barely deflate and take long doing it: store them; deflate the rest.
        const bool weights = e.kind == format::FileKind::kWeights || e.size >= (64u << 20);
        if (idx >= 0)
          zip_set_file_compression(za.get(), static_cast<zip_uint64_t>(idx), weights ? ZIP_CM_STORE : ZIP_CM_DEFLATE,
                                   0);
        sources.push_back(std::move(s));
        ++r.entries;
        break;
      }
    }
    if (idx < 0) throw InternalError(fmt::format("{}: cannot add {}: {}", output, path, zip_strerror(za.get())));
    const auto uidx = static_cast<zip_uint64_t>(idx);
    zip_file_set_mtime(za.get(), uidx, static_cast<time_t>(e.mtime_sec), 0);
    zip_file_set_external_attributes(za.get(), uidx, 0, ZIP_OPSYS_UNIX,
                                     static_cast<zip_uint32_t>(type | (e.mode & 0777)) << 16);
  }
  struct ProgressState {
    const ByteProgress *fn;
    std::uint64_t total;
  } ps{&progress, total};
  if (progress)
    zip_register_progress_callback_with_state(
        za.get(), 0.01,
        [](zip_t *, double frac, void *ud) {
          auto *p = static_cast<ProgressState *>(ud);
          (*p->fn)(static_cast<std::uint64_t>(frac * static_cast<double>(p->total)), p->total);
        },
        nullptr, &ps);
  if (zip_close(za.get()) != 0) {
    for (const auto &s : sources)
      if (!s->failure.empty()) throw IntegrityError(fmt::format("{}: {}", pkg.path(), s->failure));
    throw IoError(fmt::format("{}: writing the zip failed: {}", output, zip_strerror(za.get())), EIO);
  }
  (void)za.release();  // zip_close freed it
  r.bytes = total;
  return r;
}

}  // namespace torshpkg
