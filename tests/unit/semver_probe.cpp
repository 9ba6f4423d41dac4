// Answers semver questions line by line, for tests/unit/semver_node_check.py to compare with
// node-semver. Each input line is one of
//   S<TAB>VERSION<TAB>RANGE   -> "1" / "0" (satisfies), "invalid" if either does not parse
//   C<TAB>A<TAB>B             -> "-1" / "0" / "1" (A <=> B), "invalid" if either does not parse
// and yields exactly one output line.
#include <exception>
#include <iostream>
#include <string>
#include <string_view>

#include "torshpkg/semver.hpp"

namespace {

std::string answer(std::string_view line) {
  const auto t1 = line.find('\t');
  if (t1 == std::string_view::npos) return "error: no tab";
  const auto t2 = line.find('\t', t1 + 1);
  if (t2 == std::string_view::npos) return "error: one tab";
  const auto kind = line.substr(0, t1);
  const auto a = line.substr(t1 + 1, t2 - t1 - 1);
  const auto b = line.substr(t2 + 1);
  if (kind == "S") {
    const auto v = torshpkg::parse_semver(a);
    if (!v || !torshpkg::valid_semver_range(b)) return "invalid";
    return torshpkg::satisfies(*v, b) ? "1" : "0";
  }
  if (kind == "C") {
    const auto va = torshpkg::parse_semver(a), vb = torshpkg::parse_semver(b);
    if (!va || !vb) return "invalid";
    const auto order = *va <=> *vb;
    return order < 0 ? "-1" : order > 0 ? "1" : "0";
  }
  return "error: unknown kind";
}

}  // namespace

int main() {
  std::ios::sync_with_stdio(false);
  std::string line;
  while (std::getline(std::cin, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string out;
    try {
      out = answer(line);
    } catch (const std::exception &e) {
      out = std::string("error: ") + e.what();
    }
    std::cout << out << '\n';
  }
  std::cout.flush();
  return 0;
}
