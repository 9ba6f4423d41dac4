// Pipeline stage: the entry's codec, from the registry. A filtered chunk decodes to its filtered
// form, one phase byte longer than the chunk (filter.hpp), which the next stage undoes.
#include "torshpkg/errors.hpp"
#include "torshpkg/pipeline.hpp"

namespace torshpkg {

namespace {
class Decode final : public ChunkStage {
 public:
  [[nodiscard]] std::string_view name() const noexcept override { return "decode"; }
  [[nodiscard]] bool applies(const format::ChunkEntry &c) const noexcept override {
    const ChunkCodec *codec = find_codec(static_cast<std::uint8_t>(c.codec));
    return !codec || !codec->identity;  // unknown ids reach run(), which refuses them
  }
  [[nodiscard]] bool transforms() const noexcept override { return true; }
  [[nodiscard]] std::size_t output_size(const format::ChunkEntry &c, std::size_t) const override {
    return std::size_t{c.decoded_size} + (c.filter != format::Filter::kNone ? 1 : 0);
  }
  void run(const ChunkWork &w, std::span<const std::uint8_t> in, std::span<std::uint8_t> out,
           PipelineContext &ctx) const override {
    ctx.decoder(w.entry.codec).decode(in, out);
  }
};
}  // namespace

std::unique_ptr<ChunkStage> decode_stage() { return std::make_unique<Decode>(); }

}  // namespace torshpkg
