#pragma once

// The HTTP admin port of every process (DESIGN §3.5): /livez, and later /readyz, /status and
// /metrics. Served by civetweb on its own small worker pool, away from the SMTP event loops.

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

struct mg_context;
struct mg_connection;

namespace backstop {

struct HttpRequest {
  std::string_view method;  // "GET", "HEAD", ...
  std::string_view path;
  std::string_view query;  // without the '?'
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// Handlers run on civetweb worker threads, possibly several at once: they must be thread-safe.
using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

struct HttpServerOptions {
  std::string listen = "127.0.0.1:8025";  // "host:port" or "[v6]:port"; port 0 = any free port
  int worker_threads = 2;
};

// Owns a civetweb context and the routes registered on it. Handle() and the accessors may be
// called from any thread; the destructor stops the server and waits for running handlers.
class HttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Serves `handler` at exactly `path` for GET and HEAD (other methods get 405). Registering a
  // path again replaces its handler.
  void Handle(const std::string& path, HttpHandler handler);

  // The bound port (the real one when the options asked for port 0) and "host:port".
  int port() const { return port_; }
  const std::string& address() const { return address_; }

 private:
  struct Route {
    HttpServer* server;
    HttpHandler handler;
  };

  HttpServer() = default;
  static int Dispatch(mg_connection* connection, void* route);

  mg_context* context_ = nullptr;
  int port_ = 0;
  std::string address_;
  std::mutex routes_mutex_;
  std::map<std::string, std::unique_ptr<Route>> routes_;  // guarded by routes_mutex_
};

}  // namespace backstop
