#ifndef BASE_NUMBERS_H_
#define BASE_NUMBERS_H_

#include <string>
#include <vector>

// Returns the sum of `values`.
long Sum(const std::vector<long>& values);

// Returns "a + b + ... = sum".
std::string SumLine(const std::vector<long>& values);

#endif  // BASE_NUMBERS_H_
