#pragma once

// gRPC's own log lines (handshake failures, transport errors) as our JSON lines, component
// "grpc", so that a log pipeline reading backstop's stdout sees one format.

namespace backstop::queue {

// Process-wide; call once at startup, before the first channel or server.
void RouteGrpcLogsToJson();

}  // namespace backstop::queue
