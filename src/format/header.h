// Internal helpers around the blob header (implemented in header.cpp).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "flashspmm.h"

namespace fspmm {

// Checksum (see layout.h) of `bytes` bytes (a multiple of 8) at `data`, words indexed from 0.
uint64_t checksum(const void* data, size_t bytes);

// Check that a decoded header is self-consistent (magic, version, format, dtype, shapes, tile sizes,
// section offsets and sizes, header checksum). Raises fspmm::Error(FSPMM_ERR_CORRUPT_BUFFER, "...") if not.
void check_header(const fspmm_header_t& h);

// Full structural validation of a blob held in host memory (header, offsets, every tile, payload
// checksum). `bytes` is the buffer size. Raises fspmm::Error on failure; returns the header.
fspmm_header_t validate_blob(const void* blob, size_t bytes);

}  // namespace fspmm
