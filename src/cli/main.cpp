// Entry point of `torshpkg`: parse, run one subcommand, map its exception to an exit code.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/version.hpp"

namespace torshpkg::cli {

// The one place where exceptions become exit codes.
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
  add_import(app, action);
  add_export(app, action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    const int rc = app.exit(e);
    return rc == 0 ? kOk : kUsage;
  }
  try {
    return action();
  } catch (const UsageError &e) {
    fmt::print(stderr, "torshpkg: {}\n", e.what());
    return kUsage;
  } catch (const NotFoundError &e) {
    fmt::print(stderr, "torshpkg: {}\n", e.what());
    return kNotFound;
  } catch (const TrustError &e) {
    fmt::print(stderr, "torshpkg: untrusted package: {}\n", e.what());
    return kUntrusted;
  } catch (const IntegrityError &e) {
    fmt::print(stderr, "torshpkg: damaged package: {}\n", e.what());
    return kIntegrity;
  } catch (const FormatError &e) {
    fmt::print(stderr, "torshpkg: {}\n", e.what());
    return kFormat;
  } catch (const IoError &e) {
    fmt::print(stderr, "torshpkg: {}\n", e.what());
    return e.errnum == EPIPE ? kOk : kIo;
  } catch (const Interrupted &e) {
    fmt::print(stderr, "torshpkg: {}\n", e.what());
    return kInterrupted;
  } catch (const std::exception &e) {
    fmt::print(stderr, "torshpkg: {}\n", e.what());
    return kFailure;
  }
}

}  // namespace torshpkg::cli

int main(int argc, char **argv) { return torshpkg::cli::run(argc, argv); }
