// Pipeline stage: undoes the byte-grouping filter (a permutation plus one phase byte, filter.hpp).
#include "torshpkg/filter.hpp"
#include "torshpkg/pipeline.hpp"

namespace torshpkg {

namespace {
class UndoFilter final : public ChunkStage {
 public:
  [[nodiscard]] std::string_view name() const noexcept override { return "undo filter"; }
  [[nodiscard]] bool applies(const format::ChunkEntry &c) const noexcept override {
    return c.filter != format::Filter::kNone;
  }
  [[nodiscard]] bool transforms() const noexcept override { return true; }
  [[nodiscard]] std::size_t output_size(const format::ChunkEntry &, std::size_t in) const override {
    return in == 0 ? 0 : in - 1;
  }
  void run(const ChunkWork &w, std::span<const std::uint8_t> in, std::span<std::uint8_t> out,
           PipelineContext &) const override {
    undo_filter(w.entry.filter, in, out);
  }
};
}  // namespace

std::unique_ptr<ChunkStage> undo_filter_stage() { return std::make_unique<UndoFilter>(); }

}  // namespace torshpkg
