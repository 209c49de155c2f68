// eplb: the command line over the library. A thin main: parse flags, call the
// library, print. Errors are one line on stderr and a non-zero exit; this is
// the one place exceptions (from CLI11 or the standard library) become exit
// codes.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "cli_util.h"

namespace {

// Parses and runs the subcommand; its result comes back through
// `exit_code`.
int Parse(CLI::App& app, int argc, char** argv, const int& exit_code) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version.
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "eplb: %s (see --help)\n", e.what());
    return eplb::cli::kExitUsage;
  }
  return exit_code;
}

int Run(int argc, char** argv) {
  CLI::App app{"eplb: expert-parallel load balancing for MoE inference"};
  app.set_version_flag("--version", "eplb 0.1.0");
  app.require_subcommand(1);
  int exit_code = 0;
  eplb::cli::AddReplayCommand(&app, &exit_code);
  eplb::cli::AddInspectCommand(&app, &exit_code);
  eplb::cli::AddValidateMapCommand(&app, &exit_code);
  eplb::cli::AddConvertCommand(&app, &exit_code);
  eplb::cli::AddPlanCommand(&app, &exit_code);
  eplb::cli::AddModelsCommand(&app, &exit_code);
  // A first word that is not a command (or --help, --version) is named as
  // such; CLI11 would say only that a subcommand is required.
  if (argc > 1) {
    const std::string word = argv[1];
    const bool flag = word.starts_with('-');
    bool known = word == "-h" || word == "--help" || word == "--version";
    std::string valid;
    for (const CLI::App* sub : app.get_subcommands({})) {
      known = known || sub->get_name() == word;
      valid += (valid.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::fprintf(stderr, "eplb: unknown %s '%s' (commands: %s; see --help)\n",
                   flag ? "flag before the command" : "command",
                   word.substr(0, 40).c_str(), valid.c_str());
      return eplb::cli::kExitUsage;
    }
  }
  return Parse(app, argc, argv, exit_code);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr,
                 "eplb: out of memory: the input's shape is too large for this "
                 "machine (see the limits in docs/formats.md)\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "eplb: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "eplb: unknown error\n");
  }
  return eplb::cli::kExitFailure;
}
