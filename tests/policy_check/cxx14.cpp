// A translation unit compiled as C++14 (as torch 1.13's extension tooling does): the headers say
// "C++17 or later" in one line and stop (detail/language.hpp).
#include <protomem/memory.hpp>
