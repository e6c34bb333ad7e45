// Entry points of the `headwise` subcommands. Each takes argv starting at the command name and
// returns the process exit code: 0 success, 2 bad input (one line on stderr), 1 other failure.
#pragma once

namespace headwise::tools {

int RunGenerate(int argc, char** argv);
int RunServe(int argc, char** argv);
int RunProfileHeads(int argc, char** argv);
int RunEval(int argc, char** argv);

}  // namespace headwise::tools
