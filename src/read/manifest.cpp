#include "torshpkg/manifest.hpp"

#include <fmt/format.h>
#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <vector>

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

}  // namespace

Json Manifest::formats_json() const {
  if (formats_text.empty()) return formats;
  return Json::parse(formats_text);  // minified by parse() from a validated document
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

// One pass of RapidJSON's SAX reader builds the Manifest directly: no DOM, so an unknown or
// mistyped value, however large, costs its parse and nothing else, and `formats` is copied as
// minified text by forwarding its events to a writer. Iterative parsing (no recursion on nesting),
// UTF-8 checked, one value and nothing after it, as RFC 8259 says.
constexpr unsigned kReadFlags = rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag;
// Deeper nesting is refused: the reader's own stack grows by a word per level, and a hostile
// 64 MiB of '[' must not cost hundreds of megabytes.
constexpr int kMaxDepth = 1024;

// What both handlers share: the refusals that read_json_object() reports.
struct Refusals {
  bool not_object = false;  // the top-level value is not an object
  bool too_deep = false;
  int depth = 0;
  bool enter() {
    too_deep = ++depth > kMaxDepth;
    return !too_deep;
  }
  bool leave() {
    --depth;
    return true;
  }
};

// Where the reader is: each open object or array pushes one of these.
enum class At : std::uint8_t {
  kRoot,
  kAuthors,
  kDependencies,
  kDependency,
  kFormats,
  kFiles,
  kFile,
  kSafetensors,
  kDtypes,
  kSkip
};

class ManifestHandler : public Refusals {
 public:
  Manifest manifest;
  bool has_files = false;

  bool Null() {
    return forward([](auto &w) { return w.Null(); }) || scalar();
  }
  bool Bool(bool b) {
    return forward([&](auto &w) { return w.Bool(b); }) || scalar();
  }
  bool Int(int i) {
    return forward([&](auto &w) { return w.Int(i); }) || scalar();
  }
  bool Int64(std::int64_t i) {
    return forward([&](auto &w) { return w.Int64(i); }) || scalar();
  }
  bool Uint(unsigned u) { return Uint64(u); }
  bool Uint64(std::uint64_t u) {
    return forward([&](auto &w) { return w.Uint64(u); }) || scalar(nullptr, u);
  }
  bool Double(double d) {
    return forward([&](auto &w) { return w.Double(d); }) || scalar();
  }
  bool RawNumber(const char *, rapidjson::SizeType, bool) { return scalar(); }  // not enabled
  bool String(const char *s, rapidjson::SizeType n, bool) {
    if (forward([&](auto &w) { return w.String(s, n); })) return true;
    const std::string_view v(s, n);
    return scalar(&v);
  }
  bool Key(const char *s, rapidjson::SizeType n, bool) {
    if (skip_depth_ > 0) return true;
    if (forward([&](auto &w) { return w.Key(s, n); })) return true;
    key_.assign(s, n);
    return true;
  }
  bool StartObject() { return open(true); }
  bool StartArray() { return open(false); }
  bool EndObject(rapidjson::SizeType) { return close(true); }
  bool EndArray(rapidjson::SizeType) { return close(false); }

 private:
  // Inside `formats`, every event goes to the writer. Returns whether it did.
  template <class F>
  bool forward(F &&f) {
    if (skip_depth_ > 0 || stack_.empty() || stack_.back() != At::kFormats) return false;
    f(formats_writer_);
    return true;
  }

  // A scalar: kept when the place and the key say what it is and its type fits; ignored otherwise.
  bool scalar(const std::string_view *str = nullptr, std::optional<std::uint64_t> num = std::nullopt) {
    if (stack_.empty()) {
      not_object = true;
      return false;
    }
    if (skip_depth_ > 0) return true;
    auto &m = manifest;
    const std::string_view k = key_;
    switch (stack_.back()) {
      case At::kRoot:
        if (str) {
          if (k == "name")
            m.name = *str;
          else if (k == "version")
            m.version = *str;
          else if (k == "description")
            m.description = *str;
          else if (k == "license")
            m.license = *str;
          else if (k == "created")
            m.created = *str;
          else if (k == "tool")
            m.tool = *str;
          else if (k == "source")
            m.source = *str;
        } else if (num) {
          if (k == "manifest_version")
            m.manifest_version = *num;
          else if (k == "chunk_size")
            m.chunk_size = *num;
        }
        break;
      case At::kAuthors:
        if (str) m.authors.emplace_back(*str);
        break;
      case At::kDependency:
        if (str && k == "name") dependency_.name = *str;
        if (str && k == "range") dependency_.range = *str;
        break;
      case At::kFile:
        if (str && k == "kind") file_.kind = *str;
        if (str && k == "sha256") file_.sha256 = from_hex(*str);
        if (k == "size") file_.size = num.value_or(0);
        break;
      case At::kSafetensors:
        if (k == "tensors") safetensors_.tensors = num.value_or(0);
        if (k == "parameters") safetensors_.parameters = num.value_or(0);
        break;
      case At::kDtypes: safetensors_.dtypes[key_] = num.value_or(0); break;
      default: break;
    }
    return true;
  }

  bool open(bool object) {
    if (!enter()) return false;
    if (skip_depth_ > 0) return ++skip_depth_, true;
    if (forward([&](auto &w) { return object ? w.StartObject() : w.StartArray(); })) {
      ++formats_depth_;
      return true;
    }
    if (stack_.empty()) {
      if (!object) {
        not_object = true;
        return false;
      }
      stack_.push_back(At::kRoot);
      return true;
    }
    const std::string_view k = key_;
    At next = At::kSkip;
    switch (stack_.back()) {
      case At::kRoot:
        if (!object && k == "authors")
          next = At::kAuthors;
        else if (!object && k == "dependencies")
          next = At::kDependencies;
        else if (object && k == "files")
          next = At::kFiles, has_files = true;
        else if (object && k == "formats") {
          next = At::kFormats;  // a later "formats" replaces an earlier one
          formats_text_.Clear();
          formats_writer_.Reset(formats_text_);
          formats_writer_.StartObject();
          formats_depth_ = 0;
        }
        break;
      case At::kDependencies:
        if (object) next = At::kDependency, dependency_ = {};
        break;
      case At::kFiles:
        if (object) next = At::kFile, file_ = {}, file_.path = key_;
        break;
      case At::kFile:
        if (object && k == "safetensors") next = At::kSafetensors, safetensors_ = {};
        break;
      case At::kSafetensors:
        if (object && k == "dtypes") next = At::kDtypes;
        break;
      default: break;
    }
    if (next == At::kSkip)
      skip_depth_ = 1;
    else
      stack_.push_back(next);
    return true;
  }

  bool close(bool object) {
    leave();
    if (skip_depth_ > 0) return --skip_depth_, true;
    if (!stack_.empty() && stack_.back() == At::kFormats) {
      if (object)
        formats_writer_.EndObject();
      else
        formats_writer_.EndArray();
      if (formats_depth_-- > 0) return true;  // a value inside formats ended
      manifest.formats_text.assign(formats_text_.GetString(), formats_text_.GetSize());
    }
    const At done = stack_.back();
    stack_.pop_back();
    if (done == At::kDependency) manifest.dependencies.push_back(std::move(dependency_));
    if (done == At::kFile) manifest.files.push_back(std::move(file_));
    if (done == At::kSafetensors) file_.safetensors = std::move(safetensors_);
    return true;
  }

  std::vector<At> stack_;  // at most 6 deep: below what it knows, skip_depth_ counts
  int skip_depth_ = 0;     // > 0: inside a value nobody reads
  std::string key_;        // the last key read in the innermost object
  Dependency dependency_;
  ManifestFile file_;
  ManifestFile::Safetensors safetensors_;
  rapidjson::StringBuffer formats_text_;
  rapidjson::Writer<rapidjson::StringBuffer> formats_writer_;
  int formats_depth_ = 0;  // objects and arrays open inside formats
};

// Runs `handler` over `text`; throws FormatError unless it is one JSON object.
template <class Handler>
void read_json_object(std::string_view text, Handler &handler) {
  rapidjson::Reader reader;
  rapidjson::MemoryStream stream(text.data(), text.size());
  const rapidjson::ParseResult ok = reader.Parse<kReadFlags>(stream, handler);
  if (handler.not_object) throw FormatError("manifest is not a JSON object");
  if (handler.too_deep) throw FormatError(fmt::format("manifest nests deeper than {} levels", kMaxDepth));
  if (!ok)
    throw FormatError(
        fmt::format("manifest is not valid JSON: {} at byte {}", rapidjson::GetParseError_En(ok.Code()), ok.Offset()));
  // The reader stops at a NUL byte as at the end of its input: anything after the value is an error.
  if (stream.Tell() != text.size())
    throw FormatError(fmt::format("manifest is not valid JSON: a NUL byte at byte {}", stream.Tell()));
}

// Accepts every event, refuses a top-level value that is not an object.
struct ObjectValidator : rapidjson::BaseReaderHandler<rapidjson::UTF8<>, ObjectValidator>, Refusals {
  bool seen_first = false;
  bool Default() { return first(false); }
  bool StartObject() { return first(true) && enter(); }
  bool StartArray() { return first(false) && enter(); }
  bool EndObject(rapidjson::SizeType) { return leave(); }
  bool EndArray(rapidjson::SizeType) { return leave(); }

 private:
  bool first(bool object) {
    if (seen_first) return true;
    seen_first = true;
    not_object = !object;
    return object;
  }
};

}  // namespace

void Manifest::validate(std::string_view text) {
  ObjectValidator v;
  read_json_object(text, v);
}

Manifest Manifest::parse(std::string_view text) {
  ManifestHandler h;
  read_json_object(text, h);
  Manifest m = std::move(h.manifest);
  if (!m.source.empty() && !h.has_files) m.kind = Kind::kSynthesized;
  return m;
}

}  // namespace torshpkg
