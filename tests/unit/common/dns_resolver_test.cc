#include "common/dns_resolver.h"

#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace backstop {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

constexpr auto kServerStartLimit = std::chrono::seconds(20);
constexpr absl::Duration kTestTimeLimit = absl::Seconds(20);

// A process started by a test, stopped (SIGTERM, then reaped) when this goes away.
class ChildProcess {
 public:
  // Starts `argv`; with `capture_stdout`, stdout_fd() reads its standard output.
  static std::unique_ptr<ChildProcess> Start(const std::vector<std::string>& argv,
                                             bool capture_stdout) {
    auto child = std::unique_ptr<ChildProcess>(new ChildProcess());
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    int pipe_fds[2] = {-1, -1};
    if (capture_stdout) {
      if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
        return nullptr;
      }
      posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDOUT_FILENO);
    }
    std::vector<char*> args;
    for (const std::string& arg : argv) {
      args.push_back(const_cast<char*>(arg.c_str()));
    }
    args.push_back(nullptr);
    const int rc = posix_spawn(&child->pid_, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (capture_stdout) {
      close(pipe_fds[1]);
      child->stdout_fd_ = pipe_fds[0];
    }
    if (rc != 0) {
      child->pid_ = -1;
      return nullptr;
    }
    return child;
  }

  ~ChildProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    if (stdout_fd_ >= 0) {
      close(stdout_fd_);
    }
  }

  bool Exited() {
    if (!exited_ && waitpid(pid_, nullptr, WNOHANG) == pid_) {
      exited_ = true;
    }
    return exited_;
  }

  // One line of the child's stdout (blocking), without the newline.
  std::string ReadLine() {
    std::string line;
    char c;
    while (read(stdout_fd_, &c, 1) == 1 && c != '\n') {
      line += c;
    }
    return line;
  }

 private:
  ChildProcess() = default;
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  bool exited_ = false;
};

std::unique_ptr<EventLoop> NewLoop() {
  // The resolver never uses provided buffers: keep them small.
  EventLoopOptions options;
  options.queue_depth = 256;
  options.buffer_count = 1;
  options.buffer_size = 64;
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create(options);
  EXPECT_TRUE(loop.ok()) << loop.status();
  return loop.ok() ? std::move(*loop) : nullptr;
}

// A port that was free on 127.0.0.1 for both UDP and TCP a moment ago.
uint16_t FreePort() {
  for (;;) {
    const int tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    bind(tcp, reinterpret_cast<sockaddr*>(&address), sizeof(address));
    getsockname(tcp, reinterpret_cast<sockaddr*>(&address), &length);
    const int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    const bool udp_free = bind(udp, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
    close(udp);
    close(tcp);
    if (udp_free) {
      return ntohs(address.sin_port);
    }
  }
}

// One event loop and one resolver for one test step; the loop runs until Stop() or the time
// limit (a failure).
class Session {
 public:
  explicit Session(std::vector<HostPort> servers, absl::Duration timeout = absl::Seconds(2),
                   int tries = 2)
      : loop_(NewLoop()), watchdog_([this](const Completion& completion) {
          if (completion.result == 0) {
            ADD_FAILURE() << "the DNS lookups did not complete in time";
            loop_->Stop();
          }
        }) {
    absl::StatusOr<std::unique_ptr<Resolver>> resolver = Resolver::Create(
        *loop_, ResolverOptions{.servers = std::move(servers), .timeout = timeout, .tries = tries});
    EXPECT_TRUE(resolver.ok()) << resolver.status();
    if (resolver.ok()) {
      resolver_ = std::move(*resolver);
    }
  }

  EventLoop& loop() { return *loop_; }
  Resolver& resolver() { return *resolver_; }
  void DestroyResolver() { resolver_.reset(); }
  void Stop() { loop_->Stop(); }

  void Run() {
    loop_->StartTimer(watchdog_, kTestTimeLimit);
    loop_->Run();
  }

  // Runs one lookup to completion: `start(resolver, done)` issues it.
  template <typename Result>
  Result RunOne(const std::function<void(Resolver&, std::function<void(Result)>)>& start) {
    std::optional<Result> result;
    int calls = 0;
    start(*resolver_, [&](Result r) {
      ++calls;
      result = std::move(r);
      loop_->Stop();
    });
    Run();
    EXPECT_EQ(calls, 1);
    return result.value_or(Result{});
  }

 private:
  // Declared first: everything below may hold Operations on it.
  std::unique_ptr<EventLoop> loop_;
  Operation watchdog_;
  std::unique_ptr<Resolver> resolver_;
};

// The Python DNS server for what dnsmasq cannot do on demand: SERVFAIL, REFUSED, silence,
// AAAA failing next to a good A, a TXT record of several character-strings.
constexpr char kPythonServer[] = R"PY(
import socket, sys
from dnslib import DNSRecord, RR, QTYPE, RCODE, A, TXT
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
while True:
    data, peer = sock.recvfrom(4096)
    try:
        request = DNSRecord.parse(data)
    except Exception:
        continue
    name = str(request.q.qname).rstrip(".").lower()
    qtype = QTYPE[request.q.qtype]
    if name.endswith("silent.test"):
        continue
    reply = request.reply()
    if name == "servfail.test":
        reply.header.rcode = RCODE.SERVFAIL
    elif name == "refused.test":
        reply.header.rcode = RCODE.REFUSED
    elif name in ("a.test", "halfbroken.test") and qtype == "A":
        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("127.0.0.7"), ttl=60))
    elif name == "halfbroken.test" and qtype == "AAAA":
        reply.header.rcode = RCODE.SERVFAIL
    elif name == "strings.test" and qtype == "TXT":
        reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(["v=spf1 ", "-all"]), ttl=60))
    else:
        reply.header.rcode = RCODE.NXDOMAIN
    sock.sendto(reply.pack(), peer)
)PY";

class ResolverTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    StartDnsmasq();
    StartPythonServer();
  }

  static void TearDownTestSuite() {
    dnsmasq_.reset();
    python_.reset();
  }

  void SetUp() override {
    ASSERT_NE(dnsmasq_, nullptr) << "dnsmasq did not start";
    ASSERT_NE(python_, nullptr) << "the Python DNS server did not start";
  }

  static std::vector<HostPort> Dnsmasq() { return {{"127.0.0.1", dnsmasq_port_}}; }
  static std::vector<HostPort> Python() { return {{"127.0.0.1", python_port_}}; }

  static MxResult Mx(const std::vector<HostPort>& servers, const std::string& name) {
    Session session(servers);
    return session.RunOne<MxResult>(
        [&](Resolver& resolver, Resolver::MxCallback done) { resolver.LookupMx(name, done); });
  }
  static AddressResult Addresses(const std::vector<HostPort>& servers, const std::string& name) {
    Session session(servers);
    return session.RunOne<AddressResult>([&](Resolver& resolver, Resolver::AddressCallback done) {
      resolver.LookupAddresses(name, done);
    });
  }
  static AddressResult A(const std::vector<HostPort>& servers, const std::string& name) {
    Session session(servers);
    return session.RunOne<AddressResult>(
        [&](Resolver& resolver, Resolver::AddressCallback done) { resolver.LookupA(name, done); });
  }
  static NamesResult Ptr(const std::vector<HostPort>& servers, const std::string& ip) {
    Session session(servers);
    return session.RunOne<NamesResult>(
        [&](Resolver& resolver, Resolver::NamesCallback done) { resolver.LookupPtr(ip, done); });
  }
  static TxtResult Txt(const std::vector<HostPort>& servers, const std::string& name) {
    Session session(servers);
    return session.RunOne<TxtResult>(
        [&](Resolver& resolver, Resolver::TxtCallback done) { resolver.LookupTxt(name, done); });
  }

 private:
  static void StartDnsmasq() {
    // Three character-strings (dnsmasq splits at commas) in one record.
    const std::string big_record = fmt::format("{},{},{}", std::string(200, 'x'),
                                               std::string(200, 'y'), std::string(200, 'z'));
    const auto deadline = std::chrono::steady_clock::now() + kServerStartLimit;
    while (std::chrono::steady_clock::now() < deadline) {
      const uint16_t port = FreePort();
      auto child = ChildProcess::Start(
          {"/usr/sbin/dnsmasq", "--keep-in-foreground", "--port=" + std::to_string(port),
           "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
           "--conf-file=/dev/null", "--pid-file=", "--user=nobody",
           // Authoritative for these zones: NXDOMAIN / NODATA instead of REFUSED.
           "--local=/test/", "--local=/in-addr.arpa/", "--mx-host=example.test,mx2.example.test,20",
           "--mx-host=example.test,mx1.example.test,10", "--mx-host=nullmx.test,.,0",
           "--host-record=mx1.example.test,127.0.0.3", "--host-record=implicit.test,127.0.0.5",
           "--host-record=both.test,127.0.0.6,::1", "--host-record=ready.test,127.0.0.1",
           "--ptr-record=1.0.0.127.in-addr.arpa,client.test",
           "--ptr-record=4.0.0.127.in-addr.arpa,one.test",
           "--ptr-record=4.0.0.127.in-addr.arpa,two.test",
           "--host-record=2.0.0.127.bl.test,127.0.0.2",
           "--txt-record=2.0.0.127.bl.test,Listed: see https://bl.test/127.0.0.2",
           "--txt-record=big.test," + big_record, "--txt-record=big.test," + std::string(200, 'w')},
          /*capture_stdout=*/false);
      if (child == nullptr) {
        return;
      }
      // Ready when it answers; an exit means the port was taken meanwhile: try another.
      for (;;) {
        if (child->Exited()) {
          break;
        }
        Session session({{"127.0.0.1", port}}, absl::Milliseconds(200), 1);
        const AddressResult result =
            session.RunOne<AddressResult>([](Resolver& resolver, Resolver::AddressCallback done) {
              resolver.LookupA("ready.test", done);
            });
        if (result.status.ok()) {
          dnsmasq_ = std::move(child);
          dnsmasq_port_ = port;
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling, not ordering
      }
    }
  }

  static void StartPythonServer() {
    const std::string script = testing::TempDir() + "/dns_resolver_test_server.py";
    std::ofstream(script) << kPythonServer;
    auto child = ChildProcess::Start({"/usr/bin/python3", script}, /*capture_stdout=*/true);
    if (child == nullptr) {
      return;
    }
    // The server prints its port once its socket is bound: queries sent from then on wait
    // in the socket buffer.
    const int port = std::atoi(child->ReadLine().c_str());
    if (port <= 0 || port > 65535) {
      return;
    }
    python_ = std::move(child);
    python_port_ = static_cast<uint16_t>(port);
  }

  static inline std::unique_ptr<ChildProcess> dnsmasq_;
  static inline uint16_t dnsmasq_port_ = 0;
  static inline std::unique_ptr<ChildProcess> python_;
  static inline uint16_t python_port_ = 0;
};

TEST_F(ResolverTest, ReturnsMxRecordsSortedByPreference) {
  const MxResult result = Mx(Dnsmasq(), "example.test");
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_FALSE(result.null_mx);
  EXPECT_THAT(result.records,
              ElementsAre(MxRecord{10, "mx1.example.test"}, MxRecord{20, "mx2.example.test"}));
}

TEST_F(ResolverTest, AcceptsFullyQualifiedNameWithTrailingDot) {
  const MxResult result = Mx(Dnsmasq(), "example.test.");
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_EQ(result.records.size(), 2u);
}

TEST_F(ResolverTest, MxNoDataSignalsImplicitMxAndAddressesResolve) {
  const MxResult mx = Mx(Dnsmasq(), "implicit.test");
  EXPECT_TRUE(absl::IsNotFound(mx.status)) << mx.status;
  EXPECT_TRUE(IsNoData(mx.status)) << mx.status;
  EXPECT_FALSE(IsNxDomain(mx.status)) << mx.status;
  EXPECT_THAT(mx.records, IsEmpty());

  const AddressResult addresses = Addresses(Dnsmasq(), "implicit.test");
  ASSERT_TRUE(addresses.status.ok()) << addresses.status;
  EXPECT_THAT(addresses.addresses, ElementsAre("127.0.0.5"));
}

TEST_F(ResolverTest, MxOfMissingDomainIsNxDomain) {
  const MxResult result = Mx(Dnsmasq(), "missing.test");
  EXPECT_TRUE(absl::IsNotFound(result.status)) << result.status;
  EXPECT_TRUE(IsNxDomain(result.status)) << result.status;
  EXPECT_FALSE(IsNoData(result.status)) << result.status;
  EXPECT_THAT(std::string(result.status.message()), HasSubstr("missing.test"));
}

TEST_F(ResolverTest, DetectsNullMx) {
  const MxResult result = Mx(Dnsmasq(), "nullmx.test");
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_TRUE(result.null_mx);
  EXPECT_THAT(result.records, IsEmpty());
}

TEST_F(ResolverTest, ServfailIsUnavailable) {
  const MxResult result = Mx(Python(), "servfail.test");
  EXPECT_TRUE(absl::IsUnavailable(result.status)) << result.status;
  EXPECT_THAT(std::string(result.status.message()), HasSubstr("SERVFAIL"));
}

TEST_F(ResolverTest, RefusedIsUnavailable) {
  const MxResult result = Mx(Python(), "refused.test");
  EXPECT_TRUE(absl::IsUnavailable(result.status)) << result.status;
}

TEST_F(ResolverTest, NxDomainFromPythonServerIsNotFound) {
  const MxResult result = Mx(Python(), "other.test");
  EXPECT_TRUE(IsNxDomain(result.status)) << result.status;
}

TEST_F(ResolverTest, SilentServerIsDeadlineExceeded) {
  Session session(Python(), absl::Milliseconds(100), 2);
  const absl::Time start = absl::Now();
  const MxResult result =
      session.RunOne<MxResult>([](Resolver& resolver, Resolver::MxCallback done) {
        resolver.LookupMx("silent.test", done);
      });
  EXPECT_TRUE(absl::IsDeadlineExceeded(result.status)) << result.status;
  // Two tries: 100 ms, then 200 ms (c-ares doubles per round through the servers).
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
}

TEST_F(ResolverTest, ConnectionRefusedIsUnavailable) {
  const MxResult result = Mx({{"127.0.0.1", FreePort()}}, "example.test");
  EXPECT_TRUE(absl::IsUnavailable(result.status)) << result.status;
}

TEST_F(ResolverTest, AddressesListIpv4ThenIpv6) {
  const AddressResult result = Addresses(Dnsmasq(), "both.test");
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_THAT(result.addresses, ElementsAre("127.0.0.6", "::1"));
}

TEST_F(ResolverTest, AddressesSucceedWhenOnlyAaaaFails) {
  const AddressResult result = Addresses(Python(), "halfbroken.test");
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_THAT(result.addresses, ElementsAre("127.0.0.7"));
}

TEST_F(ResolverTest, AddressesOfIpLiteralIsTheLiteral) {
  EXPECT_THAT(Addresses(Dnsmasq(), "192.0.2.25").addresses, ElementsAre("192.0.2.25"));
  EXPECT_THAT(Addresses(Dnsmasq(), "2001:DB8::25").addresses, ElementsAre("2001:db8::25"));
}

TEST_F(ResolverTest, AddressesOfMissingNameIsNxDomain) {
  const AddressResult result = Addresses(Dnsmasq(), "missing.test");
  EXPECT_TRUE(IsNxDomain(result.status)) << result.status;
  EXPECT_THAT(result.addresses, IsEmpty());
}

TEST_F(ResolverTest, AddressesTemporaryFailureWinsOverNotFound) {
  const AddressResult result = Addresses(Python(), "servfail.test");
  EXPECT_TRUE(absl::IsUnavailable(result.status)) << result.status;
}

TEST_F(ResolverTest, LooksUpPtr) {
  const NamesResult result = Ptr(Dnsmasq(), "127.0.0.1");
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_THAT(result.names, ElementsAre("client.test"));
}

TEST_F(ResolverTest, PtrReturnsEveryName) {
  const NamesResult result = Ptr(Dnsmasq(), "127.0.0.4");
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_THAT(result.names, UnorderedElementsAre("one.test", "two.test"));
}

TEST_F(ResolverTest, PtrOfUnknownAddressIsNxDomain) {
  const NamesResult result = Ptr(Dnsmasq(), "127.0.0.9");
  EXPECT_TRUE(IsNxDomain(result.status)) << result.status;
}

TEST_F(ResolverTest, PtrOfNonAddressIsInvalidArgument) {
  const NamesResult result = Ptr(Dnsmasq(), "client.test");
  EXPECT_TRUE(absl::IsInvalidArgument(result.status)) << result.status;
}

TEST_F(ResolverTest, LooksUpTxt) {
  const TxtResult result = Txt(Dnsmasq(), "2.0.0.127.bl.test");
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_THAT(result.texts, ElementsAre("Listed: see https://bl.test/127.0.0.2"));
}

TEST_F(ResolverTest, TxtJoinsTheCharacterStringsOfOneRecord) {
  const TxtResult result = Txt(Python(), "strings.test");
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_THAT(result.texts, ElementsAre("v=spf1 -all"));
}

TEST_F(ResolverTest, TruncatedAnswerIsRetriedOverTcp) {
  // 800 bytes of TXT: dnsmasq sets TC over UDP, c-ares asks again over TCP.
  const TxtResult result = Txt(Dnsmasq(), "big.test");
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_THAT(result.texts, UnorderedElementsAre(std::string(200, 'x') + std::string(200, 'y') +
                                                     std::string(200, 'z'),
                                                 std::string(200, 'w')));
}

TEST_F(ResolverTest, DnsblListingIsAnARecord) {
  absl::StatusOr<std::string> name = DnsblQueryName("127.0.0.2", "bl.test");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, "2.0.0.127.bl.test");
  const AddressResult listed = A(Dnsmasq(), *name);
  ASSERT_TRUE(listed.status.ok()) << listed.status;
  EXPECT_THAT(listed.addresses, ElementsAre("127.0.0.2"));

  const AddressResult unlisted = A(Dnsmasq(), *DnsblQueryName("127.0.0.3", "bl.test"));
  EXPECT_TRUE(IsNxDomain(unlisted.status)) << unlisted.status;
}

TEST_F(ResolverTest, CompletesManyConcurrentLookups) {
  Session session(Dnsmasq());
  constexpr int kLookups = 200;
  int completed = 0;
  int ok = 0;
  auto done = [&](const absl::Status& status) {
    ok += status.ok() ? 1 : 0;
    if (++completed == kLookups) {
      session.Stop();
    }
  };
  for (int i = 0; i < kLookups; ++i) {
    switch (i % 4) {
      case 0:
        session.resolver().LookupMx("example.test", [&](MxResult r) { done(r.status); });
        break;
      case 1:
        session.resolver().LookupAddresses("both.test", [&](AddressResult r) { done(r.status); });
        break;
      case 2:
        session.resolver().LookupPtr("127.0.0.1", [&](NamesResult r) { done(r.status); });
        break;
      default:
        session.resolver().LookupTxt("2.0.0.127.bl.test", [&](TxtResult r) { done(r.status); });
        break;
    }
  }
  session.Run();
  EXPECT_EQ(completed, kLookups);
  EXPECT_EQ(ok, kLookups);
}

TEST_F(ResolverTest, CallbackNeverRunsInsideLookup) {
  Session session(Dnsmasq());
  int calls = 0;
  absl::Status status;
  session.resolver().LookupMx("bad..name", [&](MxResult r) {
    ++calls;
    status = r.status;
    session.Stop();
  });
  EXPECT_EQ(calls, 0);
  session.Run();
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
}

// Lookups of every kind that the silent server never answers; each callback counts itself
// and records whether it saw Cancelled.
struct PendingLookups {
  void Issue(Resolver& resolver, int each) {
    auto record = [this](const absl::Status& status) {
      ++calls;
      cancelled += absl::IsCancelled(status) ? 1 : 0;
    };
    for (int i = 0; i < each; ++i) {
      const std::string name = fmt::format("n{}.silent.test", i);
      resolver.LookupMx(name, [record](MxResult r) { record(r.status); });
      resolver.LookupAddresses(name, [record](AddressResult r) { record(r.status); });
      resolver.LookupA(name, [record](AddressResult r) { record(r.status); });
      resolver.LookupTxt(name, [record](TxtResult r) { record(r.status); });
    }
    issued += 4 * each;
  }
  int issued = 0;
  int calls = 0;
  int cancelled = 0;
};

TEST_F(ResolverTest, DestroyingResolverCancelsEveryPendingLookupOnce) {
  Session session(Python());
  PendingLookups pending;
  pending.Issue(session.resolver(), 25);
  EXPECT_EQ(pending.calls, 0);
  session.DestroyResolver();
  EXPECT_EQ(pending.calls, pending.issued);
  EXPECT_EQ(pending.cancelled, pending.issued);
  // The loop still holds the cancelled polls and timer; running it down reaps them (an
  // Operation destroyed in flight would abort).
  session.Stop();
  session.Run();
  EXPECT_EQ(pending.calls, pending.issued);
}

TEST_F(ResolverTest, DestroyingResolverFromCallbackCancelsTheOthers) {
  Session session(Python());
  PendingLookups pending;
  pending.Issue(session.resolver(), 25);
  int answered = 0;
  session.resolver().LookupA("a.test", [&](AddressResult r) {
    ++answered;
    EXPECT_TRUE(r.status.ok()) << r.status;
    // The answer came through the same socket the pending lookups wait on.
    session.DestroyResolver();
    EXPECT_EQ(pending.calls, pending.issued);
    session.Stop();
  });
  session.Run();
  EXPECT_EQ(answered, 1);
  EXPECT_EQ(pending.calls, pending.issued);
  EXPECT_EQ(pending.cancelled, pending.issued);
}

TEST_F(ResolverTest, LookupAfterLoopStoppedIsCancelledOnDestruction) {
  Session session(Dnsmasq());
  session.Stop();
  int calls = 0;
  absl::Status status;
  session.resolver().LookupMx("example.test", [&](MxResult r) {
    ++calls;
    status = r.status;
  });
  session.Run();
  EXPECT_EQ(calls, 0);
  session.DestroyResolver();
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(absl::IsCancelled(status)) << status;
}

TEST(ResolverOptionsTest, RejectsServerThatIsNotAnIpAddress) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  absl::StatusOr<std::unique_ptr<Resolver>> resolver =
      Resolver::Create(*loop, ResolverOptions{.servers = {{"dns.example", 53}}});
  EXPECT_TRUE(absl::IsInvalidArgument(resolver.status())) << resolver.status();
}

TEST(ResolverOptionsTest, RejectsZeroTries) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  absl::StatusOr<std::unique_ptr<Resolver>> resolver =
      Resolver::Create(*loop, ResolverOptions{.servers = {{"127.0.0.1", 53}}, .tries = 0});
  EXPECT_TRUE(absl::IsInvalidArgument(resolver.status())) << resolver.status();
}

TEST(ResolverNamesTest, ReverseLookupNameOfIpv4) {
  EXPECT_EQ(ReverseLookupName("192.0.2.10").value_or(""), "10.2.0.192.in-addr.arpa");
}

TEST(ResolverNamesTest, ReverseLookupNameOfIpv6UsesNibbles) {
  EXPECT_EQ(ReverseLookupName("2001:db8::567:89ab").value_or(""),
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa");
}

TEST(ResolverNamesTest, Ipv4MappedAddressIsTreatedAsIpv4) {
  EXPECT_EQ(ReverseLookupName("::ffff:192.0.2.10").value_or(""), "10.2.0.192.in-addr.arpa");
  EXPECT_EQ(DnsblQueryName("::ffff:127.0.0.2", "zen.example").value_or(""),
            "2.0.0.127.zen.example");
}

TEST(ResolverNamesTest, RejectsNonAddress) {
  EXPECT_TRUE(absl::IsInvalidArgument(ReverseLookupName("mx.example").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(DnsblQueryName("1.2.3", "zen.example").status()));
}

// A resolver's answer to `<type> alias.example` whose answer section holds only
// "alias.example CNAME host.example": the alias's target has no record of the type.
std::string CnameOnlyAnswer(uint8_t type) {
  std::string packet("\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00", 12);
  packet += std::string(
      "\x05"
      "alias"
      "\x07"
      "example\x00",
      15);
  packet += std::string("\x00", 1) + static_cast<char>(type) + std::string("\x00\x01", 2);
  packet += std::string("\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x0e", 12);
  packet += std::string(
      "\x04"
      "host"
      "\x07"
      "example\x00",
      14);
  return packet;
}

TEST(AnswerConversionTest, MxAnswerWithOnlyACnameIsNoData) {
  const MxResult result = dns_internal::MxFromAnswer("alias.example", CnameOnlyAnswer(15));
  EXPECT_TRUE(IsNoData(result.status)) << result.status;
  EXPECT_THAT(result.records, IsEmpty());
  EXPECT_FALSE(result.null_mx);
}

TEST(AnswerConversionTest, TxtAnswerWithOnlyACnameIsNoData) {
  const TxtResult result = dns_internal::TxtFromAnswer("alias.example", CnameOnlyAnswer(16));
  EXPECT_TRUE(IsNoData(result.status)) << result.status;
  EXPECT_THAT(result.texts, IsEmpty());
}

TEST(AnswerConversionTest, AddressAnswersWithOnlyACnameAreNoData) {
  const AddressResult result =
      dns_internal::AddressesFromAnswers("alias.example", CnameOnlyAnswer(1), CnameOnlyAnswer(28));
  EXPECT_TRUE(IsNoData(result.status)) << result.status;
  EXPECT_THAT(result.addresses, IsEmpty());
}

}  // namespace
}  // namespace backstop
