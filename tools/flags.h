// A small command-line flag parser: --name VALUE or --name=VALUE, booleans as --name. Unknown
// flags and bad values are errors that name the flag.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/status.h"

namespace headwise::tools {

StatusOr<int64_t> ParseInt(const std::string& s);
StatusOr<double> ParseFloat(const std::string& s);
// `headwise CMD MODEL [flags]`: removes and returns args[1] when it is not a flag ("" if none).
std::string TakeLeadingArgument(std::vector<char*>& args);

class FlagParser {
 public:
  // argv[0] is the command name and is skipped.
  FlagParser(int argc, char** argv);

  bool Has(const std::string& name) const;
  void String(const std::string& name, std::string& out);
  void StringList(const std::string& name, std::vector<std::string>& out);
  void Bool(const std::string& name, bool& out);
  void Int(const std::string& name, int& out);
  void Int64(const std::string& name, int64_t& out);
  void Float(const std::string& name, float& out);
  // Positional arguments, in order.
  const std::vector<std::string>& positional() const { return positional_; }
  // The first error met, or an unknown flag.
  Status Finish();

 private:
  // String() that says whether the flag was given.
  bool Take(const std::string& name, std::string& out);

  std::multimap<std::string, std::string> values_;  // flag -> value ("" for a bare flag)
  std::map<std::string, bool> bare_;                // flag given without a value
  std::vector<std::string> positional_;
  std::vector<std::string> known_;
  Status error_;
};

}  // namespace headwise::tools
