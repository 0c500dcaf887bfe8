#include "queue/state_machine.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <shared_mutex>
#include <system_error>
#include <utility>

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/utilities/write_batch_with_index.h>

#include "absl/status/status.h"
#include "absl/time/civil_time.h"
#include "common/status.h"
#include "queue/keys.h"
#include "queue/snapshot_store.h"

namespace backstop::queue {
namespace {

// Column families, in the order of QueueStateMachine::handles_ (and of ContentDigest).
constexpr const char* kColumnFamilies[] = {"default", "domains", "entries",
                                           "bodies",  "index",   "greylist"};
constexpr size_t kBodiesCf = 3;
constexpr uint32_t kDefaultPageSize = 100;
// Members' addresses in the meta family: prefix, then the node id big-endian.
constexpr std::string_view kMemberPrefix = "member/";
// Expired greylist records removed per greylist check: bounded work per command that still
// outpaces creation (at most one record per check).
constexpr size_t kGreylistSweep = 8;

absl::Status FromRocks(const rocksdb::Status& status, std::string_view what) {
  if (status.ok()) {
    return absl::OkStatus();
  }
  const std::string message = std::string(what) + ": " + status.ToString();
  if (status.IsNotFound()) {
    return absl::NotFoundError(message);
  }
  return absl::InternalError(message);
}

int64_t Millis(absl::Duration duration) {
  return absl::ToInt64Milliseconds(duration);
}

// UTC calendar periods the limits count in: year*100+month and year*10000+month*100+day.
int64_t MonthOf(int64_t time_ms) {
  const absl::CivilDay day = absl::ToCivilDay(absl::FromUnixMillis(time_ms), absl::UTCTimeZone());
  return day.year() * 100 + day.month();
}

int64_t DayOf(int64_t time_ms) {
  const absl::CivilDay day = absl::ToCivilDay(absl::FromUnixMillis(time_ms), absl::UTCTimeZone());
  return day.year() * 10000 + day.month() * 100 + day.day();
}

void RollPeriods(int64_t now_ms, DomainUsage& usage) {
  if (usage.month() != MonthOf(now_ms)) {
    usage.set_month(MonthOf(now_ms));
    usage.set_month_bytes(0);
  }
  if (usage.day() != DayOf(now_ms)) {
    usage.set_day(DayOf(now_ms));
    usage.set_day_connections(0);
  }
}

// Counts one SMTP session against the daily limit of a configured domain (usage rolled to now),
// unless that would take it over the limit: then nothing changes and the answer is false.
bool CountSession(DomainRecord& record) {
  DomainUsage& usage = *record.mutable_usage();
  if (usage.day_connections() + 1 > record.spec().max_daily_connections()) {
    return false;
  }
  usage.set_day_connections(usage.day_connections() + 1);
  return true;
}

bool ValidDomainName(std::string_view name) {
  return !name.empty() && name.find('\0') == std::string_view::npos;
}

// Why an entry waits: its own last failure, else its domain's (an entry never tried yet).
std::string WaitReason(const StoredEntry& entry, const DomainSchedule& schedule) {
  return entry.last_error().empty() ? schedule.last_error() : entry.last_error();
}

CommandResult Refused(Code code, std::string error) {
  CommandResult result;
  result.set_code(code);
  result.set_error(std::move(error));
  return result;
}

// Index keys an entry in this state owns (keys.h).
std::vector<std::string> IndexKeysOf(const StoredEntry& entry) {
  std::vector<std::string> index_keys = {
      keys::QueueKey(entry.domain(), entry.enqueue_ms(), entry.id())};
  if (entry.has_lease()) {
    index_keys.push_back(keys::LeaseKey(entry.lease().expiry_ms(), entry.id()));
  } else if (!entry.held()) {
    const keys::ReadyKind kind =
        entry.bounce_requested() ? keys::ReadyKind::kBounce : keys::ReadyKind::kDeliver;
    index_keys.push_back(keys::ReadyKey(kind, entry.domain(), entry.enqueue_ms(), entry.id()));
    // Whatever delay_warning is now: the index depends on the entry alone. A <> sender is
    // never sent a DSN, so it never waits for a warning.
    if (kind == keys::ReadyKind::kDeliver && !entry.delay_warned() &&
        !entry.envelope().reverse_path().empty()) {
      index_keys.push_back(keys::ReadyKey(keys::ReadyKind::kDelayWarning, entry.domain(),
                                          entry.enqueue_ms(), entry.id()));
    }
  }
  return index_keys;
}

// What one entry in this state adds to its domain's counters.
struct Contribution {
  int64_t messages = 0;
  int64_t bytes = 0;
  int64_t held = 0;
  int64_t leased = 0;
  int64_t probes = 0;
};

Contribution ContributionOf(const StoredEntry* entry) {
  if (entry == nullptr) {
    return {};
  }
  return {.messages = 1,
          .bytes = static_cast<int64_t>(entry->message_size()),
          .held = entry->held() ? 1 : 0,
          .leased = entry->has_lease() ? 1 : 0,
          .probes = entry->has_lease() && entry->lease().probe() ? 1 : 0};
}

// Moves the domain's counters from one entry state to the next (either may be absent).
absl::Status ApplyContribution(const StoredEntry* before, const StoredEntry* after,
                               DomainUsage& usage) {
  const Contribution old_part = ContributionOf(before);
  const Contribution new_part = ContributionOf(after);
  struct Counter {
    int64_t delta;
    uint64_t (DomainUsage::*get)() const;
    void (DomainUsage::*set)(uint64_t);
  };
  const Counter counters[] = {
      {new_part.messages - old_part.messages, &DomainUsage::queued_messages,
       &DomainUsage::set_queued_messages},
      {new_part.bytes - old_part.bytes, &DomainUsage::queued_bytes, &DomainUsage::set_queued_bytes},
      {new_part.held - old_part.held, &DomainUsage::held_messages, &DomainUsage::set_held_messages},
      {new_part.leased - old_part.leased, &DomainUsage::leased_messages,
       &DomainUsage::set_leased_messages},
      {new_part.probes - old_part.probes, &DomainUsage::leased_probes,
       &DomainUsage::set_leased_probes},
  };
  for (const Counter& counter : counters) {
    const uint64_t value = (usage.*counter.get)();
    if (counter.delta < 0 && value < static_cast<uint64_t>(-counter.delta)) {
      return absl::InternalError("queue usage counter would go negative");
    }
    (usage.*counter.set)(value + static_cast<uint64_t>(counter.delta));
  }
  return absl::OkStatus();
}

}  // namespace

StateMachineOptions StateMachineOptions::FromConfig(const DeliveryConfig& delivery) {
  return {.retry_initial = delivery.retry_initial,
          .retry_max = delivery.retry_max,
          .max_queue_lifetime = delivery.max_queue_lifetime,
          .delay_warning = delivery.delay_warning};
}

// One command being applied: its writes go into a batch whose reads see the database plus
// the batch, so a command may read back what it wrote earlier. Commit writes the batch, with
// the new applied index, atomically. Owned by Apply, for the duration of one call.
class QueueStateMachine::Txn {
 public:
  Txn(const QueueStateMachine& machine, uint64_t index, int64_t now_ms)
      : machine_(machine),
        cf_(machine.cf_),
        index_(index),
        now_ms_(now_ms),
        batch_(rocksdb::BytewiseComparator(), 0, /*overwrite_key=*/true) {}

  absl::StatusOr<CommandResult> Run(const Command& command);
  absl::Status Commit();

 private:
  enum class Limits : uint8_t { kEnforce, kExempt };
  // An entry chosen by Lease, leased once the scan that found it is over (writing the batch
  // under a live iterator is not allowed).
  struct Pick {
    StoredEntry entry;
    Disposition disposition;
    bool probe;
    std::string last_error;  // the entry's, else its domain's
  };

  // Storage.
  absl::StatusOr<std::optional<std::string>> Get(rocksdb::ColumnFamilyHandle* cf,
                                                 std::string_view key);
  template <typename Message>
  absl::StatusOr<std::optional<Message>> GetProto(rocksdb::ColumnFamilyHandle* cf,
                                                  std::string_view key);
  absl::Status Put(rocksdb::ColumnFamilyHandle* cf, std::string_view key, std::string_view value);
  absl::Status Delete(rocksdb::ColumnFamilyHandle* cf, std::string_view key);
  std::unique_ptr<rocksdb::Iterator> NewIterator(rocksdb::ColumnFamilyHandle* cf);
  // Keys of `cf` in [begin, end), at most `limit`.
  absl::StatusOr<std::vector<std::string>> ScanKeys(rocksdb::ColumnFamilyHandle* cf,
                                                    std::string_view begin, std::string_view end,
                                                    size_t limit = SIZE_MAX);

  // Records. Every change of an entry goes through WriteEntry, which keeps the index keys and
  // the domain counters in step with it.
  absl::StatusOr<DomainRecord> LoadDomain(std::string_view name);
  absl::Status StoreDomain(std::string_view name, const DomainRecord& record);
  absl::StatusOr<std::optional<StoredEntry>> LoadEntry(std::string_view id);
  absl::StatusOr<StoredEntry> LoadIndexedEntry(std::string_view id);
  absl::Status WriteEntry(const StoredEntry* before, const StoredEntry* after);
  absl::StatusOr<std::vector<StoredEntry>> Select(const Selector& selector,
                                                  SelectionResult& result);
  int64_t Backoff(uint32_t level) const;

  // Commands.
  absl::StatusOr<AppendResult> Append(const google::protobuf::RepeatedPtrField<QueueEntry>& entries,
                                      Limits limits);
  absl::StatusOr<LeaseResult> Lease(const LeaseEntries& request);
  absl::Status ReclaimExpiredLeases();
  absl::StatusOr<std::vector<std::string>> ReadyDomains();
  absl::StatusOr<std::vector<Pick>> PickDue(std::string_view domain, size_t cap);
  absl::Status PickDelayWarnings(const DomainRecord& record, std::string_view domain, size_t cap,
                                 std::vector<Pick>& picks);
  absl::StatusOr<ExtendResult> Extend(const ExtendLeases& request);
  absl::StatusOr<CompleteResult> Complete(const CompleteEntries& request);
  absl::Status Retry(const StoredEntry& entry, const RetryLater& retry, CompletionOutcome& outcome);
  absl::StatusOr<CommandResult> Modify(const Selector& selector,
                                       const std::function<bool(StoredEntry&)>& change);
  absl::StatusOr<CommandResult> DeleteEntries(const Selector& selector);
  absl::StatusOr<CommandResult> Flush(std::string_view domain);
  absl::StatusOr<CommandResult> PutDomain(const DomainSpec& spec, Code if_exists, Code if_absent);
  absl::StatusOr<CommandResult> RemoveDomain(std::string_view name);
  absl::StatusOr<GreylistResult> Greylist(const GreylistCheck& check);
  absl::Status StoreGreylistRecord(const std::string& key,
                                   const std::optional<GreylistRecord>& stored,
                                   const GreylistRecord& record);
  absl::Status SweepGreylist();
  // One count per element (each is one SMTP session), over the limit → not counted.
  absl::StatusOr<google::protobuf::RepeatedPtrField<SessionCount>> CountSessions(
      const google::protobuf::RepeatedPtrField<std::string>& domains);

  const QueueStateMachine& machine_;
  const ColumnFamilies& cf_;
  const uint64_t index_;
  const int64_t now_ms_;
  rocksdb::WriteBatchWithIndex batch_;
};

absl::StatusOr<std::optional<std::string>> QueueStateMachine::Txn::Get(
    rocksdb::ColumnFamilyHandle* cf, std::string_view key) {
  std::string value;
  const rocksdb::Status status =
      batch_.GetFromBatchAndDB(machine_.db_.get(), rocksdb::ReadOptions(), cf, key, &value);
  if (status.IsNotFound()) {
    return std::nullopt;
  }
  RETURN_IF_ERROR(FromRocks(status, "read"));
  return value;
}

template <typename Message>
absl::StatusOr<std::optional<Message>> QueueStateMachine::Txn::GetProto(
    rocksdb::ColumnFamilyHandle* cf, std::string_view key) {
  ASSIGN_OR_RETURN(std::optional<std::string> value, Get(cf, key));
  if (!value.has_value()) {
    return std::nullopt;
  }
  Message message;
  if (!message.ParseFromString(*value)) {
    return absl::DataLossError("unparsable record in the queue database");
  }
  return message;
}

absl::Status QueueStateMachine::Txn::Put(rocksdb::ColumnFamilyHandle* cf, std::string_view key,
                                         std::string_view value) {
  return FromRocks(batch_.Put(cf, key, value), "batch put");
}

absl::Status QueueStateMachine::Txn::Delete(rocksdb::ColumnFamilyHandle* cf, std::string_view key) {
  return FromRocks(batch_.Delete(cf, key), "batch delete");
}

std::unique_ptr<rocksdb::Iterator> QueueStateMachine::Txn::NewIterator(
    rocksdb::ColumnFamilyHandle* cf) {
  return std::unique_ptr<rocksdb::Iterator>(
      batch_.NewIteratorWithBase(cf, machine_.db_->NewIterator(rocksdb::ReadOptions(), cf)));
}

absl::StatusOr<std::vector<std::string>> QueueStateMachine::Txn::ScanKeys(
    rocksdb::ColumnFamilyHandle* cf, std::string_view begin, std::string_view end, size_t limit) {
  std::vector<std::string> found;
  std::unique_ptr<rocksdb::Iterator> it = NewIterator(cf);
  for (it->Seek(begin); it->Valid() && it->key().ToStringView() < end && found.size() < limit;
       it->Next()) {
    found.emplace_back(it->key().ToStringView());
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  return found;
}

absl::StatusOr<DomainRecord> QueueStateMachine::Txn::LoadDomain(std::string_view name) {
  ASSIGN_OR_RETURN(std::optional<DomainRecord> record, GetProto<DomainRecord>(cf_.domains, name));
  return record.value_or(DomainRecord());
}

absl::Status QueueStateMachine::Txn::StoreDomain(std::string_view name,
                                                 const DomainRecord& record) {
  // A domain that is neither configured nor has mail queued has nothing worth keeping (DSN
  // targets come and go); dropping it forgets a down state no entry is waiting on.
  if (!record.has_spec() && record.usage().queued_messages() == 0) {
    return Delete(cf_.domains, name);
  }
  return Put(cf_.domains, name, record.SerializeAsString());
}

absl::StatusOr<std::optional<StoredEntry>> QueueStateMachine::Txn::LoadEntry(std::string_view id) {
  return GetProto<StoredEntry>(cf_.entries, id);
}

absl::StatusOr<StoredEntry> QueueStateMachine::Txn::LoadIndexedEntry(std::string_view id) {
  ASSIGN_OR_RETURN(std::optional<StoredEntry> entry, LoadEntry(id));
  if (!entry.has_value()) {
    return absl::InternalError("index names an entry that does not exist");
  }
  return *std::move(entry);
}

absl::Status QueueStateMachine::Txn::WriteEntry(const StoredEntry* before,
                                                const StoredEntry* after) {
  const StoredEntry& any = after != nullptr ? *after : *before;
  const std::vector<std::string> old_keys =
      before != nullptr ? IndexKeysOf(*before) : std::vector<std::string>();
  const std::vector<std::string> new_keys =
      after != nullptr ? IndexKeysOf(*after) : std::vector<std::string>();
  for (const std::string& key : old_keys) {
    if (std::find(new_keys.begin(), new_keys.end(), key) == new_keys.end()) {
      RETURN_IF_ERROR(Delete(cf_.index, key));
    }
  }
  for (const std::string& key : new_keys) {
    if (std::find(old_keys.begin(), old_keys.end(), key) == old_keys.end()) {
      RETURN_IF_ERROR(Put(cf_.index, key, ""));
    }
  }
  if (after != nullptr) {
    RETURN_IF_ERROR(Put(cf_.entries, after->id(), after->SerializeAsString()));
  } else {
    RETURN_IF_ERROR(Delete(cf_.entries, before->id()));
    RETURN_IF_ERROR(Delete(cf_.bodies, before->id()));
  }

  ASSIGN_OR_RETURN(DomainRecord record, LoadDomain(any.domain()));
  RETURN_IF_ERROR(ApplyContribution(before, after, *record.mutable_usage()));
  return StoreDomain(any.domain(), record);
}

absl::StatusOr<std::vector<StoredEntry>> QueueStateMachine::Txn::Select(const Selector& selector,
                                                                        SelectionResult& result) {
  std::vector<StoredEntry> selected;
  if (!selector.ids().empty()) {
    std::set<std::string> seen;
    for (const std::string& id : selector.ids()) {
      if (!seen.insert(id).second) {
        continue;
      }
      ASSIGN_OR_RETURN(std::optional<StoredEntry> entry, LoadEntry(id));
      if (entry.has_value()) {
        selected.push_back(*std::move(entry));
      } else {
        result.add_not_found(id);
      }
    }
    return selected;
  }
  const std::string prefix = keys::QueuePrefix(selector.domain());
  ASSIGN_OR_RETURN(std::vector<std::string> queue_keys,
                   ScanKeys(cf_.index, prefix, keys::PrefixEnd(prefix)));
  for (const std::string& key : queue_keys) {
    ASSIGN_OR_RETURN(StoredEntry entry, LoadIndexedEntry(keys::ParseQueueKey(key)->id));
    selected.push_back(std::move(entry));
  }
  return selected;
}

int64_t QueueStateMachine::Txn::Backoff(uint32_t level) const {
  const int64_t initial = Millis(machine_.options_.retry_initial);
  const int64_t max = Millis(machine_.options_.retry_max);
  int64_t wait = initial;
  for (uint32_t i = 0; i < level && wait < max; ++i) {
    wait *= 2;
  }
  return std::min(wait, max);
}

absl::StatusOr<CommandResult> QueueStateMachine::Txn::Run(const Command& command) {
  CommandResult result;
  switch (command.command_case()) {
    case Command::kAppend: {
      // Sessions first: a session counted here may be the one whose message follows.
      ASSIGN_OR_RETURN(google::protobuf::RepeatedPtrField<SessionCount> sessions,
                       CountSessions(command.append().count_sessions()));
      ASSIGN_OR_RETURN(*result.mutable_append(),
                       Append(command.append().entries(), Limits::kEnforce));
      result.mutable_append()->mutable_session_counts()->Swap(&sessions);
      return result;
    }
    case Command::kLease: {
      if (command.lease().lease_duration_ms() <= 0) {
        return Refused(INVALID_ARGUMENT, "lease duration must be positive");
      }
      ASSIGN_OR_RETURN(*result.mutable_lease(), Lease(command.lease()));
      return result;
    }
    case Command::kComplete: {
      ASSIGN_OR_RETURN(*result.mutable_complete(), Complete(command.complete()));
      return result;
    }
    case Command::kExtend: {
      if (command.extend().lease_duration_ms() <= 0) {
        return Refused(INVALID_ARGUMENT, "lease duration must be positive");
      }
      ASSIGN_OR_RETURN(*result.mutable_extend(), Extend(command.extend()));
      return result;
    }
    case Command::kHold:
      return Modify(command.hold().selector(), [](StoredEntry& entry) {
        const bool changed = !entry.held();
        entry.set_held(true);
        return changed;
      });
    case Command::kRelease:
      return Modify(command.release().selector(), [](StoredEntry& entry) {
        const bool changed = entry.held();
        entry.set_held(false);
        return changed;
      });
    case Command::kDelete:
      return DeleteEntries(command.delete_().selector());
    case Command::kFlush:
      return Flush(command.flush().domain());
    case Command::kBounce: {
      const std::string& reason = command.bounce().reason();
      // A bounce overrides a hold: the operator wants the entry gone, with a DSN.
      return Modify(command.bounce().selector(), [&reason](StoredEntry& entry) {
        entry.set_held(false);
        entry.set_bounce_requested(true);
        entry.set_bounce_reason(reason);
        return true;
      });
    }
    case Command::kCreateDomain:
      return PutDomain(command.create_domain().spec(), ALREADY_EXISTS, OK);
    case Command::kUpdateDomain:
      return PutDomain(command.update_domain().spec(), OK, NOT_FOUND);
    case Command::kDeleteDomain:
      return RemoveDomain(command.delete_domain().name());
    case Command::kGreylist: {
      ASSIGN_OR_RETURN(*result.mutable_greylist(), Greylist(command.greylist()));
      return result;
    }
    case Command::kMember: {
      const std::string key =
          std::string(kMemberPrefix) + keys::EncodeFixed64(command.member().id());
      RETURN_IF_ERROR(command.member().removed() ? Delete(cf_.meta, key)
                                                 : Put(cf_.meta, key, command.member().address()));
      return result;
    }
    case Command::COMMAND_NOT_SET:
      return result;
  }
  return Refused(INVALID_ARGUMENT, "unknown command");
}

absl::Status QueueStateMachine::Txn::Commit() {
  RETURN_IF_ERROR(Put(cf_.meta, keys::kAppliedIndex, keys::EncodeFixed64(index_)));
  RETURN_IF_ERROR(
      Put(cf_.meta, keys::kClusterTime, keys::EncodeFixed64(static_cast<uint64_t>(now_ms_))));
  // Unsynced on purpose: see the header. The WAL keeps each batch all-or-nothing.
  rocksdb::WriteOptions write_options;
  write_options.sync = false;
  return FromRocks(machine_.db_->Write(write_options, batch_.GetWriteBatch()), "write");
}

// ---------------------------------------------------------------------------------------------
// Append

absl::StatusOr<AppendResult> QueueStateMachine::Txn::Append(
    const google::protobuf::RepeatedPtrField<QueueEntry>& entries, Limits limits) {
  AppendResult result;
  // New entries by domain, in domain order so that limit checks run in a defined order.
  std::map<std::string, std::vector<int>> fresh;
  std::set<std::string> ids_in_command;
  for (int i = 0; i < entries.size(); ++i) {
    const QueueEntry& entry = entries[i];
    AppendOutcome& outcome = *result.add_outcomes();
    outcome.set_id(entry.id());
    if (entry.id().size() != MessageId::kSize || !ValidDomainName(entry.domain())) {
      outcome.set_code(INVALID_ARGUMENT);
      continue;
    }
    ASSIGN_OR_RETURN(std::optional<std::string> stored, Get(cf_.entries, entry.id()));
    if (stored.has_value() || !ids_in_command.insert(entry.id()).second) {
      outcome.set_code(ALREADY_EXISTS);
      continue;
    }
    fresh[entry.domain()].push_back(i);
  }

  for (const auto& [domain, candidates] : fresh) {
    ASSIGN_OR_RETURN(DomainRecord record, LoadDomain(domain));
    DomainUsage& usage = *record.mutable_usage();
    RollPeriods(now_ms_, usage);
    // Sessions first (QueueEntry.count_session): an entry whose session would go over the daily
    // limit is refused alone; a counted session stays counted whatever happens to its entry.
    std::vector<int> positions;
    bool counted = false;
    for (int i : candidates) {
      if (!entries[i].count_session() || !record.has_spec()) {
        positions.push_back(i);
        continue;
      }
      AppendOutcome& outcome = *result.mutable_outcomes(i);
      const bool session_counted = CountSession(record);
      outcome.set_sessions_today(usage.day_connections());
      if (!session_counted) {
        outcome.set_code(OVER_LIMIT);
        outcome.set_limit(LIMIT_DAILY_CONNECTIONS);
        continue;
      }
      counted = true;
      positions.push_back(i);
    }
    if (positions.empty()) {
      DomainRejection& rejection = *result.add_rejected();
      rejection.set_domain(domain);
      rejection.set_limit(LIMIT_DAILY_CONNECTIONS);
      continue;
    }
    uint64_t bytes = 0;
    for (int i : positions) {
      bytes += entries[i].message().size();
    }
    Limit over = LIMIT_UNSPECIFIED;
    if (limits == Limits::kEnforce && record.has_spec()) {
      const DomainSpec& spec = record.spec();
      if (usage.queued_messages() + positions.size() > spec.max_queued_messages()) {
        over = LIMIT_QUEUED_MESSAGES;
      } else if (usage.queued_bytes() + bytes > spec.max_queued_bytes()) {
        over = LIMIT_QUEUED_BYTES;
      } else if (usage.month_bytes() + bytes > spec.max_monthly_bytes()) {
        over = LIMIT_MONTHLY_BYTES;
      }
    }
    if (over != LIMIT_UNSPECIFIED) {
      for (int i : positions) {
        result.mutable_outcomes(i)->set_code(OVER_LIMIT);
        result.mutable_outcomes(i)->set_limit(over);
      }
      DomainRejection& rejection = *result.add_rejected();
      rejection.set_domain(domain);
      rejection.set_limit(over);
      if (counted) {
        RETURN_IF_ERROR(StoreDomain(domain, record));
      }
      continue;
    }
    usage.set_month_bytes(usage.month_bytes() + bytes);
    RETURN_IF_ERROR(StoreDomain(domain, record));
    for (int i : positions) {
      const QueueEntry& entry = entries[i];
      StoredEntry stored;
      stored.set_id(entry.id());
      stored.set_domain(entry.domain());
      *stored.mutable_envelope() = entry.envelope();
      stored.set_message_size(entry.message().size());
      stored.set_enqueue_ms(now_ms_);
      RETURN_IF_ERROR(Put(cf_.bodies, entry.id(), entry.message()));
      RETURN_IF_ERROR(WriteEntry(nullptr, &stored));
      result.mutable_outcomes(i)->set_code(OK);
    }
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Lease

absl::Status QueueStateMachine::Txn::ReclaimExpiredLeases() {
  ASSIGN_OR_RETURN(std::vector<std::string> expired,
                   ScanKeys(cf_.index, keys::LeasePrefix(), keys::LeaseUpperBound(now_ms_)));
  for (const std::string& key : expired) {
    ASSIGN_OR_RETURN(StoredEntry before, LoadIndexedEntry(keys::ParseLeaseKey(key)->id));
    StoredEntry after = before;
    after.clear_lease();
    RETURN_IF_ERROR(WriteEntry(&before, &after));
    machine_.leases_expired_.fetch_add(1, std::memory_order_relaxed);
  }
  return absl::OkStatus();
}

// Every domain holding an entry that is neither leased, held nor marked for bounce holds a
// ready key; its counters show it (queued > held + leased), and so may a domain whose only free
// entries are bounces, which PickDue then passes over. Reading the domain records costs one
// short scan, where seeking the index once per domain grew with the index.
absl::StatusOr<std::vector<std::string>> QueueStateMachine::Txn::ReadyDomains() {
  std::vector<std::string> domains;
  std::unique_ptr<rocksdb::Iterator> it = NewIterator(cf_.domains);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    DomainRecord record;
    if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError("malformed domain record");
    }
    const DomainUsage& usage = record.usage();
    if (usage.queued_messages() > usage.held_messages() + usage.leased_messages()) {
      domains.push_back(it->key().ToString());
    }
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "domain scan"));
  return domains;
}

// The due entries of one domain, oldest first, at most `cap`: expired entries whatever the
// schedule; then, when the domain is up, every entry past its own retry-at; when it is down,
// one probe once the next attempt is due and no other probe is out.
absl::StatusOr<std::vector<QueueStateMachine::Txn::Pick>> QueueStateMachine::Txn::PickDue(
    std::string_view domain, size_t cap) {
  ASSIGN_OR_RETURN(DomainRecord record, LoadDomain(domain));
  const DomainSchedule& schedule = record.schedule();
  bool probe_allowed = schedule.down() && schedule.next_attempt_ms() <= now_ms_ &&
                       record.usage().leased_probes() == 0;
  const int64_t expired_before = now_ms_ - Millis(machine_.options_.max_queue_lifetime);

  std::vector<Pick> picks;
  const std::string prefix = keys::ReadyPrefix(keys::ReadyKind::kDeliver, domain);
  std::unique_ptr<rocksdb::Iterator> it = NewIterator(cf_.index);
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix) && picks.size() < cap;
       it->Next()) {
    const keys::IndexKey key =
        *keys::ParseReadyKey(keys::ReadyKind::kDeliver, it->key().ToStringView());
    const bool expired = key.time_ms <= expired_before;
    if (!expired && schedule.down() && !probe_allowed) {
      break;  // keys are oldest first: nothing further is expired either
    }
    ASSIGN_OR_RETURN(StoredEntry entry, LoadIndexedEntry(key.id));
    std::string last_error = WaitReason(entry, schedule);
    if (expired) {
      picks.push_back({std::move(entry), DISPOSITION_EXPIRED, false, std::move(last_error)});
    } else if (entry.not_before_ms() <= now_ms_) {
      picks.push_back(
          {std::move(entry), DISPOSITION_DELIVER, schedule.down(), std::move(last_error)});
      probe_allowed = false;
    }
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "ready scan"));
  it.reset();
  if (schedule.down() && picks.size() < cap) {
    RETURN_IF_ERROR(PickDelayWarnings(record, domain, cap, picks));
  }
  return picks;
}

// A down domain's entries queued longer than delay_warning that were not warned yet, oldest
// first, besides those already in `picks`, until `picks` holds `cap`. Their delivery waits for
// the probe; their warning need not. An up domain needs none of this: its entries are leased
// for delivery, and a failed attempt carries the warning.
absl::Status QueueStateMachine::Txn::PickDelayWarnings(const DomainRecord& record,
                                                       std::string_view domain, size_t cap,
                                                       std::vector<Pick>& picks) {
  if (machine_.options_.delay_warning <= absl::ZeroDuration()) {
    return absl::OkStatus();
  }
  const int64_t warn_before = now_ms_ - Millis(machine_.options_.delay_warning);
  std::set<std::string> picked;
  for (const Pick& pick : picks) {
    picked.insert(pick.entry.id());
  }
  const std::string prefix = keys::ReadyPrefix(keys::ReadyKind::kDelayWarning, domain);
  std::unique_ptr<rocksdb::Iterator> it = NewIterator(cf_.index);
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix) && picks.size() < cap;
       it->Next()) {
    const keys::IndexKey key =
        *keys::ParseReadyKey(keys::ReadyKind::kDelayWarning, it->key().ToStringView());
    if (key.time_ms > warn_before) {
      break;  // oldest first: the rest are younger still
    }
    if (picked.contains(key.id)) {
      continue;
    }
    ASSIGN_OR_RETURN(StoredEntry entry, LoadIndexedEntry(key.id));
    std::string last_error = WaitReason(entry, record.schedule());
    picks.push_back({std::move(entry), DISPOSITION_DELAY_WARNING, false, std::move(last_error)});
  }
  return FromRocks(it->status(), "delay warning scan");
}

absl::StatusOr<LeaseResult> QueueStateMachine::Txn::Lease(const LeaseEntries& request) {
  RETURN_IF_ERROR(ReclaimExpiredLeases());

  std::vector<Pick> picks;
  const size_t max_entries = request.max_entries();
  // Operator bounces first, whatever their domain's schedule.
  const std::string bounce_prefix = keys::ReadyPrefix(keys::ReadyKind::kBounce);
  ASSIGN_OR_RETURN(std::vector<std::string> bounce_keys,
                   ScanKeys(cf_.index, bounce_prefix, keys::PrefixEnd(bounce_prefix), max_entries));
  for (const std::string& key : bounce_keys) {
    ASSIGN_OR_RETURN(StoredEntry entry,
                     LoadIndexedEntry(keys::ParseReadyKey(keys::ReadyKind::kBounce, key)->id));
    std::string last_error = entry.last_error();
    picks.push_back({std::move(entry), DISPOSITION_BOUNCE, false, std::move(last_error)});
  }

  // Domains in name order, starting after the one that last filled a lease, so that a large
  // backlog in one domain cannot starve the others.
  ASSIGN_OR_RETURN(std::vector<std::string> domains, ReadyDomains());
  ASSIGN_OR_RETURN(std::optional<std::string> cursor, Get(cf_.meta, keys::kLeaseCursor));
  const auto start = std::upper_bound(domains.begin(), domains.end(), cursor.value_or(""));
  std::rotate(domains.begin(), start, domains.end());
  std::string last_served;
  for (const std::string& domain : domains) {
    if (picks.size() >= max_entries) {
      break;
    }
    size_t cap = max_entries - picks.size();
    if (request.max_per_domain() > 0) {
      cap = std::min<size_t>(cap, request.max_per_domain());
    }
    ASSIGN_OR_RETURN(std::vector<Pick> due, PickDue(domain, cap));
    if (!due.empty()) {
      last_served = domain;
    }
    std::move(due.begin(), due.end(), std::back_inserter(picks));
  }
  if (picks.size() >= max_entries && !last_served.empty()) {
    RETURN_IF_ERROR(Put(cf_.meta, keys::kLeaseCursor, last_served));
  } else {
    RETURN_IF_ERROR(Delete(cf_.meta, keys::kLeaseCursor));
  }

  LeaseResult result;
  std::map<std::string, LeasedDomain*> by_domain;
  for (const Pick& pick : picks) {
    StoredEntry leased = pick.entry;
    LeaseInfo& lease = *leased.mutable_lease();
    lease.set_token(index_);
    lease.set_worker_id(request.worker_id());
    lease.set_expiry_ms(now_ms_ + request.lease_duration_ms());
    lease.set_probe(pick.probe);
    lease.set_disposition(pick.disposition);
    RETURN_IF_ERROR(WriteEntry(&pick.entry, &leased));

    LeasedDomain*& group = by_domain[leased.domain()];
    if (group == nullptr) {
      group = result.add_domains();
      group->set_domain(leased.domain());
    }
    LeasedEntry& out = *group->add_entries();
    out.mutable_entry()->set_id(leased.id());
    out.mutable_entry()->set_domain(leased.domain());
    *out.mutable_entry()->mutable_envelope() = leased.envelope();
    *out.mutable_lease() = lease;
    out.set_enqueue_ms(leased.enqueue_ms());
    out.set_attempts(leased.attempts());
    out.set_bounce_reason(leased.bounce_reason());
    out.set_delay_warned(leased.delay_warned());
    out.set_last_error(pick.last_error);
  }
  return result;
}

absl::StatusOr<ExtendResult> QueueStateMachine::Txn::Extend(const ExtendLeases& request) {
  ExtendResult result;
  const int64_t expiry_ms = now_ms_ + request.lease_duration_ms();
  for (const ExtendLeases::Held& held : request.leases()) {
    ExtendOutcome& outcome = *result.add_outcomes();
    outcome.set_id(held.id());
    ASSIGN_OR_RETURN(std::optional<StoredEntry> entry, LoadEntry(held.id()));
    if (!entry.has_value()) {
      outcome.set_code(NOT_FOUND);
      continue;
    }
    // Unlike a completion, an expired lease is not revived: the entry is due again from its
    // expiry on, and the next Lease may hand it to another worker.
    if (!entry->has_lease() || entry->lease().token() != held.lease_token() ||
        entry->lease().expiry_ms() <= now_ms_) {
      outcome.set_code(STALE_LEASE);
      continue;
    }
    if (expiry_ms > entry->lease().expiry_ms()) {
      StoredEntry after = *entry;
      after.mutable_lease()->set_expiry_ms(expiry_ms);
      RETURN_IF_ERROR(WriteEntry(&*entry, &after));
    }
    outcome.set_code(OK);
    outcome.set_expiry_ms(std::max(expiry_ms, entry->lease().expiry_ms()));
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Complete

absl::Status QueueStateMachine::Txn::Retry(const StoredEntry& entry, const RetryLater& retry,
                                           CompletionOutcome& outcome) {
  StoredEntry after = entry;
  after.clear_lease();
  if (retry.mark_delay_warned()) {
    after.set_delay_warned(true);
  }
  // Leased for its warning only, the entry was not attempted: it waits on as it was.
  const bool attempted = entry.lease().disposition() != DISPOSITION_DELAY_WARNING;
  if (attempted) {
    after.set_attempts(entry.attempts() + 1);
    after.set_last_error(retry.error());
    after.set_not_before_ms(retry.retry_at_ms() > now_ms_ ? retry.retry_at_ms() : 0);
  }
  if (attempted && !retry.remaining_recipients().empty()) {
    const std::set<std::string> keep(retry.remaining_recipients().begin(),
                                     retry.remaining_recipients().end());
    auto& recipients = *after.mutable_envelope()->mutable_recipients();
    recipients.erase(std::remove_if(recipients.begin(), recipients.end(),
                                    [&keep](const Recipient& recipient) {
                                      return !keep.contains(recipient.address());
                                    }),
                     recipients.end());
  }
  RETURN_IF_ERROR(WriteEntry(&entry, &after));

  ASSIGN_OR_RETURN(DomainRecord record, LoadDomain(entry.domain()));
  DomainSchedule& schedule = *record.mutable_schedule();
  // Only a delivery attempt tells anything about the primary; a failed probe doubles the wait,
  // the first failure of an up domain starts it, and stragglers leased before the domain went
  // down change nothing (their failures are the same outage).
  if (entry.lease().disposition() == DISPOSITION_DELIVER) {
    if (!schedule.down()) {
      schedule.set_down(true);
      schedule.set_backoff_level(0);
      schedule.set_next_attempt_ms(now_ms_ + Backoff(0));
    } else if (entry.lease().probe()) {
      if (Backoff(schedule.backoff_level()) < Millis(machine_.options_.retry_max)) {
        schedule.set_backoff_level(schedule.backoff_level() + 1);
      }
      schedule.set_next_attempt_ms(now_ms_ + Backoff(schedule.backoff_level()));
    }
    schedule.set_last_error(retry.error());
    RETURN_IF_ERROR(StoreDomain(entry.domain(), record));
  }
  const int64_t domain_due = schedule.down() ? schedule.next_attempt_ms() : now_ms_;
  outcome.set_next_attempt_ms(std::max(domain_due, after.not_before_ms()));
  return absl::OkStatus();
}

absl::StatusOr<CompleteResult> QueueStateMachine::Txn::Complete(const CompleteEntries& request) {
  CompleteResult result;
  for (const CompletionItem& item : request.items()) {
    CompletionOutcome& outcome = *result.add_outcomes();
    outcome.set_id(item.id());
    if (item.outcome_case() == CompletionItem::OUTCOME_NOT_SET) {
      outcome.set_code(INVALID_ARGUMENT);
      continue;
    }
    ASSIGN_OR_RETURN(std::optional<StoredEntry> entry, LoadEntry(item.id()));
    if (!entry.has_value()) {
      outcome.set_code(NOT_FOUND);
      continue;
    }
    // A lease past its expiry is still honoured until a Lease command reclaims it: nobody else
    // holds the entry yet, and refusing would only cause a duplicate delivery.
    if (!entry->has_lease() || entry->lease().token() != item.lease_token()) {
      outcome.set_code(STALE_LEASE);
      continue;
    }
    switch (item.outcome_case()) {
      case CompletionItem::kDelivered: {
        RETURN_IF_ERROR(WriteEntry(&*entry, nullptr));
        if (entry->lease().disposition() == DISPOSITION_DELIVER) {
          // The primary took mail: the domain is up and its whole backlog is due now.
          ASSIGN_OR_RETURN(DomainRecord record, LoadDomain(entry->domain()));
          record.clear_schedule();
          RETURN_IF_ERROR(StoreDomain(entry->domain(), record));
        }
        break;
      }
      case CompletionItem::kBounced:
        RETURN_IF_ERROR(WriteEntry(&*entry, nullptr));
        break;
      case CompletionItem::kRetry:
        RETURN_IF_ERROR(Retry(*entry, item.retry(), outcome));
        break;
      case CompletionItem::OUTCOME_NOT_SET:
        break;
    }
    outcome.set_code(OK);
    if (!item.dsn().empty()) {
      ASSIGN_OR_RETURN(AppendResult dsn, Append(item.dsn(), Limits::kExempt));
      *outcome.mutable_dsn() = std::move(*dsn.mutable_outcomes());
    }
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Operator commands

absl::StatusOr<CommandResult> QueueStateMachine::Txn::Modify(
    const Selector& selector, const std::function<bool(StoredEntry&)>& change) {
  if (selector.ids().empty() && selector.domain().empty()) {
    return Refused(INVALID_ARGUMENT, "empty selector");
  }
  CommandResult result;
  SelectionResult& selection = *result.mutable_selection();
  ASSIGN_OR_RETURN(std::vector<StoredEntry> selected, Select(selector, selection));
  for (const StoredEntry& before : selected) {
    StoredEntry after = before;
    if (change(after)) {
      RETURN_IF_ERROR(WriteEntry(&before, &after));
      selection.set_affected(selection.affected() + 1);
    }
  }
  return result;
}

absl::StatusOr<CommandResult> QueueStateMachine::Txn::DeleteEntries(const Selector& selector) {
  if (selector.ids().empty() && selector.domain().empty()) {
    return Refused(INVALID_ARGUMENT, "empty selector");
  }
  CommandResult result;
  SelectionResult& selection = *result.mutable_selection();
  ASSIGN_OR_RETURN(std::vector<StoredEntry> selected, Select(selector, selection));
  for (const StoredEntry& entry : selected) {
    RETURN_IF_ERROR(WriteEntry(&entry, nullptr));
  }
  selection.set_affected(selected.size());
  return result;
}

// Makes the domain due now: a down domain gets its probe at once (and the shortest wait if it
// fails again), and entries waiting for a worker's retry-at are due too.
absl::StatusOr<CommandResult> QueueStateMachine::Txn::Flush(std::string_view domain) {
  ASSIGN_OR_RETURN(std::optional<DomainRecord> record, GetProto<DomainRecord>(cf_.domains, domain));
  if (!record.has_value()) {
    return Refused(NOT_FOUND, "no such domain");
  }
  if (record->schedule().down()) {
    record->mutable_schedule()->set_next_attempt_ms(now_ms_);
    record->mutable_schedule()->set_backoff_level(0);
    RETURN_IF_ERROR(StoreDomain(domain, *record));
  }
  Selector all;
  all.set_domain(std::string(domain));
  ASSIGN_OR_RETURN(CommandResult result, Modify(all, [](StoredEntry& entry) {
                     const bool changed = entry.not_before_ms() != 0;
                     entry.set_not_before_ms(0);
                     return changed;
                   }));
  return result;
}

absl::StatusOr<CommandResult> QueueStateMachine::Txn::PutDomain(const DomainSpec& spec,
                                                                Code if_exists, Code if_absent) {
  if (!ValidDomainName(spec.name())) {
    return Refused(INVALID_ARGUMENT, "invalid domain name");
  }
  ASSIGN_OR_RETURN(DomainRecord record, LoadDomain(spec.name()));
  const Code code = record.has_spec() ? if_exists : if_absent;
  if (code != OK) {
    return Refused(code, code == ALREADY_EXISTS ? "domain exists" : "no such domain");
  }
  *record.mutable_spec() = spec;
  RETURN_IF_ERROR(StoreDomain(spec.name(), record));
  CommandResult result;
  result.mutable_domain()->set_code(OK);
  return result;
}

// Removes the domain's configuration; mail already queued for it stays and is delivered,
// without limits.
absl::StatusOr<CommandResult> QueueStateMachine::Txn::RemoveDomain(std::string_view name) {
  ASSIGN_OR_RETURN(DomainRecord record, LoadDomain(name));
  if (!record.has_spec()) {
    return Refused(NOT_FOUND, "no such domain");
  }
  record.clear_spec();
  RETURN_IF_ERROR(StoreDomain(name, record));
  CommandResult result;
  result.mutable_domain()->set_code(OK);
  return result;
}

// ---------------------------------------------------------------------------------------------
// Ingest's checks

absl::StatusOr<GreylistResult> QueueStateMachine::Txn::Greylist(const GreylistCheck& check) {
  GreylistResult result;
  // The client network's record, as it stands after this check (auto_allow_after only).
  const std::string client_key = keys::GreylistClientKey(check.client_network());
  std::optional<GreylistRecord> client_stored;
  GreylistRecord client;
  if (check.auto_allow_after() > 0) {
    ASSIGN_OR_RETURN(client_stored, GetProto<GreylistRecord>(cf_.greylist, client_key));
    if (client_stored.has_value() && client_stored->expiry_ms() > now_ms_) {
      client = *client_stored;
    }
    if (client.passes() >= check.auto_allow_after()) {
      // Kept while the network keeps sending, like a passed triplet.
      client.set_expiry_ms(now_ms_ + check.pass_lifetime_duration_ms());
      RETURN_IF_ERROR(StoreGreylistRecord(client_key, client_stored, client));
      result.set_verdict(GreylistResult::PASS);
      result.set_client_allowed(true);
      *result.mutable_record() = client;
      RETURN_IF_ERROR(SweepGreylist());
      return result;
    }
  }

  const std::string key =
      keys::GreylistKey(check.client_network(), check.sender(), check.recipient());
  ASSIGN_OR_RETURN(std::optional<GreylistRecord> stored,
                   GetProto<GreylistRecord>(cf_.greylist, key));
  GreylistRecord record;
  if (stored.has_value() && stored->expiry_ms() > now_ms_) {
    record = *stored;
  } else {
    record.set_first_seen_ms(now_ms_);
    record.set_expiry_ms(now_ms_ + check.retry_window_duration_ms());
  }
  const int64_t passes_from = record.first_seen_ms() + check.delay_duration_ms();
  if (now_ms_ >= passes_from) {
    if (record.passes() == 0 && check.auto_allow_after() > 0) {
      // A triplet that waited out its delay: one more for its network.
      if (client.passes() == 0) {
        client.set_first_seen_ms(now_ms_);
      }
      client.set_passes(client.passes() + 1);
      client.set_expiry_ms(now_ms_ + check.pass_lifetime_duration_ms());
      RETURN_IF_ERROR(StoreGreylistRecord(client_key, client_stored, client));
    }
    record.set_passes(record.passes() + 1);
    record.set_expiry_ms(now_ms_ + check.pass_lifetime_duration_ms());
    result.set_verdict(GreylistResult::PASS);
  } else {
    // An early retry leaves the record alone: it does not restart the delay.
    result.set_verdict(GreylistResult::DEFER);
    result.set_retry_after_ms(passes_from);
  }
  RETURN_IF_ERROR(StoreGreylistRecord(key, stored, record));
  *result.mutable_record() = record;
  RETURN_IF_ERROR(SweepGreylist());
  return result;
}

// Writes `record` under `key` (and its expiry key) unless it is `stored` unchanged.
absl::Status QueueStateMachine::Txn::StoreGreylistRecord(
    const std::string& key, const std::optional<GreylistRecord>& stored,
    const GreylistRecord& record) {
  if (stored.has_value() && record.SerializeAsString() == stored->SerializeAsString()) {
    return absl::OkStatus();
  }
  if (stored.has_value()) {
    RETURN_IF_ERROR(Delete(cf_.greylist, keys::GreylistExpiryKey(stored->expiry_ms(), key)));
  }
  RETURN_IF_ERROR(Put(cf_.greylist, key, record.SerializeAsString()));
  return Put(cf_.greylist, keys::GreylistExpiryKey(record.expiry_ms(), key), "");
}

absl::Status QueueStateMachine::Txn::SweepGreylist() {
  ASSIGN_OR_RETURN(std::vector<std::string> expired,
                   ScanKeys(cf_.greylist, keys::GreylistExpiryPrefix(),
                            keys::GreylistExpiryUpperBound(now_ms_), kGreylistSweep));
  for (const std::string& expiry_key : expired) {
    const std::optional<std::string> key = keys::ParseGreylistExpiryKey(expiry_key);
    if (!key.has_value()) {
      return absl::DataLossError("malformed greylist expiry key");
    }
    RETURN_IF_ERROR(Delete(cf_.greylist, *key));
    RETURN_IF_ERROR(Delete(cf_.greylist, expiry_key));
  }
  return absl::OkStatus();
}

absl::StatusOr<google::protobuf::RepeatedPtrField<SessionCount>>
QueueStateMachine::Txn::CountSessions(
    const google::protobuf::RepeatedPtrField<std::string>& domains) {
  google::protobuf::RepeatedPtrField<SessionCount> counts;
  for (const std::string& domain : domains) {
    SessionCount& count = *counts.Add();
    count.set_domain(domain);
    ASSIGN_OR_RETURN(DomainRecord record, LoadDomain(domain));
    if (!record.has_spec()) {
      continue;  // not a relay domain: nothing to limit
    }
    RollPeriods(now_ms_, *record.mutable_usage());
    if (CountSession(record)) {
      RETURN_IF_ERROR(StoreDomain(domain, record));
    } else {
      count.set_over_limit(true);
    }
    count.set_sessions_today(record.usage().day_connections());
  }
  return counts;
}

// ---------------------------------------------------------------------------------------------
// QueueStateMachine

QueueStateMachine::QueueStateMachine(const StateMachineOptions& options, std::string dir)
    : options_(options), dir_(std::move(dir)) {}

QueueStateMachine::~QueueStateMachine() {
  CloseDatabase();
}

void QueueStateMachine::CloseDatabase() {
  for (rocksdb::ColumnFamilyHandle* handle : handles_) {
    db_->DestroyColumnFamilyHandle(handle);
  }
  handles_.clear();
  cf_ = {};
  if (db_ != nullptr) {
    db_->Close().PermitUncheckedError();
    db_.reset();
  }
}

absl::Status QueueStateMachine::CheckOpen() const {
  return db_ != nullptr ? absl::OkStatus()
                        : absl::UnavailableError("queue state machine is closed after a failure");
}

absl::StatusOr<std::unique_ptr<QueueStateMachine>> QueueStateMachine::Open(
    const std::string& dir, const StateMachineOptions& options) {
  // A snapshot install interrupted by a crash: back to the old database or on to the new one.
  RETURN_IF_ERROR(RecoverDirectorySwap(dir));
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::InternalError("create " + dir + ": " + error.message());
  }
  std::unique_ptr<QueueStateMachine> machine(new QueueStateMachine(options, dir));
  RETURN_IF_ERROR(machine->OpenDatabase());
  return machine;
}

namespace {

std::vector<rocksdb::ColumnFamilyDescriptor> FamilyDescriptors() {
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (size_t i = 0; i < std::size(kColumnFamilies); ++i) {
    rocksdb::ColumnFamilyOptions cf_options;
    if (i == kBodiesCf) {
      // Message bodies are large and written once: integrated BlobDB keeps them out of the LSM
      // tree so compactions move only small keys; garbage collection reclaims deleted ones.
      cf_options.enable_blob_files = true;
      cf_options.min_blob_size = 0;
      cf_options.enable_blob_garbage_collection = true;
    }
    descriptors.emplace_back(kColumnFamilies[i], cf_options);
  }
  return descriptors;
}

}  // namespace

absl::StatusOr<uint64_t> QueueStateMachine::AppliedIndexOf(const std::string& dir) {
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw_db = nullptr;
  RETURN_IF_ERROR(FromRocks(rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions(), dir,
                                                         FamilyDescriptors(), &handles, &raw_db),
                            "open " + dir + " read-only"));
  std::unique_ptr<rocksdb::DB> db(raw_db);
  std::string value;
  const rocksdb::Status read =
      db->Get(rocksdb::ReadOptions(), handles[0], std::string(keys::kAppliedIndex), &value);
  for (rocksdb::ColumnFamilyHandle* handle : handles) {
    db->DestroyColumnFamilyHandle(handle);
  }
  if (read.IsNotFound()) {
    return 0;
  }
  RETURN_IF_ERROR(FromRocks(read, "read the applied index of " + dir));
  const std::optional<uint64_t> index = keys::DecodeFixed64(value);
  if (!index.has_value()) {
    return absl::DataLossError("malformed applied index in " + dir);
  }
  return *index;
}

absl::Status QueueStateMachine::OpenDatabase() {
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  // After a crash the unsynced WAL tail may be torn: recover the longest consistent prefix of
  // whole batches (the applied index says which), and let Raft replay the rest.
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  rocksdb::DB* raw_db = nullptr;
  RETURN_IF_ERROR(
      FromRocks(rocksdb::DB::Open(db_options, dir_, FamilyDescriptors(), &handles_, &raw_db),
                "open " + dir_));
  db_.reset(raw_db);
  cf_ = {.meta = handles_[0],
         .domains = handles_[1],
         .entries = handles_[2],
         .bodies = handles_[3],
         .index = handles_[4],
         .greylist = handles_[5]};

  applied_index_.store(0);
  cluster_time_ms_ = 0;
  for (std::string_view key : {keys::kAppliedIndex, keys::kClusterTime}) {
    absl::StatusOr<std::string> value = ReadValue(cf_.meta, key);
    if (absl::IsNotFound(value.status())) {
      continue;
    }
    RETURN_IF_ERROR(value.status());
    const std::optional<uint64_t> number = keys::DecodeFixed64(*value);
    if (!number.has_value()) {
      return absl::DataLossError("malformed " + std::string(key) + " in " + dir_);
    }
    if (key == keys::kAppliedIndex) {
      applied_index_.store(*number);
    } else {
      cluster_time_ms_ = static_cast<int64_t>(*number);
    }
  }
  return absl::OkStatus();
}

absl::Status QueueStateMachine::ReplaceWith(const std::string& checkpoint_dir) {
  std::unique_lock lock(db_mutex_);
  CloseDatabase();
  RETURN_IF_ERROR(SwapInDirectory(checkpoint_dir, dir_));
  return OpenDatabase();
}

absl::StatusOr<CommandResult> QueueStateMachine::Apply(uint64_t index, absl::Time cluster_time,
                                                       const Command& command) {
  if (index <= applied_index()) {
    return Refused(DUPLICATE_INDEX, "log index already applied");
  }
  const int64_t now_ms = std::max(absl::ToUnixMillis(cluster_time), cluster_time_ms_);
  Txn txn(*this, index, now_ms);
  ASSIGN_OR_RETURN(CommandResult result, txn.Run(command));
  RETURN_IF_ERROR(txn.Commit());
  applied_index_.store(index, std::memory_order_release);
  cluster_time_ms_ = now_ms;
  return result;
}

absl::StatusOr<CommandResult> QueueStateMachine::Apply(uint64_t index, absl::Time cluster_time,
                                                       std::string_view command_bytes) {
  Command command;
  if (!command.ParseFromArray(command_bytes.data(), static_cast<int>(command_bytes.size()))) {
    // Still consume the index: a bad entry in the log must not wedge every replica.
    ASSIGN_OR_RETURN(CommandResult result, Apply(index, cluster_time, Command()));
    if (result.code() == OK) {
      result = Refused(INVALID_ARGUMENT, "unparsable command");
    }
    return result;
  }
  return Apply(index, cluster_time, command);
}

absl::StatusOr<std::string> QueueStateMachine::ReadValue(rocksdb::ColumnFamilyHandle* cf,
                                                         std::string_view key) const {
  std::string value;
  RETURN_IF_ERROR(FromRocks(db_->Get(rocksdb::ReadOptions(), cf, key, &value), "read"));
  return value;
}

absl::StatusOr<std::vector<DomainSummary>> QueueStateMachine::Summaries() const {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  rocksdb::ReadOptions read_options;
  read_options.snapshot = db_->GetSnapshot();
  std::vector<DomainSummary> summaries;
  std::unique_ptr<rocksdb::Iterator> domains(db_->NewIterator(read_options, cf_.domains));
  std::unique_ptr<rocksdb::Iterator> index(db_->NewIterator(read_options, cf_.index));
  absl::Status status;
  for (domains->SeekToFirst(); domains->Valid() && status.ok(); domains->Next()) {
    DomainRecord record;
    if (!record.ParseFromArray(domains->value().data(),
                               static_cast<int>(domains->value().size()))) {
      status = absl::DataLossError("unparsable domain record");
      break;
    }
    DomainSummary& summary = summaries.emplace_back();
    summary.set_domain(domains->key().ToString());
    summary.set_configured(record.has_spec());
    summary.set_queued_messages(record.usage().queued_messages());
    summary.set_queued_bytes(record.usage().queued_bytes());
    summary.set_held_messages(record.usage().held_messages());
    summary.set_leased_messages(record.usage().leased_messages());
    summary.set_down(record.schedule().down());
    summary.set_next_attempt_ms(record.schedule().next_attempt_ms());
    summary.set_backoff_level(record.schedule().backoff_level());
    summary.set_month_bytes(record.usage().month_bytes());
    summary.set_day_connections(record.usage().day_connections());
    const std::string prefix = keys::QueuePrefix(summary.domain());
    index->Seek(prefix);
    if (index->Valid() && index->key().starts_with(prefix)) {
      const keys::IndexKey oldest = *keys::ParseQueueKey(index->key().ToStringView());
      summary.set_oldest_enqueue_ms(oldest.time_ms);
      std::string value;
      status = FromRocks(db_->Get(read_options, cf_.entries, oldest.id, &value), "read");
      StoredEntry entry;
      if (status.ok() && entry.ParseFromString(value)) {
        summary.set_oldest_arrival_ms(entry.envelope().arrival_ms());
      }
    }
  }
  if (status.ok()) {
    status = FromRocks(domains->status(), "domain scan");
  }
  domains.reset();
  index.reset();
  db_->ReleaseSnapshot(read_options.snapshot);
  RETURN_IF_ERROR(status);
  return summaries;
}

absl::StatusOr<ListEntriesResponse> QueueStateMachine::ListEntries(
    const ListEntriesRequest& request) const {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  if (!ValidDomainName(request.domain())) {
    return absl::InvalidArgumentError("list entries of which domain?");
  }
  const std::string prefix = keys::QueuePrefix(request.domain());
  if (!request.page_token().empty() && !request.page_token().starts_with(prefix)) {
    return absl::InvalidArgumentError("page token of another listing");
  }
  const uint32_t page_size = request.page_size() == 0 ? kDefaultPageSize : request.page_size();
  rocksdb::ReadOptions read_options;
  read_options.snapshot = db_->GetSnapshot();
  ListEntriesResponse response;
  absl::Status status;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, cf_.index));
    for (it->Seek(request.page_token().empty() ? prefix : request.page_token());
         it->Valid() && it->key().starts_with(prefix) && status.ok(); it->Next()) {
      if (static_cast<uint32_t>(response.entries_size()) == page_size) {
        response.set_next_page_token(it->key().ToString());
        break;
      }
      std::string value;
      status = FromRocks(db_->Get(read_options, cf_.entries,
                                  keys::ParseQueueKey(it->key().ToStringView())->id, &value),
                         "read");
      if (status.ok() && !response.add_entries()->ParseFromString(value)) {
        status = absl::DataLossError("unparsable entry");
      }
    }
    if (status.ok()) {
      status = FromRocks(it->status(), "entry scan");
    }
  }
  db_->ReleaseSnapshot(read_options.snapshot);
  RETURN_IF_ERROR(status);
  return response;
}

absl::StatusOr<StoredEntry> QueueStateMachine::GetEntry(const MessageId& id) const {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  ASSIGN_OR_RETURN(std::string value, ReadValue(cf_.entries, id.bytes()));
  StoredEntry entry;
  if (!entry.ParseFromString(value)) {
    return absl::DataLossError("unparsable entry " + id.ToString());
  }
  return entry;
}

absl::StatusOr<std::string> QueueStateMachine::ReadMessage(const MessageId& id) const {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  return ReadValue(cf_.bodies, id.bytes());
}

absl::StatusOr<DomainRecord> QueueStateMachine::GetDomain(std::string_view name) const {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  ASSIGN_OR_RETURN(std::string value, ReadValue(cf_.domains, name));
  DomainRecord record;
  if (!record.ParseFromString(value)) {
    return absl::DataLossError("unparsable domain record");
  }
  return record;
}

absl::StatusOr<GreylistRecord> QueueStateMachine::GetGreylist(std::string_view client_network,
                                                              std::string_view sender,
                                                              std::string_view recipient) const {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  ASSIGN_OR_RETURN(std::string value,
                   ReadValue(cf_.greylist, keys::GreylistKey(client_network, sender, recipient)));
  GreylistRecord record;
  if (!record.ParseFromString(value)) {
    return absl::DataLossError("unparsable greylist record");
  }
  return record;
}

absl::StatusOr<std::map<uint64_t, std::string>> QueueStateMachine::Members() const {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  std::map<uint64_t, std::string> members;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_.meta));
  for (it->Seek(kMemberPrefix); it->Valid() && it->key().starts_with(kMemberPrefix); it->Next()) {
    const std::optional<uint64_t> id =
        keys::DecodeFixed64(it->key().ToStringView().substr(kMemberPrefix.size()));
    if (!id.has_value()) {
      return absl::DataLossError("malformed member key");
    }
    members[*id] = it->value().ToString();
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "member scan"));
  return members;
}

absl::StatusOr<uint64_t> QueueStateMachine::ContentDigest() const {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  constexpr uint64_t kFnvPrime = 0x100000001b3ULL;
  uint64_t digest = 0xcbf29ce484222325ULL;
  const auto mix = [&digest](std::string_view bytes) {
    const std::string length = keys::EncodeFixed64(bytes.size());
    for (std::string_view part : {std::string_view(length), bytes}) {
      for (char c : part) {
        digest = (digest ^ static_cast<uint8_t>(c)) * kFnvPrime;
      }
    }
  };
  rocksdb::ReadOptions read_options;
  read_options.snapshot = db_->GetSnapshot();
  absl::Status status;
  for (size_t i = 0; i < handles_.size() && status.ok(); ++i) {
    mix(kColumnFamilies[i]);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, handles_[i]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      mix(it->key().ToStringView());
      mix(it->value().ToStringView());
    }
    status = FromRocks(it->status(), "digest scan");
  }
  db_->ReleaseSnapshot(read_options.snapshot);
  RETURN_IF_ERROR(status);
  return digest;
}

absl::Status QueueStateMachine::CheckInvariants() const {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  rocksdb::ReadOptions read_options;
  read_options.snapshot = db_->GetSnapshot();
  const auto check = [&]() -> absl::Status {
    std::map<std::string, DomainUsage> expected;  // counters recomputed from the entries
    size_t index_keys = 0;
    size_t entries = 0;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, cf_.entries));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      ++entries;
      StoredEntry entry;
      if (!entry.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return absl::InternalError("unparsable entry");
      }
      const std::string id = MessageId::FromBytes(entry.id()).value_or(MessageId()).ToString();
      for (const std::string& key : IndexKeysOf(entry)) {
        ++index_keys;
        std::string unused;
        if (!db_->Get(read_options, cf_.index, key, &unused).ok()) {
          return absl::InternalError("entry " + id + " misses an index key");
        }
      }
      std::string body;
      if (!db_->Get(read_options, cf_.bodies, entry.id(), &body).ok() ||
          body.size() != entry.message_size()) {
        return absl::InternalError("entry " + id + " has no message bytes of its size");
      }
      RETURN_IF_ERROR(ApplyContribution(nullptr, &entry, expected[entry.domain()]));
    }
    RETURN_IF_ERROR(FromRocks(it->status(), "entry scan"));

    const auto count_keys = [&](rocksdb::ColumnFamilyHandle* cf) {
      size_t count = 0;
      std::unique_ptr<rocksdb::Iterator> keys_it(db_->NewIterator(read_options, cf));
      for (keys_it->SeekToFirst(); keys_it->Valid(); keys_it->Next()) {
        ++count;
      }
      return count;
    };
    if (count_keys(cf_.index) != index_keys) {
      return absl::InternalError("the index holds keys of no entry");
    }
    if (count_keys(cf_.bodies) != entries) {
      return absl::InternalError("message bytes of no entry");
    }

    std::unique_ptr<rocksdb::Iterator> domains(db_->NewIterator(read_options, cf_.domains));
    for (domains->SeekToFirst(); domains->Valid(); domains->Next()) {
      DomainRecord record;
      if (!record.ParseFromArray(domains->value().data(),
                                 static_cast<int>(domains->value().size()))) {
        return absl::InternalError("unparsable domain record");
      }
      DomainUsage counters = record.usage();
      for (DomainUsage* usage : {&counters, &expected[domains->key().ToString()]}) {
        usage->clear_month();
        usage->clear_month_bytes();
        usage->clear_day();
        usage->clear_day_connections();
      }
      if (counters.SerializeAsString() != expected[domains->key().ToString()].SerializeAsString()) {
        return absl::InternalError("counters of " + domains->key().ToString() +
                                   " disagree with its entries");
      }
      expected.erase(domains->key().ToString());
    }
    if (!expected.empty()) {
      return absl::InternalError("entries of " + expected.begin()->first + " have no domain");
    }
    return FromRocks(domains->status(), "domain scan");
  };
  const absl::Status status = check();
  db_->ReleaseSnapshot(read_options.snapshot);
  return status;
}

absl::Status QueueStateMachine::CreateCheckpoint(const std::string& dir) const {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  rocksdb::Checkpoint* raw = nullptr;
  RETURN_IF_ERROR(FromRocks(rocksdb::Checkpoint::Create(db_.get(), &raw), "checkpoint"));
  std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  // log_size_for_flush = 0 flushes the memtables first, so the copy holds no WAL to replay.
  return FromRocks(checkpoint->CreateCheckpoint(dir, /*log_size_for_flush=*/0),
                   "checkpoint into " + dir);
}

absl::Status QueueStateMachine::StartFlush() {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  rocksdb::FlushOptions options;
  options.wait = false;
  options.allow_write_stall = true;  // never wait on this (Raft) thread
  return FromRocks(db_->Flush(options, handles_), "start a flush");
}

absl::StatusOr<bool> QueueStateMachine::FlushPending() const {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  for (rocksdb::ColumnFamilyHandle* handle : handles_) {
    uint64_t immutable = 0;
    if (!db_->GetIntProperty(handle, rocksdb::DB::Properties::kNumImmutableMemTable, &immutable)) {
      return absl::InternalError("RocksDB has no immutable memtable count");
    }
    if (immutable > 0) {
      return true;
    }
  }
  return false;
}

absl::Status QueueStateMachine::InstallCheckpoint(const std::string& checkpoint_dir,
                                                  const std::string& db_dir) {
  return SwapInDirectory(checkpoint_dir, db_dir);
}

absl::StatusOr<RocksDbHealth> QueueStateMachine::Health() const {
  std::shared_lock lock(db_mutex_);
  RETURN_IF_ERROR(CheckOpen());
  return ReadRocksDbHealth(*db_);
}

}  // namespace backstop::queue
