// eplb: the command line over the library. A thin main: parse flags, call the
// library, print. Errors are one line on stderr and a non-zero exit; this is
// the one place exceptions (from CLI11 or the standard library) become exit
// codes.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli_util.h"

namespace {

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

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "eplb: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "eplb: unknown error\n");
  }
  return eplb::cli::kExitFailure;
}
