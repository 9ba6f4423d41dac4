#include "torshpkg/s3_source.hpp"

#include <fmt/format.h>
#include <cstdlib>
#include <fstream>

#include "remote_text.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg {

namespace {

using remote::env_text;

std::string trim(std::string s) {
  const auto b = s.find_first_not_of(" \t\r");
  const auto e = s.find_last_not_of(" \t\r");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

std::string home_file(const char *override_var, const char *rel) {
  if (auto v = env_text(override_var); !v.empty()) return v;
  const auto home = env_text("HOME");
  return home.empty() ? "" : home + "/" + rel;
}

// Bucket names as S3 allows them: 3-63 of a-z, 0-9, '.', '-' (no '/', which would change the path).
bool valid_bucket(std::string_view b) {
  if (b.size() < 3 || b.size() > 63) return false;
  for (char c : b)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-')) return false;
  return true;
}

}  // namespace

S3Location parse_s3_location(std::string_view location) {
  constexpr std::string_view kScheme = "s3://";
  if (location.size() < kScheme.size() || location.substr(0, kScheme.size()) != kScheme)
    throw UsageError(fmt::format("{}: not an s3://BUCKET/KEY location", location));
  const auto rest = location.substr(kScheme.size());
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos || slash + 1 >= rest.size())
    throw UsageError(fmt::format("{}: expected s3://BUCKET/KEY (the key is missing)", location));
  S3Location l{std::string(rest.substr(0, slash)), std::string(rest.substr(slash + 1))};
  if (!valid_bucket(l.bucket))
    throw UsageError(fmt::format("{}: '{}' is not a bucket name (3 to 63 of a-z, 0-9, '.', '-')", location, l.bucket));
  return l;
}

std::string s3_object_url(const S3Location &loc, const std::string &endpoint, const std::string &region) {
  const std::string key = remote::percent_encode(loc.key, true);
  if (endpoint.empty()) return fmt::format("https://{}.s3.{}.amazonaws.com/{}", loc.bucket, region, key);
  std::string base = endpoint;
  while (!base.empty() && base.back() == '/') base.pop_back();
  if (!is_http_url(base)) throw UsageError(fmt::format("S3 endpoint {}: not an http(s) URL", redact_url(base)));
  return fmt::format("{}/{}/{}", base, loc.bucket, key);  // path style: any S3-compatible store
}

std::map<std::string, std::map<std::string, std::string>> read_aws_ini(const std::string &path) {
  std::map<std::string, std::map<std::string, std::string>> out;
  if (path.empty()) return out;
  std::ifstream in(path);
  std::string line, section;
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = trim(line.substr(1, line.size() - 2));
      if (section.starts_with("profile ")) section = trim(section.substr(8));  // ~/.aws/config's spelling
      continue;
    }
    const auto eq = line.find('=');
    if (eq == std::string::npos || section.empty()) continue;
    out[section][trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
  }
  return out;
}

std::shared_ptr<const ChunkSource> open_s3(const std::string &location, RemoteOptions opts) {
  const auto loc = parse_s3_location(location);
  std::string profile = env_text("AWS_PROFILE");
  if (profile.empty()) profile = "default";
  std::string region = opts.s3_region;
  if (region.empty()) region = env_text("AWS_REGION");
  if (region.empty()) region = env_text("AWS_DEFAULT_REGION");
  if (region.empty()) region = read_aws_ini(home_file("AWS_CONFIG_FILE", ".aws/config"))[profile]["region"];
  if (region.empty()) region = "us-east-1";
  std::string endpoint = opts.s3_endpoint;
  if (endpoint.empty()) endpoint = env_text("AWS_ENDPOINT_URL_S3");
  if (endpoint.empty()) endpoint = env_text("AWS_ENDPOINT_URL");

  RemoteOptions::AwsSigV4 aws;
  aws.region = region;
  aws.access_key = env_text("AWS_ACCESS_KEY_ID");
  aws.secret_key = env_text("AWS_SECRET_ACCESS_KEY");
  aws.session_token = env_text("AWS_SESSION_TOKEN");
  if (aws.access_key.empty() || aws.secret_key.empty()) {
    auto creds = read_aws_ini(home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"))[profile];
    aws.access_key = creds["aws_access_key_id"];
    aws.secret_key = creds["aws_secret_access_key"];
    aws.session_token = creds["aws_session_token"];
  }
  if (!aws.access_key.empty() && !aws.secret_key.empty()) opts.aws = std::move(aws);  // else anonymous
  opts.display_name = location;
  return open_http(s3_object_url(loc, endpoint, region), opts);
}

}  // namespace torshpkg
