// PyTorch files given where a map or a load is expected: recognised by their
// first bytes, and answered with the command that turns them into the JSON
// eplb reads. The command is chosen by what the file holds: the dict keys
// SGLang and DeepSeek's tools save appear verbatim in the pickle (torch.save
// stores its zip entries uncompressed). Stateless: thread-safe.
#include "io/torch_file.h"

#include <cstdio>
#include <string>
#include <string_view>
#include <utility>

#include "eplb/io.h"

namespace eplb {
namespace internal {
namespace {

constexpr std::string_view kZipMagic("PK\x03\x04", 4);

// `text` inside a single-quoted Python string literal.
std::string PythonQuoted(std::string_view text) {
  std::string out = "'";
  for (const char c : text) {
    if (c == '\\' || c == '\'') out += '\\';
    out += c;
  }
  out += '\'';
  return out;
}

// `text` inside a double-quoted shell word.
std::string ShellDoubleQuoted(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\' || c == '$' || c == '`') out += '\\';
    out += c;
  }
  out += '"';
  return out;
}

// "dump.pt" -> "dump.json"; other names get ".json" appended.
std::string JsonPathFor(const std::string& path) {
  constexpr std::string_view kPt = ".pt";
  if (path.size() > kPt.size() && path.ends_with(kPt)) {
    return path.substr(0, path.size() - kPt.size()) + ".json";
  }
  return path + ".json";
}

bool Holds(std::string_view contents, std::string_view key) {
  return contents.find(key) != std::string_view::npos;
}

}  // namespace

bool LooksLikeTorchFile(std::string_view head) {
  if (head.starts_with(kZipMagic)) return true;
  return head.size() >= 2 && head[0] == '\x80' && head[1] >= '\x02' &&
         head[1] <= '\x05';
}

Status RejectTorchFileAt(const std::string& path,
                         std::string_view expected_key) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return Status::Ok();
  char head[4] = {};
  const size_t n = std::fread(head, 1, sizeof head, file);
  std::fclose(file);
  if (!LooksLikeTorchFile(std::string_view(head, n))) return Status::Ok();
  StatusOr<std::string> contents = ReadFileToString(path);
  if (!contents.ok()) return Status::Ok();
  return RejectTorchFile(path, *contents, expected_key);
}

}  // namespace internal

Status RejectTorchFile(const std::string& path, std::string_view contents,
                       std::string_view expected_key) {
  if (!internal::LooksLikeTorchFile(contents)) return Status::Ok();
  const bool zip = contents.starts_with(internal::kZipMagic);
  if (zip && !internal::Holds(contents, "data.pkl")) {
    return InvalidArgumentError(
        path +
        ": a zip archive, not JSON or CSV (nor a PyTorch file: no data.pkl "
        "inside)");
  }
  const std::string out = internal::JsonPathFor(path);
  const std::string load = "torch.load(" + internal::PythonQuoted(path) +
                           ", map_location='cpu', weights_only=True)";
  const std::string open_out = "open(" + internal::PythonQuoted(out) + ", 'w')";
  std::string held;  // What the file holds, as the message says it.
  std::string dump;  // The json.dump(...) statement(s).
  std::string then;  // What to do with the JSON, when eplb needs more.
  // physical_to_logical_map contains no other key's name; test it first.
  for (const std::string_view key :
       {"physical_to_logical_map", "logical_count"}) {
    if (!internal::Holds(contents, key)) continue;
    const std::string name(key);
    held = "SGLang's " + name;
    dump = "d = " + load;
    dump += "; json.dump({'" + name;
    dump += "': d['" + name;
    dump += "'].tolist()}, " + open_out;
    dump += ")";
    break;
  }
  if (held.empty() && internal::Holds(contents, "phy2log")) {
    held = "DeepSeek's phy2log/log2phy/logcnt";
    dump = "d = " + load +
           "; json.dump({k: d[k].tolist() for k in ('phy2log', 'log2phy', "
           "'logcnt') if k in d}, " +
           open_out + ")";
  }
  std::string key(expected_key);
  if (held.empty()) {
    // A bare tensor (or a dict eplb does not know): wrap it under the key
    // the reader expects. A vllm-ascend map cannot be a tensor: take it as
    // the [L][R*K] rows SGLang and DeepSeek save.
    if (key == "layer_list") key = "physical_to_logical_map";
    held = "a tensor (taken as " + key + ")";
    dump =
        "json.dump({'" + key + "': " + load + ".tolist()}, " + open_out + ")";
  }
  if (expected_key == "layer_list" &&
      held.find("logical_count") == std::string::npos) {
    then = "; then eplb convert --in " + out +
           " --ranks R --to vllm-map --out MAP.json";
  }
  std::string message = path;
  message += zip ? ": a PyTorch file (torch.save zip archive holding "
                 : ": a PyTorch file (legacy pickle holding ";
  message += held;
  message += "), not JSON or CSV: convert it with python3 -c ";
  message += internal::ShellDoubleQuoted("import torch, json; " + dump);
  message += then;
  return InvalidArgumentError(std::move(message));
}

}  // namespace eplb
