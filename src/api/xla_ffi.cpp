// XLA FFI handlers: flashspmm's linear and decompress as XLA custom calls, so that they run inside jax.jit
// (python/flashspmm/jax registers them). Written against the FFI's binary interface (api/xla_ffi_abi.h), so
// the library builds without JAX or XLA.
//
// Targets (fspmm_xla_handler(name) returns the handler; every one reads the same attributes):
//   linear_cuda, linear_cpu
//     args   x [..., K] (f16 / bf16), blob (u8, any rank, total_bytes bytes), bias [M] if has_bias,
//            c [..., M] if beta != 0 (the array accumulated into; XLA aliases it with y)
//     rets   y [..., M]; on CUDA also a u8 workspace of the size fspmm_xla_linear_workspace reports
//     attrs  header (s64[16]: the 128 header bytes), alpha, beta (f32), split_k, has_bias (integers)
//   decompress_cuda, decompress_cpu
//     args   blob;  rets  dense [M, K];  attrs  header
//
// The `header` attribute is the launch header: the blob's own header, or, for one shard of a matrix split
// over devices, a header with the shard's geometry, format and dtype and the largest max_tile_bytes,
// data_bytes and nnz of all shards (every shard's blob is padded to its total_bytes). The CUDA handlers
// launch with it as it is (the host never reads device memory); the CPU handlers validate the whole blob
// every call and check that it fits the launch header.
//
// The CUDA handlers run on the stream XLA gives, allocate nothing (the split-K workspace is a declared
// result) and launch the same work for the same attributes and shapes, so they are marked compatible with
// command buffers (CUDA graphs). No handler aborts, prints or lets an exception out: failures come back to
// XLA as an XLA_FFI_Error that carries the library's message.
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include <new>
#include <string>

#include "api/checks.h"
#include "api/export.h"
#include "api/xla_ffi_abi.h"
#include "common/error.h"
#include "convert/convert_device.h"
#include "format/header.h"
#include "format/host_formats.h"
#include "spmm/launch.h"

namespace fspmm {
namespace xla {
namespace {

// ---- adapter: every call into the core library is in this block --------------------------------------------
// (so that a change of the core interface touches these few functions only)
namespace core {

// The launch header from its 128 bytes, checked for consistency (magic, checksum, sizes).
fspmm_header_t launch_header(const uint8_t* bytes) {
    fspmm_header_t h;
    memcpy(&h, bytes, sizeof h);
    check_header(h);
    return h;
}

// The plan of a CUDA linear call with N rows of x on the current device: automatic kernel and decoder; the
// workspace is a fresh result of the call (any contents will do: epilogue.cuh).
LinearPlan cuda_plan_of(const fspmm_header_t& h, int64_t N, int split_k) {
    LinearOptions options;
    options.split_k = split_k;
    return plan_linear(h, N, options, current_device());
}

// Workspace bytes and K slices of a CUDA linear call with N rows of x, planned on the current device.
void cuda_plan(const fspmm_header_t& h, int64_t N, int split_k, size_t* bytes, int* splits) {
    const LinearPlan plan = cuda_plan_of(h, N, split_k);
    *bytes = plan.workspace;
    *splits = plan.splits;
}

// y = alpha * x * W^T + bias + beta * y on `stream`; x, y contiguous ([N, K], [N, M]).
void cuda_linear(const fspmm_header_t& h, const void* blob, const void* x, int64_t N, const void* bias, void* y,
                 float alpha, float beta, int split_k, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    const LinearPlan plan = cuda_plan_of(h, N, split_k);
    FSPMM_REQUIRE(workspace_bytes >= plan.workspace,
                  "the workspace result holds " + std::to_string(workspace_bytes) + " bytes but this call needs " +
                      std::to_string(plan.workspace) + " (N = " + std::to_string(N) +
                      ", split_k = " + std::to_string(split_k) +
                      "): size it with fspmm_xla_linear_workspace for the same N and "
                      "split_k (flashspmm.jax does)");
    run_linear(h, plan, blob, x, h.K, N, bias, y, h.M, alpha, beta, workspace, stream);
}

// Dense [M, K] (leading dimension K) from a device blob, on `stream`.
void cuda_decompress(const fspmm_header_t& h, const void* blob, void* dense, cudaStream_t stream) {
    launch_decode(h, blob, dense, h.K, stream);
}

// Validate a host blob of `bytes` bytes completely and check that it fits the launch header; its own header.
fspmm_header_t cpu_blob(const fspmm_header_t& launch, const void* blob, size_t bytes) {
    const fspmm_header_t own = validate_blob(blob, bytes);
    FSPMM_REQUIRE(own.M == launch.M && own.K == launch.K && own.format == launch.format && own.dtype == launch.dtype &&
                      own.max_tile_bytes <= launch.max_tile_bytes && own.data_bytes <= launch.data_bytes,
                  "the blob does not belong to the header it was passed with (its shape, format, dtype or tile "
                  "sizes differ): keep a matrix's blob and header together (flashspmm.jax.JaxSparseMatrix does)");
    return own;
}

// The CPU reference linear (fp32 accumulation in k order, as fspmm_linear_host); x, y contiguous.
void cpu_linear(const void* blob, const fspmm_header_t& own, const void* x, int64_t N, const void* bias, void* y,
                float alpha, float beta) {
    const LinearArgs args{static_cast<const uint16_t*>(x), N,     own.K, static_cast<const uint16_t*>(bias),
                          static_cast<uint16_t*>(y),       own.M, alpha, beta};
    linear_blob(static_cast<const uint8_t*>(blob), own, args);
}

// Dense [M, K] (leading dimension K) from a validated host blob.
void cpu_decompress(const void* blob, const fspmm_header_t& own, void* dense) {
    decode_blob(static_cast<const uint8_t*>(blob), own, static_cast<uint16_t*>(dense), own.K);
}

}  // namespace core
// ---- end of the adapter -------------------------------------------------------------------------------------

// An XLA_FFI_Error that XLA itself returned (from XLA_FFI_Stream_Get), handed back unchanged.
struct XlaError {
    XLA_FFI_Error* error;
};

// The XLA error code of a library status.
XLA_FFI_Error_Code error_code(fspmm_status_t status) {
    switch (status) {
        case FSPMM_ERR_INVALID_ARGUMENT: return XLA_FFI_Error_Code_INVALID_ARGUMENT;
        case FSPMM_ERR_NOT_SUPPORTED: return XLA_FFI_Error_Code_UNIMPLEMENTED;
        case FSPMM_ERR_CORRUPT_BUFFER: return XLA_FFI_Error_Code_DATA_LOSS;
        case FSPMM_ERR_NO_DEVICE: return XLA_FFI_Error_Code_FAILED_PRECONDITION;
        case FSPMM_ERR_OUT_OF_MEMORY: return XLA_FFI_Error_Code_RESOURCE_EXHAUSTED;
        default: return XLA_FFI_Error_Code_INTERNAL;
    }
}

// Whether the function table holds the entry at byte `offset` (tables only grow at their end).
bool api_has(const XLA_FFI_Api* api, size_t offset) {
    return api != nullptr && api->struct_size >= offset + sizeof(void*);
}

// A new XLA error with `message` (copied by XLA), or nullptr when the table cannot make one.
XLA_FFI_Error* make_error(const XLA_FFI_Api* api, XLA_FFI_Error_Code code, const char* message) noexcept {
    if (!api_has(api, offsetof(XLA_FFI_Api, XLA_FFI_Error_Create)) || api->XLA_FFI_Error_Create == nullptr)
        return nullptr;
    XLA_FFI_Error_Create_Args args{};
    args.struct_size = kXlaErrorCreateArgsSize;
    args.extension_start = nullptr;
    args.message = message;
    args.errc = code;
    return api->XLA_FFI_Error_Create(&args);
}

// Answer XLA's metadata query: the API version the handlers are written against and their traits.
XLA_FFI_Error* report_metadata(XLA_FFI_CallFrame* frame, XLA_FFI_Handler_Traits traits) noexcept {
    auto* extension = reinterpret_cast<XLA_FFI_Metadata_Extension*>(frame->extension_start);
    XLA_FFI_Metadata* metadata = extension->metadata;
    if (extension->extension_base.struct_size < kXlaMetadataExtensionSize || metadata == nullptr ||
        metadata->struct_size < kXlaMetadataSize)
        return make_error(frame->api, XLA_FFI_Error_Code_INVALID_ARGUMENT,
                          "flashspmm: the XLA FFI metadata query passes structs smaller than API version 0.1 "
                          "defines; this XLA is not supported");
    metadata->api_version.struct_size = kXlaApiVersionSize;
    metadata->api_version.extension_start = nullptr;
    metadata->api_version.major_version = kXlaFfiApiMajor;
    metadata->api_version.minor_version = kXlaFfiApiMinor;
    metadata->traits = traits;
    return nullptr;
}

// A buffer argument or result, checked against the ABI.
struct Buffer {
    int dtype;
    void* data;
    int64_t rank;
    const int64_t* dims;
    int64_t elements;
};

// The call frame of one execution, with typed access to its arguments, results and attributes.
class Frame {
public:
    explicit Frame(const XLA_FFI_CallFrame* frame) : f_(frame) {
        FSPMM_REQUIRE(f_->struct_size >= kXlaCallFrameSize && f_->args.struct_size >= kXlaArgsSize &&
                          f_->rets.struct_size >= kXlaRetsSize && f_->attrs.struct_size >= kXlaAttrsSize,
                      "the XLA FFI call frame is smaller than API version 0.1 defines; this XLA is not supported");
        FSPMM_REQUIRE(f_->stage == XLA_FFI_ExecutionStage_EXECUTE,
                      "called for execution stage " + std::to_string(static_cast<int>(f_->stage)) +
                          ": flashspmm's targets have an execute stage only (register them with "
                          "jax.ffi.register_ffi_target, as flashspmm.jax does)");
    }

    int64_t args() const { return f_->args.size; }
    int64_t rets() const { return f_->rets.size; }
    Buffer arg(int64_t i, const char* what) const {
        FSPMM_REQUIRE(i < f_->args.size && f_->args.types[i] == XLA_FFI_ArgType_BUFFER,
                      std::string("argument ") + std::to_string(i) + " (" + what + ") is missing or not an array");
        return buffer(f_->args.args[i], what);
    }
    Buffer ret(int64_t i, const char* what) const {
        FSPMM_REQUIRE(i < f_->rets.size && f_->rets.types[i] == XLA_FFI_RetType_BUFFER,
                      std::string("result ") + std::to_string(i) + " (" + what + ") is missing or not an array");
        return buffer(f_->rets.rets[i], what);
    }

    // An integer attribute (any integer or boolean scalar type).
    int64_t int_attr(const char* name) const {
        const XLA_FFI_Scalar* s = static_cast<const XLA_FFI_Scalar*>(attr(name, XLA_FFI_AttrType_SCALAR, "a scalar"));
        switch (s->dtype) {
            case XLA_FFI_DataType_PRED:
            case XLA_FFI_DataType_S8: return *static_cast<const int8_t*>(s->value);
            case XLA_FFI_DataType_U8: return *static_cast<const uint8_t*>(s->value);
            case XLA_FFI_DataType_S16: return *static_cast<const int16_t*>(s->value);
            case XLA_FFI_DataType_U16: return *static_cast<const uint16_t*>(s->value);
            case XLA_FFI_DataType_S32: return *static_cast<const int32_t*>(s->value);
            case XLA_FFI_DataType_U32: return *static_cast<const uint32_t*>(s->value);
            case XLA_FFI_DataType_S64: return *static_cast<const int64_t*>(s->value);
            case XLA_FFI_DataType_U64: return static_cast<int64_t>(*static_cast<const uint64_t*>(s->value));
            default: raise(FSPMM_ERR_INVALID_ARGUMENT, std::string("attribute ") + name + " must be an integer");
        }
    }

    // A floating-point attribute (f32 or f64).
    float float_attr(const char* name) const {
        const XLA_FFI_Scalar* s = static_cast<const XLA_FFI_Scalar*>(attr(name, XLA_FFI_AttrType_SCALAR, "a scalar"));
        if (s->dtype == XLA_FFI_DataType_F32) return *static_cast<const float*>(s->value);
        if (s->dtype == XLA_FFI_DataType_F64) return static_cast<float>(*static_cast<const double*>(s->value));
        raise(FSPMM_ERR_INVALID_ARGUMENT, std::string("attribute ") + name + " must be a float32 or float64 scalar");
    }

    // The launch header from the `header` attribute: 16 64-bit words or 128 bytes, as stored in a blob.
    fspmm_header_t header() const {
        const XLA_FFI_Array* a = static_cast<const XLA_FFI_Array*>(attr("header", XLA_FFI_AttrType_ARRAY, "an array"));
        const bool words = (a->dtype == XLA_FFI_DataType_S64 || a->dtype == XLA_FFI_DataType_U64) && a->size == 16;
        const bool bytes = (a->dtype == XLA_FFI_DataType_U8 || a->dtype == XLA_FFI_DataType_S8) && a->size == 128;
        FSPMM_REQUIRE(words || bytes, "attribute header must hold the blob's 128 header bytes (16 int64 words)");
        return core::launch_header(static_cast<const uint8_t*>(a->data));
    }

private:
    const XLA_FFI_CallFrame* f_;

    // The attribute `name` of `type`; raises if it is absent or of another type.
    const void* attr(const char* name, XLA_FFI_AttrType type, const char* kind) const {
        const size_t len = strlen(name);
        for (int64_t i = 0; i < f_->attrs.size; ++i) {
            const XLA_FFI_ByteSpan* n = f_->attrs.names[i];
            if (n->len != len || memcmp(n->ptr, name, len) != 0) continue;
            FSPMM_REQUIRE(f_->attrs.types[i] == type, std::string("attribute ") + name + " must be " + kind);
            return f_->attrs.attrs[i];
        }
        raise(FSPMM_ERR_INVALID_ARGUMENT, std::string("attribute ") + name + " is missing");
    }

    static Buffer buffer(void* p, const char* what) {
        const XLA_FFI_Buffer* b = static_cast<const XLA_FFI_Buffer*>(p);
        FSPMM_REQUIRE(b != nullptr && b->struct_size >= kXlaBufferSize,
                      std::string(what) + ": the XLA FFI buffer is smaller than API version 0.1 defines");
        int64_t elements = 1;
        for (int64_t d = 0; d < b->rank; ++d)
            FSPMM_REQUIRE(b->dims[d] >= 0 && !__builtin_mul_overflow(elements, b->dims[d], &elements),
                          std::string(what) + " has an invalid shape");
        return Buffer{static_cast<int>(b->dtype), b->data, b->rank, b->dims, elements};
    }
};

// The XLA element type of a flashspmm dtype, and its name for messages.
int xla_dtype(int dtype) { return dtype == FSPMM_DTYPE_BFLOAT16 ? XLA_FFI_DataType_BF16 : XLA_FFI_DataType_F16; }
const char* dtype_name(int dtype) { return dtype == FSPMM_DTYPE_BFLOAT16 ? "bfloat16" : "float16"; }

// Raise unless a 16-bit array has W's dtype and `elements` elements (its last dimension `last` if given).
void require_array(const Buffer& b, const fspmm_header_t& h, int64_t elements, int64_t last, const char* what) {
    FSPMM_REQUIRE(b.dtype == xla_dtype(h.dtype), std::string(what) + " must have W's dtype " + dtype_name(h.dtype) +
                                                     " (XLA type " + std::to_string(xla_dtype(h.dtype)) +
                                                     "), got XLA type " + std::to_string(b.dtype));
    FSPMM_REQUIRE(b.elements == elements && (last < 0 || (b.rank >= 1 && b.dims[b.rank - 1] == last)),
                  std::string(what) + " has " + std::to_string(b.elements) + " elements, expected " +
                      std::to_string(elements) +
                      (last >= 0 ? " with a last dimension of " + std::to_string(last) : ""));
    require_aligned(b.data, what);
}

// Raise unless the blob buffer is a byte array of exactly the launch header's total_bytes.
void require_blob(const Buffer& b, const fspmm_header_t& h) {
    FSPMM_REQUIRE(b.dtype == XLA_FFI_DataType_U8 || b.dtype == XLA_FFI_DataType_S8,
                  "the blob must be a uint8 array (XLA type " + std::to_string(b.dtype) + " given)");
    FSPMM_REQUIRE(static_cast<uint64_t>(b.elements) == h.total_bytes,
                  "the blob holds " + std::to_string(b.elements) + " bytes but its header says " +
                      std::to_string(h.total_bytes) +
                      ": pass the blob and header of one matrix (or of one shard, "
                      "inside shard_map)");
}

// The arguments of a linear call, read and checked from the frame.
struct LinearCall {
    fspmm_header_t h;
    Buffer x, blob, y;
    const void* bias = nullptr;
    const void* c = nullptr;  // accumulated into when beta != 0
    int64_t N = 0;
    float alpha = 1.0f, beta = 0.0f;
    int split_k = 0;
};

LinearCall read_linear(const Frame& f) {
    LinearCall call;
    call.h = f.header();
    const fspmm_header_t& h = call.h;
    call.alpha = f.float_attr("alpha");
    call.beta = f.float_attr("beta");
    const int64_t split_k = f.int_attr("split_k");
    FSPMM_REQUIRE(split_k >= 0 && split_k <= 65535, "split_k must be 0 (automatic) or a number of K slices");
    call.split_k = static_cast<int>(split_k);
    const bool has_bias = f.int_attr("has_bias") != 0;
    const bool has_c = call.beta != 0.0f;
    const int64_t want_args = 2 + (has_bias ? 1 : 0) + (has_c ? 1 : 0);
    FSPMM_REQUIRE(f.args() == want_args, "expected " + std::to_string(want_args) + " arguments (x, blob" +
                                             (has_bias ? ", bias" : "") + (has_c ? ", c" : "") + "), got " +
                                             std::to_string(f.args()));
    call.x = f.arg(0, "x");
    FSPMM_REQUIRE(call.x.rank >= 1 && call.x.dims[call.x.rank - 1] == h.K,
                  "x must be [..., K] with K = " + std::to_string(h.K) + " (W's in features)");
    call.N = call.x.elements / h.K;
    require_array(call.x, h, call.N * h.K, h.K, "x");
    call.blob = f.arg(1, "blob");
    require_blob(call.blob, h);
    int64_t next = 2;
    if (has_bias) {
        const Buffer bias = f.arg(next++, "bias");
        require_array(bias, h, h.M, -1, "bias");
        call.bias = bias.data;
    }
    call.y = f.ret(0, "y");
    int64_t outputs = 0;
    FSPMM_REQUIRE(!__builtin_mul_overflow(call.N, h.M, &outputs), "N * M overflows");
    require_array(call.y, h, outputs, h.M, "y");
    if (has_c) {
        const Buffer c = f.arg(next++, "c");
        require_array(c, h, outputs, h.M, "c (the array accumulated into)");
        call.c = c.data;
    }
    return call;
}

// Run `body(frame)` for an execution, or answer the metadata query; every failure becomes an XLA error.
template <typename Body>
XLA_FFI_Error* handle(XLA_FFI_CallFrame* frame, const char* target, XLA_FFI_Handler_Traits traits,
                      Body&& body) noexcept {
    if (frame == nullptr) return nullptr;  // nothing to answer to
    if (frame->extension_start != nullptr && frame->extension_start->type == XLA_FFI_Extension_Metadata)
        return report_metadata(frame, traits);
    const XLA_FFI_Api* api = frame->api;
    try {
        const Frame f(frame);
        body(f);
        return nullptr;
    } catch (const XlaError& e) {
        return e.error;
    } catch (const Error& e) {
        try {
            const std::string message =
                std::string("flashspmm ") + target + ": " + fspmm_status_string(e.status) + ": " + e.message;
            return make_error(api, error_code(e.status), message.c_str());
        } catch (...) {
            return make_error(api, error_code(e.status), "flashspmm: a call failed (out of memory for the message)");
        }
    } catch (const std::bad_alloc&) {
        return make_error(api, XLA_FFI_Error_Code_RESOURCE_EXHAUSTED, "flashspmm: out of host memory");
    } catch (const std::exception& e) {
        return make_error(api, XLA_FFI_Error_Code_INTERNAL, e.what());
    } catch (...) {
        return make_error(api, XLA_FFI_Error_Code_INTERNAL, "flashspmm: internal error (unknown exception)");
    }
}

// The CUDA stream of this call.
cudaStream_t stream_of(const XLA_FFI_CallFrame* frame) {
    const XLA_FFI_Api* api = frame->api;
    FSPMM_REQUIRE(api_has(api, offsetof(XLA_FFI_Api, XLA_FFI_Stream_Get)) && api->XLA_FFI_Stream_Get != nullptr,
                  "this XLA offers no XLA_FFI_Stream_Get");
    XLA_FFI_Stream_Get_Args args{};
    args.struct_size = kXlaStreamGetArgsSize;
    args.extension_start = nullptr;
    args.ctx = frame->ctx;
    args.stream = nullptr;
    if (XLA_FFI_Error* err = api->XLA_FFI_Stream_Get(&args)) throw XlaError{err};
    return static_cast<cudaStream_t>(args.stream);
}

// ---- the handlers ---------------------------------------------------------------------------------------------

XLA_FFI_Error* linear_cuda(XLA_FFI_CallFrame* frame) {
    return handle(frame, "linear (CUDA)", XLA_FFI_HANDLER_TRAITS_COMMAND_BUFFER_COMPATIBLE, [&](const Frame& f) {
        const LinearCall call = read_linear(f);
        require_aligned16(call.blob.data, "the blob");
        const Buffer ws = f.ret(1, "workspace");
        FSPMM_REQUIRE(ws.dtype == XLA_FFI_DataType_U8, "the workspace result must be a uint8 array");
        if (call.N == 0) return;
        const cudaStream_t stream = stream_of(frame);
        const size_t y_bytes = static_cast<size_t>(call.y.elements) * 2;
        if (call.c != nullptr && call.c != call.y.data)  // XLA did not alias c with y: start from a copy
            check_cuda(cudaMemcpyAsync(call.y.data, call.c, y_bytes, cudaMemcpyDeviceToDevice, stream),
                       "cudaMemcpyAsync (c to y)");
        core::cuda_linear(call.h, call.blob.data, call.x.data, call.N, call.bias, call.y.data, call.alpha, call.beta,
                          call.split_k, ws.data, static_cast<size_t>(ws.elements), stream);
    });
}

XLA_FFI_Error* linear_cpu(XLA_FFI_CallFrame* frame) {
    return handle(frame, "linear (CPU)", 0, [&](const Frame& f) {
        const LinearCall call = read_linear(f);
        const fspmm_header_t own = core::cpu_blob(call.h, call.blob.data, static_cast<size_t>(call.blob.elements));
        if (call.N == 0) return;
        if (call.c != nullptr && call.c != call.y.data)
            memcpy(call.y.data, call.c, static_cast<size_t>(call.y.elements) * 2);
        core::cpu_linear(call.blob.data, own, call.x.data, call.N, call.bias, call.y.data, call.alpha, call.beta);
    });
}

// The blob and dense result of a decompress call.
struct DecompressCall {
    fspmm_header_t h;
    Buffer blob, dense;
};

DecompressCall read_decompress(const Frame& f) {
    DecompressCall call;
    call.h = f.header();
    FSPMM_REQUIRE(f.args() == 1, "expected 1 argument (blob), got " + std::to_string(f.args()));
    call.blob = f.arg(0, "blob");
    require_blob(call.blob, call.h);
    call.dense = f.ret(0, "dense");
    require_array(call.dense, call.h, call.h.M * call.h.K, call.h.K, "dense");
    return call;
}

XLA_FFI_Error* decompress_cuda(XLA_FFI_CallFrame* frame) {
    return handle(frame, "decompress (CUDA)", XLA_FFI_HANDLER_TRAITS_COMMAND_BUFFER_COMPATIBLE, [&](const Frame& f) {
        const DecompressCall call = read_decompress(f);
        require_aligned16(call.blob.data, "the blob");
        core::cuda_decompress(call.h, call.blob.data, call.dense.data, stream_of(frame));
    });
}

XLA_FFI_Error* decompress_cpu(XLA_FFI_CallFrame* frame) {
    return handle(frame, "decompress (CPU)", 0, [&](const Frame& f) {
        const DecompressCall call = read_decompress(f);
        const fspmm_header_t own = core::cpu_blob(call.h, call.blob.data, static_cast<size_t>(call.blob.elements));
        core::cpu_decompress(call.blob.data, own, call.dense.data);
    });
}

}  // namespace
}  // namespace xla
}  // namespace fspmm

extern "C" FSPMM_API void* fspmm_xla_handler(const char* name) {
    using namespace fspmm::xla;
    if (name == nullptr) return nullptr;
    const struct {
        const char* name;
        XLA_FFI_Handler* handler;
    } table[] = {{"linear_cuda", linear_cuda},
                 {"linear_cpu", linear_cpu},
                 {"decompress_cuda", decompress_cuda},
                 {"decompress_cpu", decompress_cpu}};
    for (const auto& entry : table)
        if (strcmp(entry.name, name) == 0) return reinterpret_cast<void*>(entry.handler);
    return nullptr;
}

extern "C" FSPMM_API fspmm_status_t fspmm_xla_linear_workspace(const void* header, int64_t N, int split_k,
                                                               size_t* bytes, int* splits) {
    return fspmm::guard("fspmm_xla_linear_workspace", [&] {
        fspmm::require_pointer(header, "header", "the 128 header bytes of the blob (or of a shard's launch header)");
        fspmm::require_pointer(bytes, "bytes", "a pointer to a size_t to receive the workspace size");
        fspmm::require_pointer(splits, "splits", "a pointer to an int to receive the number of K slices");
        FSPMM_REQUIRE(N >= 1, "N = " + std::to_string(N) + " is invalid: N (rows of x) must be >= 1");
        const fspmm_header_t h = fspmm::xla::core::launch_header(static_cast<const uint8_t*>(header));
        fspmm::xla::core::cuda_plan(h, N, split_k, bytes, splits);
        return FSPMM_OK;
    });
}
