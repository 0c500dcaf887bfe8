// `backstopctl domain …`: the queue's replicated domain table, and the DNS check of a
// customer's MX setup.

#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_join.h"
#include "cmd/backstopctl/commands.h"
#include "cmd/backstopctl/domain_check.h"
#include "common/units.h"

namespace backstop::ctl {
namespace {

// The DomainSpec fields as flags; a flag not given leaves the field alone (set) or at the
// DESIGN §4 default (add).
struct SpecFlags {
  std::vector<std::string> primary;
  bool no_primary = false;
  std::string tls;
  std::vector<std::string> recipients;
  bool no_recipients = false;
  bool callout = false;
  uint64_t max_queued_messages = 0;
  std::string max_queued_bytes;
  std::string max_monthly_bytes;
  uint64_t max_daily_connections = 0;
  // Set by AddSpecFlags: which were given.
  CLI::Option* callout_option = nullptr;
  CLI::Option* max_queued_messages_option = nullptr;
  CLI::Option* max_daily_connections_option = nullptr;
};

struct DomainFlags {
  std::string name;
  SpecFlags spec;
  bool yes = false;
  // check
  std::string hostname;
  std::vector<std::string> dns;
  uint16_t port = 25;
  std::string connect_timeout = "5s";
};

std::string CanonicalDomain(std::string name) {
  name = absl::AsciiStrToLower(name);
  if (!name.empty() && name.back() == '.') {
    name.pop_back();
  }
  return name;
}

void AddSpecFlags(CLI::App& command, SpecFlags& flags) {
  command.add_option("--primary", flags.primary,
                     "Primary HOST[:PORT] (repeatable; replaces the list; port 25 by default)");
  command.add_flag("--no-primary", flags.no_primary, "Route by MX records instead of primaries")
      ->excludes("--primary");
  command.add_option("--tls", flags.tls, "Toward the primary: opportunistic or required")
      ->check(CLI::IsMember({"opportunistic", "required"}));
  command.add_option("--recipient", flags.recipients,
                     "Accepted address or local part (repeatable; replaces the list)");
  command.add_flag("--no-recipients", flags.no_recipients, "Accept any local part")
      ->excludes("--recipient");
  flags.callout_option = command.add_flag("--callout,!--no-callout", flags.callout,
                                          "Verify recipients with the primary at RCPT time");
  flags.max_queued_messages_option =
      command.add_option("--max-queued-messages", flags.max_queued_messages, "Queued messages");
  command.add_option("--max-queued-bytes", flags.max_queued_bytes, "Queued bytes (e.g. 1GiB)");
  command.add_option("--max-monthly-bytes", flags.max_monthly_bytes,
                     "Bytes accepted per UTC month (e.g. 10GiB)");
  flags.max_daily_connections_option = command.add_option(
      "--max-daily-connections", flags.max_daily_connections, "Sessions per UTC day");
}

// Applies the flags given to `spec`; a malformed value is a usage error (message printed).
bool ApplySpecFlags(const SpecFlags& flags, queue::DomainSpec* spec) {
  if (flags.no_primary || !flags.primary.empty()) {
    spec->clear_primary();
  }
  for (const std::string& text : flags.primary) {
    absl::StatusOr<HostPort> primary = ParseHostPort(text, 25);
    if (!primary.ok() || primary->port == 0) {
      PrintError(fmt::format("--primary {}: expected HOST or HOST:PORT", text));
      return false;
    }
    spec->add_primary(primary->ToString());
  }
  if (!flags.tls.empty()) {
    spec->set_tls(flags.tls == "required" ? queue::TLS_REQUIRED : queue::TLS_OPPORTUNISTIC);
  }
  if (flags.no_recipients || !flags.recipients.empty()) {
    spec->clear_recipients();
  }
  for (const std::string& recipient : flags.recipients) {
    // As the configuration does: the domain part of a full address is case-insensitive.
    const size_t at = recipient.rfind('@');
    spec->add_recipients(at == std::string::npos ? recipient
                                                 : recipient.substr(0, at) +
                                                       absl::AsciiStrToLower(recipient.substr(at)));
  }
  if (flags.callout_option->count() > 0) {
    spec->set_recipient_callout(flags.callout);
  }
  if (flags.max_queued_messages_option->count() > 0) {
    spec->set_max_queued_messages(flags.max_queued_messages);
  }
  if (flags.max_daily_connections_option->count() > 0) {
    spec->set_max_daily_connections(flags.max_daily_connections);
  }
  const auto size = [](const std::string& flag, const std::string& text, auto set) {
    if (text.empty()) {
      return true;
    }
    absl::StatusOr<uint64_t> bytes = ParseSize(text);
    if (!bytes.ok()) {
      PrintError(fmt::format("{} {}: {}", flag, text, std::string(bytes.status().message())));
      return false;
    }
    set(*bytes);
    return true;
  };
  return size("--max-queued-bytes", flags.max_queued_bytes,
              [spec](uint64_t v) { spec->set_max_queued_bytes(v); }) &&
         size("--max-monthly-bytes", flags.max_monthly_bytes,
              [spec](uint64_t v) { spec->set_max_monthly_bytes(v); });
}

void PrintSpec(const Options& options, const char* action, const queue::DomainSpec& spec) {
  if (options.json()) {
    std::cout << fmt::format(R"({{"action":"{}","spec":{}}})", action, ProtoJson(spec)) << "\n";
    return;
  }
  std::cout << fmt::format(
      "{}: {}\n  primary     {}\n  tls         {}\n  recipients  {}\n  callout     {}\n"
      "  limits      {} messages, {} queued, {} a month, {} sessions a day\n",
      spec.name(), action,
      spec.primary().empty() ? "(MX records)" : absl::StrJoin(spec.primary(), ", "),
      spec.tls() == queue::TLS_REQUIRED ? "required" : "opportunistic",
      spec.recipients().empty() ? "(any)" : absl::StrJoin(spec.recipients(), ", "),
      spec.recipient_callout() ? "yes" : "no", spec.max_queued_messages(),
      FormatSize(spec.max_queued_bytes()), FormatSize(spec.max_monthly_bytes()),
      spec.max_daily_connections());
}

int List(const Options& options) {
  AdminClient client(options);
  admin::ListDomainsResponse response;
  if (!client.Call(&admin::AdminService::Stub::ListDomains, admin::ListDomainsRequest(),
                   &response)) {
    return kExitFailure;
  }
  if (options.json()) {
    std::cout << ProtoJson(response) << "\n";
    return kExitOk;
  }
  std::cout << fmt::format("{:<24}  {:<13}  {:<24}  {:>10}  {:>8}  {:>8}  {:>8}  {}\n", "DOMAIN",
                           "TLS", "PRIMARY", "RECIPIENTS", "MAX-MSGS", "MAX-SIZE", "MONTHLY",
                           "DAILY");
  for (const queue::DomainRecord& record : response.domains()) {
    const queue::DomainSpec& spec = record.spec();
    std::cout << fmt::format(
        "{:<24}  {:<13}  {:<24}  {:>10}  {:>8}  {:>8}  {:>8}  {}\n", spec.name(),
        spec.tls() == queue::TLS_REQUIRED ? "required" : "opportunistic",
        spec.primary().empty() ? "(MX)" : absl::StrJoin(spec.primary(), ","),
        spec.recipients().empty() ? std::string("any") : std::to_string(spec.recipients_size()),
        spec.max_queued_messages(), FormatSize(spec.max_queued_bytes()),
        FormatSize(spec.max_monthly_bytes()), spec.max_daily_connections());
  }
  return kExitOk;
}

int Add(const Options& options, const DomainFlags& flags) {
  // DESIGN §4's defaults, then the flags.
  const DomainConfig defaults;
  queue::DomainSpec spec;
  spec.set_name(CanonicalDomain(flags.name));
  spec.set_tls(queue::TLS_OPPORTUNISTIC);
  spec.set_max_queued_messages(defaults.max_queued_messages);
  spec.set_max_queued_bytes(defaults.max_queued_bytes);
  spec.set_max_monthly_bytes(defaults.max_monthly_bytes);
  spec.set_max_daily_connections(defaults.max_daily_connections);
  if (!ApplySpecFlags(flags.spec, &spec)) {
    return kExitUsage;
  }
  AdminClient client(options);
  queue::CreateDomain request;
  *request.mutable_spec() = spec;
  queue::DomainResult response;
  if (!client.Call(&admin::AdminService::Stub::CreateDomain, request, &response)) {
    return kExitFailure;
  }
  PrintSpec(options, "added", spec);
  return kExitOk;
}

bool GetDomain(AdminClient& client, const std::string& name, queue::DomainRecord* record) {
  admin::GetDomainRequest request;
  request.set_name(name);
  if (!client.Call(&admin::AdminService::Stub::GetDomain, request, record)) {
    return false;
  }
  if (!record->has_spec()) {
    // Known only as a destination (e.g. of DSNs), not a relay domain.
    PrintError(fmt::format("{}: not a configured domain", name));
    return false;
  }
  return true;
}

// Reads the spec, changes the fields whose flags are given, writes it back whole.
int Set(const Options& options, const DomainFlags& flags) {
  AdminClient client(options);
  queue::DomainRecord record;
  if (!GetDomain(client, CanonicalDomain(flags.name), &record)) {
    return kExitFailure;
  }
  queue::DomainSpec spec = record.spec();
  if (!ApplySpecFlags(flags.spec, &spec)) {
    return kExitUsage;
  }
  queue::UpdateDomain request;
  *request.mutable_spec() = spec;
  queue::DomainResult response;
  if (!client.Call(&admin::AdminService::Stub::UpdateDomain, request, &response)) {
    return kExitFailure;
  }
  PrintSpec(options, "updated", spec);
  return kExitOk;
}

int Remove(const Options& options, const DomainFlags& flags) {
  const std::string name = CanonicalDomain(flags.name);
  AdminClient client(options);
  queue::DomainRecord record;
  if (!GetDomain(client, name, &record)) {
    return kExitFailure;
  }
  if (!flags.yes) {
    PrintSpec(options, "would remove", record.spec());
    PrintError(fmt::format("remove {}: nothing done without --yes", name));
    return kExitUsage;
  }
  queue::DeleteDomain request;
  request.set_name(name);
  queue::DomainResult response;
  if (!client.Call(&admin::AdminService::Stub::DeleteDomain, request, &response)) {
    return kExitFailure;
  }
  PrintSpec(options, "removed", record.spec());
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------
// check

struct PrimaryReport {
  MxRecord record;
  std::vector<std::string> addresses;
  BannerProbe probe;
};

std::string CheckJson(const std::string& domain, const std::string& hostname, const MxResult& mx,
                      const MxJudgement& judgement, const std::vector<PrimaryReport>& primaries,
                      const std::vector<std::string>& problems) {
  std::string json = "{\"domain\":";
  AppendJson(json, domain);
  json += ",\"hostname\":";
  AppendJson(json, hostname);
  json += ",\"mx\":[";
  for (size_t i = 0; i < mx.records.size(); ++i) {
    json +=
        fmt::format(R"({}{{"preference":{},"exchange":)", i ? "," : "", mx.records[i].preference);
    AppendJson(json, mx.records[i].exchange);
    json += "}";
  }
  json += fmt::format(R"(],"null_mx":{},"listed":{},"our_preference":{},"below_primary":{})",
                      mx.null_mx, judgement.listed, judgement.our_preference,
                      judgement.listed && !judgement.primaries.empty());
  json += ",\"primaries\":[";
  for (size_t i = 0; i < primaries.size(); ++i) {
    const PrimaryReport& report = primaries[i];
    json += fmt::format(R"({}{{"exchange":)", i ? "," : "");
    AppendJson(json, report.record.exchange);
    json += fmt::format(R"(,"preference":{},"addresses":[)", report.record.preference);
    for (size_t a = 0; a < report.addresses.size(); ++a) {
      json += a ? "," : "";
      AppendJson(json, report.addresses[a]);
    }
    json += fmt::format(R"(],"reachable":{},"address":)", report.probe.reachable);
    AppendJson(json, report.probe.address);
    json += ",\"banner\":";
    AppendJson(json, report.probe.banner);
    json += ",\"error\":";
    AppendJson(json, report.probe.error);
    json += "}";
  }
  json += "],\"problems\":[";
  for (size_t i = 0; i < problems.size(); ++i) {
    json += i ? "," : "";
    AppendJson(json, problems[i]);
  }
  return json + fmt::format(R"(],"ok":{}}})", problems.empty());
}

// The cluster's MX host name: --hostname, else the [node] hostname of the queue node asked.
std::optional<std::string> OurHostname(const Options& options, const DomainFlags& flags) {
  if (!flags.hostname.empty()) {
    return flags.hostname;
  }
  AdminClient client(options);
  admin::ClusterStatus status;
  if (!client.Call(&admin::AdminService::Stub::GetClusterStatus, admin::GetClusterStatusRequest(),
                   &status)) {
    PrintError("without --hostname, the cluster's host name comes from the queue node asked");
    return std::nullopt;
  }
  if (status.hostname().empty()) {
    PrintError(fmt::format("{} does not report its host name: give --hostname", client.endpoint()));
    return std::nullopt;
  }
  return status.hostname();
}

int Check(const Options& options, const DomainFlags& flags) {
  const std::string domain = CanonicalDomain(flags.name);
  std::vector<HostPort> servers;
  for (const std::string& text : flags.dns) {
    absl::StatusOr<HostPort> server = ParseHostPort(text, 53);
    if (!server.ok() || server->port == 0) {
      PrintError(fmt::format("--dns {}: expected IP[:PORT]", text));
      return kExitUsage;
    }
    servers.push_back(*server);
  }
  absl::StatusOr<absl::Duration> timeout = ParseDuration(flags.connect_timeout);
  if (!timeout.ok()) {
    PrintError(fmt::format("--connect-timeout: {}", std::string(timeout.status().message())));
    return kExitUsage;
  }
  const std::optional<std::string> hostname = OurHostname(options, flags);
  if (!hostname) {
    return kExitFailure;
  }
  absl::StatusOr<std::unique_ptr<BlockingDns>> dns = BlockingDns::Create(servers);
  if (!dns.ok()) {
    PrintError(fmt::format("DNS resolver: {}", std::string(dns.status().message())));
    return kExitFailure;
  }
  const MxResult mx = (*dns)->Mx(domain);
  MxJudgement judgement;
  std::vector<std::string> problems;
  if (!mx.status.ok()) {
    problems.push_back(
        fmt::format("MX lookup of {} failed: {}", domain, std::string(mx.status.message())));
  } else if (mx.null_mx) {
    problems.push_back(fmt::format("{} publishes a null MX: it accepts no mail", domain));
  } else {
    judgement = JudgeMx(domain, mx.records, *hostname);
    problems = judgement.problems;
  }
  std::vector<PrimaryReport> primaries;
  for (const MxRecord& record : judgement.primaries) {
    PrimaryReport report{record, {}, {}};
    const AddressResult addresses = (*dns)->Addresses(record.exchange);
    if (!addresses.status.ok()) {
      report.probe.error =
          fmt::format("address lookup failed: {}", std::string(addresses.status.message()));
    } else {
      report.addresses = addresses.addresses;
      report.probe = ProbeSmtp(report.addresses, flags.port, *timeout);
    }
    if (!report.probe.reachable) {
      problems.push_back(
          fmt::format("primary {} is unreachable: {}", record.exchange, report.probe.error));
    }
    primaries.push_back(std::move(report));
  }

  if (options.json()) {
    std::cout << CheckJson(domain, *hostname, mx, judgement, primaries, problems) << "\n";
  } else {
    std::cout << fmt::format("MX records of {}:\n", domain);
    for (const MxRecord& record : mx.records) {
      std::cout << fmt::format("  {:>5}  {}\n", record.preference, record.exchange);
    }
    if (judgement.listed) {
      std::cout << fmt::format("{} is listed at preference {}\n", *hostname,
                               judgement.our_preference);
    }
    for (const PrimaryReport& report : primaries) {
      std::cout << fmt::format("primary {} ({}): {}\n", report.record.exchange,
                               report.probe.address.empty() ? "-" : report.probe.address,
                               report.probe.reachable ? report.probe.banner : report.probe.error);
    }
    if (problems.empty()) {
      std::cout << "ok: the setup is sound\n";
    }
    for (const std::string& problem : problems) {
      std::cout << "problem: " << problem << "\n";
    }
  }
  return problems.empty() ? kExitOk : kExitFailure;
}

}  // namespace

void AddDomainCommands(CLI::App& app, const Options& options, std::vector<Command>* commands) {
  // One per subcommand: shared by CLI11's bindings, which fill it while parsing, and the run
  // closure.
  const auto flags_for = [] { return std::make_shared<DomainFlags>(); };

  CLI::App* domain = app.add_subcommand("domain", "Relay domains in the replicated table");
  domain->require_subcommand(1);
  commands->push_back({domain->add_subcommand("list", "Configured domains and their limits"),
                       [&options] { return List(options); }});

  auto add_flags = flags_for();
  CLI::App* add = domain->add_subcommand("add", "Add a domain (unset limits: DESIGN defaults)");
  add->add_option("name", add_flags->name, "Domain")->required();
  AddSpecFlags(*add, add_flags->spec);
  commands->push_back({add, [&options, add_flags] { return Add(options, *add_flags); }});

  auto set_flags = flags_for();
  CLI::App* set = domain->add_subcommand("set", "Change the given fields of a domain");
  set->add_option("name", set_flags->name, "Domain")->required();
  AddSpecFlags(*set, set_flags->spec);
  commands->push_back({set, [&options, set_flags] { return Set(options, *set_flags); }});

  auto remove_flags = flags_for();
  CLI::App* remove = domain->add_subcommand("remove", "Remove a domain (needs --yes)");
  remove->add_option("name", remove_flags->name, "Domain")->required();
  remove->add_flag("--yes", remove_flags->yes, "Confirm");
  commands->push_back(
      {remove, [&options, remove_flags] { return Remove(options, *remove_flags); }});

  auto check_flags = flags_for();
  CLI::App* check = domain->add_subcommand(
      "check", "Resolve the domain's MX records: are we listed, below the primary, reachable?");
  check->add_option("name", check_flags->name, "Domain")->required();
  check->add_option("--hostname", check_flags->hostname,
                    "Our MX host name (default: the [node] hostname of the queue node asked)");
  check->add_option("--dns", check_flags->dns,
                    "DNS server IP[:PORT] (repeatable; default /etc/resolv.conf)");
  check->add_option("--port", check_flags->port, "SMTP port of the primaries (default 25)");
  check->add_option("--connect-timeout", check_flags->connect_timeout,
                    "Per connection and greeting (default 5s)");
  commands->push_back({check, [&options, check_flags] { return Check(options, *check_flags); }});
}

}  // namespace backstop::ctl
