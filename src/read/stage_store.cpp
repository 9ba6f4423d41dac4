// Pipeline stage: stored bytes that have just passed their digest go into the disk chunk cache
// (chunk_store.hpp), so that the next mount of any package holding this chunk need not fetch it.
// Runs only right after the verify stage, and not for bytes that came out of the cache.
#include "torshpkg/chunk_store.hpp"
#include "torshpkg/pipeline.hpp"

namespace torshpkg {

namespace {
class StoreVerified final : public ChunkStage {
 public:
  explicit StoreVerified(std::shared_ptr<ChunkStore> store) : store_(std::move(store)) {}
  [[nodiscard]] std::string_view name() const noexcept override { return "store"; }
  [[nodiscard]] bool applies(const format::ChunkEntry &) const noexcept override { return true; }
  [[nodiscard]] bool transforms() const noexcept override { return false; }
  [[nodiscard]] std::size_t output_size(const format::ChunkEntry &, std::size_t in) const override { return in; }
  void run(const ChunkWork &w, std::span<const std::uint8_t> in, std::span<std::uint8_t>,
           PipelineContext &) const override {
    if (!w.from_store) store_->put(w.entry.digest, in);  // never throws: a full disk means no caching
  }

 private:
  std::shared_ptr<ChunkStore> store_;
};
}  // namespace

std::unique_ptr<ChunkStage> store_verified_stage(std::shared_ptr<ChunkStore> store) {
  return std::make_unique<StoreVerified>(std::move(store));
}

}  // namespace torshpkg
