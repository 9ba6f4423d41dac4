// Small text helpers the remote backends share (header-only, internal to src/remote).
#pragma once
#include <fmt/format.h>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace torshpkg::remote {

// An environment variable's value, "" when unset.
inline std::string env_text(const char *name) {
  const char *v = std::getenv(name);
  return v ? v : "";
}

// RFC 3986 percent-encoding of everything but the unreserved characters (and '/' when kept:
// object keys and paths).
inline std::string percent_encode(std::string_view s, bool keep_slash) {
  std::string out;
  for (unsigned char c : s) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
        c == '_' || c == '~' || (keep_slash && c == '/'))
      out += static_cast<char>(c);
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

// A JSON string literal; bytes that are not UTF-8 become U+FFFD instead of an exception.
inline std::string json_quote(std::string_view s) {
  return nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace torshpkg::remote
