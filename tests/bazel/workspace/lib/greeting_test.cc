#include <iostream>

#include "lib/greeting.h"

int main() {
  const std::string got = Greeting("barn");
  if (got != "Hello, barn!") {
    std::cerr << "Greeting(\"barn\") = \"" << got << "\"\n";
    return 1;
  }
  return 0;
}
