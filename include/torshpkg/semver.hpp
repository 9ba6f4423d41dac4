// Manifest fields with rules of their own: semantic versions, dependency ranges, package names.
#pragma once
#include <string>
#include <string_view>

namespace torshpkg {

// Semantic Versioning 2.0.0: MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD], no leading zeros.
[[nodiscard]] bool valid_semver(std::string_view v);
// npm-style ranges: "1.2.3", "^1.2", "~1.2.3", ">=1.0 <2.0", "1.x", "*", alternatives joined by "||".
[[nodiscard]] bool valid_semver_range(std::string_view r);

// Names of packages and of dependencies: 1-214 characters of letters, digits and -_./@
[[nodiscard]] bool valid_package_name(std::string_view name);

struct Dependency {
  std::string name;
  std::string range;
};
// Parses "NAME@RANGE" (or "NAME" for any version); throws UsageError with the reason.
[[nodiscard]] Dependency parse_dependency(std::string_view spec);

}  // namespace torshpkg
