// The dependency resolver: depth-first over the graph, highest version first, backtracking.
//
// Every package gets one version (as npm's peer rules and Cargo's semver-compatible unification
// would have it for models: one tokenizer, one base). A choice is undone when a package chosen
// after it finds no version satisfying all its ranges; the first such failure, met on the path of
// the highest versions, is the one reported, since it is the conflict a user would hit.
#include <algorithm>
#include <map>
#include <set>

#include <fmt/format.h>

#include "torshpkg/errors.hpp"
#include "torshpkg/resolve.hpp"

namespace torshpkg {

namespace {

struct Constraint {
  std::string range;
  std::string by;  // "NAME@VERSION" of the package that dependencies it
};

std::string describe(const Constraint &c) {
  return fmt::format("{} (required by {})", c.range, c.by);
}

bool satisfies_all(const SemVer &v, const std::vector<Constraint> &cs) {
  return std::all_of(cs.begin(), cs.end(), [&v](const Constraint &c) { return satisfies(v, c.range); });
}

class Solver {
 public:
  Solver(std::string root, SemVer root_version, Catalogue &cat, const std::function<void(const std::string &)> &note,
         ResolveLimits limits)
      : root_(std::move(root)), cat_(cat), note_(note), limits_(limits) {
    chosen_[root_] = std::move(root_version);
  }

  void require(const std::string &by, const std::vector<Dependency> &deps) {
    for (const auto &d : deps) {
      if (!constraints_.contains(d.name)) order_.push_back(d.name);
      constraints_[d.name].push_back({d.range, by});
    }
  }

  bool solve() {
    const auto next =
        std::find_if(order_.begin(), order_.end(), [this](const auto &n) { return !chosen_.contains(n); });
    if (next == order_.end()) return true;
    const std::string name = *next;
    const auto &cs = constraints_.at(name);
    const auto *offered = versions(name);
    if (!offered) {
      fail(fmt::format("no package {} in {} (required by {})", name, cat_.where(), list(cs)));
      return false;
    }
    std::vector<SemVer> candidates;
    for (const auto &v : *offered)
      if (satisfies_all(v, cs)) candidates.push_back(v);
    std::sort(candidates.rbegin(), candidates.rend());
    if (candidates.empty()) {
      fail(no_version_message(name, cs, *offered));
      return false;
    }
    for (const auto &v : candidates) {
      if (++steps_ > limits_.max_steps)
        throw ResolveError(fmt::format("gave up after trying {} versions (a graph this tangled needs narrower ranges)",
                                       limits_.max_steps));
      const auto *entry = load(name, v);
      if (!entry) continue;
      const std::string by = name + "@" + v.str();
      if (!compatible_with_chosen(by, entry->dependencies)) continue;
      const auto saved_order = order_.size();
      const auto saved = constraints_;
      chosen_[name] = v;
      require(by, entry->dependencies);
      if (solve()) return true;
      chosen_.erase(name);
      constraints_ = saved;
      order_.resize(saved_order);
    }
    return false;
  }

  [[nodiscard]] Lock lock() const {
    Lock l;
    for (const auto &[name, v] : chosen_) {
      if (name == root_) continue;
      const auto &entry = loaded_.at({name, v.str()});
      LockedPackage p{name, v.str(), entry->root_sha256, entry->source, entry->dependencies, {}};
      std::set<std::string> by;
      for (const auto &c : constraints_.at(name)) by.insert(c.by);
      p.required_by.assign(by.begin(), by.end());
      l.packages.push_back(std::move(p));
    }
    return l;  // std::map: sorted by name
  }

  [[nodiscard]] const std::string &failure() const noexcept { return failure_; }

 private:
  const std::vector<SemVer> *versions(const std::string &name) {
    auto it = versions_.find(name);
    if (it == versions_.end()) it = versions_.emplace(name, cat_.versions(name)).first;
    return it->second ? &*it->second : nullptr;
  }

  // The catalogue's entry, read once; null (and a note) for a version whose package is unusable.
  const CatalogueEntry *load(const std::string &name, const SemVer &v) {
    const auto key = std::make_pair(name, v.str());
    if (auto it = loaded_.find(key); it != loaded_.end()) return it->second.get();
    std::shared_ptr<const CatalogueEntry> entry;
    try {
      entry = std::make_shared<const CatalogueEntry>(cat_.load(name, v));
    } catch (const FormatError &e) {  // not a package, or not the one its tag names
      if (note_) note_(fmt::format("skipping {}@{}: {}", name, v.str(), e.what()));
    } catch (const TrustError &e) {  // the policy wants signatures this version lacks
      if (note_) note_(fmt::format("skipping {}@{}: {}", name, v.str(), e.what()));
    }
    return loaded_.emplace(key, std::move(entry)).first->second.get();
  }

  // A dependency on a package already chosen must accept that choice; if not, this candidate is
  // skipped (its parents may still backtrack to another choice).
  bool compatible_with_chosen(const std::string &by, const std::vector<Dependency> &deps) {
    for (const auto &d : deps) {
      const auto it = chosen_.find(d.name);
      if (it == chosen_.end() || satisfies(it->second, d.range)) continue;
      if (d.name == root_) {
        fail(fmt::format("{} dependencies {} {}, but this is {}@{}", by, d.name, d.range, root_, it->second.str()));
        return false;
      }
      std::vector<Constraint> all = constraints_.at(d.name);
      all.push_back({d.range, by});
      fail(no_version_message(d.name, all, *versions(d.name)));
      return false;
    }
    return true;
  }

  void fail(std::string message) {
    if (failure_.empty()) failure_ = std::move(message);
  }

  static std::string list(const std::vector<Constraint> &cs) {
    std::string out;
    for (const auto &c : cs) out += (out.empty() ? "" : ", ") + c.by + " as " + c.range;
    return out;
  }

  // Names the smallest set of constraints that exclude every version: one (nothing satisfies it),
  // else a pair, else all of them.
  static std::string no_version_message(const std::string &name, const std::vector<Constraint> &cs,
                                        const std::vector<SemVer> &offered) {
    auto any_satisfies = [&offered](const std::vector<Constraint> &subset) {
      return std::any_of(offered.begin(), offered.end(), [&](const SemVer &v) { return satisfies_all(v, subset); });
    };
    std::vector<SemVer> sorted = offered;
    std::sort(sorted.begin(), sorted.end());
    std::string have;
    for (const auto &v : sorted) have += (have.empty() ? "" : ", ") + v.str();
    if (have.empty()) have = "no versions (no tag is a semantic version)";
    for (const auto &c : cs)
      if (!any_satisfies({c})) return fmt::format("{}: no version satisfies {}; on offer: {}", name, describe(c), have);
    for (std::size_t i = 0; i < cs.size(); ++i)
      for (std::size_t j = i + 1; j < cs.size(); ++j)
        if (!any_satisfies({cs[i], cs[j]}))
          return fmt::format("{}: no version satisfies both {} and {}; on offer: {}", name, describe(cs[i]),
                             describe(cs[j]), have);
    std::string all;
    for (const auto &c : cs) all += (all.empty() ? "" : ", ") + describe(c);
    return fmt::format("{}: no version satisfies all of {}; on offer: {}", name, all, have);
  }

  std::string root_;
  Catalogue &cat_;
  const std::function<void(const std::string &)> &note_;
  ResolveLimits limits_;
  std::uint64_t steps_ = 0;
  std::vector<std::string> order_;  // names in the order first required: a stable, breadth-ish walk
  std::map<std::string, std::vector<Constraint>> constraints_;
  std::map<std::string, SemVer> chosen_;
  std::map<std::string, std::optional<std::vector<SemVer>>> versions_;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<const CatalogueEntry>> loaded_;
  std::string failure_;
};

}  // namespace

Lock resolve_dependencies(const std::string &root_name, const std::string &root_version,
                          const std::vector<Dependency> &root_deps, Catalogue &catalogue,
                          const std::function<void(const std::string &)> &note, ResolveLimits limits) {
  const auto rv = parse_semver(root_version);
  if (!rv) throw UsageError(fmt::format("{}: version '{}' is not a semantic version", root_name, root_version));
  Solver solver(root_name, *rv, catalogue, note, limits);
  solver.require(root_name + "@" + root_version, root_deps);
  if (!solver.solve()) throw ResolveError(solver.failure().empty() ? "no solution" : solver.failure());
  auto lock = solver.lock();
  lock.root_name = root_name;
  lock.root_version = root_version;
  lock.registry = catalogue.where();
  return lock;
}

}  // namespace torshpkg
