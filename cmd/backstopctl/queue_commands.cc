// `backstopctl queue …`: inspect queued mail and act on it (hold, release, delete, bounce).

#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "absl/strings/ascii.h"
#include "cmd/backstopctl/commands.h"
#include "common/units.h"
#include "queue/message_id.h"

namespace backstop::ctl {
namespace {

// Ids per Hold/Release/Delete/Bounce call when acting on a client-side selection: one Raft
// entry each, well below the gRPC message limit.
constexpr size_t kIdsPerCall = 500;

// A stored entry as JSON, its id as 32 hex digits (not base64).
std::string EntryJson(const queue::StoredEntry& entry) {
  google::protobuf::Struct document;
  (void)google::protobuf::util::JsonStringToMessage(ProtoJson(entry), &document);
  (*document.mutable_fields())["id"].set_string_value(IdText(entry.id()));
  return ProtoJson(document);
}

std::string EntriesJson(const std::vector<queue::StoredEntry>& entries) {
  std::string json = "[";
  for (size_t i = 0; i < entries.size(); ++i) {
    json += (i ? "," : "") + EntryJson(entries[i]);
  }
  return json + "]";
}

std::string IdsJson(const std::vector<std::string>& ids) {
  std::string json = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    json += i ? "," : "";
    AppendJson(json, ids[i]);
  }
  return json + "]";
}

std::string EntryState(const queue::StoredEntry& entry) {
  if (entry.bounce_requested()) {
    return "bounce";
  }
  if (entry.has_lease()) {
    return "leased";
  }
  return entry.held() ? "held" : "queued";
}

void PrintEntryTable(const std::vector<queue::StoredEntry>& entries) {
  std::cout << fmt::format("{:<32}  {:<24}  {:<6}  {:>9}  {:<19}  {}\n", "ID", "DOMAIN", "STATE",
                           "SIZE", "QUEUED", "FROM");
  for (const queue::StoredEntry& entry : entries) {
    std::cout << fmt::format("{:<32}  {:<24}  {:<6}  {:>9}  {:<19}  <{}>\n", IdText(entry.id()),
                             entry.domain(), EntryState(entry), entry.message_size(),
                             Millis(entry.enqueue_ms()), entry.envelope().reverse_path());
  }
}

// Every entry of `domain`, page by page; false when a call failed.
bool ListDomain(AdminClient& client, const std::string& domain,
                std::vector<queue::StoredEntry>* entries) {
  queue::ListEntriesRequest request;
  request.set_domain(domain);
  request.set_page_size(1000);
  while (true) {
    queue::ListEntriesResponse response;
    if (!client.Call(&admin::AdminService::Stub::ListEntries, request, &response)) {
      return false;
    }
    for (const queue::StoredEntry& entry : response.entries()) {
      entries->push_back(entry);
    }
    if (response.next_page_token().empty()) {
      return true;
    }
    request.set_page_token(response.next_page_token());
  }
}

// Every entry of `domain`, or of every domain with mail queued when `domain` is empty.
bool ListEntries(AdminClient& client, const std::string& domain,
                 std::vector<queue::StoredEntry>* entries) {
  if (!domain.empty()) {
    return ListDomain(client, absl::AsciiStrToLower(domain), entries);
  }
  admin::QueueSummaryResponse summary;
  if (!client.Call(&admin::AdminService::Stub::QueueSummary, admin::QueueSummaryRequest(),
                   &summary)) {
    return false;
  }
  for (const queue::DomainSummary& each : summary.domains()) {
    if (each.queued_messages() > 0 && !ListDomain(client, each.domain(), entries)) {
      return false;
    }
  }
  return true;
}

int List(const Options& options, const std::string& domain) {
  AdminClient client(options);
  std::vector<queue::StoredEntry> entries;
  if (!ListEntries(client, domain, &entries)) {
    return kExitFailure;
  }
  if (options.json()) {
    std::cout << EntriesJson(entries) << "\n";
  } else {
    PrintEntryTable(entries);
  }
  return kExitOk;
}

int Show(const Options& options, const std::string& id_text, bool with_message) {
  absl::StatusOr<queue::MessageId> id = queue::MessageId::FromString(id_text);
  if (!id.ok()) {
    PrintError(std::string(id.status().message()));
    return kExitUsage;
  }
  AdminClient client(options);
  admin::ShowEntryRequest request;
  request.set_id(std::string(id->bytes()));
  request.set_with_message(with_message);
  admin::ShowEntryResponse response;
  if (!client.Call(&admin::AdminService::Stub::ShowEntry, request, &response)) {
    return kExitFailure;
  }
  if (options.json()) {
    std::string json = "{\"entry\":" + EntryJson(response.entry());
    if (with_message) {
      json += ",\"message\":";
      AppendJson(json, response.message());
    }
    std::cout << json << "}\n";
    return kExitOk;
  }
  const queue::StoredEntry& entry = response.entry();
  const queue::Envelope& envelope = entry.envelope();
  std::cout << fmt::format("id:         {}\ndomain:     {}\nstate:      {}\nfrom:       <{}>\n",
                           IdText(entry.id()), entry.domain(), EntryState(entry),
                           envelope.reverse_path());
  for (const queue::Recipient& recipient : envelope.recipients()) {
    std::cout << fmt::format("to:         <{}>\n", recipient.address());
  }
  std::cout << fmt::format(
      "size:       {}\nqueued:     {}\nclient:     {} ({})\nattempts:   {}\nlast error: {}\n",
      entry.message_size(), Millis(entry.enqueue_ms()), envelope.client_ip(), envelope.helo(),
      entry.attempts(), entry.last_error().empty() ? "-" : entry.last_error());
  if (with_message) {
    std::cout << "\n" << response.message();
  }
  return kExitOk;
}

int Summary(const Options& options) {
  AdminClient client(options);
  admin::QueueSummaryResponse response;
  if (!client.Call(&admin::AdminService::Stub::QueueSummary, admin::QueueSummaryRequest(),
                   &response)) {
    return kExitFailure;
  }
  if (options.json()) {
    std::cout << ProtoJson(response) << "\n";
    return kExitOk;
  }
  std::cout << fmt::format("{:<24}  {:>8}  {:>12}  {:>6}  {:>6}  {:<5}  {}\n", "DOMAIN", "QUEUED",
                           "BYTES", "HELD", "LEASED", "DOWN", "OLDEST");
  for (const queue::DomainSummary& domain : response.domains()) {
    std::cout << fmt::format("{:<24}  {:>8}  {:>12}  {:>6}  {:>6}  {:<5}  {}\n", domain.domain(),
                             domain.queued_messages(), domain.queued_bytes(),
                             domain.held_messages(), domain.leased_messages(),
                             domain.down() ? "yes" : "no", Millis(domain.oldest_enqueue_ms()));
  }
  return kExitOk;
}

// Makes every entry of `domain` due now (the domain's backoff is cleared too).
int Flush(const Options& options, const std::string& domain) {
  AdminClient client(options);
  queue::FlushDomain request;
  request.set_domain(domain);
  queue::SelectionResult response;
  if (!client.Call(&admin::AdminService::Stub::Flush, request, &response)) {
    return kExitFailure;
  }
  if (options.json()) {
    std::cout << ProtoJson(response) << "\n";
  } else {
    // `affected` counts only entries that had a retry time of their own, not those that waited
    // for the domain's backoff: both are due now.
    std::cout << fmt::format("{}: due now\n", domain);
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------
// hold / release / delete / bounce

enum class Action { kHold, kRelease, kDelete, kBounce };

struct ActionFlags {
  std::vector<std::string> ids;
  std::string domain;
  std::string older_than;
  bool yes = false;
  bool dry_run = false;
  std::string reason;
};

const char* ActionName(Action action) {
  switch (action) {
    case Action::kHold:
      return "hold";
    case Action::kRelease:
      return "release";
    case Action::kDelete:
      return "delete";
    case Action::kBounce:
      return "bounce";
  }
  return "?";
}

const char* ActionDone(Action action) {
  switch (action) {
    case Action::kHold:
      return "held";
    case Action::kRelease:
      return "released";
    case Action::kDelete:
      return "deleted";
    case Action::kBounce:
      return "set to bounce";
  }
  return "?";
}

// One call of `action` on `selector`; adds to `result`.
bool Act(AdminClient& client, Action action, const queue::Selector& selector,
         const std::string& reason, queue::SelectionResult* result) {
  queue::SelectionResult response;
  bool ok = false;
  switch (action) {
    case Action::kHold: {
      queue::HoldEntries request;
      *request.mutable_selector() = selector;
      ok = client.Call(&admin::AdminService::Stub::Hold, request, &response);
      break;
    }
    case Action::kRelease: {
      queue::ReleaseEntries request;
      *request.mutable_selector() = selector;
      ok = client.Call(&admin::AdminService::Stub::Release, request, &response);
      break;
    }
    case Action::kDelete: {
      queue::DeleteEntries request;
      *request.mutable_selector() = selector;
      ok = client.Call(&admin::AdminService::Stub::Delete, request, &response);
      break;
    }
    case Action::kBounce: {
      queue::BounceEntries request;
      *request.mutable_selector() = selector;
      request.set_reason(reason);
      ok = client.Call(&admin::AdminService::Stub::Bounce, request, &response);
      break;
    }
  }
  if (ok) {
    result->set_affected(result->affected() + response.affected());
    for (const std::string& id : response.not_found()) {
      result->add_not_found(id);
    }
  }
  return ok;
}

// What an action would touch: the entries found, and the ids asked for that are not queued.
struct Selection {
  std::vector<queue::StoredEntry> entries;
  std::vector<std::string> not_found;  // 32 hex digits
};

// Looks each id up, for a dry run or a confirmation of an action by ids.
bool LookUp(AdminClient& client, const std::vector<queue::MessageId>& ids, Selection* selection) {
  for (const queue::MessageId& id : ids) {
    admin::ShowEntryRequest request;
    request.set_id(std::string(id.bytes()));
    admin::ShowEntryResponse response;
    if (client.Call(&admin::AdminService::Stub::ShowEntry, request, &response, absl::ZeroDuration(),
                    AdminClient::OnError::kQuiet)) {
      selection->entries.push_back(response.entry());
    } else if (client.last_status().error_code() == grpc::StatusCode::NOT_FOUND) {
      selection->not_found.push_back(id.ToString());
    } else {
      client.ReportLast();
      return false;
    }
  }
  return true;
}

void PrintSelection(const Options& options, Action action, const Selection& selection) {
  if (options.json()) {
    std::cout << fmt::format(R"({{"action":"{}","executed":false,"entries":{},"not_found":{}}})",
                             ActionName(action), EntriesJson(selection.entries),
                             IdsJson(selection.not_found))
              << "\n";
    return;
  }
  std::cout << fmt::format("would {} {} entries:\n", ActionName(action), selection.entries.size());
  PrintEntryTable(selection.entries);
  for (const std::string& id : selection.not_found) {
    std::cout << fmt::format("not queued: {}\n", id);
  }
}

int RunAction(const Options& options, Action action, const ActionFlags& flags) {
  const bool by_ids = !flags.ids.empty();
  const bool by_filter = !flags.domain.empty() || !flags.older_than.empty();
  // Entries are stored under the lower-cased destination domain.
  const std::string domain = absl::AsciiStrToLower(flags.domain);
  if (by_ids == by_filter) {
    PrintError(
        fmt::format("{}: give message ids, or --domain and/or --older-than", ActionName(action)));
    return kExitUsage;
  }
  std::vector<queue::MessageId> ids;
  for (const std::string& text : flags.ids) {
    absl::StatusOr<queue::MessageId> id = queue::MessageId::FromString(text);
    if (!id.ok()) {
      PrintError(fmt::format("{}: {}", text, std::string(id.status().message())));
      return kExitUsage;
    }
    ids.push_back(*id);
  }
  std::optional<absl::Duration> older_than;
  if (!flags.older_than.empty()) {
    absl::StatusOr<absl::Duration> age = ParseDuration(flags.older_than);
    if (!age.ok()) {
      PrintError(fmt::format("--older-than {}: {}", flags.older_than,
                             std::string(age.status().message())));
      return kExitUsage;
    }
    older_than = *age;
  }
  // Delete and bounce cannot be undone; a selection by domain or age may be large.
  const bool needs_yes = action == Action::kDelete || action == Action::kBounce || by_filter;
  const bool must_list = flags.dry_run || (needs_yes && !flags.yes) || older_than.has_value();

  AdminClient client(options);
  Selection selection;
  if (must_list) {
    if (by_ids) {
      if (!LookUp(client, ids, &selection)) {
        return kExitFailure;
      }
    } else {
      std::vector<queue::StoredEntry> entries;
      if (!ListEntries(client, domain, &entries)) {
        return kExitFailure;
      }
      // Enqueue times are the cluster's clock (the leader's), this host's clock is compared.
      const int64_t cutoff_ms =
          older_than ? absl::ToUnixMillis(absl::Now() - *older_than) : INT64_MAX;
      for (queue::StoredEntry& entry : entries) {
        if (entry.enqueue_ms() <= cutoff_ms) {
          selection.entries.push_back(std::move(entry));
        }
      }
    }
  }
  if (flags.dry_run) {
    PrintSelection(options, action, selection);
    return kExitOk;
  }
  if (needs_yes && !flags.yes) {
    PrintSelection(options, action, selection);
    PrintError(fmt::format("{} selects {} entries; nothing done without --yes", ActionName(action),
                           selection.entries.size()));
    return kExitUsage;
  }

  queue::SelectionResult result;
  if (!older_than.has_value() && !by_ids) {
    // The whole domain, selected when the command is applied: nothing queued meanwhile escapes.
    queue::Selector selector;
    selector.set_domain(domain);
    if (!Act(client, action, selector, flags.reason, &result)) {
      return kExitFailure;
    }
  } else {
    std::vector<std::string> chosen;
    if (by_ids) {
      for (const queue::MessageId& id : ids) {
        chosen.emplace_back(id.bytes());
      }
    } else {
      for (const queue::StoredEntry& entry : selection.entries) {
        chosen.push_back(entry.id());
      }
    }
    for (size_t begin = 0; begin < chosen.size(); begin += kIdsPerCall) {
      queue::Selector selector;
      const size_t end = std::min(chosen.size(), begin + kIdsPerCall);
      for (size_t i = begin; i < end; ++i) {
        selector.add_ids(chosen[i]);
      }
      if (!Act(client, action, selector, flags.reason, &result)) {
        return kExitFailure;
      }
    }
  }
  std::vector<std::string> not_found;
  for (const std::string& id : result.not_found()) {
    not_found.push_back(IdText(id));
  }
  if (options.json()) {
    std::cout << fmt::format(R"({{"action":"{}","executed":true,"affected":{},"not_found":{}}})",
                             ActionName(action), result.affected(), IdsJson(not_found))
              << "\n";
  } else {
    std::cout << fmt::format("{} entries {}\n", result.affected(), ActionDone(action));
    for (const std::string& id : not_found) {
      std::cout << fmt::format("not queued: {}\n", id);
    }
  }
  return kExitOk;
}

void AddAction(CLI::App& queue, const Options& options, Action action, const char* description,
               std::vector<Command>* commands) {
  // Shared by CLI11's bindings, which fill it while parsing, and the run closure.
  auto flags = std::make_shared<ActionFlags>();
  CLI::App* command = queue.add_subcommand(ActionName(action), description);
  command->add_option("ids", flags->ids, "Message ids (32 hex digits)");
  command->add_option("--domain", flags->domain, "Every entry of this destination domain");
  command->add_option("--older-than", flags->older_than,
                      "Only entries queued longer ago than this (e.g. 2h, 3d)");
  command->add_flag("--yes", flags->yes, "Confirm a delete, a bounce, or a selection by filter");
  command->add_flag("--dry-run", flags->dry_run, "List what would be affected; change nothing");
  if (action == Action::kBounce) {
    command->add_option("--reason", flags->reason, "Text for the delivery status notification");
  }
  commands->push_back(
      {command, [&options, action, flags] { return RunAction(options, action, *flags); }});
}

}  // namespace

void AddQueueCommands(CLI::App& app, const Options& options, std::vector<Command>* commands) {
  // Shared by CLI11's bindings, which fill it while parsing, and the run closures below.
  struct Flags {
    std::string domain;
    std::string id;
    bool with_message = false;
  };
  auto flags = std::make_shared<Flags>();

  CLI::App* queue = app.add_subcommand("queue", "Inspect and manage queued mail");
  queue->require_subcommand(1);
  CLI::App* list = queue->add_subcommand("list", "List queued entries");
  list->add_option("--domain", flags->domain, "Only this destination domain");
  commands->push_back({list, [&options, flags] { return List(options, flags->domain); }});

  CLI::App* show = queue->add_subcommand("show", "Show one entry");
  show->add_option("id", flags->id, "Message id (32 hex digits)")->required();
  show->add_flag("--message", flags->with_message, "Include the message bytes");
  commands->push_back(
      {show, [&options, flags] { return Show(options, flags->id, flags->with_message); }});

  commands->push_back({queue->add_subcommand("summary", "Queue depth per domain"),
                       [&options] { return Summary(options); }});

  CLI::App* flush = queue->add_subcommand("flush", "Make a domain's entries due now");
  flush->add_option("domain", flags->domain, "Destination domain")->required();
  commands->push_back({flush, [&options, flags] { return Flush(options, flags->domain); }});

  AddAction(*queue, options, Action::kHold, "Keep entries from delivery until released", commands);
  AddAction(*queue, options, Action::kRelease, "Let held entries be delivered again", commands);
  AddAction(*queue, options, Action::kDelete, "Remove entries without a bounce (needs --yes)",
            commands);
  AddAction(*queue, options, Action::kBounce,
            "Return entries to their senders with a DSN (needs --yes)", commands);
}

}  // namespace backstop::ctl
