// Model-format analysis at pack time: see include/torshpkg/model_formats.hpp and docs/FORMAT.md.
// Everything read here is untrusted: every length is checked against what is there, every read is
// bounded, recursion is bounded, and a file that cannot be understood becomes a problem line.
#include "torshpkg/model_formats.hpp"

#include <fcntl.h>
#include <yaml-cpp/yaml.h>
#include <zip.h>

#include <fmt/format.h>
#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <unordered_map>

#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/file_kinds.hpp"
#include "torshpkg/file_kinds.hpp"
#include "torshpkg/safetensors.hpp"
#include "torshpkg/semver.hpp"
#include "torshpkg/names.hpp"
#include "torshpkg/pickle_scan.hpp"
#include "torshpkg/libzip.hpp"

namespace torshpkg {

namespace {

using json = nlohmann::ordered_json;
using Type = TreeEntry::Type;

// ---------------------------------------------------------------------------------------------
// Strings and paths

// JSON needs UTF-8: bytes that are not part of a valid sequence become "\xNN".
std::string utf8(std::string_view s) {
  if (valid_utf8(s)) return std::string(s);
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<std::uint8_t>(s[i]);
    const std::size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (n && i + n <= s.size() && valid_utf8(s.substr(i, n))) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += fmt::format("\\x{:02x}", c);
      ++i;
    }
  }
  return out;
}

std::string_view dir_of(std::string_view p) {
  const auto s = p.rfind('/');
  return s == std::string_view::npos ? std::string_view{} : p.substr(0, s);
}
std::string_view base_of(std::string_view p) {
  const auto s = p.rfind('/');
  return s == std::string_view::npos ? p : p.substr(s + 1);
}
std::string join(std::string_view dir, std::string_view name) {
  return dir.empty() ? std::string(name) : fmt::format("{}/{}", dir, name);
}
std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}
bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}
std::vector<std::string> split(std::string_view p) {
  std::vector<std::string> out;
  while (!p.empty()) {
    const auto s = p.find('/');
    out.emplace_back(p.substr(0, s));
    if (s == std::string_view::npos) break;
    p.remove_prefix(s + 1);
  }
  return out;
}
std::string tensors(std::size_t n) {
  return fmt::format("{} tensor{}", n, n == 1 ? "" : "s");
}

// "a, b, c" of at most `max` items, then ", ... (N in all)".
std::string list_some(const std::vector<std::string> &items, std::size_t max = 5) {
  std::string out;
  for (std::size_t i = 0; i < items.size() && i < max; ++i) out += (i ? ", " : "") + items[i];
  if (items.size() > max) out += fmt::format(", ... ({} in all)", items.size());
  return out;
}

// ordered_json finds a key by a linear search, so o[key] = v for n keys read from a file took O(n^2)
// time (3.4 s for 40k ONNX opsets, half an hour for a million): this keeps a hash index of the keys.
struct IndexedObject {
  json object = json::object();
  std::unordered_map<std::string, std::size_t> index;
  // Same as object[key] = v: a new key goes last, a repeated one keeps its place and takes the value.
  void set(std::string key, json v) {
    auto &o = object.get_ref<json::object_t &>();
    const auto [it, fresh] = index.try_emplace(key, o.size());
    if (fresh)
      o.emplace_back(std::move(key), std::move(v));
    else
      std::next(o.begin(), static_cast<std::ptrdiff_t>(it->second))->second = std::move(v);
  }
};

// A reference made inside the package (an ONNX location, a weight_map value, an MLflow path)
// relative to `dir`, as a package path; nullopt when it is absolute or leaves the package.
std::optional<std::string> normalise(std::string_view dir, std::string_view ref) {
  if (ref.empty() || ref.front() == '/') return std::nullopt;
  std::vector<std::string> out = split(dir);
  for (auto &c : split(ref)) {
    if (c.empty() || c == ".") continue;
    if (c == "..") {
      if (out.empty()) return std::nullopt;
      out.pop_back();
      continue;
    }
    out.push_back(std::move(c));
  }
  std::string p;
  for (const auto &c : out) p = join(p, c);
  return p;
}

// ---------------------------------------------------------------------------------------------
// The tree

class Tree {
 public:
  explicit Tree(std::span<const TreeEntry> entries) : entries_(entries) {
    root_.type = Type::kDirectory;
    for (const auto &e : entries) {
      by_path_.emplace(e.path, &e);
      if (!e.path.empty()) children_[std::string(dir_of(e.path))].push_back(&e);
    }
  }
  [[nodiscard]] std::span<const TreeEntry> entries() const { return entries_; }
  [[nodiscard]] const TreeEntry *find(const std::string &p) const {
    if (p.empty()) return &root_;
    const auto it = by_path_.find(p);
    return it == by_path_.end() ? nullptr : it->second;
  }
  [[nodiscard]] const std::vector<const TreeEntry *> &children(const std::string &dir) const {
    static const std::vector<const TreeEntry *> none;
    const auto it = children_.find(dir);
    return it == children_.end() ? none : it->second;
  }
  // Follows symlinks inside the package the way the kernel would on the mount: relative targets
  // only, at most 40 of them; nullptr when the path does not lead to an entry of the package.
  [[nodiscard]] const TreeEntry *resolve(std::string_view path) const {
    std::deque<std::string> comps;
    for (auto &c : split(path)) comps.push_back(std::move(c));
    std::string cur;
    unsigned hops = 0;
    while (!comps.empty()) {
      std::string c = std::move(comps.front());
      comps.pop_front();
      if (c.empty() || c == ".") continue;
      if (c == "..") {
        if (cur.empty()) return nullptr;
        cur = std::string(dir_of(cur));
        continue;
      }
      std::string next = join(cur, c);
      const TreeEntry *e = find(next);
      if (!e) return nullptr;
      if (e->type == Type::kSymlink) {
        if (++hops > 40 || e->link_target.empty() || e->link_target.front() == '/') return nullptr;
        auto t = split(e->link_target);
        comps.insert(comps.begin(), std::make_move_iterator(t.begin()), std::make_move_iterator(t.end()));
        continue;  // the target is relative to the link's directory, which is `cur`
      }
      if (!comps.empty() && e->type != Type::kDirectory) return nullptr;
      cur = std::move(next);
    }
    return find(cur);
  }
  // The regular file a path leads to, or nullptr.
  [[nodiscard]] const TreeEntry *file(std::string_view path) const {
    const TreeEntry *e = resolve(path);
    return e && e->type == Type::kFile ? e : nullptr;
  }

 private:
  std::span<const TreeEntry> entries_;
  TreeEntry root_;
  std::unordered_map<std::string, const TreeEntry *> by_path_;
  std::unordered_map<std::string, std::vector<const TreeEntry *>> children_;
};

// ---------------------------------------------------------------------------------------------
// Bounded reads

// The first min(n, size) bytes of a file.
std::vector<std::uint8_t> read_head(const TreeEntry &e, std::uint64_t n) {
  UniqueFd fd = open_read(e.source, O_NOFOLLOW);
  std::vector<std::uint8_t> b(static_cast<std::size_t>(std::min(n, e.size)));
  b.resize(read_full(fd.get(), b, e.source));
  return b;
}

std::string read_text(const TreeEntry &e, std::uint64_t cap) {
  if (e.size > cap) throw FormatError(fmt::format("larger than {} bytes, not read", cap));
  const auto b = read_head(e, cap);
  return std::string(b.begin(), b.end());
}

// Buffered positional reads of one file, for the streaming protobuf reader.
class ByteSource {
 public:
  explicit ByteSource(const TreeEntry &e) : fd_(open_read(e.source, O_NOFOLLOW)), what_(e.source), size_(e.size) {}
  [[nodiscard]] std::uint64_t size() const noexcept { return size_; }
  std::uint8_t at(std::uint64_t pos) {
    if (pos < buf_at_ || pos >= buf_at_ + buf_.size()) fill(pos);
    return buf_[static_cast<std::size_t>(pos - buf_at_)];
  }
  void read(std::uint64_t pos, std::span<std::uint8_t> out) {
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = at(pos + i);
  }

 private:
  void fill(std::uint64_t pos) {
    if (pos >= size_) throw FormatError(fmt::format("{}: read past the end at offset {}", what_, pos));
    buf_.resize(static_cast<std::size_t>(std::min<std::uint64_t>(kWindow, size_ - pos)));
    pread_exact(fd_.get(), buf_, pos, what_);
    buf_at_ = pos;
  }
  static constexpr std::uint64_t kWindow = 64 * 1024;
  UniqueFd fd_;
  std::string what_;
  std::uint64_t size_;
  std::vector<std::uint8_t> buf_;
  std::uint64_t buf_at_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Problems and notes

class Report {
 public:
  explicit Report(FormatAnalysis &out) : out_(out) {}
  void problem(std::string s) { add(out_.problems, dropped_problems_, std::move(s)); }
  void note(std::string s) { add(out_.notes, dropped_notes_, std::move(s)); }
  void finish() {
    if (dropped_problems_) out_.problems.push_back(fmt::format("... and {} more problems", dropped_problems_));
    if (dropped_notes_) out_.notes.push_back(fmt::format("... and {} more notes", dropped_notes_));
  }

 private:
  static void add(std::vector<std::string> &v, std::size_t &dropped, std::string s) {
    if (v.size() < kMaxProblems)
      v.push_back(utf8(s));
    else
      ++dropped;
  }
  FormatAnalysis &out_;
  std::size_t dropped_problems_ = 0, dropped_notes_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Pickles

struct PickleFile {
  std::string format;  // "pickle", "torch-legacy", "torch-zip", "torchscript", "torch.package", "zip"
  unsigned pickles = 0;
  std::vector<std::string> members;  // zips: the .pkl members scanned
  std::vector<PickleImport> imports;
  std::set<std::pair<std::string, std::string>> seen;  // of imports
  bool imports_truncated = false;
  std::uint64_t python_sources = 0;  // zips: .py members (torch.package code)
  std::string error;                 // the first scan failure

  void merge(const PickleScan &s) {
    ++pickles;
    imports_truncated |= s.imports_truncated;
    for (const auto &i : s.imports) {
      if (seen.count({i.module, i.name})) continue;
      if (imports.size() >= kMaxPickleImports) {
        imports_truncated = true;
        break;
      }
      seen.emplace(i.module, i.name);
      imports.push_back(i);
    }
  }
  void fail(std::string why) {
    if (error.empty()) error = std::move(why);
  }
};

// Consecutive pickles at the start of a file (a legacy torch.save file is five of them followed by
// raw storage bytes), reading at most kMaxPickleBytes and growing the buffer as needed.
void scan_pickle_file(const TreeEntry &e, unsigned max_pickles, PickleFile &out) {
  UniqueFd fd = open_read(e.source, O_NOFOLLOW);
  const std::uint64_t limit = std::min(e.size, kMaxPickleBytes);
  std::vector<std::uint8_t> buf;
  auto grow = [&](std::uint64_t want) {
    want = std::min(std::max<std::uint64_t>(want, 1 << 20), limit);
    if (want <= buf.size()) return false;
    const std::size_t had = buf.size();
    buf.resize(static_cast<std::size_t>(want));
    pread_exact(fd.get(), std::span(buf).subspan(had), had, e.source);
    return true;
  };
  grow(1 << 20);
  std::size_t off = 0;
  while (out.pickles < max_pickles) {
    try {
      const auto s = scan_pickle(std::span<const std::uint8_t>(buf).subspan(off));
      out.merge(s);
      off += s.end;
    } catch (const PickleTruncated &t) {
      if (grow(static_cast<std::uint64_t>(buf.size()) * 2)) continue;
      out.fail(limit < e.size
                   ? fmt::format("pickle data runs past the first {} MiB, not scanned further", kMaxPickleBytes >> 20)
                   : t.what());
      return;
    } catch (const FormatError &f) {
      out.fail(f.what());
      return;
    }
    if (off >= buf.size() && !grow(static_cast<std::uint64_t>(off) + 1)) return;  // end of file (or of the window)
    if (buf[off] != 0x80) return;                                                 // what follows is not another pickle
  }
}

// Every member ending in ".pkl" of a zip (torch.save since 1.6, torch.jit.save, torch.package).
void scan_pickle_zip(const TreeEntry &e, PickleFile &out) {
  UniqueFd fd = open_read(e.source, O_NOFOLLOW);
  int err = 0;
  libzip::UniqueZip z(zip_fdopen(fd.get(), 0, &err));
  if (!z) throw FormatError(fmt::format("not a readable zip archive: {}", libzip::error_text(err)));
  (void)fd.release();  // the archive owns the descriptor now
  const zip_int64_t n = zip_get_num_entries(z.get(), 0);
  if (n < 0) throw FormatError("cannot count the zip archive's members");
  if (static_cast<std::uint64_t>(n) > kMaxZipEntries)
    throw FormatError(fmt::format("zip archive with {} members, more than {}", n, kMaxZipEntries));
  bool data_pkl = false, constants_pkl = false, package = false;
  std::uint64_t total = 0;
  std::vector<std::uint8_t> buf;
  for (zip_int64_t i = 0; i < n; ++i) {
    const char *raw = zip_get_name(z.get(), static_cast<zip_uint64_t>(i), 0);
    if (!raw) {
      out.fail(fmt::format("zip member {} has no readable name", i));
      continue;
    }
    const std::string name = utf8(raw);
    if (ends_with(name, ".py")) ++out.python_sources;
    if (name.find(".data/extern_modules") != std::string::npos) package = true;
    if (!ends_with(name, ".pkl")) continue;
    if (base_of(name) == "data.pkl") data_pkl = true;
    if (base_of(name) == "constants.pkl") constants_pkl = true;
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(z.get(), static_cast<zip_uint64_t>(i), 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE)) {
      out.fail(fmt::format("{}: cannot stat the member", name));
      continue;
    }
    if (st.size > kMaxPickleBytes) {
      out.fail(fmt::format("{}: {} bytes, more than {} MiB, not scanned", name, st.size, kMaxPickleBytes >> 20));
      continue;
    }
    if (!range_within(total, st.size, kMaxZipPickleBytes)) {
      out.fail(fmt::format("more than {} MiB of pickles in the archive, not all scanned", kMaxZipPickleBytes >> 20));
      break;
    }
    total += st.size;
    libzip::UniqueZipFile f(zip_fopen_index(z.get(), static_cast<zip_uint64_t>(i), 0));
    if (!f) {
      out.fail(fmt::format("{}: cannot open the member: {}", name, zip_strerror(z.get())));
      continue;
    }
    buf.resize(static_cast<std::size_t>(st.size));
    std::size_t got = 0;
    bool ok = true;
    while (got < buf.size()) {
      const zip_int64_t r = zip_fread(f.get(), buf.data() + got, buf.size() - got);
      if (r <= 0) {
        out.fail(fmt::format("{}: {}", name, r < 0 ? zip_file_strerror(f.get()) : "member shorter than its size"));
        ok = false;
        break;
      }
      got += static_cast<std::size_t>(r);
    }
    // Reading to the end makes libzip check the CRC; a member longer than declared is an error too.
    std::uint8_t extra = 0;
    if (ok && zip_fread(f.get(), &extra, 1) != 0) {
      out.fail(fmt::format("{}: member longer than its size or failing its CRC check", name));
      ok = false;
    }
    if (!ok) continue;
    out.members.push_back(name);
    try {
      out.merge(scan_pickle(buf));
    } catch (const FormatError &fe) {
      out.fail(fmt::format("{}: {}", name, fe.what()));
    }
  }
  out.format = package ? "torch.package" : constants_pkl ? "torchscript" : data_pkl ? "torch-zip" : "zip";
}

enum class PickleKind { kNone, kPlain, kLegacyTorch, kZip };

// Which files are pickles: file_kinds.hpp's pickle_hint, then the first bytes.
PickleKind pickle_kind(const TreeEntry &e) {
  const auto hint = pickle_hint(e.path);
  if (hint == PickleHint::kNo) return PickleKind::kNone;
  const auto head = read_head(e, 4);
  if (head.size() == 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4) return PickleKind::kZip;
  if (hint == PickleHint::kYes) return PickleKind::kPlain;
  if (!looks_like_protocol_pickle(head)) return PickleKind::kNone;
  return hint == PickleHint::kIfMagic ? PickleKind::kPlain : PickleKind::kLegacyTorch;
}

// `data_files`: ONNX external data, raw tensors that only look like a pickle by chance.
void analyse_pickles(const Tree &tree, Report &r, json &formats, const std::set<std::string> &data_files,
                     const std::function<void()> &check) {
  IndexedObject all;
  std::vector<std::string> ordinary, ordinary_paths;  // notes for pickles with nothing dangerous
  for (const auto &e : tree.entries()) {
    if (e.type != Type::kFile || e.size == 0 || data_files.count(e.path)) continue;
    check();
    PickleFile pf;
    PickleKind kind = PickleKind::kNone;
    try {
      kind = pickle_kind(e);
      if (kind == PickleKind::kNone) continue;
      if (kind == PickleKind::kZip) {
        scan_pickle_zip(e, pf);
      } else {
        pf.format = kind == PickleKind::kLegacyTorch ? "torch-legacy" : "pickle";
        // torch.load of a legacy file reads five pickles; a .pkl may hold several dumped in a row.
        scan_pickle_file(e, kind == PickleKind::kLegacyTorch ? 5 : 64, pf);
      }
    } catch (const Error &x) {
      if (kind == PickleKind::kNone) {
        r.problem(fmt::format("{}: cannot read: {}", e.path, x.what()));
        continue;
      }
      if (pf.format.empty()) pf.format = kind == PickleKind::kZip ? "zip" : "pickle";
      pf.fail(x.what());
    }
    json j;
    j["format"] = pf.format;
    j["pickles"] = pf.pickles;
    if (kind == PickleKind::kZip) {
      auto m = json::array();
      for (const auto &x : pf.members) m.push_back(x);
      j["members"] = std::move(m);
      j["python_sources"] = pf.python_sources;
    }
    std::vector<std::string> imports, dangerous;
    for (const auto &i : pf.imports) {
      imports.push_back(utf8(i.dotted()));
      if (dangerous_import(i)) dangerous.push_back(imports.back());
    }
    j["imports"] = imports;
    j["dangerous"] = dangerous;
    if (pf.imports_truncated) j["imports_truncated"] = true;
    if (!pf.error.empty()) j["error"] = utf8(pf.error);
    all.set(e.path, std::move(j));

    if (!dangerous.empty())
      r.problem(fmt::format("{}: pickle imports {}: loading it can run arbitrary code", e.path, list_some(dangerous)));
    if (!pf.error.empty()) {
      r.problem(
          fmt::format("{}: cannot scan the pickle ({}); loading it runs code that was not checked", e.path, pf.error));
    } else if (dangerous.empty()) {
      ordinary_paths.push_back(e.path);
      ordinary.push_back(fmt::format("{} is a pickle ({}): loading it runs code; it imports {}", e.path, pf.format,
                                     imports.empty() ? std::string("nothing") : list_some(imports)));
    }
    if (pf.python_sources)
      r.note(
          fmt::format("{}: archive with {} Python source files, which run when imported", e.path, pf.python_sources));
  }
  // Many shards of one checkpoint would repeat the same line: past a few, one line says it all.
  if (ordinary.size() <= 3) {
    for (auto &n : ordinary) r.note(std::move(n));
  } else {
    r.note(fmt::format("{} pickle files, whose imports are all ordinary: loading them runs code ({})", ordinary.size(),
                       list_some(ordinary_paths, 3)));
  }
  if (!all.object.empty()) formats["pickles"] = std::move(all.object);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face

std::optional<SafetensorsSummary> read_safetensors(const TreeEntry &e) {
  const auto first = read_head(e, 9);
  if (first.size() < 9) return std::nullopt;
  const std::uint64_t n = load_le<std::uint64_t>(first.data());
  if (n > kMaxSafetensorsHeader || !range_within(8, n, e.size)) return parse_safetensors(first, e.size);
  const auto head = read_head(e, 8 + n);
  return parse_safetensors(head, e.size);
}

struct ShardInfo {
  std::optional<SafetensorsSummary> summary;
  std::string error;
};

class HuggingFace {
 public:
  HuggingFace(const Tree &t, Report &r, const std::function<void()> &check) : tree_(t), r_(r), check_(check) {}

  void run(json &formats) {
    auto models = json::array();
    dir("", models);
    for (const auto &d : tree_.entries())
      if (d.type == Type::kDirectory && !d.path.empty()) dir(d.path, models);
    if (!models.empty()) formats["huggingface"] = std::move(models);
  }

 private:
  void dir(const std::string &d, json &models) {
    std::vector<std::string> st_index, bin_index, st_files, bin_files, tokenizer;
    bool config = false;
    for (const TreeEntry *c : tree_.children(d)) {
      const std::string_view name = base_of(c->path);
      if (!tree_.file(c->path)) continue;
      if (name == "config.json") config = true;
      if (ends_with(name, ".safetensors.index.json"))
        st_index.emplace_back(name);
      else if (ends_with(name, ".bin.index.json"))
        bin_index.emplace_back(name);
      else if (ends_with(name, ".safetensors"))
        st_files.emplace_back(name);
      else if (name.starts_with("pytorch_model") && ends_with(name, ".bin"))
        bin_files.emplace_back(name);
      else if (detect_kind(name, {}) == format::FileKind::kTokenizer)
        tokenizer.push_back(c->path);
    }
    if (st_index.empty() && bin_index.empty() && !(config && (!st_files.empty() || !bin_files.empty()))) return;
    check_();
    json m;
    m["dir"] = d;
    m["config"] = config ? json(join(d, "config.json")) : json(nullptr);
    if (config) read_config(join(d, "config.json"), m);

    std::vector<std::string> shards;  // package paths
    if (!st_index.empty()) {
      std::sort(st_index.begin(), st_index.end(), [](const std::string &a, const std::string &b) {
        return (a == "model.safetensors.index.json") > (b == "model.safetensors.index.json") ||
               ((a == "model.safetensors.index.json") == (b == "model.safetensors.index.json") && a < b);
      });
      m["index"] = join(d, st_index.front());
      for (const auto &ix : st_index) check_index(d, ix, true, shards);
    } else {
      m["index"] = nullptr;
      for (const auto &s : st_files) shards.push_back(join(d, s));
    }
    std::uint64_t params = 0;
    std::map<std::string, std::uint64_t> dtypes;
    for (const auto &s : shards) {
      const auto &info = shard(s);
      if (!info.summary) continue;
      params += info.summary->parameters;
      for (const auto &[k, v] : info.summary->dtypes) dtypes[k] += v;
    }
    m["shards"] = shards;
    m["parameters"] = params;
    m["dtypes"] = dtypes;
    if (!bin_index.empty() || !bin_files.empty()) {
      std::vector<std::string> bins;
      for (const auto &ix : bin_index) check_index(d, ix, false, bins);
      if (bin_index.empty())
        for (const auto &b : bin_files) bins.push_back(join(d, b));
      m["pytorch_weights"] = bins;
    }
    m["tokenizer"] = tokenizer;
    models.push_back(std::move(m));
  }

  void read_config(const std::string &path, json &m) {
    try {
      const auto c = nlohmann::json::parse(read_text(*tree_.file(path), kMaxConfigJson));
      if (!c.is_object()) throw FormatError("not a JSON object");
      if (c.contains("architectures") && c["architectures"].is_array()) {
        std::vector<std::string> a;
        for (const auto &x : c["architectures"])
          if (x.is_string()) a.push_back(x.get<std::string>());
        m["architectures"] = a;
      }
      for (const char *k : {"model_type", "torch_dtype", "transformers_version", "_class_name", "_diffusers_version"})
        if (c.contains(k) && c[k].is_string()) m[k[0] == '_' ? k + 1 : k] = c[k].get<std::string>();
      if (!m.contains("torch_dtype") && c.contains("dtype") && c["dtype"].is_string())
        m["torch_dtype"] = c["dtype"].get<std::string>();
    } catch (const Error &e) {
      r_.problem(fmt::format("{}: {}", path, e.what()));
    } catch (const nlohmann::json::exception &e) {
      r_.problem(fmt::format("{}: not valid JSON: {}", path, e.what()));
    }
  }

  const ShardInfo &shard(const std::string &path) {
    const auto it = shards_.find(path);
    if (it != shards_.end()) return it->second;
    check_();
    ShardInfo info;
    try {
      info.summary = read_safetensors(*tree_.file(path));
      if (!info.summary) info.error = "not a safetensors file";
    } catch (const Error &e) {
      info.error = e.what();
    }
    if (!info.error.empty()) r_.problem(fmt::format("{}: {}", path, info.error));
    return shards_.emplace(path, std::move(info)).first->second;
  }

  // An index's weight_map must point only at shards that are in the package, and (for safetensors)
  // every tensor of those shards must be mapped to its own shard, and every mapped tensor be there.
  void check_index(const std::string &d, const std::string &name, bool safetensors, std::vector<std::string> &shards) {
    const std::string ipath = join(d, name);
    nlohmann::json wm;
    try {
      auto j = nlohmann::json::parse(read_text(*tree_.file(ipath), kMaxConfigJson));
      if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        throw FormatError("no \"weight_map\" object");
      wm = std::move(j["weight_map"]);
    } catch (const Error &e) {
      r_.problem(fmt::format("{}: {}", ipath, e.what()));
      return;
    } catch (const nlohmann::json::exception &e) {
      r_.problem(fmt::format("{}: not valid JSON: {}", ipath, e.what()));
      return;
    }
    // shard reference -> the tensors mapped to it
    std::map<std::string, std::vector<std::string>> by_ref;
    std::vector<std::string> not_strings;
    for (const auto &[tensor, ref] : wm.items()) {
      if (ref.is_string())
        by_ref[ref.get<std::string>()].push_back(tensor);
      else
        not_strings.push_back(tensor);
    }
    if (!not_strings.empty())
      r_.problem(fmt::format("{}: weight_map values of {} are not strings", ipath, list_some(not_strings, 3)));
    std::map<std::string, std::string> ref_path;  // reference -> package path of the shard
    std::set<std::string> known(shards.begin(), shards.end());
    for (const auto &[ref, names] : by_ref) {
      const auto p = normalise(d, ref);
      if (!p) {
        r_.problem(
            fmt::format("{}: weight_map names shard '{}' outside the package ({})", ipath, ref, tensors(names.size())));
        continue;
      }
      if (!tree_.file(*p)) {
        r_.problem(fmt::format("{}: weight_map maps {} (e.g. {}) to shard {}, which is not in the package", ipath,
                               tensors(names.size()), names.front(), ref));
        continue;
      }
      ref_path[ref] = *p;
      if (known.insert(*p).second) shards.push_back(*p);
    }
    if (safetensors) {
      for (const auto &[ref, p] : ref_path) {
        const auto &info = shard(p);
        if (!info.summary) continue;
        const auto &names = info.summary->names;  // sorted
        std::vector<std::string> unmapped, elsewhere, absent;
        for (const auto &t : names) {
          const auto it = wm.find(t);
          if (it == wm.end()) {
            unmapped.push_back(t);
          } else if (it->is_string()) {
            const auto q = normalise(d, it->get_ref<const std::string &>());
            if (!q || *q != p) elsewhere.push_back(t);
          }
        }
        for (const auto &t : by_ref[ref])
          if (!std::binary_search(names.begin(), names.end(), t)) absent.push_back(t);
        if (!unmapped.empty())
          r_.problem(fmt::format("{}: {} missing from the weight_map of {}: {}", p, tensors(unmapped.size()), ipath,
                                 list_some(unmapped, 3)));
        if (!elsewhere.empty())
          r_.problem(fmt::format("{}: {} mapped to another shard by {}: {}", p, tensors(elsewhere.size()), ipath,
                                 list_some(elsewhere, 3)));
        if (!absent.empty())
          r_.problem(fmt::format("{}: weight_map maps {} to {}, which does not contain them: {}", ipath,
                                 tensors(absent.size()), ref, list_some(absent, 3)));
      }
    }
    // Shards named like this index's ("model-00003-of-00004.safetensors") that it does not use.
    const std::string prefix = name.substr(0, name.size() - std::string_view(".index.json").size());
    const auto dot = prefix.rfind('.');
    const std::string stem = prefix.substr(0, dot) + "-", ext = prefix.substr(dot);
    for (const TreeEntry *c : tree_.children(d)) {
      const std::string_view b = base_of(c->path);
      if (b.starts_with(stem) && ends_with(b, ext) && b.find("-of-") != std::string_view::npos && !known.count(c->path))
        r_.problem(fmt::format("{}: shard {} is not referenced by the weight_map", ipath, b));
    }
  }

  const Tree &tree_;
  Report &r_;
  const std::function<void()> &check_;
  std::map<std::string, ShardInfo> shards_;
};

// ---------------------------------------------------------------------------------------------
// ONNX: a minimal protobuf wire-format reader over the file, never holding more than 64 KiB

struct PbField {
  std::uint32_t number = 0;
  unsigned wire = 0;
  std::uint64_t value = 0;           // varint
  std::uint64_t begin = 0, len = 0;  // length-delimited payload
};

class Pb {
 public:
  explicit Pb(ByteSource &s) : s_(s) {}
  std::uint64_t varint(std::uint64_t &pos, std::uint64_t end) {
    std::uint64_t v = 0;
    for (unsigned i = 0; i < 10; ++i) {
      if (pos >= end) throw FormatError(fmt::format("truncated varint at offset {}", pos));
      const std::uint8_t b = s_.at(pos++);
      if (i == 9 && b > 1) throw FormatError(fmt::format("varint overflows 64 bits at offset {}", pos - 1));
      v |= static_cast<std::uint64_t>(b & 0x7f) << (7 * i);
      if (!(b & 0x80)) return v;
    }
    throw FormatError("varint longer than 10 bytes");
  }
  // Reads the next field of the message [pos, end); false at its end.
  bool next(std::uint64_t &pos, std::uint64_t end, PbField &f) {
    if (pos >= end) return false;
    tick();
    const std::uint64_t at = pos;
    const std::uint64_t tag = varint(pos, end);
    if (tag >> 3 == 0 || tag >> 3 > 0x1fffffff) throw FormatError(fmt::format("invalid field number at offset {}", at));
    f.number = static_cast<std::uint32_t>(tag >> 3);
    f.wire = static_cast<unsigned>(tag & 7);
    switch (f.wire) {
      case 0: f.value = varint(pos, end); break;
      case 1:
      case 5: {
        const std::uint64_t n = f.wire == 1 ? 8 : 4;
        if (end - pos < n) throw FormatError(fmt::format("truncated fixed-width field at offset {}", at));
        pos += n;
        break;
      }
      case 2:
        f.len = varint(pos, end);
        if (f.len > end - pos) throw FormatError(fmt::format("field at offset {} runs past its message", at));
        f.begin = pos;
        pos += f.len;
        break;
      default: throw FormatError(fmt::format("unsupported wire type {} at offset {}", f.wire, at));
    }
    return true;
  }
  // Counts one unit of work (a field, a packed value) against the bound.
  void tick() {
    if (++fields_ > kMaxFields) throw FormatError("too many protobuf fields to walk");
  }
  std::string text(const PbField &f, std::size_t cap = 4096) {
    std::string s(static_cast<std::size_t>(std::min<std::uint64_t>(f.len, cap)), '\0');
    s_.read(f.begin, std::span(reinterpret_cast<std::uint8_t *>(s.data()), s.size()));
    return s;
  }

 private:
  static constexpr std::uint64_t kMaxFields = 50'000'000;
  ByteSource &s_;
  std::uint64_t fields_ = 0;
};

struct OnnxTensor {
  std::string name;
  std::int64_t data_type = 0;
  std::uint64_t count = 1;
  bool count_overflows = false;
  bool external = false;
  std::optional<std::string> location, offset, length;
  bool location_too_long = false;
};

class OnnxModel {
 public:
  OnnxModel(const Tree &t, Report &r, const TreeEntry &model, std::set<std::string> &data_files)
      : tree_(t), r_(r), model_(model), data_files_(data_files) {}

  json run() {
    json j;
    j["model"] = model_.path;
    ByteSource src(model_);
    Pb pb(src);
    pb_ = &pb;
    std::uint64_t pos = 0;
    PbField f;
    IndexedObject opsets;
    std::string producer, producer_version;
    while (pb.next(pos, src.size(), f)) {
      if (f.number == 1 && f.wire == 0)
        j["ir_version"] = f.value;
      else if (f.number == 2 && f.wire == 2)
        producer = pb.text(f, 256);
      else if (f.number == 3 && f.wire == 2)
        producer_version = pb.text(f, 256);
      else if (f.number == 8 && f.wire == 2)
        opset(f, opsets);
      else if (f.number == 7 && f.wire == 2)
        graph(f, 0);
      else if (f.number == 20 && f.wire == 2)
        each(f, [&](const PbField &g) {  // TrainingInfoProto
          if ((g.number == 1 || g.number == 2) && g.wire == 2) graph(g, 0);
        });
      else if (f.number == 25 && f.wire == 2)
        each(f, [&](const PbField &n) {  // FunctionProto.node
          if (n.number == 7 && n.wire == 2) node(n, 0);
        });
    }
    if (!producer.empty()) j["producer"] = utf8(producer + (producer_version.empty() ? "" : " " + producer_version));
    j["opsets"] = std::move(opsets.object);
    j["tensors"] = tensors_;
    j["external_data"] = std::move(external_);
    if (external_dropped_) j["external_data_truncated"] = external_dropped_;
    return j;
  }

 private:
  template <typename Fn>
  void each(const PbField &msg, Fn &&fn) {
    std::uint64_t pos = msg.begin;
    PbField f;
    while (pb_->next(pos, msg.begin + msg.len, f)) fn(f);
  }
  void opset(const PbField &msg, IndexedObject &opsets) {
    std::string domain;
    std::uint64_t version = 0;
    each(msg, [&](const PbField &f) {
      if (f.number == 1 && f.wire == 2) domain = pb_->text(f, 256);
      if (f.number == 2 && f.wire == 0) version = f.value;
    });
    opsets.set(utf8(domain), version);
  }
  void graph(const PbField &msg, unsigned depth) {
    if (depth > kMaxDepth) throw FormatError(fmt::format("subgraphs nested deeper than {}", kMaxDepth));
    each(msg, [&](const PbField &f) {
      if (f.wire != 2) return;
      if (f.number == 1)
        node(f, depth);
      else if (f.number == 5)
        tensor(f);
      else if (f.number == 15)
        sparse(f);
    });
  }
  void node(const PbField &msg, unsigned depth) {
    each(msg, [&](const PbField &f) {
      if (f.number != 5 || f.wire != 2) return;
      each(f, [&](const PbField &a) {  // AttributeProto
        if (a.wire != 2) return;
        if (a.number == 5 || a.number == 10)
          tensor(a);
        else if (a.number == 6 || a.number == 11)
          graph(a, depth + 1);
        else if (a.number == 22 || a.number == 23)
          sparse(a);
      });
    });
  }
  void sparse(const PbField &msg) {
    each(msg, [&](const PbField &f) {
      if ((f.number == 1 || f.number == 2) && f.wire == 2) tensor(f);
    });
  }
  void tensor(const PbField &msg) {
    OnnxTensor t;
    auto dim = [&](std::uint64_t d) {
      if (mul_overflows(t.count, d, t.count)) t.count_overflows = true;
    };
    each(msg, [&](const PbField &f) {
      if (f.number == 1 && f.wire == 0)
        dim(f.value);
      else if (f.number == 1 && f.wire == 2) {  // packed dims
        std::uint64_t p = f.begin;
        while (p < f.begin + f.len) pb_->tick(), dim(pb_->varint(p, f.begin + f.len));
      } else if (f.number == 2 && f.wire == 0)
        t.data_type = static_cast<std::int64_t>(f.value);
      else if (f.number == 8 && f.wire == 2)
        t.name = pb_->text(f);
      else if (f.number == 14 && f.wire == 0)
        t.external = f.value == 1;
      else if (f.number == 13 && f.wire == 2) {
        std::string key, value;
        bool long_value = false;
        each(f, [&](const PbField &kv) {
          if (kv.number == 1 && kv.wire == 2) key = pb_->text(kv, 64);
          if (kv.number == 2 && kv.wire == 2) value = pb_->text(kv), long_value = kv.len > 4096;
        });
        if (key == "location")
          t.location = value, t.location_too_long = long_value;
        else if (key == "offset")
          t.offset = value;
        else if (key == "length")
          t.length = value;
      }
    });
    ++tensors_;
    if (t.external) check_external(t);
  }

  static std::optional<std::uint64_t> number(const std::string &s) {
    if (s.empty() || s.size() > 20) return std::nullopt;
    std::uint64_t v = 0;
    for (char c : s) {
      if (c < '0' || c > '9' || mul_overflows(v, 10, v) || add_overflows(v, static_cast<std::uint64_t>(c - '0'), v))
        return std::nullopt;
    }
    return v;
  }

  void check_external(const OnnxTensor &t) {
    const std::string who = fmt::format("{}: tensor '{}'", model_.path, utf8(t.name));
    if (!t.location) {
      r_.problem(who + " is stored externally but has no location");
      return;
    }
    if (t.location_too_long) {
      r_.problem(who + ": external data location longer than 4096 bytes");
      return;
    }
    std::optional<std::uint64_t> off = std::uint64_t{0}, len;
    if (t.offset) off = number(*t.offset);
    if (t.length) len = number(*t.length);
    if (!off || (t.length && !len)) {
      r_.problem(fmt::format("{}: external data offset '{}' / length '{}' are not decimal numbers", who,
                             utf8(t.offset.value_or("")), utf8(t.length.value_or(""))));
      return;
    }
    if (external_.size() < kMaxExternalEntries) {
      json x;
      x["tensor"] = utf8(t.name);
      x["location"] = utf8(*t.location);
      x["offset"] = *off;
      x["length"] = len ? json(*len) : json(nullptr);
      external_.push_back(std::move(x));
    } else {
      ++external_dropped_;
    }
    const auto p = normalise(dir_of(model_.path), *t.location);
    if (!p) {
      r_.problem(
          fmt::format("{}: external data location '{}' is absolute or outside the package", who, utf8(*t.location)));
      return;
    }
    const TreeEntry *e = tree_.file(*p);
    if (!e) {
      r_.problem(fmt::format("{}: external data file {} is not in the package", who, utf8(*t.location)));
      return;
    }
    data_files_.insert(e->path);
    if (len ? !range_within(*off, *len, e->size) : *off > e->size) {
      r_.problem(fmt::format("{}: external data [{}, +{}) lies outside {} ({} bytes)", who, *off,
                             len ? std::to_string(*len) : "rest", utf8(*t.location), e->size));
      return;
    }
    const auto need = t.count_overflows ? std::nullopt : onnx_tensor_bytes(t.data_type, t.count);
    if (need && len && *len != *need)
      r_.problem(fmt::format("{}: external data length {} but its shape and type need {} bytes", who, *len, *need));
    else if (need && !len && e->size - *off < *need)
      r_.problem(fmt::format("{}: {} has {} bytes after offset {}, its shape and type need {}", who, utf8(*t.location),
                             e->size - *off, *off, *need));
  }

  static constexpr unsigned kMaxDepth = 64;
  static constexpr std::size_t kMaxExternalEntries = 100'000;
  const Tree &tree_;
  Report &r_;
  const TreeEntry &model_;
  std::set<std::string> &data_files_;
  Pb *pb_ = nullptr;
  std::uint64_t tensors_ = 0;
  json external_ = json::array();
  std::uint64_t external_dropped_ = 0;
};

void analyse_onnx(const Tree &tree, Report &r, json &formats, std::set<std::string> &data_files,
                  const std::function<void()> &check) {
  auto models = json::array();
  for (const auto &e : tree.entries()) {
    if (e.type != Type::kFile || !ends_with(lower(e.path), ".onnx")) continue;
    check();
    try {
      models.push_back(OnnxModel(tree, r, e, data_files).run());
    } catch (const Error &x) {
      r.problem(fmt::format("{}: not a readable ONNX model: {}", e.path, x.what()));
      models.push_back(json{{"model", e.path}, {"error", utf8(x.what())}});
    }
  }
  if (!models.empty()) formats["onnx"] = std::move(models);
}

// ---------------------------------------------------------------------------------------------
// MLflow

json yaml_to_json(const YAML::Node &n, unsigned depth, std::size_t &budget) {
  if (budget == 0) throw FormatError("too many YAML nodes (aliases?)");
  --budget;
  if (depth > 32) throw FormatError("YAML nested deeper than 32 levels");
  switch (n.Type()) {
    case YAML::NodeType::Scalar: return utf8(n.Scalar());
    case YAML::NodeType::Sequence: {
      auto a = json::array();
      for (const auto &x : n) a.push_back(yaml_to_json(x, depth + 1, budget));
      return a;
    }
    case YAML::NodeType::Map: {
      IndexedObject o;
      for (const auto &kv : n) {
        std::string key = kv.first.IsScalar() ? utf8(kv.first.Scalar()) : std::string("<complex key>");
        o.set(std::move(key), yaml_to_json(kv.second, depth + 1, budget));
      }
      return std::move(o.object);
    }
    default: return nullptr;
  }
}

// Flavor keys whose string values are paths relative to the MLmodel's directory.
bool path_key(std::string_view k) {
  for (std::string_view p : {"data", "code", "model_data", "pickled_model", "saved_model_dir", "model_binary", "path",
                             "conda", "virtualenv", "env", "model_file", "model_path", "artifact_path"})
    if (k == p) return true;
  return false;
}

void collect_paths(const json &j, const std::string &where, unsigned depth,
                   std::vector<std::pair<std::string, std::string>> &out) {
  if (depth > 32 || !j.is_object()) return;
  for (const auto &[k, v] : j.items()) {
    if (v.is_string() && path_key(k))
      out.emplace_back(where + "." + k, v.get<std::string>());
    else if (v.is_object())
      collect_paths(v, where + "." + k, depth + 1, out);
  }
}

void analyse_mlflow(const Tree &tree, Report &r, json &formats, const std::function<void()> &check) {
  auto models = json::array();
  for (const auto &e : tree.entries()) {
    if (e.type != Type::kFile || base_of(e.path) != "MLmodel") continue;
    check();
    const std::string d(dir_of(e.path));
    json m;
    m["mlmodel"] = e.path;
    json doc;
    try {
      const YAML::Node root = YAML::Load(read_text(e, kMaxMlmodel));
      std::size_t budget = 100'000;
      doc = yaml_to_json(root, 0, budget);
    } catch (const Error &x) {
      r.problem(fmt::format("{}: {}", e.path, x.what()));
    } catch (const YAML::Exception &x) {
      r.problem(fmt::format("{}: not valid YAML: {}", e.path, x.what()));
    }
    if (!doc.is_object()) {
      if (!doc.is_null()) r.problem(fmt::format("{}: not a YAML mapping", e.path));
      m["flavors"] = json::object();
      m["artifacts"] = json::array();
      models.push_back(std::move(m));
      continue;
    }
    for (const char *k : {"mlflow_version", "model_uuid", "run_id", "artifact_path", "utc_time_created"})
      if (doc.contains(k) && doc[k].is_string()) m[k] = doc[k];
    std::vector<std::pair<std::string, std::string>> refs;
    if (doc.contains("flavors") && doc["flavors"].is_object() && !doc["flavors"].empty()) {
      m["flavors"] = doc["flavors"];
      for (const auto &[name, f] : doc["flavors"].items()) collect_paths(f, name, 0, refs);
    } else {
      m["flavors"] = json::object();
      r.problem(fmt::format("{}: no flavors", e.path));
    }
    if (doc.contains("saved_input_example_info") && doc["saved_input_example_info"].is_object()) {
      const auto &s = doc["saved_input_example_info"];
      if (s.contains("artifact_path") && s["artifact_path"].is_string())
        refs.emplace_back("saved_input_example_info.artifact_path", s["artifact_path"].get<std::string>());
    }
    std::vector<std::string> artifacts;
    std::set<std::string> listed;  // not a search of `artifacts`: quadratic in the number of references
    for (const auto &[key, value] : refs) {
      if (value.empty() || value.find("://") != std::string::npos) continue;  // URIs are not package paths
      const auto p = normalise(d, value);
      if (!p) {
        r.problem(fmt::format("{}: {} = '{}' is absolute or outside the package", e.path, key, value));
        continue;
      }
      if (listed.insert(*p).second) artifacts.push_back(*p);
      if (!tree.resolve(*p)) r.problem(fmt::format("{}: {} = '{}': {} is not in the package", e.path, key, value, *p));
    }
    m["artifacts"] = artifacts;
    models.push_back(std::move(m));
  }
  if (!models.empty()) formats["mlflow"] = std::move(models);
}

}  // namespace

std::optional<std::uint64_t> onnx_tensor_bytes(std::int64_t data_type, std::uint64_t count) {
  // Bytes per element by TensorProto.DataType: UNDEFINED, FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64,
  // STRING (variable), BOOL, FLOAT16, DOUBLE, UINT32, UINT64, COMPLEX64, COMPLEX128, BFLOAT16, FLOAT8 x4.
  static constexpr std::uint8_t kWidth[] = {0, 4, 1, 1, 2, 2, 4, 8, 0, 1, 2, 8, 4, 8, 8, 16, 2, 1, 1, 1, 1};
  if (data_type >= 21 && data_type <= 23) return count / 2 + count % 2;  // UINT4, INT4, FLOAT4E2M1: packed
  if (data_type < 0 || data_type >= static_cast<std::int64_t>(std::size(kWidth)) || kWidth[data_type] == 0)
    return std::nullopt;
  std::uint64_t n = 0;
  if (mul_overflows(count, kWidth[data_type], n)) return std::nullopt;
  return n;
}

FormatAnalysis analyse_formats(std::span<const TreeEntry> entries, const std::atomic<bool> *cancel) {
  FormatAnalysis out;
  Report r(out);
  const Tree tree(entries);
  const std::function<void()> check = [cancel] {
    if (cancel && cancel->load()) throw Interrupted();
  };
  HuggingFace(tree, r, check).run(out.formats);
  std::set<std::string> onnx_data;
  analyse_onnx(tree, r, out.formats, onnx_data, check);
  analyse_mlflow(tree, r, out.formats, check);
  analyse_pickles(tree, r, out.formats, onnx_data, check);
  r.finish();
  return out;
}

}  // namespace torshpkg
