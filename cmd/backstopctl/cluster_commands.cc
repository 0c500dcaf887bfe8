// `backstopctl cluster …`: the queue's Raft membership and leadership.

#include <algorithm>
#include <iostream>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "cmd/backstopctl/commands.h"
#include "common/config.h"

namespace backstop::ctl {
namespace {

// Adding a voter waits for the learner to catch up before its promotion.
constexpr absl::Duration kMembershipTimeout = absl::Minutes(2);

bool GetStatus(AdminClient& client, admin::ClusterStatus* status) {
  return client.Call(&admin::AdminService::Stub::GetClusterStatus, admin::GetClusterStatusRequest(),
                     status);
}

std::string IdList(const google::protobuf::RepeatedPtrField<admin::Member>& members) {
  std::string ids;
  for (const admin::Member& member : members) {
    ids += (ids.empty() ? "" : ",") + std::to_string(member.id());
  }
  return ids.empty() ? "-" : ids;
}

int Status(const Options& options) {
  AdminClient client(options);
  admin::ClusterStatus status;
  if (!GetStatus(client, &status)) {
    return kExitFailure;
  }
  if (options.json()) {
    std::cout << ProtoJson(status) << "\n";
    return kExitOk;
  }
  const std::string leader =
      status.leader_id() == 0
          ? "none known"
          : fmt::format("{} ({})", status.leader_id(),
                        status.leader_address().empty() ? "?" : status.leader_address());
  std::cout << fmt::format(
      "node      {}\nleader    {}\nterm      {}\ncommit    {}\napplied   {}\nvoters    {}\n"
      "learners  {}\n",
      status.node_id(), leader, status.term(), status.commit_index(), status.applied_index(),
      IdList(status.voters()), IdList(status.learners()));
  return kExitOk;
}

// Replication progress is known only to the leader: when a follower answers, the leader it
// names is asked too (its answer then fills the table), else the progress columns stay empty.
int Members(const Options& options) {
  AdminClient client(options);
  admin::ClusterStatus status;
  if (!GetStatus(client, &status)) {
    return kExitFailure;
  }
  if (status.leader_id() != status.node_id() && !status.leader_address().empty()) {
    Options at_leader = options;
    at_leader.endpoint = status.leader_address();
    AdminClient leader(at_leader);
    admin::ClusterStatus leader_status;
    if (leader.Call(&admin::AdminService::Stub::GetClusterStatus, admin::GetClusterStatusRequest(),
                    &leader_status, absl::ZeroDuration(), AdminClient::OnError::kQuiet) &&
        leader_status.leader_id() == leader_status.node_id()) {
      status = std::move(leader_status);
    }
  }
  struct Row {
    const admin::Member* member;
    std::string role;
  };
  std::vector<Row> rows;
  for (const admin::Member& voter : status.voters()) {
    rows.push_back({&voter, voter.id() == status.leader_id() ? "leader" : "voter"});
  }
  for (const admin::Member& learner : status.learners()) {
    rows.push_back({&learner, "learner"});
  }
  std::sort(rows.begin(), rows.end(),
            [](const Row& a, const Row& b) { return a.member->id() < b.member->id(); });
  if (options.json()) {
    const auto number = [](bool known, auto value) {
      return known ? std::to_string(value) : std::string("null");
    };
    std::string json = fmt::format(R"({{"node_id":{},"leader_id":{},"term":{},"members":[)",
                                   status.node_id(), status.leader_id(), status.term());
    for (size_t i = 0; i < rows.size(); ++i) {
      const admin::Member& member = *rows[i].member;
      json += fmt::format(R"({}{{"id":{},"address":)", i ? "," : "", member.id());
      AppendJson(json, member.address());
      json += R"(,"role":)";
      AppendJson(json, rows[i].role);
      json += fmt::format(R"(,"match":{},"lag":{},"last_contact_ms":{}}})",
                          number(member.has_match_index(), member.match_index()),
                          number(member.has_lag(), member.lag()),
                          number(member.has_last_contact_ms(), member.last_contact_ms()));
    }
    std::cout << json << "]}\n";
    return kExitOk;
  }
  std::cout << fmt::format("{:>6}  {:<24}  {:<7}  {:>10}  {:>8}\n", "ID", "ADDRESS", "ROLE",
                           "MATCH", "LAG");
  for (const Row& row : rows) {
    const admin::Member& member = *row.member;
    std::cout << fmt::format("{:>6}  {:<24}  {:<7}  {:>10}  {:>8}\n", member.id(),
                             member.address().empty() ? "?" : member.address(), row.role,
                             member.has_match_index() ? std::to_string(member.match_index()) : "-",
                             member.has_lag() ? std::to_string(member.lag()) : "-");
  }
  return kExitOk;
}

int Add(const Options& options, uint64_t id, const std::string& address) {
  absl::StatusOr<HostPort> parsed = ParseHostPort(address);
  if (!parsed.ok() || parsed->port == 0) {
    PrintError(fmt::format("{}: expected HOST:PORT of the new voter's queue listener", address));
    return kExitUsage;
  }
  AdminClient client(options);
  admin::AddVoterRequest request;
  request.set_id(id);
  request.set_address(parsed->ToString());
  admin::AddVoterResponse response;
  if (!client.Call(&admin::AdminService::Stub::AddVoter, request, &response, kMembershipTimeout)) {
    return kExitFailure;
  }
  if (options.json()) {
    std::string json = fmt::format(R"({{"added":{},"address":)", id);
    AppendJson(json, parsed->ToString());
    std::cout << json << "}\n";
  } else {
    std::cout << fmt::format("voter {} ({}) added\n", id, parsed->ToString());
  }
  return kExitOk;
}

int Remove(const Options& options, uint64_t id) {
  AdminClient client(options);
  admin::RemoveVoterRequest request;
  request.set_id(id);
  admin::RemoveVoterResponse response;
  if (!client.Call(&admin::AdminService::Stub::RemoveVoter, request, &response,
                   kMembershipTimeout)) {
    return kExitFailure;
  }
  if (options.json()) {
    std::cout << fmt::format(R"({{"removed":{}}})", id) << "\n";
  } else {
    std::cout << fmt::format("voter {} removed\n", id);
  }
  return kExitOk;
}

// Without a target, the voter with the lowest id that does not lead now.
int TransferLeader(const Options& options, uint64_t to) {
  AdminClient client(options);
  admin::ClusterStatus status;
  if (!GetStatus(client, &status)) {
    return kExitFailure;
  }
  const uint64_t from = status.leader_id();
  if (from == 0) {
    PrintError(fmt::format("{}: no leader known; try again shortly", client.endpoint()));
    return kExitFailure;
  }
  if (to == 0) {
    for (const admin::Member& voter : status.voters()) {
      if (voter.id() != from && (to == 0 || voter.id() < to)) {
        to = voter.id();
      }
    }
    if (to == 0) {
      PrintError("the cluster has no other voter to lead");
      return kExitFailure;
    }
  }
  if (to != from) {
    admin::TransferLeadershipRequest request;
    request.set_to(to);
    admin::TransferLeadershipResponse response;
    if (!client.Call(&admin::AdminService::Stub::TransferLeadership, request, &response)) {
      return kExitFailure;
    }
  }
  if (options.json()) {
    std::cout << fmt::format(R"({{"previous_leader":{},"leader":{}}})", from, to) << "\n";
  } else {
    std::cout << fmt::format("leader: {} → {}\n", from, to);
  }
  return kExitOk;
}

}  // namespace

void AddClusterCommands(CLI::App& app, const Options& options, std::vector<Command>* commands) {
  // Shared by CLI11's bindings, which fill it while parsing, and the run closures below.
  struct Flags {
    uint64_t id = 0;
    std::string address;
  };
  auto flags = std::make_shared<Flags>();

  CLI::App* cluster = app.add_subcommand("cluster", "The queue's Raft cluster");
  cluster->require_subcommand(1);
  commands->push_back({cluster->add_subcommand("status", "Leader, term, indexes and members"),
                       [&options] { return Status(options); }});
  commands->push_back({cluster->add_subcommand("members", "Voters and learners with their roles"),
                       [&options] { return Members(options); }});

  CLI::App* add = cluster->add_subcommand(
      "add", "Add a voter (started empty with [queue] join = true): learner, then voter");
  add->add_option("id", flags->id, "Node id")->required();
  add->add_option("address", flags->address, "Its queue gRPC HOST:PORT")->required();
  commands->push_back({add, [&options, flags] { return Add(options, flags->id, flags->address); }});

  CLI::App* remove = cluster->add_subcommand("remove", "Remove a voter");
  remove->add_option("id", flags->id, "Node id")->required();
  commands->push_back({remove, [&options, flags] { return Remove(options, flags->id); }});

  CLI::App* transfer =
      cluster->add_subcommand("transfer-leader", "Hand leadership to ID (default: another voter)");
  transfer->add_option("id", flags->id, "Node id of the new leader");
  commands->push_back({transfer, [&options, flags] { return TransferLeader(options, flags->id); }});
}

}  // namespace backstop::ctl
