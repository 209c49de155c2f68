// The trace CSV (docs/formats.md): "step,layer,expert,count", one row per
// non-zero cell, steps ascending. The reader streams the file in fixed-size
// chunks into a compact row list, then builds the dense
// [steps][layers][experts] trace. Well-formed rows take a fast digit loop;
// any other line takes the checked path (std::from_chars per cell), which
// names the line and column of the problem. Stateless: thread-safe.
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/io.h"
#include "eplb/limits.h"
#include "io/json_util.h"
#include "io/torch_file.h"

namespace eplb {
namespace {

constexpr std::string_view kHeader = "step,layer,expert,count";
constexpr std::string_view kBom = "\xEF\xBB\xBF";
constexpr size_t kChunkBytes = size_t{1} << 20;
constexpr int kNumColumns = 4;
constexpr const char* kColumnNames[kNumColumns] = {"step", "layer", "expert",
                                                   "count"};
// Ids above this leave the fast path (CheckRow applies the limits).
constexpr uint64_t kMaxId = std::numeric_limits<int32_t>::max() - 1;

struct Row {
  int32_t step;
  int32_t layer;
  int32_t expert;
  double count;
};

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// Shows at most 40 bytes of a bad cell or header, control and non-ASCII
// bytes as '?'.
std::string Quote(std::string_view text) {
  constexpr size_t kMaxChars = 40;
  std::string out = "\"";
  for (const char c : text.substr(0, kMaxChars)) {
    // Control bytes and bytes outside ASCII (maybe not UTF-8) as '?'.
    const bool control = static_cast<unsigned char>(c) < 0x20 ||
                         static_cast<unsigned char>(c) >= 0x7f;
    out += control ? '?' : c;
  }
  if (text.size() > kMaxChars) out += "...";
  return out + "\"";
}

// The fast path for a well-formed row "s,l,e,c\n" (or "\r\n") at `p`:
// stores the cells and returns the byte after the newline. Returns nullptr
// for anything else (a bad cell, an id above kMaxId, over 18 digits, or the
// buffer's end), which the checked path then parses and reports.
const char* ParseRowFast(const char* p, const char* end,
                         uint64_t (&cells)[kNumColumns]) {
  constexpr ptrdiff_t kMaxDigits = 18;  // Cannot overflow uint64_t.
  for (int c = 0; c < kNumColumns; ++c) {
    const char* const start = p;
    uint64_t value = 0;
    while (p < end && static_cast<unsigned char>(*p - '0') < 10) {
      value = value * 10 + static_cast<uint64_t>(*p - '0');
      ++p;
    }
    if (p == start || p - start > kMaxDigits || p == end) return nullptr;
    if (c + 1 < kNumColumns) {
      if (*p != ',' || value > kMaxId) return nullptr;
    } else {
      if (*p == '\r' && ++p == end) return nullptr;
      if (*p != '\n') return nullptr;
    }
    cells[c] = value;
    ++p;
  }
  return p;
}

class TraceCsvReader {
 public:
  TraceCsvReader(const std::string& path, const TraceCsvOptions& options)
      : path_(path), options_(options) {}

  StatusOr<LoadTrace> Read();

 private:
  Status Error(const std::string& message) const {
    return InvalidArgumentError(path_ + ": " + message);
  }
  Status LineError(int64_t line, const std::string& message) const {
    return Error("line " + std::to_string(line) + message);
  }
  // Opens the file and reserves rows for its size.
  StatusOr<FilePtr> Open();
  Status ReadChunks(std::FILE* file);
  // Parses the complete lines of [begin, end); returns the start of the
  // unfinished last line.
  StatusOr<const char*> ParseLines(const char* begin, const char* end);
  Status OnLine(std::string_view line);
  Status CheckHeader(std::string_view line) const;
  Status ParseRow(std::string_view line);
  Status ParseCell(std::string_view text, int column, uint64_t* value) const;
  Status CheckRow(const uint64_t (&cells)[kNumColumns]);
  StatusOr<LoadTrace> Build() const;
  Status DuplicateError(size_t index) const;

  const std::string& path_;
  const TraceCsvOptions options_;
  int64_t line_ = 0;              // Lines seen so far (1-based number of last).
  int64_t first_empty_line_ = 0;  // First empty line after the header.
  uint64_t bytes_ = 0;
  std::vector<Row> rows_;  // Row i is on line i + 2.
  int32_t max_layer_ = -1;
  int32_t max_expert_ = -1;
};

StatusOr<FilePtr> TraceCsvReader::Open() {
  FilePtr file(std::fopen(path_.c_str(), "rb"));
  if (file == nullptr) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return NotFoundError(path_ + ": no such file");
    }
    return Error(std::string("cannot open: ") + std::strerror(err));
  }
  struct stat info {};
  if (::fstat(::fileno(file.get()), &info) == 0 && S_ISDIR(info.st_mode)) {
    return Error("is a directory");
  }
  // Rows are at least 8 bytes ("0,0,0,1\n"); untouched capacity costs no
  // memory. Capped so a huge file cannot make the reservation fail.
  constexpr size_t kMaxReservedRows = size_t{1} << 24;
  rows_.reserve(
      std::min(static_cast<size_t>(info.st_size) / 8, kMaxReservedRows));
  return file;
}

StatusOr<LoadTrace> TraceCsvReader::Read() {
  EPLB_ASSIGN_OR_RETURN(const FilePtr file, Open());
  EPLB_RETURN_IF_ERROR(ReadChunks(file.get()));
  if (bytes_ == 0) return Error("file is empty");
  if (rows_.empty()) return Error("no rows after the header");
  return Build();
}

// Splits the file into lines across chunk boundaries; the last line may lack
// its newline.
Status TraceCsvReader::ReadChunks(std::FILE* file) {
  std::vector<char> buffer(kChunkBytes);
  size_t kept = 0;  // Bytes of an unfinished line at the buffer's start.
  for (;;) {
    const size_t want = buffer.size() - kept;
    const size_t got = std::fread(buffer.data() + kept, 1, want, file);
    if (got < want && std::ferror(file)) {
      return Error(std::string("read failed: ") + std::strerror(errno));
    }
    bytes_ += got;
    const char* const end = buffer.data() + kept + got;
    EPLB_ASSIGN_OR_RETURN(const char* begin, ParseLines(buffer.data(), end));
    kept = static_cast<size_t>(end - begin);
    if (got < want) {
      return kept > 0 ? OnLine({begin, kept}) : Status::Ok();
    }
    if (kept == buffer.size()) {
      if (line_ == 0) return CheckHeader({begin, kept});
      return LineError(
          line_ + 1, ": longer than " + std::to_string(kChunkBytes) + " bytes");
    }
    std::memmove(buffer.data(), begin, kept);
  }
}

StatusOr<const char*> TraceCsvReader::ParseLines(const char* begin,
                                                 const char* end) {
  uint64_t cells[kNumColumns];
  while (begin < end) {
    if (line_ > 0 && first_empty_line_ == 0) {
      if (const char* next = ParseRowFast(begin, end, cells)) {
        ++line_;
        EPLB_RETURN_IF_ERROR(CheckRow(cells));
        begin = next;
        continue;
      }
    }
    const void* newline = std::memchr(begin, '\n', end - begin);
    if (newline == nullptr) break;
    const char* stop = static_cast<const char*>(newline);
    EPLB_RETURN_IF_ERROR(OnLine({begin, static_cast<size_t>(stop - begin)}));
    begin = stop + 1;
  }
  return begin;
}

Status TraceCsvReader::OnLine(std::string_view line) {
  ++line_;
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line_ == 1) return CheckHeader(line);
  if (line.empty()) {
    if (first_empty_line_ == 0) first_empty_line_ = line_;
    return Status::Ok();
  }
  if (first_empty_line_ != 0) {
    return LineError(first_empty_line_,
                     ": empty line (only trailing empty lines are allowed)");
  }
  return ParseRow(line);
}

Status TraceCsvReader::CheckHeader(std::string_view line) const {
  if (line.starts_with(kBom)) line.remove_prefix(kBom.size());
  if (line == kHeader) return Status::Ok();
  return LineError(1, ": header is " + Quote(line) + ", expected \"" +
                          std::string(kHeader) + "\"");
}

Status TraceCsvReader::ParseRow(std::string_view line) {
  std::string_view fields[kNumColumns];
  int num_fields = 0;
  size_t pos = 0;
  for (;;) {
    const size_t comma = line.find(',', pos);
    if (num_fields < kNumColumns) {
      fields[num_fields] = line.substr(pos, comma - pos);
    }
    ++num_fields;
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  if (num_fields != kNumColumns) {
    return LineError(line_, ": " + std::to_string(num_fields) +
                                " columns, expected 4 (" +
                                std::string(kHeader) + ")");
  }
  uint64_t cells[kNumColumns];
  for (int c = 0; c < kNumColumns; ++c) {
    EPLB_RETURN_IF_ERROR(ParseCell(fields[c], c, &cells[c]));
  }
  return CheckRow(cells);
}

Status TraceCsvReader::ParseCell(std::string_view text, int column,
                                 uint64_t* value) const {
  const char* end = text.data() + text.size();
  // A whole number written with a zero fraction ("3.0", as tools that store
  // counts as floats write them) reads as that number.
  if (const size_t dot = text.find('.');
      dot != std::string_view::npos && dot > 0 && dot + 1 < text.size() &&
      text.find_first_not_of('0', dot + 1) == std::string_view::npos) {
    end = text.data() + dot;
  }
  const auto [ptr, ec] = std::from_chars(text.data(), end, *value);
  // Values in range are checked against the limits by CheckRow.
  if (ec == std::errc() && ptr == end && !text.empty()) return Status::Ok();
  if (ec == std::errc::result_out_of_range) {
    const uint64_t limit = column == 0   ? static_cast<uint64_t>(kMaxSteps)
                           : column == 1 ? static_cast<uint64_t>(kMaxLayers)
                           : column == 2 ? static_cast<uint64_t>(kMaxExperts)
                                         : kMaxCount;
    return LineError(line_, std::string(", column ") + kColumnNames[column] +
                                ": " + Quote(text) + " exceeds the limit of " +
                                std::to_string(limit));
  }
  return LineError(line_, std::string(", column ") + kColumnNames[column] +
                              ": " + Quote(text) +
                              " is not a non-negative integer");
}

// Order and range checks; then keeps the row.
Status TraceCsvReader::CheckRow(const uint64_t (&cells)[kNumColumns]) {
  // The limits of eplb/limits.h, before anything is sized by an id.
  const uint64_t id_limits[3] = {static_cast<uint64_t>(kMaxSteps),
                                 static_cast<uint64_t>(kMaxLayers),
                                 static_cast<uint64_t>(kMaxExperts)};
  const char* const id_units[3] = {"steps", "layers", "experts"};
  for (int c = 0; c < 3; ++c) {
    if (cells[c] >= id_limits[c]) {
      return LineError(line_,
                       std::string(", column ") + kColumnNames[c] + ": " +
                           std::to_string(cells[c]) + " exceeds the limit of " +
                           std::to_string(id_limits[c]) + " " + id_units[c]);
    }
  }
  if (cells[3] > kMaxCount) {
    return LineError(line_, ", column count: " + std::to_string(cells[3]) +
                                " exceeds the limit of " +
                                std::to_string(kMaxCount) +
                                " (2^53, the largest exact count)");
  }
  const Row row{static_cast<int32_t>(cells[0]), static_cast<int32_t>(cells[1]),
                static_cast<int32_t>(cells[2]), static_cast<double>(cells[3])};
  if (!rows_.empty() && row.step < rows_.back().step) {
    return LineError(line_, ": step " + std::to_string(row.step) +
                                " after step " +
                                std::to_string(rows_.back().step) +
                                " (steps must be ascending)");
  }
  const int limits[2] = {options_.num_layers, options_.num_experts};
  const char* const limit_names[2] = {"num_layers", "num_experts"};
  const int32_t ids[2] = {row.layer, row.expert};
  for (int i = 0; i < 2; ++i) {
    if (limits[i] > 0 && ids[i] >= limits[i]) {
      return LineError(
          line_, std::string(", column ") + kColumnNames[i + 1] + ": " +
                     std::to_string(ids[i]) + " out of range [0, " +
                     std::to_string(limits[i]) + ") (" + limit_names[i] + ")");
    }
  }
  max_layer_ = std::max(max_layer_, row.layer);
  max_expert_ = std::max(max_expert_, row.expert);
  rows_.push_back(row);
  return Status::Ok();
}

Status TraceCsvReader::DuplicateError(size_t index) const {
  const Row& row = rows_[index];
  size_t first = index;
  while (first > 0) {
    --first;
    const Row& other = rows_[first];
    if (other.step == row.step && other.layer == row.layer &&
        other.expert == row.expert) {
      break;
    }
  }
  return LineError(
      static_cast<int64_t>(index) + 2,
      ": step " + std::to_string(row.step) + ", layer " +
          std::to_string(row.layer) + ", expert " + std::to_string(row.expert) +
          " appears twice (first on line " + std::to_string(first + 2) + ")");
}

StatusOr<LoadTrace> TraceCsvReader::Build() const {
  const int num_steps = rows_.back().step + 1;
  const int num_layers =
      options_.num_layers > 0 ? options_.num_layers : max_layer_ + 1;
  const int num_experts =
      options_.num_experts > 0 ? options_.num_experts : max_expert_ + 1;
  const uint64_t cells = static_cast<uint64_t>(num_steps) *
                         static_cast<uint64_t>(num_layers) *
                         static_cast<uint64_t>(num_experts);
  if (cells > static_cast<uint64_t>(kMaxTraceCells)) {
    return Error("a trace of " + std::to_string(num_steps) + " steps x " +
                 std::to_string(num_layers) + " layers x " +
                 std::to_string(num_experts) + " experts = " +
                 std::to_string(cells) + " cells exceeds the limit of " +
                 std::to_string(kMaxTraceCells) + " cells");
  }
  LoadTrace trace(num_steps, num_layers, num_experts);
  std::vector<bool> seen(cells, false);
  for (size_t i = 0; i < rows_.size(); ++i) {
    const Row& row = rows_[i];
    const size_t cell =
        (static_cast<size_t>(row.step) * num_layers + row.layer) * num_experts +
        row.expert;
    if (seen[cell]) return DuplicateError(i);
    seen[cell] = true;
    trace.at(row.step, row.layer, row.expert) = row.count;
  }
  return trace;
}

// Appends one "s,l,e,count\n" row.
void AppendRow(std::string* out, int step, int layer, int expert,
               long long count) {
  internal::AppendInt(out, step);
  *out += ',';
  internal::AppendInt(out, layer);
  *out += ',';
  internal::AppendInt(out, expert);
  *out += ',';
  internal::AppendInt(out, count);
  *out += '\n';
}

}  // namespace

StatusOr<LoadTrace> ReadTraceCsv(const std::string& path,
                                 const TraceCsvOptions& options) {
  EPLB_RETURN_IF_ERROR(internal::RejectTorchFileAt(path, "logical_count"));
  return TraceCsvReader(path, options).Read();
}

Status WriteTraceCsv(const std::string& path, const LoadTrace& trace) {
  // The reader's limit: what is written reads back.
  const double max_count = static_cast<double>(kMaxCount);
  std::string out(kHeader);
  out += '\n';
  for (int s = 0; s < trace.num_steps(); ++s) {
    for (int l = 0; l < trace.num_layers(); ++l) {
      for (int e = 0; e < trace.num_experts(); ++e) {
        const double count = trace.at(s, l, e);
        if (!(count >= 0 && count <= max_count)) {
          char shown[32];
          std::snprintf(shown, sizeof shown, "%.6g", count);
          return InvalidArgumentError(
              path + ": step " + std::to_string(s) + ", layer " +
              std::to_string(l) + ", expert " + std::to_string(e) + ": count " +
              shown +
              " is not a finite number in [0, 2^53] (the trace CSV's limit)");
        }
        const long long rounded = std::llround(count);
        // The last cell is written even when zero: the reader takes the
        // shape from the largest ids, so the trace reads back whole.
        const bool last = s + 1 == trace.num_steps() &&
                          l + 1 == trace.num_layers() &&
                          e + 1 == trace.num_experts();
        if (rounded != 0 || last) AppendRow(&out, s, l, e, rounded);
      }
    }
  }
  return WriteFileAtomic(path, out);
}

}  // namespace eplb
