#ifndef LIB_GREETING_H_
#define LIB_GREETING_H_

#include <string>

// Returns "Hello, <name>!".
std::string Greeting(const std::string& name);

#endif  // LIB_GREETING_H_
