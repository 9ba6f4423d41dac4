#include "torshpkg/read_pattern.hpp"

#include <algorithm>

namespace torshpkg {

ReadPattern::Plan ReadPattern::observe(std::uint64_t first, std::uint64_t last) noexcept {
  Plan plan;
  // Sequential: the stream starts at the file's head, or continues from where it is (within the
  // slack) up to what was queued ahead.
  plan.sequential = furthest_ == kNone
                        ? first == 0
                        : first + slack_chunks_ >= furthest_ && first <= std::max(ahead_until_, furthest_ + 1);
  if (!plan.sequential) {
    // A seek starts a new stream here. What was queued ahead stays valid: a late request of the old
    // stream, or a reader returning to it, is not another jump.
    furthest_ = last;
    plan.turned_random = ++jumps_ == kJumpsForRandom;
    return plan;
  }
  furthest_ = furthest_ == kNone ? last : std::max(furthest_, last);
  if (readahead_chunks_ == 0) return plan;
  const std::uint64_t until = furthest_ + 1 + readahead_chunks_;
  plan.ahead_from = std::max(furthest_ + 1, ahead_until_);
  if (plan.ahead_from >= until) return plan;
  plan.ahead_count = until - plan.ahead_from;
  ahead_until_ = until;
  return plan;
}

}  // namespace torshpkg
