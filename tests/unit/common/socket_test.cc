#include "common/socket.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"

namespace backstop {
namespace {

TEST(SocketAddressTest, ParsesIpv4HostAndPort) {
  absl::StatusOr<SocketAddress> address = SocketAddress::Parse("127.0.0.1:2525");
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(address->family(), AF_INET);
  EXPECT_EQ(address->port(), 2525);
  EXPECT_EQ(address->ToString(), "127.0.0.1:2525");
}

TEST(SocketAddressTest, ParsesBracketedIpv6HostAndPort) {
  absl::StatusOr<SocketAddress> address = SocketAddress::Parse("[::1]:2525");
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(address->family(), AF_INET6);
  EXPECT_EQ(address->port(), 2525);
  EXPECT_EQ(address->ToString(), "[::1]:2525");
}

TEST(SocketAddressTest, ParsesWildcardsAndPortZero) {
  absl::StatusOr<SocketAddress> v4 = SocketAddress::Parse("0.0.0.0:0");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->ToString(), "0.0.0.0:0");
  absl::StatusOr<SocketAddress> v6 = SocketAddress::Parse("[::]:25");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->ToString(), "[::]:25");
}

TEST(SocketAddressTest, RejectsMalformedAddresses) {
  for (const char* text :
       {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:25x", "127.0.0.1:-1", "::1:25",
        "[::1]", "[::1]25", "[::1:25", "[127.0.0.1]:25", "mx.example.com:25", "256.0.0.1:25"}) {
    absl::StatusOr<SocketAddress> address = SocketAddress::Parse(text);
    EXPECT_EQ(address.status().code(), absl::StatusCode::kInvalidArgument) << text;
    if (!address.ok()) {
      EXPECT_NE(std::string(address.status().message()).find(text), std::string::npos)
          << "the error should quote the input: " << address.status();
    }
  }
}

TEST(ListenTest, ReportsTheBoundPortForPortZero) {
  absl::StatusOr<UniqueFd> listener = Listen(*SocketAddress::Parse("127.0.0.1:0"));
  ASSERT_TRUE(listener.ok()) << listener.status();
  absl::StatusOr<SocketAddress> bound = SocketAddress::LocalOf(listener->get());
  ASSERT_TRUE(bound.ok()) << bound.status();
  EXPECT_NE(bound->port(), 0);
  EXPECT_EQ(bound->ToString(), "127.0.0.1:" + std::to_string(bound->port()));
}

TEST(ListenTest, AcceptsAConnectionFromConnect) {
  absl::StatusOr<UniqueFd> listener = Listen(*SocketAddress::Parse("[::1]:0"));
  ASSERT_TRUE(listener.ok()) << listener.status();
  absl::StatusOr<SocketAddress> bound = SocketAddress::LocalOf(listener->get());
  ASSERT_TRUE(bound.ok());
  absl::StatusOr<UniqueFd> client = Connect(*bound, Blocking::kYes);
  ASSERT_TRUE(client.ok()) << client.status();

  // The listener is non-blocking, but the completed handshake is already queued.
  UniqueFd server(accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(server.valid());
  absl::StatusOr<SocketAddress> peer = SocketAddress::PeerOf(server.get());
  ASSERT_TRUE(peer.ok());
  absl::StatusOr<SocketAddress> client_local = SocketAddress::LocalOf(client->get());
  ASSERT_TRUE(client_local.ok());
  EXPECT_EQ(peer->ToString(), client_local->ToString());
  ASSERT_EQ(write(client->get(), "hi", 2), 2);
  char buffer[2];
  ASSERT_EQ(read(server.get(), buffer, 2), 2);
  EXPECT_EQ(std::string(buffer, 2), "hi");
}

TEST(ListenTest, ListenerIsNonBlocking) {
  absl::StatusOr<UniqueFd> listener = Listen(*SocketAddress::Parse("127.0.0.1:0"));
  ASSERT_TRUE(listener.ok());
  EXPECT_EQ(accept4(listener->get(), nullptr, nullptr, 0), -1);
  EXPECT_EQ(errno, EAGAIN);
}

TEST(ListenTest, SecondListenerOnSamePortFailsWithoutReusePort) {
  absl::StatusOr<UniqueFd> first = Listen(*SocketAddress::Parse("127.0.0.1:0"));
  ASSERT_TRUE(first.ok());
  absl::StatusOr<SocketAddress> bound = SocketAddress::LocalOf(first->get());
  ASSERT_TRUE(bound.ok());
  absl::StatusOr<UniqueFd> second = Listen(*bound);
  EXPECT_FALSE(second.ok());
  EXPECT_NE(std::string(second.status().message()).find("bind " + bound->ToString()),
            std::string::npos)
      << second.status();
}

TEST(ListenTest, ReusePortLetsListenersShareAPort) {
  const ListenOptions options{.reuse_port = ReusePort::kYes};
  absl::StatusOr<UniqueFd> first = Listen(*SocketAddress::Parse("127.0.0.1:0"), options);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<SocketAddress> bound = SocketAddress::LocalOf(first->get());
  ASSERT_TRUE(bound.ok());
  absl::StatusOr<UniqueFd> second = Listen(*bound, options);
  EXPECT_TRUE(second.ok()) << second.status();
}

TEST(ConnectTest, NonBlockingConnectReturnsAtOnce) {
  absl::StatusOr<UniqueFd> listener = Listen(*SocketAddress::Parse("127.0.0.1:0"));
  ASSERT_TRUE(listener.ok());
  absl::StatusOr<UniqueFd> client =
      Connect(*SocketAddress::LocalOf(listener->get()), Blocking::kNo);
  ASSERT_TRUE(client.ok()) << client.status();
  char byte;
  EXPECT_EQ(read(client->get(), &byte, 1), -1);
  EXPECT_EQ(errno, EAGAIN);
}

TEST(ConnectTest, ConnectsWithoutNagle) {
  absl::StatusOr<UniqueFd> listener = Listen(*SocketAddress::Parse("127.0.0.1:0"));
  ASSERT_TRUE(listener.ok());
  absl::StatusOr<UniqueFd> client =
      Connect(*SocketAddress::LocalOf(listener->get()), Blocking::kYes);
  ASSERT_TRUE(client.ok()) << client.status();
  int no_delay = 0;
  socklen_t length = sizeof(no_delay);
  ASSERT_EQ(getsockopt(client->get(), IPPROTO_TCP, TCP_NODELAY, &no_delay, &length), 0);
  EXPECT_EQ(no_delay, 1);
}

TEST(ConnectTest, ReportsRefusedConnection) {
  // Take a free port, then close its listener so that nothing accepts there.
  absl::StatusOr<UniqueFd> listener = Listen(*SocketAddress::Parse("127.0.0.1:0"));
  ASSERT_TRUE(listener.ok());
  const SocketAddress address = *SocketAddress::LocalOf(listener->get());
  listener->Reset();
  absl::StatusOr<UniqueFd> client = Connect(address, Blocking::kYes);
  EXPECT_FALSE(client.ok());
  EXPECT_NE(std::string(client.status().message()).find("connect 127.0.0.1:"), std::string::npos)
      << client.status();
}

}  // namespace
}  // namespace backstop
