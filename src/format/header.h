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

// Validation of a blob's prefix [0, data_offset) (header, tile offset table, the gap after it) copied from
// device memory, for a blob of `blob_bytes` bytes: everything the kernels rely on to stay inside the blob,
// without the tiles' contents or the payload checksum. `prefix_bytes` is how much of the prefix `prefix`
// holds (at least data_offset, which the header gives). Raises fspmm::Error; returns the header.
fspmm_header_t validate_prefix(const void* prefix, size_t prefix_bytes, size_t blob_bytes);

}  // namespace fspmm
