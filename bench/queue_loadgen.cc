// backstop-queue-loadgen: appends uniquely numbered messages to the queue through QueueClient
// (the same client ingest uses) from many concurrent workers, and reports throughput as JSON.
// With --acked FILE it records the id of every message the queue acknowledged; with --verify
// FILE it reads each of those ids back from one voter (--endpoints names exactly one), which is
// how the system tests prove that nothing acknowledged was lost. --add-voter ID@HOST:PORT and
// --remove-voter ID call the AdminService instead (trying each endpoint until the leader
// answers), for the membership system tests until backstopctl exists.
//
// --domains N spreads the messages round-robin over N destination domains, and --curve-every K
// prints the latency curve of a growing queue (issue 11, `make bench-scale`): after every K
// appended messages one JSON line with the p50/p99 of the Append calls in that window and of a
// Lease probe that ran during it. The probe leases a few entries every ~100 ms and never
// completes them: a completion would deliver or delete them, and a RetryLater would mark the
// domain down; an unanswered lease only runs out, leaving the entries queued as before.

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include "absl/time/clock.h"
#include "bench/loadgen_core.h"
#include "proto/admin.grpc.pb.h"
#include "queue/message_id.h"
#include "queue/queue_client.h"

namespace backstop::queue {
namespace {

struct Flags {
  std::vector<std::string> endpoints;
  uint64_t messages = 1000;
  size_t size = 2048;
  int concurrency = 16;
  int batch = 1;
  std::string domain = "example.test";
  uint64_t domains = 1;
  uint64_t curve_every = 0;  // 0 = no curve
  std::string acked_path;
  std::string verify_path;
  uint64_t node_id = 999;
  std::string add_voter;  // id@host:port
  uint64_t remove_voter = 0;
};

QueueEntry MakeEntry(const Flags& flags, uint64_t n, absl::Time now) {
  QueueEntry entry;
  entry.set_id(std::string(MessageId::Make(now, flags.node_id, n).bytes()));
  const std::string domain =
      flags.domains <= 1 ? flags.domain : fmt::format("d{}.{}", n % flags.domains, flags.domain);
  entry.set_domain(domain);
  Envelope* envelope = entry.mutable_envelope();
  envelope->set_reverse_path("loadgen@example.org");
  envelope->add_recipients()->set_address("user@" + domain);
  envelope->set_arrival_ms(absl::ToUnixMillis(now));
  std::string message = fmt::format("Message-ID: <{}@loadgen>\r\nSubject: {}\r\n\r\n", n, n);
  while (message.size() + 2 < flags.size) {
    message.append(std::min<size_t>(76, flags.size - message.size() - 2), 'x').append("\r\n");
  }
  entry.set_message(std::move(message));
  return entry;
}

double Millis(absl::Duration d) {
  return absl::ToDoubleMilliseconds(d);
}

// The latency samples of the current curve window, from the appenders and the lease probe; the
// appender whose call completes a window prints it. Thread-safe.
class Curve {
 public:
  explicit Curve(uint64_t every) : every_(every) {}

  void AddLease(absl::Duration latency) {
    std::lock_guard lock(mutex_);
    lease_.push_back(latency);
  }

  // One Append call of `entries` messages that took `latency`.
  void AddAppend(uint64_t entries, absl::Duration latency) {
    std::lock_guard lock(mutex_);
    append_.push_back(latency);
    const uint64_t before = appended_;
    appended_ += entries;
    if (before / every_ == appended_ / every_) {
      return;
    }
    const bench::Percentiles append = bench::Summarize(append_);
    const bench::Percentiles lease = bench::Summarize(lease_);
    std::cout << fmt::format(
                     "{{\"appended\":{},\"append_calls\":{},\"append_p50_ms\":{:.2f},"
                     "\"append_p99_ms\":{:.2f},\"lease_calls\":{},\"lease_p50_ms\":{:.2f},"
                     "\"lease_p99_ms\":{:.2f}}}",
                     appended_ / every_ * every_, append.count, Millis(append.p50),
                     Millis(append.p99), lease.count, Millis(lease.p50), Millis(lease.p99))
              << std::endl;
    append_.clear();
    lease_.clear();
  }

 private:
  const uint64_t every_;
  std::mutex mutex_;
  uint64_t appended_ = 0;  // guarded by mutex_, like the samples
  std::vector<absl::Duration> append_;
  std::vector<absl::Duration> lease_;
};

// Leases up to 10 entries for one second every ~100 ms until `stop`, timing each call.
void ProbeLeases(QueueClient& client, Curve& curve, const std::atomic<bool>& stop) {
  LeaseEntries request;
  request.set_worker_id("queue-loadgen-probe");
  request.set_max_entries(10);
  request.set_lease_duration_ms(1000);
  while (!stop.load()) {
    const absl::Time start = absl::Now();
    absl::StatusOr<LeaseResult> result = client.Lease(request);
    if (result.ok()) {
      curve.AddLease(absl::Now() - start);
    } else {
      std::cerr << "lease probe failed: " << result.status() << "\n";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

int Append(const Flags& flags, QueueClient& client) {
  std::atomic<uint64_t> next{0};
  std::atomic<uint64_t> acked{0};
  std::atomic<uint64_t> failed{0};
  std::mutex acked_mutex;
  std::ofstream acked_file;
  if (!flags.acked_path.empty()) {
    acked_file.open(flags.acked_path);
  }
  std::optional<Curve> curve;
  std::atomic<bool> stop_probe{false};
  std::thread probe;
  if (flags.curve_every > 0) {
    curve.emplace(flags.curve_every);
    probe = std::thread([&] { ProbeLeases(client, *curve, stop_probe); });
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (int w = 0; w < flags.concurrency; ++w) {
    workers.emplace_back([&] {
      while (true) {
        const uint64_t first = next.fetch_add(flags.batch);
        if (first >= flags.messages) {
          return;
        }
        AppendMessages request;
        const absl::Time now = absl::Now();
        for (uint64_t n = first; n < std::min<uint64_t>(first + flags.batch, flags.messages); ++n) {
          *request.add_entries() = MakeEntry(flags, n, now);
        }
        const absl::Time call_start = absl::Now();
        absl::StatusOr<AppendResult> result = client.Append(request);
        if (curve) {
          curve->AddAppend(request.entries_size(), absl::Now() - call_start);
        }
        if (!result.ok()) {
          failed += request.entries_size();
          std::cerr << "append failed: " << result.status() << "\n";
          continue;
        }
        std::lock_guard lock(acked_mutex);
        for (const AppendOutcome& outcome : result->outcomes()) {
          if (outcome.code() == OK || outcome.code() == ALREADY_EXISTS) {
            ++acked;
            if (acked_file.is_open()) {
              acked_file << MessageId::FromBytes(outcome.id())->ToString() << "\n";
            }
          } else {
            ++failed;
          }
        }
      }
    });
  }
  for (std::thread& worker : workers) {
    worker.join();
  }
  stop_probe = true;
  if (probe.joinable()) {
    probe.join();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << fmt::format(
      "{{\"messages\":{},\"acked\":{},\"failed\":{},\"size\":{},\"concurrency\":{},"
      "\"batch\":{},\"domains\":{},\"seconds\":{:.3f},\"messages_per_second\":{:.1f},"
      "\"mb_per_second\":{:.2f}}}\n",
      flags.messages, acked.load(), failed.load(), flags.size, flags.concurrency, flags.batch,
      flags.domains, seconds, acked.load() / seconds, acked.load() * flags.size / seconds / 1e6);
  return failed.load() == 0 ? 0 : 1;
}

int Verify(const Flags& flags, QueueClient& client) {
  std::ifstream file(flags.verify_path);
  uint64_t present = 0;
  uint64_t missing = 0;
  for (std::string hex; std::getline(file, hex);) {
    absl::StatusOr<MessageId> id = MessageId::FromString(hex);
    if (!id.ok()) {
      std::cerr << "bad id in " << flags.verify_path << ": " << hex << "\n";
      return 2;
    }
    ReadMessageRequest request;
    request.set_id(std::string(id->bytes()));
    if (client.ReadMessage(request).ok()) {
      ++present;
    } else {
      ++missing;
      std::cerr << "missing: " << hex << "\n";
    }
  }
  std::cout << fmt::format("{{\"present\":{},\"missing\":{}}}\n", present, missing);
  return missing == 0 ? 0 : 1;
}

// One membership change through whichever endpoint leads, retried for up to a minute (a
// follower refuses; a learner may still be catching up).
int ChangeMembership(const Flags& flags) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::string last_error;
  while (std::chrono::steady_clock::now() < deadline) {
    for (const std::string& endpoint : flags.endpoints) {
      auto stub = admin::AdminService::NewStub(
          grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials()));
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(70));
      grpc::Status status;
      if (flags.remove_voter != 0) {
        admin::RemoveVoterRequest request;
        request.set_id(flags.remove_voter);
        admin::RemoveVoterResponse response;
        status = stub->RemoveVoter(&context, request, &response);
      } else {
        const size_t at = flags.add_voter.find('@');
        if (at == std::string::npos) {
          std::cerr << "--add-voter expects id@host:port\n";
          return 2;
        }
        admin::AddVoterRequest request;
        request.set_id(std::stoull(flags.add_voter.substr(0, at)));
        request.set_address(flags.add_voter.substr(at + 1));
        admin::AddVoterResponse response;
        status = stub->AddVoter(&context, request, &response);
      }
      if (status.ok()) {
        std::cout << "{\"ok\":true}\n";
        return 0;
      }
      last_error = endpoint + ": " + status.error_message();
      if (status.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
          status.error_code() == grpc::StatusCode::NOT_FOUND ||
          status.error_code() == grpc::StatusCode::ALREADY_EXISTS) {
        std::cerr << last_error << "\n";
        return 1;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::cerr << "membership change did not succeed: " << last_error << "\n";
  return 1;
}

int Main(int argc, char** argv) {
  CLI::App app{"backstop-queue-loadgen: append load and loss checks against the queue"};
  Flags flags;
  app.add_option("--endpoints", flags.endpoints, "queue voters, host:port")
      ->required()
      ->delimiter(',');
  app.add_option("--messages", flags.messages, "messages to append");
  app.add_option("--size", flags.size, "bytes per message");
  app.add_option("--concurrency", flags.concurrency, "concurrent appenders");
  app.add_option("--batch", flags.batch, "messages per Append call");
  app.add_option("--domain", flags.domain, "destination domain");
  app.add_option("--domains", flags.domains,
                 "spread messages round-robin over this many domains, d<i>.<--domain>")
      ->check(CLI::PositiveNumber);
  app.add_option("--curve-every", flags.curve_every,
                 "print append and lease latency (JSON line) after every this many messages");
  app.add_option("--acked", flags.acked_path, "write acknowledged ids here");
  app.add_option("--verify", flags.verify_path, "read back the ids in this file instead");
  app.add_option("--id-node", flags.node_id, "node id stamped into message ids");
  app.add_option("--add-voter", flags.add_voter, "add this voter (id@host:port) instead");
  app.add_option("--remove-voter", flags.remove_voter, "remove this voter (id) instead");
  CLI11_PARSE(app, argc, argv);
  if (!flags.add_voter.empty() || flags.remove_voter != 0) {
    return ChangeMembership(flags);
  }

  QueueClientOptions options;
  options.endpoints = flags.endpoints;
  options.call_deadline = absl::Seconds(30);
  absl::StatusOr<std::unique_ptr<QueueClient>> client = QueueClient::Create(options);
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 2;
  }
  return flags.verify_path.empty() ? Append(flags, **client) : Verify(flags, **client);
}

}  // namespace
}  // namespace backstop::queue

int main(int argc, char** argv) {
  return backstop::queue::Main(argc, argv);
}
