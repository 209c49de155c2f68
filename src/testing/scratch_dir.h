// A scratch directory for one test, shared by the tests that write files:
// <temp>/eplb_<prefix>_<suite>.<test>_<pid>, emptied when created and removed
// with its contents when destroyed. Test-only; not part of the library.
#ifndef EPLB_SRC_TESTING_SCRATCH_DIR_H_
#define EPLB_SRC_TESTING_SCRATCH_DIR_H_

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

namespace eplb::testing_util {

class ScratchDir {
 public:
  // Call from a test or a fixture's constructor (the test's name is used).
  explicit ScratchDir(std::string_view prefix) {
    const ::testing::TestInfo* info =
        ::testing::UnitTest::GetInstance()->current_test_info();
    std::string test = info == nullptr ? std::string("no_test")
                                       : std::string(info->test_suite_name()) +
                                             "." + info->name();
    std::replace(test.begin(), test.end(), '/', '_');  // Parameterized.
    path_ = std::filesystem::temp_directory_path() /
            ("eplb_" + std::string(prefix) + "_" + test + "_" +
             std::to_string(::getpid()));
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // The path of `name` in the directory (not created).
  std::string File(std::string_view name) const {
    return (path_ / name).string();
  }
  // Writes `contents` (bytes as given) to `name`; returns its path.
  std::string Write(std::string_view name, std::string_view contents) const {
    std::string file = File(name);
    std::ofstream(file, std::ios::binary)
        .write(contents.data(), static_cast<std::streamsize>(contents.size()));
    return file;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace eplb::testing_util

#endif  // EPLB_SRC_TESTING_SCRATCH_DIR_H_
