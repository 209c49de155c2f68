// Reads a load file by its content: an SGLang logical_count JSON when the
// first non-blank byte is '{', else a trace CSV (whose header check names
// what was expected, and which recognises a PyTorch file). Stateless:
// thread-safe.
#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "eplb/io.h"

namespace eplb {
namespace {

// The first non-blank byte of the file at `path`, or EOF when none.
StatusOr<int> FirstNonBlankByte(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return NotFoundError(path + ": no such file");
    }
    return InvalidArgumentError(path + ": cannot open: " + std::strerror(err));
  }
  struct stat info {};
  if (::fstat(::fileno(file), &info) == 0 && S_ISDIR(info.st_mode)) {
    std::fclose(file);
    return InvalidArgumentError(path + ": is a directory");
  }
  int c = EOF;
  // A UTF-8 byte order mark is not content.
  unsigned char head[3] = {0, 0, 0};
  const size_t got = std::fread(head, 1, sizeof head, file);
  if (got < 3 || head[0] != 0xEF || head[1] != 0xBB || head[2] != 0xBF) {
    std::rewind(file);
  }
  while ((c = std::fgetc(file)) != EOF && std::isspace(c)) {
  }
  std::fclose(file);
  return c;
}

}  // namespace

StatusOr<LoadTrace> ReadLoadFile(const std::string& path) {
  EPLB_ASSIGN_OR_RETURN(const int first, FirstNonBlankByte(path));
  if (first == EOF) {
    return InvalidArgumentError(path + ": file is empty (or only blanks)");
  }
  if (first == '{') return ReadSglangLogicalCount(path);
  return ReadTraceCsv(path);
}

}  // namespace eplb
