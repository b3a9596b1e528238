#include <iostream>

#include "base/text.h"

int main() {
  if (Shout("barn") != "BARN" || Repeat("ab", 3) != "ababab") {
    std::cerr << "text functions are wrong\n";
    return 1;
  }
  return 0;
}
