// Pipeline stage: opens a sealed chunk (nonce | ciphertext | tag, crypt.hpp) after its digest is
// checked, before it is decoded. The associated data binds the entry's codec, filter and decoded
// size, so sealed bytes cannot be relabelled to decode another way. Without a content key (a locked
// package) every chunk is a KeyError: ciphertext is never handed to a decoder.
#include <fmt/format.h>

#include "torshpkg/crypt.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/pipeline.hpp"

namespace torshpkg {

namespace {
class Decrypt final : public ChunkStage {
 public:
  Decrypt(std::shared_ptr<const Sealer> sealer, std::string package)
      : sealer_(std::move(sealer)), package_(std::move(package)) {}
  [[nodiscard]] std::string_view name() const noexcept override { return "decrypt"; }
  [[nodiscard]] bool applies(const format::ChunkEntry &) const noexcept override { return true; }
  [[nodiscard]] bool transforms() const noexcept override { return true; }
  [[nodiscard]] std::size_t output_size(const format::ChunkEntry &, std::size_t in_size) const override {
    if (in_size < crypt::kOverhead) throw IntegrityError("sealed chunk shorter than its seal");
    return in_size - crypt::kOverhead;
  }
  void run(const ChunkWork &w, std::span<const std::uint8_t> in, std::span<std::uint8_t> out,
           PipelineContext &) const override {
    if (!sealer_) throw KeyError(fmt::format("{}: chunk {} is encrypted and no key was given", package_, w.index));
    const auto aad = chunk_aad(static_cast<std::uint8_t>(w.entry.codec), static_cast<std::uint8_t>(w.entry.filter),
                               w.entry.decoded_size);
    try {
      sealer_->open(aad, in, out);
    } catch (const IntegrityError &e) {
      throw IntegrityError(fmt::format("chunk {} {}", w.index, e.what()));
    }
  }

 private:
  std::shared_ptr<const Sealer> sealer_;
  std::string package_;
};
}  // namespace

std::unique_ptr<ChunkStage> decrypt_stage(std::shared_ptr<const Sealer> sealer, std::string package) {
  return std::make_unique<Decrypt>(std::move(sealer), std::move(package));
}

}  // namespace torshpkg
