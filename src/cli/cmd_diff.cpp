// torshpkg diff OLD NEW [--json] [--exit-code]: what changed between two packages (files, the
// tensors of safetensors files, manifest fields) and how much of NEW's stored bytes OLD already
// holds, which is what a delta update or the shared chunk cache saves.
#include <fmt/format.h>
#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cli.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file_kinds.hpp"
#include "torshpkg/open.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/reader.hpp"
#include "torshpkg/safetensors.hpp"
#include "torshpkg/trust_policy.hpp"

namespace torshpkg::cli {

namespace {

using Json = nlohmann::ordered_json;

// Bytes read from each side at a time when contents must be compared: memory stays at two pieces
// whatever the tensor or file size.
constexpr std::size_t kComparePiece = 1u << 20;
// Decoded chunks each side keeps: small tensors share chunks with their neighbours.
constexpr std::uint64_t kReaderCacheBytes = 16ull << 20;
// Tensors the text output lists per group; --json lists them all.
constexpr std::size_t kListedPerGroup = 10;

// The groups of changed tensors: JSON key, words of the summary line, label of a listed tensor.
struct TensorGroup {
  const char *key, *words, *label;
};
constexpr std::array<TensorGroup, 5> kTensorGroups{{{"changed", "changed", "changed"},
                                                    {"added", "added", "added"},
                                                    {"removed", "removed", "removed"},
                                                    {"reshaped", "reshaped", "reshaped"},
                                                    {"dtype_changed", "dtype changed", "dtype"}}};

// One of the two packages, opened, with its entries by path.
struct Side {
  std::shared_ptr<const Package> pkg;
  std::unique_ptr<Reader> reader;
  std::string trust;                                  // TrustDecision::summary
  std::map<std::string, std::uint32_t> entries;       // regular files and symlinks
  std::map<std::string, const ManifestFile *> files;  // the manifest's descriptions
};

Side open_side(const std::string &location, const RemoteArgs &remote, const KeyArgs &keys, const LoadedTrust &trust,
               bool require_trust) {
  Side s;
  s.pkg = open_package(location, open_options(location, remote, keys));
  // Named keys demand a trusted signature (as for verify); without them it is only reported.
  s.trust = enforce_trust(*s.pkg, check_signatures(*s.pkg, trust), !require_trust).summary;
  s.reader = std::make_unique<Reader>(s.pkg, kReaderCacheBytes);
  for (std::uint32_t i = 0; i < s.pkg->inode_count(); ++i)
    if (s.pkg->type(i) != format::NodeType::kDirectory) s.entries.emplace(s.pkg->path_of(i), i);
  for (const auto &f : s.pkg->manifest().files) s.files.emplace(f.path, &f);
  return s;
}

// Compares bytes of a file in OLD with bytes of a file in NEW: without reading them when the
// chunk index proves them equal, else a piece at a time through the verifying readers.
class Comparer {
 public:
  Comparer(Side &old_side, Side &new_side)
      : old_(old_side), new_(new_side), old_piece_(kComparePiece), new_piece_(kComparePiece) {}

  // Bytes [old_at, old_at + length) of OLD's file `oi` against [new_at, new_at + length) of NEW's `ni`.
  bool same(std::uint32_t oi, std::uint64_t old_at, std::uint32_t ni, std::uint64_t new_at, std::uint64_t length) {
    if (length == 0) return true;
    if (old_at == new_at && same_chunks(oi, ni, old_at, old_at + length)) return true;
    for (std::uint64_t done = 0; done < length;) {
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kComparePiece, length - done));
      const std::span<std::uint8_t> a(old_piece_.data(), n), b(new_piece_.data(), n);
      bytes_read_ += n;
      if (old_.reader->read(oi, old_at + done, a) != n || new_.reader->read(ni, new_at + done, b) != n) return false;
      if (!std::equal(a.begin(), a.end(), b.begin())) return false;
      done += n;
    }
    return true;
  }
  // Bytes read from each side so far: how much the chunk index could not vouch for.
  [[nodiscard]] std::uint64_t bytes_read() const noexcept { return bytes_read_; }

 private:
  // True when every chunk holding bytes [begin, end) is, in both files, the same stored bytes
  // (digest) decoded the same way: then those bytes are equal.
  [[nodiscard]] bool same_chunks(std::uint32_t oi, std::uint32_t ni, std::uint64_t begin, std::uint64_t end) const {
    const Package &a = *old_.pkg, &b = *new_.pkg;
    // A synthesised index (a zip mounted in place) has no chunk digests to compare.
    if (a.chunk_shift() != b.chunk_shift() || a.synthesized() || b.synthesized()) return false;
    const auto shift = a.chunk_shift();
    const std::uint64_t first = begin >> shift, last = (end - 1) >> shift;
    if (last >= a.chunks_in_file(oi) || last >= b.chunks_in_file(ni)) return false;
    for (auto k = first; k <= last; ++k) {
      const auto x = a.chunk(a.inode(oi).first + k), y = b.chunk(b.inode(ni).first + k);
      if (x.digest != y.digest || x.decoded_size != y.decoded_size || x.codec != y.codec || x.filter != y.filter)
        return false;
    }
    return true;
  }

  Side &old_, &new_;
  std::vector<std::uint8_t> old_piece_, new_piece_;
  std::uint64_t bytes_read_ = 0;
};

// Same type, size and contents (symlinks: target). The manifest's whole-file SHA-256 decides when
// both have one (the root digest covers it); otherwise the chunks, or the bytes, do.
bool same_entry(Comparer &cmp, const Side &o, std::uint32_t oi, const Side &n, std::uint32_t ni) {
  const Package &a = *o.pkg, &b = *n.pkg;
  if (a.type(oi) != b.type(ni) || a.inode(oi).size != b.inode(ni).size) return false;
  if (a.type(oi) == format::NodeType::kSymlink) return a.symlink_target(oi) == b.symlink_target(ni);
  const auto x = a.file_sha256(oi), y = b.file_sha256(ni);
  if (x && y) return *x == *y;
  return cmp.same(oi, 0, ni, 0, a.inode(oi).size);
}

bool is_safetensors(const Side &s, const std::string &path) {
  const auto it = s.files.find(path);
  return path.ends_with(".safetensors") || (it != s.files.end() && it->second->safetensors.has_value());
}

// The header of a safetensors file, read through the verifying reader (8 bytes of length, then
// the JSON, bounded as parse_safetensors bounds it); nullopt when it is not one.
std::optional<SafetensorsSummary> read_header(Side &s, std::uint32_t ino) {
  const auto size = s.pkg->inode(ino).size;
  std::array<std::uint8_t, 8> length_bytes{};
  if (size < 9 || s.reader->read(ino, 0, length_bytes) != length_bytes.size()) return std::nullopt;
  const auto n = load_le<std::uint64_t>(length_bytes.data());
  if (n > kMaxSafetensorsHeader || n > size - 8) return std::nullopt;
  std::vector<std::uint8_t> head(8 + n);
  if (s.reader->read(ino, 0, head) != head.size()) return std::nullopt;
  try {
    return parse_safetensors(head, size);
  } catch (const FormatError &e) {
    throw FormatError(fmt::format("{}: {}: {}", s.pkg->path(), s.pkg->path_of(ino), e.what()));
  }
}

std::uint64_t parameters(const TensorRange &t) {
  std::uint64_t n = 1;
  for (auto d : t.shape) n *= d;  // parse_safetensors refused shapes whose product overflows
  return n;
}

Json tensor_json(const TensorRange &t) {
  return {{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}, {"parameters", parameters(t)}};
}

Json both_sides_json(const TensorRange &o, const TensorRange &n, bool same_bytes) {
  return {{"name", n.name},
          {"old_dtype", o.dtype},
          {"new_dtype", n.dtype},
          {"old_shape", o.shape},
          {"new_shape", n.shape},
          {"old_parameters", parameters(o)},
          {"new_parameters", parameters(n)},
          {"same_bytes", same_bytes}};
}

// The tensors of a safetensors file in both packages: added, removed, changed (same dtype and
// shape, other bytes), reshaped, dtype_changed, unchanged. nullopt when either side is not a
// safetensors file.
std::optional<Json> diff_tensors(Comparer &cmp, Side &o, std::uint32_t oi, Side &n, std::uint32_t ni) {
  const auto before = read_header(o, oi), after = read_header(n, ni);
  if (!before || !after) return std::nullopt;
  std::map<std::string_view, const TensorRange *> old_by_name, new_by_name;
  for (const auto &t : before->ranges) old_by_name.emplace(t.name, &t);
  for (const auto &t : after->ranges) new_by_name.emplace(t.name, &t);
  Json groups = Json::object();
  for (const auto &g : kTensorGroups)
    groups[g.key] = {{"count", std::uint64_t{0}}, {"parameters", std::uint64_t{0}}, {"tensors", Json::array()}};
  auto add_to = [&groups](const char *group, Json entry, std::uint64_t params) {
    auto &g = groups[group];
    g["count"] = g["count"].get<std::uint64_t>() + 1;
    g["parameters"] = g["parameters"].get<std::uint64_t>() + params;
    g["tensors"].push_back(std::move(entry));
  };
  std::uint64_t unchanged = 0, unchanged_params = 0, old_params = 0, new_params = 0;
  for (const auto &t : before->ranges) {
    old_params += parameters(t);
    if (!new_by_name.count(t.name)) add_to("removed", tensor_json(t), parameters(t));
  }
  for (const auto &t : after->ranges) {  // file order
    new_params += parameters(t);
    const auto it = old_by_name.find(t.name);
    if (it == old_by_name.end()) {
      add_to("added", tensor_json(t), parameters(t));
      continue;
    }
    const TensorRange &was = *it->second;
    const bool same_bytes =
        was.end - was.begin == t.end - t.begin && cmp.same(oi, was.begin, ni, t.begin, t.end - t.begin);
    if (was.dtype != t.dtype)
      add_to("dtype_changed", both_sides_json(was, t, same_bytes), parameters(t));
    else if (was.shape != t.shape)
      add_to("reshaped", both_sides_json(was, t, same_bytes), parameters(t));
    else if (!same_bytes)
      add_to("changed", tensor_json(t), parameters(t));
    else
      ++unchanged, unchanged_params += parameters(t);
  }
  Json j = {{"old_tensors", before->tensors},
            {"new_tensors", after->tensors},
            {"old_parameters", old_params},
            {"new_parameters", new_params},
            {"unchanged", {{"count", unchanged}, {"parameters", unchanged_params}}}};
  for (const auto &g : kTensorGroups) j[g.key] = std::move(groups[g.key]);
  return j;
}

Json files_and_tensors(Comparer &cmp, Side &o, Side &n, Json &tensors) {
  Json added = Json::array(), removed = Json::array(), changed = Json::array();
  std::uint64_t unchanged = 0;
  for (const auto &[path, oi] : o.entries)
    if (!n.entries.count(path)) removed.push_back({{"path", path}, {"size", o.pkg->inode(oi).size}});
  for (const auto &[path, ni] : n.entries) {
    const auto it = o.entries.find(path);
    if (it == o.entries.end()) {
      added.push_back({{"path", path}, {"size", n.pkg->inode(ni).size}});
      continue;
    }
    const auto oi = it->second;
    if (same_entry(cmp, o, oi, n, ni)) {
      ++unchanged;
      continue;
    }
    changed.push_back({{"path", path}, {"old_size", o.pkg->inode(oi).size}, {"new_size", n.pkg->inode(ni).size}});
    const bool both_files =
        o.pkg->type(oi) == format::NodeType::kRegular && n.pkg->type(ni) == format::NodeType::kRegular;
    if (both_files && (is_safetensors(o, path) || is_safetensors(n, path)))
      if (auto t = diff_tensors(cmp, o, oi, n, ni)) tensors[path] = std::move(*t);
  }
  return {{"added", std::move(added)},
          {"removed", std::move(removed)},
          {"changed", std::move(changed)},
          {"unchanged", unchanged}};
}

Json manifest_changes(const Manifest &a, const Manifest &b) {
  Json fields = Json::object();
  auto field = [&fields](const char *key, const auto &x, const auto &y) {
    if (x != y) fields[key] = {{"old", x}, {"new", y}};
  };
  field("name", a.name, b.name);
  field("version", a.version, b.version);
  field("description", a.description, b.description);
  field("license", a.license, b.license);
  field("authors", a.authors, b.authors);
  std::map<std::string, std::string> old_deps, new_deps;
  for (const auto &d : a.dependencies) old_deps[d.name] = d.range;
  for (const auto &d : b.dependencies) new_deps[d.name] = d.range;
  Json added = Json::array(), removed = Json::array(), changed = Json::array();
  for (const auto &[name, range] : old_deps)
    if (!new_deps.count(name)) removed.push_back({{"name", name}, {"range", range}});
  for (const auto &[name, range] : new_deps) {
    const auto it = old_deps.find(name);
    if (it == old_deps.end())
      added.push_back({{"name", name}, {"range", range}});
    else if (it->second != range)
      changed.push_back({{"name", name}, {"old_range", it->second}, {"new_range", range}});
  }
  // The model formats the packer recognised ("huggingface", "onnx", ...): which ones differ.
  const auto fa = a.formats_json(), fb = b.formats_json();
  std::set<std::string> kinds;
  for (const auto &item : fa.items()) kinds.insert(item.key());
  for (const auto &item : fb.items()) kinds.insert(item.key());
  Json formats = Json::array();
  for (const auto &k : kinds)
    if (!fa.contains(k) || !fb.contains(k) || fa[k] != fb[k]) formats.push_back(k);
  return {
      {"fields", std::move(fields)},
      {"dependencies", {{"added", std::move(added)}, {"removed", std::move(removed)}, {"changed", std::move(changed)}}},
      {"formats", std::move(formats)}};
}

// NEW's distinct chunks (by digest: one stored twice is fetched and cached once) that OLD also has.
Json sharing(const Package &a, const Package &b) {
  std::vector<Digest> old_digests;
  if (!a.synthesized())  // a zip's chunks have no digests
    for (std::uint64_t k = 0; k < a.chunk_count(); ++k) old_digests.push_back(a.chunk(k).digest);
  std::sort(old_digests.begin(), old_digests.end());
  std::vector<std::pair<Digest, std::uint64_t>> wanted;  // (digest, stored bytes)
  for (std::uint64_t k = 0; k < b.chunk_count(); ++k) wanted.emplace_back(b.chunk(k).digest, b.chunk(k).stored_size);
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(
      std::unique(wanted.begin(), wanted.end(), [](const auto &x, const auto &y) { return x.first == y.first; }),
      wanted.end());
  std::uint64_t chunks = 0, bytes = 0, total = 0;
  for (const auto &[digest, size] : wanted) {
    total += size;
    if (std::binary_search(old_digests.begin(), old_digests.end(), digest)) ++chunks, bytes += size;
  }
  return {{"chunks", chunks},
          {"bytes", bytes},
          {"new_chunks", wanted.size()},
          {"new_bytes", total},
          {"percent", total ? 100.0 * static_cast<double>(bytes) / static_cast<double>(total) : 100.0}};
}

Json side_json(const Side &s) {
  const auto &m = s.pkg->manifest();
  return {{"package", s.pkg->path()},
          {"name", m.name},
          {"version", m.version},
          {"root_sha256", to_hex(s.pkg->root_digest())},
          {"chunk_size", s.pkg->chunk_size()},
          {"signature", s.trust}};
}

bool differs(const Json &j) {
  const auto &m = j["manifest"], &f = j["files"];
  const auto &d = m["dependencies"];
  return !m["fields"].empty() || !d["added"].empty() || !d["removed"].empty() || !d["changed"].empty() ||
         !m["formats"].empty() || !f["added"].empty() || !f["removed"].empty() || !f["changed"].empty();
}

Json diff(Side &o, Side &n) {
  Comparer cmp(o, n);
  Json tensors = Json::object();
  Json j = {{"old", side_json(o)}, {"new", side_json(n)}, {"differ", false}};
  j["manifest"] = manifest_changes(o.pkg->manifest(), n.pkg->manifest());
  j["files"] = files_and_tensors(cmp, o, n, tensors);
  j["tensors"] = std::move(tensors);
  j["shared"] = sharing(*o.pkg, *n.pkg);
  j["bytes_compared"] = cmp.bytes_read();
  j["differ"] = differs(j);
  return j;
}

// ---- text output -----------------------------------------------------------------------------

std::uint64_t u64(const Json &v) {
  return v.get<std::uint64_t>();
}
std::string str(const Json &v) {
  return v.is_string() && !v.get<std::string>().empty() ? v.get<std::string>() : "-";
}
std::string shape_string(const Json &shape) {
  return fmt::format("[{}]", fmt::join(shape.get<std::vector<std::uint64_t>>(), ", "));
}
std::string params(const Json &v) {
  return human_count(u64(v)) + " params";
}

void print_field_change(const char *key, const Json &change) {
  auto show = [](const Json &v) {
    if (!v.is_array()) return str(v);
    const auto list = v.get<std::vector<std::string>>();
    return list.empty() ? std::string("-") : fmt::format("{}", fmt::join(list, ", "));
  };
  fmt::print("{:<11} {} -> {}\n", key, show(change["old"]), show(change["new"]));
}

// "1 changed (180.2K params), 1 added (16 params)": the non-empty groups.
std::string tensor_groups(const Json &t) {
  std::string out;
  for (const auto &group : kTensorGroups) {
    const auto &g = t[group.key];
    if (u64(g["count"]) == 0) continue;
    out += fmt::format("{}{} {} ({})", out.empty() ? "" : ", ", u64(g["count"]), group.words, params(g["parameters"]));
  }
  return out.empty() ? "none changed (header only)" : out;
}

void print_tensors(const Json &t) {
  fmt::print("  {:<9} {}; {} unchanged; {} -> {} params\n", "tensors", tensor_groups(t), u64(t["unchanged"]["count"]),
             human_count(u64(t["old_parameters"])), human_count(u64(t["new_parameters"])));
  for (const auto &group : kTensorGroups) {
    const auto &list = t[group.key]["tensors"];
    const bool both_sides = list.empty() || list[0].contains("old_shape");  // reshaped, dtype_changed
    for (std::size_t i = 0; i < list.size() && i < kListedPerGroup; ++i) {
      const auto &x = list[i];
      if (!both_sides) {
        fmt::print("  {:<9} {}  {} {}  {}\n", group.label, str(x["name"]), str(x["dtype"]), shape_string(x["shape"]),
                   params(x["parameters"]));
        continue;
      }
      const auto dtype =
          x["old_dtype"] == x["new_dtype"] ? str(x["new_dtype"]) : str(x["old_dtype"]) + " -> " + str(x["new_dtype"]);
      const auto shape = x["old_shape"] == x["new_shape"]
                             ? shape_string(x["new_shape"])
                             : shape_string(x["old_shape"]) + " -> " + shape_string(x["new_shape"]);
      fmt::print("  {:<9} {}  {} {}  {}, {}\n", group.label, str(x["name"]), dtype, shape, params(x["new_parameters"]),
                 x["same_bytes"].get<bool>() ? "same bytes" : "bytes differ");
    }
    if (list.size() > kListedPerGroup)
      fmt::print("  {:<9} {} more {} (--json lists them all)\n", "...", list.size() - kListedPerGroup, group.words);
  }
}

void print_human(const Json &j) {
  for (const char *side : {"old", "new"}) {
    const auto &s = j[side];
    fmt::print("{:<11} {}: {} {}, root {}, {}\n", side, str(s["package"]), str(s["name"]), str(s["version"]),
               s["root_sha256"].get<std::string>().substr(0, 12), str(s["signature"]));
  }
  const auto &m = j["manifest"];
  for (const auto &item : m["fields"].items()) print_field_change(item.key().c_str(), item.value());
  const auto &deps = m["dependencies"];
  for (const auto &d : deps["added"]) fmt::print("{:<11} + {} {}\n", "depends", str(d["name"]), str(d["range"]));
  for (const auto &d : deps["removed"]) fmt::print("{:<11} - {} {}\n", "depends", str(d["name"]), str(d["range"]));
  for (const auto &d : deps["changed"])
    fmt::print("{:<11} ~ {} {} -> {}\n", "depends", str(d["name"]), str(d["old_range"]), str(d["new_range"]));
  if (!m["formats"].empty())
    fmt::print("{:<11} {} changed\n", "formats", fmt::join(m["formats"].get<std::vector<std::string>>(), ", "));
  const auto &f = j["files"];
  for (const auto &x : f["added"]) fmt::print("{:<11} {} ({})\n", "added", str(x["path"]), human_bytes(u64(x["size"])));
  for (const auto &x : f["removed"])
    fmt::print("{:<11} {} ({})\n", "removed", str(x["path"]), human_bytes(u64(x["size"])));
  for (const auto &x : f["changed"]) {
    const auto path = x["path"].get<std::string>();
    fmt::print("{:<11} {} ({} -> {})\n", "changed", path, human_bytes(u64(x["old_size"])),
               human_bytes(u64(x["new_size"])));
    if (j["tensors"].contains(path)) print_tensors(j["tensors"][path]);
  }
  fmt::print("{:<11} {} changed, {} added, {} removed, {} unchanged{}\n", "files", f["changed"].size(),
             f["added"].size(), f["removed"].size(), u64(f["unchanged"]),
             j["differ"].get<bool>() ? "" : "; no differences");
  const auto &s = j["shared"];
  fmt::print("{:<11} {} of {} chunks of new ({} of {} stored, {:.1f}%); {} to fetch\n", "shared", u64(s["chunks"]),
             u64(s["new_chunks"]), human_bytes(u64(s["bytes"])), human_bytes(u64(s["new_bytes"])),
             s["percent"].get<double>(), human_bytes(u64(s["new_bytes"]) - u64(s["bytes"])));
}

}  // namespace

void add_diff(CLI::App &app, Action &action) {
  struct Args {
    std::string old_location, new_location;
    bool json = false, exit_code = false;
    TrustArgs trust;
    RemoteArgs remote;
    KeyArgs keys;
  };
  auto a = std::make_shared<Args>();
  auto *cmd = app.add_subcommand(
      "diff", "Show what changed between two packages: files, tensors, manifest, and the chunks they share");
  cmd->add_option("OLD", a->old_location, "Package")->required();
  cmd->add_option("NEW", a->new_location, "Package")->required();
  cmd->add_flag("--json", a->json, "Print JSON instead of text");
  cmd->add_flag("--exit-code", a->exit_code, "Exit with status 1 when the packages differ (0 otherwise)");
  add_trust_options(cmd, a->trust);
  add_remote_options(cmd, a->remote);
  add_key_options(cmd, a->keys);
  cmd->callback([&action, a] {
    action = [a]() -> int {
      const auto trust = load_trust(a->trust);
      auto old_side = open_side(a->old_location, a->remote, a->keys, trust, a->trust.explicit_trust());
      auto new_side = open_side(a->new_location, a->remote, a->keys, trust, a->trust.explicit_trust());
      const auto j = diff(old_side, new_side);
      if (a->json)
        fmt::print("{}\n", j.dump(2));
      else
        print_human(j);
      return a->exit_code && j["differ"].get<bool>() ? kFailure : kOk;
    };
  });
}

}  // namespace torshpkg::cli
