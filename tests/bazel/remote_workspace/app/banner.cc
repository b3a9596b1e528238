#include <iostream>

#include "base/text.h"

int main(int argc, char** argv) {
  const std::string word = argc > 1 ? argv[1] : "lazybarn";
  std::cout << Repeat("=", 3) << " " << Shout(word) << " " << Repeat("=", 3) << "\n";
  return 0;
}
