#ifndef BASE_TEXT_H_
#define BASE_TEXT_H_

#include <string>

// Returns `word` in capitals.
std::string Shout(const std::string& word);

// Returns `count` copies of `piece`.
std::string Repeat(const std::string& piece, int count);

#endif  // BASE_TEXT_H_
