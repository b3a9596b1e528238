#include <iostream>

#include "base/numbers.h"

int main() {
  if (Sum({1, 2, 3}) != 6 || SumLine({1, 2}) != "1 + 2 = 3") {
    std::cerr << "SumLine({1, 2}) = \"" << SumLine({1, 2}) << "\"\n";
    return 1;
  }
  return 0;
}
