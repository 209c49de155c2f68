// Tests of the PyTorch-file check: what counts as one, and that the error
// names the file, what it holds and the command that turns it into JSON.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "eplb/io.h"
#include "testing/scratch_dir.h"

namespace eplb {
namespace {

constexpr char kZip[] =
    EPLB_SOURCE_DIR "/tests/data/fake_torch_logical_count.pt";
constexpr char kLegacy[] = EPLB_SOURCE_DIR "/tests/data/fake_torch_legacy.pt";

std::string Contents(const char* path) {
  StatusOr<std::string> text = ReadFileToString(path);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return text.ok() ? *text : std::string();
}

TEST(TorchFileTest, JsonAndCsvPass) {
  EXPECT_TRUE(
      RejectTorchFile("m.json", "{\"layer_list\": []}", "layer_list").ok());
  EXPECT_TRUE(
      RejectTorchFile("t.csv", "step,layer,expert,count\n", "logical_count")
          .ok());
  EXPECT_TRUE(RejectTorchFile("e", "", "logical_count").ok());
  EXPECT_TRUE(RejectTorchFile("p", "PK", "logical_count").ok());
}

// A torch.save zip holding SGLang's dump (a dict with "logical_count").
TEST(TorchFileTest, ZipHoldingLogicalCount) {
  const Status status =
      RejectTorchFile("/d/dump.pt", Contents(kZip), "logical_count");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "/d/dump.pt: a PyTorch file (torch.save zip archive holding "
            "SGLang's logical_count), not JSON or CSV: convert it with "
            "python3 -c \"import torch, json; d = torch.load('/d/dump.pt', "
            "map_location='cpu', weights_only=True); json.dump("
            "{'logical_count': d['logical_count'].tolist()}, "
            "open('/d/dump.json', 'w'))\"");
}

// A legacy pickle of a bare tensor: wrapped under the key the reader wants.
TEST(TorchFileTest, LegacyPickleOfATensor) {
  const Status load = RejectTorchFile("x", Contents(kLegacy), "logical_count");
  ASSERT_FALSE(load.ok());
  EXPECT_EQ(load.message(),
            "x: a PyTorch file (legacy pickle holding a tensor (taken as "
            "logical_count)), not JSON or CSV: convert it with python3 -c "
            "\"import torch, json; json.dump({'logical_count': "
            "torch.load('x', map_location='cpu', weights_only=True)"
            ".tolist()}, open('x.json', 'w'))\"");
  // Where a vllm-ascend map is expected, the tensor is taken as SGLang's
  // rows, and the message says how to go on from there.
  const Status map = RejectTorchFile("m.pt", Contents(kLegacy), "layer_list");
  ASSERT_FALSE(map.ok());
  EXPECT_NE(map.message().find("json.dump({'physical_to_logical_map': "),
            std::string::npos)
      << map.message();
  EXPECT_TRUE(map.message().ends_with(
      "; then eplb convert --in m.json --ranks R --to vllm-map --out "
      "MAP.json"))
      << map.message();
}

TEST(TorchFileTest, KeysOfDeepSeekAndSglangMaps) {
  const std::string zip = Contents(kZip);
  const std::string head = zip.substr(0, 4);
  const Status triple =
      RejectTorchFile("t.pt", head + "data.pkl phy2log log2phy", "layer_list");
  ASSERT_FALSE(triple.ok());
  EXPECT_NE(triple.message().find("holding DeepSeek's phy2log/log2phy/logcnt"),
            std::string::npos)
      << triple.message();
  EXPECT_NE(triple.message().find("for k in ('phy2log', 'log2phy', 'logcnt')"),
            std::string::npos)
      << triple.message();
  const Status p2l = RejectTorchFile(
      "s.pt", head + "data.pkl physical_to_logical_map", "logical_count");
  ASSERT_FALSE(p2l.ok());
  EXPECT_NE(p2l.message().find("holding SGLang's physical_to_logical_map"),
            std::string::npos)
      << p2l.message();
}

TEST(TorchFileTest, ZipThatIsNotPyTorch) {
  const Status status = RejectTorchFile(
      "a.zip", std::string("PK\x03\x04", 4) + "hello.txt", "logical_count");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(),
            "a.zip: a zip archive, not JSON or CSV (nor a PyTorch file: no "
            "data.pkl inside)");
}

// Quotes and dollars in the path survive Python and the shell: the shell
// turns \\ into \ and \$ into $, and Python reads 'it\'s $HOME.pt'.
TEST(TorchFileTest, PathIsQuoted) {
  const Status status =
      RejectTorchFile("it's $HOME.pt", Contents(kLegacy), "logical_count");
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("torch.load('it\\\\'s \\$HOME.pt'"),
            std::string::npos)
      << status.message();
  EXPECT_NE(status.message().find("open('it\\\\'s \\$HOME.json', 'w')"),
            std::string::npos)
      << status.message();
}

// Every reader of maps and loads recognises a .pt file.
TEST(TorchFileTest, ReadersRejectPyTorchFiles) {
  const std::vector<std::string> messages = {
      ReadLoadFile(kZip).status().message(),
      ReadTraceCsv(kZip).status().message(),
      ReadSglangLogicalCount(kZip).status().message(),
      ReadExpertMapJson(kLegacy, MapExpectations{}).status().message(),
      ReadSglangPhysicalToLogical(kLegacy, SglangMapOptions{.num_ranks = 2})
          .status()
          .message(),
      ReadDeepSeekMaps(kLegacy, 2).status().message(),
  };
  for (const std::string& message : messages) {
    SCOPED_TRACE(message);
    EXPECT_NE(message.find(": a PyTorch file ("), std::string::npos);
    EXPECT_NE(message.find("python3 -c \"import torch, json; "),
              std::string::npos);
    EXPECT_EQ(message.find('\n'), std::string::npos);
  }
  EXPECT_NE(messages[0].find("json.dump({'logical_count': d['logical_count']"),
            std::string::npos);
  EXPECT_NE(messages[5].find("json.dump({'phy2log': torch.load("),
            std::string::npos);
}

}  // namespace
}  // namespace eplb
