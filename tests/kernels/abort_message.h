// Death tests for the CPU backend's checks: run a function in a child process and read what a
// failed HW_CHECK printed.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <functional>
#include <string>

namespace headwise::testing {

// What fn printed to stderr if it stopped the process with an abort (a failed HW_CHECK), run in a
// child process; "" if it returned. The backend it uses must have no worker threads
// (CreateCpuBackend(1)): the child has none.
inline std::string AbortMessage(const std::function<void()>& fn) {
  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGABRT, SIG_DFL);  // not Catch's handler: no test report from the child
    dup2(pipe_fds[1], STDERR_FILENO);
    close(pipe_fds[0]);
    fn();
    _exit(0);
  }
  close(pipe_fds[1]);
  std::string message;
  char buffer[256];
  for (ssize_t n; (n = read(pipe_fds[0], buffer, sizeof buffer)) > 0;) message.append(buffer, n);
  close(pipe_fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT ? message : "";
}

}  // namespace headwise::testing
