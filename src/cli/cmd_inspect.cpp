// torshpkg inspect FILE [--json] [--tensors]
#include <sys/stat.h>

#include <fmt/format.h>
#include <algorithm>
#include <array>
#include <cctype>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "cli.hpp"
#include "torshpkg/codec.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/filter.hpp"
#include "torshpkg/open.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/reader.hpp"
#include "torshpkg/safetensors.hpp"
#include "torshpkg/trust_policy.hpp"

namespace torshpkg::cli {

namespace {

nlohmann::ordered_json signatures_json(const Package &pkg, const TrustStore &trust) {
  auto out = nlohmann::ordered_json::array();
  for (const auto &c : check_signatures(pkg, trust)) {
    nlohmann::ordered_json s;
    s["algorithm"] = "ed25519";
    s["key_id"] = to_hex(c.entry.key_id);
    s["status"] = signature_state_name(c.state);
    if (!c.key_source.empty()) s["key"] = c.key_source;
    out.push_back(std::move(s));
  }
  return out;
}

nlohmann::ordered_json summarise(const Package &pkg, const TrustStore &trust) {
  std::uint64_t files = 0, dirs = 0, links = 0, raw = 0;
  for (std::uint32_t i = 0; i < pkg.inode_count(); ++i) {
    const auto e = pkg.inode(i);
    switch (pkg.type(i)) {
      case format::NodeType::kDirectory: ++dirs; break;
      case format::NodeType::kSymlink: ++links; break;
      case format::NodeType::kRegular: ++files, raw += e.size; break;
    }
  }
  std::uint64_t stored = 0, dedup_saved = 0, unique = 0;
  std::map<std::string, std::uint64_t> codecs;
  struct FilterUse {
    std::uint64_t chunks = 0, raw = 0, stored = 0;
  };
  std::map<std::string, FilterUse> filters;
  for (std::uint64_t k = 0; k < pkg.chunk_count(); ++k) {
    const auto c = pkg.chunk(k);
    ++codecs[std::string(codec_name(c.codec))];
    auto &f = filters[std::string(filter_name(c.filter))];
    ++f.chunks, f.raw += c.decoded_size, f.stored += c.stored_size;
    if (pkg.first_use(k))
      stored += c.stored_size, ++unique;
    else
      dedup_saved += c.stored_size;
  }
  nlohmann::ordered_json j;
  j["package"] = pkg.path();
  j["format_version"] = fmt::format("{}.{}", pkg.header().version_major, pkg.header().version_minor);
  j["root_sha256"] = to_hex(pkg.root_digest());
  j["signed"] = !pkg.signatures().empty();
  j["signatures"] = signatures_json(pkg, trust);
  j["chunk_size"] = pkg.chunk_size();
  j["files"] = files;
  j["directories"] = dirs;
  j["symlinks"] = links;
  j["chunks"] = pkg.chunk_count();
  j["unique_chunks"] = unique;
  j["codecs"] = codecs;
  auto fj = nlohmann::ordered_json::object();
  for (const auto &[name, f] : filters)
    fj[name] = {{"chunks", f.chunks},
                {"raw_bytes", f.raw},
                {"stored_bytes", f.stored},
                {"ratio", f.raw ? static_cast<double>(f.stored) / static_cast<double>(f.raw) : 1.0}};
  j["filters"] = std::move(fj);
  j["raw_bytes"] = raw;
  j["stored_bytes"] = stored;
  j["dedup_saved_bytes"] = dedup_saved;
  j["package_bytes"] = pkg.file_size();
  j["ratio"] = raw ? static_cast<double>(pkg.file_size()) / static_cast<double>(raw) : 1.0;
  if (pkg.encrypted()) {
    auto recipients = nlohmann::ordered_json::array();
    for (const auto &st : pkg.key_stanzas()) {
      nlohmann::ordered_json r;
      if (st.type == StanzaType::kX25519) {
        r["type"] = "x25519";
        r["key_id"] = to_hex(st.id);
      } else {
        r["type"] = "passphrase";
        r["scrypt_log_n"] = st.scrypt_log_n;
      }
      recipients.push_back(std::move(r));
    }
    j["encryption"] = {{"cipher", "aes-256-gcm"},
                       {"names_sealed", pkg.names_sealed()},
                       {"unlocked", !pkg.locked()},
                       {"recipients", std::move(recipients)}};
  }
  // Sealed and no key: the manifest (names, versions, digests) is not public.
  j["manifest"] = pkg.names_hidden() ? nlohmann::ordered_json::object() : pkg.manifest().to_json();
  return j;
}

std::string str_or(const nlohmann::ordered_json &m, const char *key, const char *fallback = "-") {
  if (m.contains(key) && m[key].is_string() && !m[key].get<std::string>().empty()) return m[key].get<std::string>();
  return fallback;
}

std::uint64_t uint_or(const nlohmann::ordered_json &m, const char *key) {
  return m.is_object() && m.contains(key) && m[key].is_number_unsigned() ? m[key].get<std::uint64_t>() : 0;
}

// The strings of a JSON array (others skipped), at most `max` of them, then "+N more".
std::string joined(const nlohmann::ordered_json &a, std::size_t max = 8) {
  std::string out;
  std::size_t n = 0;
  if (!a.is_array()) return out;
  for (const auto &x : a) {
    if (!x.is_string()) continue;
    if (n++ < max) out += (out.empty() ? "" : ", ") + x.get<std::string>();
  }
  if (n > max) out += fmt::format(", +{} more", n - max);
  return out;
}

// "bf16", "fp32", "int8": the names people use for safetensors' BF16, F32, I8, ...
std::string dtype_name(std::string_view st) {
  std::string out;
  if (st.starts_with("BF") || st == "BOOL")
    out = st;
  else if (st.starts_with('F'))
    out = "FP" + std::string(st.substr(1));
  else if (st.starts_with('I'))
    out = "INT" + std::string(st.substr(1));
  else if (st.starts_with('U'))
    out = "UINT" + std::string(st.substr(1));
  else
    out = st;
  for (auto &c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// "16.8M params, bf16" (dtypes by tensor count, most first), then the exact figures.
std::string safetensors_line(const nlohmann::ordered_json &s) {
  std::string dt;
  std::vector<std::pair<std::uint64_t, std::string>> by_count;
  if (s.contains("dtypes") && s["dtypes"].is_object())
    for (const auto &[d, n] : s["dtypes"].items()) {
      dt += fmt::format("{}{}x{}", dt.empty() ? "" : " ", n.dump(), d);
      by_count.emplace_back(n.is_number_unsigned() ? n.get<std::uint64_t>() : 0, dtype_name(d));
    }
  std::stable_sort(by_count.begin(), by_count.end(), [](const auto &a, const auto &b) { return a.first > b.first; });
  std::string dtypes;
  for (const auto &[n, d] : by_count) dtypes += (dtypes.empty() ? "" : "+") + d;
  return fmt::format("{} tensors, {} parameters ({}); {} params{}", uint_or(s, "tensors"), uint_or(s, "parameters"), dt,
                     human_count(uint_or(s, "parameters")), dtypes.empty() ? "" : ", " + dtypes);
}

// The manifest's "formats" (model_formats.hpp); returns the safetensors files shown as shards.
std::set<std::string> print_formats(const nlohmann::ordered_json &m) {
  std::set<std::string> shown;
  if (!m.contains("formats") || !m["formats"].is_object()) return shown;
  const auto &f = m["formats"];
  static const nlohmann::ordered_json kNoFiles = nlohmann::ordered_json::object();
  const auto &files = m.contains("files") && m["files"].is_object() ? m["files"] : kNoFiles;
  if (f.contains("huggingface") && f["huggingface"].is_array()) {
    for (const auto &h : f["huggingface"]) {
      if (!h.is_object()) continue;
      std::string what = joined(h.contains("architectures") ? h["architectures"] : nlohmann::ordered_json());
      for (const char *k : {"model_type", "torch_dtype"})
        if (h.contains(k) && h[k].is_string())
          what += fmt::format("{}{}", what.empty() ? "" : " ", h[k].get<std::string>());
      const std::string dir = str_or(h, "dir", ".");
      const auto n_shards = h.contains("shards") && h["shards"].is_array() ? h["shards"].size() : 0;
      fmt::print("huggingface {}: {}; {} shard{}, {} params{}{}\n", dir.empty() ? "." : dir, what.empty() ? "-" : what,
                 n_shards, n_shards == 1 ? "" : "s", human_count(uint_or(h, "parameters")),
                 h.contains("index") && h["index"].is_string() ? ", index " + h["index"].get<std::string>() : "",
                 h.contains("tokenizer") && h["tokenizer"].is_array() && !h["tokenizer"].empty()
                     ? ", tokenizer " + joined(h["tokenizer"], 4)
                     : "");
      if (n_shards == 0) continue;
      for (const auto &s : h["shards"]) {
        if (!s.is_string()) continue;
        const auto &p = s.get<std::string>();
        shown.insert(p);
        if (files.contains(p) && files[p].is_object() && files[p].contains("safetensors") &&
            files[p]["safetensors"].is_object())
          fmt::print("  shard     {}: {}\n", p, safetensors_line(files[p]["safetensors"]));
        else
          fmt::print("  shard     {}: not a safetensors file\n", p);
      }
    }
  }
  if (f.contains("onnx") && f["onnx"].is_array()) {
    for (const auto &o : f["onnx"]) {
      if (!o.is_object()) continue;
      if (o.contains("error")) {
        fmt::print("onnx        {}: unreadable: {}\n", str_or(o, "model"), str_or(o, "error"));
        continue;
      }
      std::map<std::string, std::uint64_t> by_file;
      std::uint64_t ext = 0;
      if (o.contains("external_data") && o["external_data"].is_array())
        for (const auto &x : o["external_data"])
          if (x.is_object()) ++ext, ++by_file[str_or(x, "location")];
      std::string files_s;
      for (const auto &[loc, n] : by_file) files_s += fmt::format("{}{} in {}", files_s.empty() ? "" : ", ", n, loc);
      std::string opsets;
      if (o.contains("opsets") && o["opsets"].is_object())
        for (const auto &[d, v] : o["opsets"].items())
          opsets += fmt::format("{}{} {}", opsets.empty() ? "" : ", ", d.empty() ? "ai.onnx" : d, v.dump());
      fmt::print("onnx        {}: {} tensors, {} external{}{}{}\n", str_or(o, "model"), uint_or(o, "tensors"), ext,
                 files_s.empty() ? "" : " (" + files_s + ")", opsets.empty() ? "" : "; opsets " + opsets,
                 o.contains("producer") ? "; by " + str_or(o, "producer") : "");
    }
  }
  if (f.contains("mlflow") && f["mlflow"].is_array()) {
    for (const auto &ml : f["mlflow"]) {
      if (!ml.is_object()) continue;
      std::string flavors;
      if (ml.contains("flavors") && ml["flavors"].is_object())
        for (const auto &[name, fl] : ml["flavors"].items()) {
          flavors += (flavors.empty() ? "" : ", ") + name;
          if (fl.is_object() && fl.contains("loader_module") && fl["loader_module"].is_string())
            flavors += " (" + fl["loader_module"].get<std::string>() + ")";
        }
      const auto n = ml.contains("artifacts") && ml["artifacts"].is_array() ? ml["artifacts"].size() : 0;
      fmt::print("mlflow      {}: flavors {}; {} artifact{}{}\n", str_or(ml, "mlmodel"),
                 flavors.empty() ? "-" : flavors, n, n == 1 ? "" : "s",
                 n ? " (" + joined(ml["artifacts"], 4) + ")" : "");
    }
  }
  if (f.contains("pickles") && f["pickles"].is_object()) {
    for (const auto &[path, p] : f["pickles"].items()) {
      if (!p.is_object()) continue;
      std::string line = joined(p.contains("dangerous") ? p["dangerous"] : nlohmann::ordered_json(), 16);
      if (!line.empty()) line = "DANGEROUS " + line;
      std::string normal;
      if (p.contains("imports") && p["imports"].is_array()) {
        nlohmann::ordered_json rest = nlohmann::ordered_json::array();
        for (const auto &i : p["imports"]) {
          bool bad = false;
          if (p.contains("dangerous") && p["dangerous"].is_array())
            for (const auto &d : p["dangerous"]) bad = bad || d == i;
          if (!bad) rest.push_back(i);
        }
        normal = joined(rest);
      }
      if (!normal.empty()) line += (line.empty() ? "" : "; ") + normal;
      if (p.contains("error")) line += (line.empty() ? "" : "; ") + std::string("NOT SCANNED: ") + str_or(p, "error");
      fmt::print("pickle      {} ({}): {}\n", path, str_or(p, "format"), line.empty() ? "no imports" : line);
    }
  }
  return shown;
}

void print_human(const nlohmann::ordered_json &j) {
  const auto &m = j["manifest"];
  if (j.contains("encryption")) {
    const auto &e = j["encryption"];
    std::string whom;
    for (const auto &r : e["recipients"])
      whom += (whom.empty() ? "" : ", ") +
              (r["type"] == "x25519" ? "x25519 " + r["key_id"].get<std::string>().substr(0, 16)
                                     : fmt::format("passphrase (scrypt 2^{})", r["scrypt_log_n"].get<int>()));
    fmt::print("encryption  aes-256-gcm, names {}, {}; for {}\n", e["names_sealed"].get<bool>() ? "sealed" : "public",
               e["unlocked"].get<bool>() ? "unlocked" : "locked (no key given)", whom);
  }
  fmt::print("package     {} {}\n", str_or(m, "name"), str_or(m, "version"));
  fmt::print("description {}\n", str_or(m, "description"));
  if (m.contains("authors") && m["authors"].is_array() && !m["authors"].empty()) {
    std::string a;
    for (const auto &x : m["authors"])
      if (x.is_string()) a += (a.empty() ? "" : ", ") + x.get<std::string>();
    fmt::print("authors     {}\n", a);
  }
  fmt::print("license     {}\n", str_or(m, "license"));
  fmt::print("created     {} by {}\n", str_or(m, "created"), str_or(m, "tool"));
  if (m.contains("dependencies") && m["dependencies"].is_array())
    for (const auto &d : m["dependencies"])
      if (d.is_object()) fmt::print("depends     {} {}\n", str_or(d, "name"), str_or(d, "range"));
  fmt::print("format      {}   root sha256 {}   {}\n", j["format_version"].get<std::string>(),
             j["root_sha256"].get<std::string>(), j["signed"].get<bool>() ? "signed" : "unsigned");
  for (const auto &s : j["signatures"])
    fmt::print("signature   {} {} {}{}\n", s["algorithm"].get<std::string>(), s["key_id"].get<std::string>(),
               s["status"].get<std::string>(), s.contains("key") ? " (" + s["key"].get<std::string>() + ")" : "");
  fmt::print("contents    {} files, {} directories, {} symlinks\n", j["files"].get<std::uint64_t>(),
             j["directories"].get<std::uint64_t>(), j["symlinks"].get<std::uint64_t>());
  fmt::print("chunks      {} of {}, {} stored once", j["chunks"].get<std::uint64_t>(),
             human_bytes(j["chunk_size"].get<std::uint64_t>()), j["unique_chunks"].get<std::uint64_t>());
  for (const auto &[codec, n] : j["codecs"].items()) fmt::print(", {} {}", n.get<std::uint64_t>(), codec);
  fmt::print("\n");
  for (const auto &[name, f] : j["filters"].items())
    fmt::print("filter      {:<5} {} chunks, {} -> {} ({:.3f})\n", name, f["chunks"].get<std::uint64_t>(),
               human_bytes(f["raw_bytes"].get<std::uint64_t>()), human_bytes(f["stored_bytes"].get<std::uint64_t>()),
               f["ratio"].get<double>());
  fmt::print("size        {} of files in {} ({:.3f}); dedup saved {}\n",
             human_bytes(j["raw_bytes"].get<std::uint64_t>()), human_bytes(j["package_bytes"].get<std::uint64_t>()),
             j["ratio"].get<double>(), human_bytes(j["dedup_saved_bytes"].get<std::uint64_t>()));
  if (!m.contains("files") || !m["files"].is_object()) return;
  std::map<std::string, std::uint64_t> kinds;
  for (const auto &[path, f] : m["files"].items()) {
    if (f.is_object() && f.contains("kind") && f["kind"].is_string()) ++kinds[f["kind"].get<std::string>()];
  }
  std::string ks;
  for (const auto &[k, n] : kinds) ks += fmt::format("{}{} {}", ks.empty() ? "" : ", ", n, k);
  fmt::print("kinds       {}\n", ks);
  const auto shards = print_formats(m);
  for (const auto &[path, f] : m["files"].items()) {
    if (!f.is_object() || !f.contains("safetensors") || !f["safetensors"].is_object() || shards.count(path)) continue;
    fmt::print("safetensors {}: {}\n", path, safetensors_line(f["safetensors"]));
  }
}

// One tensor of a safetensors header.
struct Tensor {
  std::string name, dtype;
  std::vector<std::uint64_t> shape;
  std::uint64_t params = 0, begin = 0;
};

// The tensors of the safetensors file `ino`, in file order; nullopt when it is not one. Reads the
// header only (8 bytes, then the JSON), through the verifying reader.
std::optional<std::vector<Tensor>> read_tensors(Reader &reader, std::uint32_t ino) {
  const auto &pkg = reader.package();
  const auto size = pkg.inode(ino).size;
  std::array<std::uint8_t, 8> len_bytes{};
  if (size < 8 || reader.read(ino, 0, len_bytes) != 8) return std::nullopt;
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | len_bytes[static_cast<std::size_t>(i)];
  if (n > kMaxSafetensorsHeader || n > size - 8) return std::nullopt;
  std::vector<std::uint8_t> head(8 + n);
  if (reader.read(ino, 0, head) != head.size()) return std::nullopt;
  // The same bounds checks as at pack time (offsets inside the data, no overlaps): FormatError.
  if (!parse_safetensors(head, size)) return std::nullopt;
  const auto j = nlohmann::ordered_json::parse(head.begin() + 8, head.end(), nullptr, false);
  if (!j.is_object()) return std::nullopt;
  std::vector<Tensor> out;
  for (const auto &[name, t] : j.items()) {
    if (name == "__metadata__" || !t.is_object()) continue;
    Tensor x{name, t.value("dtype", std::string("?")), {}, 1, 0};
    if (t.contains("shape") && t["shape"].is_array())
      for (const auto &d : t["shape"]) {
        const auto v = d.is_number_unsigned() ? d.get<std::uint64_t>() : 0;
        x.shape.push_back(v);
        x.params *= v;
      }
    if (t.contains("data_offsets") && t["data_offsets"].is_array() && !t["data_offsets"].empty() &&
        t["data_offsets"][0].is_number_unsigned())
      x.begin = t["data_offsets"][0].get<std::uint64_t>();
    out.push_back(std::move(x));
  }
  std::stable_sort(out.begin(), out.end(), [](const Tensor &a, const Tensor &b) { return a.begin < b.begin; });
  return out;
}

// Every safetensors file of the package (by the manifest, or by name when it has none) with its
// tensors: the listing of --tensors.
std::vector<std::pair<std::string, std::vector<Tensor>>> all_tensors(const std::shared_ptr<const Package> &pkg) {
  std::set<std::string> marked;
  for (const auto &f : pkg->manifest().files)
    if (f.safetensors) marked.insert(f.path);
  Reader reader(pkg, 16ull << 20);
  std::vector<std::pair<std::string, std::vector<Tensor>>> out;
  for (std::uint32_t i = 0; i < pkg->inode_count(); ++i) {
    if (pkg->type(i) != format::NodeType::kRegular) continue;
    const auto path = pkg->path_of(i);
    if (!marked.count(path) && !path.ends_with(".safetensors")) continue;
    try {
      if (auto t = read_tensors(reader, i)) out.emplace_back(path, std::move(*t));
    } catch (const FormatError &e) {
      throw FormatError(fmt::format("{}: {}", path, e.what()));
    }
  }
  return out;
}

std::string shape_string(const std::vector<std::uint64_t> &shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

void print_tensors(const std::vector<std::pair<std::string, std::vector<Tensor>>> &files) {
  if (files.empty()) fmt::print("no safetensors files\n");
  for (const auto &[path, tensors] : files) {
    std::uint64_t total = 0;
    std::size_t name_w = 4, shape_w = 5, dtype_w = 5;
    for (const auto &t : tensors) {
      total += t.params;
      name_w = std::max(name_w, t.name.size());
      shape_w = std::max(shape_w, shape_string(t.shape).size());
      dtype_w = std::max(dtype_w, dtype_name(t.dtype).size());
    }
    fmt::print("{}: {} tensors, {} params\n", path, tensors.size(), human_count(total));
    fmt::print("  {:<{}}  {:<{}}  {:<{}}  {:>8}\n", "NAME", name_w, "DTYPE", dtype_w, "SHAPE", shape_w, "PARAMS");
    for (const auto &t : tensors)
      fmt::print("  {:<{}}  {:<{}}  {:<{}}  {:>8}\n", t.name, name_w, dtype_name(t.dtype), dtype_w,
                 shape_string(t.shape), shape_w, human_count(t.params));
  }
}

nlohmann::ordered_json tensors_json(const std::vector<std::pair<std::string, std::vector<Tensor>>> &files) {
  auto out = nlohmann::ordered_json::object();
  for (const auto &[path, tensors] : files) {
    auto a = nlohmann::ordered_json::array();
    for (const auto &t : tensors)
      a.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}, {"parameters", t.params}});
    out[path] = std::move(a);
  }
  return out;
}

}  // namespace

void add_inspect(CLI::App &app, Action &action) {
  auto file = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto tensors = std::make_shared<bool>(false);
  auto trust = std::make_shared<TrustArgs>();
  auto remote = std::make_shared<RemoteArgs>();
  auto keys = std::make_shared<KeyArgs>();
  auto *cmd = app.add_subcommand("inspect", "Show a package's manifest, signatures, counts, sizes and compression");
  cmd->add_option("FILE", *file, "Package")->required();
  cmd->add_flag("--json", *json, "Print JSON instead of text");
  cmd->add_flag("--tensors", *tensors,
                "List the tensors of each safetensors file (name, dtype, shape, parameters) instead; reads "
                "their headers");
  add_trust_options(cmd, *trust);
  add_remote_options(cmd, *remote);
  add_key_options(cmd, *keys);
  cmd->callback([&action, file, json, tensors, trust, remote, keys] {
    action = [file, json, tensors, trust, remote, keys]() -> int {
      auto opts = open_options(*file, *remote, *keys);
      opts.locked = Package::Locked::kAllowed;  // what is public: sizes, digests, signatures, recipients
      if (!keys->given()) opts.keys = nullptr;  // no passphrase prompt
      const auto pkg = open_package(*file, opts);
      if (*tensors) pkg->require_key();
      if (*tensors && !*json) {
        print_tensors(all_tensors(pkg));
        return kOk;
      }
      auto j = summarise(*pkg, load_trust(*trust));
      if (*tensors) j["tensors"] = tensors_json(all_tensors(pkg));
      if (*json)
        fmt::print("{}\n", j.dump(2));
      else
        print_human(j);
      return kOk;
    };
  });
}

}  // namespace torshpkg::cli
