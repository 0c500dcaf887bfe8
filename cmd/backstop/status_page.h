#pragma once

// The /status document (DESIGN §3.5): node id, hostname, roles, build, and per role what an
// operator looks at first — for the queue its Raft view (role, term, indexes, members), the
// replication of each peer (on the leader) or of this node (on a follower), and the queue
// depth; for ingest its listeners and counters.
//
// StatusJson is pure (a StatusPage in, JSON out) so that tests can pin the document;
// CollectStatus reads the running roles into a StatusPage.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/config.h"
#include "ingest/ingest_role.h"
#include "queue/queue_node.h"
#include "queue/queue_role.h"

namespace backstop {

// What was built: fixed at compile time (cmd/backstop/CMakeLists.txt).
struct BuildInfo {
  std::string version;     // the project version
  std::string commit;      // git commit, "unknown" when built outside a git checkout
  std::string build_type;  // CMAKE_BUILD_TYPE (Release, Debug, Asan, …)
  std::string compiler;    // compiler id and version
};

struct IngestStatus {
  std::vector<std::string> listen;
  uint64_t active_connections = 0;
  uint64_t append_rpcs = 0;
  uint64_t entries_appended = 0;
};

struct QueueStatus {
  queue::QueueNodeStatus raft;
  std::optional<queue::QueueDepth> depth;  // none: the state machine could not be read
};

struct StatusPage {
  uint64_t node_id = 0;
  std::string hostname;
  RoleSet roles;
  BuildInfo build;
  absl::Time now;                      // ages (last contact, oldest message) are taken against it
  std::optional<QueueStatus> queue;    // this process runs the queue role
  std::optional<IngestStatus> ingest;  // this process runs the ingest role
};

// The document, one line of JSON ending in a newline.
std::string StatusJson(const StatusPage& page);

// Reads the roles (either may be null: not run here). Any thread; node id, hostname and roles
// come from the startup configuration (a reload does not change them).
StatusPage CollectStatus(const Config& config, const BuildInfo& build,
                         const queue::QueueRole* queue_role, const ingest::IngestRole* ingest_role,
                         absl::Time now);

}  // namespace backstop
