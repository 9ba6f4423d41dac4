// Entry point of `torshpkg`: parse, run one subcommand, map its exception to an exit code.
#include <exception>
#include <string>

#include "cli.hpp"
#include "torshpkg/exit_codes.hpp"
#include "torshpkg/version.hpp"

namespace torshpkg::cli {

// CLI11 reports its own parse errors; everything else goes through exit_code_for().
static int run(int argc, char **argv) {
  CLI::App app{"torshpkg: pack, inspect and verify .tpkg model packages"};
  app.set_version_flag("--version", std::string("torshpkg ") + kVersion);
  app.require_subcommand(1);
  Action action;
  add_pack(app, action);
  add_inspect(app, action);
  add_ls(app, action);
  add_cat(app, action);
  add_extract(app, action);
  add_verify(app, action);
  add_keygen(app, action);
  add_sign(app, action);
  add_push(app, action);
  add_pull(app, action);
  add_tags(app, action);
  add_resolve(app, action);
  add_cache(app, action);
#if TORSHPKG_WITH_ZIPIO  // meson -Dzip=disabled: no libzip, no import/export
  add_import(app, action);
  add_export(app, action);
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    const int rc = app.exit(e);
    return rc == 0 ? kOk : kUsage;
  }
  try {
    return action();
  } catch (...) {
    return exit_code_for(std::current_exception(), Tool::kTorshpkg);
  }
}

}  // namespace torshpkg::cli

int main(int argc, char **argv) { return torshpkg::cli::run(argc, argv); }
