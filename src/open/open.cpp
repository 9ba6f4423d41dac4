#include "torshpkg/open.hpp"

#include <fmt/format.h>
#include <cctype>

#include "torshpkg/errors.hpp"
#include "torshpkg/oci_source.hpp"
#include "torshpkg/s3_source.hpp"
#include "torshpkg/trust_policy.hpp"
#include "torshpkg/zip_package.hpp"

namespace torshpkg {

namespace {

// "https" for "https://host/x"; empty for a path.
std::string_view scheme_of(std::string_view location) {
  const auto colon = location.find("://");
  if (colon == std::string_view::npos || colon == 0) return {};
  for (char c : location.substr(0, colon))
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' || c == '-' ||
          c == '.'))
      return {};
  return location.substr(0, colon);
}

bool same_scheme(std::string_view a, std::string_view b) {  // schemes are case-insensitive (RFC 3986)
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

struct Backend {
  std::string_view scheme;  // "file" serves plain paths too
  std::shared_ptr<const ChunkSource> (*open)(const std::string &location, const OpenOptions &opts);
};

const Backend kBackends[] = {
    {"file", [](const std::string &loc, const OpenOptions &) -> std::shared_ptr<const ChunkSource> {
       return std::make_shared<FileSource>(scheme_of(loc).empty() ? loc : loc.substr(7));
     }},
    {"http", [](const std::string &loc, const OpenOptions &o) { return open_http(loc, o.remote); }},
    {"https", [](const std::string &loc, const OpenOptions &o) { return open_http(loc, o.remote); }},
    {"s3", [](const std::string &loc, const OpenOptions &o) { return open_s3(loc, o.remote); }},
    {"oci", [](const std::string &loc, const OpenOptions &o) { return open_oci(loc, o.remote); }},
    {"oci+http", [](const std::string &loc, const OpenOptions &o) { return open_oci(loc, o.remote); }},
};

struct Container {
  std::string_view name;
  std::string_view unsigned_because, remedy;  // for the refusal when unsigned packages are not allowed
  bool (*recognises)(const ChunkSource &source);
  std::shared_ptr<const Package> (*open)(std::shared_ptr<const ChunkSource> source, const OpenOptions &opts);
};

const Container kContainers[] = {
    {"zip", kZipUnsignedBecause, kZipRemedy, looks_like_zip,
     [](std::shared_ptr<const ChunkSource> s, const OpenOptions &) { return open_zip(std::move(s)); }},
};

}  // namespace

bool is_remote_location(std::string_view location) noexcept {
  const auto scheme = scheme_of(location);
  return !scheme.empty() && !same_scheme(scheme, "file");
}

std::shared_ptr<const ChunkSource> open_source(const std::string &location, const OpenOptions &opts) {
  const auto scheme = scheme_of(location);
  for (const auto &b : kBackends)
    if (same_scheme(b.scheme, scheme) || (scheme.empty() && b.scheme == "file")) return b.open(location, opts);
  throw UsageError(fmt::format("{}: no backend for {}:// locations in this build", location, scheme));
}

std::shared_ptr<const Package> open_package(const std::string &location, const OpenOptions &opts) {
  auto source = open_source(location, opts);
  if (opts.any_container)
    for (const auto &c : kContainers)
      if (c.recognises(*source)) {
        if (!opts.allow_unsigned)
          throw unsigned_refusal(location, c.unsigned_because, c.remedy);
        return c.open(std::move(source), opts);
      }
  auto store = source->remote() ? opts.store : nullptr;  // a local file is its own cache
  return Package::open(std::move(source), opts.digests, std::move(store), opts.manifest_check, opts.keys.get(),
                       opts.locked);  // .tpkg: the native container
}

}  // namespace torshpkg
