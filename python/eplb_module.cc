// The Python module's C++ half (eplb._eplb): bindings only. Every check and
// every algorithm is the library's; errors arrive as eplb.EplbError (a
// ValueError) carrying the library's one-line message. The GIL is released
// while C++ works.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "eplb/config.h"
#include "eplb/dispatch.h"
#include "eplb/io.h"
#include "eplb/load.h"
#include "eplb/model.h"
#include "eplb/placement.h"
#include "eplb/policy.h"
#include "eplb/rebalance.h"
#include "eplb/recorder.h"
#include "eplb/sim/cost_model.h"
#include "eplb/sim/replay.h"
#include "eplb/topology.h"

namespace py = pybind11;

namespace {

PyObject* g_error = nullptr;  // eplb.EplbError, a ValueError.

[[noreturn]] void Raise(const std::string& message) {
  PyErr_SetString(g_error, message.c_str());
  throw py::error_already_set();
}

// A numpy array that owns `v` (no copy).
py::array_t<int64_t> Own(std::vector<int64_t>&& v,
                         const std::vector<py::ssize_t>& shape) {
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

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
T Value(eplb::StatusOr<T> r) {
  if (!r.ok()) Raise(r.status().message());
  return std::move(*r);
}
void Check(const eplb::Status& s) {
  if (!s.ok()) Raise(s.message());
}

template <typename T>
py::array_t<T> Array(std::span<const T> v, std::vector<py::ssize_t> shape) {
  py::array_t<T> out(shape);
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

// [L][R][K] int32 -> Placement (shape checked; invariants by the caller).
eplb::Placement ToPlacement(const CArray<int32_t>& a, int num_experts) {
  if (a.ndim() != 3) {
    Raise("placement: must be 3-D [layers, ranks, slots_per_rank], has " +
          std::to_string(a.ndim()) + " dimensions");
  }
  eplb::Placement p(static_cast<int>(a.shape(0)), static_cast<int>(a.shape(1)),
                    static_cast<int>(a.shape(2)), num_experts);
  const int32_t* d = a.data();
  for (int l = 0; l < p.num_layers(); ++l) {
    std::span<int32_t> row = p.mutable_layer(l);
    std::copy(d + static_cast<size_t>(l) * row.size(),
              d + static_cast<size_t>(l + 1) * row.size(), row.begin());
  }
  return p;
}

py::array_t<int32_t> FromPlacement(const eplb::Placement& p) {
  return Array<int32_t>(p.data(),
                        {p.num_layers(), p.num_ranks(), p.slots_per_rank()});
}

class PyHeatRecorder {
 public:
  PyHeatRecorder(int num_layers, int num_experts, int num_slots, int ring_steps,
                 const std::string& stage, int max_num_reqs) {
    eplb::HeatRecorderOptions o;
    o.num_layers = num_layers;
    o.num_experts = num_experts;
    o.num_slots = num_slots;
    o.ring_steps = ring_steps;
    o.max_num_reqs = max_num_reqs;
    if (stage == "all") {
      o.stage = eplb::HeatStage::kAll;
    } else if (stage == "prefill") {
      o.stage = eplb::HeatStage::kPrefill;
    } else if (stage == "decode") {
      o.stage = eplb::HeatStage::kDecode;
    } else {
      Raise("stage = \"" + stage + "\": must be all, prefill or decode");
    }
    recorder_ = Value(eplb::HeatRecorder::Create(o));
    num_layers_ = num_layers;
    num_experts_ = num_experts;
    num_slots_ = num_slots;
  }
  void RecordTopk(int layer, const py::array& topk_ids,
                  const CArray<int32_t>& log2phy) {
    CheckLayer(layer);
    if (log2phy.size() != num_experts_) {
      Raise("log2phy: has " + std::to_string(log2phy.size()) +
            " entries, must be num_experts = " + std::to_string(num_experts_));
    }
    const std::span<const int32_t> map(log2phy.data(),
                                       static_cast<size_t>(log2phy.size()));
    if (py::isinstance<py::array_t<int64_t>>(topk_ids)) {
      auto ids = topk_ids.cast<CArray<int64_t>>();
      py::gil_scoped_release release;
      recorder_->RecordTopk(
          layer, std::span<const int64_t>(ids.data(), ids.size()), map);
    } else {
      auto ids = topk_ids.cast<CArray<int32_t>>();
      py::gil_scoped_release release;
      recorder_->RecordTopk(
          layer, std::span<const int32_t>(ids.data(), ids.size()), map);
    }
  }
  void RecordSlotCounts(int layer, const CArray<int64_t>& counts) {
    CheckLayer(layer);
    if (counts.size() != num_slots_) {
      Raise("slot_counts: has " + std::to_string(counts.size()) +
            " entries, must be num_slots = " + std::to_string(num_slots_));
    }
    recorder_->RecordSlotCounts(
        layer, std::span<const int64_t>(counts.data(), counts.size()));
  }
  void EndStep(int64_t num_tokens) { recorder_->EndStep(num_tokens); }
  void Clear() { recorder_->Clear(); }
  py::dict Snapshot() const {
    const eplb::HeatSnapshot s = recorder_->Snapshot();
    py::dict d;
    d["steps_counted"] = s.steps_counted;
    d["dropped_ids"] = s.dropped_ids;
    d["window"] = Array<int64_t>(s.window, {s.num_layers, s.num_slots});
    d["samples"] =
        Array<int64_t>(s.samples, {s.num_samples, s.num_layers, s.num_slots});
    return d;
  }

 private:
  void CheckLayer(int layer) const {
    if (layer < 0 || layer >= num_layers_) {
      Raise("layer = " + std::to_string(layer) + ": must be in [0, " +
            std::to_string(num_layers_) + ")");
    }
  }
  std::unique_ptr<eplb::HeatRecorder> recorder_;
  int num_layers_ = 0, num_experts_ = 0, num_slots_ = 0;
};

class PyDispatcher {
 public:
  PyDispatcher(int num_experts, int num_ranks, int slots_per_rank) {
    if (num_experts < 1 || num_ranks < 1 || slots_per_rank < 1 ||
        num_ranks * slots_per_rank < num_experts ||
        slots_per_rank > num_experts) {
      Raise("BalancedDispatcher(" + std::to_string(num_experts) + ", " +
            std::to_string(num_ranks) + ", " + std::to_string(slots_per_rank) +
            "): needs every count >= 1, ranks * slots_per_rank >= experts "
            "and slots_per_rank <= experts");
    }
    d_ = std::make_unique<eplb::BalancedDispatcher>(num_experts, num_ranks,
                                                    slots_per_rank);
  }
  void SetPlacement(const CArray<int32_t>& layer) {
    if (layer.size() != d_->num_slots()) {
      Raise("placement: has " + std::to_string(layer.size()) +
            " entries, must be ranks * slots_per_rank = " +
            std::to_string(d_->num_slots()));
    }
    eplb::Placement p(1, d_->num_ranks(), d_->slots_per_rank(),
                      d_->num_experts());
    std::copy(layer.data(), layer.data() + layer.size(),
              p.mutable_layer(0).begin());
    Check(eplb::ViolationsToStatus(eplb::CheckPlacement(p))
              .WithPrefix("placement"));
    d_->SetPlacement(p.layer(0));
    placed_ = true;
  }
  py::tuple ComputeQuotas(const CArray<int64_t>& counts) {
    if (!placed_) Raise("compute_quotas: call set_placement first");
    CheckPerExpert(counts, "counts");
    py::array_t<int64_t> quota(d_->num_slots());
    int64_t peak;
    {
      py::gil_scoped_release release;
      peak = d_->ComputeQuotas(
          std::span<const int64_t>(counts.data(), counts.size()),
          std::span<int64_t>(quota.mutable_data(), quota.size()));
    }
    quoted_ = true;
    return py::make_tuple(quota, peak);
  }
  // `offsets`: None, or [E] int64 >= 0 (this rank's place in each expert's
  // global token order; global_counts_and_offsets).
  py::array MapTokens(const py::array& topk_ids, const py::object& offsets) {
    if (!quoted_) Raise("map_tokens: call compute_quotas first");
    CArray<int64_t> off;  // Empty: no offsets.
    if (!offsets.is_none()) {
      off = offsets.cast<CArray<int64_t>>();
      CheckPerExpert(off, "offsets");
    }
    const std::span<const int64_t> offs =
        offsets.is_none() ? std::span<const int64_t>()
                          : std::span<const int64_t>(off.data(), off.size());
    if (py::isinstance<py::array_t<int64_t>>(topk_ids)) {
      return Map<int64_t>(topk_ids, offs);
    }
    return Map<int32_t>(topk_ids, offs);
  }

 private:
  // `a` holds one entry >= 0 per expert; raises naming `what` otherwise.
  void CheckPerExpert(const CArray<int64_t>& a, const char* what) const {
    if (a.ndim() != 1 || a.size() != d_->num_experts()) {
      Raise(std::string(what) + ": has " + std::to_string(a.size()) +
            " entries, must be num_experts = " +
            std::to_string(d_->num_experts()));
    }
    for (py::ssize_t i = 0; i < a.size(); ++i) {
      if (a.data()[i] < 0) {
        Raise(std::string(what) + "[" + std::to_string(i) +
              "] = " + std::to_string(a.data()[i]) + ": must be >= 0");
      }
    }
  }

  template <typename Id>
  py::array Map(const py::array& topk_ids, std::span<const int64_t> offsets) {
    auto ids = topk_ids.cast<CArray<Id>>();
    py::array_t<Id> out(ids.request().shape);
    py::gil_scoped_release release;
    const std::span<const Id> in(ids.data(), ids.size());
    const std::span<Id> phys(out.mutable_data(), out.size());
    if (offsets.empty()) {
      d_->MapTokens(in, phys);
    } else {
      d_->MapTokens(in, offsets, phys);
    }
    return out;
  }

  std::unique_ptr<eplb::BalancedDispatcher> d_;
  bool placed_ = false, quoted_ = false;
};

// (counts [E], offsets [E]) from every sending rank's per-expert counts
// `rank_counts` [S, E] (int64 >= 0) for `rank` in [0, S).
py::tuple GlobalCounts(const CArray<int64_t>& rank_counts, int rank) {
  if (rank_counts.ndim() != 2 || rank_counts.shape(0) < 1 ||
      rank_counts.shape(1) < 1) {
    Raise("rank_counts: must be a [ranks, experts] array with both >= 1");
  }
  const py::ssize_t sources = rank_counts.shape(0);
  const py::ssize_t experts = rank_counts.shape(1);
  if (rank < 0 || rank >= sources) {
    Raise("rank = " + std::to_string(rank) + ": must be in [0, " +
          std::to_string(sources) + ")");
  }
  std::vector<int64_t> sums(static_cast<size_t>(experts), 0);
  for (py::ssize_t i = 0; i < rank_counts.size(); ++i) {
    const int64_t v = rank_counts.data()[i];
    int64_t& sum = sums[static_cast<size_t>(i % experts)];
    const bool negative = v < 0;
    if (negative || __builtin_add_overflow(sum, v, &sum)) {
      Raise("rank_counts[" + std::to_string(i / experts) + "][" +
            std::to_string(i % experts) + "] = " + std::to_string(v) +
            (negative ? ": must be >= 0"
                      : ": the expert's sum over ranks overflows int64"));
    }
  }
  py::array_t<int64_t> counts(experts), offsets(experts);
  eplb::GlobalCountsAndOffsets(
      std::span<const int64_t>(rank_counts.data(), rank_counts.size()), rank,
      std::span<int64_t>(counts.mutable_data(), counts.size()),
      std::span<int64_t>(offsets.mutable_data(), offsets.size()));
  return py::make_tuple(counts, offsets);
}

py::dict ParseConfig(const std::string& text) {
  const eplb::ParsedConfig p =
      Value(eplb::ParseEplbConfig(text, eplb::ReadConfigEnv()));
  const eplb::EplbConfig& c = p.config;
  py::dict d;
  d["mode"] = std::string(eplb::EplbModeName(c.mode()));
  d["dynamic_eplb"] = c.dynamic_eplb;
  d["expert_map_path"] = c.expert_map_path;
  d["expert_map_record_path"] = c.expert_map_record_path;
  d["expert_heat_collection_interval"] = c.expert_heat_collection_interval;
  d["algorithm_execution_interval"] = c.algorithm_execution_interval;
  d["num_redundant_experts"] = c.num_redundant_experts;
  d["eplb_policy_type"] = c.eplb_policy_type;
  d["eplb_heat_collection_stage"] =
      std::string(eplb::HeatStageName(c.eplb_heat_collection_stage));
  d["eplb_dispatch"] = std::string(eplb::DispatchModeName(c.eplb_dispatch));
  d["eplb_migration_budget"] = c.eplb_migration_budget;
  d["eplb_fast_warmup"] = c.eplb_fast_warmup;
  d["eplb_shift_replan"] = c.eplb_shift_replan;
  d["eplb_heat_during_migration"] = c.eplb_heat_during_migration;
  d["eplb_link_gbytes_per_s"] = c.eplb_link_gbytes_per_s;
  d["eplb_planner_threads"] = c.eplb_planner_threads;
  d["warnings"] = p.warnings;
  return d;
}

py::array_t<int32_t> ReadMap(const std::string& path) {
  return FromPlacement(Value(eplb::ReadExpertMapJson(path, {})));
}

void WriteMap(const std::string& path, const CArray<int32_t>& placement,
              int num_experts) {
  eplb::Placement p = ToPlacement(placement, num_experts);
  Check(eplb::ViolationsToStatus(eplb::CheckPlacement(p))
            .WithPrefix("placement"));
  Check(eplb::WriteExpertMapJson(path, p));
}

std::vector<std::string> ValidateMap(const CArray<int32_t>& placement,
                                     int num_experts) {
  std::vector<std::string> out;
  for (const eplb::Violation& v :
       eplb::CheckPlacement(ToPlacement(placement, num_experts))) {
    out.push_back(v.ToString());
  }
  return out;
}

eplb::LoadTrace ToTrace(const py::object& trace) {
  if (py::isinstance<py::str>(trace)) {
    return Value(eplb::ReadLoadFile(trace.cast<std::string>()));
  }
  auto a = trace.cast<CArray<double>>();
  if (a.ndim() != 3) {
    Raise("trace: must be a path or 3-D [steps, layers, experts], has " +
          std::to_string(a.ndim()) + " dimensions");
  }
  eplb::LoadTrace t(static_cast<int>(a.shape(0)), static_cast<int>(a.shape(1)),
                    static_cast<int>(a.shape(2)));
  std::copy(a.data(), a.data() + a.size(), t.mutable_data().begin());
  Check(eplb::ValidateLoad(t).WithPrefix("trace"));
  return t;
}

std::string Replay(const py::object& trace_arg, int ranks, int redundant,
                   const std::string& policy, int heat_interval,
                   int algo_interval, int batch_steps,
                   const std::string& dispatch, const std::string& model,
                   const std::string& quant, const std::string& hardware,
                   bool verify_outputs) {
  const eplb::LoadTrace trace = ToTrace(trace_arg);
  const eplb::ReplayDefaults d = eplb::DefaultReplay(false);
  eplb::ReplayOptions o;
  o.model = model.empty()
                ? eplb::ModelForShape(trace.num_layers(), trace.num_experts())
                : Value(eplb::FindModelPreset(model));
  o.quant = Value(eplb::ParseQuantType(quant));
  o.hardware = Value(eplb::FindHardwareProfile(hardware));
  o.config = d.config;
  if (heat_interval > 0)
    o.config.expert_heat_collection_interval = heat_interval;
  if (algo_interval > 0) o.config.algorithm_execution_interval = algo_interval;
  if (redundant >= 0) o.config.num_redundant_experts = redundant;
  const int r = ranks > 0 ? ranks : d.ranks;
  const int slots = Value(eplb::ValidateConfigForModel(
      o.config, trace.num_layers(), trace.num_experts(), r));
  o.topology = Value(eplb::MakeTopology(trace.num_experts(), r, slots));
  o.policy = policy;
  o.batch_steps = batch_steps > 0 ? batch_steps : d.batch_steps;
  o.dispatch = Value(eplb::ParseDispatchMode(dispatch));
  o.pace = false;
  o.verify_outputs = verify_outputs;
  eplb::StatusOr<eplb::ReplayResult> result = eplb::InternalError("not run");
  {
    py::gil_scoped_release release;
    result = eplb::RunReplay(trace, o);
  }
  const eplb::ReplayResult res = Value(std::move(result));
  return eplb::ReplayResultJson(res, o,
                                py::isinstance<py::str>(trace_arg)
                                    ? trace_arg.cast<std::string>()
                                    : "<array>",
                                "inprocess");
}

py::tuple Plan(const py::object& load_arg, int num_ranks, int slots_per_rank,
               const std::string& policy_name,
               const std::optional<CArray<int32_t>>& current_arg,
               int num_groups, int ranks_per_node, const std::string& dispatch,
               double migration_budget, int window) {
  auto a = load_arg.cast<CArray<double>>();
  if (a.ndim() != 2 && a.ndim() != 3) {
    Raise("load: must be [layers, experts] or [steps, layers, experts], has " +
          std::to_string(a.ndim()) + " dimensions");
  }
  const int steps = a.ndim() == 3 ? static_cast<int>(a.shape(0)) : 1;
  const int layers = static_cast<int>(a.shape(a.ndim() - 2));
  const int experts = static_cast<int>(a.shape(a.ndim() - 1));
  eplb::LoadTrace trace(steps, layers, experts);
  std::copy(a.data(), a.data() + a.size(), trace.mutable_data().begin());
  Check(eplb::ValidateLoad(trace).WithPrefix("load"));
  if (window < 0)
    Raise("window = " + std::to_string(window) + ": must be >= 0");
  const int first = window > 0 ? std::max(0, steps - window) : 0;
  eplb::LoadMatrix load(layers, experts);
  for (int t = first; t < steps; ++t) {
    for (int l = 0; l < layers; ++l) {
      for (int e = 0; e < experts; ++e) load.at(l, e) += trace.at(t, l, e);
    }
  }
  const eplb::Topology topology = Value(
      eplb::MakeTopology(experts, num_ranks, slots_per_rank, ranks_per_node));
  eplb::Placement current =
      current_arg.has_value()
          ? ToPlacement(*current_arg, experts)
          : eplb::Placement::Initial(layers, experts, topology);
  if (current.num_layers() != layers || current.num_ranks() != num_ranks ||
      current.slots_per_rank() != slots_per_rank) {
    Raise("current: must be [layers, num_ranks, slots_per_rank] = [" +
          std::to_string(layers) + ", " + std::to_string(num_ranks) + ", " +
          std::to_string(slots_per_rank) + "]");
  }
  Check(eplb::ViolationsToStatus(eplb::CheckPlacement(current))
            .WithPrefix("current"));
  std::unique_ptr<eplb::Policy> policy = Value(eplb::CreatePolicy(policy_name));
  eplb::PolicyOptions options;
  options.num_groups = num_groups;
  options.dispatch = Value(eplb::ParseDispatchMode(dispatch));
  options.migration_budget = migration_budget;
  if (!(migration_budget > 0 && migration_budget <= 1)) {
    Raise("migration_budget = " + std::to_string(migration_budget) +
          ": must be in (0, 1]");
  }
  eplb::PolicyInput input;
  input.current = &current;
  input.load = &load;
  input.samples = steps > 1 ? &trace : nullptr;
  input.topology = topology;
  input.window_steps = steps - first;
  std::optional<eplb::StatusOr<eplb::Plan>> plan;
  {
    py::gil_scoped_release release;
    plan.emplace(policy->Rebalance(input, options));
  }
  const eplb::Plan p = Value(std::move(*plan));
  py::dict report;
  std::vector<double> cur, pred, bound;
  std::vector<int> moved;
  std::vector<std::string> choice;
  for (const eplb::LayerPlan& lp : p.layers) {
    cur.push_back(lp.current_imbalance);
    pred.push_back(lp.predicted_imbalance);
    bound.push_back(lp.lower_bound);
    moved.push_back(lp.moved_experts);
    choice.emplace_back(eplb::LayerChoiceName(lp.choice));
  }
  report["policy"] = std::string(policy->name());
  report["current_imbalance"] = cur;
  report["predicted_imbalance"] = pred;
  report["lower_bound"] = bound;
  report["moved_experts"] = moved;
  report["choice"] = choice;
  report["notes"] = p.notes;
  return py::make_tuple(FromPlacement(p.placement), report);
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
  py::class_<PyHeatRecorder>(m, "HeatRecorder")
      .def(py::init<int, int, int, int, const std::string&, int>(),
           py::arg("num_layers"), py::arg("num_experts"), py::arg("num_slots"),
           py::arg("ring_steps") = 64, py::arg("stage") = "all",
           py::arg("max_num_reqs") = 256)
      .def("record_topk", &PyHeatRecorder::RecordTopk, py::arg("layer"),
           py::arg("topk_ids"), py::arg("log2phy"))
      .def("record_slot_counts", &PyHeatRecorder::RecordSlotCounts,
           py::arg("layer"), py::arg("slot_counts"))
      .def("end_step", &PyHeatRecorder::EndStep, py::arg("num_tokens"))
      .def("clear", &PyHeatRecorder::Clear)
      .def("snapshot", &PyHeatRecorder::Snapshot);
  py::class_<PyDispatcher>(m, "BalancedDispatcher")
      .def(py::init<int, int, int>(), py::arg("num_experts"),
           py::arg("num_ranks"), py::arg("slots_per_rank"))
      .def("set_placement", &PyDispatcher::SetPlacement, py::arg("placement"))
      .def("compute_quotas", &PyDispatcher::ComputeQuotas, py::arg("counts"))
      .def("map_tokens", &PyDispatcher::MapTokens, py::arg("topk_ids"),
           py::arg("offsets") = py::none());
  m.def("global_counts_and_offsets", &GlobalCounts, py::arg("rank_counts"),
        py::arg("rank"));
  m.def("parse_config", &ParseConfig, py::arg("text"));
  m.def("read_expert_map", &ReadMap, py::arg("path"));
  m.def("write_expert_map", &WriteMap, py::arg("path"), py::arg("placement"),
        py::arg("num_experts"));
  m.def("validate_map", &ValidateMap, py::arg("placement"),
        py::arg("num_experts"));
  m.def("plan", &Plan, py::arg("load"), py::arg("num_ranks"),
        py::arg("slots_per_rank"), py::arg("policy") = "swift",
        py::arg("current") = py::none(), py::arg("num_groups") = 1,
        py::arg("ranks_per_node") = 0, py::arg("dispatch") = "rr",
        py::arg("migration_budget") = 1.0, py::arg("window") = 0);
  m.def("replay", &Replay, py::arg("trace"), py::arg("ranks") = 0,
        py::arg("redundant") = -1, py::arg("policy") = "",
        py::arg("heat_interval") = 0, py::arg("algo_interval") = 0,
        py::arg("batch_steps") = 0, py::arg("dispatch") = "rr",
        py::arg("model") = "", py::arg("quant") = "bf16",
        py::arg("hardware") = "a2", py::arg("verify_outputs") = false);
}
