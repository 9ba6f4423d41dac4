// The dependency resolver over a catalogue held in a table, and lock files: highest versions,
// diamonds, backtracking, the messages of each kind of failure, and hostile lock files.
#include <doctest/doctest.h>

#include <map>
#include <set>

#include <fmt/format.h>

#include "helpers.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/resolve.hpp"

using namespace torshpkg;

namespace {

// name -> version -> dependencies ("NAME@RANGE" specs); a version listed in `broken` throws
// FormatError on load, as a tag whose package is not what it claims would.
class TableCatalogue final : public Catalogue {
 public:
  std::map<std::string, std::map<std::string, std::vector<std::string>>> table;
  std::set<std::string> broken;  // "NAME@VERSION"
  int loads = 0;

  [[nodiscard]] std::string where() const override { return "table"; }
  std::optional<std::vector<SemVer>> versions(const std::string &name) override {
    const auto it = table.find(name);
    if (it == table.end()) return std::nullopt;
    std::vector<SemVer> out;
    for (const auto &[text, deps] : it->second) out.push_back(*parse_semver(text));
    return out;
  }
  CatalogueEntry load(const std::string &name, const SemVer &v) override {
    ++loads;
    if (broken.contains(name + "@" + v.str())) throw FormatError("not a package");
    CatalogueEntry e;
    for (const auto &spec : table.at(name).at(v.str())) e.dependencies.push_back(parse_dependency(spec));
    e.root_sha256 = std::string(64, 'a');
    e.source = "table/" + name + "@" + v.str();
    return e;
  }
};

std::vector<Dependency> deps(std::initializer_list<std::string_view> specs) {
  std::vector<Dependency> out;
  for (auto s : specs) out.push_back(parse_dependency(s));
  return out;
}

std::map<std::string, std::string> chosen(const Lock &lock) {
  std::map<std::string, std::string> out;
  for (const auto &p : lock.packages) out[p.name] = p.version;
  return out;
}

std::string failure(Catalogue &cat, const std::vector<Dependency> &root_deps) {
  try {
    (void)resolve_dependencies("app", "1.0.0", root_deps, cat);
  } catch (const ResolveError &e) {
    return e.what();
  }
  FAIL("resolved, but a ResolveError was expected");
  return {};
}

}  // namespace

TEST_CASE("resolve: a diamond picks the highest version every range allows") {
  TableCatalogue cat;
  cat.table["a"] = {{"1.0.0", {"c@^1.0"}}, {"1.1.0", {"c@^1.1"}}, {"2.0.0", {}}};
  cat.table["b"] = {{"1.0.0", {"c@>=1.0.0 <1.3.0"}}};
  cat.table["c"] = {{"1.0.0", {}}, {"1.2.0", {}}, {"1.3.0", {}}, {"1.4.0-rc.1", {}}};
  const auto lock = resolve_dependencies("app", "1.0.0", deps({"a@^1", "b@^1"}), cat);
  CHECK(chosen(lock) == std::map<std::string, std::string>{{"a", "1.1.0"}, {"b", "1.0.0"}, {"c", "1.2.0"}});
  CHECK(lock.root_name == "app");
  CHECK(lock.registry == "table");
  const auto &c = lock.packages.at(2);
  CHECK(c.name == "c");
  CHECK(c.required_by == std::vector<std::string>{"a@1.1.0", "b@1.0.0"});
  CHECK(c.source == "table/c@1.2.0");
}

TEST_CASE("resolve: a choice whose dependencies conflict is undone, whatever the order of the root's") {
  TableCatalogue cat;
  cat.table["x"] = {{"1.0.0", {"y@^1"}}, {"2.0.0", {"y@^2"}}};
  cat.table["y"] = {{"1.0.0", {}}, {"2.0.0", {}}};
  // app wants y@^1: x 2.0.0 needs y 2, so x goes back to 1.0.0.
  for (const auto &root : {deps({"x@*", "y@^1"}), deps({"y@^1", "x@*"})}) {
    const auto lock = resolve_dependencies("app", "1.0.0", root, cat);
    CHECK(chosen(lock) == std::map<std::string, std::string>{{"x", "1.0.0"}, {"y", "1.0.0"}});
  }
}

TEST_CASE("resolve: a conflict names both ranges and who required them") {
  TableCatalogue cat;
  cat.table["a"] = {{"1.0.0", {"c@^1"}}};
  cat.table["b"] = {{"1.0.0", {"c@^2"}}};
  cat.table["c"] = {{"1.5.0", {}}, {"2.1.0", {}}};
  const auto msg = failure(cat, deps({"a@1", "b@1"}));
  CHECK_MESSAGE(th::contains(msg, "c: no version satisfies both ^1 (required by a@1.0.0) and ^2 (required by b@1.0.0)"),
                msg);
  CHECK_MESSAGE(th::contains(msg, "on offer: 1.5.0, 2.1.0"), msg);
}

TEST_CASE("resolve: missing packages and ranges nothing satisfies") {
  TableCatalogue cat;
  cat.table["a"] = {{"1.0.0", {"ghost@^1"}}};
  cat.table["c"] = {{"1.0.0", {}}, {"1.1.0", {}}};
  auto msg = failure(cat, deps({"nothere@1"}));
  CHECK_MESSAGE(th::contains(msg, "no package nothere in table (required by app@1.0.0 as 1)"), msg);
  msg = failure(cat, deps({"a@1"}));
  CHECK_MESSAGE(th::contains(msg, "no package ghost in table (required by a@1.0.0 as ^1)"), msg);
  msg = failure(cat, deps({"c@^2"}));
  CHECK_MESSAGE(th::contains(msg, "c: no version satisfies ^2 (required by app@1.0.0); on offer: 1.0.0, 1.1.0"), msg);
}

TEST_CASE("resolve: pre-releases only when a range asks for one") {
  TableCatalogue cat;
  cat.table["c"] = {{"1.0.0", {}}, {"1.1.0-beta.1", {}}};
  CHECK(chosen(resolve_dependencies("app", "1.0.0", deps({"c@^1"}), cat)).at("c") == "1.0.0");
  CHECK(chosen(resolve_dependencies("app", "1.0.0", deps({"c@^1.1.0-beta.0"}), cat)).at("c") == "1.1.0-beta.1");
}

TEST_CASE("resolve: an unreadable version is skipped with a note") {
  TableCatalogue cat;
  cat.table["c"] = {{"1.0.0", {}}, {"1.1.0", {}}};
  cat.broken.insert("c@1.1.0");
  std::vector<std::string> notes;
  const auto lock =
      resolve_dependencies("app", "1.0.0", deps({"c@^1"}), cat, [&notes](const std::string &n) { notes.push_back(n); });
  CHECK(chosen(lock).at("c") == "1.0.0");
  REQUIRE(notes.size() == 1);
  CHECK(th::contains(notes[0], "skipping c@1.1.0: not a package"));
}

TEST_CASE("resolve: cycles terminate, and a dependency back on the root must accept it") {
  TableCatalogue cat;
  cat.table["p"] = {{"1.0.0", {"q@1"}}};
  cat.table["q"] = {{"1.0.0", {"p@1"}}};
  CHECK(chosen(resolve_dependencies("app", "1.0.0", deps({"p@1"}), cat)).size() == 2);
  cat.table["r"] = {{"1.0.0", {"app@^2"}}};
  const auto msg = failure(cat, deps({"r@1"}));
  CHECK_MESSAGE(th::contains(msg, "r@1.0.0 dependencies app ^2, but this is app@1.0.0"), msg);
}

TEST_CASE("resolve: an exponential graph is cut off by the step limit") {
  // Each level has 10 versions that all fail at the bottom: without a limit, 10^6 tries.
  TableCatalogue cat;
  for (int level = 0; level < 6; ++level) {
    auto &versions = cat.table[fmt::format("l{}", level)];
    for (int i = 0; i < 10; ++i)
      versions[fmt::format("1.{}.0", i)] = {level == 5 ? std::string("missing@1") : fmt::format("l{}@1", level + 1)};
  }
  ResolveLimits limits;
  limits.max_steps = 500;
  CHECK_THROWS_WITH_AS((void)resolve_dependencies("app", "1.0.0", deps({"l0@1"}), cat, {}, limits),
                       doctest::Contains("gave up after trying 500 versions"), ResolveError);
}

TEST_CASE("lock: JSON round trip, and hostile lock files are refused") {
  Lock lock;
  lock.root_name = "app";
  lock.root_version = "1.0.0";
  lock.root_sha256 = std::string(64, 'b');
  lock.registry = "oci://host/org";
  lock.packages.push_back({"a",
                           "1.1.0",
                           std::string(64, 'c'),
                           "oci://host/org/a@sha256:" + std::string(64, 'd'),
                           {{"c", "^1.1"}},
                           {"app@1.0.0"}});
  lock.packages.push_back(
      {"c", "1.2.0+b5", std::string(64, 'e'), "oci://host/org/c@sha256:" + std::string(64, 'f'), {}, {"a@1.1.0"}});
  const auto text = lock_to_json(lock);
  const auto back = parse_lock(text, "t");
  CHECK(lock_to_json(back) == text);
  CHECK(back.packages.at(1).version == "1.2.0+b5");

  auto refused = [](const std::string &t) { CHECK_THROWS_AS((void)parse_lock(t, "x.lock"), FormatError); };
  refused("");
  refused("[]");
  refused("{\"lockfile_version\": 2}");
  auto replace = [&text](std::string_view from, std::string_view to) {
    std::string t = text;
    const auto at = t.find(from);
    REQUIRE(at != std::string::npos);
    return t.replace(at, from.size(), to);
  };
  refused(replace("\"1.1.0\"", "\"latest\""));
  refused(replace(std::string(64, 'c'), "cc"));
  refused(replace("\"name\": \"c\",\n      \"version\"", "\"name\": \"a\",\n      \"version\""));  // twice
  refused(replace("\"name\": \"a\"", "\"name\": \"../a\""));  // names are OCI repository names
  refused(replace("\"name\": \"a\"", "\"name\": \"..\""));
  refused(replace("\"source\": \"oci", "\"source\": \"\", \"x\": \"oci"));
}

TEST_CASE("lock: OCI names and tags") {
  CHECK(valid_oci_repository("org/model"));
  CHECK(valid_oci_repository("a.b_c__d-e--f/g"));
  for (std::string_view bad : {"", "Org/model", "org//model", "/org", "org/", "a..b", "a___b", "-a", "a-"})
    CHECK_MESSAGE(!valid_oci_repository(bad), bad);
  CHECK(version_of_tag("1.0.0_build5")->str() == "1.0.0+build5");
  CHECK(!version_of_tag("latest").has_value());
  CHECK(tag_of_version(*parse_semver("2.0.0-rc.1+b.2")) == "2.0.0-rc.1_b.2");
}
