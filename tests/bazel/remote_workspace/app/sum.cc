#include <cstdlib>
#include <iostream>
#include <vector>

#include "base/numbers.h"

int main(int argc, char** argv) {
  std::vector<long> values;
  for (int i = 1; i < argc; ++i) values.push_back(std::strtol(argv[i], nullptr, 10));
  std::cout << SumLine(values) << "\n";
  return 0;
}
