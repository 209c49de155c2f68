// Whole-file reads and atomic writes (temp file in the same directory,
// fsync, rename; temp files a killed writer left are removed on the next
// write of the same file). Stateless apart from an atomic counter for temp
// names: thread-safe.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "eplb/io.h"
#include "eplb/limits.h"

namespace eplb {
namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

// Closes a descriptor on scope exit unless released.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  int Release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

// Checks what is at `path` before reading it.
Status CheckReadable(const std::string& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return NotFoundError(path + ": no such file");
    }
    return InvalidArgumentError(path + ": " + ErrnoText(err));
  }
  if (S_ISDIR(info.st_mode)) {
    return InvalidArgumentError(path + ": is a directory");
  }
  return Status::Ok();
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string TempPathFor(const std::string& path) {
  static std::atomic<unsigned long> counter{0};
  return path + ".tmp." + std::to_string(::getpid()) + "." +
         std::to_string(counter.fetch_add(1));
}

Status WriteAll(int fd, std::string_view contents) {
  while (!contents.empty()) {
    const ssize_t n = ::write(fd, contents.data(), contents.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return InvalidArgumentError(ErrnoText(errno));
    }
    contents.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

// Writes, syncs and closes the open temp file `fd`.
Status FillTemp(int fd, std::string_view contents) {
  FdCloser closer(fd);
  EPLB_RETURN_IF_ERROR(WriteAll(fd, contents));
  if (::fsync(fd) != 0) return InvalidArgumentError(ErrnoText(errno));
  if (::close(closer.Release()) != 0) {
    return InvalidArgumentError(ErrnoText(errno));
  }
  return Status::Ok();
}

// Removes the temp files a killed writer of `path` left next to it:
// "<name>.tmp.<pid>.<n>" whose process no longer runs. Live writers' files
// (this process's included) are left alone. Best effort: errors are
// ignored.
void RemoveStaleTemps(const std::string& path, const std::string& dir) {
  const size_t slash = path.rfind('/');
  const std::string prefix =
      (slash == std::string::npos ? path : path.substr(slash + 1)) + ".tmp.";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  const pid_t self = ::getpid();
  while (const dirent* entry = ::readdir(d)) {
    const std::string_view name = entry->d_name;
    if (!name.starts_with(prefix)) continue;
    const std::string_view rest = name.substr(prefix.size());
    long long pid = 0;
    const auto [ptr, ec] =
        std::from_chars(rest.data(), rest.data() + rest.size(), pid);
    if (ec != std::errc() || ptr == rest.data() + rest.size() || *ptr != '.' ||
        pid <= 0 || pid == self) {
      continue;
    }
    const std::string_view counter = rest.substr(ptr - rest.data() + 1);
    if (counter.empty() ||
        counter.find_first_not_of("0123456789") != std::string_view::npos) {
      continue;
    }
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    ::unlink((dir + "/" + std::string(name)).c_str());
  }
  ::closedir(d);
}

// Makes the rename durable; failures here do not undo the write.
void SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

std::string_view StripUtf8Bom(std::string_view text) {
  constexpr std::string_view kBom = "\xEF\xBB\xBF";
  if (text.starts_with(kBom)) text.remove_prefix(kBom.size());
  return text;
}

Status CheckJsonDepth(std::string_view text) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        return InvalidArgumentError("JSON nested deeper than the limit of " +
                                    std::to_string(kMaxJsonDepth) +
                                    " levels (at byte " + std::to_string(i) +
                                    ")");
      }
    } else if (c == ']' || c == '}') {
      if (depth > 0) --depth;
    }
  }
  return Status::Ok();
}

StatusOr<std::string> ReadFileToString(const std::string& path) {
  EPLB_RETURN_IF_ERROR(CheckReadable(path));
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return InvalidArgumentError(path + ": cannot open: " + ErrnoText(errno));
  }
  std::string contents;
  char buf[1 << 16];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), file)) > 0) {
    if (contents.size() + n > static_cast<size_t>(kMaxFileBytes)) {
      std::fclose(file);
      return InvalidArgumentError(path + ": larger than the limit of " +
                                  std::to_string(kMaxFileBytes) + " bytes");
    }
    contents.append(buf, n);
  }
  const bool failed = std::ferror(file) != 0;
  const int err = errno;
  std::fclose(file);
  if (failed) {
    return InvalidArgumentError(path + ": read failed: " + ErrnoText(err));
  }
  if (contents.empty()) return InvalidArgumentError(path + ": file is empty");
  return contents;
}

Status CheckWritablePath(const std::string& path) {
  if (path.empty() || path.back() == '/') {
    return InvalidArgumentError("\"" + path + "\": not a file path");
  }
  const std::string dir = DirectoryOf(path);
  struct stat info {};
  if (::stat(dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    return NotFoundError(path + ": directory " + dir + " does not exist");
  }
  if (::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode)) {
    return InvalidArgumentError(path + ": is a directory");
  }
  return Status::Ok();
}

Status WriteFileAtomic(const std::string& path, std::string_view contents) {
  EPLB_RETURN_IF_ERROR(CheckWritablePath(path));
  const std::string dir = DirectoryOf(path);
  RemoveStaleTemps(path, dir);
  const std::string temp = TempPathFor(path);
  const int fd =
      ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      return NotFoundError(path + ": directory " + dir + " does not exist");
    }
    return InvalidArgumentError(path + ": cannot create " + temp + ": " +
                                ErrnoText(err));
  }
  Status status = FillTemp(fd, contents);
  if (status.ok() && std::rename(temp.c_str(), path.c_str()) != 0) {
    status = InvalidArgumentError("rename failed: " + ErrnoText(errno));
  }
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return status.WithPrefix(path);
  }
  SyncDirectory(dir);
  return Status::Ok();
}

}  // namespace eplb
