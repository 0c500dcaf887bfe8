#include "ingest/filter.h"

#include <utility>

namespace backstop::ingest {

std::string_view StageName(Stage stage) {
  switch (stage) {
    case Stage::kConnect:
      return "connect";
    case Stage::kHelo:
      return "helo";
    case Stage::kMail:
      return "mail";
    case Stage::kRcpt:
      return "rcpt";
    case Stage::kEndOfData:
      return "data";
  }
  return "unknown";
}

FilterChain::FilterChain(std::vector<std::unique_ptr<Filter>> filters,
                         std::shared_ptr<FilterCounters> counters)
    : filters_(std::move(filters)), counters_(std::move(counters)) {}

void FilterChain::Run(std::shared_ptr<const FilterInput> input, FilterDone done) const {
  RunFrom(0, std::move(input), std::move(done));
}

void FilterChain::RunFrom(size_t index, std::shared_ptr<const FilterInput> input,
                          FilterDone done) const {
  while (index < filters_.size() && !filters_[index]->Handles(input->stage)) {
    ++index;
  }
  if (index == filters_.size()) {
    done(FilterResult::Continue());
    return;
  }
  Filter& filter = *filters_[index];
  // The callback keeps the chain alive: a reload may replace it while the check runs.
  filter.Check(input, [self = shared_from_this(), &filter, index, input,
                       done = std::move(done)](FilterResult result) mutable {
    self->counters_->Add(filter.name(), input->stage, result);
    const absl::Duration delay = result.delay;
    auto proceed = [self, index, input, done = std::move(done),
                    result = std::move(result)]() mutable {
      if (result.kind == FilterResult::Kind::kContinue) {
        self->RunFrom(index + 1, std::move(input), std::move(done));
      } else {
        done(std::move(result));
      }
    };
    if (delay > absl::ZeroDuration() && input->executor) {
      input->executor->RunAfter(delay, std::move(proceed));
    } else {
      proceed();
    }
  });
}

void FilterCounters::Add(std::string_view filter, Stage stage, const FilterResult& result) {
  std::string outcome = "pass";
  if (result.kind == FilterResult::Kind::kReject) {
    outcome = result.reply.has_value() && result.reply->code >= 500 ? "reject" : "tempfail";
  } else if (result.reason.empty()) {
    return;
  }
  std::lock_guard lock(mutex_);
  ++counts_[{std::string(filter), std::string(StageName(stage)), outcome, result.reason}];
}

std::vector<FilterCount> FilterCounters::Snapshot() const {
  std::lock_guard lock(mutex_);
  std::vector<FilterCount> counts;
  counts.reserve(counts_.size());
  for (const auto& [key, count] : counts_) {
    const auto& [filter, stage, result, reason] = key;
    counts.push_back({filter, stage, result, reason, count});
  }
  return counts;
}

}  // namespace backstop::ingest
