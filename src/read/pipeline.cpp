#include "torshpkg/pipeline.hpp"

#include <fmt/format.h>

#include "torshpkg/errors.hpp"
#include "torshpkg/filter.hpp"

namespace torshpkg {

namespace {
constexpr std::size_t kMaxIdleContexts = 64;  // one per thread that ever loaded a chunk, in practice
constexpr std::size_t kMaxStages = 8;
}  // namespace

CodecDecoder &PipelineContext::decoder(format::Codec id) {
  const auto i = static_cast<std::size_t>(id);
  if (decoders_.size() <= i) decoders_.resize(i + 1);
  if (!decoders_[i]) decoders_[i] = codec_for(id).make_decoder();
  return *decoders_[i];
}

ChunkPipeline::ChunkPipeline(std::shared_ptr<const ChunkSource> source, Stages stages)
    : source_(std::move(source)), stages_(std::move(stages)) {
  if (stages_.size() > kMaxStages) throw InternalError("too many pipeline stages");
}

ChunkPipeline::Stages ChunkPipeline::standard_stages(bool verify_digests) {
  Stages s;
  if (verify_digests) s.push_back(verify_digest_stage());
  // Decryption goes here (format incompat bit kEncrypted, reserved): after the digest, which covers
  // the ciphertext, and before decoding.
  s.push_back(decode_stage());
  s.push_back(undo_filter_stage());
  return s;
}

void ChunkPipeline::ReturnContext::operator()(PipelineContext *c) const noexcept {
  std::unique_ptr<PipelineContext> owned(c);
  std::lock_guard lock(pipeline->contexts_mu_);
  if (pipeline->contexts_.size() < kMaxIdleContexts) pipeline->contexts_.push_back(std::move(owned));
}

ChunkPipeline::ContextLease ChunkPipeline::take_context() const {
  {
    std::lock_guard lock(contexts_mu_);
    if (!contexts_.empty()) {
      auto *c = contexts_.back().release();
      contexts_.pop_back();
      return ContextLease(c, ReturnContext{this});
    }
  }
  return ContextLease(new PipelineContext(), ReturnContext{this});
}

void ChunkPipeline::load(const ChunkWork &w, std::span<std::uint8_t> out) const {
  if (out.size() != w.entry.decoded_size)
    throw InternalError("ChunkPipeline::load: output size differs from the decoded size");
  auto ctx = take_context();
  bool transformed = false;
  for (const auto &s : stages_) transformed = transformed || (s->transforms() && s->applies(w.entry));
  if (!transformed) {
    // Nothing changes the bytes (stored codec, no filter): read them where they are wanted.
    if (w.entry.stored_size != out.size())
      throw FormatError(fmt::format("chunk {}: stored size differs from its decoded size", w.index));
    source_->read(w.entry.offset, out);
    run_stages(w, out, out, *ctx, true);
    return;
  }
  auto &stored = ctx->scratch(0);
  stored.resize(w.entry.stored_size);
  source_->read(w.entry.offset, stored);
  run_stages(w, stored, out, *ctx, false);
}

void ChunkPipeline::decode(const ChunkWork &w, std::span<const std::uint8_t> stored, std::span<std::uint8_t> out) const {
  auto ctx = take_context();
  run_stages(w, stored, out, *ctx, false);
}

void ChunkPipeline::run_stages(const ChunkWork &w, std::span<const std::uint8_t> in, std::span<std::uint8_t> out,
                               PipelineContext &ctx, bool in_is_out) const {
  std::array<const ChunkStage *, kMaxStages> active{};
  std::size_t n = 0, last_transform = kMaxStages;
  for (const auto &s : stages_)
    if (s->applies(w.entry)) {
      if (s->transforms()) last_transform = n;
      active[n++] = s.get();
    }
  if (in_is_out && last_transform != kMaxStages) throw InternalError("a transforming stage over bytes in place");
  std::span<const std::uint8_t> cur = in;
  // in lives in scratch(0) when it was read there; each transform writes the other buffer.
  unsigned next_scratch = 1;
  for (std::size_t i = 0; i < n; ++i) {
    const ChunkStage &s = *active[i];
    if (!s.transforms()) {
      s.run(w, cur, {}, ctx);
      continue;
    }
    const std::size_t size = s.output_size(w.entry, cur.size());
    std::span<std::uint8_t> dst;
    if (i == last_transform) {
      if (size != out.size())
        throw IntegrityError(fmt::format("chunk {}: {} produces {} bytes, the index says {}", w.index, s.name(), size,
                                         out.size()));
      dst = out;
    } else {
      auto &buf = ctx.scratch(next_scratch++);
      buf.resize(size);
      dst = buf;
    }
    s.run(w, cur, dst, ctx);
    cur = dst;
  }
  if (last_transform == kMaxStages && !in_is_out) {
    // No stage changed the bytes, but they were handed in elsewhere (decode() of stored bytes).
    if (cur.size() != out.size())
      throw IntegrityError(fmt::format("chunk {}: stored size differs from its decoded size", w.index));
    std::copy(cur.begin(), cur.end(), out.begin());
  }
}

ChunkDecoder::ChunkDecoder()
    : pipeline_(std::make_shared<MemorySource>(std::vector<std::uint8_t>{}, "memory"),
                ChunkPipeline::standard_stages(false)) {}

void ChunkDecoder::decode(format::Codec codec, format::Filter filter, std::span<const std::uint8_t> stored,
                          std::span<std::uint8_t> out) {
  (void)codec_for(codec);  // throws for an unknown id
  if (filter != format::Filter::kNone) {
    (void)filter_width(filter);  // throws for an unknown id
    if (codec != format::Codec::kZstd) throw FormatError("a filter needs the zstd codec");
  }
  ChunkWork w;
  w.entry.codec = codec;
  w.entry.filter = filter;
  w.entry.stored_size = static_cast<std::uint32_t>(stored.size());
  w.entry.decoded_size = static_cast<std::uint32_t>(out.size());
  pipeline_.decode(w, stored, out);
}

}  // namespace torshpkg
