#include "queue/grpc_log.h"

#include <string_view>

#include <grpc/support/log.h>

#include "common/log.h"

namespace backstop::queue {
namespace {

void LogGrpcLine(gpr_log_func_args* args) {
  static const log::Logger logger("grpc");
  const std::string_view message = args->message != nullptr ? args->message : "";
  log::Level level = args->severity == GPR_LOG_SEVERITY_ERROR  ? log::Level::kError
                     : args->severity == GPR_LOG_SEVERITY_INFO ? log::Level::kInfo
                                                               : log::Level::kDebug;
  // A client sends the address it dialled as SNI and the server finds no certificate for that
  // name. Names are not part of the cluster's identity (cluster_tls.h): nothing is wrong.
  if (message.starts_with("No match found for server name")) {
    level = log::Level::kDebug;
  }
  logger.Log(level, message,
             {{"file", args->file != nullptr ? args->file : ""}, {"line", args->line}});
}

}  // namespace

void RouteGrpcLogsToJson() {
  gpr_set_log_function(LogGrpcLine);
}

}  // namespace backstop::queue
