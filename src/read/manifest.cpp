#include "torshpkg/manifest.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include "torshpkg/errors.hpp"
#include "torshpkg/format.hpp"

namespace torshpkg {

namespace {

using Json = nlohmann::ordered_json;

Json file_json(const ManifestFile &f) {
  Json j = Json::object();
  // Key order as the packer has always written it: the safetensors summary is known first.
  if (f.safetensors) {
    Json s;
    s["tensors"] = f.safetensors->tensors;
    s["parameters"] = f.safetensors->parameters;
    s["dtypes"] = f.safetensors->dtypes;
    j["safetensors"] = std::move(s);
  }
  j["kind"] = f.kind;
  j["size"] = f.size;
  if (f.sha256) j["sha256"] = to_hex(*f.sha256);
  return j;
}

std::string string_or_empty(simdjson::dom::element e) {
  std::string_view v;
  return e.get_string().get(v) ? std::string() : std::string(v);
}

std::uint64_t uint_or(simdjson::dom::element e, std::uint64_t fallback = 0) {
  std::uint64_t v = 0;
  return e.get_uint64().get(v) ? fallback : v;
}

ManifestFile parse_file(std::string_view path, simdjson::dom::object f) {
  ManifestFile out;
  out.path = path;
  for (const auto field : f) {
    if (field.key == "kind") out.kind = string_or_empty(field.value);
    if (field.key == "size") out.size = uint_or(field.value);
    if (field.key == "sha256") out.sha256 = from_hex(string_or_empty(field.value));
    simdjson::dom::object st;
    if (field.key == "safetensors" && !field.value.get_object().get(st)) {
      ManifestFile::Safetensors s;
      if (auto t = st["tensors"]; !t.error()) s.tensors = uint_or(t.value_unsafe());
      if (auto p = st["parameters"]; !p.error()) s.parameters = uint_or(p.value_unsafe());
      simdjson::dom::object dt;
      if (!st["dtypes"].get_object().get(dt))
        for (const auto d : dt) s.dtypes[std::string(d.key)] = uint_or(d.value);
      out.safetensors = std::move(s);
    }
  }
  return out;
}

}  // namespace

Json Manifest::formats_json() const {
  if (formats_text.empty()) return formats;
  return Json::parse(formats_text);  // minified by simdjson from a validated document
}

Json Manifest::to_json() const {
  Json m;
  m["manifest_version"] = manifest_version;
  m["name"] = name;
  m["version"] = version;
  m["description"] = description;
  if (kind == Kind::kSynthesized) {
    m["source"] = source;
    m["chunk_size"] = chunk_size;
  } else {
    m["authors"] = authors;
    m["license"] = license;
    m["created"] = created;
    m["tool"] = tool;
    auto deps = Json::array();
    for (const auto &d : dependencies) deps.push_back({{"name", d.name}, {"range", d.range}});
    m["dependencies"] = std::move(deps);
    m["chunk_size"] = chunk_size;
    m["formats"] = formats_json();
    // Each path once: append without ordered_map's linear key search (quadratic for 10,000 files).
    m["files"] = Json::object();
    using Entries = std::vector<std::pair<const std::string, Json>>;
    auto &entries = static_cast<Entries &>(m["files"].get_ref<Json::object_t &>());
    entries.reserve(files.size());
    for (const auto &f : files) entries.emplace_back(f.path, file_json(f));
  }
  return m;
}

std::string Manifest::serialize() const {
  std::string text = to_json().dump(kind == Kind::kSynthesized ? 2 : 1);
  if (text.size() > format::kMaxManifestSize)
    throw FormatError(fmt::format("manifest would exceed {} MiB: too many files", format::kMaxManifestSize >> 20));
  return text;
}

namespace {
// The manifest's top-level object; `parser` and `padded` own what it points into.
simdjson::dom::object parse_root(simdjson::dom::parser &parser, const simdjson::padded_string &padded) {
  simdjson::dom::element root;
  if (const auto err = parser.parse(padded).get(root); err)
    throw FormatError(fmt::format("manifest is not valid JSON: {}", simdjson::error_message(err)));
  simdjson::dom::object obj;
  if (root.get_object().get(obj)) throw FormatError("manifest is not a JSON object");
  return obj;
}
}  // namespace

void Manifest::validate(std::string_view text) {
  simdjson::dom::parser parser;
  const simdjson::padded_string padded(text);
  (void)parse_root(parser, padded);
}

Manifest Manifest::parse(std::string_view text) {
  simdjson::dom::parser parser;
  const simdjson::padded_string padded(text);
  const simdjson::dom::object obj = parse_root(parser, padded);
  Manifest m;
  bool has_files = false;
  for (const auto field : obj) {
    const std::string_view key = field.key;
    const auto v = field.value;
    if (key == "manifest_version") m.manifest_version = uint_or(v, m.manifest_version);
    else if (key == "name") m.name = string_or_empty(v);
    else if (key == "version") m.version = string_or_empty(v);
    else if (key == "description") m.description = string_or_empty(v);
    else if (key == "license") m.license = string_or_empty(v);
    else if (key == "created") m.created = string_or_empty(v);
    else if (key == "tool") m.tool = string_or_empty(v);
    else if (key == "source") m.source = string_or_empty(v);
    else if (key == "chunk_size") m.chunk_size = uint_or(v);
    else if (key == "authors") {
      simdjson::dom::array a;
      if (!v.get_array().get(a))
        for (const auto x : a)
          if (x.is_string()) m.authors.push_back(string_or_empty(x));
    } else if (key == "dependencies") {
      simdjson::dom::array a;
      if (!v.get_array().get(a))
        for (const auto d : a) {
          simdjson::dom::object o;
          if (d.get_object().get(o)) continue;
          Dependency dep;
          if (auto n = o["name"]; !n.error()) dep.name = string_or_empty(n.value_unsafe());
          if (auto r = o["range"]; !r.error()) dep.range = string_or_empty(r.value_unsafe());
          m.dependencies.push_back(std::move(dep));
        }
    } else if (key == "formats") {
      if (v.is_object()) m.formats_text = simdjson::minify(v);
    } else if (key == "files") {
      simdjson::dom::object files;
      if (v.get_object().get(files)) continue;
      has_files = true;
      for (const auto f : files) {
        simdjson::dom::object fo;
        if (!f.value.get_object().get(fo)) m.files.push_back(parse_file(f.key, fo));
      }
    }
  }
  if (!m.source.empty() && !has_files) m.kind = Kind::kSynthesized;
  return m;
}

}  // namespace torshpkg
