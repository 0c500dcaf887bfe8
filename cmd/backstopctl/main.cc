// backstopctl — the operator's command line for the queue's AdminService (DESIGN §3.5).
//
// Global flags work before or after the subcommand. The endpoint is --endpoint HOST:PORT, else
// $BACKSTOP_ENDPOINT, else 127.0.0.1:7025. Output is a table, or JSON with -o json.

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "common/log.h"
#include "proto/admin.grpc.pb.h"
#include "queue/message_id.h"
#include "queue/queue_client.h"

namespace backstop::ctl {
namespace {

constexpr int kExitFailure = 1;

struct Options {
  std::string endpoint;
  std::string output = "table";
  absl::Duration timeout = absl::Seconds(10);
};

std::string Endpoint(const Options& options) {
  if (!options.endpoint.empty()) {
    return options.endpoint;
  }
  if (const char* env = std::getenv("BACKSTOP_ENDPOINT"); env != nullptr && *env != '\0') {
    return env;
  }
  return "127.0.0.1:7025";
}

std::unique_ptr<admin::AdminService::Stub> Connect(const Options& options) {
  return admin::AdminService::NewStub(grpc::CreateCustomChannel(
      Endpoint(options), grpc::InsecureChannelCredentials(), queue::QueueChannelArguments()));
}

// Runs one call; prints the error and returns false when it failed.
template <typename Call>
bool Invoke(const Options& options, Call call) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
  const grpc::Status status = call(&context);
  if (status.ok()) {
    return true;
  }
  std::string leader;
  const auto& trailers = context.GetServerTrailingMetadata();
  if (const auto it = trailers.find("backstop-leader"); it != trailers.end()) {
    leader = fmt::format(" (the leader is {})", std::string(it->second.data(), it->second.size()));
  }
  std::cerr << fmt::format("backstopctl: {}: {}{}\n", Endpoint(options), status.error_message(),
                           leader);
  return false;
}

std::string ProtoJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, print);
  return json;
}

std::string IdText(const std::string& bytes) {
  absl::StatusOr<queue::MessageId> id = queue::MessageId::FromBytes(bytes);
  return id.ok() ? id->ToString() : "?";
}

// A stored entry as JSON, its id as the 32 hex digits operators use (not base64).
std::string EntryJson(const queue::StoredEntry& entry) {
  queue::StoredEntry copy = entry;
  copy.clear_id();
  const std::string rest = ProtoJson(copy);
  std::string json = "{\"id\":";
  log::AppendJsonString(json, IdText(entry.id()));
  if (rest.size() > 2) {
    json += "," + rest.substr(1);
  } else {
    json += "}";
  }
  return json;
}

std::string Millis(int64_t ms) {
  if (ms == 0) {
    return "-";
  }
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(ms), absl::UTCTimeZone());
}

// Every entry of `domain`, page by page; false when a call failed.
bool ListDomain(const Options& options, admin::AdminService::Stub& stub, const std::string& domain,
                std::vector<queue::StoredEntry>* entries) {
  queue::ListEntriesRequest request;
  request.set_domain(domain);
  request.set_page_size(1000);
  while (true) {
    queue::ListEntriesResponse response;
    if (!Invoke(options, [&](grpc::ClientContext* context) {
          return stub.ListEntries(context, request, &response);
        })) {
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

int QueueList(const Options& options, const std::string& domain) {
  auto stub = Connect(options);
  std::vector<std::string> domains;
  if (!domain.empty()) {
    domains.push_back(domain);
  } else {
    admin::QueueSummaryResponse summary;
    if (!Invoke(options, [&](grpc::ClientContext* context) {
          return stub->QueueSummary(context, admin::QueueSummaryRequest(), &summary);
        })) {
      return kExitFailure;
    }
    for (const queue::DomainSummary& each : summary.domains()) {
      if (each.queued_messages() > 0) {
        domains.push_back(each.domain());
      }
    }
  }
  std::vector<queue::StoredEntry> entries;
  for (const std::string& each : domains) {
    if (!ListDomain(options, *stub, each, &entries)) {
      return kExitFailure;
    }
  }
  if (options.output == "json") {
    std::string json = "[";
    for (size_t i = 0; i < entries.size(); ++i) {
      json += (i ? "," : "") + EntryJson(entries[i]);
    }
    std::cout << json << "]\n";
    return 0;
  }
  std::cout << fmt::format("{:<32}  {:<24}  {:>9}  {:<19}  {}\n", "ID", "DOMAIN", "SIZE", "QUEUED",
                           "FROM");
  for (const queue::StoredEntry& entry : entries) {
    std::cout << fmt::format("{:<32}  {:<24}  {:>9}  {:<19}  <{}>\n", IdText(entry.id()),
                             entry.domain(), entry.message_size(), Millis(entry.enqueue_ms()),
                             entry.envelope().reverse_path());
  }
  return 0;
}

int QueueShow(const Options& options, const std::string& id_text, bool with_message) {
  absl::StatusOr<queue::MessageId> id = queue::MessageId::FromString(id_text);
  if (!id.ok()) {
    std::cerr << "backstopctl: " << id.status().message() << "\n";
    return kExitFailure;
  }
  auto stub = Connect(options);
  admin::ShowEntryRequest request;
  request.set_id(std::string(id->bytes()));
  request.set_with_message(with_message);
  admin::ShowEntryResponse response;
  if (!Invoke(options, [&](grpc::ClientContext* context) {
        return stub->ShowEntry(context, request, &response);
      })) {
    return kExitFailure;
  }
  if (options.output == "json") {
    std::string json = "{\"entry\":" + EntryJson(response.entry());
    if (with_message) {
      json += ",\"message\":";
      log::AppendJsonString(json, response.message());
    }
    std::cout << json << "}\n";
    return 0;
  }
  const queue::StoredEntry& entry = response.entry();
  const queue::Envelope& envelope = entry.envelope();
  std::cout << fmt::format("id:        {}\ndomain:    {}\nfrom:      <{}>\n", IdText(entry.id()),
                           entry.domain(), envelope.reverse_path());
  for (const queue::Recipient& recipient : envelope.recipients()) {
    std::cout << fmt::format("to:        <{}>\n", recipient.address());
  }
  std::cout << fmt::format(
      "size:      {}\nqueued:    {}\nclient:    {} ({})\nattempts:  {}\nlast error: {}\n",
      entry.message_size(), Millis(entry.enqueue_ms()), envelope.client_ip(), envelope.helo(),
      entry.attempts(), entry.last_error().empty() ? "-" : entry.last_error());
  if (with_message) {
    std::cout << "\n" << response.message();
  }
  return 0;
}

int QueueSummary(const Options& options) {
  auto stub = Connect(options);
  admin::QueueSummaryResponse response;
  if (!Invoke(options, [&](grpc::ClientContext* context) {
        return stub->QueueSummary(context, admin::QueueSummaryRequest(), &response);
      })) {
    return kExitFailure;
  }
  if (options.output == "json") {
    std::cout << ProtoJson(response) << "\n";
    return 0;
  }
  std::cout << fmt::format("{:<24}  {:>8}  {:>12}  {:>6}  {:>6}  {:<5}  {}\n", "DOMAIN", "QUEUED",
                           "BYTES", "HELD", "LEASED", "DOWN", "OLDEST");
  for (const queue::DomainSummary& domain : response.domains()) {
    std::cout << fmt::format("{:<24}  {:>8}  {:>12}  {:>6}  {:>6}  {:<5}  {}\n", domain.domain(),
                             domain.queued_messages(), domain.queued_bytes(),
                             domain.held_messages(), domain.leased_messages(),
                             domain.down() ? "yes" : "no", Millis(domain.oldest_enqueue_ms()));
  }
  return 0;
}

// Makes every entry of `domain` due now (the domain's backoff is cleared too).
int QueueFlush(const Options& options, const std::string& domain) {
  auto stub = Connect(options);
  queue::FlushDomain request;
  request.set_domain(domain);
  queue::SelectionResult response;
  if (!Invoke(options, [&](grpc::ClientContext* context) {
        return stub->Flush(context, request, &response);
      })) {
    return kExitFailure;
  }
  if (options.output == "json") {
    std::cout << ProtoJson(response) << "\n";
  } else {
    // `affected` counts only entries that had a retry time of their own, not those that waited
    // for the domain's backoff: both are due now.
    std::cout << fmt::format("{}: due now\n", domain);
  }
  return 0;
}

int ClusterStatus(const Options& options) {
  auto stub = Connect(options);
  admin::ClusterStatus response;
  if (!Invoke(options, [&](grpc::ClientContext* context) {
        return stub->GetClusterStatus(context, admin::GetClusterStatusRequest(), &response);
      })) {
    return kExitFailure;
  }
  std::cout << ProtoJson(response) << "\n";
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"backstopctl — operate a Backstop cluster"};
  Options options;
  app.require_subcommand(1);
  app.add_option("--endpoint", options.endpoint,
                 "Queue node HOST:PORT (default $BACKSTOP_ENDPOINT or 127.0.0.1:7025)");
  app.add_option("-o,--output", options.output, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  // Global flags may follow the subcommand too.
  app.fallthrough();

  CLI::App* queue_cmd = app.add_subcommand("queue", "Inspect and manage queued mail");
  queue_cmd->require_subcommand(1);
  std::string domain;
  CLI::App* list = queue_cmd->add_subcommand("list", "List queued entries");
  list->add_option("--domain", domain, "Only this destination domain");
  std::string id;
  bool with_message = false;
  CLI::App* show = queue_cmd->add_subcommand("show", "Show one entry");
  show->add_option("id", id, "Message id (32 hex digits)")->required();
  show->add_flag("--message", with_message, "Include the message bytes");
  CLI::App* summary = queue_cmd->add_subcommand("summary", "Queue depth per domain");
  std::string flush_domain;
  CLI::App* flush = queue_cmd->add_subcommand("flush", "Make a domain's entries due now");
  flush->add_option("domain", flush_domain, "Destination domain")->required();

  CLI::App* cluster_cmd = app.add_subcommand("cluster", "The queue's Raft cluster");
  cluster_cmd->require_subcommand(1);
  CLI::App* status = cluster_cmd->add_subcommand("status", "Leader, term and members");

  CLI11_PARSE(app, argc, argv);
  if (list->parsed()) {
    return QueueList(options, domain);
  }
  if (show->parsed()) {
    return QueueShow(options, id, with_message);
  }
  if (summary->parsed()) {
    return QueueSummary(options);
  }
  if (flush->parsed()) {
    return QueueFlush(options, flush_domain);
  }
  if (status->parsed()) {
    return ClusterStatus(options);
  }
  return kExitFailure;
}

}  // namespace
}  // namespace backstop::ctl

int main(int argc, char** argv) {
  return backstop::ctl::Main(argc, argv);
}
