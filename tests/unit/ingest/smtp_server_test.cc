#include "ingest/smtp_server.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/socket.h"

namespace backstop::ingest {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Records what the server asks and answers: accept everything, and the end of data with a
// queue id; RCPT to "refuse@..." is refused. Answers from another thread when `async`, and
// keeps the answers for the test to give when `hold`.
class RecordingHandler : public SessionHandler {
 public:
  bool async = false;
  bool hold = false;

  void Decide(const ConnectionInfo& connection, SmtpSession& session,
              std::function<void(const Verdict&)> respond) override {
    Verdict verdict = Verdict::Accept();
    {
      std::lock_guard lock(mutex_);
      clients_.push_back(connection.client.ip);
      if (session.pending() == RequestKind::kRcpt &&
          session.pending_rcpt().local_part == "refuse") {
        verdict = Verdict::Reject(Reply{550, "5.1.1", {"no such user"}});
      }
      if (session.pending() == RequestKind::kEndOfData) {
        transactions_.push_back(session.transaction());
        verdict = Verdict::AcceptWith(Reply{250, "2.0.0", {"Ok: queued as T1"}});
      }
    }
    if (hold) {
      std::lock_guard lock(mutex_);
      held_.push_back([respond = std::move(respond), verdict] { respond(verdict); });
      changed_.notify_all();
      return;
    }
    changed_.notify_all();
    if (async) {
      std::thread([respond = std::move(respond), verdict] { respond(verdict); }).detach();
    } else {
      respond(verdict);
    }
  }

  void Closed(const ConnectionInfo&, const SmtpSession*) override {
    std::lock_guard lock(mutex_);
    ++closed_;
    changed_.notify_all();
  }

  std::vector<Transaction> transactions() {
    std::lock_guard lock(mutex_);
    return transactions_;
  }
  std::vector<std::string> clients() {
    std::lock_guard lock(mutex_);
    return clients_;
  }
  // Waits for a held answer and takes it.
  std::function<void()> TakeHeld() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !held_.empty(); });
    std::function<void()> answer = std::move(held_.front());
    held_.erase(held_.begin());
    return answer;
  }
  void WaitClosed(int count) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return closed_ >= count; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<Transaction> transactions_;
  std::vector<std::string> clients_;
  std::vector<std::function<void()>> held_;
  int closed_ = 0;
};

// A blocking SMTP client over a real socket.
class Client {
 public:
  explicit Client(const std::string& address) {
    absl::StatusOr<UniqueFd> fd = Connect(*SocketAddress::Parse(address), Blocking::kYes);
    EXPECT_TRUE(fd.ok()) << fd.status();
    fd_ = std::move(*fd);
    timeval timeout{10, 0};
    setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  }
  void Send(std::string_view bytes) {
    ssize_t n;
    do {
      n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    ASSERT_EQ(n, static_cast<ssize_t>(bytes.size()));
  }
  // One complete reply (all its lines); "" on EOF or timeout.
  std::string Reply() {
    std::string reply;
    while (true) {
      const size_t end = buffer_.find("\r\n");
      if (end == std::string::npos) {
        char chunk[4096];
        const ssize_t n = Recv(chunk, sizeof(chunk));
        if (n <= 0) {
          return reply;
        }
        buffer_.append(chunk, n);
        continue;
      }
      const std::string line = buffer_.substr(0, end + 2);
      buffer_.erase(0, end + 2);
      reply += line;
      if (line.size() >= 4 && line[3] == ' ') {
        return reply;
      }
    }
  }
  // Pipelines NOOPs without reading a reply, until `limit` bytes went out or the server stops
  // taking them for half a second; returns how many went out.
  size_t FloodWithoutReading(size_t limit) {
    const int small = 4096;
    setsockopt(fd_.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    setsockopt(fd_.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    timeval timeout{0, 500'000};
    setsockopt(fd_.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    std::string chunk;
    for (int i = 0; i < 1000; ++i) {
      chunk += "NOOP\r\n";
    }
    size_t sent = 0;
    while (sent < limit) {
      const ssize_t n = ::send(fd_.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
      if (n <= 0) {
        break;
      }
      sent += static_cast<size_t>(n);
    }
    return sent;
  }
  // True when the server closed the connection (EOF) with nothing more to read.
  bool Closed() {
    char byte;
    return buffer_.empty() && Recv(&byte, 1) == 0;
  }

 private:
  // The server's io_uring task work can interrupt this thread's blocking calls (EINTR): retry,
  // or a test reads an interruption as the server closing.
  ssize_t Recv(char* data, size_t size) {
    ssize_t n;
    do {
      n = ::recv(fd_.get(), data, size, 0);
    } while (n < 0 && errno == EINTR);
    return n;
  }

  UniqueFd fd_;
  std::string buffer_;
};

class SmtpServerTest : public ::testing::Test {
 protected:
  void StartServer(SmtpServerOptions options = {}) {
    options.listen = {{"127.0.0.1", 0}};
    if (options.session.hostname.empty()) {
      options.session.hostname = "mx.test";
    }
    absl::StatusOr<std::unique_ptr<SmtpServer>> server =
        SmtpServer::Start(std::move(options), &handler_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_EQ(server_->listen_addresses().size(), 1u);
    address_ = server_->listen_addresses()[0];
  }

  RecordingHandler handler_;
  std::unique_ptr<SmtpServer> server_;
  std::string address_;
};

TEST_F(SmtpServerTest, ServesATransactionOverLoopback) {
  StartServer();
  Client client(address_);
  EXPECT_THAT(client.Reply(), StartsWith("220 mx.test"));
  client.Send("EHLO client.test\r\n");
  EXPECT_THAT(client.Reply(), HasSubstr("250 "));
  client.Send(
      "MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<refuse@example.com>\r\n"
      "DATA\r\n");
  EXPECT_THAT(client.Reply(), StartsWith("250 2.1.0"));
  EXPECT_THAT(client.Reply(), StartsWith("250 2.1.5"));
  EXPECT_THAT(client.Reply(), StartsWith("550 5.1.1"));
  EXPECT_THAT(client.Reply(), StartsWith("354"));
  client.Send("Subject: hi\r\n\r\nbody\r\n.\r\n");
  EXPECT_EQ(client.Reply(), "250 2.0.0 Ok: queued as T1\r\n");
  client.Send("QUIT\r\n");
  EXPECT_THAT(client.Reply(), StartsWith("221"));
  EXPECT_TRUE(client.Closed());

  const std::vector<Transaction> transactions = handler_.transactions();
  ASSERT_EQ(transactions.size(), 1u);
  EXPECT_EQ(transactions[0].mail.reverse_path, "a@b.test");
  ASSERT_EQ(transactions[0].recipients.size(), 1u);
  EXPECT_EQ(transactions[0].recipients[0].recipient.address(), "x@example.com");
  EXPECT_THAT(transactions[0].data, StartsWith("Subject: hi\r\n\r\nbody"));
  EXPECT_EQ(handler_.clients().front(), "127.0.0.1");
}

TEST_F(SmtpServerTest, ResumesSessionsAnsweredFromAnotherThread) {
  handler_.async = true;
  SmtpServerOptions options;
  options.threads = 2;
  StartServer(options);
  std::vector<std::thread> clients;
  for (int i = 0; i < 8; ++i) {
    clients.emplace_back([this] {
      Client client(address_);
      EXPECT_THAT(client.Reply(), StartsWith("220"));
      client.Send("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n");
      EXPECT_THAT(client.Reply(), StartsWith("250"));
      EXPECT_THAT(client.Reply(), StartsWith("250 2.1.0"));
      EXPECT_THAT(client.Reply(), StartsWith("250 2.1.5"));
      EXPECT_THAT(client.Reply(), StartsWith("354"));
      client.Send("Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n");
      EXPECT_THAT(client.Reply(), StartsWith("250 2.0.0"));
      EXPECT_THAT(client.Reply(), StartsWith("221"));
    });
  }
  for (std::thread& client : clients) {
    client.join();
  }
  EXPECT_EQ(handler_.transactions().size(), 8u);
}

TEST_F(SmtpServerTest, RefusesConnectionsOverThePerAddressLimit) {
  SmtpServerOptions options;
  options.max_connections_per_ip = 2;
  StartServer(options);
  Client first(address_);
  Client second(address_);
  EXPECT_THAT(first.Reply(), StartsWith("220"));
  EXPECT_THAT(second.Reply(), StartsWith("220"));
  Client third(address_);
  EXPECT_THAT(third.Reply(), StartsWith("421 4.7.0"));
  EXPECT_TRUE(third.Closed());
  EXPECT_EQ(server_->refused_connections(), 1u);
  // A slot frees up when a client leaves.
  first.Send("QUIT\r\n");
  EXPECT_THAT(first.Reply(), StartsWith("221"));
  EXPECT_TRUE(first.Closed());
  handler_.WaitClosed(2);
  Client fourth(address_);
  EXPECT_THAT(fourth.Reply(), StartsWith("220"));
}

TEST_F(SmtpServerTest, RefusesConnectionsOverTheGlobalLimit) {
  SmtpServerOptions options;
  options.max_connections = 1;
  StartServer(options);
  Client first(address_);
  EXPECT_THAT(first.Reply(), StartsWith("220"));
  Client second(address_);
  EXPECT_THAT(second.Reply(), StartsWith("421 4.7.0"));
}

TEST_F(SmtpServerTest, DribblingClientTimesOutWhileOthersAreServed) {
  SmtpServerOptions options;
  options.session.command_timeout = absl::Milliseconds(300);
  StartServer(options);
  Client slow(address_);
  EXPECT_THAT(slow.Reply(), StartsWith("220"));
  // One byte at a time never completes a command within the deadline.
  for (char c : std::string("EHLO")) {
    slow.Send(std::string(1, c));
    absl::SleepFor(absl::Milliseconds(100));
  }
  Client fast(address_);
  EXPECT_THAT(fast.Reply(), StartsWith("220"));
  fast.Send("NOOP\r\n");
  EXPECT_THAT(fast.Reply(), StartsWith("250"));
  EXPECT_THAT(slow.Reply(), StartsWith("421 4.4.2"));
  EXPECT_TRUE(slow.Closed());
}

TEST_F(SmtpServerTest, StopsReadingFromAClientThatDoesNotReadItsReplies) {
  SmtpServerOptions options;
  options.session.command_timeout = absl::Seconds(30);
  StartServer(options);
  Client flooder(address_);
  EXPECT_THAT(flooder.Reply(), StartsWith("220"));
  // Every NOOP makes a reply; if the server kept reading, the replies it cannot send would
  // pile up in its memory without bound.
  constexpr size_t kLimit = size_t{8} << 20;
  EXPECT_LT(flooder.FloodWithoutReading(kLimit), kLimit / 2);
}

TEST_F(SmtpServerTest, ClosesAClientThatNeverReadsItsReplies) {
  SmtpServerOptions options;
  options.session.command_timeout = absl::Milliseconds(300);
  StartServer(options);
  Client flooder(address_);
  EXPECT_THAT(flooder.Reply(), StartsWith("220"));
  flooder.FloodWithoutReading(size_t{8} << 20);
  // The replies (and the 421 after the timeout) can never be sent: the connection and its
  // limiter slot must not be held forever.
  EXPECT_TRUE(server_->WaitIdle(absl::Seconds(5)));
}

TEST_F(SmtpServerTest, AnswerArrivingAfterTheServerIsGoneIsDropped) {
  handler_.hold = true;
  StartServer();
  Client client(address_);
  // The banner waits for the connect decision, which the handler keeps.
  std::function<void()> answer = handler_.TakeHeld();
  server_.reset();
  // A handler may answer late, e.g. the queue handoff failing what it still holds when the
  // ingest role shuts down after its server.
  answer();
  EXPECT_EQ(client.Reply(), "");
}

TEST_F(SmtpServerTest, TakesTheClientAddressFromATrustedProxyHeader) {
  SmtpServerOptions options;
  options.proxy_protocol = true;
  options.trusted_proxies = *CidrSet::Parse({"127.0.0.0/8"});
  StartServer(options);
  Client client(address_);
  client.Send("PROXY TCP4 203.0.113.9 192.0.2.1 40000 25\r\nEHLO c\r\n");
  EXPECT_THAT(client.Reply(), StartsWith("220"));
  EXPECT_THAT(client.Reply(), StartsWith("250"));
  EXPECT_EQ(handler_.clients().front(), "203.0.113.9");
}

TEST_F(SmtpServerTest, ClosesATrustedPeerThatSendsNoProxyHeader) {
  SmtpServerOptions options;
  options.proxy_protocol = true;
  options.trusted_proxies = *CidrSet::Parse({"127.0.0.0/8"});
  StartServer(options);
  Client client(address_);
  client.Send("EHLO client.test\r\n");
  EXPECT_EQ(client.Reply(), "");  // no banner, just the close
}

TEST_F(SmtpServerTest, UntrustedPeersCannotSpoofTheirAddress) {
  SmtpServerOptions options;
  options.proxy_protocol = true;
  options.trusted_proxies = *CidrSet::Parse({"10.0.0.0/8"});
  StartServer(options);
  Client client(address_);
  EXPECT_THAT(client.Reply(), StartsWith("220"));
  client.Send("PROXY TCP4 203.0.113.9 192.0.2.1 40000 25\r\n");
  EXPECT_THAT(client.Reply(), StartsWith("5"));
  client.Send("EHLO c\r\n");
  EXPECT_THAT(client.Reply(), StartsWith("250"));
  for (const std::string& ip : handler_.clients()) {
    EXPECT_EQ(ip, "127.0.0.1");
  }
}

TEST_F(SmtpServerTest, DrainEndsIdleSessionsWith421AndStopsAccepting) {
  StartServer();
  Client client(address_);
  EXPECT_THAT(client.Reply(), StartsWith("220"));
  server_->Drain();
  EXPECT_THAT(client.Reply(), StartsWith("421 4.3.2"));
  EXPECT_TRUE(client.Closed());
  EXPECT_TRUE(server_->WaitIdle(absl::Seconds(10)));
  // The listening socket closes once its accept is cancelled on the loop: wait for that, then
  // nobody gets in any more.
  bool refused = false;
  for (int attempt = 0; attempt < 200 && !refused; ++attempt) {
    refused = !Connect(*SocketAddress::Parse(address_), Blocking::kYes).ok();
    if (!refused) {
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  EXPECT_TRUE(refused);
}

}  // namespace
}  // namespace backstop::ingest
