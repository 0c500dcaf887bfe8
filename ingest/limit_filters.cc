#include "ingest/limit_filters.h"

#include <algorithm>
#include <utility>

#include <fmt/format.h>

namespace backstop::ingest {
namespace {

Reply TempFail(std::string text) {
  return Reply{421, "4.7.0", {std::move(text)}};
}

}  // namespace

void DoneOnLoop(const FilterInput& input, FilterDone done, FilterResult result) {
  if (!input.executor) {
    done(std::move(result));
    return;
  }
  input.executor->Run(
      [done = std::move(done), result = std::move(result)]() mutable { done(std::move(result)); });
}

Reply DailySessionsRefusal(std::string_view domain) {
  return TempFail(fmt::format("Too many sessions for {} today, try again later", domain));
}

// --- QueueStorageState, QueueStorageFilter ---------------------------------------------------

QueueStorageState::QueueStorageState(const QueueStorageStateOptions& options) : options_(options) {}

void QueueStorageState::MarkFull() {
  std::lock_guard lock(mutex_);
  if (!full_) {
    full_ = true;
    // The first probe one interval from now: the refusal itself was the latest answer.
    next_probe_ = options_.clock->Monotonic() + options_.probe_interval;
  }
}

void QueueStorageState::MarkAvailable() {
  std::lock_guard lock(mutex_);
  full_ = false;
}

bool QueueStorageState::full() const {
  std::lock_guard lock(mutex_);
  return full_;
}

bool QueueStorageState::AdmitMail() {
  std::lock_guard lock(mutex_);
  if (!full_) {
    return true;
  }
  const absl::Duration now = options_.clock->Monotonic();
  if (now < next_probe_) {
    return false;
  }
  next_probe_ = now + options_.probe_interval;
  return true;
}

void QueueStorageFilter::Check(std::shared_ptr<const FilterInput> /*input*/, FilterDone done) {
  if (state_->AdmitMail()) {
    done(FilterResult::Continue());
    return;
  }
  done(FilterResult::Reject(Reply{452, "4.3.1", {"Insufficient system storage"}},
                            "queue_storage_full"));
}

// --- ConnectionRateFilter ---------------------------------------------------------------------

ConnectionRateFilter::ConnectionRateFilter(const ConnectionRateOptions& options)
    : options_(options) {}

ConnectionRateFilter::Admission ConnectionRateFilter::Admit(const std::string& ip) {
  const absl::Duration now = options_.clock->Monotonic();
  absl::Duration into_minute;
  const int64_t minute = absl::IDivDuration(now, absl::Minutes(1), &into_minute);
  // How much of the previous minute the sliding window still covers.
  const double previous_weight = 1.0 - absl::FDivDuration(into_minute, absl::Minutes(1));

  std::lock_guard lock(mutex_);
  if (minute > swept_minute_) {
    // Once a minute: an address not seen in the last two minutes counts nothing any more.
    std::erase_if(counts_,
                  [minute](const auto& entry) { return entry.second.minute < minute - 1; });
    swept_minute_ = minute;
  }
  auto it = counts_.find(ip);
  if (it == counts_.end()) {
    if (counts_.size() >= options_.max_tracked) {
      return Admission::kUntracked;
    }
    it = counts_.emplace(ip, Counts{minute, 0, 0}).first;
  }
  Counts& counts = it->second;
  if (counts.minute != minute) {
    counts.previous = counts.minute == minute - 1 ? counts.current : 0;
    counts.current = 0;
    counts.minute = minute;
  }
  const double recent = counts.previous * previous_weight + counts.current;
  if (counts.current < UINT32_MAX) {
    ++counts.current;
  }
  return recent + 1 > options_.max_per_minute ? Admission::kOverRate : Admission::kAdmitted;
}

void ConnectionRateFilter::Check(std::shared_ptr<const FilterInput> input, FilterDone done) {
  switch (Admit(input->client.ip)) {
    case Admission::kAdmitted:
      done(FilterResult::Continue());
      return;
    case Admission::kUntracked:
      done(FilterResult::Continue("untracked"));
      return;
    case Admission::kOverRate:
      done(FilterResult::Reject(
          TempFail(fmt::format("Too many connections from {}, slow down", input->client.ip)),
          "over_rate"));
      return;
  }
}

// --- HarvestFilter ----------------------------------------------------------------------------

void HarvestFilter::Check(std::shared_ptr<const FilterInput> input, FilterDone done) {
  uint32_t rejected = 0;
  {
    std::lock_guard lock(input->state->mutex);
    rejected = input->state->rejected_recipients;
  }
  if (rejected >= kHarvestCloseAfter) {
    done(FilterResult::Reject(TempFail("Too many rejected recipients"), "closed"));
    return;
  }
  if (rejected >= kHarvestSlowAfter) {
    FilterResult slowed = FilterResult::Continue("slowed");
    slowed.delay = delay_;
    done(std::move(slowed));
    return;
  }
  done(FilterResult::Continue());
}

// --- DomainConnectionFilter -------------------------------------------------------------------

void DomainConnectionFilter::Check(std::shared_ptr<const FilterInput> input, FilterDone done) {
  const std::string& domain = input->rcpt.domain;
  const auto limit = options_.limits.find(domain);
  const bool headroom =
      limit != options_.limits.end() && options_.known->HasHeadroom(domain, limit->second);
  bool first_of_session = false;
  {
    std::lock_guard lock(input->state->mutex);
    // Counted once per session, whatever the answer: a session's RCPTs come one at a time, so
    // no other check of this session can be in flight.
    first_of_session = input->state->counted_domains.insert(domain).second;
    if (first_of_session && headroom) {
      input->state->uncounted_domains.insert(domain);
    }
  }
  // Not under the mutex: `done` runs the next filter, which may take it.
  if (!first_of_session || headroom) {
    done(FilterResult::Continue());
    return;
  }
  options_.count(domain, [known = options_.known, input, done = std::move(done)](
                             absl::StatusOr<queue::SessionCount> count) mutable {
    if (!count.ok()) {
      DoneOnLoop(*input, std::move(done), FilterResult::Continue("queue_error"));
      return;
    }
    known->Remember(count->domain(), count->sessions_today());
    if (count->over_limit()) {
      DoneOnLoop(*input, std::move(done),
                 FilterResult::Reject(DailySessionsRefusal(input->rcpt.domain), "over_limit"));
      return;
    }
    DoneOnLoop(*input, std::move(done), FilterResult::Continue());
  });
}

bool KnownSessionCounts::HasHeadroom(const std::string& domain, uint64_t limit) const {
  std::lock_guard lock(mutex_);
  const auto known = known_.find(domain);
  return known != known_.end() && known->second.day == Today() && known->second.sessions < limit &&
         limit - known->second.sessions > std::max(limit / 10, kWaitedLastSessions);
}

void KnownSessionCounts::Remember(const std::string& domain, uint64_t sessions_today) {
  std::lock_guard lock(mutex_);
  Known& known = known_[domain];
  const int64_t today = Today();
  // Answers arrive out of order from parallel RPCs: keep the highest of the day.
  if (known.day != today || sessions_today > known.sessions) {
    known = {.day = today, .sessions = sessions_today};
  }
}

int64_t KnownSessionCounts::Today() const {
  return absl::ToUnixSeconds(clock_->Now()) / 86'400;
}

}  // namespace backstop::ingest
