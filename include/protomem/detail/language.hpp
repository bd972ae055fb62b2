// protomem is C++17: say so in one line, and stop there, when a translation unit is compiled as an
// older language (e.g. by an extension toolchain that defaults to C++14), rather than let the
// compiler report a wall of template errors. A missing include is fatal in GCC, Clang and MSVC.
#pragma once

#if (defined(_MSVC_LANG) ? _MSVC_LANG : __cplusplus) < 201703L
#error "protomem needs C++17 or later: compile with -std=c++17 (or /std:c++17)"
#include <protomem_needs_cxx17_or_later>
#endif
