#include "error.h"

#include <cstring>

#include "api/export.h"

namespace fspmm {
namespace {
thread_local std::string t_last_error;
}

fspmm_status_t fail(fspmm_status_t status, const std::string& message) {
    try {
        t_last_error = message;
    } catch (...) {
        // Out of memory while recording the message: keep the status, drop the text.
    }
    return status;
}

void clear_error() { t_last_error.clear(); }

const char* last_error_cstr() { return t_last_error.c_str(); }

}  // namespace fspmm

extern "C" FSPMM_API const char* fspmm_last_error(void) { return fspmm::last_error_cstr(); }

extern "C" FSPMM_API const char* fspmm_status_string(fspmm_status_t s) {
    int value;  // switch on the raw value: a caller may pass a number outside the enum
    std::memcpy(&value, &s, sizeof value);
    switch (value) {
        case FSPMM_OK: return "FSPMM_OK";
        case FSPMM_ERR_INVALID_ARGUMENT: return "FSPMM_ERR_INVALID_ARGUMENT";
        case FSPMM_ERR_NOT_SUPPORTED: return "FSPMM_ERR_NOT_SUPPORTED";
        case FSPMM_ERR_CORRUPT_BUFFER: return "FSPMM_ERR_CORRUPT_BUFFER";
        case FSPMM_ERR_CUDA: return "FSPMM_ERR_CUDA";
        case FSPMM_ERR_NO_DEVICE: return "FSPMM_ERR_NO_DEVICE";
        case FSPMM_ERR_OUT_OF_MEMORY: return "FSPMM_ERR_OUT_OF_MEMORY";
        case FSPMM_ERR_INTERNAL: return "FSPMM_ERR_INTERNAL";
    }
    return "FSPMM_ERR_UNKNOWN_STATUS";
}
