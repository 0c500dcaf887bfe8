#include "common/http_server.h"

#include <civetweb.h>

#include <string>
#include <vector>

#include <fmt/format.h>

namespace backstop {
namespace {

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

void SendResponse(mg_connection* connection, const HttpResponse& response, bool include_body) {
  const std::string head = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n"
      "Connection: close\r\n\r\n",
      response.status, ReasonPhrase(response.status), response.content_type, response.body.size());
  mg_write(connection, head.data(), head.size());
  if (include_body && !response.body.empty()) {
    mg_write(connection, response.body.data(), response.body.size());
  }
}

// civetweb's library-wide state; initialised once per process.
void InitCivetwebOnce() {
  static const bool initialised = [] {
    mg_init_library(0);
    return true;
  }();
  (void)initialised;
}

// Splits "host:port" / "[v6]:port" so that the bound port can be put back after a port-0 bind.
std::string HostPart(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  return colon == std::string::npos ? listen : listen.substr(0, colon);
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options) {
  InitCivetwebOnce();
  auto server = std::unique_ptr<HttpServer>(new HttpServer());
  const std::string threads = std::to_string(options.worker_threads);
  const char* civet_options[] = {"listening_ports",
                                 options.listen.c_str(),
                                 "num_threads",
                                 threads.c_str(),
                                 "request_timeout_ms",
                                 "10000",
                                 "enable_keep_alive",
                                 "no",
                                 nullptr};
  mg_callbacks callbacks{};
  // Without this callback civetweb prints its errors to stderr, bypassing our JSON logs; the
  // start-up error is returned through mg_error_data instead.
  callbacks.log_message = [](const mg_connection*, const char*) { return 1; };
  mg_init_data init{};
  init.callbacks = &callbacks;
  init.user_data = server.get();
  init.configuration_options = civet_options;
  char error_text[256] = {};
  mg_error_data error{};
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);
  server->context_ = mg_start2(&init, &error);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(
        fmt::format("HTTP admin server cannot listen on {}: {}", options.listen,
                    error_text[0] != '\0' ? error_text : "unknown civetweb error"));
  }
  mg_server_port ports[4] = {};
  const int count = mg_get_server_ports(server->context_, 4, ports);
  if (count < 1) {
    return absl::InternalError("HTTP admin server started without a listening port");
  }
  server->port_ = ports[0].port;
  server->address_ = fmt::format("{}:{}", HostPart(options.listen), server->port_);
  return server;
}

HttpServer::~HttpServer() {
  if (context_ != nullptr) {
    mg_stop(context_);  // Waits for worker threads, so no handler runs after this.
  }
}

void HttpServer::Handle(const std::string& path, HttpHandler handler) {
  std::lock_guard lock(routes_mutex_);
  auto& route = routes_[path];
  if (route == nullptr) {
    route = std::make_unique<Route>(Route{this, std::move(handler)});
    // civetweb matches handler URIs as prefix patterns; "$" anchors the admin paths exactly.
    const std::string pattern = path + "$";
    mg_set_request_handler(context_, pattern.c_str(), &HttpServer::Dispatch, route.get());
  } else {
    route->handler = std::move(handler);
  }
}

int HttpServer::Dispatch(mg_connection* connection, void* route_ptr) {
  auto* route = static_cast<Route*>(route_ptr);
  const mg_request_info* info = mg_get_request_info(connection);
  const std::string_view method = info->request_method != nullptr ? info->request_method : "";
  const std::string_view path = info->local_uri != nullptr ? info->local_uri : "";
  HttpResponse response;
  if (method != "GET" && method != "HEAD") {
    response = HttpResponse{405, "text/plain; charset=utf-8", "method not allowed\n"};
  } else {
    HttpHandler handler;
    {
      std::lock_guard lock(route->server->routes_mutex_);
      handler = route->handler;
    }
    HttpRequest request{method, path, info->query_string != nullptr ? info->query_string : ""};
    response = handler(request);
  }
  SendResponse(connection, response, method != "HEAD");
  return response.status;
}

}  // namespace backstop
