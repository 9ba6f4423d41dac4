// Pipeline stage: the SHA-256 of the stored bytes must match the chunk table (which the root digest
// and the signature vouch for) before any byte is decoded.
#include <fmt/format.h>

#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/pipeline.hpp"

namespace torshpkg {

namespace {
class VerifyDigest final : public ChunkStage {
 public:
  [[nodiscard]] std::string_view name() const noexcept override { return "verify"; }
  [[nodiscard]] bool applies(const format::ChunkEntry &) const noexcept override { return true; }
  [[nodiscard]] bool transforms() const noexcept override { return false; }
  [[nodiscard]] std::size_t output_size(const format::ChunkEntry &, std::size_t in) const override { return in; }
  void run(const ChunkWork &w, std::span<const std::uint8_t> in, std::span<std::uint8_t>,
           PipelineContext &) const override {
    if (sha256(in) != w.entry.digest) throw DigestMismatch(fmt::format("chunk {} fails its SHA-256 digest", w.index));
  }
};
}  // namespace

std::unique_ptr<ChunkStage> verify_digest_stage() { return std::make_unique<VerifyDigest>(); }

}  // namespace torshpkg
