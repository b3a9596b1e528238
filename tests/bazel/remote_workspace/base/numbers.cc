#include "base/numbers.h"

#include "base/text.h"

long Sum(const std::vector<long>& values) {
  long total = 0;
  for (long v : values) total += v;
  return total;
}

std::string SumLine(const std::vector<long>& values) {
  std::string line;
  for (size_t i = 0; i < values.size(); ++i) {
    line += (i ? " + " : "") + std::to_string(values[i]);
  }
  return line + " = " + std::to_string(Sum(values)) + Repeat("!", values.size() > 2 ? 1 : 0);
}
