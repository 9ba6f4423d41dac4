// torshpkg sign FILE --key KEY [-o OUT]: add a signature, rewriting only the tail of the file.
#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/writer.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg::cli {

void add_sign(CLI::App &app, Action &action) {
  auto file = std::make_shared<std::string>();
  auto keys = std::make_shared<std::vector<std::string>>();
  auto pass_file = std::make_shared<std::string>();
  auto output = std::make_shared<std::string>();
  auto *cmd = app.add_subcommand("sign", "Sign a package's root (in place, or into a copy with -o)");
  cmd->add_option("FILE", *file, "Package")->required();
  cmd->add_option("--key", *keys, "Private key from `torshpkg keygen` (repeatable)")->required()->allow_extra_args(false);
  cmd->add_option("--passphrase-file", *pass_file, "Passphrase of encrypted keys (first line)");
  cmd->add_option("-o,--output", *output, "Write the signed package here instead of changing FILE");
  cmd->callback([&action, file, keys, pass_file, output] {
    action = [file, keys, pass_file, output]() -> int {
      const auto passphrase = read_passphrase_file(*pass_file);
      std::string target = *file;
      for (const auto &k : *keys) {
        const auto key = PrivateKey::load(k, passphrase);
        // The first key writes the copy; later keys add to it in place.
        sign_package(target, key, target == *file ? *output : std::string());
        if (!output->empty()) target = *output;
        fmt::print("{}: signed by {} ({})\n", target, to_hex(key.public_key().id()), k);
      }
      return kOk;
    };
  });
}

}  // namespace torshpkg::cli
