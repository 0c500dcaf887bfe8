#include "cmd/backstop/status_page.h"

#include <algorithm>

#include <fmt/format.h>

#include "common/log.h"

namespace backstop {
namespace {

std::string_view RaftRoleName(raft::Role role) {
  switch (role) {
    case raft::Role::kFollower:
      return "follower";
    case raft::Role::kPreCandidate:
      return "pre_candidate";
    case raft::Role::kCandidate:
      return "candidate";
    case raft::Role::kLeader:
      return "leader";
  }
  return "unknown";
}

// Seconds from `then` to `now` with millisecond precision, never negative; null for a time
// never seen (InfinitePast).
std::string AgeSeconds(absl::Time then, absl::Time now) {
  if (then == absl::InfinitePast()) {
    return "null";
  }
  return fmt::format("{:.3f}", std::max(0.0, absl::ToDoubleSeconds(now - then)));
}

void AppendStringField(std::string& json, std::string_view name, std::string_view value) {
  json.append(fmt::format("\"{}\":", name));
  log::AppendJsonString(json, value);
}

void AppendIds(std::string& json, const std::vector<raft::NodeId>& ids) {
  json.append("[");
  for (size_t i = 0; i < ids.size(); ++i) {
    json.append(fmt::format("{}{}", i ? "," : "", ids[i].value()));
  }
  json.append("]");
}

void AppendBuild(std::string& json, const BuildInfo& build) {
  json.append("\"build\":{");
  AppendStringField(json, "version", build.version);
  json.append(",");
  AppendStringField(json, "commit", build.commit);
  json.append(",");
  AppendStringField(json, "build_type", build.build_type);
  json.append(",");
  AppendStringField(json, "compiler", build.compiler);
  json.append("}");
}

void AppendDepth(std::string& json, const std::optional<queue::QueueDepth>& depth, absl::Time now) {
  if (!depth) {
    json.append("\"depth\":null");
    return;
  }
  json.append(fmt::format(
      "\"depth\":{{\"messages\":{},\"bytes\":{},\"held\":{},\"leased\":{},\"domains\":{},"
      "\"domains_down\":{},\"oldest_message_age_seconds\":{}}}",
      depth->messages, depth->bytes, depth->held, depth->leased, depth->domains,
      depth->domains_down,
      depth->oldest == absl::InfinitePast() ? "0.000" : AgeSeconds(depth->oldest, now)));
}

void AppendQueue(std::string& json, const QueueStatus& queue, absl::Time now) {
  const queue::QueueNodeStatus& raft = queue.raft;
  json.append(fmt::format("\"queue\":{{\"leader_id\":{},", raft.leader.value()));
  AppendStringField(json, "leader_address", raft.leader_address);
  json.append(fmt::format(",\"is_leader\":{},", raft.is_leader));
  AppendStringField(json, "state", RaftRoleName(raft.role));
  json.append(
      fmt::format(",\"term\":{},\"commit_index\":{},\"applied_index\":{},\"last_index\":{},"
                  "\"synced_writes\":{},\"entries_persisted\":{},\"voters\":",
                  raft.term.value(), raft.commit.value(), raft.applied.value(),
                  raft.last_index.value(), raft.synced_writes, raft.entries_persisted));
  AppendIds(json, raft.members.voters);
  json.append(",\"learners\":");
  AppendIds(json, raft.members.learners);
  json.append(fmt::format(
      ",\"leader_commit_index\":{},\"lag\":{},\"leader_contact_seconds\":{},\"peers\":[",
      raft.leader_commit.value(), raft.Lag(),
      AgeSeconds(raft.is_leader ? now : raft.leader_contact, now)));
  for (size_t i = 0; i < raft.peers.size(); ++i) {
    const queue::PeerProgress& peer = raft.peers[i];
    json.append(fmt::format("{}{{\"id\":{},", i ? "," : "", peer.id.value()));
    AppendStringField(json, "address", peer.address);
    json.append(
        fmt::format(",\"role\":\"{}\",\"match_index\":{},\"lag\":{},\"last_contact_seconds\":{}}}",
                    peer.is_learner ? "learner" : "voter", peer.match.value(), raft.LagOf(peer),
                    AgeSeconds(peer.last_contact, now)));
  }
  json.append("],");
  AppendDepth(json, queue.depth, now);
  json.append("}");
}

void AppendIngest(std::string& json, const IngestStatus& ingest) {
  json.append("\"ingest\":{\"listen\":[");
  for (size_t i = 0; i < ingest.listen.size(); ++i) {
    json.append(i ? "," : "");
    log::AppendJsonString(json, ingest.listen[i]);
  }
  json.append(
      fmt::format("],\"active_connections\":{},\"append_rpcs\":{},\"entries_appended\":{}}}",
                  ingest.active_connections, ingest.append_rpcs, ingest.entries_appended));
}

}  // namespace

std::string StatusJson(const StatusPage& page) {
  std::string json = fmt::format("{{\"node_id\":{},", page.node_id);
  AppendStringField(json, "hostname", page.hostname);
  // The one-string form older readers of this page know.
  json.append(",");
  AppendStringField(json, "version", page.build.version + "+" + page.build.commit);
  json.append(",\"roles\":[");
  bool first = true;
  for (Role role : page.roles.ToVector()) {
    json.append(first ? "" : ",");
    log::AppendJsonString(json, RoleName(role));
    first = false;
  }
  json.append("],");
  AppendBuild(json, page.build);
  if (page.queue) {
    json.append(",");
    AppendQueue(json, *page.queue, page.now);
  }
  if (page.ingest) {
    json.append(",");
    AppendIngest(json, *page.ingest);
  }
  json.append("}\n");
  return json;
}

StatusPage CollectStatus(const Config& config, const BuildInfo& build,
                         const queue::QueueRole* queue_role, const ingest::IngestRole* ingest_role,
                         absl::Time now) {
  StatusPage page;
  page.node_id = config.node.id;
  page.hostname = config.node.hostname;
  page.roles = config.node.roles;
  page.build = build;
  page.now = now;
  if (queue_role != nullptr) {
    absl::StatusOr<queue::QueueDepth> depth = queue_role->node().Depth();
    page.queue = QueueStatus{
        .raft = queue_role->status(),
        .depth = depth.ok() ? std::optional<queue::QueueDepth>(*depth) : std::nullopt,
    };
  }
  if (ingest_role != nullptr) {
    page.ingest = IngestStatus{
        .listen = ingest_role->listen_addresses(),
        .active_connections = ingest_role->active_connections(),
        .append_rpcs = ingest_role->handoff().rpcs(),
        .entries_appended = ingest_role->handoff().entries_sent(),
    };
  }
  return page;
}

}  // namespace backstop
