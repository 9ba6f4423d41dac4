// Packages over HTTP(S): a ChunkSource that reads byte ranges with libcurl, from the package's URL
// and its mirrors, with bounded retries and failover. Presigned S3, GCS and Azure URLs are plain
// HTTPS URLs to it (the signature lives in the query string, which messages never show).
//
// Opening fetches the package's tail with one suffix-range request (footer, index, manifest and
// signatures are all there for packages whose index fits in `tail_bytes`), which also tells the
// size; reads inside the tail are served from memory. Everything after that is one Range request per
// read: the caller coalesces neighbouring chunks (coalesce_bytes()).
//
// A mirror is used only once its tail matches the package that was opened (same size, same footer,
// hence same root digest). Any mirror that fails a request is retried later (connect errors, timeouts,
// 5xx, 429 with Retry-After, resets, truncated bodies); one that serves bytes failing their digest
// (distrust()), another package, or a changed ETag is marked bad for the rest of the session. A
// server that ignores Range (200 and the whole body) still works: the bytes before the range are
// read and dropped, and the transfer stops once the range is in.
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "torshpkg/chunk_source.hpp"

namespace torshpkg {

inline constexpr const char *kDefaultMirrorsFile = "/etc/torshpkg/mirrors.conf";

struct RemoteOptions {
  std::vector<std::string> mirrors;          // tried after the URL itself, in this order
  std::chrono::milliseconds timeout{30000};  // per request, connecting included
  unsigned retries = 3;                      // extra rounds over the mirrors before a read fails
  std::string cacert;                        // a CA bundle instead of the system's
  bool insecure = false;                     // no TLS verification (the caller warns)
  std::size_t tail_bytes = 256 * 1024;       // how much of the end to fetch at open
  std::size_t coalesce_bytes = 4 << 20;      // neighbouring chunks are read in ranges up to this size
  // Where one-line notices go (a mirror marked bad, a server ignoring Range); stderr when empty.
  std::function<void(const std::string &)> log;
  // Requests signed with AWS Signature V4 (s3:// locations; s3_source.hpp fills it).
  struct AwsSigV4 {
    std::string region, service = "s3";
    std::string access_key, secret_key, session_token;  // never in a message
  };
  std::optional<AwsSigV4> aws;
  // How messages and stats name the package, instead of the redacted URL ("s3://bucket/key").
  std::string display_name;
  // s3:// locations: overrides of AWS_ENDPOINT_URL(_S3) and AWS_REGION (s3_source.hpp).
  std::string s3_endpoint, s3_region;
  // Sent with every request ("Authorization: Bearer ..." for a registry); never in a message.
  std::vector<std::string> headers;
  // Called on a 401 to a request that carried credentials: returns a new "Authorization: ..." line
  // (a registry's bearer token expired), or throws. Unset: a 401 is final.
  std::function<std::string()> reauthorize;
};

// One small GET (a registry manifest, a token): the whole body, at most `max_body` bytes, and the
// headers a caller needs. TLS, timeouts and headers as `opts` says; no retries. Throws IoError for
// network and TLS failures, FormatError for a body larger than max_body.
struct HttpReply {
  long status = 0;
  std::string body, content_type, www_authenticate, location, content_digest;  // Location, Docker-Content-Digest
};
[[nodiscard]] HttpReply http_get(const std::string &url, const std::vector<std::string> &headers,
                                 const RemoteOptions &opts, std::size_t max_body = 4 << 20);
// Any method; the request body is `body`, or when `body_fd` >= 0, `body_size` bytes read from it
// (an upload; `progress`, if set, is told the bytes sent so far). No retries.
struct HttpRequest {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers;
  std::string body;
  int body_fd = -1;
  std::uint64_t body_size = 0;
  std::function<void(std::uint64_t sent)> progress;
  std::size_t max_body = 4 << 20;
};
[[nodiscard]] HttpReply http_request(const HttpRequest &req, const RemoteOptions &opts);

// True for http:// and https:// locations (case-insensitive).
[[nodiscard]] bool is_http_url(std::string_view location) noexcept;
// The URL as messages show it: no user name or password, and "?..." for a query string.
[[nodiscard]] std::string redact_url(std::string_view url);
// Mirrors for `url` from a mirrors file: each line "PREFIX MIRROR-PREFIX [MIRROR-PREFIX...]", '#'
// starts a comment; a URL starting with PREFIX gets each MIRROR-PREFIX + the rest of it. A missing
// file gives none; a malformed line is a UsageError naming the file and line.
[[nodiscard]] std::vector<std::string> mirrors_from_file(const std::string &url, const std::string &path);

// Opens `url` (fetching its tail). Throws IoError: ENOENT for 404/410, EACCES for 401/403, EIO for
// TLS and protocol errors, ETIMEDOUT; each a one-line message naming the URL.
[[nodiscard]] std::shared_ptr<const ChunkSource> open_http(const std::string &url, const RemoteOptions &opts);

}  // namespace torshpkg
