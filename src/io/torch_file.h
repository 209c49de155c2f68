// Recognising a PyTorch file where JSON or CSV is expected (private to
// src/io). Stateless: thread-safe.
#ifndef EPLB_IO_TORCH_FILE_H_
#define EPLB_IO_TORCH_FILE_H_

#include <string>
#include <string_view>

#include "eplb/status.h"

namespace eplb::internal {

// Whether `head` (a file's first bytes) starts as torch.save writes: a zip
// archive ("PK\x03\x04") or a legacy pickle ("\x80" then protocol 2 to 5).
bool LooksLikeTorchFile(std::string_view head);

// Reads the first bytes of `path`; when they look like a PyTorch file, reads
// the whole file and returns RejectTorchFile's error. OK otherwise (also when
// the file cannot be read: the caller's own read reports that).
Status RejectTorchFileAt(const std::string& path,
                         std::string_view expected_key);

}  // namespace eplb::internal

#endif  // EPLB_IO_TORCH_FILE_H_
