// The backstop server: parses flags and configuration, starts the configured roles and the HTTP
// admin port, then waits for signals (SIGHUP reloads, SIGTERM/SIGINT drain and exit).

#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "absl/synchronization/mutex.h"
#include "cmd/backstop/role_metrics.h"
#include "cmd/backstop/status_page.h"
#include "common/config.h"
#include "common/http_server.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/status.h"
#include "delivery/delivery_role.h"
#include "ingest/ingest_role.h"
#include "queue/grpc_log.h"
#include "queue/queue_role.h"

namespace backstop {
namespace {

constexpr std::string_view kVersion = BACKSTOP_VERSION;

BuildInfo Build() {
  return BuildInfo{
      .version = BACKSTOP_PROJECT_VERSION,
      .commit = BACKSTOP_GIT_COMMIT,
      .build_type = BACKSTOP_BUILD_TYPE,
      .compiler = BACKSTOP_COMPILER,
  };
}

// Exit codes: 0 clean exit, 1 runtime failure, 2 bad flags or configuration.
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

struct Flags {
  std::string config_path;
  std::string check_config_path;
  std::vector<std::string> roles;
  std::string log_level = "info";
};

absl::StatusOr<RoleSet> ParseRoles(const std::vector<std::string>& names) {
  RoleSet roles;
  for (const std::string& name : names) {
    const std::optional<Role> role = ParseRole(name);
    if (!role) {
      return absl::InvalidArgumentError(
          fmt::format("--role: unknown role \"{}\" (expected ingest, queue or delivery)", name));
    }
    roles.Add(*role);
  }
  if (roles.empty()) {
    return absl::InvalidArgumentError("--role: at least one role is required");
  }
  return roles;
}

std::string RoleList(const RoleSet& roles) {
  std::string list;
  for (Role role : roles.ToVector()) {
    if (!list.empty()) {
      list.append(",");
    }
    list.append(RoleName(role));
  }
  return list;
}

// Loads the configuration with the command-line overrides applied.
absl::StatusOr<Config> LoadEffectiveConfig(const Flags& flags) {
  ConfigOverrides overrides;
  if (!flags.roles.empty()) {
    ASSIGN_OR_RETURN(overrides.roles, ParseRoles(flags.roles));
  }
  return LoadConfigFile(flags.config_path, overrides);
}

// With the queue in this process (and no other endpoints named), its in-process channel; else
// the network, over the cluster credentials.
queue::QueueConnection QueueConnectionFor(const Config& config, queue::QueueRole* queue_role,
                                          const queue::ClusterCredentials& credentials) {
  queue::QueueConnection connection;
  if (queue_role != nullptr && config.queue.endpoints.empty()) {
    connection.in_process = queue_role->InProcessChannel();
  }
  connection.credentials = credentials.channel();
  return connection;
}

void LogWarnings(const log::Logger& logger, const Config& config) {
  for (const std::string& warning : config.warnings) {
    logger.Warn("configuration warning", {{"detail", warning}});
  }
}

int CheckConfig(const std::string& path) {
  absl::StatusOr<Config> config = LoadConfigFile(path);
  if (!config.ok()) {
    std::cerr << config.status().message() << "\n";
    return kExitUsage;
  }
  for (const std::string& warning : config->warnings) {
    std::cerr << "warning: " << warning << "\n";
  }
  std::cout << ConfigSummary(*config);
  return 0;
}

// Blocks the signals we handle so that every thread started later inherits the mask and they
// are delivered only to sigwait() in the main thread.
sigset_t BlockHandledSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A peer closing a socket must surface as EPIPE on the write, not kill the process.
  signal(SIGPIPE, SIG_IGN);
  return signals;
}

int Serve(const Flags& flags) {
  // Debian's Abseil checks every absl::Mutex acquisition (gRPC's) for lock-order cycles, a
  // debugging aid that showed in profiles of the ingest path.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const log::Logger logger("main");
  absl::StatusOr<Config> loaded = LoadEffectiveConfig(flags);
  if (!loaded.ok()) {
    std::cerr << loaded.status().message() << "\n";
    logger.Error("invalid configuration",
                 {{"path", flags.config_path}, {"error", std::string(loaded.status().message())}});
    return kExitUsage;
  }
  Config config = *std::move(loaded);
  LogWarnings(logger, config);
  queue::RouteGrpcLogsToJson();

  const sigset_t signals = BlockHandledSignals();

  absl::StatusOr<std::unique_ptr<HttpServer>> http =
      HttpServer::Start(HttpServerOptions{.listen = config.http.listen.ToString()});
  if (!http.ok()) {
    std::cerr << "backstop: " << http.status().message() << "\n";
    logger.Error("cannot start the HTTP admin server",
                 {{"error", std::string(http.status().message())}});
    return kExitFailure;
  }
  (*http)->Handle("/livez", [](const HttpRequest&) {
    return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"};
  });

  logger.Info("backstop starting", {{"version", kVersion},
                                    {"node_id", config.node.id},
                                    {"hostname", config.node.hostname},
                                    {"roles", RoleList(config.node.roles)},
                                    {"config", flags.config_path}});

  absl::StatusOr<std::unique_ptr<queue::ClusterCredentials>> cluster_credentials =
      queue::ClusterCredentials::Load(config.cluster_tls);
  if (!cluster_credentials.ok()) {
    std::cerr << "backstop: " << cluster_credentials.status().message() << "\n";
    logger.Error("cannot load the cluster TLS certificates",
                 {{"error", std::string(cluster_credentials.status().message())}});
    return kExitUsage;
  }
  const queue::ClusterCredentials& credentials = **cluster_credentials;

  std::unique_ptr<queue::QueueRole> queue_role;
  if (config.node.roles.Has(Role::kQueue)) {
    absl::StatusOr<std::unique_ptr<queue::QueueRole>> started =
        queue::QueueRole::Start(config, credentials);
    if (!started.ok()) {
      std::cerr << "backstop: " << started.status().message() << "\n";
      logger.Error("cannot start the queue role",
                   {{"error", std::string(started.status().message())}});
      return kExitFailure;
    }
    queue_role = *std::move(started);
    logger.Info("queue listening", {{"address", queue_role->listen_address()},
                                    {"voters", config.queue.peers.size()},
                                    {"data_dir", config.node.data_dir}});
  }
  std::unique_ptr<ingest::IngestRole> ingest_role;
  std::atomic<bool> draining{false};
  if (config.node.roles.Has(Role::kIngest)) {
    absl::StatusOr<std::unique_ptr<ingest::IngestRole>> started = ingest::IngestRole::Start(
        config, QueueConnectionFor(config, queue_role.get(), credentials));
    if (!started.ok()) {
      std::cerr << "backstop: " << started.status().message() << "\n";
      logger.Error("cannot start the ingest role",
                   {{"error", std::string(started.status().message())}});
      return kExitFailure;
    }
    ingest_role = *std::move(started);
    for (const std::string& address : ingest_role->listen_addresses()) {
      logger.Info("smtp listening", {{"address", address}});
    }
  }
  std::unique_ptr<delivery::DeliveryRole> delivery_role;
  if (config.node.roles.Has(Role::kDelivery)) {
    absl::StatusOr<std::unique_ptr<delivery::DeliveryRole>> started = delivery::DeliveryRole::Start(
        config, QueueConnectionFor(config, queue_role.get(), credentials));
    if (!started.ok()) {
      std::cerr << "backstop: " << started.status().message() << "\n";
      logger.Error("cannot start the delivery role",
                   {{"error", std::string(started.status().message())}});
      return kExitFailure;
    }
    delivery_role = *std::move(started);
  }
  metrics::Metrics metrics;
  RegisterMetrics(metrics, queue_role.get(), ingest_role.get(), delivery_role.get(), credentials);
  (*http)->Handle("/metrics", [&metrics](const HttpRequest&) {
    return HttpResponse{200, metrics::kContentType, metrics.Render()};
  });
  // A copy: the handler runs on HTTP threads while a reload replaces `config`.
  (*http)->Handle("/status", [startup_config = config, build = Build(), role = queue_role.get(),
                              ingest = ingest_role.get()](const HttpRequest&) {
    return HttpResponse{
        200, "application/json",
        StatusJson(CollectStatus(startup_config, build, role, ingest, absl::Now()))};
  });
  (*http)->Handle("/readyz", [role = queue_role.get(), ingest = ingest_role.get(),
                              &draining](const HttpRequest&) {
    // Ingest: listening and not draining.
    if (ingest != nullptr && draining.load()) {
      return HttpResponse{503, "text/plain; charset=utf-8", "ingest: draining\n"};
    }
    // Queue: ready once it knows a leader and has applied what it knows to be committed.
    if (role != nullptr) {
      const queue::QueueNodeStatus status = role->status();
      if (status.leader.IsNone() || status.applied < status.commit) {
        return HttpResponse{503, "text/plain; charset=utf-8", "queue: no leader or catching up\n"};
      }
    }
    return HttpResponse{200, "text/plain; charset=utf-8", "ready\n"};
  });
  // Logged once every admin path is served: tests and operators take it as "up".
  logger.Info("http admin listening", {{"address", (*http)->address()}, {"pid", getpid()}});
  // Ingest and delivery arrive with their own issues; until then this process says so rather
  // than pretending.
  std::cerr << fmt::format("backstop {}: node {} ({}), roles {}\n  admin  http://{}/livez\n",
                           kVersion, config.node.id, config.node.hostname,
                           RoleList(config.node.roles), (*http)->address());
  if (queue_role != nullptr) {
    std::cerr << fmt::format("  queue  {} (gRPC), data in {}\n", queue_role->listen_address(),
                             config.node.data_dir);
  }
  if (ingest_role != nullptr) {
    std::cerr << fmt::format("  smtp   {}\n", fmt::join(ingest_role->listen_addresses(), ", "));
  }

  while (true) {
    int signal_number = 0;
    if (sigwait(&signals, &signal_number) != 0) {
      continue;
    }
    if (signal_number == SIGHUP) {
      absl::StatusOr<Config> reloaded = LoadEffectiveConfig(flags);
      if (!reloaded.ok()) {
        logger.Error(
            "configuration reload failed; keeping the running configuration",
            {{"path", flags.config_path}, {"error", std::string(reloaded.status().message())}});
        continue;
      }
      config = *std::move(reloaded);
      LogWarnings(logger, config);
      if (delivery_role != nullptr) {
        delivery_role->Reload(config);
      }
      if (ingest_role != nullptr) {
        if (const absl::Status status = ingest_role->Reload(config); !status.ok()) {
          logger.Error("TLS certificate reload failed; keeping the previous one",
                       {{"error", std::string(status.message())}});
        }
      }
      if (const absl::Status status = (*cluster_credentials)->Reload(config.cluster_tls);
          !status.ok()) {
        logger.Error("cluster TLS reload failed; keeping the certificates in force",
                     {{"error", std::string(status.message())}});
      }
      logger.Info("configuration reloaded",
                  {{"path", flags.config_path}, {"domains", config.domains.size()}});
      continue;
    }
    logger.Info("draining", {{"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"}});
    break;
  }
  if (ingest_role != nullptr) {
    // Sessions end at their next command; a transaction in flight gets its commit window.
    draining = true;
    ingest_role->Drain();
    if (!ingest_role->WaitIdle(config.smtp.commit_timeout + absl::Seconds(5))) {
      logger.Warn("drain window over; closing the remaining SMTP sessions",
                  {{"sessions", ingest_role->active_connections()}});
    }
  }
  if (queue_role != nullptr && queue_role->status().is_leader) {
    const absl::StatusOr<raft::NodeId> successor = queue_role->StepDown(absl::Seconds(5));
    if (!successor.ok()) {
      logger.Warn("leadership transfer before exit failed",
                  {{"error", std::string(successor.status().message())}});
    } else if (!successor->IsNone()) {
      logger.Info("leadership handed over", {{"leader", successor->value()}});
    }
  }
  // The admin port goes first so that nothing reports on roles being torn down.
  http->reset();
  ingest_role.reset();
  delivery_role.reset();
  queue_role.reset();
  logger.Info("stopped");
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"backstop — a clustered backup MX"};
  Flags flags;
  bool show_version = false;
  app.add_option("-c,--config", flags.config_path, "Configuration file (TOML)")
      ->check(CLI::ExistingFile);
  app.add_option("--check-config", flags.check_config_path,
                 "Validate FILE, print its problems or a summary, and exit");
  app.add_option("--role", flags.roles,
                 "Roles to run, overriding node.roles: ingest,queue,delivery")
      ->delimiter(',');
  app.add_option("--log-level", flags.log_level, "debug, info, warn or error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
  app.add_flag("--version", show_version, "Print the version and exit");
  CLI11_PARSE(app, argc, argv);

  if (show_version) {
    std::cout << "backstop " << kVersion << "\n";
    return 0;
  }
  log::Level level = log::Level::kInfo;
  log::ParseLevel(flags.log_level, &level);
  log::Options log_options;
  log_options.min_level = level;
  log::Configure(log_options);
  if (!flags.check_config_path.empty()) {
    return CheckConfig(flags.check_config_path);
  }
  if (flags.config_path.empty()) {
    std::cerr << "backstop: --config FILE is required (try examples/standalone.toml)\n";
    return kExitUsage;
  }
  return Serve(flags);
}

}  // namespace
}  // namespace backstop

int main(int argc, char** argv) {
  return backstop::Main(argc, argv);
}
