// eplb: the command line over the library. A thin main: parse flags, call the
// library, print. Errors are one line on stderr and a non-zero exit.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli_util.h"

int main(int argc, char** argv) {
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
  } catch (const std::exception& e) {
    std::fprintf(stderr, "eplb: %s\n", e.what());
    return eplb::cli::kExitFailure;
  }
  return exit_code;
}
