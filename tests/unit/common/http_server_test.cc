#include "common/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace backstop {
namespace {

using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// Sends one raw HTTP request to 127.0.0.1:port and returns everything the server wrote.
std::string Exchange(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return "connect failed";
  }
  EXPECT_EQ(send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  std::string response;
  char buffer[4096];
  for (ssize_t n; (n = recv(fd, buffer, sizeof(buffer), 0)) > 0;) {
    response.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return response;
}

std::string Get(int port, const std::string& path, const std::string& method = "GET") {
  return Exchange(port, method + " " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
}

// One server for the whole suite: civetweb's mg_stop() takes about two seconds (it waits out
// its master thread's poll interval), which would dominate the suite if paid per test.
class HttpServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto server = HttpServer::Start(HttpServerOptions{.listen = "127.0.0.1:0"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    server_->Handle("/livez", [this](const HttpRequest& request) {
      ++calls_;
      last_query_ = std::string(request.query);
      return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"};
    });
  }

  static HttpServer* server_;
  std::atomic<int> calls_{0};
  std::string last_query_;
};

HttpServer* HttpServerTest::server_ = nullptr;

TEST_F(HttpServerTest, ReportsTheBoundPortWhenAskedForPortZero) {
  EXPECT_GT(server_->port(), 0);
  EXPECT_EQ(server_->address(), "127.0.0.1:" + std::to_string(server_->port()));
}

TEST_F(HttpServerTest, ServesARegisteredPathWithStatusTypeAndLength) {
  const std::string response = Get(server_->port(), "/livez?verbose=1");
  EXPECT_THAT(response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(response, HasSubstr("Content-Type: text/plain; charset=utf-8\r\n"));
  EXPECT_THAT(response, HasSubstr("Content-Length: 3\r\n"));
  EXPECT_THAT(response, EndsWith("\r\n\r\nok\n"));
  EXPECT_EQ(calls_, 1);
  EXPECT_EQ(last_query_, "verbose=1");
}

TEST_F(HttpServerTest, AnswersHeadWithoutABody) {
  const std::string response = Get(server_->port(), "/livez", "HEAD");
  EXPECT_THAT(response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(response, EndsWith("\r\n\r\n"));
}

TEST_F(HttpServerTest, RefusesOtherMethodsWith405) {
  EXPECT_THAT(Get(server_->port(), "/livez", "POST"), StartsWith("HTTP/1.1 405 "));
  EXPECT_EQ(calls_, 0);
}

TEST_F(HttpServerTest, MatchesPathsExactly) {
  EXPECT_THAT(Get(server_->port(), "/livez/extra"), StartsWith("HTTP/1.1 404 "));
  EXPECT_THAT(Get(server_->port(), "/nothing-here"), StartsWith("HTTP/1.1 404 "));
  EXPECT_EQ(calls_, 0);
}

TEST_F(HttpServerTest, ReplacesAHandlerRegisteredTwice) {
  server_->Handle("/livez", [](const HttpRequest&) {
    return HttpResponse{503, "text/plain; charset=utf-8", "draining\n"};
  });
  const std::string response = Get(server_->port(), "/livez");
  EXPECT_THAT(response, StartsWith("HTTP/1.1 503 Service Unavailable\r\n"));
  EXPECT_THAT(response, Not(HasSubstr("ok\n")));
}

TEST_F(HttpServerTest, FailsWithAClearErrorWhenThePortIsTaken) {
  auto second = HttpServer::Start(
      HttpServerOptions{.listen = "127.0.0.1:" + std::to_string(server_->port())});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr("cannot listen on 127.0.0.1:" + std::to_string(server_->port())));
}

}  // namespace
}  // namespace backstop
