// Tests of ReadFileToString and WriteFileAtomic: contents, error codes and
// messages, and that a failed write leaves nothing behind.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "eplb/io.h"
#include "eplb/limits.h"
#include "testing/scratch_dir.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;

class FileUtilTest : public testing::Test {
 protected:
  std::string Path(const std::string& name) const {
    return scratch_.File(name);
  }

  void WriteRaw(const std::string& path, const std::string& contents) {
    std::ofstream(path, std::ios::binary) << contents;
  }

  std::set<std::string> Entries() const {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      names.insert(entry.path().filename().string());
    }
    return names;
  }

  testing_util::ScratchDir scratch_{"file_util"};
  const fs::path dir_ = scratch_.path();
};

TEST_F(FileUtilTest, ReadsWholeFileIncludingNulBytes) {
  std::string contents(200000, 'x');
  contents[5] = '\0';
  contents.back() = '\n';
  WriteRaw(Path("a.bin"), contents);
  const StatusOr<std::string> read = ReadFileToString(Path("a.bin"));
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(*read, contents);
}

TEST_F(FileUtilTest, MissingFileIsNotFound) {
  const StatusOr<std::string> read = ReadFileToString(Path("nope.json"));
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(read.status().message(), Path("nope.json") + ": no such file");
}

TEST_F(FileUtilTest, DirectoryIsInvalidArgument) {
  const StatusOr<std::string> read = ReadFileToString(dir_.string());
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(read.status().message(), dir_.string() + ": is a directory");
}

TEST_F(FileUtilTest, EmptyFileIsInvalidArgument) {
  WriteRaw(Path("empty"), "");
  const StatusOr<std::string> read = ReadFileToString(Path("empty"));
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(read.status().message(), Path("empty") + ": file is empty");
}

TEST_F(FileUtilTest, WriteCreatesFile) {
  ASSERT_TRUE(WriteFileAtomic(Path("new.txt"), "hello\n").ok());
  EXPECT_EQ(*ReadFileToString(Path("new.txt")), "hello\n");
  EXPECT_EQ(Entries(), std::set<std::string>{"new.txt"});
}

TEST_F(FileUtilTest, WriteReplacesExistingFileAndLeavesNoTemp) {
  WriteRaw(Path("map.json"), std::string(1000, 'o'));
  ASSERT_TRUE(WriteFileAtomic(Path("map.json"), "new").ok());
  EXPECT_EQ(*ReadFileToString(Path("map.json")), "new");
  EXPECT_EQ(Entries(), std::set<std::string>{"map.json"});
}

TEST_F(FileUtilTest, WriteRelativePathInCurrentDirectory) {
  const fs::path old_cwd = fs::current_path();
  fs::current_path(dir_);
  const Status status = WriteFileAtomic("relative.txt", "r");
  fs::current_path(old_cwd);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(*ReadFileToString(Path("relative.txt")), "r");
}

TEST_F(FileUtilTest, WriteIntoMissingDirectoryIsNotFoundAndCreatesNothing) {
  const std::string path = Path("missing/sub/out.json");
  const Status status = WriteFileAtomic(path, "x");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_TRUE(status.message().starts_with(path + ": ")) << status.message();
  EXPECT_NE(status.message().find("does not exist"), std::string::npos);
  EXPECT_FALSE(fs::exists(Path("missing")));
  EXPECT_TRUE(Entries().empty());
}

TEST_F(FileUtilTest, WriteOverDirectoryFailsAndLeavesItAlone) {
  fs::create_directory(Path("adir"));
  const Status status = WriteFileAtomic(Path("adir"), "x");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), Path("adir") + ": is a directory");
  EXPECT_TRUE(fs::is_directory(Path("adir")));
  EXPECT_EQ(Entries(), std::set<std::string>{"adir"});
}

TEST_F(FileUtilTest, WriteRejectsEmptyOrDirectoryPath) {
  const Status empty = WriteFileAtomic("", "x");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.message(), "\"\": not a file path");
  const Status slash = WriteFileAtomic(dir_.string() + "/", "x");
  ASSERT_FALSE(slash.ok());
  EXPECT_EQ(slash.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Entries().empty());
}

TEST_F(FileUtilTest, WriteEmptyContents) {
  ASSERT_TRUE(WriteFileAtomic(Path("zero"), "").ok());
  EXPECT_EQ(fs::file_size(Path("zero")), 0u);
}

// Writers racing on one path each use their own temp file: the result is
// one writer's whole contents, and no temp file is left.
TEST_F(FileUtilTest, ConcurrentWritersLeaveOneWholeFile) {
  constexpr int kThreads = 8;
  std::vector<std::string> contents;
  for (int t = 0; t < kThreads; ++t) {
    contents.push_back(std::string(10000, static_cast<char>('a' + t)));
  }
  std::vector<std::thread> threads;
  std::vector<int> ok(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        ok[t] += WriteFileAtomic(Path("shared"), contents[t]).ok() ? 1 : 0;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(ok[t], 20);
  const std::string final_contents = *ReadFileToString(Path("shared"));
  EXPECT_NE(std::find(contents.begin(), contents.end(), final_contents),
            contents.end());
  EXPECT_EQ(Entries(), std::set<std::string>{"shared"});
}

TEST_F(FileUtilTest, WriteRemovesTempFilesOfDeadWritersOnly) {
  // A process that has exited: its pid names a dead writer.
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ::waitpid(child, nullptr, 0);
  const std::string dead = "map.json.tmp." + std::to_string(child) + ".0";
  const std::string live = "map.json.tmp." + std::to_string(::getppid()) + ".3";
  const std::string mine = "map.json.tmp." + std::to_string(::getpid()) + ".7";
  const std::string other = "other.json.tmp." + std::to_string(child) + ".0";
  for (const std::string& name : {dead, live, mine, other}) {
    WriteRaw(Path(name), std::string(4096, 'x'));
  }
  ASSERT_TRUE(WriteFileAtomic(Path("map.json"), "{}").ok());
  EXPECT_EQ(Entries(), (std::set<std::string>{"map.json", live, mine, other}));
}

TEST(JsonTextTest, DepthLimitCountsBracketsOutsideStrings) {
  const std::string at_limit =
      std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  EXPECT_TRUE(CheckJsonDepth(at_limit).ok());
  const std::string deeper = "[" + at_limit + "]";
  const Status status = CheckJsonDepth(deeper);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "JSON nested deeper than the limit of 64 levels (at byte 64)");
  // Brackets inside strings, escaped quotes included, do not count.
  const std::string in_string =
      "{\"a\": \"\\\"" + std::string(1000, '[') + "\"}";
  EXPECT_TRUE(CheckJsonDepth(in_string).ok());
  EXPECT_FALSE(CheckJsonDepth(std::string(100000, '{')).ok());
}

TEST(JsonTextTest, StripsUtf8ByteOrderMark) {
  EXPECT_EQ(StripUtf8Bom("\xEF\xBB\xBF{}"), "{}");
  EXPECT_EQ(StripUtf8Bom("{}"), "{}");
  EXPECT_EQ(StripUtf8Bom("\xEF\xBB"), "\xEF\xBB");
}

}  // namespace
}  // namespace eplb
