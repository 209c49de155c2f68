#include "eplb/metrics_server.h"

#include <httplib.h>

#include <mutex>
#include <thread>

namespace eplb {

struct MetricsServer::Impl {
  httplib::Server server;
  std::thread thread;
  std::mutex mu;
  std::string text;  // Guarded by mu.
};

StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host, int port) {
  if (port < 1 || port > 65535) {
    return InvalidArgumentError("metrics port " + std::to_string(port) +
                                ": must be in [1, 65535]");
  }
  auto s = std::unique_ptr<MetricsServer>(new MetricsServer());
  s->impl_ = std::make_unique<Impl>();
  Impl* impl = s->impl_.get();
  impl->server.Get(
      "/metrics", [impl](const httplib::Request&, httplib::Response& res) {
        std::string body;
        {
          std::lock_guard<std::mutex> lock(impl->mu);
          body = impl->text;
        }
        res.set_content(body, "text/plain; version=0.0.4; charset=utf-8");
      });
  if (!impl->server.bind_to_port(host, port)) {
    return UnavailableError("metrics endpoint " + host + ":" +
                            std::to_string(port) +
                            ": cannot bind (in use, or not permitted)");
  }
  impl->thread = std::thread([impl] { impl->server.listen_after_bind(); });
  return s;
}

MetricsServer::~MetricsServer() {
  if (impl_ == nullptr) return;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

void MetricsServer::Set(std::string exposition) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->text = std::move(exposition);
}

}  // namespace eplb
