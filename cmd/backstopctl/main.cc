// backstopctl — the operator's command line for the queue's AdminService (DESIGN §3.5).
//
// Global flags work before or after the subcommand. The endpoint is --endpoint HOST:PORT, else
// $BACKSTOP_ENDPOINT, else 127.0.0.1:7025. With [cluster_tls] on the cluster, --tls-ca, --tls-cert
// and --tls-key (or $BACKSTOP_TLS_CA, _CERT, _KEY) name a client certificate from the cluster CA;
// commands that change anything need one marked for admin use (subject OU=backstop-admin). Output
// is a table, or JSON with -o json (one document on stdout). Exit codes: 0 ok, 1 error, 2 usage.

#include <CLI/CLI.hpp>
#include <vector>

#include "cmd/backstopctl/admin_client.h"
#include "cmd/backstopctl/commands.h"
#include "common/units.h"
#include "queue/cluster_tls.h"

namespace backstop::ctl {
namespace {

int Main(int argc, char** argv) {
  CLI::App app{"backstopctl — operate a Backstop cluster"};
  Options options;
  app.require_subcommand(1);
  app.add_option("--endpoint", options.endpoint,
                 "Queue node HOST:PORT (default $BACKSTOP_ENDPOINT or 127.0.0.1:7025)");
  app.add_option("-o,--output", options.output, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  app.add_option("--timeout", options.timeout, "Deadline of each call (default 10s)")
      ->check([](const std::string& text) {
        absl::StatusOr<absl::Duration> parsed = ParseDuration(text);
        return parsed.ok() ? std::string() : std::string(parsed.status().message());
      });
  app.add_option("--tls-ca", options.tls_ca, "Cluster CA bundle (default $BACKSTOP_TLS_CA)");
  app.add_option("--tls-cert", options.tls_cert,
                 "Client certificate from the cluster CA (default $BACKSTOP_TLS_CERT)");
  app.add_option("--tls-key", options.tls_key, "Its private key (default $BACKSTOP_TLS_KEY)");
  // Global flags may follow the subcommand too.
  app.fallthrough();

  std::vector<Command> commands;
  AddClusterCommands(app, options, &commands);
  AddQueueCommands(app, options, &commands);
  AddDomainCommands(app, options, &commands);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    const int printed = app.exit(error);
    // --help and --version are not errors; everything else CLI11 refuses is a usage error.
    return printed == 0 ? kExitOk : kExitUsage;
  }
  const ClusterTlsConfig tls_files = TlsFiles(options);
  if (tls_files.ca.empty() != tls_files.cert.empty() ||
      tls_files.ca.empty() != tls_files.key.empty()) {
    PrintError("--tls-ca, --tls-cert and --tls-key go together (all set, or none for plaintext)");
    return kExitUsage;
  }
  // Lives until the command is done: it holds the material the channel reads.
  absl::StatusOr<std::unique_ptr<queue::ClusterCredentials>> credentials =
      queue::ClusterCredentials::Load(tls_files);
  if (!credentials.ok()) {
    PrintError(std::string(credentials.status().message()));
    return kExitFailure;
  }
  options.credentials = (*credentials)->channel();
  for (const Command& command : commands) {
    if (command.app->parsed()) {
      return command.run();
    }
  }
  return kExitUsage;
}

}  // namespace
}  // namespace backstop::ctl

int main(int argc, char** argv) {
  return backstop::ctl::Main(argc, argv);
}
