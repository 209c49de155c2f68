// What the fuzz targets share: a property that must hold, or the run stops
// with the input that broke it (libFuzzer keeps it as a crash file).
#ifndef EPLB_FUZZ_FUZZ_CHECK_H_
#define EPLB_FUZZ_FUZZ_CHECK_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace eplb::fuzz {

inline std::string_view AsText(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Stops the run (abort: libFuzzer and the regression runner both report
// it) when `ok` is false.
inline void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz property broken: %s\n", what);
    std::abort();
  }
}

// An error message must be one line: errors reach users as one line.
inline void CheckOneLine(std::string_view message) {
  Check(!message.empty(), "an error without a message");
  Check(message.find('\n') == std::string_view::npos,
        "an error message of more than one line");
}

}  // namespace eplb::fuzz

#endif  // EPLB_FUZZ_FUZZ_CHECK_H_
