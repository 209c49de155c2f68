// Tests of the trace CSV reader and writer (shapes, line endings, lines split
// across read chunks, every error with its line and column, the shipped
// DeepSeek-V2-Lite trace) and of ReadLoadFile's format sniffing.
#include <gtest/gtest.h>

#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "eplb/io.h"
#include "testing/scratch_dir.h"

namespace eplb {
namespace {

namespace fs = std::filesystem;

constexpr char kPuffin[] =
    EPLB_SOURCE_DIR "/data/dsv2lite-puffin/prefill_by_prompt.csv";
constexpr char kSglang[] =
    EPLB_SOURCE_DIR "/data/dsv3-sglang/prefill_in512.json";
constexpr size_t kChunkBytes = size_t{1} << 20;  // The reader's chunk size.

class TempDirTest : public testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& contents) {
    return scratch_.Write(name, contents);
  }

  testing_util::ScratchDir scratch_{"trace_csv"};
  const fs::path dir_ = scratch_.path();
};

using TraceCsvTest = TempDirTest;
using LoadFileTest = TempDirTest;

TEST_F(TraceCsvTest, ReadsSmallTrace) {
  const std::string path =
      Write("t.csv", "step,layer,expert,count\n0,0,3,1\n0,1,0,2\n2,0,1,7\n");
  const StatusOr<LoadTrace> trace = ReadTraceCsv(path);
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(trace->num_steps(), 3);
  EXPECT_EQ(trace->num_layers(), 2);
  EXPECT_EQ(trace->num_experts(), 4);
  EXPECT_EQ(trace->at(0, 0, 3), 1.0);
  EXPECT_EQ(trace->at(0, 1, 0), 2.0);
  EXPECT_EQ(trace->at(2, 0, 1), 7.0);
  const auto& data = trace->data();
  EXPECT_EQ(std::accumulate(data.begin(), data.end(), 0.0), 10.0);
}

TEST_F(TraceCsvTest, OptionsSetTheShape) {
  const std::string path = Write("t.csv", "step,layer,expert,count\n0,1,2,5\n");
  const StatusOr<LoadTrace> trace =
      ReadTraceCsv(path, {.num_layers = 4, .num_experts = 8});
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(trace->num_layers(), 4);
  EXPECT_EQ(trace->num_experts(), 8);
  EXPECT_EQ(trace->at(0, 1, 2), 5.0);
}

TEST_F(TraceCsvTest, ToleratesCrlfMissingFinalNewlineAndTrailingBlankLines) {
  const std::vector<std::string> variants = {
      "step,layer,expert,count\r\n0,0,1,3\r\n1,0,0,4\r\n",
      "step,layer,expert,count\n0,0,1,3\n1,0,0,4",
      "step,layer,expert,count\r\n0,0,1,3\r\n1,0,0,4",
      "step,layer,expert,count\n0,0,1,3\n1,0,0,4\n\n\n",
      "step,layer,expert,count\r\n0,0,1,3\r\n1,0,0,4\r\n\r\n",
      "\xEF\xBB\xBFstep,layer,expert,count\n0,0,1,3\n1,0,0,4\n",
  };
  for (size_t i = 0; i < variants.size(); ++i) {
    SCOPED_TRACE(i);
    const std::string name = std::to_string(i) + ".csv";
    const StatusOr<LoadTrace> trace = ReadTraceCsv(Write(name, variants[i]));
    ASSERT_TRUE(trace.ok()) << trace.status().ToString();
    EXPECT_EQ(trace->data(), (std::vector<double>{0, 3, 4, 0}));
  }
}

// A multi-chunk file whose lines straddle chunk boundaries at every offset
// parses to the trace it was written from.
// Counts (and ids) stored as floats by other tools ("3.0") read as whole
// numbers; a real fraction is still an error (RejectsBadFiles...).
TEST_F(TraceCsvTest, ReadsWholeNumbersWrittenWithAZeroFraction) {
  const std::string path = Write(
      "floats.csv", "step,layer,expert,count\n0,0,1,3.0\n0.0,0,2,1.000\n");
  const StatusOr<LoadTrace> trace = ReadTraceCsv(path);
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(trace->num_steps(), 1);
  EXPECT_EQ(trace->num_experts(), 3);
  EXPECT_EQ(trace->at(0, 0, 1), 3.0);
  EXPECT_EQ(trace->at(0, 0, 2), 1.0);
}

TEST_F(TraceCsvTest, ReadsLinesSplitAcrossChunks) {
  constexpr int kSteps = 300, kLayers = 12, kExperts = 64;
  LoadTrace expected(kSteps, kLayers, kExperts);
  std::string csv = "step,layer,expert,count\r\n";
  uint32_t state = 12345;
  for (int s = 0; s < kSteps; ++s) {
    for (int l = 0; l < kLayers; ++l) {
      for (int e = 0; e < kExperts; ++e) {
        state = state * 1664525u + 1013904223u;
        const uint32_t count = (state >> 8) % 5000;
        if (count % 3 == 0) continue;  // Missing cells are zero.
        expected.at(s, l, e) = count;
        csv += std::to_string(s) + "," + std::to_string(l) + "," +
               std::to_string(e) + "," + std::to_string(count) + "\r\n";
      }
    }
  }
  ASSERT_GT(csv.size(), 2 * kChunkBytes);
  const StatusOr<LoadTrace> trace = ReadTraceCsv(Write("big.csv", csv));
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(*trace, expected);
}

// The "\r\n" of one line split between two chunks, and a line ending exactly
// at a chunk's end.
TEST_F(TraceCsvTest, ReadsCrLfSplitAtChunkBoundary) {
  for (const size_t end_of_line : {kChunkBytes - 1, kChunkBytes}) {
    SCOPED_TRACE(end_of_line);
    std::string csv = "step,layer,expert,count\r\n";
    int step = 0;
    while (csv.size() + 40 < end_of_line) {
      csv += std::to_string(step++) + ",0,0,1\r\n";
    }
    // Pad the count with leading zeros so the '\r' is at end_of_line - 1.
    const std::string prefix = std::to_string(step) + ",0,0,";
    const size_t zeros = end_of_line - 1 - csv.size() - prefix.size() - 1;
    csv += prefix;
    csv.append(zeros, '0');
    csv += "7\r\n";
    ASSERT_EQ(csv[end_of_line - 1], '\r');
    csv += std::to_string(step + 1) + ",0,0,9\r\n";
    const StatusOr<LoadTrace> trace = ReadTraceCsv(Write("crlf.csv", csv));
    ASSERT_TRUE(trace.ok()) << trace.status().ToString();
    ASSERT_EQ(trace->num_steps(), step + 2);
    EXPECT_EQ(trace->at(step, 0, 0), 7.0);
    EXPECT_EQ(trace->at(step + 1, 0, 0), 9.0);
  }
}

// Rows padded past 18 digits skip the fast row parser; both paths agree.
TEST_F(TraceCsvTest, CheckedAndFastPathsAgree) {
  const std::string zeros(20, '0');
  std::string plain = "step,layer,expert,count\n";
  std::string padded = plain;
  for (int s = 0; s < 50; ++s) {
    for (int e = 0; e < 8; e += 1 + s % 3) {
      const std::string count = std::to_string(s * 31 + e);
      plain += std::to_string(s) + ",1," + std::to_string(e) + "," + count;
      plain += '\n';
      padded += zeros + std::to_string(s) + ",1," + zeros + std::to_string(e);
      padded += "," + zeros + count + '\n';
    }
  }
  const StatusOr<LoadTrace> fast = ReadTraceCsv(Write("plain.csv", plain));
  const StatusOr<LoadTrace> checked = ReadTraceCsv(Write("padded.csv", padded));
  ASSERT_TRUE(fast.ok()) << fast.status().ToString();
  ASSERT_TRUE(checked.ok()) << checked.status().ToString();
  EXPECT_EQ(*checked, *fast);
  EXPECT_EQ(fast->num_layers(), 2);
}

// The shipped DeepSeek-V2-Lite trace: 1000 prompts x 26 layers x 64
// experts, top-6 routing of 97,858 tokens: every layer of a prompt sees the
// same token count.
TEST_F(TraceCsvTest, ReadsShippedPuffinTrace) {
  const StatusOr<LoadTrace> trace = ReadTraceCsv(kPuffin);
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(trace->num_steps(), 1000);
  EXPECT_EQ(trace->num_layers(), 26);
  EXPECT_EQ(trace->num_experts(), 64);
  const LoadMatrix total = trace->Aggregate();
  for (int l = 0; l < 26; ++l) {
    const auto row = total.row(l);
    EXPECT_EQ(std::accumulate(row.begin(), row.end(), 0.0), 97858.0 * 6)
        << "layer " << l;
  }
  for (int s = 0; s < 1000; s += 111) {
    const auto first = trace->row(s, 0);
    const double tokens = std::accumulate(first.begin(), first.end(), 0.0);
    const auto last = trace->row(s, 25);
    EXPECT_EQ(std::accumulate(last.begin(), last.end(), 0.0), tokens);
  }
}

TEST_F(TraceCsvTest, WritesNonZeroCellsInOrderRounded) {
  LoadTrace trace(2, 2, 3);
  trace.at(0, 1, 2) = 2.4;
  trace.at(0, 0, 1) = 5;
  trace.at(1, 1, 0) = 0.4;  // Rounds to zero: no row.
  trace.at(1, 0, 0) = 2.5;
  const std::string path = (dir_ / "out.csv").string();
  ASSERT_TRUE(WriteTraceCsv(path, trace).ok());
  // The last cell (1, 1, 2) is written although zero: the shape reads back.
  EXPECT_EQ(*ReadFileToString(path),
            "step,layer,expert,count\n0,0,1,5\n0,1,2,2\n1,0,0,3\n1,1,2,0\n");
  StatusOr<LoadTrace> back = ReadTraceCsv(path);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->num_steps(), 2);
  EXPECT_EQ(back->num_layers(), 2);
  EXPECT_EQ(back->num_experts(), 3);
}

TEST_F(TraceCsvTest, AnAllZeroTraceReadsBackWhole) {
  // Found by the trace_csv fuzz target: a trace of zero counts wrote a bare
  // header, which does not read back.
  const LoadTrace trace(3, 2, 4);
  const std::string path = (dir_ / "zeros.csv").string();
  ASSERT_TRUE(WriteTraceCsv(path, trace).ok());
  StatusOr<LoadTrace> back = ReadTraceCsv(path);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, trace);
}

TEST_F(TraceCsvTest, RoundTripsIntegerTrace) {
  LoadTrace trace(4, 3, 5);
  for (int s = 0; s < 4; ++s) {
    for (int l = 0; l < 3; ++l) {
      for (int e = 0; e < 5; ++e) trace.at(s, l, e) = (s * 7 + l * 3 + e) % 4;
    }
  }
  const std::string path = (dir_ / "rt.csv").string();
  ASSERT_TRUE(WriteTraceCsv(path, trace).ok());
  const StatusOr<LoadTrace> read =
      ReadTraceCsv(path, {.num_layers = 3, .num_experts = 5});
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(*read, trace);
}

TEST_F(TraceCsvTest, WriteRejectsNegativeCountAndWritesNothing) {
  LoadTrace trace(1, 2, 2);
  trace.at(0, 1, 0) = -1;
  const std::string path = (dir_ / "neg.csv").string();
  const Status status = WriteTraceCsv(path, trace);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find(path + ": step 0, layer 1, expert 0: count"),
            std::string::npos)
      << status.message();
  EXPECT_FALSE(fs::exists(path));
}

struct BadCsv {
  const char* name;
  std::string contents;
  TraceCsvOptions options;
  std::string want;  // The message after "<path>: ".
};

std::vector<BadCsv> BadCsvCases() {
  const std::string h = "step,layer,expert,count\n";
  return {
      {"EmptyFile", "", {}, "file is empty"},
      {"HeaderOnly", h, {}, "no rows after the header"},
      {"HeaderOnlyWithBlankLines",
       h + "\n\r\n",
       {},
       "no rows after the header"},
      {"ShortHeader",
       "step,layer,expert\n0,0,0\n",
       {},
       "line 1: header is \"step,layer,expert\", expected "
       "\"step,layer,expert,count\""},
      {"NoHeader",
       "0,0,1,2\n",
       {},
       "line 1: header is \"0,0,1,2\", expected \"step,layer,expert,count\""},
      {"JsonContent",
       "{\"logical_count\": [[1, 2]]}",
       {},
       "line 1: header is \"{\"logical_count\": [[1, 2]]}\", expected "
       "\"step,layer,expert,count\""},
      {"TooFewColumns",
       h + "0,0,1\n",
       {},
       "line 2: 3 columns, expected 4 (step,layer,expert,count)"},
      {"TooManyColumns",
       h + "0,0,1,2\n0,0,2,3,4\n",
       {},
       "line 3: 5 columns, expected 4 (step,layer,expert,count)"},
      {"NotANumber",
       h + "0,0,abc,1\n",
       {},
       "line 2, column expert: \"abc\" is not a non-negative integer"},
      {"NegativeCount",
       h + "0,0,1,-3\n",
       {},
       "line 2, column count: \"-3\" is not a non-negative integer"},
      {"FloatCount",
       h + "0,0,1,2.5\n",
       {},
       "line 2, column count: \"2.5\" is not a non-negative integer"},
      {"FractionAfterZeros",
       h + "0,0,1,2.001\n",
       {},
       "line 2, column count: \"2.001\" is not a non-negative integer"},
      {"BareDot",
       h + "0,0,1,2.\n",
       {},
       "line 2, column count: \"2.\" is not a non-negative integer"},
      {"DotWithoutDigits",
       h + "0,0,1,.0\n",
       {},
       "line 2, column count: \".0\" is not a non-negative integer"},
      {"EmptyCell",
       h + "0,,1,2\n",
       {},
       "line 2, column layer: \"\" is not a non-negative integer"},
      {"LeadingSpace",
       h + " 0,0,1,2\n",
       {},
       "line 2, column step: \" 0\" is not a non-negative integer"},
      {"HugeStep",
       h + "99999999999,0,1,2\n",
       {},
       "line 2, column step: 99999999999 exceeds the limit of 1048576 steps"},
      {"HugeCount",
       h + "0,0,1,99999999999999999999999\n",
       {},
       "line 2, column count: \"99999999999999999999999\" exceeds the limit "
       "of 9007199254740992"},
      {"StepsDescending",
       h + "5,0,0,1\n5,0,1,1\n3,0,0,1\n",
       {},
       "line 4: step 3 after step 5 (steps must be ascending)"},
      {"DuplicateCell",
       h + "0,1,2,1\n0,0,0,1\n0,1,2,4\n",
       {},
       "line 4: step 0, layer 1, expert 2 appears twice (first on line 2)"},
      {"LayerOutOfRange",
       h + "0,1,0,1\n0,26,0,1\n",
       {.num_layers = 26},
       "line 3, column layer: 26 out of range [0, 26) (num_layers)"},
      {"ExpertOutOfRange",
       h + "0,0,64,1\n",
       {.num_experts = 64},
       "line 2, column expert: 64 out of range [0, 64) (num_experts)"},
      {"BlankLineInMiddle",
       h + "0,0,0,1\n\n1,0,0,1\n",
       {},
       "line 3: empty line (only trailing empty lines are allowed)"},
      {"TooLargeTrace",
       h + "0,4000,60000,1\n1048575,0,0,1\n",
       {},
       "a trace of 1048576 steps x 4001 layers x 60001 experts = "
       "251725349912576 cells "
       "exceeds the limit of 33554432 cells"},
      {"LineLongerThanChunk",
       h + std::string(kChunkBytes + 10, '1'),
       {},
       "line 2: longer than 1048576 bytes"},
      {"BinaryWithoutNewline",
       std::string(kChunkBytes * 2, '\x01'),
       {},
       "line 1: header is \"????????????????????????????????????????...\", "
       "expected \"step,layer,expert,count\""},
  };
}

TEST_F(TraceCsvTest, RejectsBadFilesNamingLineAndColumn) {
  for (const BadCsv& c : BadCsvCases()) {
    SCOPED_TRACE(c.name);
    const std::string path = Write(std::string(c.name) + ".csv", c.contents);
    const StatusOr<LoadTrace> trace = ReadTraceCsv(path, c.options);
    ASSERT_FALSE(trace.ok());
    EXPECT_EQ(trace.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(trace.status().message(), path + ": " + c.want);
  }
}

TEST_F(TraceCsvTest, MissingFileIsNotFound) {
  const std::string path = (dir_ / "none.csv").string();
  const StatusOr<LoadTrace> trace = ReadTraceCsv(path);
  ASSERT_FALSE(trace.ok());
  EXPECT_EQ(trace.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(trace.status().message(), path + ": no such file");
}

TEST_F(TraceCsvTest, DirectoryIsInvalidArgument) {
  const StatusOr<LoadTrace> trace = ReadTraceCsv(dir_.string());
  ASSERT_FALSE(trace.ok());
  EXPECT_EQ(trace.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(trace.status().message(), dir_.string() + ": is a directory");
}

TEST_F(LoadFileTest, SniffsCsvAndSglangJson) {
  const StatusOr<LoadTrace> csv =
      ReadLoadFile(Write("a.txt", "step,layer,expert,count\n0,0,1,3\n"));
  ASSERT_TRUE(csv.ok()) << csv.status().ToString();
  EXPECT_EQ(csv->at(0, 0, 1), 3.0);
  const StatusOr<LoadTrace> json =
      ReadLoadFile(Write("b.dat", " \n {\"logical_count\": [[0, 0], [1, 2]]}"));
  ASSERT_TRUE(json.ok()) << json.status().ToString();
  EXPECT_EQ(json->data(), (std::vector<double>{1, 2}));
  const StatusOr<LoadTrace> real = ReadLoadFile(kSglang);
  ASSERT_TRUE(real.ok()) << real.status().ToString();
  EXPECT_EQ(real->num_layers(), 58);
}

TEST_F(LoadFileTest, ReportsErrorsOfTheSniffedFormat) {
  const std::string other = Write("x.yaml", "layers: 3\n");
  const StatusOr<LoadTrace> yaml = ReadLoadFile(other);
  ASSERT_FALSE(yaml.ok());
  EXPECT_EQ(yaml.status().message(),
            other +
                ": line 1: header is \"layers: 3\", expected "
                "\"step,layer,expert,count\"");
  const std::string bad_json = Write("y.json", "{\"logical_count\": 3}");
  const StatusOr<LoadTrace> json = ReadLoadFile(bad_json);
  ASSERT_FALSE(json.ok());
  EXPECT_EQ(json.status().message(),
            bad_json + ": logical_count is 3, not an array");
  const std::string blank = Write("z.csv", " \n\n");
  const StatusOr<LoadTrace> empty = ReadLoadFile(blank);
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().message(),
            blank + ": file is empty (or only blanks)");
  const StatusOr<LoadTrace> missing =
      ReadLoadFile((dir_ / "missing.csv").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace eplb
