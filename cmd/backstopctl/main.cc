// backstopctl — the operator's command line for the queue's AdminService (DESIGN §3.5).
//
// Global flags work before or after the subcommand. The endpoint is --endpoint HOST:PORT, else
// $BACKSTOP_ENDPOINT, else 127.0.0.1:7025. Output is a table, or JSON with -o json (one
// document on stdout). Exit codes: 0 ok, 1 error, 2 usage.

#include <CLI/CLI.hpp>
#include <vector>

#include "cmd/backstopctl/admin_client.h"
#include "cmd/backstopctl/commands.h"
#include "common/units.h"

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
