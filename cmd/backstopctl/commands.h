#pragma once

// backstopctl's command groups. Each Add*Commands registers its subcommands on `app` and, for
// each, what runs it once the whole command line is parsed (global flags may follow the
// subcommand, so nothing runs during parsing).

#include <CLI/CLI.hpp>
#include <functional>
#include <vector>

#include "cmd/backstopctl/admin_client.h"

namespace backstop::ctl {

struct Command {
  CLI::App* app;
  std::function<int()> run;  // returns the exit code
};

// `cluster status|members|add|remove|transfer-leader`.
void AddClusterCommands(CLI::App& app, const Options& options, std::vector<Command>* commands);
// `queue list|show|summary|flush|hold|release|delete|bounce`.
void AddQueueCommands(CLI::App& app, const Options& options, std::vector<Command>* commands);
// `domain list|add|remove|set|check`.
void AddDomainCommands(CLI::App& app, const Options& options, std::vector<Command>* commands);

}  // namespace backstop::ctl
