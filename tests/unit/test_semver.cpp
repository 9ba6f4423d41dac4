// Semantic versions: parsing, SemVer 2.0.0 precedence, and npm-style ranges (node-semver's
// meaning, cross-checked at scale against node-semver itself by semver_node_check.py).
#include <doctest/doctest.h>

#include <algorithm>
#include <vector>

#include "helpers.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/semver.hpp"

using namespace torshpkg;

namespace {

SemVer v(std::string_view text) {
  const auto parsed = parse_semver(text);
  REQUIRE_MESSAGE(parsed.has_value(), text);
  return *parsed;
}

bool sat(std::string_view version, std::string_view range) {
  return satisfies(v(version), range);
}

}  // namespace

TEST_CASE("semver: parsing keeps every field and prints canonically") {
  const auto x = v("1.22.333-rc.1.x-y+build.5");
  CHECK(x.major == 1);
  CHECK(x.minor == 22);
  CHECK(x.patch == 333);
  CHECK(x.prerelease == std::vector<std::string>{"rc", "1", "x-y"});
  CHECK(x.build == "build.5");
  CHECK(x.str() == "1.22.333-rc.1.x-y+build.5");
  CHECK(v("0.0.0").str() == "0.0.0");
  CHECK(v("9007199254740991.0.0").major == 9007199254740991ULL);
}

TEST_CASE("semver: invalid versions are refused") {
  for (std::string_view bad : {"",
                               "1",
                               "1.2",
                               "1.2.3.4",
                               "01.2.3",
                               "1.02.3",
                               "1.2.03",
                               "v1.2.3",
                               "1.2.3-",
                               "1.2.3+",
                               "1.2.3-01",
                               "1.2.3-a..b",
                               "1.2.3-a_b",
                               " 1.2.3",
                               "1.2.3 ",
                               "-1.2.3",
                               "1.2.x",
                               "9007199254740992.0.0",
                               "1.2.3-9007199254740992",
                               "99999999999999999999.0.0"})
    CHECK_MESSAGE(!parse_semver(bad).has_value(), bad);
  CHECK(parse_semver("1.2.3-0a").has_value());   // alphanumeric: leading zero allowed
  CHECK(parse_semver("1.2.3+001").has_value());  // build metadata: leading zeros allowed
}

TEST_CASE("semver: precedence follows SemVer 2.0.0 section 11") {
  // The spec's own example chain, and a few more.
  const std::vector<std::string_view> ascending = {"0.0.0-0",    "0.0.0",        "0.0.1",         "0.1.0",
                                                   "1.0.0-0",    "1.0.0-alpha",  "1.0.0-alpha.1", "1.0.0-alpha.beta",
                                                   "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1",
                                                   "1.0.0",      "1.0.1",        "1.2.0",         "1.10.0",
                                                   "2.0.0-rc.1", "2.0.0",        "10.0.0"};
  for (std::size_t i = 0; i + 1 < ascending.size(); ++i) {
    CHECK_MESSAGE(v(ascending[i]) < v(ascending[i + 1]), ascending[i], " < ", ascending[i + 1]);
    CHECK(v(ascending[i + 1]) > v(ascending[i]));
  }
  CHECK(v("1.0.0+a") == v("1.0.0+b"));   // build metadata does not count
  CHECK(v("1.0.0-2") < v("1.0.0-10"));   // numeric identifiers compare numerically
  CHECK(v("1.0.0-10") < v("1.0.0-9a"));  // and below alphanumeric ones
  std::vector<SemVer> shuffled = {v("1.0.0"), v("0.9.9"), v("1.0.0-rc.1"), v("1.0.1")};
  std::sort(shuffled.begin(), shuffled.end());
  CHECK(shuffled.front().str() == "0.9.9");
  CHECK(shuffled.back().str() == "1.0.1");
}

TEST_CASE("semver: caret ranges keep the left-most non-zero number") {
  CHECK(sat("1.2.3", "^1.2.3"));
  CHECK(sat("1.9.9", "^1.2.3"));
  CHECK_FALSE(sat("2.0.0", "^1.2.3"));
  CHECK_FALSE(sat("1.2.2", "^1.2.3"));
  CHECK(sat("0.2.9", "^0.2.3"));
  CHECK_FALSE(sat("0.3.0", "^0.2.3"));
  CHECK(sat("0.0.3", "^0.0.3"));
  CHECK_FALSE(sat("0.0.4", "^0.0.3"));
  CHECK(sat("0.0.9", "^0.0"));
  CHECK_FALSE(sat("0.1.0", "^0.0"));
  CHECK(sat("1.5.0", "^1"));
  CHECK(sat("1.5.0", "^1.x"));
  CHECK(sat("0.9.0", "^0.x"));
  CHECK_FALSE(sat("1.0.0", "^0.x"));
  CHECK(sat("5.0.0", "^*"));
}

TEST_CASE("semver: tilde, x-ranges, operators and hyphen ranges") {
  CHECK(sat("1.2.9", "~1.2.3"));
  CHECK_FALSE(sat("1.3.0", "~1.2.3"));
  CHECK(sat("1.9.0", "~1"));
  CHECK_FALSE(sat("2.0.0", "~1"));
  CHECK(sat("1.2.0", "1.2.x"));
  CHECK(sat("1.2.7", "1.2"));
  CHECK_FALSE(sat("1.3.0", "1.2.*"));
  CHECK(sat("3.1.4", "*"));
  CHECK(sat("3.1.4", "x"));
  CHECK(sat("1.2.3", "1.2.3"));
  CHECK(sat("1.2.3", "=1.2.3"));
  CHECK(sat("1.2.3", "v1.2.3"));
  CHECK_FALSE(sat("1.2.4", "1.2.3"));
  CHECK(sat("2.0.0", ">1"));  // >1 is >=2.0.0
  CHECK_FALSE(sat("1.9.9", ">1"));
  CHECK(sat("1.3.0", ">1.2"));
  CHECK_FALSE(sat("1.2.9", ">1.2"));
  CHECK(sat("1.2.9", "<=1.2"));  // <=1.2 is <1.3.0-0
  CHECK_FALSE(sat("1.3.0", "<=1.2"));
  CHECK(sat("1.1.9", "<1.2"));
  CHECK_FALSE(sat("1.2.0", "<1.2"));
  CHECK(sat("1.2.0", ">=1.2"));
  CHECK_FALSE(sat("0.0.1", "<*"));  // nothing is below everything
  CHECK_FALSE(sat("0.0.1", ">*"));
  CHECK(sat("1.5.0", ">=1.0.0 <2.0.0"));
  CHECK_FALSE(sat("2.0.0", ">=1.0.0 <2.0.0"));
  CHECK(sat("3.0.0", "<1.0.0 || >=3.0.0"));
  CHECK_FALSE(sat("2.0.0", "<1.0.0 || >=3.0.0"));
  CHECK(sat("2.3.9", "1.2 - 2.3"));  // partial upper end: <2.4.0-0
  CHECK_FALSE(sat("2.4.0", "1.2 - 2.3"));
  CHECK(sat("2.3.4", "1.2.3 - 2.3.4"));
  CHECK_FALSE(sat("2.3.5", "1.2.3 - 2.3.4"));
  CHECK_FALSE(sat("1.2.2", "1.2.3 - 2.3.4"));
}

TEST_CASE("semver: a pre-release matches only a range naming a pre-release of the same release") {
  CHECK_FALSE(sat("1.3.0-beta", "^1.2.0"));
  CHECK_FALSE(sat("2.0.0-rc.1", "*"));
  CHECK(sat("1.2.0-beta.2", "^1.2.0-beta.1"));
  CHECK_FALSE(sat("1.2.0-beta.0", "^1.2.0-beta.1"));
  CHECK(sat("1.2.1", "^1.2.0-beta.1"));
  CHECK_FALSE(sat("1.2.1-rc.1", "^1.2.0-beta.1"));  // another release's pre-release
  CHECK(sat("1.2.3-alpha", ">=1.2.3-alpha <1.2.3"));
  CHECK(sat("1.0.0-rc.1", "1.0.0-rc.1"));
  CHECK(sat("1.0.0-rc.1", "<1.0.0 || 1.0.0-rc.1"));
  CHECK_FALSE(sat("2.0.0-0", "<2.0.0"));
}

TEST_CASE("semver: ranges are validated, and invalid ones are refused by satisfies") {
  for (std::string_view ok : {"*", "1", "1.x", "^1.2", "~1.2.3", ">=1.0.0 <2.0.0", "1.2 - 2.3", "1.x || >=3.0.0-rc.1",
                              "=1.2.3", "v1.2.3", "^1.2.3-beta.1", "1.2.3+build"})
    CHECK_MESSAGE(valid_semver_range(ok), ok);
  for (std::string_view bad : {"", " ", "||", "1 ||", "latest", ">= 1.0", "1.x.3", "1.2-beta", "~>1.2", "1.2.3.4",
                               "01.2", "^", "1 - ", "1.2.3 - 2 - 3", "9007199254740992"})
    CHECK_MESSAGE(!valid_semver_range(bad), bad);
  CHECK_THROWS_AS((void)satisfies(v("1.0.0"), "latest"), UsageError);
}

TEST_CASE("semver: dependency specs") {
  const auto d = parse_dependency("org/tokenizer@^1.2");
  CHECK(d.name == "org/tokenizer");
  CHECK(d.range == "^1.2");
  CHECK(parse_dependency("base").range == "*");
  CHECK(parse_dependency("@scope/name@~2").name == "@scope/name");
  CHECK_THROWS_AS((void)parse_dependency("x@latest"), UsageError);
  CHECK_THROWS_AS((void)parse_dependency("@noscope"), UsageError);
  CHECK_THROWS_AS((void)parse_dependency("bad name@1"), UsageError);
}
