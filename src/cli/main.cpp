// Entry point of `torshpkg`: parse, run one subcommand, map its exception to an exit code.
#include <fmt/format.h>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "cli.hpp"
#include "torshpkg/exit_codes.hpp"
#include "torshpkg/version.hpp"

namespace torshpkg::cli {

namespace {

// The commands that can follow `app` on the command line (CLI11 keeps option groups there too,
// nameless).
std::vector<CLI::App *> commands_of(CLI::App &app) {
  return app.get_subcommands([](CLI::App *s) { return !s->get_name().empty(); });
}

std::vector<std::string> names_of(const std::vector<CLI::App *> &apps) {
  std::vector<std::string> out;
  for (auto *a : apps) out.push_back(a->get_name());
  return out;
}

CLI::App *find_command(CLI::App &app, std::string_view name) {
  for (auto *s : commands_of(app))
    if (s->get_name() == name) return s;
  return nullptr;
}

// "unknown command 'cache frob' (did you mean 'cache gc'?)": `path` is where `word` was met.
std::string unknown_command(CLI::App &parent, const std::string &path, const std::string &word) {
  const std::string prefix = path.empty() ? "" : path + " ";
  const auto hint = closest_match(word, names_of(commands_of(parent)));
  return fmt::format("torshpkg: unknown command '{}{}' ({})", prefix, word,
                     hint.empty() ? fmt::format("see 'torshpkg help{}'", path.empty() ? "" : " " + path)
                                  : fmt::format("did you mean '{}{}'?", prefix, hint));
}

// The options a misspelt `word` may have meant, in the command that met it.
std::vector<std::string> option_names(CLI::App &app) {
  std::vector<std::string> out;
  for (const auto *o : app.get_options()) {
    for (const auto &n : o->get_lnames()) out.push_back("--" + n);
    for (const auto &n : o->get_snames()) out.push_back("-" + n);
  }
  return out;
}

// One line for any parse error, "torshpkg: CMD: what (hint)": CLI11's own report is two lines
// and never suggests anything.
std::string parse_error_line(CLI::App &app, const CLI::ParseError &e) {
  CLI::App *cur = &app;
  std::string path;  // "cache gc": the commands that were recognised
  for (auto subs = cur->get_subcommands(); !subs.empty(); subs = cur->get_subcommands()) {
    cur = subs.front();
    path += (path.empty() ? "" : " ") + cur->get_name();
  }
  const std::string where = path.empty() ? "torshpkg: " : "torshpkg: " + path + ": ";
  const std::string see = fmt::format(" (see 'torshpkg help{}')", path.empty() ? "" : " " + path);
  for (const auto &arg : app.remaining(true)) {
    if (arg.size() > 1 && arg[0] == '-') {
      const std::string name = arg.substr(0, arg.find('='));
      const auto hint = closest_match(name, option_names(*cur));
      return fmt::format("{}unknown option '{}'{}", where, name,
                         hint.empty() ? see : fmt::format(" (did you mean '{}'?)", hint));
    }
    if (!commands_of(*cur).empty()) return unknown_command(*cur, path, arg);
    return fmt::format("{}unexpected argument '{}'{}", where, arg, see);
  }
  std::string what = e.what();
  if (what == "A subcommand is required")
    return fmt::format("{}a command is required: {}", where, fmt::join(names_of(commands_of(*cur)), ", "));
  for (auto &c : what)
    if (c == '\n') c = ' ';
  return where + what + see;
}

// `torshpkg help [CMD [SUBCMD]]`: the help `CMD --help` prints, on stdout.
int help_command(CLI::App &app, int argc, char **argv) {
  CLI::App *cur = &app;
  std::string path, prev;  // prev: what CLI11 puts before the command's name in its usage line
  for (int i = 2; i < argc; ++i) {
    const std::string word = argv[i];
    if (word.starts_with('-')) {
      fmt::print(stderr, "torshpkg: help: unknown option '{}' (usage: torshpkg help [COMMAND])\n", word);
      return kUsage;
    }
    auto *next = find_command(*cur, word);
    if (!next) {
      fmt::print(stderr, "{}\n", unknown_command(*cur, path, word));
      return kUsage;
    }
    prev += (prev.empty() ? "" : " ") + cur->get_name();
    path += (path.empty() ? "" : " ") + word;
    cur = next;
  }
  fmt::print("{}", cur == &app ? app.help() : cur->help(prev));
  return kOk;
}

int run(int argc, char **argv) {
  CLI::App app{"torshpkg: pack, inspect and verify .tpkg model packages", "torshpkg"};
  app.set_version_flag("--version", std::string("torshpkg ") + kVersion);
  app.require_subcommand(1);
  app.footer("Run 'torshpkg help COMMAND' (or 'torshpkg COMMAND --help') for the options of a command.");
  Action action;
  add_pack(app, action);
  add_inspect(app, action);
  add_diff(app, action);
  add_ls(app, action);
  add_cat(app, action);
  add_extract(app, action);
  add_verify(app, action);
  add_keygen(app, action);
  add_sign(app, action);
  add_rekey(app, action);
  add_trust(app, action);
  add_push(app, action);
  add_pull(app, action);
  add_tags(app, action);
  add_resolve(app, action);
  add_cache(app, action);
#if TORSHPKG_WITH_ZIPIO  // meson -Dzip=disabled: no libzip, no import/export
  add_import(app, action);
  add_export(app, action);
#endif
  if (argc <= 1) {  // usage on stderr, status 2: nothing was asked for
    fmt::print(stderr, "{}", app.help());
    return kUsage;
  }
  if (std::string_view(argv[1]) == "help") return help_command(app, argc, argv);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    if (e.get_exit_code() == 0) return app.exit(e) == 0 ? kOk : kUsage;  // --help, --version
    fmt::print(stderr, "{}\n", parse_error_line(app, e));
    return kUsage;
  }
  try {
    return action();
  } catch (...) {
    return exit_code_for(std::current_exception(), Tool::kTorshpkg);
  }
}

}  // namespace

}  // namespace torshpkg::cli

int main(int argc, char **argv) {
  return torshpkg::cli::run(argc, argv);
}
