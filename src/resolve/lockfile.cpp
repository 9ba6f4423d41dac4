// torshpkg.lock: what resolve chose, as JSON (docs/FORMAT.md, "Lock files"). A lock is input to
// pull and to the mount, so it is checked field by field like any untrusted file.
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/resolve.hpp"

namespace torshpkg {

namespace {

constexpr std::size_t kMaxLockBytes = 16 << 20;

bool is_hex64(std::string_view s) {
  return s.size() == 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool lower_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

}  // namespace

bool valid_oci_repository(std::string_view name) noexcept {
  // path-component = [a-z0-9]+ (separator [a-z0-9]+)*, separator = [_.] | __ | [-]+
  if (name.empty() || name.size() > 255) return false;
  std::size_t i = 0;
  while (true) {
    if (i >= name.size() || !lower_alnum(name[i])) return false;
    while (i < name.size() && lower_alnum(name[i])) ++i;
    if (i == name.size()) return true;
    if (name[i] == '/') {
      ++i;
      continue;
    }
    if (name.substr(i, 2) == "__")
      i += 2;
    else if (name[i] == '.' || name[i] == '_')
      ++i;
    else if (name[i] == '-')
      while (i < name.size() && name[i] == '-') ++i;
    else
      return false;
  }
}

std::optional<SemVer> version_of_tag(std::string_view tag) {
  std::string text(tag);
  std::replace(text.begin(), text.end(), '_', '+');
  return parse_semver(text);
}

std::string tag_of_version(const SemVer &v) {
  std::string tag = v.str();
  std::replace(tag.begin(), tag.end(), '+', '_');
  return tag;
}

std::string lock_to_json(const Lock &lock) {
  nlohmann::ordered_json j;
  j["lockfile_version"] = Lock::kVersion;
  j["root"] = {{"name", lock.root_name}, {"version", lock.root_version}, {"root_sha256", lock.root_sha256}};
  j["registry"] = lock.registry;
  auto packages = nlohmann::ordered_json::array();
  for (const auto &p : lock.packages) {
    auto dependencies = nlohmann::ordered_json::array();
    for (const auto &d : p.dependencies) dependencies.push_back({{"name", d.name}, {"range", d.range}});
    packages.push_back({{"name", p.name},
                        {"version", p.version},
                        {"root_sha256", p.root_sha256},
                        {"source", p.source},
                        {"requires", std::move(dependencies)},
                        {"required_by", p.required_by}});
  }
  j["packages"] = std::move(packages);
  return j.dump(2) + "\n";
}

Lock parse_lock(std::string_view text, const std::string &where) {
  auto bad = [&where](std::string_view why) {
    return FormatError(fmt::format("{}: not a torshpkg lock file: {}", where, why));
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception &e) {
    throw bad(e.what());
  }
  Lock lock;
  try {
    if (!j.is_object()) throw bad("not a JSON object");
    const int version = j.at("lockfile_version").get<int>();
    if (version != Lock::kVersion)
      throw FormatError(
          fmt::format("{}: lock file version {} (this torshpkg reads version {})", where, version, Lock::kVersion));
    const auto &root = j.at("root");
    lock.root_name = root.at("name").get<std::string>();
    lock.root_version = root.at("version").get<std::string>();
    lock.root_sha256 = root.at("root_sha256").get<std::string>();
    if (!lock.root_sha256.empty() && !is_hex64(lock.root_sha256)) throw bad("root.root_sha256 is not 64 hex digits");
    lock.registry = j.at("registry").get<std::string>();
    for (const auto &p : j.at("packages")) {
      LockedPackage lp;
      lp.name = p.at("name").get<std::string>();
      lp.version = p.at("version").get<std::string>();
      lp.root_sha256 = p.at("root_sha256").get<std::string>();
      lp.source = p.at("source").get<std::string>();
      // Names become file and directory names (pull, .deps/): registry names only, never "..".
      if (!valid_oci_repository(lp.name)) throw bad(fmt::format("'{}' is not an OCI repository name", lp.name));
      if (!valid_semver(lp.version)) throw bad(fmt::format("{}: '{}' is not a semantic version", lp.name, lp.version));
      if (!is_hex64(lp.root_sha256)) throw bad(fmt::format("{}: root_sha256 is not 64 hex digits", lp.name));
      if (lp.source.empty()) throw bad(fmt::format("{}: no source", lp.name));
      if (p.contains("requires"))
        for (const auto &d : p.at("requires"))
          lp.dependencies.push_back({d.at("name").get<std::string>(), d.at("range").get<std::string>()});
      if (p.contains("required_by")) lp.required_by = p.at("required_by").get<std::vector<std::string>>();
      if (!lock.packages.empty() && !(lock.packages.back().name < lp.name))
        throw bad(fmt::format("packages not sorted by name, or '{}' twice", lp.name));
      lock.packages.push_back(std::move(lp));
    }
  } catch (const nlohmann::json::exception &e) {
    throw bad(e.what());
  }
  return lock;
}

Lock read_lock_file(const std::string &path) {
  const auto fd = open_read(path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("stat", path);
  if (!S_ISREG(st.st_mode)) throw UsageError(fmt::format("{}: a lock file must be a regular file", path));
  if (static_cast<std::uint64_t>(st.st_size) > kMaxLockBytes)
    throw FormatError(fmt::format("{}: a lock file larger than 16 MiB", path));
  // One byte more than its size: a file that grew since is caught rather than cut short.
  std::string text(static_cast<std::size_t>(st.st_size) + 1, '\0');
  const auto n = read_full(fd.get(), std::span(reinterpret_cast<std::uint8_t *>(text.data()), text.size()), path);
  if (n > static_cast<std::size_t>(st.st_size)) throw IoError(fmt::format("{}: changed while being read", path), EIO);
  text.resize(n);
  return parse_lock(text, path);
}

}  // namespace torshpkg
