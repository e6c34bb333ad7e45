// The `headwise` command line: one binary, one subcommand per job.
#include <cstdio>
#include <cstring>
#include <string>

#include "tools/commands.h"

namespace {

void PrintUsage() {
  std::fprintf(stderr,
               "usage: headwise <command> [options]\n"
               "commands:\n"
               "  generate   run one prompt through a model and print the completion\n"
               "  serve      serve a model over the OpenAI HTTP API\n"
               "  profile-heads  score attention heads (retrieval / RazorAttention) for a policy\n"
               "  eval       long-context quality of attention policies (RULER-style tasks)\n"
               "run 'headwise <command> --help' for a command's options\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    PrintUsage();
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  if (command == "generate") return headwise::tools::RunGenerate(argc - 1, argv + 1);
  if (command == "serve") return headwise::tools::RunServe(argc - 1, argv + 1);
  if (command == "profile-heads") return headwise::tools::RunProfileHeads(argc - 1, argv + 1);
  if (command == "eval") return headwise::tools::RunEval(argc - 1, argv + 1);
  std::fprintf(stderr, "headwise: error: unknown command '%s'\n", command.c_str());
  PrintUsage();
  return 2;
}
