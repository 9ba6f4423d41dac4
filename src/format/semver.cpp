// Semantic versions, dependency ranges and package names (manifest fields; docs/FORMAT.md).
#include "torshpkg/semver.hpp"

#include <algorithm>
#include <cctype>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "torshpkg/errors.hpp"

namespace torshpkg {

namespace {

bool is_numeric_id(std::string_view s) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  return s.size() == 1 || s[0] != '0';
}

constexpr std::uint64_t kMaxSafeInteger = (std::uint64_t{1} << 53) - 1;  // node-semver's limit

// A numeric identifier as a number; nullopt for leading zeros or a value above `limit`.
std::optional<std::uint64_t> safe_number(std::string_view s, std::uint64_t limit = kMaxSafeInteger) {
  if (!is_numeric_id(s) || s.size() > 16) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) v = v * 10 + static_cast<std::uint64_t>(c - '0');
  if (v > limit) return std::nullopt;
  return v;
}
// In a range, one less: node-semver computes bounds such as ^N -> <N+1.0.0-0 and refuses the
// range when N+1 is past its limit.
constexpr std::uint64_t kMaxRangeNumber = kMaxSafeInteger - 1;
// node-semver refuses longer version strings.
constexpr std::size_t kMaxVersionLength = 256;

bool all_digits(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::vector<std::string> split_dots(std::string_view s) {
  std::vector<std::string> out;
  while (true) {
    const auto dot = s.find('.');
    out.emplace_back(s.substr(0, dot));
    if (dot == std::string_view::npos) return out;
    s = s.substr(dot + 1);
  }
}

bool is_ident(std::string_view s, bool numeric_no_leading_zero) {
  if (s.empty()) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-')) return false;
  if (numeric_no_leading_zero && all_digits(s)) return is_numeric_id(s);
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

// Numeric pre-release identifiers within node-semver's limit (past it, node compares them as text).
bool prerelease_numbers_bounded(std::string_view v) {
  if (const auto plus = v.find('+'); plus != std::string_view::npos) v = v.substr(0, plus);
  const auto dash = v.find('-');
  if (dash == std::string_view::npos) return true;
  for (const auto &id : split_dots(v.substr(dash + 1)))
    if (all_digits(id) && !safe_number(id)) return false;
  return true;
}

// A partial version in a range: "1", "1.2", "1.2.3", with x/X/* wildcards. Stricter than
// node-semver in a few ways, so that every range accepted here means the same to npm
// (tests/unit/semver_node_check.py): no number may follow a wildcard ("1.x.3"), -PRERELEASE/+BUILD
// need all three numbers, the only prefix is 'v' ("=" is an operator, once), numbers stop at 2^53 - 2.
bool valid_partial(std::string_view v) {
  if (!v.empty() && v[0] == 'v') v.remove_prefix(1);
  if (!prerelease_numbers_bounded(v)) return false;
  const auto core_end = v.find_first_of("-+");
  const bool suffixed = core_end != std::string_view::npos;
  if (!strip_suffixes(v)) return false;
  int parts = 0;
  bool wildcard = false;
  while (true) {
    const auto dot = v.find('.');
    const auto p = v.substr(0, dot);
    const bool is_x = p == "x" || p == "X" || p == "*";
    if (!(is_x || (!wildcard && safe_number(p, kMaxRangeNumber)))) return false;
    wildcard = wildcard || is_x;
    if (++parts > 3) return false;
    if (dot == std::string_view::npos) return !suffixed || (parts == 3 && !wildcard);
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

// --- Versions and their order ---------------------------------------------------------------

// SemVer 2.0.0, 11.4: numeric identifiers (no leading zeros, so longer is larger) below others.
std::weak_ordering compare_identifier(const std::string &a, const std::string &b) {
  const bool an = all_digits(a), bn = all_digits(b);
  if (an && bn) {
    if (a.size() != b.size()) return a.size() <=> b.size();
    return a.compare(b) <=> 0;
  }
  if (an != bn) return an ? std::weak_ordering::less : std::weak_ordering::greater;
  return a.compare(b) <=> 0;
}

// --- Ranges: every comparator lowered to primitive ones, as node-semver does -------------------

enum class Op { kLess, kLessEqual, kGreater, kGreaterEqual, kEqual };

struct Primitive {
  Op op;
  SemVer v;
};
using ComparatorSet = std::vector<Primitive>;  // all must hold; empty means any version

// A partial version: the numbers before the first wildcard (or the end), and a pre-release.
struct Partial {
  int known = 0;  // 0..3
  std::uint64_t major = 0, minor = 0, patch = 0;
  std::vector<std::string> prerelease;
};

Partial parse_partial(std::string_view v) {  // v passed valid_partial()
  if (!v.empty() && v[0] == 'v') v.remove_prefix(1);
  Partial p;
  if (const auto plus = v.find('+'); plus != std::string_view::npos) v = v.substr(0, plus);
  if (const auto dash = v.find('-'); dash != std::string_view::npos) {
    p.prerelease = split_dots(v.substr(dash + 1));
    v = v.substr(0, dash);
  }
  std::uint64_t *fields[] = {&p.major, &p.minor, &p.patch};
  for (const auto &part : split_dots(v)) {
    const auto n = safe_number(part);
    if (!n) break;
    *fields[p.known++] = *n;
  }
  return p;
}

SemVer version(std::uint64_t major, std::uint64_t minor, std::uint64_t patch, std::vector<std::string> pre = {}) {
  SemVer v;
  v.major = major;
  v.minor = minor;
  v.patch = patch;
  v.prerelease = std::move(pre);
  return v;
}
// "-0", the lowest pre-release: "< 2.0.0-0" excludes 2.0.0's pre-releases too.
SemVer lowest(std::uint64_t major, std::uint64_t minor, std::uint64_t patch) {
  return version(major, minor, patch, {"0"});
}
SemVer full(const Partial &p) {
  return version(p.major, p.minor, p.patch, p.prerelease);
}

// "1.2.x" and friends, with an optional < <= > >= = operator.
void lower_xrange(std::string_view op, const Partial &p, ComparatorSet &out) {
  if (p.known == 0) {
    if (op == ">" || op == "<") out.push_back({Op::kLess, lowest(0, 0, 0)});  // nothing
    return;                                                                   // else anything
  }
  if (p.known == 3) {
    const Op o = op == ">="   ? Op::kGreaterEqual
                 : op == "<=" ? Op::kLessEqual
                 : op == ">"  ? Op::kGreater
                 : op == "<"  ? Op::kLess
                              : Op::kEqual;
    out.push_back({o, full(p)});
    return;
  }
  const std::uint64_t minor = p.known >= 2 ? p.minor : 0;
  // The first version past the partial: 1 -> 2.0.0, 1.2 -> 1.3.0.
  const auto next = [&p, minor] { return p.known == 1 ? lowest(p.major + 1, 0, 0) : lowest(p.major, minor + 1, 0); };
  if (op.empty() || op == "=") {
    out.push_back({Op::kGreaterEqual, version(p.major, minor, 0)});
    out.push_back({Op::kLess, next()});
  } else if (op == ">") {
    auto v = next();
    v.prerelease.clear();
    out.push_back({Op::kGreaterEqual, v});
  } else if (op == ">=") {
    out.push_back({Op::kGreaterEqual, version(p.major, minor, 0)});
  } else if (op == "<") {
    out.push_back({Op::kLess, lowest(p.major, minor, 0)});
  } else {  // "<="
    out.push_back({Op::kLess, next()});
  }
}

// ~ and ^ alike: from the partial (missing numbers taken as 0) up to, not including, `upper`.
void lower_from(const Partial &p, SemVer upper, ComparatorSet &out) {
  out.push_back({Op::kGreaterEqual, p.known == 3 ? full(p) : version(p.major, p.known == 2 ? p.minor : 0, 0)});
  out.push_back({Op::kLess, std::move(upper)});
}

// ~ allows patch-level changes (~1 is 1.x).
void lower_tilde(const Partial &p, ComparatorSet &out) {
  if (p.known == 0) return;
  lower_from(p, p.known == 1 ? lowest(p.major + 1, 0, 0) : lowest(p.major, p.minor + 1, 0), out);
}

// ^ allows changes that do not touch the left-most non-zero number.
void lower_caret(const Partial &p, ComparatorSet &out) {
  if (p.known == 0) return;
  if (p.known == 1 || p.major != 0)
    lower_from(p, lowest(p.major + 1, 0, 0), out);
  else if (p.known == 3 && p.minor == 0)
    lower_from(p, lowest(0, 0, p.patch + 1), out);
  else
    lower_from(p, lowest(0, p.minor + 1, 0), out);
}

void lower_hyphen(const Partial &from, const Partial &to, ComparatorSet &out) {
  if (from.known == 1) out.push_back({Op::kGreaterEqual, version(from.major, 0, 0)});
  if (from.known == 2) out.push_back({Op::kGreaterEqual, version(from.major, from.minor, 0)});
  if (from.known == 3) out.push_back({Op::kGreaterEqual, full(from)});
  if (to.known == 1) out.push_back({Op::kLess, lowest(to.major + 1, 0, 0)});
  if (to.known == 2) out.push_back({Op::kLess, lowest(to.major, to.minor + 1, 0)});
  if (to.known == 3) out.push_back({Op::kLessEqual, full(to)});
}

void lower_comparator(std::string_view c, ComparatorSet &out) {
  std::string_view op;
  for (std::string_view o : {">=", "<=", ">", "<", "=", "^", "~"}) {
    if (c.substr(0, o.size()) == o) {
      op = o;
      c.remove_prefix(o.size());
      break;
    }
  }
  const auto p = parse_partial(c);
  if (op == "^")
    lower_caret(p, out);
  else if (op == "~")
    lower_tilde(p, out);
  else
    lower_xrange(op, p, out);
}

bool holds(const Primitive &c, const SemVer &v) {
  const auto order = v <=> c.v;
  switch (c.op) {
    case Op::kLess: return order < 0;
    case Op::kLessEqual: return order <= 0;
    case Op::kGreater: return order > 0;
    case Op::kGreaterEqual: return order >= 0;
    case Op::kEqual: return order == 0;
  }
  return false;
}

bool set_satisfied(const ComparatorSet &set, const SemVer &v) {
  if (!std::all_of(set.begin(), set.end(), [&v](const Primitive &c) { return holds(c, v); })) return false;
  if (v.prerelease.empty()) return true;
  // A pre-release only where the range itself names a pre-release of the same release.
  return std::any_of(set.begin(), set.end(), [&v](const Primitive &c) {
    return !c.v.prerelease.empty() && c.v.major == v.major && c.v.minor == v.minor && c.v.patch == v.patch;
  });
}

}  // namespace

std::string SemVer::str() const {
  auto out = fmt::format("{}.{}.{}", major, minor, patch);
  for (std::size_t i = 0; i < prerelease.size(); ++i) out += (i == 0 ? "-" : ".") + prerelease[i];
  if (!build.empty()) out += "+" + build;
  return out;
}

std::weak_ordering operator<=>(const SemVer &a, const SemVer &b) {
  if (auto c = std::tie(a.major, a.minor, a.patch) <=> std::tie(b.major, b.minor, b.patch); c != 0) return c;
  // A release is above its pre-releases.
  if (a.prerelease.empty() || b.prerelease.empty()) return a.prerelease.empty() <=> b.prerelease.empty();
  for (std::size_t i = 0; i < a.prerelease.size() && i < b.prerelease.size(); ++i)
    if (auto c = compare_identifier(a.prerelease[i], b.prerelease[i]); c != 0) return c;
  return a.prerelease.size() <=> b.prerelease.size();
}

std::optional<SemVer> parse_semver(std::string_view text) {
  if (text.size() > kMaxVersionLength || !valid_semver(text) || !prerelease_numbers_bounded(text)) return std::nullopt;
  SemVer v;
  if (const auto plus = text.find('+'); plus != std::string_view::npos) {
    v.build = std::string(text.substr(plus + 1));
    text = text.substr(0, plus);
  }
  if (const auto dash = text.find('-'); dash != std::string_view::npos) {
    v.prerelease = split_dots(text.substr(dash + 1));
    text = text.substr(0, dash);
  }
  const auto parts = split_dots(text);
  const auto major = safe_number(parts[0]), minor = safe_number(parts[1]), patch = safe_number(parts[2]);
  if (!major || !minor || !patch) return std::nullopt;
  v.major = *major;
  v.minor = *minor;
  v.patch = *patch;
  return v;
}

bool satisfies(const SemVer &v, std::string_view range) {
  if (!valid_semver_range(range)) throw UsageError(fmt::format("'{}' is not a semantic version range", range));
  std::vector<ComparatorSet> alternatives;
  while (true) {
    const auto bar = range.find("||");
    const auto words = split_ws(range.substr(0, bar));
    auto &set = alternatives.emplace_back();
    if (words.size() == 3 && words[1] == "-") {
      lower_hyphen(parse_partial(words[0]), parse_partial(words[2]), set);
    } else {
      for (auto w : words) lower_comparator(w, set);
    }
    // As node-semver: ">=0.0.0" is "*" (which matters for the rule below).
    std::erase_if(set, [](const Primitive &c) { return c.op == Op::kGreaterEqual && c.v == version(0, 0, 0); });
    if (bar == std::string_view::npos) break;
    range = range.substr(bar + 2);
  }
  // As node-semver: when one alternative allows any version, the whole range is "*", which
  // matches no pre-release ("1.2.3-beta || *" does not match 1.2.3-beta).
  if (alternatives.size() > 1 &&
      std::any_of(alternatives.begin(), alternatives.end(), [](const ComparatorSet &s) { return s.empty(); }))
    return set_satisfied({}, v);
  return std::any_of(alternatives.begin(), alternatives.end(),
                     [&v](const ComparatorSet &s) { return set_satisfied(s, v); });
}

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
  if (d.name.starts_with('@') &&
      (d.name.find('/') == std::string::npos || d.name.find('/') < 2 || d.name.back() == '/'))
    throw UsageError(fmt::format("dependency '{}': a name starting with '@' must be @scope/name", spec));
  if (!valid_package_name(d.name))
    throw UsageError(fmt::format("dependency '{}': name must be 1-214 characters of letters, digits, -_./@", spec));
  if (!valid_semver_range(d.range))
    throw UsageError(fmt::format("dependency '{}': '{}' is not a semantic version range", spec, d.range));
  return d;
}

}  // namespace torshpkg
