// torshpkg rekey FILE --key KEY [--add PUB] [--remove PUB] [-o OUT]: change who can open an
// encrypted package, rewriting only the key block at its tail (signatures stay valid).
#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/writer.hpp"

namespace torshpkg::cli {

void add_rekey(CLI::App &app, Action &action) {
  struct Args {
    std::string file, output, add_pass_file;
    std::vector<std::string> add, remove;
    bool remove_passphrases = false;
    unsigned scrypt_log_n = keyblock::kDefaultScryptLogN;
    KeyArgs keys;
  };
  auto a = std::make_shared<Args>();
  auto *cmd = app.add_subcommand(
      "rekey", "Change the recipients of an encrypted package (only its tail is rewritten; signatures stay valid)");
  cmd->add_option("FILE", a->file, "Encrypted package")->required();
  cmd->add_option("--add", a->add, "Add this X25519 public key as a recipient (repeatable)")->allow_extra_args(false);
  cmd->add_option("--remove", a->remove, "Remove this recipient's public key (repeatable)")->allow_extra_args(false);
  cmd->add_option("--add-passphrase-file", a->add_pass_file, "Add the passphrase on the first line of this file");
  cmd->add_flag("--remove-passphrases", a->remove_passphrases, "Remove every passphrase entry");
  cmd->add_option("--scrypt-work", a->scrypt_log_n, "log2 of scrypt's N for --add-passphrase-file (default 18)")
      ->check(CLI::Range(keyblock::kMinScryptLogN, keyblock::kMaxScryptLogN));
  cmd->add_option("-o,--output", a->output, "Write the rekeyed package here instead of changing FILE");
  add_key_options(cmd, a->keys);
  cmd->callback([&action, a] {
    action = [a]() -> int {
      RekeyOptions o;
      for (const auto &k : a->add) o.add.push_back(PublicKey::load(k, KeyType::kX25519));
      for (const auto &k : a->remove) o.remove.push_back(PublicKey::load(k, KeyType::kX25519));
      if (auto p = read_passphrase_file(a->add_pass_file)) {
        if (p->empty()) throw UsageError(a->add_pass_file + ": empty passphrase");
        o.add_passphrases.push_back(std::move(*p));
      }
      o.remove_passphrases = a->remove_passphrases;
      o.scrypt_log_n = a->scrypt_log_n;
      if (o.add.empty() && o.remove.empty() && o.add_passphrases.empty() && !o.remove_passphrases)
        throw UsageError("nothing to change: give --add, --remove, --add-passphrase-file or --remove-passphrases");
      const auto n = rekey_package(a->file, *load_keys(a->keys), o, a->output);
      fmt::print("{}: {} recipient{} now ({} added, {} removed{})\n", a->output.empty() ? a->file : a->output, n,
                 n == 1 ? "" : "s", o.add.size() + o.add_passphrases.size(), o.remove.size(),
                 o.remove_passphrases ? ", passphrases removed" : "");
      return kOk;
    };
  });
}

}  // namespace torshpkg::cli
