#include "ingest/filter.h"

#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace backstop::ingest {
namespace {

using ::testing::ElementsAre;
using ::testing::FieldsAre;
using ::testing::IsEmpty;

// A filter that records the order it was asked in and answers as scripted, now or from another
// thread.
class ScriptedFilter : public Filter {
 public:
  enum class When : uint8_t { kNow, kOtherThread };

  ScriptedFilter(std::string name, Stage stage, FilterResult answer, std::vector<std::string>* log,
                 When when = When::kNow)
      : name_(std::move(name)), stage_(stage), answer_(std::move(answer)), log_(log), when_(when) {}
  ~ScriptedFilter() override {
    for (std::thread& thread : threads_) {
      // The chain's last owner may be the answer callback running on that very thread.
      if (thread.get_id() == std::this_thread::get_id()) {
        thread.detach();
      } else {
        thread.join();
      }
    }
  }

  std::string_view name() const override { return name_; }
  bool Handles(Stage stage) const override { return stage == stage_; }
  void Check(std::shared_ptr<const FilterInput> /*input*/, FilterDone done) override {
    log_->push_back(name_);
    if (when_ == When::kNow) {
      done(answer_);
      return;
    }
    threads_.emplace_back([done = std::move(done), answer = answer_] { done(answer); });
  }

 private:
  std::string name_;
  Stage stage_;
  FilterResult answer_;
  std::vector<std::string>* log_;
  When when_;
  std::vector<std::thread> threads_;
};

Reply Reply550() {
  return Reply{550, "5.7.1", {"no"}};
}
Reply Reply451() {
  return Reply{451, "4.7.1", {"later"}};
}

std::shared_ptr<const FilterInput> InputAt(Stage stage) {
  auto input = std::make_shared<FilterInput>();
  input->stage = stage;
  input->state = std::make_shared<ConnectionState>();
  return input;
}

FilterResult RunChain(const std::shared_ptr<FilterChain>& chain, Stage stage) {
  std::promise<FilterResult> result;
  chain->Run(InputAt(stage), [&](FilterResult r) { result.set_value(std::move(r)); });
  return result.get_future().get();
}

TEST(FilterChainTest, RunsOnlyTheFiltersOfTheStageInOrder) {
  std::vector<std::string> log;
  std::vector<std::unique_ptr<Filter>> filters;
  filters.push_back(
      std::make_unique<ScriptedFilter>("a", Stage::kRcpt, FilterResult::Continue(), &log));
  filters.push_back(
      std::make_unique<ScriptedFilter>("b", Stage::kMail, FilterResult::Continue(), &log));
  filters.push_back(
      std::make_unique<ScriptedFilter>("c", Stage::kRcpt, FilterResult::Continue(), &log));
  auto chain =
      std::make_shared<FilterChain>(std::move(filters), std::make_shared<FilterCounters>());

  const FilterResult result = RunChain(chain, Stage::kRcpt);
  EXPECT_EQ(result.kind, FilterResult::Kind::kContinue);
  EXPECT_THAT(log, ElementsAre("a", "c"));
}

TEST(FilterChainTest, StopsAtTheFirstRejection) {
  std::vector<std::string> log;
  std::vector<std::unique_ptr<Filter>> filters;
  filters.push_back(
      std::make_unique<ScriptedFilter>("a", Stage::kRcpt, FilterResult::Continue(), &log));
  filters.push_back(std::make_unique<ScriptedFilter>(
      "b", Stage::kRcpt, FilterResult::Reject(Reply550(), "listed"), &log));
  filters.push_back(
      std::make_unique<ScriptedFilter>("c", Stage::kRcpt, FilterResult::Continue(), &log));
  auto chain =
      std::make_shared<FilterChain>(std::move(filters), std::make_shared<FilterCounters>());

  const FilterResult result = RunChain(chain, Stage::kRcpt);
  ASSERT_EQ(result.kind, FilterResult::Kind::kReject);
  EXPECT_EQ(result.reply->code, 550);
  EXPECT_EQ(result.reason, "listed");
  EXPECT_THAT(log, ElementsAre("a", "b"));
}

TEST(FilterChainTest, ContinuesAfterAnAnswerFromAnotherThread) {
  std::vector<std::string> log;
  std::vector<std::unique_ptr<Filter>> filters;
  filters.push_back(std::make_unique<ScriptedFilter>(
      "async", Stage::kMail, FilterResult::Continue(), &log, ScriptedFilter::When::kOtherThread));
  filters.push_back(std::make_unique<ScriptedFilter>(
      "last", Stage::kMail, FilterResult::Reject(Reply451(), "greylisted"), &log));
  auto chain =
      std::make_shared<FilterChain>(std::move(filters), std::make_shared<FilterCounters>());

  const FilterResult result = RunChain(chain, Stage::kMail);
  ASSERT_EQ(result.kind, FilterResult::Kind::kReject);
  EXPECT_EQ(result.reply->code, 451);
  EXPECT_THAT(log, ElementsAre("async", "last"));
}

TEST(FilterChainTest, EmptyStageContinues) {
  auto chain = std::make_shared<FilterChain>(std::vector<std::unique_ptr<Filter>>{},
                                             std::make_shared<FilterCounters>());
  EXPECT_EQ(RunChain(chain, Stage::kConnect).kind, FilterResult::Kind::kContinue);
}

TEST(FilterChainTest, CountsRejectionsTempfailsAndReasonedPasses) {
  std::vector<std::string> log;
  std::vector<std::unique_ptr<Filter>> filters;
  filters.push_back(
      std::make_unique<ScriptedFilter>("quiet", Stage::kMail, FilterResult::Continue(), &log));
  filters.push_back(std::make_unique<ScriptedFilter>("dnsbl", Stage::kMail,
                                                     FilterResult::Continue("dns_error"), &log));
  filters.push_back(std::make_unique<ScriptedFilter>(
      "greylist", Stage::kRcpt, FilterResult::Reject(Reply451(), "new_triplet"), &log));
  filters.push_back(std::make_unique<ScriptedFilter>(
      "relay", Stage::kEndOfData, FilterResult::Reject(Reply550(), "relay_denied"), &log));
  auto counters = std::make_shared<FilterCounters>();
  auto chain = std::make_shared<FilterChain>(std::move(filters), counters);
  EXPECT_THAT(counters->Snapshot(), IsEmpty());

  RunChain(chain, Stage::kMail);
  RunChain(chain, Stage::kMail);
  RunChain(chain, Stage::kRcpt);
  RunChain(chain, Stage::kEndOfData);

  std::vector<std::tuple<std::string, std::string, std::string, std::string, uint64_t>> counts;
  for (const FilterCount& count : counters->Snapshot()) {
    counts.emplace_back(count.filter, count.stage, count.result, count.reason, count.count);
  }
  EXPECT_THAT(counts, ElementsAre(FieldsAre("dnsbl", "mail", "pass", "dns_error", 2u),
                                  FieldsAre("greylist", "rcpt", "tempfail", "new_triplet", 1u),
                                  FieldsAre("relay", "data", "reject", "relay_denied", 1u)));
}

// A delayed answer is waited out on the connection's loop before the chain goes on.
TEST(FilterChainTest, WaitsOutADelayOnTheConnectionsLoop) {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  auto executor = std::make_shared<LoopExecutor>(loop->get());

  std::vector<std::string> log;
  FilterResult slow = FilterResult::Continue("tarpit");
  slow.delay = absl::Milliseconds(50);
  std::vector<std::unique_ptr<Filter>> filters;
  filters.push_back(std::make_unique<ScriptedFilter>("harvest", Stage::kRcpt, slow, &log));
  filters.push_back(
      std::make_unique<ScriptedFilter>("next", Stage::kRcpt, FilterResult::Continue(), &log));
  auto chain =
      std::make_shared<FilterChain>(std::move(filters), std::make_shared<FilterCounters>());

  auto input = std::make_shared<FilterInput>();
  input->stage = Stage::kRcpt;
  input->executor = executor;
  std::promise<std::pair<FilterResult, bool>> result;
  const absl::Time started = absl::Now();
  std::thread runner([&] { (*loop)->Run(); });
  // Posted, not executor->Run(): until the runner's Run() begins, the loop's creator (this
  // thread) still counts as its loop thread, and Run() would start the chain here, racing the
  // runner on the ring (make test-tsan caught it).
  (*loop)->Post([&] {
    chain->Run(input, [&](FilterResult r) {
      result.set_value({std::move(r), executor->OnLoopThread()});
      (*loop)->Stop();
    });
  });
  auto [answer, on_loop] = result.get_future().get();
  runner.join();
  executor->Close();
  EXPECT_EQ(answer.kind, FilterResult::Kind::kContinue);
  EXPECT_TRUE(on_loop);
  EXPECT_GE(absl::Now() - started, absl::Milliseconds(50));
  EXPECT_THAT(log, ElementsAre("harvest", "next"));
}

}  // namespace
}  // namespace backstop::ingest
