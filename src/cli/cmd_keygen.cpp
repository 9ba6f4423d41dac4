// torshpkg keygen -o NAME [--encryption]: an Ed25519 signing key pair (or, with --encryption, an
// X25519 pair to receive encrypted packages), NAME.key (0600) and NAME.pub.
#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"

namespace torshpkg::cli {

namespace {

// Creates `path` with `mode` (never widened by an existing file) and writes `text`.
void write_new_file(const std::string &path, std::string_view text, mode_t mode, bool force) {
  if (force && ::unlink(path.c_str()) != 0 && errno != ENOENT) throw_errno("remove", path);
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd) {
    if (errno == EEXIST) throw UsageError(path + " exists; use --force to replace it");
    throw_errno("create", path);
  }
  write_all(fd.get(), std::span(reinterpret_cast<const std::uint8_t *>(text.data()), text.size()), path);
  if (::fsync(fd.get()) != 0) throw_errno("fsync", path);
}

}  // namespace

void add_keygen(CLI::App &app, Action &action) {
  auto name = std::make_shared<std::string>();
  auto pass_file = std::make_shared<std::string>();
  auto ask = std::make_shared<bool>(false);
  auto force = std::make_shared<bool>(false);
  auto encryption = std::make_shared<bool>(false);
  auto *cmd = app.add_subcommand(
      "keygen", "Make an Ed25519 signing key (or, --encryption, an X25519 one): NAME.key (private, 0600) and NAME.pub");
  cmd->add_option("-o,--output", *name, "Path prefix of the two key files")->required();
  cmd->add_option("--passphrase-file", *pass_file, "Encrypt the private key with the first line of this file");
  cmd->add_flag("--ask-passphrase", *ask, "Encrypt the private key with a passphrase typed twice");
  cmd->add_flag("--force", *force, "Replace existing key files");
  cmd->add_flag("--encryption", *encryption,
                "An X25519 key pair for encryption: packages are encrypted to NAME.pub (pack --encrypt-to) and "
                "opened with NAME.key (--key, mount -o key=)");
  cmd->callback([&action, name, pass_file, ask, force, encryption] {
    action = [name, pass_file, ask, force, encryption]() -> int {
      if (*ask && !pass_file->empty()) throw UsageError("give --passphrase-file or --ask-passphrase, not both");
      std::string passphrase;
      if (const auto p = read_passphrase_file(*pass_file)) passphrase = *p;
      if (*ask) passphrase = prompt_new_passphrase(*name + ".key");
      if ((*ask || !pass_file->empty()) && passphrase.empty()) throw UsageError("empty passphrase");
      const auto key = PrivateKey::generate(*encryption ? KeyType::kX25519 : KeyType::kEd25519);
      const auto pub = key.public_key();
      write_new_file(*name + ".key", key.pem(passphrase), 0600, *force);
      write_new_file(*name + ".pub", pub.pem(), 0644, *force);
      fmt::print("{}.key: {} private key{} (keep it secret)\n{}.pub: public key, id {}\n", *name,
                 *encryption ? "X25519" : "Ed25519", passphrase.empty() ? "" : ", encrypted", *name, to_hex(pub.id()));
      if (*encryption)
        fmt::print("encrypt to it with: torshpkg pack DIR -o PKG --encrypt-to {}.pub\n", *name);
      else
        fmt::print("trust it with: install -m 0644 {}.pub {}/\n", *name, kDefaultTrustDir);
      return kOk;
    };
  });
}

}  // namespace torshpkg::cli
