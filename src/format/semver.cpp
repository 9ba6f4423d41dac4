// Semantic versions, dependency ranges and package names (manifest fields; docs/FORMAT.md).
#include "torshpkg/semver.hpp"

#include <algorithm>
#include <cctype>
#include <vector>
#include <fmt/format.h>

#include "torshpkg/errors.hpp"

namespace torshpkg {

namespace {

bool is_numeric_id(std::string_view s) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  return s.size() == 1 || s[0] != '0';
}

bool is_ident(std::string_view s, bool numeric_no_leading_zero) {
  if (s.empty()) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-')) return false;
  if (numeric_no_leading_zero && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return is_numeric_id(s);
  return true;
}

bool dot_separated(std::string_view s, bool prerelease) {
  while (true) {
    const auto dot = s.find('.');
    if (!is_ident(s.substr(0, dot), prerelease)) return false;
    if (dot == std::string_view::npos) return true;
    s = s.substr(dot + 1);
  }
}

// Checks and removes "+BUILD" and "-PRERELEASE" from the end of a version, leaving MAJOR.MINOR.PATCH.
bool strip_suffixes(std::string_view &v) {
  if (const auto plus = v.find('+'); plus != std::string_view::npos) {
    if (!dot_separated(v.substr(plus + 1), false)) return false;
    v = v.substr(0, plus);
  }
  if (const auto dash = v.find('-'); dash != std::string_view::npos) {
    if (!dot_separated(v.substr(dash + 1), true)) return false;
    v = v.substr(0, dash);
  }
  return true;
}

// A partial version in a range: "1", "1.2", "1.2.3", with x/X/* wildcards, optional suffixes.
bool valid_partial(std::string_view v) {
  if (!v.empty() && (v[0] == 'v' || v[0] == '=')) v.remove_prefix(1);
  if (!strip_suffixes(v)) return false;
  int parts = 0;
  while (true) {
    const auto dot = v.find('.');
    const auto p = v.substr(0, dot);
    if (!(p == "x" || p == "X" || p == "*" || is_numeric_id(p))) return false;
    if (++parts > 3) return false;
    if (dot == std::string_view::npos) return true;
    v = v.substr(dot + 1);
  }
}

bool valid_comparator(std::string_view c) {
  for (std::string_view op : {">=", "<=", ">", "<", "=", "^", "~"}) {
    if (c.substr(0, op.size()) == op) {
      c.remove_prefix(op.size());
      break;
    }
  }
  return valid_partial(c);
}

std::vector<std::string_view> split_ws(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && s[i] == ' ') ++i;
    std::size_t j = i;
    while (j < s.size() && s[j] != ' ') ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

}  // namespace

bool valid_semver(std::string_view v) {
  if (!strip_suffixes(v)) return false;
  int parts = 0;
  while (true) {
    const auto dot = v.find('.');
    if (!is_numeric_id(v.substr(0, dot)) || ++parts > 3) return false;
    if (dot == std::string_view::npos) return parts == 3;
    v = v.substr(dot + 1);
  }
}

bool valid_semver_range(std::string_view r) {
  if (r.empty() || r.size() > 256) return false;
  while (true) {
    const auto bar = r.find("||");
    const auto alt = r.substr(0, bar);
    const auto words = split_ws(alt);
    if (words.empty()) return false;
    if (words.size() == 3 && words[1] == "-") {  // hyphen range "1.2 - 2.3"
      if (!valid_partial(words[0]) || !valid_partial(words[2])) return false;
    } else {
      for (auto w : words)
        if (!valid_comparator(w)) return false;
    }
    if (bar == std::string_view::npos) return true;
    r = r.substr(bar + 2);
  }
}

bool valid_package_name(std::string_view name) {
  if (name.empty() || name.size() > 214) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("-_./@").find(c) != std::string_view::npos;
  });
}

Dependency parse_dependency(std::string_view spec) {
  const auto at = spec.find('@', 1);  // a leading '@' belongs to a scoped name
  Dependency d{std::string(spec.substr(0, at)), at == std::string_view::npos ? "*" : std::string(spec.substr(at + 1))};
  // A leading '@' starts a scoped name, which needs "@scope/name".
  if (d.name.starts_with('@') && (d.name.find('/') == std::string::npos || d.name.find('/') < 2 || d.name.back() == '/'))
    throw UsageError(fmt::format("dependency '{}': a name starting with '@' must be @scope/name", spec));
  if (!valid_package_name(d.name))
    throw UsageError(fmt::format("dependency '{}': name must be 1-214 characters of letters, digits, -_./@", spec));
  if (!valid_semver_range(d.range))
    throw UsageError(fmt::format("dependency '{}': '{}' is not a semantic version range", spec, d.range));
  return d;
}

}  // namespace torshpkg
