// Runs the eplb command line for the CLI tests: its exit code (128 + the
// signal when one killed it) and what it printed. Test-only; not part of the
// library.
#ifndef EPLB_SRC_TESTING_CLI_RUN_H_
#define EPLB_SRC_TESTING_CLI_RUN_H_

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace eplb::testing_util {

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

inline std::string Slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs `cli <args>` (args are shell words; quote as needed), stdout and
// stderr captured in files of `dir`, stdin empty. `env`: assignments before
// the command, e.g. "DYNAMIC_EPLB=true ".
inline CliResult RunCli(const std::string& cli, const std::string& args,
                        const std::filesystem::path& dir,
                        const std::string& env = "") {
  const std::filesystem::path out = dir / "stdout", err = dir / "stderr";
  const std::string cmd = env + cli + " " + args + " >" + out.string() + " 2>" +
                          err.string() + " </dev/null";
  const int raw = std::system(cmd.c_str());
  CliResult r;
  r.exit_code = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  r.out = Slurp(out);
  r.err = Slurp(err);
  return r;
}

}  // namespace eplb::testing_util

#endif  // EPLB_SRC_TESTING_CLI_RUN_H_
