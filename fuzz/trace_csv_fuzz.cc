// Fuzzes the load-file readers through a file, as users hand them over:
// ReadTraceCsv, and ReadLoadFile (which tells a trace CSV, an SGLang dump
// and a PyTorch file apart by content). The input goes to an anonymous
// in-memory file (memfd), read by its /proc/self/fd path. Properties: no
// crash; an error is one line; a trace that parses writes back
// (WriteTraceCsv) to one that reads back the same.
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "eplb/io.h"
#include "fuzz_check.h"

namespace {

// An in-memory file holding `bytes`, closed when it goes.
class MemFile {
 public:
  explicit MemFile(std::string_view bytes) : fd_(memfd_create("eplb-fuzz", 0)) {
    eplb::fuzz::Check(fd_ >= 0, "memfd_create failed");
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = write(fd_, bytes.data() + done, bytes.size() - done);
      eplb::fuzz::Check(n > 0, "writing the memfd failed");
      done += static_cast<size_t>(n);
    }
  }
  ~MemFile() { close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const MemFile file(eplb::fuzz::AsText(data, size));
  eplb::StatusOr<eplb::LoadTrace> trace = eplb::ReadTraceCsv(file.path());
  if (!trace.ok()) {
    eplb::fuzz::CheckOneLine(trace.status().message());
  } else {
    // WriteTraceCsv writes atomically beside its path: a temporary
    // directory, not the memfd.
    char dir[] = "/tmp/eplb-fuzz-XXXXXX";
    eplb::fuzz::Check(mkdtemp(dir) != nullptr, "mkdtemp failed");
    const std::string out = std::string(dir) + "/trace.csv";
    eplb::Status written = eplb::WriteTraceCsv(out, *trace);
    if (written.ok()) {
      eplb::StatusOr<eplb::LoadTrace> back =
          eplb::ReadTraceCsv(out, {trace->num_layers(), trace->num_experts()});
      eplb::fuzz::Check(back.ok(), "a trace written does not read back");
      bool same = back->num_layers() == trace->num_layers() &&
                  back->num_experts() == trace->num_experts() &&
                  back->num_steps() <= trace->num_steps();
      // Trailing all-zero steps have no rows to write; what is written is
      // the same cell for cell.
      for (int s = 0; same && s < back->num_steps(); ++s) {
        for (int l = 0; same && l < back->num_layers(); ++l) {
          for (int e = 0; same && e < back->num_experts(); ++e) {
            same = back->at(s, l, e) == std::round(trace->at(s, l, e));
          }
        }
      }
      eplb::fuzz::Check(same, "a trace read does not read back the same");
    } else {
      eplb::fuzz::CheckOneLine(written.message());
    }
    std::remove(out.c_str());
    rmdir(dir);
  }
  eplb::StatusOr<eplb::LoadTrace> load = eplb::ReadLoadFile(file.path());
  if (!load.ok()) eplb::fuzz::CheckOneLine(load.status().message());
  return 0;
}
