// Status and thread-local error message shared by every C entry point.
#pragma once
#include <exception>
#include <new>
#include <string>

#include "flashspmm.h"

namespace fspmm {

// Record a failure for fspmm_last_error() and return its status.
fspmm_status_t fail(fspmm_status_t status, const std::string& message);
// Clear the message at the start of a successful call path.
void clear_error();

// Thrown inside the library only; every C entry point catches it (see guard()).
struct Error {
    fspmm_status_t status;
    std::string message;
};

[[noreturn]] inline void raise(fspmm_status_t status, const std::string& message) { throw Error{status, message}; }

// Run `body` (returning fspmm_status_t) and turn any exception into a status + message.
template <typename F>
fspmm_status_t guard(const char* function, F&& body) noexcept {
    try {
        clear_error();
        return body();
    } catch (const Error& e) {
        return fail(e.status, std::string(function) + ": " + e.message);
    } catch (const std::bad_alloc&) {
        return fail(FSPMM_ERR_OUT_OF_MEMORY, std::string(function) + ": out of host memory");
    } catch (const std::exception& e) {
        return fail(FSPMM_ERR_INTERNAL, std::string(function) + ": internal error: " + e.what());
    } catch (...) {
        return fail(FSPMM_ERR_INTERNAL, std::string(function) + ": internal error (unknown exception)");
    }
}

}  // namespace fspmm

// Argument check inside a guard()ed body: raise INVALID_ARGUMENT with a message if `cond` is false.
#define FSPMM_REQUIRE(cond, msg)                                        \
    do {                                                                \
        if (!(cond)) ::fspmm::raise(FSPMM_ERR_INVALID_ARGUMENT, (msg)); \
    } while (0)
