#include "torshpkg/pipeline.hpp"

#include <fmt/format.h>
#include <algorithm>

#include "torshpkg/chunk_store.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/filter.hpp"

namespace torshpkg {

namespace {
constexpr std::size_t kMaxIdleContexts = 64;  // one per thread that ever loaded a chunk, in practice
constexpr std::size_t kMaxStages = 8;
constexpr unsigned kMaxOrigins = 16;                // asked in turn for a chunk whose bytes keep failing
constexpr std::uint64_t kMaxAdjacentBytes = 64 << 20;  // one read of adjacent chunks at most
}  // namespace

CodecDecoder &PipelineContext::decoder(format::Codec id) {
  const auto i = static_cast<std::size_t>(id);
  if (decoders_.size() <= i) decoders_.resize(i + 1);
  if (!decoders_[i]) decoders_[i] = codec_for(id).make_decoder();
  return *decoders_[i];
}

ChunkPipeline::ChunkPipeline(std::shared_ptr<const ChunkSource> source, Stages stages,
                             std::shared_ptr<ChunkStore> store)
    : source_(std::move(source)), stages_(std::move(stages)), store_(std::move(store)) {
  if (stages_.size() > kMaxStages) throw InternalError("too many pipeline stages");
}

ChunkPipeline::Stages ChunkPipeline::standard_stages(bool verify_digests, std::shared_ptr<ChunkStore> store,
                                                     std::unique_ptr<ChunkStage> decrypt) {
  Stages s;
  if (verify_digests) s.push_back(verify_digest_stage());
  // Bytes read back from the disk cache are verified again like any others: the cache is shared.
  if (store) {
    if (!verify_digests) throw InternalError("a disk chunk cache needs verified digests");
    s.push_back(store_verified_stage(std::move(store)));
  }
  // After the digest, which covers the ciphertext (the disk cache holds ciphertext), before decoding.
  if (decrypt) s.push_back(std::move(decrypt));
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

bool ChunkPipeline::transforms(const format::ChunkEntry &e) const noexcept {
  for (const auto &s : stages_)
    if (s->transforms() && s->applies(e)) return true;
  return false;
}

bool ChunkPipeline::load_from_store(const ChunkWork &w, std::span<std::uint8_t> stored, std::span<std::uint8_t> out,
                                    PipelineContext &ctx, bool in_is_out) const {
  if (!store_ || !store_->get(w.entry.digest, stored)) return false;
  ChunkWork cached = w;
  cached.from_store = true;
  try {
    run_stages(cached, stored, out, ctx, in_is_out);
  } catch (const DigestMismatch &) {
    store_->drop(w.entry.digest);  // damaged on disk, or written by someone else: fetch it anew
    return false;
  }
  bytes_from_store_.fetch_add(stored.size(), std::memory_order_relaxed);
  return true;
}

bool ChunkPipeline::run_fresh(const ChunkWork &w, std::span<const std::uint8_t> stored, std::span<std::uint8_t> out,
                              PipelineContext &ctx, bool in_is_out) const {
  try {
    run_stages(w, stored, out, ctx, in_is_out);
    return true;
  } catch (const DigestMismatch &e) {
    digest_failures_.fetch_add(1, std::memory_order_relaxed);
    if (source_->distrust(w.entry.offset, stored.size(), e.what())) return false;
    throw;
  }
}

void ChunkPipeline::load(const ChunkWork &w, std::span<std::uint8_t> out) const {
  if (out.size() != w.entry.decoded_size)
    throw InternalError("ChunkPipeline::load: output size differs from the decoded size");
  auto ctx = take_context();
  // Nothing changes the bytes (stored codec, no filter): read them where they are wanted.
  const bool in_place = !transforms(w.entry);
  if (in_place && w.entry.stored_size != out.size())
    throw FormatError(fmt::format("chunk {}: stored size differs from its decoded size", w.index));
  std::span<std::uint8_t> stored = out;
  if (!in_place) {
    auto &buf = ctx->scratch(0);
    buf.resize(w.entry.stored_size);
    stored = buf;
  }
  if (!load_from_store(w, stored, out, *ctx, in_place)) {
    for (unsigned origin = 0;; ++origin) {
      source_->read(w.entry.offset, stored);
      if (run_fresh(w, stored, out, *ctx, in_place)) break;
      if (origin + 1 >= kMaxOrigins)
        throw IntegrityError(fmt::format("chunk {}: fails its SHA-256 digest from every origin", w.index));
    }
  }
  chunks_decoded_.fetch_add(1, std::memory_order_relaxed);
  bytes_decoded_.fetch_add(out.size(), std::memory_order_relaxed);
}

namespace {
// The one range [first, end) of the source that holds every chunk of `works` that `wanted` says.
template <typename Wanted>
std::pair<std::uint64_t, std::uint64_t> covering_range(std::span<const ChunkWork> works, Wanted wanted) {
  std::uint64_t first = UINT64_MAX, end = 0;
  for (std::size_t i = 0; i < works.size(); ++i) {
    if (!wanted(i)) continue;
    first = std::min(first, works[i].entry.offset);
    end = std::max(end, works[i].entry.offset + works[i].entry.stored_size);  // validated: no overflow
  }
  if (first == UINT64_MAX) return {0, 0};
  if (end - first > kMaxAdjacentBytes) throw InternalError("adjacent chunks span too large a range");
  return {first, end};
}
}  // namespace

void ChunkPipeline::load_adjacent(std::span<const ChunkWork> works,
                                  std::span<const std::span<std::uint8_t>> outs) const {
  if (works.size() != outs.size()) throw InternalError("load_adjacent: one output per chunk");
  // What the disk cache has needs no fetching; the rest comes in one read.
  std::vector<bool> cached(works.size(), false);
  if (store_)
    for (std::size_t i = 0; i < works.size(); ++i)
      if (store_->contains(works[i].entry.digest)) {
        load(works[i], outs[i]);
        cached[i] = true;
      }
  const auto [first, end] = covering_range(works, [&](std::size_t i) { return !cached[i]; });
  if (end == first) return;
  auto ctx = take_context();
  const auto range = ctx->run_buffer(end - first);
  source_->read(first, range);
  for (std::size_t i = 0; i < works.size(); ++i) {
    if (cached[i]) continue;
    const auto &w = works[i];
    if (outs[i].size() != w.entry.decoded_size) throw InternalError("load_adjacent: output of the wrong size");
    const std::span<const std::uint8_t> stored(range.data() + (w.entry.offset - first), w.entry.stored_size);
    if (!run_fresh(w, stored, outs[i], *ctx, false)) {
      load(w, outs[i]);  // that origin served bad bytes: this chunk from another, alone
      continue;
    }
    chunks_decoded_.fetch_add(1, std::memory_order_relaxed);
    bytes_decoded_.fetch_add(outs[i].size(), std::memory_order_relaxed);
  }
}

void ChunkPipeline::fetch_into_store(std::span<const ChunkWork> works) const {
  if (!store_) return;
  try {
    std::vector<bool> wanted(works.size());
    for (std::size_t i = 0; i < works.size(); ++i) wanted[i] = !store_->contains(works[i].entry.digest);
    const auto [first, end] = covering_range(works, [&](std::size_t i) { return wanted[i]; });
    if (end == first) return;
    auto ctx = take_context();
    const auto range = ctx->run_buffer(end - first);
    source_->read(first, range);
    for (std::size_t i = 0; i < works.size(); ++i) {
      if (!wanted[i]) continue;
      const auto &e = works[i].entry;
      const std::span<const std::uint8_t> stored(range.data() + (e.offset - first), e.stored_size);
      if (sha256(stored) == e.digest) {
        store_->put(e.digest, stored);
      } else {
        digest_failures_.fetch_add(1, std::memory_order_relaxed);
        (void)source_->distrust(e.offset, stored.size(), fmt::format("chunk {} fails its SHA-256 digest", works[i].index));
      }
    }
  } catch (const std::exception &) {
    // A prefetch is a hint: whoever reads these chunks later gets the error, if there still is one.
  }
}

ChunkPipeline::Stats ChunkPipeline::stats() const noexcept {
  return {chunks_decoded_.load(std::memory_order_relaxed), bytes_decoded_.load(std::memory_order_relaxed),
          bytes_from_store_.load(std::memory_order_relaxed), digest_failures_.load(std::memory_order_relaxed)};
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
