// A /metrics endpoint over HTTP (cpp-httplib), for a process that has no
// HTTP server of its own (eplb replay; a C++ engine may use it too). It
// serves the latest exposition it was given (Set, from any thread) on a
// thread of its own. Built when CMake finds cpp-httplib (library
// eplb_metrics_server).
#ifndef EPLB_METRICS_SERVER_H_
#define EPLB_METRICS_SERVER_H_

#include <memory>
#include <string>

#include "eplb/status.h"

namespace eplb {

class MetricsServer {
 public:
  // Binds host:port and starts serving GET /metrics (text/plain; version
  // 0.0.4). Unavailable when the port cannot be bound (in use, no
  // permission), naming host and port; InvalidArgument for a port outside
  // [1, 65535].
  static StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& host,
                                                        int port);
  ~MetricsServer();  // Stops serving and joins the thread.
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The text GET /metrics answers from now on.
  void Set(std::string exposition);

 private:
  MetricsServer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace eplb

#endif  // EPLB_METRICS_SERVER_H_
