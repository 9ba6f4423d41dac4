// oci://HOST[:PORT]/REPO[:TAG|@sha256:HEX]: a package stored in an OCI registry as an artifact
// (artifactType application/vnd.torshpkg.package.v1, the .tpkg as one layer of media type
// application/vnd.torshpkg.package.v1.tpkg). The reference is resolved once, at open, to the blob's
// digest; the blob is then an HttpSource (lazy Range reads, mirrors, the disk cache) like any URL.
// oci+http:// is the same over plain HTTP (registries on loopback).
//
// Credentials as the container tools keep them: the "auths" entry for HOST[:PORT] in
// $REGISTRY_AUTH_FILE, else $DOCKER_CONFIG/config.json, else ~/.docker/config.json ("auth":
// base64 of user:password). A registry that answers 401 gets HTTP basic, or the bearer-token
// challenge (WWW-Authenticate: Bearer realm=...,service=...,scope=...), whichever it asks for.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "torshpkg/http_source.hpp"

namespace torshpkg {

inline constexpr const char *kOciArtifactType = "application/vnd.torshpkg.package.v1";
inline constexpr const char *kOciLayerType = "application/vnd.torshpkg.package.v1.tpkg";

struct OciReference {
  std::string registry;    // host[:port]
  std::string repository;  // may hold '/'
  std::string reference;   // a tag, or sha256:HEX
  bool plain_http = false;
  [[nodiscard]] std::string base_url() const { return (plain_http ? "http://" : "https://") + registry; }
};
// Throws UsageError for anything but oci[+http]://HOST[:PORT]/REPO[:TAG|@sha256:HEX] (no tag: latest).
[[nodiscard]] OciReference parse_oci_reference(std::string_view location);
// "user:password" for a registry from the auth files above; nullopt when none names it.
[[nodiscard]] std::optional<std::string> registry_credentials(const std::string &registry);

// Requests to one repository of a registry: a 401 gets the basic credentials or the bearer token
// it asks for (scope repository:REPO:`actions`), once, and later requests send them at once.
class RegistrySession {
 public:
  RegistrySession(OciReference ref, std::string location, RemoteOptions opts, std::string actions = "pull");
  // `req.url` may be a path ("/v2/..."), which is made absolute against the registry.
  [[nodiscard]] HttpReply send(HttpRequest req);
  [[nodiscard]] const OciReference &ref() const noexcept { return ref_; }
  [[nodiscard]] const std::string &auth_header() const noexcept { return auth_; }  // "" when anonymous
  [[nodiscard]] const RemoteOptions &options() const noexcept { return opts_; }
  // New credentials after they expired: the challenge of the first 401 asked again. Returns the
  // Authorization line.
  [[nodiscard]] std::string reauthorize();

 private:
  OciReference ref_;
  std::string location_, actions_, auth_;
  std::optional<std::string> creds_;  // user:password from the credential files, read at construction
  HttpReply challenge_;  // the first 401
  RemoteOptions opts_;
};

// The package layer a reference points at.
struct OciBlob {
  std::string url, digest;  // digest: "sha256:HEX"
  std::uint64_t size = 0;
  std::string manifest_digest;  // of the manifest, when the registry said
};
[[nodiscard]] OciBlob oci_resolve(RegistrySession &session);

[[nodiscard]] std::shared_ptr<const ChunkSource> open_oci(const std::string &location, RemoteOptions opts);

// The repository's tags (following the registry's pagination).
[[nodiscard]] std::vector<std::string> oci_tags(const std::string &location, const RemoteOptions &opts);

// Pushes the .tpkg at `path` (its SHA-256 `blob_digest_hex`, computed by the caller) as an artifact:
// the config blob (OCI's empty descriptor), the package blob (skipped when the registry has it,
// mounted from the first of `mount_from`, repositories of the same registry, that holds it), then
// the manifest under the reference's tag, with `annotations`. Returns the manifest's digest.
struct OciPushResult {
  std::string manifest_digest;  // sha256:HEX of the manifest as sent
  enum class Blob { kUploaded, kExisted, kMounted } blob = Blob::kUploaded;
};
[[nodiscard]] OciPushResult oci_push(const std::string &path, const std::string &blob_digest_hex,
                                     const std::string &location, const std::map<std::string, std::string> &annotations,
                                     const RemoteOptions &opts, const std::vector<std::string> &mount_from,
                                     const std::function<void(std::uint64_t)> &progress);

}  // namespace torshpkg
