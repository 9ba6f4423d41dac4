// s3://BUCKET/KEY: an HttpSource whose requests libcurl signs with AWS Signature V4.
//
// Endpoint: RemoteOptions::s3_endpoint, else $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL (any
// S3-compatible store; path-style ENDPOINT/BUCKET/KEY), else https://BUCKET.s3.REGION.amazonaws.com/KEY.
// Region: s3_region, else $AWS_REGION, else $AWS_DEFAULT_REGION, else the profile's region in
// $AWS_CONFIG_FILE (~/.aws/config), else us-east-1.
// Credentials: $AWS_ACCESS_KEY_ID + $AWS_SECRET_ACCESS_KEY (+ $AWS_SESSION_TOKEN), else the profile
// ($AWS_PROFILE, else "default") in $AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials); none: anonymous
// requests (public buckets). Messages and stats say s3://BUCKET/KEY and never show a credential.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "torshpkg/http_source.hpp"

namespace torshpkg {

struct S3Location {
  std::string bucket, key;
};
// Throws UsageError for anything but s3://BUCKET/KEY with a valid bucket name and a key.
[[nodiscard]] S3Location parse_s3_location(std::string_view location);
// The HTTP(S) URL of an object (the key percent-encoded, '/' kept).
[[nodiscard]] std::string s3_object_url(const S3Location &loc, const std::string &endpoint, const std::string &region);
// The sections of an INI file as AWS writes them: "[name]" (or "[profile name]") -> key -> value.
// A missing file gives none.
[[nodiscard]] std::map<std::string, std::map<std::string, std::string>> read_aws_ini(const std::string &path);

[[nodiscard]] std::shared_ptr<const ChunkSource> open_s3(const std::string &location, RemoteOptions opts);

}  // namespace torshpkg
