// Symbol export for the public C entry points (the library is built with hidden visibility).
#pragma once

#if defined(_WIN32)
#define FSPMM_API __declspec(dllexport)
#else
#define FSPMM_API __attribute__((visibility("default")))
#endif
