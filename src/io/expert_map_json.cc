// The vllm-ascend expert-map JSON: a validating reader that
// reports every problem it finds, each naming its layer / device / slot, and
// what it accepts but vllm-ascend might read otherwise as warnings; and a
// deterministic writer. Stateless: thread-safe.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "eplb/io.h"
#include "eplb/limits.h"
#include "io/json_util.h"

namespace eplb {
namespace {

using internal::Json;

// Stands for a slot whose value is not an integer (already reported).
constexpr int64_t kNotAnId = std::numeric_limits<int64_t>::min();
// Ids above this cannot be a Placement's int32 expert id.
constexpr int64_t kMaxExpertId = std::numeric_limits<int32_t>::max() - 1;
// How many missing experts one "on no device" problem lists.
constexpr size_t kMaxListed = 8;
// How many problems are listed one by one; the rest are counted.
constexpr size_t kMaxListedProblems = 20;

// One device_list entry, in file order.
struct DeviceEntry {
  std::string where;  // "layer 0, device 1", or by list index when no valid id.
  int layer = -1;     // Layer id when valid and first seen, else -1.
  int device = -1;    // Device id when valid and first seen, else -1.
  std::vector<int64_t> experts;  // [slots]; kNotAnId where not an integer.
};

std::string Range(int64_t end) { return "[0, " + std::to_string(end) + ")"; }

// "4, 5, 6".
std::string ListIds(const std::vector<int64_t>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(ids[i]);
  }
  return out;
}

class ExpertMapParser {
 public:
  explicit ExpertMapParser(const MapExpectations& expect) : expect_(expect) {}

  // Returns the placement (and appends its warnings to `warnings`), or the
  // problems (also appended to `problems`).
  StatusOr<Placement> Parse(std::string_view text,
                            std::vector<std::string>* problems,
                            std::vector<std::string>* warnings);

 private:
  // Keeps the first kMaxListedProblems problems and counts the rest, so a
  // map with a million bad entries costs neither memory nor a million lines.
  void Problem(std::string message) {
    ++num_problems_;
    if (problems_.size() < kMaxListedProblems) {
      problems_.push_back(std::move(message));
    }
  }

  const Json* Member(const Json& object, const char* key,
                     const std::string& where);
  bool IntMember(const Json& object, const char* key, const std::string& where,
                 int64_t* out);
  void ReadTop(const Json& root);
  void CheckLayerCount(const Json& root);
  void ReadLayer(const Json& layer, size_t index);
  int ClaimLayerId(const Json& layer, size_t index);
  void CheckDeviceCount(const Json& layer, const std::string& list_where,
                        const std::string& where, size_t num_devices);
  void ReadDevice(const Json& device, size_t index, int layer_id,
                  const std::string& layer_where, std::vector<int>* seen);
  void ReadExperts(const Json& list, DeviceEntry* entry);
  void CheckSlotCount(size_t num_slots, const std::string& where);

  void InferNumExperts();
  void CheckDeviceExperts(const DeviceEntry& entry);
  void CheckCoverage(int layer);
  Placement Build() const;
  void Warn(const Placement& placement, std::vector<std::string>* warnings);

  const MapExpectations expect_;
  std::vector<std::string> problems_;
  size_t num_problems_ = 0;  // Also those not kept in problems_.
  int num_layers_ = 0;
  int num_ranks_ = 0;       // Expected, or the first layer's count.
  std::string ranks_from_;  // Which layer set num_ranks_ ("" = expect).
  int slots_per_rank_ = 0;  // Expected, or the first device's count.
  std::string slots_from_;  // Which device set slots_per_rank_.
  int num_experts_ = 0;
  std::vector<int> layer_index_;  // [L]: layer_list index of each id, or -1.
  std::vector<DeviceEntry> devices_;
  // Entries without an id key (their position is their id), and whether
  // some entry's id differs from its position.
  size_t layers_without_id_ = 0;
  size_t devices_without_id_ = 0;
  bool layers_out_of_order_ = false;
  bool devices_out_of_order_ = false;
};

const Json* ExpertMapParser::Member(const Json& object, const char* key,
                                    const std::string& where) {
  const auto it = object.find(key);
  if (it == object.end()) {
    Problem(where + ": missing key \"" + key + "\"");
    return nullptr;
  }
  return &*it;
}

bool ExpertMapParser::IntMember(const Json& object, const char* key,
                                const std::string& where, int64_t* out) {
  const Json* value = Member(object, key, where);
  if (value == nullptr) return false;
  if (!internal::GetInt64(*value, out)) {
    Problem(where + ": " + key + " is " + internal::DescribeJson(*value) +
            ", not an integer");
    return false;
  }
  return true;
}

StatusOr<Placement> ExpertMapParser::Parse(std::string_view text,
                                           std::vector<std::string>* problems,
                                           std::vector<std::string>* warnings) {
  Json root;
  if (Status status = internal::ParseJson(text, &root); !status.ok()) {
    Problem(status.message());
  } else if (!root.is_object()) {
    Problem("top level is " + internal::DescribeJson(root) + ", not an object");
  } else {
    ReadTop(root);
  }
  if (problems_.empty()) {
    Placement placement = Build();
    if (warnings != nullptr) Warn(placement, warnings);
    return placement;
  }
  if (num_problems_ > problems_.size()) {
    const std::string more = std::to_string(num_problems_ - problems_.size());
    if (problems != nullptr) {
      problems->insert(problems->end(), problems_.begin(), problems_.end());
      problems->push_back("... and " + more + " more problems (the first " +
                          std::to_string(problems_.size()) + " are listed)");
    }
    return InvalidArgumentError(
        std::to_string(num_problems_) +
        " problems in expert map; first: " + problems_.front());
  }
  if (problems != nullptr) {
    problems->insert(problems->end(), problems_.begin(), problems_.end());
  }
  return internal::ProblemsToStatus(problems_, "expert map");
}

void ExpertMapParser::ReadTop(const Json& root) {
  const Json* list = Member(root, "layer_list", "expert map");
  if (list != nullptr && !list->is_array()) {
    Problem("layer_list is " + internal::DescribeJson(*list) +
            ", not an array");
    list = nullptr;
  }
  if (list != nullptr && list->empty()) {
    Problem("layer_list is empty");
    list = nullptr;
  }
  if (list != nullptr && list->size() > static_cast<size_t>(kMaxLayers)) {
    Problem("layer_list has " + std::to_string(list->size()) +
            " layers, more than the limit of " + std::to_string(kMaxLayers));
    return;
  }
  if (list != nullptr) num_layers_ = static_cast<int>(list->size());
  CheckLayerCount(root);
  if (list == nullptr) return;
  layer_index_.assign(list->size(), -1);
  for (size_t i = 0; i < list->size(); ++i) ReadLayer((*list)[i], i);
  for (int l = 0; l < num_layers_; ++l) {
    if (layer_index_[l] < 0) {
      Problem("layer " + std::to_string(l) + " is missing from layer_list");
    }
  }
  InferNumExperts();
  for (const DeviceEntry& entry : devices_) CheckDeviceExperts(entry);
  for (int l = 0; l < num_layers_; ++l) {
    if (layer_index_[l] >= 0) CheckCoverage(l);
  }
}

// moe_layer_count against the list and against the model.
void ExpertMapParser::CheckLayerCount(const Json& root) {
  int64_t count = 0;
  const bool has_count =
      IntMember(root, "moe_layer_count", "expert map", &count);
  if (has_count && num_layers_ > 0 && count != num_layers_) {
    Problem("moe_layer_count is " + std::to_string(count) +
            " but layer_list has " + std::to_string(num_layers_) + " layers");
  }
  const int64_t layers = has_count ? count : num_layers_;
  if (expect_.num_layers > 0 && (has_count || num_layers_ > 0) &&
      layers != expect_.num_layers) {
    Problem((has_count ? "moe_layer_count is " : "layer_list has ") +
            std::to_string(layers) + (has_count ? "" : " layers") +
            " but the model has " + std::to_string(expect_.num_layers) +
            " MoE layers");
  }
}

// Returns the layer's id when valid and first seen, else -1 (reported).
// Without a layer_id key the entry's position is its id.
int ExpertMapParser::ClaimLayerId(const Json& layer, size_t index) {
  const std::string where = "layer_list[" + std::to_string(index) + "]";
  int64_t id = static_cast<int64_t>(index);
  if (!layer.contains("layer_id")) {
    ++layers_without_id_;
  } else if (!IntMember(layer, "layer_id", where, &id)) {
    return -1;
  } else if (id != static_cast<int64_t>(index)) {
    layers_out_of_order_ = true;
  }
  if (id < 0 || id >= num_layers_) {
    Problem(where + ": layer id " + std::to_string(id) + " out of range " +
            Range(num_layers_));
    return -1;
  }
  if (layer_index_[id] >= 0) {
    Problem(where + ": layer id " + std::to_string(id) +
            " appears twice (also layer_list[" +
            std::to_string(layer_index_[id]) + "])");
    return -1;
  }
  layer_index_[id] = static_cast<int>(index);
  return static_cast<int>(id);
}

void ExpertMapParser::ReadLayer(const Json& layer, size_t index) {
  const std::string list_where = "layer_list[" + std::to_string(index) + "]";
  if (!layer.is_object()) {
    Problem(list_where + " is " + internal::DescribeJson(layer) +
            ", not an object");
    return;
  }
  const int id = ClaimLayerId(layer, index);
  const std::string where =
      id >= 0 ? "layer " + std::to_string(id) : list_where;
  const Json* devices = Member(layer, "device_list", list_where);
  if (devices != nullptr && !devices->is_array()) {
    Problem(where + ": device_list is " + internal::DescribeJson(*devices) +
            ", not an array");
    devices = nullptr;
  }
  CheckDeviceCount(layer, list_where, where,
                   devices == nullptr ? 0 : devices->size());
  if (devices == nullptr) return;
  if (devices->empty()) {
    Problem(where + ": device_list is empty");
    return;
  }
  if (devices->size() > static_cast<size_t>(kMaxRanks)) {
    Problem(where + ": device_list has " + std::to_string(devices->size()) +
            " devices, more than the limit of " + std::to_string(kMaxRanks));
    return;
  }
  std::vector<int> seen(devices->size(), -1);
  for (size_t j = 0; j < devices->size(); ++j) {
    ReadDevice((*devices)[j], j, id, where, &seen);
  }
  for (size_t d = 0; d < seen.size(); ++d) {
    if (seen[d] < 0) {
      Problem(where + ": device " + std::to_string(d) +
              " is missing from device_list");
    }
  }
}

// device_count against the list, and the list against the EP size (or the
// first layer's).
void ExpertMapParser::CheckDeviceCount(const Json& layer,
                                       const std::string& list_where,
                                       const std::string& where,
                                       size_t num_devices) {
  int64_t count = 0;
  const bool has_count = IntMember(layer, "device_count", list_where, &count);
  if (num_devices == 0) return;
  if (has_count && count != static_cast<int64_t>(num_devices)) {
    Problem(where + ": device_count is " + std::to_string(count) +
            " but device_list has " + std::to_string(num_devices) + " devices");
  }
  if (num_ranks_ == 0 && expect_.num_ranks > 0) num_ranks_ = expect_.num_ranks;
  if (num_ranks_ == 0) {
    num_ranks_ = static_cast<int>(num_devices);
    ranks_from_ = where;
  } else if (static_cast<int64_t>(num_devices) != num_ranks_) {
    Problem(where + ": " + std::to_string(num_devices) + " devices but " +
            (ranks_from_.empty() ? "the EP size (num_ranks) is "
                                 : ranks_from_ + " has ") +
            std::to_string(num_ranks_));
  }
}

void ExpertMapParser::ReadDevice(const Json& device, size_t index, int layer_id,
                                 const std::string& layer_where,
                                 std::vector<int>* seen) {
  const std::string list_where =
      layer_where + ", device_list[" + std::to_string(index) + "]";
  if (!device.is_object()) {
    Problem(list_where + " is " + internal::DescribeJson(device) +
            ", not an object");
    return;
  }
  DeviceEntry entry;
  // Without a device_id key the entry's position is its id.
  int64_t id = static_cast<int64_t>(index);
  bool has_id = true;
  if (!device.contains("device_id")) {
    ++devices_without_id_;
  } else if (!IntMember(device, "device_id", list_where, &id)) {
    has_id = false;
  } else if (id != static_cast<int64_t>(index)) {
    devices_out_of_order_ = true;
  }
  if (has_id) {
    const int64_t num_devices = static_cast<int64_t>(seen->size());
    if (id < 0 || id >= num_devices) {
      Problem(list_where + ": device id " + std::to_string(id) +
              " out of range " + Range(num_devices));
    } else if ((*seen)[id] >= 0) {
      Problem(layer_where + ": device id " + std::to_string(id) +
              " appears twice (device_list[" + std::to_string((*seen)[id]) +
              "] and device_list[" + std::to_string(index) + "])");
    } else {
      (*seen)[id] = static_cast<int>(index);
      entry.device = static_cast<int>(id);
    }
  }
  entry.layer = entry.device >= 0 ? layer_id : -1;
  entry.where = entry.device >= 0
                    ? layer_where + ", device " + std::to_string(entry.device)
                    : list_where;
  const Json* experts = Member(device, "device_expert", entry.where);
  if (experts == nullptr) return;
  if (!experts->is_array()) {
    Problem(entry.where + ": device_expert is " +
            internal::DescribeJson(*experts) + ", not an array");
    return;
  }
  ReadExperts(*experts, &entry);
  devices_.push_back(std::move(entry));
}

void ExpertMapParser::ReadExperts(const Json& list, DeviceEntry* entry) {
  if (list.empty()) {
    Problem(entry->where + ": device_expert is empty (a device needs slots)");
    return;
  }
  CheckSlotCount(list.size(), entry->where);
  entry->experts.reserve(list.size());
  for (size_t k = 0; k < list.size(); ++k) {
    int64_t id = 0;
    if (!internal::GetInt64(list[k], &id)) {
      Problem(entry->where + ", slot " + std::to_string(k) + ": expert id " +
              internal::DescribeJson(list[k]) + " is not an integer");
      id = kNotAnId;
    }
    entry->experts.push_back(id);
  }
}

void ExpertMapParser::CheckSlotCount(size_t num_slots,
                                     const std::string& where) {
  if (slots_per_rank_ == 0 && expect_.slots_per_rank > 0) {
    slots_per_rank_ = expect_.slots_per_rank;
  }
  if (slots_per_rank_ == 0) {
    slots_per_rank_ = static_cast<int>(num_slots);
    slots_from_ = where;
  } else if (static_cast<int64_t>(num_slots) != slots_per_rank_) {
    Problem(
        where + ": " + std::to_string(num_slots) + " slots but " +
        (slots_from_.empty() ? "slots_per_rank is " : slots_from_ + " has ") +
        std::to_string(slots_per_rank_));
  }
}

// E: expected, else max id + 1 over the whole file.
void ExpertMapParser::InferNumExperts() {
  if (expect_.num_experts > 0) {
    num_experts_ = expect_.num_experts;
    return;
  }
  int64_t max_id = -1;
  for (const DeviceEntry& entry : devices_) {
    for (const int64_t id : entry.experts) {
      if (id <= kMaxExpertId) max_id = std::max(max_id, id);
    }
  }
  num_experts_ = static_cast<int>(max_id + 1);
  // Every expert needs a slot of every layer: an id that would make E
  // larger than the slots (or the limit) is out of range, and named so.
  int64_t cap = kMaxExperts;
  if (num_ranks_ > 0 && slots_per_rank_ > 0) {
    cap = std::min<int64_t>(cap, int64_t{num_ranks_} * slots_per_rank_);
  }
  if (num_experts_ > cap) num_experts_ = static_cast<int>(cap);
}

// Ids in [0, E) and, under vllm-ascend's rules, none twice on the device.
void ExpertMapParser::CheckDeviceExperts(const DeviceEntry& entry) {
  std::vector<std::pair<int64_t, size_t>> by_id;  // (expert, slot)
  for (size_t k = 0; k < entry.experts.size(); ++k) {
    const int64_t id = entry.experts[k];
    if (id == kNotAnId) continue;
    if (id < 0 || id >= num_experts_) {
      Problem(entry.where + ", slot " + std::to_string(k) + ": expert " +
              std::to_string(id) + " out of range " + Range(num_experts_));
      continue;
    }
    by_id.emplace_back(id, k);
  }
  if (expect_.target != MapTarget::kVllmAscend) return;
  std::sort(by_id.begin(), by_id.end());
  for (size_t i = 1; i < by_id.size(); ++i) {
    if (by_id[i].first != by_id[i - 1].first) continue;
    Problem(entry.where + ", slot " + std::to_string(by_id[i].second) +
            ": expert " + std::to_string(by_id[i].first) +
            " appears twice on the device (slots " +
            std::to_string(by_id[i - 1].second) + " and " +
            std::to_string(by_id[i].second) + ")");
  }
}

// Every expert of [0, E) on some device of `layer`. Works from the sorted
// ids present, so a huge E costs no memory.
void ExpertMapParser::CheckCoverage(int layer) {
  std::vector<int64_t> present;
  for (const DeviceEntry& entry : devices_) {
    if (entry.layer != layer) continue;
    for (const int64_t id : entry.experts) {
      if (id >= 0 && id < num_experts_) present.push_back(id);
    }
  }
  std::sort(present.begin(), present.end());
  present.erase(std::unique(present.begin(), present.end()), present.end());
  const int64_t num_missing =
      num_experts_ - static_cast<int64_t>(present.size());
  if (num_missing <= 0) return;
  std::vector<int64_t> missing;
  size_t next = 0;
  for (int64_t e = 0; e < num_experts_ && missing.size() < kMaxListed; ++e) {
    if (next < present.size() && present[next] == e) {
      ++next;
    } else {
      missing.push_back(e);
    }
  }
  std::string ids = ListIds(missing);
  if (num_missing > static_cast<int64_t>(missing.size())) {
    ids += " and " +
           std::to_string(num_missing - static_cast<int64_t>(missing.size())) +
           " more";
  }
  Problem("layer " + std::to_string(layer) +
          (num_missing == 1 ? ": expert " + ids + " is on no device"
                            : ": experts " + ids + " are on no device"));
}

Placement ExpertMapParser::Build() const {
  Placement placement(num_layers_, num_ranks_, slots_per_rank_, num_experts_);
  for (const DeviceEntry& entry : devices_) {
    for (size_t k = 0; k < entry.experts.size(); ++k) {
      placement.set(entry.layer, entry.device, static_cast<int>(k),
                    static_cast<int32_t>(entry.experts[k]));
    }
  }
  return placement;
}

void ExpertMapParser::Warn(const Placement& placement,
                           std::vector<std::string>* warnings) {
  constexpr char kPositions[] =
      " (vllm-ascend's reader goes by position and ignores ";
  if (layers_without_id_ > 0) {
    warnings->push_back(
        std::to_string(layers_without_id_) + " of " +
        std::to_string(num_layers_) +
        " layer_list entries have no layer_id: each one's position in "
        "layer_list is its layer id" +
        kPositions + "layer_id)");
  }
  if (devices_without_id_ > 0) {
    warnings->push_back(
        std::to_string(devices_without_id_) + " of " +
        std::to_string(devices_.size()) +
        " device_list entries have no device_id: each one's position in its "
        "device_list is its device id" +
        kPositions + "device_id)");
  }
  if (layers_out_of_order_ || devices_out_of_order_) {
    warnings->push_back(
        std::string(layers_out_of_order_ ? "layer_list" : "a device_list") +
        " is not in id order: eplb reads entries by id, but vllm-ascend's "
        "reader goes by position and would place these experts elsewhere");
  }
  const std::vector<int> colocated = ColocatedLayers(placement);
  if (!colocated.empty()) warnings->push_back(ColocationWarning(colocated));
}

}  // namespace

StatusOr<Placement> ParseExpertMapJson(std::string_view text,
                                       const MapExpectations& expect,
                                       std::vector<std::string>* problems,
                                       std::vector<std::string>* warnings) {
  return ExpertMapParser(expect).Parse(text, problems, warnings);
}

StatusOr<Placement> ReadExpertMapJson(const std::string& path,
                                      const MapExpectations& expect,
                                      std::vector<std::string>* problems,
                                      std::vector<std::string>* warnings) {
  EPLB_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  EPLB_RETURN_IF_ERROR(RejectTorchFile(path, text, "layer_list"));
  StatusOr<Placement> placement =
      ParseExpertMapJson(text, expect, problems, warnings);
  if (!placement.ok()) return placement.status().WithPrefix(path);
  return placement;
}

std::string ExpertMapToJson(const Placement& placement) {
  const int num_layers = placement.num_layers();
  const int num_ranks = placement.num_ranks();
  std::string out = "{\n  \"moe_layer_count\": ";
  internal::AppendInt(&out, num_layers);
  out += ",\n  \"layer_list\": [\n";
  for (int l = 0; l < num_layers; ++l) {
    out += "    {\n      \"layer_id\": ";
    internal::AppendInt(&out, l);
    out += ",\n      \"device_count\": ";
    internal::AppendInt(&out, num_ranks);
    out += ",\n      \"device_list\": [\n";
    const std::span<const int32_t> slots = placement.layer(l);
    const size_t k = static_cast<size_t>(placement.slots_per_rank());
    for (int r = 0; r < num_ranks; ++r) {
      out += "        {\"device_id\": ";
      internal::AppendInt(&out, r);
      out += ", \"device_expert\": ";
      internal::AppendArray(&out, slots.subspan(r * k, k));
      out += r + 1 < num_ranks ? "},\n" : "}\n";
    }
    out += l + 1 < num_layers ? "      ]\n    },\n" : "      ]\n    }\n";
  }
  out += "  ]\n}\n";
  return out;
}

Status WriteExpertMapJson(const std::string& path, const Placement& placement) {
  return WriteFileAtomic(path, ExpertMapToJson(placement));
}

}  // namespace eplb
