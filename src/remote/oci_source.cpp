#include "torshpkg/oci_source.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <map>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "remote_text.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg {

namespace {

bool from_hex_ok(std::string_view hex) {
  return hex.size() == 64 && std::all_of(hex.begin(), hex.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

using remote::env_text;

constexpr std::string_view kB64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64(std::string_view in) {
  std::string out;
  for (std::size_t i = 0; i < in.size(); i += 3) {
    const auto n = std::min<std::size_t>(3, in.size() - i);
    std::uint32_t v = 0;
    for (std::size_t j = 0; j < 3; ++j) v = v << 8 | (j < n ? static_cast<unsigned char>(in[i + j]) : 0u);
    for (std::size_t j = 0; j < 4; ++j) out += j <= n ? kB64[(v >> (18 - 6 * j)) & 63] : '=';
  }
  return out;
}

std::optional<std::string> unbase64(std::string_view in) {
  std::string out;
  std::uint32_t v = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    const auto p = kB64.find(c);
    if (p == std::string_view::npos) return std::nullopt;
    v = v << 6 | static_cast<std::uint32_t>(p);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((v >> bits) & 0xff);
    }
  }
  return out;
}

// key="value",key=value,... after the scheme word of a WWW-Authenticate header.
std::map<std::string, std::string> challenge_params(std::string_view h) {
  std::map<std::string, std::string> out;
  std::size_t i = h.find(' ');
  while (i != std::string_view::npos && i < h.size()) {
    while (i < h.size() && (h[i] == ' ' || h[i] == ',')) ++i;
    const auto eq = h.find('=', i);
    if (eq == std::string_view::npos) break;
    std::string key(h.substr(i, eq - i));
    std::string value;
    i = eq + 1;
    if (i < h.size() && h[i] == '"') {
      const auto end = h.find('"', i + 1);
      if (end == std::string_view::npos) break;
      value = std::string(h.substr(i + 1, end - i - 1));
      i = end + 1;
    } else {
      const auto end = std::min(h.find(',', i), h.size());
      value = std::string(h.substr(i, end - i));
      i = end;
    }
    for (auto &c : key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out[key] = value;
  }
  return out;
}

std::string url_escape(std::string_view s) { return remote::percent_encode(s, false); }

// The Authorization header a 401 asks for, or a UsageError/IoError saying why there is none.
std::string authorize(const OciReference &ref, const std::string &location, const HttpReply &denied,
                      const RemoteOptions &opts, const std::string &actions, const std::optional<std::string> &creds) {
  const std::string_view challenge = denied.www_authenticate;
  const auto scheme_end = challenge.find(' ');
  std::string scheme(challenge.substr(0, scheme_end));
  for (auto &c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (scheme == "basic") {
    if (!creds)
      throw IoError(fmt::format("{}: HTTP 401: the registry wants credentials and none are configured for {} "
                                "($REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json or ~/.docker/config.json)",
                                location, ref.registry),
                    EACCES);
    return "Authorization: Basic " + base64(*creds);
  }
  if (scheme != "bearer") throw IoError(fmt::format("{}: HTTP 401 with an unknown challenge", location), EACCES);
  auto p = challenge_params(challenge);
  if (p["realm"].empty() || !is_http_url(p["realm"]))
    throw IoError(fmt::format("{}: HTTP 401: the bearer challenge names no token service", location), EACCES);
  std::string url = p["realm"] + (p["realm"].find('?') == std::string::npos ? "?" : "&");
  if (!p["service"].empty()) url += "service=" + url_escape(p["service"]) + "&";
  // The challenge names the scope of the request that failed; a push needs push too, asked at once.
  const std::string scope = "repository:" + ref.repository + ":" + actions;
  url += "scope=" + url_escape(p["scope"].empty() || actions != "pull" ? scope : p["scope"]);
  std::vector<std::string> headers;
  if (creds) headers.push_back("Authorization: Basic " + base64(*creds));
  const auto r = http_get(url, headers, opts, 1 << 20);
  if (r.status != 200)
    throw IoError(fmt::format("{}: the token service refused: HTTP {}{}", location, r.status,
                              creds ? "" : " (no credentials configured for " + ref.registry + ")"),
                  EACCES);
  std::string token;
  try {
    const auto j = nlohmann::json::parse(r.body);
    token = j.value("token", j.value("access_token", std::string()));
  } catch (const nlohmann::json::exception &) {
  }
  if (token.empty()) throw IoError(fmt::format("{}: the token service sent no token", location), EACCES);
  return "Authorization: Bearer " + token;
}

}  // namespace

OciReference parse_oci_reference(std::string_view location) {
  OciReference r;
  std::string_view rest;
  if (location.starts_with("oci://")) {
    rest = location.substr(6);
  } else if (location.starts_with("oci+http://")) {
    rest = location.substr(11);
    r.plain_http = true;
  } else {
    throw UsageError(fmt::format("{}: not an oci://HOST/REPO[:TAG|@DIGEST] reference", location));
  }
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 >= rest.size())
    throw UsageError(fmt::format("{}: expected oci://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]", location));
  r.registry = std::string(rest.substr(0, slash));
  std::string_view path = rest.substr(slash + 1);
  if (const auto at = path.find('@'); at != std::string_view::npos) {
    r.reference = std::string(path.substr(at + 1));
    path = path.substr(0, at);
    if (!r.reference.starts_with("sha256:") || !from_hex_ok(r.reference.substr(7)))
      throw UsageError(fmt::format("{}: a digest is sha256: and 64 hex digits", location));
  } else if (const auto colon = path.rfind(':'); colon != std::string_view::npos && path.find('/', colon) == std::string_view::npos) {
    r.reference = std::string(path.substr(colon + 1));
    path = path.substr(0, colon);
  } else {
    r.reference = "latest";
  }
  r.repository = std::string(path);
  // Repository names and tags as the distribution spec allows them (lower case, digits, separators).
  for (char c : r.repository)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '/' || c == '.' || c == '_' || c == '-'))
      throw UsageError(fmt::format("{}: '{}' is not a repository name", location, r.repository));
  if (r.repository.empty() || r.reference.empty() || r.reference.size() > 128)
    throw UsageError(fmt::format("{}: expected oci://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]", location));
  return r;
}

std::optional<std::string> registry_credentials(const std::string &registry) {
  std::vector<std::string> files;
  if (auto f = env_text("REGISTRY_AUTH_FILE"); !f.empty()) files.push_back(f);
  if (auto d = env_text("DOCKER_CONFIG"); !d.empty()) files.push_back(d + "/config.json");
  if (auto h = env_text("HOME"); !h.empty()) files.push_back(h + "/.docker/config.json");
  for (const auto &path : files) {
    std::ifstream in(path);
    if (!in) continue;
    try {
      const auto j = nlohmann::json::parse(in);
      const auto &auths = j.at("auths");
      for (const auto &key : {registry, "https://" + registry, "http://" + registry}) {
        if (!auths.contains(key)) continue;
        const auto &a = auths.at(key);
        if (a.contains("auth")) {
          if (auto up = unbase64(a.at("auth").get<std::string>()); up && up->find(':') != std::string::npos) return up;
        }
        if (a.contains("username") && a.contains("password"))
          return a.at("username").get<std::string>() + ":" + a.at("password").get<std::string>();
      }
    } catch (const nlohmann::json::exception &) {
      continue;  // not JSON, or no auths: the next file
    }
  }
  return std::nullopt;
}

RegistrySession::RegistrySession(OciReference ref, std::string location, RemoteOptions opts, std::string actions)
    : ref_(std::move(ref)),
      location_(std::move(location)),
      actions_(std::move(actions)),
      // Read once, when the package is opened: a sandboxed daemon (run_as=nobody) can no longer
      // read ~/.docker/config.json when its token expires mid-mount.
      creds_(registry_credentials(ref_.registry)),
      opts_(std::move(opts)) {}

HttpReply RegistrySession::send(HttpRequest req) {
  if (req.url.starts_with("/")) req.url = ref_.base_url() + req.url;
  const auto headers = req.headers;
  if (!auth_.empty()) req.headers.push_back(auth_);
  auto reply = http_request(req, opts_);
  if (reply.status != 401 || !auth_.empty()) return reply;
  // The first 401: ask for what the registry wants, then once more.
  challenge_ = reply;
  auth_ = authorize(ref_, location_, reply, opts_, actions_, creds_);
  req.headers = headers;
  req.headers.push_back(auth_);
  return http_request(req, opts_);
}

std::string RegistrySession::reauthorize() {
  if (challenge_.www_authenticate.empty()) throw IoError(fmt::format("{}: HTTP 401", location_), EACCES);
  auth_ = authorize(ref_, location_, challenge_, opts_, actions_, creds_);
  return auth_;
}

OciBlob oci_resolve(RegistrySession &session) {
  const auto &ref = session.ref();
  const std::string location = (ref.plain_http ? "oci+http://" : "oci://") + ref.registry + "/" + ref.repository +
                               (ref.reference.starts_with("sha256:") ? "@" : ":") + ref.reference;
  HttpRequest req;
  req.url = "/v2/" + ref.repository + "/manifests/" + ref.reference;
  req.headers = {"Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"};
  const auto reply = session.send(req);
  if (reply.status == 401 || reply.status == 403)
    throw IoError(fmt::format("{}: HTTP {}: {}", location, reply.status,
                              session.auth_header().empty() ? "access denied" : "the registry refused these credentials"),
                  EACCES);
  if (reply.status == 404) throw IoError(fmt::format("{}: HTTP 404: manifest unknown", location), ENOENT);
  if (reply.status != 200) throw IoError(fmt::format("{}: HTTP {} for the manifest", location, reply.status), EIO);
  OciBlob blob;
  // The digest names the manifest's bytes: computed here, never taken from the registry's word,
  // and a reference by digest (a lock file's) must get exactly those bytes.
  blob.manifest_digest =
      "sha256:" + to_hex(sha256(std::span(reinterpret_cast<const std::uint8_t *>(reply.body.data()), reply.body.size())));
  if (ref.reference.starts_with("sha256:") && ref.reference != blob.manifest_digest)
    throw IntegrityError(fmt::format("{}: the registry sent a manifest whose digest is {}", location, blob.manifest_digest));
  try {
    const auto m = nlohmann::json::parse(reply.body);
    const auto &layers = m.at("layers");
    const nlohmann::json *pick = layers.size() == 1 ? &layers.at(0) : nullptr;
    for (const auto &l : layers)
      if (l.value("mediaType", std::string()) == kOciLayerType) pick = &l;
    if (!pick) throw FormatError(fmt::format("{}: no layer of type {} in the manifest", location, kOciLayerType));
    blob.digest = pick->at("digest").get<std::string>();
    blob.size = pick->at("size").get<std::uint64_t>();
  } catch (const nlohmann::json::exception &e) {
    throw FormatError(fmt::format("{}: not an OCI image manifest ({})", location, e.what()));
  }
  if (!blob.digest.starts_with("sha256:") || !from_hex_ok(blob.digest.substr(7)))
    throw FormatError(fmt::format("{}: the layer's digest is not sha256:HEX", location));
  blob.url = ref.base_url() + "/v2/" + ref.repository + "/blobs/" + blob.digest;
  return blob;
}

std::shared_ptr<const ChunkSource> open_oci(const std::string &location, RemoteOptions opts) {
  auto session = std::make_shared<RegistrySession>(parse_oci_reference(location), location, opts);
  const auto blob = oci_resolve(*session);
  opts.display_name = location;
  if (!session->auth_header().empty()) {
    opts.headers.push_back(session->auth_header());
    opts.reauthorize = [session] { return session->reauthorize(); };  // tokens expire mid-mount
  }
  auto source = open_http(blob.url, opts);
  if (source->size() != blob.size)
    throw FormatError(fmt::format("{}: the blob is {} bytes, the manifest says {}", location, source->size(), blob.size));
  return source;
}

std::vector<std::string> oci_tags(const std::string &location, const RemoteOptions &opts) {
  auto ref = parse_oci_reference(location);
  RegistrySession session(ref, location, opts);
  std::vector<std::string> tags;
  std::string last;
  for (int page = 0; page < 1000; ++page) {  // bounded: 1000 pages of 1000 tags
    HttpRequest req;
    req.url = "/v2/" + ref.repository + "/tags/list?n=1000" + (last.empty() ? "" : "&last=" + url_escape(last));
    const auto reply = session.send(req);
    if (reply.status == 404) throw IoError(fmt::format("{}: HTTP 404: repository unknown", location), ENOENT);
    if (reply.status == 401 || reply.status == 403)
      throw IoError(fmt::format("{}: HTTP {}: access denied", location, reply.status), EACCES);
    if (reply.status != 200) throw IoError(fmt::format("{}: HTTP {} for the tag list", location, reply.status), EIO);
    std::size_t before = tags.size();
    try {
      const auto j = nlohmann::json::parse(reply.body);
      if (j.contains("tags") && j.at("tags").is_array())
        for (const auto &t : j.at("tags")) tags.push_back(t.get<std::string>());
    } catch (const nlohmann::json::exception &e) {
      throw FormatError(fmt::format("{}: the tag list is not JSON ({})", location, e.what()));
    }
    if (tags.size() - before < 1000) break;
    last = tags.back();
  }
  return tags;
}

namespace {
constexpr const char *kEmptyConfigType = "application/vnd.oci.empty.v1+json";
// SHA-256 of "{}", the OCI empty descriptor's content.
constexpr const char *kEmptyConfigDigest = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

// Uploads one blob unless the repository has it (HEAD) or can mount it from one of `mount_from`
// (the distribution spec's cross-repository mount: 201 when done, 202 and an upload URL when not).
OciPushResult::Blob put_blob(RegistrySession &s, const std::string &location, const std::string &digest,
                             HttpRequest body, const std::vector<std::string> &mount_from = {}) {
  HttpRequest head;
  head.method = "HEAD";
  head.url = "/v2/" + s.ref().repository + "/blobs/" + digest;
  if (s.send(head).status == 200) return OciPushResult::Blob::kExisted;
  HttpReply started;
  for (const auto &from : mount_from) {
    if (from == s.ref().repository) continue;
    HttpRequest mount;
    mount.method = "POST";
    mount.url = "/v2/" + s.ref().repository + "/blobs/uploads/?mount=" + digest + "&from=" + url_escape(from);
    started = s.send(mount);
    if (started.status == 201) return OciPushResult::Blob::kMounted;
    if (started.status == 202) break;  // the registry started a plain upload instead
  }
  if (started.status != 202) {
    HttpRequest start;
    start.method = "POST";
    start.url = "/v2/" + s.ref().repository + "/blobs/uploads/";
    started = s.send(start);
  }
  if (started.status == 401 || started.status == 403)
    throw IoError(fmt::format("{}: HTTP {}: the registry refused the upload (credentials with push access?)", location,
                              started.status),
                  EACCES);
  if (started.status != 202 || started.location.empty())
    throw IoError(fmt::format("{}: HTTP {} starting an upload", location, started.status), EIO);
  std::string url = started.location;
  if (url.starts_with("/")) url = s.ref().base_url() + url;
  url += (url.find('?') == std::string::npos ? "?" : "&") + std::string("digest=") + digest;
  body.method = "PUT";
  body.url = url;
  body.headers = {"Content-Type: application/octet-stream"};
  const auto done = s.send(body);
  if (done.status != 201)
    throw IoError(fmt::format("{}: HTTP {} uploading blob {}", location, done.status, digest), EIO);
  return OciPushResult::Blob::kUploaded;
}
}  // namespace

OciPushResult oci_push(const std::string &path, const std::string &blob_digest_hex, const std::string &location,
                       const std::map<std::string, std::string> &annotations, const RemoteOptions &opts,
                       const std::vector<std::string> &mount_from,
                       const std::function<void(std::uint64_t)> &progress) {
  const auto ref = parse_oci_reference(location);
  if (ref.reference.starts_with("sha256:"))
    throw UsageError(fmt::format("{}: push to a tag (REPO:TAG), not a digest", location));
  RegistrySession session(ref, location, opts, "pull,push");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("open", path);
  struct stat st {};
  const bool ok = ::fstat(fd, &st) == 0;
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (!ok) throw_errno("stat", path);
  const std::string digest = "sha256:" + blob_digest_hex;
  OciPushResult result;
  HttpRequest config;
  config.body = "{}";
  (void)put_blob(session, location, kEmptyConfigDigest, config);
  HttpRequest blob;
  blob.body_fd = fd;
  blob.body_size = static_cast<std::uint64_t>(st.st_size);
  blob.progress = progress;
  result.blob = put_blob(session, location, digest, blob, mount_from);

  nlohmann::ordered_json layer_ann = {{"org.opencontainers.image.title", path.substr(path.rfind('/') + 1)}};
  nlohmann::ordered_json manifest = {
      {"schemaVersion", 2},
      {"mediaType", "application/vnd.oci.image.manifest.v1+json"},
      {"artifactType", kOciArtifactType},
      {"config", {{"mediaType", kEmptyConfigType}, {"digest", kEmptyConfigDigest}, {"size", 2}, {"data", "e30="}}},
      {"layers", nlohmann::ordered_json::array({{{"mediaType", kOciLayerType},
                                                 {"digest", digest},
                                                 {"size", blob.body_size},
                                                 {"annotations", layer_ann}}})},
  };
  if (!annotations.empty()) manifest["annotations"] = annotations;
  HttpRequest put;
  put.method = "PUT";
  put.url = "/v2/" + ref.repository + "/manifests/" + ref.reference;
  put.headers = {"Content-Type: application/vnd.oci.image.manifest.v1+json"};
  put.body = manifest.dump();
  const auto reply = session.send(put);
  if (reply.status != 201)
    throw IoError(fmt::format("{}: HTTP {} storing the manifest{}", location, reply.status,
                              reply.body.empty() ? "" : ": " + reply.body.substr(0, 200)),
                  reply.status == 401 || reply.status == 403 ? EACCES : EIO);
  result.manifest_digest =
      "sha256:" + to_hex(sha256(std::span(reinterpret_cast<const std::uint8_t *>(put.body.data()), put.body.size())));
  return result;
}

}  // namespace torshpkg
