#include "queue/state_machine.h"

#include <unistd.h>

#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace backstop::queue {
namespace {

using ::testing::ElementsAre;
using ::testing::SizeIs;

// 2026-11-27T12:00:00Z: well inside a month and a day, so that tests choose when they cross one.
const absl::Time kStart = absl::FromUnixSeconds(1795780800);
constexpr char kDomain[] = "example.com";
constexpr char kOther[] = "example.org";

int64_t Ms(absl::Time time) {
  return absl::ToUnixMillis(time);
}

std::string Id(uint64_t n) {
  return std::string(MessageId::Make(kStart, 1, n).bytes());
}

MessageId ToId(const std::string& bytes) {
  return *MessageId::FromBytes(bytes);
}

QueueEntry Entry(uint64_t n, const std::string& domain = kDomain, size_t size = 100) {
  QueueEntry entry;
  entry.set_id(Id(n));
  entry.set_domain(domain);
  Envelope& envelope = *entry.mutable_envelope();
  envelope.set_reverse_path("sender@origin.example");
  Recipient& recipient = *envelope.add_recipients();
  recipient.set_address("user" + std::to_string(n) + "@" + domain);
  recipient.add_notify(NOTIFY_FAILURE);
  recipient.set_orcpt("rfc822;user@" + domain);
  envelope.set_body(BODY_8BITMIME);
  envelope.set_client_ip("192.0.2.1");
  envelope.set_helo("client.example");
  envelope.set_arrival_ms(Ms(kStart));
  envelope.set_ingest_node_id(1);
  entry.set_message(std::string(size, 'x'));
  return entry;
}

Command AppendOf(const std::vector<QueueEntry>& entries) {
  Command command;
  for (const QueueEntry& entry : entries) {
    *command.mutable_append()->add_entries() = entry;
  }
  return command;
}

Command LeaseOf(uint32_t max_entries, absl::Duration duration = absl::Minutes(5)) {
  Command command;
  command.mutable_lease()->set_worker_id("worker-1");
  command.mutable_lease()->set_max_entries(max_entries);
  command.mutable_lease()->set_lease_duration_ms(absl::ToInt64Milliseconds(duration));
  return command;
}

CompletionItem Delivered(const std::string& id, uint64_t token) {
  CompletionItem item;
  item.set_id(id);
  item.set_lease_token(token);
  item.mutable_delivered();
  return item;
}

CompletionItem Retry(const std::string& id, uint64_t token) {
  CompletionItem item;
  item.set_id(id);
  item.set_lease_token(token);
  item.mutable_retry()->set_error("421 try later");
  return item;
}

CompletionItem Bounce(const std::string& id, uint64_t token) {
  CompletionItem item;
  item.set_id(id);
  item.set_lease_token(token);
  item.mutable_bounced()->set_error("550 no such user");
  return item;
}

Command CompleteOf(const std::vector<CompletionItem>& items) {
  Command command;
  for (const CompletionItem& item : items) {
    *command.mutable_complete()->add_items() = item;
  }
  return command;
}

DomainSpec Spec(const std::string& name) {
  DomainSpec spec;
  spec.set_name(name);
  spec.add_primary("mx1." + name + ":25");
  spec.set_max_queued_messages(100'000);
  spec.set_max_queued_bytes(uint64_t{1} << 30);
  spec.set_max_monthly_bytes(uint64_t{10} << 30);
  spec.set_max_daily_connections(100'000);
  return spec;
}

Command CreateDomainOf(const DomainSpec& spec) {
  Command command;
  *command.mutable_create_domain()->mutable_spec() = spec;
  return command;
}

std::vector<std::string> LeasedIds(const CommandResult& result) {
  std::vector<std::string> ids;
  for (const LeasedDomain& domain : result.lease().domains()) {
    for (const LeasedEntry& entry : domain.entries()) {
      ids.push_back(entry.entry().id());
    }
  }
  return ids;
}

std::string NewTempDir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("backstop_queue_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  return dir.string();
}

Command ExtendOf(const std::vector<std::pair<std::string, uint64_t>>& leases,
                 absl::Duration duration = absl::Seconds(30)) {
  Command command;
  for (const auto& [id, token] : leases) {
    ExtendLeases::Held& held = *command.mutable_extend()->add_leases();
    held.set_id(id);
    held.set_lease_token(token);
  }
  command.mutable_extend()->set_lease_duration_ms(absl::ToInt64Milliseconds(duration));
  return command;
}

std::vector<Disposition> LeasedDispositions(const CommandResult& result) {
  std::vector<Disposition> dispositions;
  for (const LeasedDomain& domain : result.lease().domains()) {
    for (const LeasedEntry& entry : domain.entries()) {
      dispositions.push_back(entry.lease().disposition());
    }
  }
  return dispositions;
}

class StateMachineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = NewTempDir(std::string(info->test_suite_name()) + "_" + info->name());
    std::filesystem::create_directories(root_);
    machine_ = OpenAt(Dir());
  }

  void TearDown() override {
    if (machine_ != nullptr) {
      EXPECT_TRUE(machine_->CheckInvariants().ok()) << machine_->CheckInvariants();
    }
    machine_.reset();
    std::filesystem::remove_all(root_);
  }

  std::string Dir(const std::string& name = "db") const { return root_ + "/" + name; }

  std::unique_ptr<QueueStateMachine> OpenAt(const std::string& dir) {
    absl::StatusOr<std::unique_ptr<QueueStateMachine>> opened =
        QueueStateMachine::Open(dir, options_);
    EXPECT_TRUE(opened.ok()) << opened.status();
    return opened.ok() ? std::move(*opened) : nullptr;
  }

  // Applies `command` as the next log entry at the current cluster time.
  CommandResult Apply(const Command& command) { return ApplyTo(*machine_, command); }

  CommandResult ApplyTo(QueueStateMachine& machine, const Command& command) {
    last_index_ = machine.applied_index() + 1;
    absl::StatusOr<CommandResult> result = machine.Apply(last_index_, now_, command);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult();
  }

  void CreateDomain(const DomainSpec& spec) { ASSERT_EQ(Apply(CreateDomainOf(spec)).code(), OK); }

  void AppendAll(const std::vector<QueueEntry>& entries) {
    const CommandResult result = Apply(AppendOf(entries));
    for (const AppendOutcome& outcome : result.append().outcomes()) {
      ASSERT_EQ(outcome.code(), OK);
    }
  }

  DomainRecord Domain(const std::string& name = kDomain) {
    absl::StatusOr<DomainRecord> record = machine_->GetDomain(name);
    EXPECT_TRUE(record.ok()) << record.status();
    return record.value_or(DomainRecord());
  }

  uint64_t Digest(const QueueStateMachine& machine) {
    absl::StatusOr<uint64_t> digest = machine.ContentDigest();
    EXPECT_TRUE(digest.ok()) << digest.status();
    return digest.value_or(0);
  }

  // Takes the domain down: leases one entry and completes it with retry. Returns the token.
  void TakeDown(const std::string& id) {
    const CommandResult lease = Apply(LeaseOf(1));
    ASSERT_THAT(LeasedIds(lease), ElementsAre(id));
    ASSERT_EQ(Apply(CompleteOf({Retry(id, last_index_)})).complete().outcomes(0).code(), OK);
  }

  StateMachineOptions options_;
  std::string root_;
  std::unique_ptr<QueueStateMachine> machine_;
  absl::Time now_ = kStart;
  uint64_t last_index_ = 0;
};

// --- Append -----------------------------------------------------------------------------------

TEST_F(StateMachineTest, AppendStoresEnvelopeAndMessageBytes) {
  QueueEntry entry = Entry(1, kDomain, 2048);
  const CommandResult result = Apply(AppendOf({entry}));
  ASSERT_EQ(result.code(), OK);
  ASSERT_EQ(result.append().outcomes().size(), 1u);
  EXPECT_EQ(result.append().outcomes(0).code(), OK);

  absl::StatusOr<StoredEntry> stored = machine_->GetEntry(ToId(Id(1)));
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->domain(), kDomain);
  EXPECT_EQ(stored->message_size(), 2048u);
  EXPECT_EQ(stored->enqueue_ms(), Ms(kStart));
  EXPECT_EQ(stored->envelope().SerializeAsString(), entry.envelope().SerializeAsString());
  absl::StatusOr<std::string> message = machine_->ReadMessage(ToId(Id(1)));
  ASSERT_TRUE(message.ok());
  EXPECT_EQ(*message, entry.message());
  EXPECT_EQ(Domain().usage().queued_messages(), 1u);
  EXPECT_EQ(Domain().usage().queued_bytes(), 2048u);
}

TEST_F(StateMachineTest, AppendIsIdempotentById) {
  AppendAll({Entry(1)});
  const CommandResult again = Apply(AppendOf({Entry(1), Entry(2), Entry(2)}));
  ASSERT_EQ(again.append().outcomes().size(), 3u);
  EXPECT_EQ(again.append().outcomes(0).code(), ALREADY_EXISTS);
  EXPECT_EQ(again.append().outcomes(1).code(), OK);
  EXPECT_EQ(again.append().outcomes(2).code(), ALREADY_EXISTS);
  EXPECT_EQ(Domain().usage().queued_messages(), 2u);
  EXPECT_EQ(Domain().usage().queued_bytes(), 200u);
}

TEST_F(StateMachineTest, AppendRefusesMalformedEntries) {
  QueueEntry short_id = Entry(1);
  short_id.set_id("short");
  QueueEntry no_domain = Entry(2);
  no_domain.set_domain("");
  const CommandResult result = Apply(AppendOf({short_id, no_domain, Entry(3)}));
  EXPECT_EQ(result.append().outcomes(0).code(), INVALID_ARGUMENT);
  EXPECT_EQ(result.append().outcomes(1).code(), INVALID_ARGUMENT);
  EXPECT_EQ(result.append().outcomes(2).code(), OK);
}

// --- Limits -----------------------------------------------------------------------------------

TEST_F(StateMachineTest, QueuedMessagesLimitAcceptsExactlyItsValue) {
  DomainSpec spec = Spec(kDomain);
  spec.set_max_queued_messages(3);
  CreateDomain(spec);
  AppendAll({Entry(1), Entry(2)});
  EXPECT_EQ(Apply(AppendOf({Entry(3)})).append().outcomes(0).code(), OK);  // exactly 3
  const CommandResult over = Apply(AppendOf({Entry(4)}));
  EXPECT_EQ(over.append().outcomes(0).code(), OVER_LIMIT);
  EXPECT_EQ(over.append().outcomes(0).limit(), LIMIT_QUEUED_MESSAGES);
  ASSERT_EQ(over.append().rejected().size(), 1u);
  EXPECT_EQ(over.append().rejected(0).domain(), kDomain);
  EXPECT_EQ(Domain().usage().queued_messages(), 3u);
}

TEST_F(StateMachineTest, OverLimitRefusesEveryEntryOfThatDomainInTheCommandOnly) {
  DomainSpec spec = Spec(kDomain);
  spec.set_max_queued_messages(2);
  CreateDomain(spec);
  AppendAll({Entry(1)});
  const CommandResult result = Apply(AppendOf({Entry(2), Entry(3, kOther), Entry(4)}));
  EXPECT_EQ(result.append().outcomes(0).code(), OVER_LIMIT);
  EXPECT_EQ(result.append().outcomes(1).code(), OK);
  EXPECT_EQ(result.append().outcomes(2).code(), OVER_LIMIT);
  EXPECT_EQ(Domain().usage().queued_messages(), 1u);
  EXPECT_EQ(Domain(kOther).usage().queued_messages(), 1u);
}

TEST_F(StateMachineTest, QueuedBytesLimitAcceptsExactlyItsValue) {
  DomainSpec spec = Spec(kDomain);
  spec.set_max_queued_bytes(1000);
  CreateDomain(spec);
  AppendAll({Entry(1, kDomain, 600)});
  EXPECT_EQ(Apply(AppendOf({Entry(2, kDomain, 400)})).append().outcomes(0).code(), OK);
  const CommandResult over = Apply(AppendOf({Entry(3, kDomain, 1)}));
  EXPECT_EQ(over.append().outcomes(0).code(), OVER_LIMIT);
  EXPECT_EQ(over.append().outcomes(0).limit(), LIMIT_QUEUED_BYTES);
}

TEST_F(StateMachineTest, QueuedLimitsFreeUpWhenEntriesLeave) {
  DomainSpec spec = Spec(kDomain);
  spec.set_max_queued_messages(1);
  CreateDomain(spec);
  AppendAll({Entry(1)});
  Apply(LeaseOf(10));
  ASSERT_EQ(Apply(CompleteOf({Delivered(Id(1), last_index_)})).complete().outcomes(0).code(), OK);
  EXPECT_EQ(Apply(AppendOf({Entry(2)})).append().outcomes(0).code(), OK);
}

TEST_F(StateMachineTest, MonthlyBytesLimitCountsAcceptedBytesPerUtcMonth) {
  DomainSpec spec = Spec(kDomain);
  spec.set_max_monthly_bytes(1000);
  CreateDomain(spec);
  AppendAll({Entry(1, kDomain, 1000)});  // exactly the limit
  Command remove;
  remove.mutable_delete_()->mutable_selector()->add_ids(Id(1));
  ASSERT_EQ(Apply(remove).selection().affected(), 1u);
  // Nothing is queued any more, but the month's budget is spent.
  const CommandResult over = Apply(AppendOf({Entry(2, kDomain, 1)}));
  EXPECT_EQ(over.append().outcomes(0).code(), OVER_LIMIT);
  EXPECT_EQ(over.append().outcomes(0).limit(), LIMIT_MONTHLY_BYTES);
  // The last millisecond of November still counts in November.
  now_ = absl::FromCivil(absl::CivilSecond(2026, 12, 1, 0, 0, 0), absl::UTCTimeZone()) -
         absl::Milliseconds(1);
  EXPECT_EQ(Apply(AppendOf({Entry(3, kDomain, 1)})).append().outcomes(0).code(), OVER_LIMIT);
  now_ += absl::Milliseconds(1);
  EXPECT_EQ(Apply(AppendOf({Entry(4, kDomain, 1000)})).append().outcomes(0).code(), OK);
}

TEST_F(StateMachineTest, DailySessionsLimitAcceptsExactlyItsValuePerUtcDay) {
  DomainSpec spec = Spec(kDomain);
  spec.set_max_daily_connections(2);
  CreateDomain(spec);
  Command count;
  count.mutable_append()->add_count_sessions(kDomain);
  for (uint64_t expected : {1, 2}) {
    const CommandResult result = Apply(count);
    ASSERT_EQ(result.append().session_counts().size(), 1u);
    EXPECT_FALSE(result.append().session_counts(0).over_limit());
    EXPECT_EQ(result.append().session_counts(0).sessions_today(), expected);
  }
  const CommandResult over = Apply(count);
  EXPECT_TRUE(over.append().session_counts(0).over_limit());
  EXPECT_EQ(over.append().session_counts(0).sessions_today(), 2u);
  now_ = absl::FromCivil(absl::CivilDay(2026, 11, 28), absl::UTCTimeZone());
  const CommandResult next_day = Apply(count);
  EXPECT_FALSE(next_day.append().session_counts(0).over_limit());
  EXPECT_EQ(next_day.append().session_counts(0).sessions_today(), 1u);
}

TEST_F(StateMachineTest, EachSessionInOneAppendCountsOnceInOrderUpToTheLimit) {
  DomainSpec spec = Spec(kDomain);
  spec.set_max_daily_connections(2);
  CreateDomain(spec);
  // Three sessions of the same domain and one of another, with a message, in one command.
  Command batch = AppendOf({Entry(1)});
  for (const char* domain : {kDomain, kOther, kDomain, kDomain}) {
    batch.mutable_append()->add_count_sessions(domain);
  }
  const CommandResult result = Apply(batch);
  ASSERT_EQ(result.append().session_counts().size(), 4);
  EXPECT_EQ(result.append().session_counts(0).sessions_today(), 1u);
  EXPECT_EQ(result.append().session_counts(1).domain(), kOther);
  EXPECT_FALSE(result.append().session_counts(1).over_limit());
  EXPECT_EQ(result.append().session_counts(2).sessions_today(), 2u);
  EXPECT_FALSE(result.append().session_counts(2).over_limit());
  EXPECT_TRUE(result.append().session_counts(3).over_limit());
  EXPECT_EQ(result.append().session_counts(3).sessions_today(), 2u);
  // The message of the same command is appended whatever the session counts say.
  ASSERT_EQ(result.append().outcomes().size(), 1);
  EXPECT_EQ(result.append().outcomes(0).code(), OK);
}

QueueEntry SessionEntry(uint64_t n, const std::string& domain = kDomain) {
  QueueEntry entry = Entry(n, domain);
  entry.set_count_session(true);
  return entry;
}

TEST_F(StateMachineTest, AnEntryThatCountsItsSessionIsRefusedAloneOverTheDailyLimit) {
  DomainSpec spec = Spec(kDomain);
  spec.set_max_daily_connections(2);
  CreateDomain(spec);
  // Two sessions' messages fit; the third session's is refused; a later message of a session
  // already counted (no count_session) is not a new session.
  const CommandResult result =
      Apply(AppendOf({SessionEntry(1), SessionEntry(2), SessionEntry(3), Entry(4)}));
  ASSERT_EQ(result.append().outcomes().size(), 4);
  EXPECT_EQ(result.append().outcomes(0).code(), OK);
  EXPECT_EQ(result.append().outcomes(0).sessions_today(), 1u);
  EXPECT_EQ(result.append().outcomes(1).code(), OK);
  EXPECT_EQ(result.append().outcomes(1).sessions_today(), 2u);
  EXPECT_EQ(result.append().outcomes(2).code(), OVER_LIMIT);
  EXPECT_EQ(result.append().outcomes(2).limit(), LIMIT_DAILY_CONNECTIONS);
  EXPECT_EQ(result.append().outcomes(2).sessions_today(), 2u);
  EXPECT_EQ(result.append().outcomes(3).code(), OK);
  EXPECT_FALSE(machine_->GetEntry(ToId(Id(3))).ok());
  EXPECT_TRUE(machine_->GetEntry(ToId(Id(4))).ok());
  // The counts are the ones a waited count sees.
  Command count;
  count.mutable_append()->add_count_sessions(kDomain);
  EXPECT_TRUE(Apply(count).append().session_counts(0).over_limit());
}

TEST_F(StateMachineTest, ASessionCountedWithAnEntryStaysCountedWhenAQuotaRefusesTheEntry) {
  DomainSpec spec = Spec(kDomain);
  spec.set_max_daily_connections(5);
  spec.set_max_queued_messages(0);
  CreateDomain(spec);
  const CommandResult result = Apply(AppendOf({SessionEntry(1)}));
  EXPECT_EQ(result.append().outcomes(0).code(), OVER_LIMIT);
  EXPECT_EQ(result.append().outcomes(0).limit(), LIMIT_QUEUED_MESSAGES);
  Command count;
  count.mutable_append()->add_count_sessions(kDomain);
  EXPECT_EQ(Apply(count).append().session_counts(0).sessions_today(), 2u);
}

TEST_F(StateMachineTest, SessionsOfAnUnconfiguredDomainAreNotLimited) {
  Command count;
  count.mutable_append()->add_count_sessions("unknown.example");
  const CommandResult result = Apply(count);
  ASSERT_EQ(result.append().session_counts().size(), 1u);
  EXPECT_FALSE(result.append().session_counts(0).over_limit());
  EXPECT_FALSE(machine_->GetDomain("unknown.example").ok());
}

// --- Lease ------------------------------------------------------------------------------------

TEST_F(StateMachineTest, LeaseReturnsDueEntriesGroupedByDomainOldestFirst) {
  AppendAll({Entry(1), Entry(2, kOther)});
  now_ += absl::Seconds(1);
  AppendAll({Entry(3)});
  const CommandResult result = Apply(LeaseOf(10));
  ASSERT_EQ(result.lease().domains().size(), 2u);
  EXPECT_EQ(result.lease().domains(0).domain(), kDomain);
  ASSERT_EQ(result.lease().domains(0).entries().size(), 2u);
  EXPECT_EQ(result.lease().domains(0).entries(0).entry().id(), Id(1));
  EXPECT_EQ(result.lease().domains(0).entries(1).entry().id(), Id(3));
  EXPECT_EQ(result.lease().domains(1).domain(), kOther);
  const LeasedEntry& leased = result.lease().domains(0).entries(0);
  EXPECT_EQ(leased.lease().token(), last_index_);
  EXPECT_EQ(leased.lease().expiry_ms(), Ms(now_ + absl::Minutes(5)));
  EXPECT_EQ(leased.lease().disposition(), DISPOSITION_DELIVER);
  EXPECT_EQ(leased.entry().envelope().recipients(0).address(), "user1@example.com");
  EXPECT_TRUE(leased.entry().message().empty());
  EXPECT_EQ(Domain().usage().leased_messages(), 2u);
}

TEST_F(StateMachineTest, LeaseHonoursMaxEntriesAndMaxPerDomain) {
  AppendAll({Entry(1), Entry(2), Entry(3), Entry(4, kOther), Entry(5, kOther)});
  Command lease = LeaseOf(3);
  lease.mutable_lease()->set_max_per_domain(1);
  EXPECT_THAT(LeasedIds(Apply(lease)), ElementsAre(Id(1), Id(4)));
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(2))), SizeIs(2));
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), SizeIs(1));
}

TEST_F(StateMachineTest, LeaseRotatesDomainsSoNoneStarves) {
  AppendAll({Entry(1), Entry(2), Entry(3, kOther)});
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(1))), ElementsAre(Id(1)));
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(1))), ElementsAre(Id(3)));
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(1))), ElementsAre(Id(2)));
}

TEST_F(StateMachineTest, LeasedEntryIsNotLeasedAgainBeforeItsLeaseExpires) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10, absl::Seconds(30)));
  now_ += absl::Seconds(30) - absl::Milliseconds(1);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), SizeIs(0));
}

TEST_F(StateMachineTest, ExpiredLeaseMakesTheEntryDueAgainInClusterTime) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10, absl::Seconds(30)));
  const uint64_t first_token = last_index_;
  EXPECT_EQ(machine_->leases_expired(), 0u);
  now_ += absl::Seconds(30);
  const CommandResult again = Apply(LeaseOf(10));
  ASSERT_THAT(LeasedIds(again), ElementsAre(Id(1)));
  EXPECT_NE(again.lease().domains(0).entries(0).lease().token(), first_token);
  EXPECT_EQ(machine_->leases_expired(), 1u);
}

TEST_F(StateMachineTest, LeaseRefusesANonPositiveDuration) {
  AppendAll({Entry(1)});
  EXPECT_EQ(Apply(LeaseOf(10, absl::ZeroDuration())).code(), INVALID_ARGUMENT);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), SizeIs(1));
}

TEST_F(StateMachineTest, HeldEntriesAreNeverLeased) {
  AppendAll({Entry(1), Entry(2)});
  Command hold;
  hold.mutable_hold()->mutable_selector()->add_ids(Id(1));
  EXPECT_EQ(Apply(hold).selection().affected(), 1u);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), ElementsAre(Id(2)));
  EXPECT_EQ(Domain().usage().held_messages(), 1u);
}

// --- Extend -----------------------------------------------------------------------------------

TEST_F(StateMachineTest, ExtendedLeaseKeepsTheEntryLeasedPastItsOldExpiry) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10, absl::Seconds(30)));
  const uint64_t token = last_index_;
  now_ += absl::Seconds(20);
  const CommandResult extended = Apply(ExtendOf({{Id(1), token}}, absl::Seconds(30)));
  ASSERT_EQ(extended.extend().outcomes(0).code(), OK);
  EXPECT_EQ(extended.extend().outcomes(0).expiry_ms(), Ms(now_ + absl::Seconds(30)));
  now_ += absl::Seconds(29);  // 49 s after the lease, 19 s past its first expiry
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), SizeIs(0));
  absl::StatusOr<StoredEntry> stored = machine_->GetEntry(ToId(Id(1)));
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->lease().token(), token);
  EXPECT_EQ(Apply(CompleteOf({Delivered(Id(1), token)})).complete().outcomes(0).code(), OK);
}

TEST_F(StateMachineTest, ExtendedLeaseExpiresAtItsNewExpiry) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10, absl::Seconds(30)));
  now_ += absl::Seconds(20);
  ASSERT_EQ(Apply(ExtendOf({{Id(1), last_index_}})).extend().outcomes(0).code(), OK);
  now_ += absl::Seconds(30);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), ElementsAre(Id(1)));
}

TEST_F(StateMachineTest, ExtendWithAStaleTokenIsRefused) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10, absl::Seconds(30)));
  const uint64_t stale = last_index_;
  now_ += absl::Seconds(30);
  Apply(LeaseOf(10, absl::Seconds(30)));  // expired: a second worker takes the entry
  const uint64_t current = last_index_;
  now_ += absl::Seconds(10);
  EXPECT_EQ(Apply(ExtendOf({{Id(1), stale}}, absl::Minutes(10))).extend().outcomes(0).code(),
            STALE_LEASE);
  absl::StatusOr<StoredEntry> stored = machine_->GetEntry(ToId(Id(1)));
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->lease().token(), current);
  EXPECT_EQ(stored->lease().expiry_ms(), Ms(now_ + absl::Seconds(20)));
}

TEST_F(StateMachineTest, ExpiredLeaseCannotBeExtended) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10, absl::Seconds(30)));
  const uint64_t token = last_index_;
  now_ += absl::Seconds(30);
  EXPECT_EQ(Apply(ExtendOf({{Id(1), token}})).extend().outcomes(0).code(), STALE_LEASE);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), ElementsAre(Id(1)));
}

TEST_F(StateMachineTest, ExtendAnswersEachLeaseInOrder) {
  AppendAll({Entry(1), Entry(2)});
  Apply(LeaseOf(10, absl::Seconds(30)));
  const uint64_t token = last_index_;
  Apply(CompleteOf({Delivered(Id(2), token)}));
  const CommandResult result =
      Apply(ExtendOf({{Id(1), token}, {Id(2), token}, {Id(1), token + 1}}));
  ASSERT_EQ(result.extend().outcomes_size(), 3);
  EXPECT_EQ(result.extend().outcomes(0).code(), OK);
  EXPECT_EQ(result.extend().outcomes(1).code(), NOT_FOUND);
  EXPECT_EQ(result.extend().outcomes(2).code(), STALE_LEASE);
}

TEST_F(StateMachineTest, ExtendNeverShortensALease) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10, absl::Minutes(5)));
  const uint64_t token = last_index_;
  const int64_t expiry = Ms(now_ + absl::Minutes(5));
  const CommandResult result = Apply(ExtendOf({{Id(1), token}}, absl::Seconds(30)));
  EXPECT_EQ(result.extend().outcomes(0).code(), OK);
  EXPECT_EQ(result.extend().outcomes(0).expiry_ms(), expiry);
  EXPECT_EQ(machine_->GetEntry(ToId(Id(1)))->lease().expiry_ms(), expiry);
}

TEST_F(StateMachineTest, ExtendRefusesANonPositiveDuration) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10));
  EXPECT_EQ(Apply(ExtendOf({{Id(1), last_index_}}, absl::ZeroDuration())).code(), INVALID_ARGUMENT);
}

// --- Complete ---------------------------------------------------------------------------------

TEST_F(StateMachineTest, DeliveredRemovesTheEntryAndItsBytes) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10));
  const CommandResult done = Apply(CompleteOf({Delivered(Id(1), last_index_)}));
  EXPECT_EQ(done.complete().outcomes(0).code(), OK);
  EXPECT_TRUE(absl::IsNotFound(machine_->GetEntry(ToId(Id(1))).status()));
  EXPECT_TRUE(absl::IsNotFound(machine_->ReadMessage(ToId(Id(1))).status()));
  // Neither configured nor holding mail: the domain leaves the table.
  EXPECT_TRUE(absl::IsNotFound(machine_->GetDomain(kDomain).status()));
}

TEST_F(StateMachineTest, CompleteWithAStaleTokenIsRefused) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10, absl::Seconds(30)));
  const uint64_t stale = last_index_;
  now_ += absl::Minutes(1);
  Apply(LeaseOf(10));  // the lease expired: a second worker takes the entry
  const uint64_t current = last_index_;
  EXPECT_EQ(Apply(CompleteOf({Delivered(Id(1), stale)})).complete().outcomes(0).code(),
            STALE_LEASE);
  ASSERT_TRUE(machine_->GetEntry(ToId(Id(1))).ok());
  EXPECT_EQ(Apply(CompleteOf({Delivered(Id(1), current)})).complete().outcomes(0).code(), OK);
}

TEST_F(StateMachineTest, CompleteOfAnUnleasedOrUnknownEntryIsRefused) {
  AppendAll({Entry(1)});
  const CommandResult result =
      Apply(CompleteOf({Delivered(Id(1), 1), Delivered(Id(99), 1), CompletionItem()}));
  EXPECT_EQ(result.complete().outcomes(0).code(), STALE_LEASE);
  EXPECT_EQ(result.complete().outcomes(1).code(), NOT_FOUND);
  EXPECT_EQ(result.complete().outcomes(2).code(), INVALID_ARGUMENT);
}

TEST_F(StateMachineTest, ExpiredButUntakenLeaseCanStillComplete) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10, absl::Seconds(30)));
  const uint64_t token = last_index_;
  now_ += absl::Minutes(1);
  EXPECT_EQ(Apply(CompleteOf({Delivered(Id(1), token)})).complete().outcomes(0).code(), OK);
}

TEST_F(StateMachineTest, BouncedCompletionAppendsItsDsnInTheSameCommand) {
  DomainSpec spec = Spec("origin.example");
  spec.set_max_queued_messages(0);  // DSNs are exempt from limits
  CreateDomain(spec);
  AppendAll({Entry(1)});
  Apply(LeaseOf(10));
  CompletionItem item = Bounce(Id(1), last_index_);
  QueueEntry dsn = Entry(50, "origin.example");
  dsn.mutable_envelope()->set_reverse_path("");
  *item.add_dsn() = dsn;
  const CommandResult result = Apply(CompleteOf({item}));
  ASSERT_EQ(result.complete().outcomes(0).code(), OK);
  ASSERT_EQ(result.complete().outcomes(0).dsn().size(), 1u);
  EXPECT_EQ(result.complete().outcomes(0).dsn(0).code(), OK);
  EXPECT_TRUE(absl::IsNotFound(machine_->GetEntry(ToId(Id(1))).status()));
  absl::StatusOr<StoredEntry> stored = machine_->GetEntry(ToId(Id(50)));
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->domain(), "origin.example");
}

TEST_F(StateMachineTest, RefusedCompletionDropsItsDsn) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10));
  CompletionItem item = Bounce(Id(1), last_index_ + 100);
  *item.add_dsn() = Entry(50, "origin.example");
  const CommandResult result = Apply(CompleteOf({item}));
  EXPECT_EQ(result.complete().outcomes(0).code(), STALE_LEASE);
  EXPECT_TRUE(absl::IsNotFound(machine_->GetEntry(ToId(Id(50))).status()));
}

TEST_F(StateMachineTest, RetryWithRemainingRecipientsKeepsOnlyThose) {
  QueueEntry entry = Entry(1);
  entry.mutable_envelope()->add_recipients()->set_address("second@example.com");
  AppendAll({entry});
  Apply(LeaseOf(10));
  CompletionItem item = Retry(Id(1), last_index_);
  item.mutable_retry()->add_remaining_recipients("second@example.com");
  ASSERT_EQ(Apply(CompleteOf({item})).complete().outcomes(0).code(), OK);
  absl::StatusOr<StoredEntry> stored = machine_->GetEntry(ToId(Id(1)));
  ASSERT_TRUE(stored.ok());
  ASSERT_EQ(stored->envelope().recipients().size(), 1u);
  EXPECT_EQ(stored->envelope().recipients(0).address(), "second@example.com");
  EXPECT_EQ(stored->attempts(), 1u);
  EXPECT_EQ(stored->last_error(), "421 try later");
}

TEST_F(StateMachineTest, RetryAtKeepsTheEntryUntilThen) {
  AppendAll({Entry(1), Entry(2)});
  Apply(LeaseOf(10));
  const uint64_t token = last_index_;
  ASSERT_EQ(Apply(CompleteOf({Delivered(Id(2), token)})).complete().outcomes(0).code(), OK);
  CompletionItem item = Retry(Id(1), token);
  item.mutable_retry()->set_retry_at_ms(Ms(now_ + absl::Minutes(10)));
  const CommandResult result = Apply(CompleteOf({item}));
  EXPECT_EQ(result.complete().outcomes(0).next_attempt_ms(), Ms(now_ + absl::Minutes(10)));
  now_ += absl::Minutes(10) - absl::Milliseconds(1);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), SizeIs(0));
  now_ += absl::Milliseconds(1);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), ElementsAre(Id(1)));
}

TEST_F(StateMachineTest, DelayWarningMarkIsKeptAndLeasedWithTheEntry) {
  AppendAll({Entry(1)});
  const CommandResult first = Apply(LeaseOf(10));
  ASSERT_THAT(LeasedIds(first), ElementsAre(Id(1)));
  EXPECT_FALSE(first.lease().domains(0).entries(0).delay_warned());
  CompletionItem marked = Retry(Id(1), last_index_);
  marked.mutable_retry()->set_mark_delay_warned(true);
  ASSERT_EQ(Apply(CompleteOf({marked})).complete().outcomes(0).code(), OK);
  absl::StatusOr<StoredEntry> stored = machine_->GetEntry(ToId(Id(1)));
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(stored->delay_warned());

  // A later retry without the mark does not clear it: one warning per entry.
  now_ += absl::Hours(1);
  const CommandResult second = Apply(LeaseOf(10));
  ASSERT_THAT(LeasedIds(second), ElementsAre(Id(1)));
  EXPECT_TRUE(second.lease().domains(0).entries(0).delay_warned());
  ASSERT_EQ(Apply(CompleteOf({Retry(Id(1), last_index_)})).complete().outcomes(0).code(), OK);
  stored = machine_->GetEntry(ToId(Id(1)));
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(stored->delay_warned());
}

// --- Per-domain schedule ----------------------------------------------------------------------

TEST_F(StateMachineTest, FailedAttemptsDoubleTheDomainBackoffUpToTheCap) {
  AppendAll({Entry(1)});
  const std::vector<absl::Duration> expected_waits = {absl::Minutes(1),  absl::Minutes(2),
                                                      absl::Minutes(4),  absl::Minutes(8),
                                                      absl::Minutes(15), absl::Minutes(15)};
  for (absl::Duration wait : expected_waits) {
    const CommandResult lease = Apply(LeaseOf(10));
    ASSERT_THAT(LeasedIds(lease), ElementsAre(Id(1)));
    const CommandResult retry = Apply(CompleteOf({Retry(Id(1), last_index_)}));
    EXPECT_EQ(retry.complete().outcomes(0).next_attempt_ms(), Ms(now_ + wait));
    EXPECT_TRUE(Domain().schedule().down());
    // Not a millisecond early.
    now_ += wait - absl::Milliseconds(1);
    EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), SizeIs(0));
    now_ += absl::Milliseconds(1);
  }
}

TEST(StateMachineOptionsTest, ComeFromTheDeliverySection) {
  DeliveryConfig delivery;
  delivery.retry_initial = absl::Seconds(3);
  delivery.retry_max = absl::Seconds(7);
  delivery.max_queue_lifetime = absl::Hours(1);
  delivery.delay_warning = absl::Minutes(20);
  const StateMachineOptions options = StateMachineOptions::FromConfig(delivery);
  EXPECT_EQ(options.retry_initial, absl::Seconds(3));
  EXPECT_EQ(options.retry_max, absl::Seconds(7));
  EXPECT_EQ(options.max_queue_lifetime, absl::Hours(1));
  EXPECT_EQ(options.delay_warning, absl::Minutes(20));
}

TEST_F(StateMachineTest, ConfiguredRetryDurationsSetTheBackoff) {
  options_.retry_initial = absl::Seconds(2);
  options_.retry_max = absl::Seconds(5);
  machine_ = OpenAt(Dir("other"));
  AppendAll({Entry(1)});
  for (absl::Duration wait : {absl::Seconds(2), absl::Seconds(4), absl::Seconds(5)}) {
    Apply(LeaseOf(10));
    const CommandResult retry = Apply(CompleteOf({Retry(Id(1), last_index_)}));
    EXPECT_EQ(retry.complete().outcomes(0).next_attempt_ms(), Ms(now_ + wait));
    now_ += wait;
  }
}

TEST_F(StateMachineTest, DownDomainLeasesOneProbeWhateverItsBacklog) {
  std::vector<QueueEntry> backlog;
  for (uint64_t n = 1; n <= 500; ++n) {
    backlog.push_back(Entry(n));
  }
  AppendAll(backlog);
  TakeDown(Id(1));
  now_ += absl::Minutes(1);
  const CommandResult probe = Apply(LeaseOf(1000));
  ASSERT_THAT(LeasedIds(probe), ElementsAre(Id(1)));
  EXPECT_TRUE(probe.lease().domains(0).entries(0).lease().probe());
  // While the probe is out, nothing else of the domain is leased.
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(1000))), SizeIs(0));
}

TEST_F(StateMachineTest, SuccessfulProbeMakesTheWholeBacklogDue) {
  std::vector<QueueEntry> backlog;
  for (uint64_t n = 1; n <= 500; ++n) {
    backlog.push_back(Entry(n));
  }
  AppendAll(backlog);
  TakeDown(Id(1));
  now_ += absl::Minutes(1);
  Apply(LeaseOf(1000));
  ASSERT_EQ(Apply(CompleteOf({Delivered(Id(1), last_index_)})).complete().outcomes(0).code(), OK);
  EXPECT_FALSE(Domain().schedule().down());
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(1000))), SizeIs(499));
}

TEST_F(StateMachineTest, ProbeWhoseLeaseExpiredIsReplacedByAnother) {
  AppendAll({Entry(1), Entry(2)});
  TakeDown(Id(1));
  now_ += absl::Minutes(1);
  Apply(LeaseOf(10, absl::Seconds(30)));
  now_ += absl::Seconds(30);
  const CommandResult again = Apply(LeaseOf(10));
  ASSERT_THAT(LeasedIds(again), SizeIs(1));
  EXPECT_TRUE(again.lease().domains(0).entries(0).lease().probe());
}

TEST_F(StateMachineTest, FailuresOfEntriesLeasedBeforeTheOutageDoNotAddBackoff) {
  AppendAll({Entry(1), Entry(2), Entry(3)});
  Apply(LeaseOf(10));
  const uint64_t token = last_index_;
  const CommandResult first = Apply(CompleteOf({Retry(Id(1), token)}));
  const CommandResult stragglers = Apply(CompleteOf({Retry(Id(2), token), Retry(Id(3), token)}));
  const int64_t next = Ms(now_ + absl::Minutes(1));
  EXPECT_EQ(first.complete().outcomes(0).next_attempt_ms(), next);
  EXPECT_EQ(stragglers.complete().outcomes(1).next_attempt_ms(), next);
  EXPECT_EQ(Domain().schedule().backoff_level(), 0u);
}

TEST_F(StateMachineTest, OneDomainDownDoesNotDelayAnother) {
  AppendAll({Entry(1), Entry(2, kOther)});
  ASSERT_THAT(LeasedIds(Apply(LeaseOf(10))), SizeIs(2));
  const uint64_t token = last_index_;
  Apply(CompleteOf({Retry(Id(1), token), Delivered(Id(2), token)}));
  AppendAll({Entry(3, kOther)});
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), ElementsAre(Id(3)));
}

TEST_F(StateMachineTest, EntriesPastTheirLifetimeAreLeasedAsExpiredEvenWhenTheDomainIsDown) {
  options_.max_queue_lifetime = absl::Hours(1);
  options_.retry_initial = absl::Hours(2);
  options_.retry_max = absl::Hours(4);
  machine_ = OpenAt(Dir("other"));
  AppendAll({Entry(1)});
  now_ += absl::Minutes(30);
  AppendAll({Entry(2)});
  TakeDown(Id(1));  // next attempt in two hours
  now_ += absl::Minutes(30) - absl::Milliseconds(1);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), SizeIs(0));
  now_ += absl::Milliseconds(1);
  const CommandResult expired = Apply(LeaseOf(10));
  ASSERT_THAT(LeasedIds(expired), ElementsAre(Id(1)));
  EXPECT_EQ(expired.lease().domains(0).entries(0).lease().disposition(), DISPOSITION_EXPIRED);
  EXPECT_FALSE(expired.lease().domains(0).entries(0).lease().probe());
}

// --- Delay warnings ---------------------------------------------------------------------------

class DelayWarningTest : public StateMachineTest {
 protected:
  void SetUp() override {
    StateMachineTest::SetUp();
    options_.delay_warning = absl::Hours(1);
    options_.retry_initial = absl::Hours(2);
    options_.retry_max = absl::Hours(4);
    machine_ = OpenAt(Dir("warning"));
  }
};

TEST_F(DelayWarningTest, DownDomainLeasesEachEntryDueAWarningWithoutAProbe) {
  AppendAll({Entry(1), Entry(2), Entry(3)});
  TakeDown(Id(1));  // next attempt in two hours
  now_ += absl::Minutes(30);
  AppendAll({Entry(4)});  // younger than delay_warning when the others are due one
  now_ += absl::Minutes(30);
  const CommandResult lease = Apply(LeaseOf(100));
  EXPECT_THAT(LeasedIds(lease), ElementsAre(Id(1), Id(2), Id(3)));
  EXPECT_THAT(
      LeasedDispositions(lease),
      ElementsAre(DISPOSITION_DELAY_WARNING, DISPOSITION_DELAY_WARNING, DISPOSITION_DELAY_WARNING));
  for (const LeasedEntry& entry : lease.lease().domains(0).entries()) {
    EXPECT_FALSE(entry.lease().probe());
    EXPECT_EQ(entry.last_error(), "421 try later");  // why the domain waits
  }
  EXPECT_EQ(Domain().usage().leased_probes(), 0u);
}

TEST_F(DelayWarningTest, WarnedEntryWaitsOnWithItsScheduleAndIsNotWarnedAgain) {
  AppendAll({Entry(1), Entry(2)});
  TakeDown(Id(1));
  const DomainSchedule before = Domain().schedule();
  now_ += absl::Hours(1);
  ASSERT_THAT(LeasedIds(Apply(LeaseOf(100))), ElementsAre(Id(1), Id(2)));
  const uint64_t token = last_index_;
  std::vector<CompletionItem> items;
  for (const std::string& id : {Id(1), Id(2)}) {
    CompletionItem& item = items.emplace_back(Retry(id, token));
    item.mutable_retry()->set_mark_delay_warned(true);
  }
  const CommandResult done = Apply(CompleteOf(items));
  EXPECT_EQ(done.complete().outcomes(1).code(), OK);
  EXPECT_EQ(done.complete().outcomes(1).next_attempt_ms(), before.next_attempt_ms());
  EXPECT_EQ(Domain().schedule().SerializeAsString(), before.SerializeAsString());
  absl::StatusOr<StoredEntry> second = machine_->GetEntry(ToId(Id(2)));
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->delay_warned());
  EXPECT_EQ(second->attempts(), 0u);  // a warning is not a delivery attempt
  EXPECT_EQ(machine_->GetEntry(ToId(Id(1)))->attempts(), 1u);
  now_ += absl::Minutes(30);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(100))), SizeIs(0));
  // The probe comes on the domain's schedule, as before the warnings.
  now_ += absl::Minutes(30);
  const CommandResult probe = Apply(LeaseOf(100));
  EXPECT_THAT(LeasedIds(probe), ElementsAre(Id(1)));
  EXPECT_THAT(LeasedDispositions(probe), ElementsAre(DISPOSITION_DELIVER));
}

TEST_F(DelayWarningTest, ProbeIsLeasedForDeliveryAndTheRestForTheirWarnings) {
  AppendAll({Entry(1), Entry(2), Entry(3)});
  TakeDown(Id(1));
  now_ += absl::Hours(2);
  const CommandResult lease = Apply(LeaseOf(100));
  EXPECT_THAT(LeasedIds(lease), ElementsAre(Id(1), Id(2), Id(3)));
  EXPECT_THAT(LeasedDispositions(lease), ElementsAre(DISPOSITION_DELIVER, DISPOSITION_DELAY_WARNING,
                                                     DISPOSITION_DELAY_WARNING));
  EXPECT_TRUE(lease.lease().domains(0).entries(0).lease().probe());
}

TEST_F(DelayWarningTest, WarningLeasesHonourTheLeaseCaps) {
  AppendAll({Entry(1), Entry(2), Entry(3)});
  TakeDown(Id(1));
  now_ += absl::Hours(1);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(2))), ElementsAre(Id(1), Id(2)));
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(2))), ElementsAre(Id(3)));
}

TEST_F(DelayWarningTest, AnUpDomainLeasesItsEntriesForDeliveryOnly) {
  AppendAll({Entry(1), Entry(2)});
  now_ += absl::Hours(3);
  EXPECT_THAT(LeasedDispositions(Apply(LeaseOf(100))),
              ElementsAre(DISPOSITION_DELIVER, DISPOSITION_DELIVER));
}

TEST_F(DelayWarningTest, EntriesFromTheNullSenderAreNeverLeasedForAWarning) {
  QueueEntry bounce = Entry(2);
  bounce.mutable_envelope()->clear_reverse_path();
  AppendAll({Entry(1), bounce});
  TakeDown(Id(1));
  now_ += absl::Hours(1);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(100))), ElementsAre(Id(1)));
}

TEST_F(DelayWarningTest, HeldEntriesAreNotLeasedForAWarning) {
  AppendAll({Entry(1), Entry(2)});
  TakeDown(Id(1));
  Command hold;
  hold.mutable_hold()->mutable_selector()->add_ids(Id(2));
  Apply(hold);
  now_ += absl::Hours(1);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(100))), ElementsAre(Id(1)));
}

TEST_F(StateMachineTest, WithoutDelayWarningADownDomainLeasesNoWarnings) {
  AppendAll({Entry(1), Entry(2)});
  TakeDown(Id(1));
  now_ += absl::Seconds(30);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(100))), SizeIs(0));
}

// --- Operator commands ------------------------------------------------------------------------

TEST_F(StateMachineTest, ReleaseMakesHeldEntriesDueAgain) {
  AppendAll({Entry(1), Entry(2), Entry(3, kOther)});
  Command hold;
  hold.mutable_hold()->mutable_selector()->set_domain(kDomain);
  EXPECT_EQ(Apply(hold).selection().affected(), 2u);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), ElementsAre(Id(3)));
  Command release;
  release.mutable_release()->mutable_selector()->add_ids(Id(2));
  release.mutable_release()->mutable_selector()->add_ids(Id(99));
  const CommandResult released = Apply(release);
  EXPECT_EQ(released.selection().affected(), 1u);
  EXPECT_THAT(released.selection().not_found(), ElementsAre(Id(99)));
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), ElementsAre(Id(2)));
  EXPECT_EQ(Domain().usage().held_messages(), 1u);
}

TEST_F(StateMachineTest, HoldingALeasedEntryKeepsItOutOnRetry) {
  AppendAll({Entry(1)});
  Apply(LeaseOf(10));
  const uint64_t token = last_index_;
  Command hold;
  hold.mutable_hold()->mutable_selector()->add_ids(Id(1));
  Apply(hold);
  ASSERT_EQ(Apply(CompleteOf({Retry(Id(1), token)})).complete().outcomes(0).code(), OK);
  now_ += absl::Hours(1);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), SizeIs(0));
}

TEST_F(StateMachineTest, DeleteRemovesEntriesAndCounters) {
  AppendAll({Entry(1), Entry(2), Entry(3)});
  Apply(LeaseOf(1));
  const uint64_t token = last_index_;
  Command remove;
  remove.mutable_delete_()->mutable_selector()->set_domain(kDomain);
  EXPECT_EQ(Apply(remove).selection().affected(), 3u);
  EXPECT_TRUE(absl::IsNotFound(machine_->ReadMessage(ToId(Id(2))).status()));
  EXPECT_TRUE(absl::IsNotFound(machine_->GetDomain(kDomain).status()));
  EXPECT_EQ(Apply(CompleteOf({Delivered(Id(1), token)})).complete().outcomes(0).code(), NOT_FOUND);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), SizeIs(0));
}

TEST_F(StateMachineTest, EmptySelectorIsRefused) {
  Command hold;
  hold.mutable_hold();
  EXPECT_EQ(Apply(hold).code(), INVALID_ARGUMENT);
}

TEST_F(StateMachineTest, FlushMakesADownDomainDueNow) {
  AppendAll({Entry(1), Entry(2)});
  TakeDown(Id(1));
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), SizeIs(0));
  Command flush;
  flush.mutable_flush()->set_domain(kDomain);
  EXPECT_EQ(Apply(flush).code(), OK);
  const CommandResult probe = Apply(LeaseOf(10));
  ASSERT_THAT(LeasedIds(probe), ElementsAre(Id(1)));
  EXPECT_TRUE(probe.lease().domains(0).entries(0).lease().probe());
}

TEST_F(StateMachineTest, FlushMakesEntriesWaitingForARetryAtDueNow) {
  AppendAll({Entry(1), Entry(2)});
  Apply(LeaseOf(10));
  const uint64_t token = last_index_;
  CompletionItem item = Retry(Id(1), token);
  item.mutable_retry()->set_retry_at_ms(Ms(now_ + absl::Hours(1)));
  Apply(CompleteOf({item, Delivered(Id(2), token)}));  // the domain stays up
  ASSERT_FALSE(Domain().schedule().down());
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), SizeIs(0));
  Command flush;
  flush.mutable_flush()->set_domain(kDomain);
  EXPECT_EQ(Apply(flush).selection().affected(), 1u);
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), ElementsAre(Id(1)));
}

TEST_F(StateMachineTest, FlushOfAnUnknownDomainIsNotFound) {
  Command flush;
  flush.mutable_flush()->set_domain("unknown.example");
  EXPECT_EQ(Apply(flush).code(), NOT_FOUND);
}

TEST_F(StateMachineTest, BounceLeasesTheEntriesForABounceFirstEvenWhenHeldOrDown) {
  AppendAll({Entry(1), Entry(2), Entry(3, kOther)});
  TakeDown(Id(1));
  Command hold;
  hold.mutable_hold()->mutable_selector()->add_ids(Id(2));
  Apply(hold);
  Command bounce;
  bounce.mutable_bounce()->mutable_selector()->set_domain(kDomain);
  bounce.mutable_bounce()->set_reason("removed by the operator");
  EXPECT_EQ(Apply(bounce).selection().affected(), 2u);
  EXPECT_EQ(Domain().usage().held_messages(), 0u);
  const CommandResult leased = Apply(LeaseOf(2));
  ASSERT_THAT(LeasedIds(leased), ElementsAre(Id(1), Id(2)));
  const LeasedEntry& first = leased.lease().domains(0).entries(0);
  EXPECT_EQ(first.lease().disposition(), DISPOSITION_BOUNCE);
  EXPECT_EQ(first.bounce_reason(), "removed by the operator");
}

TEST_F(StateMachineTest, CompletingABounceLeavesTheDomainScheduleAlone) {
  AppendAll({Entry(1), Entry(2)});
  TakeDown(Id(1));
  Command bounce;
  bounce.mutable_bounce()->mutable_selector()->add_ids(Id(2));
  Apply(bounce);
  ASSERT_THAT(LeasedIds(Apply(LeaseOf(10))), ElementsAre(Id(2)));
  ASSERT_EQ(Apply(CompleteOf({Delivered(Id(2), last_index_)})).complete().outcomes(0).code(), OK);
  EXPECT_TRUE(Domain().schedule().down());
}

// --- Domains ----------------------------------------------------------------------------------

TEST_F(StateMachineTest, DomainCreateUpdateDelete) {
  EXPECT_EQ(Apply(CreateDomainOf(Spec(kDomain))).code(), OK);
  EXPECT_EQ(Apply(CreateDomainOf(Spec(kDomain))).code(), ALREADY_EXISTS);
  DomainSpec changed = Spec(kDomain);
  changed.set_tls(TLS_REQUIRED);
  Command update;
  *update.mutable_update_domain()->mutable_spec() = changed;
  EXPECT_EQ(Apply(update).code(), OK);
  EXPECT_EQ(Domain().spec().tls(), TLS_REQUIRED);
  *update.mutable_update_domain()->mutable_spec() = Spec(kOther);
  EXPECT_EQ(Apply(update).code(), NOT_FOUND);
  Command remove;
  remove.mutable_delete_domain()->set_name(kDomain);
  EXPECT_EQ(Apply(remove).code(), OK);
  EXPECT_TRUE(absl::IsNotFound(machine_->GetDomain(kDomain).status()));
  EXPECT_EQ(Apply(remove).code(), NOT_FOUND);
}

TEST_F(StateMachineTest, DeletingADomainKeepsItsQueuedMail) {
  CreateDomain(Spec(kDomain));
  AppendAll({Entry(1)});
  Command remove;
  remove.mutable_delete_domain()->set_name(kDomain);
  ASSERT_EQ(Apply(remove).code(), OK);
  EXPECT_FALSE(Domain().has_spec());
  EXPECT_THAT(LeasedIds(Apply(LeaseOf(10))), ElementsAre(Id(1)));
}

TEST_F(StateMachineTest, CreateDomainRefusesAnEmptyName) {
  EXPECT_EQ(Apply(CreateDomainOf(Spec(""))).code(), INVALID_ARGUMENT);
}

// --- Greylist ---------------------------------------------------------------------------------

Command GreylistOf(const std::string& sender) {
  Command command;
  GreylistCheck& check = *command.mutable_greylist();
  check.set_client_network("192.0.2.0/24");
  check.set_sender(sender);
  check.set_recipient("user@example.com");
  check.set_delay_duration_ms(absl::ToInt64Milliseconds(absl::Minutes(5)));
  check.set_retry_window_duration_ms(absl::ToInt64Milliseconds(absl::Hours(48)));
  check.set_pass_lifetime_duration_ms(absl::ToInt64Milliseconds(absl::Hours(24 * 36)));
  return command;
}

TEST_F(StateMachineTest, GreylistDefersAFirstAttemptAndPassesAfterTheDelay) {
  const CommandResult first = Apply(GreylistOf("a@origin.example"));
  EXPECT_EQ(first.greylist().verdict(), GreylistResult::DEFER);
  EXPECT_EQ(first.greylist().retry_after_ms(), Ms(kStart + absl::Minutes(5)));
  EXPECT_EQ(first.greylist().record().first_seen_ms(), Ms(kStart));
  now_ += absl::Minutes(5);
  const CommandResult retry = Apply(GreylistOf("a@origin.example"));
  EXPECT_EQ(retry.greylist().verdict(), GreylistResult::PASS);
  EXPECT_EQ(retry.greylist().record().passes(), 1u);
  EXPECT_EQ(retry.greylist().record().expiry_ms(), Ms(now_ + absl::Hours(24 * 36)));
  absl::StatusOr<GreylistRecord> stored =
      machine_->GetGreylist("192.0.2.0/24", "a@origin.example", "user@example.com");
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->passes(), 1u);
}

TEST_F(StateMachineTest, GreylistEarlyRetryDoesNotRestartTheDelay) {
  Apply(GreylistOf("a@origin.example"));
  now_ += absl::Minutes(4);
  EXPECT_EQ(Apply(GreylistOf("a@origin.example")).greylist().verdict(), GreylistResult::DEFER);
  now_ += absl::Minutes(1);
  EXPECT_EQ(Apply(GreylistOf("a@origin.example")).greylist().verdict(), GreylistResult::PASS);
  EXPECT_EQ(Apply(GreylistOf("b@origin.example")).greylist().verdict(), GreylistResult::DEFER);
}

TEST_F(StateMachineTest, GreylistForgetsATripletNotRetriedWithinTheWindow) {
  Apply(GreylistOf("a@origin.example"));
  now_ += absl::Hours(48);
  const CommandResult late = Apply(GreylistOf("a@origin.example"));
  EXPECT_EQ(late.greylist().verdict(), GreylistResult::DEFER);
  EXPECT_EQ(late.greylist().record().first_seen_ms(), Ms(now_));
}

TEST_F(StateMachineTest, GreylistChecksSweepExpiredRecords) {
  Apply(GreylistOf("a@origin.example"));
  now_ += absl::Hours(48);
  Apply(GreylistOf("b@origin.example"));
  EXPECT_TRUE(absl::IsNotFound(
      machine_->GetGreylist("192.0.2.0/24", "a@origin.example", "user@example.com").status()));
  EXPECT_TRUE(machine_->GetGreylist("192.0.2.0/24", "b@origin.example", "user@example.com").ok());
}

TEST_F(StateMachineTest, GreylistKeepsARecordWhoseExpiryMovedOn) {
  Apply(GreylistOf("a@origin.example"));
  now_ += absl::Minutes(5);
  Apply(GreylistOf("a@origin.example"));  // passes: kept for 36 days from now
  now_ += absl::Hours(48);
  Apply(GreylistOf("b@origin.example"));
  absl::StatusOr<GreylistRecord> kept =
      machine_->GetGreylist("192.0.2.0/24", "a@origin.example", "user@example.com");
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(kept->passes(), 1u);
}

// --- Queries ----------------------------------------------------------------------------------

TEST_F(StateMachineTest, SummariesReportEachDomain) {
  CreateDomain(Spec(kOther));
  AppendAll({Entry(1, kDomain, 10)});
  now_ += absl::Seconds(5);
  AppendAll({Entry(2, kDomain, 20)});
  Command hold;
  hold.mutable_hold()->mutable_selector()->add_ids(Id(2));
  Apply(hold);
  absl::StatusOr<std::vector<DomainSummary>> summaries = machine_->Summaries();
  ASSERT_TRUE(summaries.ok()) << summaries.status();
  ASSERT_EQ(summaries->size(), 2u);
  const DomainSummary& com = (*summaries)[0];
  EXPECT_EQ(com.domain(), kDomain);
  EXPECT_FALSE(com.configured());
  EXPECT_EQ(com.queued_messages(), 2u);
  EXPECT_EQ(com.queued_bytes(), 30u);
  EXPECT_EQ(com.held_messages(), 1u);
  EXPECT_EQ(com.oldest_enqueue_ms(), Ms(kStart));
  EXPECT_EQ(com.oldest_arrival_ms(), Ms(kStart));
  EXPECT_FALSE(com.down());
  const DomainSummary& org = (*summaries)[1];
  EXPECT_EQ(org.domain(), kOther);
  EXPECT_TRUE(org.configured());
  EXPECT_EQ(org.queued_messages(), 0u);
}

TEST_F(StateMachineTest, ListEntriesPagesThroughADomainOldestFirst) {
  for (uint64_t n = 1; n <= 5; ++n) {
    AppendAll({Entry(n)});
    now_ += absl::Seconds(1);
  }
  AppendAll({Entry(6, kOther)});
  ListEntriesRequest request;
  request.set_domain(kDomain);
  request.set_page_size(2);
  std::vector<std::string> seen;
  for (int page = 0; page < 10; ++page) {
    absl::StatusOr<ListEntriesResponse> response = machine_->ListEntries(request);
    ASSERT_TRUE(response.ok()) << response.status();
    for (const StoredEntry& entry : response->entries()) {
      seen.push_back(entry.id());
    }
    if (response->next_page_token().empty()) {
      break;
    }
    request.set_page_token(response->next_page_token());
  }
  EXPECT_THAT(seen, ElementsAre(Id(1), Id(2), Id(3), Id(4), Id(5)));
  request.set_domain(kOther);
  EXPECT_FALSE(machine_->ListEntries(request).ok());  // a token of another listing
  request.set_domain("");
  EXPECT_FALSE(machine_->ListEntries(request).ok());
}

// --- Log application --------------------------------------------------------------------------

TEST_F(StateMachineTest, ReapplyingAnAppliedIndexChangesNothing) {
  AppendAll({Entry(1)});
  const uint64_t applied = machine_->applied_index();
  const uint64_t before = Digest(*machine_);
  absl::StatusOr<CommandResult> again = machine_->Apply(applied, now_, AppendOf({Entry(2)}));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->code(), DUPLICATE_INDEX);
  EXPECT_EQ(Digest(*machine_), before);
  EXPECT_EQ(machine_->applied_index(), applied);
  EXPECT_TRUE(absl::IsNotFound(machine_->GetEntry(ToId(Id(2))).status()));
}

TEST_F(StateMachineTest, IndexesMaySkipAndEmptyPayloadsOnlyAdvanceTheIndex) {
  absl::StatusOr<CommandResult> noop = machine_->Apply(7, now_, std::string_view());
  ASSERT_TRUE(noop.ok());
  EXPECT_EQ(noop->code(), OK);
  EXPECT_EQ(machine_->applied_index(), 7u);
}

TEST_F(StateMachineTest, UnparsableCommandStillConsumesItsIndex) {
  absl::StatusOr<CommandResult> result = machine_->Apply(1, now_, std::string_view("\xff\xff"));
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->code(), INVALID_ARGUMENT);
  EXPECT_EQ(machine_->applied_index(), 1u);
}

TEST_F(StateMachineTest, SerializedCommandsApplyLikeParsedOnes) {
  const std::string bytes = AppendOf({Entry(1)}).SerializeAsString();
  absl::StatusOr<CommandResult> result = machine_->Apply(1, now_, std::string_view(bytes));
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->append().outcomes(0).code(), OK);
}

TEST_F(StateMachineTest, ClusterTimeNeverRunsBackwards) {
  AppendAll({Entry(1)});
  now_ -= absl::Hours(1);
  AppendAll({Entry(2)});
  EXPECT_EQ(machine_->GetEntry(ToId(Id(2)))->enqueue_ms(), Ms(kStart));
}

TEST_F(StateMachineTest, ReopeningKeepsStateAndAppliedIndex) {
  AppendAll({Entry(1), Entry(2)});
  Apply(LeaseOf(1));
  const uint64_t applied = machine_->applied_index();
  const uint64_t before = Digest(*machine_);
  machine_.reset();
  machine_ = OpenAt(Dir());
  ASSERT_NE(machine_, nullptr);
  EXPECT_EQ(machine_->applied_index(), applied);
  EXPECT_EQ(Digest(*machine_), before);
  absl::StatusOr<std::string> message = machine_->ReadMessage(ToId(Id(2)));
  ASSERT_TRUE(message.ok());
  EXPECT_EQ(*message, Entry(2).message());
  // The remembered cluster time still holds time back.
  now_ -= absl::Hours(1);
  AppendAll({Entry(3)});
  EXPECT_EQ(machine_->GetEntry(ToId(Id(3)))->enqueue_ms(), Ms(kStart));
}

// Every kind of command, in an order that exercises leases, schedules and limits.
std::vector<std::pair<absl::Duration, Command>> Script() {
  std::vector<std::pair<absl::Duration, Command>> script;
  DomainSpec spec = Spec(kDomain);
  spec.set_max_queued_messages(4);
  script.emplace_back(absl::ZeroDuration(), CreateDomainOf(spec));
  script.emplace_back(absl::Seconds(1), AppendOf({Entry(1), Entry(2), Entry(3, kOther)}));
  script.emplace_back(absl::Seconds(1), AppendOf({Entry(4), Entry(5), Entry(6)}));
  script.emplace_back(absl::Seconds(1), LeaseOf(2));
  script.emplace_back(absl::Seconds(1), CompleteOf({Retry(Id(1), 4), Delivered(Id(2), 4)}));
  script.emplace_back(absl::Minutes(2), LeaseOf(10));
  script.emplace_back(absl::Seconds(1), GreylistOf("a@origin.example"));
  Command count;
  count.mutable_append()->add_count_sessions(kDomain);
  script.emplace_back(absl::Seconds(1), count);
  Command hold;
  hold.mutable_hold()->mutable_selector()->add_ids(Id(3));
  script.emplace_back(absl::Seconds(1), hold);
  Command bounce;
  bounce.mutable_bounce()->mutable_selector()->set_domain(kDomain);
  script.emplace_back(absl::Seconds(1), bounce);
  script.emplace_back(absl::Minutes(10), LeaseOf(10));
  return script;
}

TEST_F(StateMachineTest, ReplicasFedTheSameLogEndInTheSameState) {
  std::unique_ptr<QueueStateMachine> replica = OpenAt(Dir("replica"));
  ASSERT_NE(replica, nullptr);
  for (const auto& [advance, command] : Script()) {
    now_ += advance;
    const CommandResult a = ApplyTo(*machine_, command);
    const CommandResult b = ApplyTo(*replica, command);
    EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString());
    ASSERT_TRUE(machine_->CheckInvariants().ok()) << machine_->CheckInvariants();
  }
  EXPECT_EQ(Digest(*machine_), Digest(*replica));
  // The digest does see differences.
  now_ += absl::Seconds(1);
  ApplyTo(*replica, AppendOf({Entry(100)}));
  EXPECT_NE(Digest(*machine_), Digest(*replica));
}

// A seeded mix of every command on two replicas: after each step the indexes and counters agree
// with the entries, no entry is leased to two workers at once, and the replicas stay identical.
TEST_F(StateMachineTest, RandomCommandsKeepInvariantsAndReplicasIdentical) {
  std::unique_ptr<QueueStateMachine> replica = OpenAt(Dir("replica"));
  ASSERT_NE(replica, nullptr);
  std::mt19937_64 random(20261127);
  const auto pick = [&random](uint64_t n) { return random() % n; };
  const std::string domains[] = {kDomain, kOther, "example.net"};
  DomainSpec spec = Spec(kDomain);
  spec.set_max_queued_messages(5);
  ApplyTo(*replica, CreateDomainOf(spec));
  ApplyTo(*machine_, CreateDomainOf(spec));

  struct Held {
    uint64_t token;
    int64_t expiry_ms;
  };
  std::map<std::string, Held> leases;  // what workers believe they hold
  std::map<std::string, int> seen;     // how often each path ran, so the mix stays meaningful
  for (int step = 0; step < 400; ++step) {
    now_ += absl::Seconds(pick(90));
    Command command;
    const std::string id = Id(1 + pick(40));
    switch (pick(8)) {
      case 0:
      case 1:
        for (uint64_t n = pick(4); n > 0; --n) {
          *command.mutable_append()->add_entries() =
              Entry(1 + pick(40), domains[pick(3)], 1 + pick(500));
        }
        break;
      case 2:
        command = LeaseOf(1 + pick(6), absl::Seconds(30 + pick(120)));
        break;
      case 3:
      case 4:
        for (const auto& [leased_id, held] : leases) {
          if (pick(2) == 0) {
            continue;
          }
          const uint64_t token = pick(10) == 0 ? held.token + 1 : held.token;
          switch (pick(3)) {
            case 0:
              *command.mutable_complete()->add_items() = Delivered(leased_id, token);
              break;
            case 1:
              *command.mutable_complete()->add_items() = Retry(leased_id, token);
              break;
            default:
              *command.mutable_complete()->add_items() = Bounce(leased_id, token);
              break;
          }
        }
        break;
      case 5:
        (pick(2) == 0 ? command.mutable_hold()->mutable_selector()
                      : command.mutable_release()->mutable_selector())
            ->add_ids(id);
        break;
      case 6:
        (pick(2) == 0 ? command.mutable_delete_()->mutable_selector()
                      : command.mutable_bounce()->mutable_selector())
            ->add_ids(id);
        break;
      default:
        command.mutable_flush()->set_domain(domains[pick(3)]);
        break;
    }
    const CommandResult a = ApplyTo(*machine_, command);
    const CommandResult b = ApplyTo(*replica, command);
    ASSERT_EQ(a.SerializeAsString(), b.SerializeAsString()) << "step " << step;
    ASSERT_TRUE(machine_->CheckInvariants().ok())
        << "step " << step << ": " << machine_->CheckInvariants();
    for (const LeasedDomain& domain : a.lease().domains()) {
      for (const LeasedEntry& leased : domain.entries()) {
        auto previous = leases.find(leased.entry().id());
        if (previous != leases.end()) {
          ASSERT_GE(Ms(now_), previous->second.expiry_ms) << "leased twice at step " << step;
        }
        leases[leased.entry().id()] = {leased.lease().token(), leased.lease().expiry_ms()};
        ++seen[leased.lease().probe() ? "probe" : Disposition_Name(leased.lease().disposition())];
      }
    }
    for (const CompletionOutcome& outcome : a.complete().outcomes()) {
      if (outcome.code() == OK) {
        leases.erase(outcome.id());
      }
      ++seen["complete " + Code_Name(outcome.code())];
    }
    for (const AppendOutcome& outcome : a.append().outcomes()) {
      ++seen["append " + Code_Name(outcome.code())];
    }
  }
  EXPECT_EQ(Digest(*machine_), Digest(*replica));
  for (const char* path :
       {"probe", "DISPOSITION_DELIVER", "DISPOSITION_BOUNCE", "complete OK", "complete STALE_LEASE",
        "append OK", "append ALREADY_EXISTS", "append OVER_LIMIT"}) {
    EXPECT_GT(seen[path], 0) << path;
  }
}

TEST_F(StateMachineTest, CheckpointOpensWithTheSameStateAndIndex) {
  for (const auto& [advance, command] : Script()) {
    now_ += advance;
    Apply(command);
  }
  ASSERT_TRUE(machine_->CreateCheckpoint(Dir("checkpoint")).ok());
  const uint64_t applied = machine_->applied_index();
  const uint64_t digest = Digest(*machine_);
  // Later changes stay out of the checkpoint.
  AppendAll({Entry(100)});

  // Message bytes live in blob files, not in the LSM tree.
  bool has_blob_file = false;
  for (const auto& file : std::filesystem::directory_iterator(Dir("checkpoint"))) {
    has_blob_file |= file.path().extension() == ".blob";
  }
  EXPECT_TRUE(has_blob_file);

  std::unique_ptr<QueueStateMachine> restored = OpenAt(Dir("checkpoint"));
  ASSERT_NE(restored, nullptr);
  EXPECT_EQ(restored->applied_index(), applied);
  EXPECT_EQ(Digest(*restored), digest);
}

TEST_F(StateMachineTest, InstallCheckpointReplacesTheDatabase) {
  AppendAll({Entry(1)});
  ASSERT_TRUE(machine_->CreateCheckpoint(Dir("checkpoint")).ok());
  const uint64_t digest = Digest(*machine_);
  AppendAll({Entry(2)});
  machine_.reset();
  ASSERT_TRUE(QueueStateMachine::InstallCheckpoint(Dir("checkpoint"), Dir()).ok());
  machine_ = OpenAt(Dir());
  ASSERT_NE(machine_, nullptr);
  EXPECT_EQ(Digest(*machine_), digest);
  EXPECT_TRUE(absl::IsNotFound(machine_->GetEntry(ToId(Id(2))).status()));
  EXPECT_FALSE(std::filesystem::exists(Dir("checkpoint")));
}

TEST_F(StateMachineTest, ReplaceWithSwapsTheOpenDatabaseForACheckpoint) {
  AppendAll({Entry(1)});
  ASSERT_TRUE(machine_->CreateCheckpoint(Dir("checkpoint")).ok());
  const uint64_t applied = machine_->applied_index();
  const uint64_t digest = Digest(*machine_);
  absl::StatusOr<uint64_t> checkpoint_index = QueueStateMachine::AppliedIndexOf(Dir("checkpoint"));
  ASSERT_TRUE(checkpoint_index.ok()) << checkpoint_index.status();
  EXPECT_EQ(*checkpoint_index, applied);
  AppendAll({Entry(2)});
  ASSERT_NE(Digest(*machine_), digest);

  ASSERT_TRUE(machine_->ReplaceWith(Dir("checkpoint")).ok());
  EXPECT_EQ(machine_->applied_index(), applied);
  EXPECT_EQ(Digest(*machine_), digest);
  EXPECT_TRUE(absl::IsNotFound(machine_->GetEntry(ToId(Id(2))).status()));
  // The replaced machine keeps applying, and what it holds survives a reopen.
  AppendAll({Entry(3)});
  const uint64_t after = Digest(*machine_);
  machine_.reset();
  machine_ = OpenAt(Dir());
  ASSERT_NE(machine_, nullptr);
  EXPECT_EQ(Digest(*machine_), after);
}

TEST_F(StateMachineTest, SetMemberRecordsAndForgetsAddressesThatSurviveAReopen) {
  auto set_member = [](uint64_t id, const std::string& address, bool removed) {
    Command command;
    command.mutable_member()->set_id(id);
    command.mutable_member()->set_address(address);
    command.mutable_member()->set_removed(removed);
    return command;
  };
  EXPECT_EQ(Apply(set_member(4, "10.0.0.4:7025", false)).code(), OK);
  EXPECT_EQ(Apply(set_member(5, "10.0.0.5:7025", false)).code(), OK);
  EXPECT_EQ(Apply(set_member(4, "", true)).code(), OK);
  machine_.reset();
  machine_ = OpenAt(Dir());
  ASSERT_NE(machine_, nullptr);
  absl::StatusOr<std::map<uint64_t, std::string>> members = machine_->Members();
  ASSERT_TRUE(members.ok()) << members.status();
  EXPECT_EQ(*members, (std::map<uint64_t, std::string>{{5, "10.0.0.5:7025"}}));
}

// --- Greylist: auto_allow_after -----------------------------------------------------------------

Command AutoAllowGreylistOf(const std::string& sender, uint32_t auto_allow_after,
                            const std::string& network = "192.0.2.0/24") {
  Command command = GreylistOf(sender);
  command.mutable_greylist()->set_client_network(network);
  command.mutable_greylist()->set_auto_allow_after(auto_allow_after);
  return command;
}

TEST_F(StateMachineTest, GreylistAutoAllowsANetworkOnceItsTripletsPassed) {
  for (const std::string sender : {"a@origin.example", "b@origin.example"}) {
    EXPECT_EQ(Apply(AutoAllowGreylistOf(sender, 2)).greylist().verdict(), GreylistResult::DEFER);
    now_ += absl::Minutes(5);
    const GreylistResult passed = Apply(AutoAllowGreylistOf(sender, 2)).greylist();
    EXPECT_EQ(passed.verdict(), GreylistResult::PASS);
    EXPECT_FALSE(passed.client_allowed());
  }
  const GreylistResult allowed = Apply(AutoAllowGreylistOf("c@origin.example", 2)).greylist();
  EXPECT_EQ(allowed.verdict(), GreylistResult::PASS);
  EXPECT_TRUE(allowed.client_allowed());
  EXPECT_EQ(allowed.record().passes(), 2u);
  // Only that network.
  EXPECT_EQ(
      Apply(AutoAllowGreylistOf("c@origin.example", 2, "198.51.100.0/24")).greylist().verdict(),
      GreylistResult::DEFER);
}

TEST_F(StateMachineTest, GreylistAutoAllowCountsTripletsNotRepeatedPasses) {
  Apply(AutoAllowGreylistOf("a@origin.example", 2));
  now_ += absl::Minutes(5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Apply(AutoAllowGreylistOf("a@origin.example", 2)).greylist().verdict(),
              GreylistResult::PASS);
  }
  const GreylistResult other = Apply(AutoAllowGreylistOf("b@origin.example", 2)).greylist();
  EXPECT_EQ(other.verdict(), GreylistResult::DEFER);
  EXPECT_FALSE(other.client_allowed());
}

TEST_F(StateMachineTest, GreylistWithoutAutoAllowNeverAllowsANetwork) {
  for (const std::string sender : {"a@origin.example", "b@origin.example", "c@origin.example"}) {
    Apply(AutoAllowGreylistOf(sender, 0));
    now_ += absl::Minutes(5);
    EXPECT_EQ(Apply(AutoAllowGreylistOf(sender, 0)).greylist().verdict(), GreylistResult::PASS);
  }
  EXPECT_EQ(Apply(AutoAllowGreylistOf("d@origin.example", 0)).greylist().verdict(),
            GreylistResult::DEFER);
}

TEST_F(StateMachineTest, GreylistForgetsAnAllowedNetworkAfterThePassLifetime) {
  Apply(AutoAllowGreylistOf("a@origin.example", 1));
  now_ += absl::Minutes(5);
  Apply(AutoAllowGreylistOf("a@origin.example", 1));
  now_ += absl::Hours(24 * 30);
  // A use keeps the network allowed for another pass lifetime.
  EXPECT_TRUE(Apply(AutoAllowGreylistOf("b@origin.example", 1)).greylist().client_allowed());
  now_ += absl::Hours(24 * 30);
  EXPECT_TRUE(Apply(AutoAllowGreylistOf("c@origin.example", 1)).greylist().client_allowed());
  now_ += absl::Hours(24 * 36);
  const GreylistResult forgotten = Apply(AutoAllowGreylistOf("d@origin.example", 1)).greylist();
  EXPECT_EQ(forgotten.verdict(), GreylistResult::DEFER);
  EXPECT_FALSE(forgotten.client_allowed());
}

}  // namespace
}  // namespace backstop::queue
