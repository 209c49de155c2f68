// The Python module's C++ half (eplb._eplb): bindings only. Every check and
// every algorithm is the library's; errors arrive as eplb.EplbError (a
// ValueError) carrying the library's one-line message. The GIL is released
// while C++ works.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "eplb/load.h"
#include "eplb/policy.h"
#include "eplb/rebalance.h"

namespace py = pybind11;

namespace {

PyObject* g_error = nullptr;  // eplb.EplbError, a ValueError.

[[noreturn]] void Raise(const std::string& message) {
  PyErr_SetString(g_error, message.c_str());
  throw py::error_already_set();
}

// A numpy array that owns `v` (no copy).
py::array_t<int64_t> Own(std::vector<int64_t>&& v,
                         std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<int64_t>(std::move(v));
  py::capsule free(
      owned, [](void* p) { delete static_cast<std::vector<int64_t>*>(p); });
  return py::array_t<int64_t>(shape, owned->data(), free);
}

py::tuple RebalanceExperts(
    const py::array_t<double, py::array::c_style | py::array::forcecast>&
        weight,
    int num_replicas, int num_groups, int num_nodes, int num_gpus,
    const std::string& policy,
    const std::optional<
        py::array_t<int64_t, py::array::c_style | py::array::forcecast>>&
        current) {
  if (weight.ndim() != 2) {
    Raise("weight: must be 2-D [layers, experts], has " +
          std::to_string(weight.ndim()) + " dimensions");
  }
  const auto layers = static_cast<int>(weight.shape(0));
  const auto experts = static_cast<int>(weight.shape(1));
  eplb::LoadMatrix load(layers, experts);
  const double* w = weight.data();
  for (int l = 0; l < layers; ++l) {
    for (int e = 0; e < experts; ++e) {
      load.at(l, e) = w[static_cast<size_t>(l) * experts + e];
    }
  }
  eplb::RebalanceRequest request;
  request.weight = &load;
  request.num_replicas = num_replicas;
  request.num_groups = num_groups;
  request.num_nodes = num_nodes;
  request.num_gpus = num_gpus;
  request.policy = policy;
  if (current.has_value()) {
    if (current->ndim() != 2) {
      Raise("current: must be 2-D [layers, num_replicas], has " +
            std::to_string(current->ndim()) + " dimensions");
    }
    request.current = std::span<const int64_t>(
        current->data(), static_cast<size_t>(current->size()));
  }
  std::optional<eplb::StatusOr<eplb::RebalanceResult>> r;
  {
    py::gil_scoped_release release;
    r.emplace(eplb::RebalanceExperts(request));
  }
  if (!r->ok()) Raise(r->status().message());
  eplb::RebalanceResult& out = **r;
  const py::ssize_t L = out.num_layers;
  return py::make_tuple(
      Own(std::move(out.phy2log), {L, out.num_replicas}),
      Own(std::move(out.log2phy), {L, out.num_experts, out.max_replicas}),
      Own(std::move(out.logcnt), {L, out.num_experts}));
}

}  // namespace

PYBIND11_MODULE(_eplb, m) {
  m.doc() = "eplb's C++ library (bindings only; use the eplb package)";
  static py::exception<std::runtime_error> error(m, "EplbError",
                                                 PyExc_ValueError);
  g_error = error.ptr();
  m.def("rebalance_experts", &RebalanceExperts, py::arg("weight"),
        py::arg("num_replicas"), py::arg("num_groups"), py::arg("num_nodes"),
        py::arg("num_gpus"), py::arg("policy") = "default",
        py::arg("current") = py::none());
}
