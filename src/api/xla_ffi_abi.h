// The part of the XLA FFI binary interface (API major version 0) that flashspmm's handlers use, declared from
// its published specification (xla/ffi/api/c_api.h of OpenXLA, the "ffi" guide of JAX) so that the library
// builds without JAX or XLA installed. Only the layouts matter here: every struct below is passed by pointer
// across the boundary, in the field order the specification fixes; names follow the specification so the two
// can be compared line by line.
//
// Versioning rules the handlers rely on (from the specification):
//  - structs only ever grow at their end (minor versions); each carries its size in `struct_size`, so a
//    reader accepts a struct at least as large as the fields it reads;
//  - a handler reports the API version it was written against through the metadata extension; XLA refuses to
//    register a handler whose version it does not support;
//  - errors are created by XLA (XLA_FFI_Error_Create) and owned by XLA once a handler returns them.
#pragma once
#include <stddef.h>
#include <stdint.h>

extern "C" {

// The FFI version the handlers report: every field and function used here exists, at the same offset, from
// 0.1 on (the oldest version XLA accepts), so reporting 0.1 lets the oldest and the newest XLA register them.
constexpr int kXlaFfiApiMajor = 0;
constexpr int kXlaFfiApiMinor = 1;

// Size of a struct up to and including `field`: what the specification calls the struct's size.
#define FSPMM_XLA_STRUCT_SIZE(type, field) (offsetof(type, field) + sizeof(((type*)nullptr)->field))

struct XLA_FFI_Api;
struct XLA_FFI_Error;             // opaque, created by XLA
struct XLA_FFI_ExecutionContext;  // opaque, per call

// Chained optional extensions of a struct; type 1 is the metadata query.
enum XLA_FFI_Extension_Type : int {
    XLA_FFI_Extension_Metadata = 1
};
struct XLA_FFI_Extension_Base {
    size_t struct_size;
    XLA_FFI_Extension_Type type;
    XLA_FFI_Extension_Base* next;
};

struct XLA_FFI_Api_Version {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    int major_version;
    int minor_version;
};

// Error codes (absl status codes); the ones flashspmm reports.
enum XLA_FFI_Error_Code : int {
    XLA_FFI_Error_Code_UNKNOWN = 2,
    XLA_FFI_Error_Code_INVALID_ARGUMENT = 3,
    XLA_FFI_Error_Code_RESOURCE_EXHAUSTED = 8,
    XLA_FFI_Error_Code_FAILED_PRECONDITION = 9,
    XLA_FFI_Error_Code_UNIMPLEMENTED = 12,
    XLA_FFI_Error_Code_INTERNAL = 13,
    XLA_FFI_Error_Code_DATA_LOSS = 15,
};

struct XLA_FFI_Error_Create_Args {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    const char* message;  // copied by XLA
    XLA_FFI_Error_Code errc;
};

// Element types (values of xla::PrimitiveType); the ones flashspmm reads.
enum XLA_FFI_DataType : int {
    XLA_FFI_DataType_PRED = 1,
    XLA_FFI_DataType_S8 = 2,
    XLA_FFI_DataType_S16 = 3,
    XLA_FFI_DataType_S32 = 4,
    XLA_FFI_DataType_S64 = 5,
    XLA_FFI_DataType_U8 = 6,
    XLA_FFI_DataType_U16 = 7,
    XLA_FFI_DataType_U32 = 8,
    XLA_FFI_DataType_U64 = 9,
    XLA_FFI_DataType_F16 = 10,
    XLA_FFI_DataType_F32 = 11,
    XLA_FFI_DataType_F64 = 12,
    XLA_FFI_DataType_BF16 = 16,
};

// A dense row-major array argument or result.
struct XLA_FFI_Buffer {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    XLA_FFI_DataType dtype;
    void* data;
    int64_t rank;
    int64_t* dims;  // rank entries
};

enum XLA_FFI_ArgType : int {
    XLA_FFI_ArgType_BUFFER = 1
};
enum XLA_FFI_RetType : int {
    XLA_FFI_RetType_BUFFER = 1
};
enum XLA_FFI_AttrType : int {
    XLA_FFI_AttrType_ARRAY = 1,
    XLA_FFI_AttrType_DICTIONARY = 2,
    XLA_FFI_AttrType_SCALAR = 3,
    XLA_FFI_AttrType_STRING = 4,
};

// Attribute payloads: names and strings are spans (not NUL-terminated), scalars and arrays carry their type.
struct XLA_FFI_ByteSpan {
    const char* ptr;
    size_t len;
};
struct XLA_FFI_Scalar {
    XLA_FFI_DataType dtype;
    void* value;
};
struct XLA_FFI_Array {
    XLA_FFI_DataType dtype;
    size_t size;  // elements
    void* data;
};

struct XLA_FFI_TypeId {
    int64_t type_id;
};

enum XLA_FFI_ExecutionStage : int {
    XLA_FFI_ExecutionStage_INSTANTIATE = 0,
    XLA_FFI_ExecutionStage_PREPARE = 1,
    XLA_FFI_ExecutionStage_INITIALIZE = 2,
    XLA_FFI_ExecutionStage_EXECUTE = 3,
};

struct XLA_FFI_Args {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    int64_t size;
    XLA_FFI_ArgType* types;
    void** args;  // XLA_FFI_Buffer* each
};
struct XLA_FFI_Rets {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    int64_t size;
    XLA_FFI_RetType* types;
    void** rets;  // XLA_FFI_Buffer* each
};
// Attributes come sorted by name.
struct XLA_FFI_Attrs {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    int64_t size;
    XLA_FFI_AttrType* types;
    XLA_FFI_ByteSpan** names;
    void** attrs;  // XLA_FFI_Scalar*, XLA_FFI_Array* or XLA_FFI_ByteSpan* by type
};

// What a handler receives. Its specified size ends with `attrs`; later versions append fields.
struct XLA_FFI_CallFrame {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    const XLA_FFI_Api* api;
    XLA_FFI_ExecutionContext* ctx;
    XLA_FFI_ExecutionStage stage;
    XLA_FFI_Args args;
    XLA_FFI_Rets rets;
    XLA_FFI_Attrs attrs;
};

typedef XLA_FFI_Error* XLA_FFI_Handler(XLA_FFI_CallFrame* call_frame);

// Handler traits: bit 0 says every call launches the same device work (for the same attributes), so XLA
// may record the call into a command buffer (a CUDA graph) and replay it.
typedef uint32_t XLA_FFI_Handler_Traits;
constexpr XLA_FFI_Handler_Traits XLA_FFI_HANDLER_TRAITS_COMMAND_BUFFER_COMPATIBLE = 1u << 0;

// The metadata query: XLA calls the handler with this extension first in the call frame's chain and reads
// back the API version and traits (nothing else may be done in that call).
struct XLA_FFI_Metadata {
    size_t struct_size;
    XLA_FFI_Api_Version api_version;
    XLA_FFI_Handler_Traits traits;
    XLA_FFI_TypeId state_type_id;  // after the specified size (added in a later version): read only by XLA
};
struct XLA_FFI_Metadata_Extension {
    XLA_FFI_Extension_Base extension_base;
    XLA_FFI_Metadata* metadata;
};

struct XLA_FFI_Stream_Get_Args {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    XLA_FFI_ExecutionContext* ctx;
    void* stream;  // out: the cudaStream_t of the call on CUDA
};

typedef XLA_FFI_Error* XLA_FFI_Error_Create_Fn(XLA_FFI_Error_Create_Args* args);
typedef XLA_FFI_Error* XLA_FFI_Stream_Get_Fn(XLA_FFI_Stream_Get_Args* args);
typedef void XLA_FFI_Unused_Fn(void);

// The table of functions XLA hands to every call. Only the entries up to XLA_FFI_Stream_Get are used; the
// others are listed so that the offsets are right.
struct XLA_FFI_Api {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    XLA_FFI_Api_Version api_version;
    const void* internal_api;
    XLA_FFI_Error_Create_Fn* XLA_FFI_Error_Create;
    XLA_FFI_Unused_Fn* XLA_FFI_Error_GetMessage;
    XLA_FFI_Unused_Fn* XLA_FFI_Error_Destroy;
    XLA_FFI_Unused_Fn* XLA_FFI_Handler_Register;
    XLA_FFI_Stream_Get_Fn* XLA_FFI_Stream_Get;
};

}  // extern "C"

// Sizes as the specification defines them (offset of the last field plus its size), and layout checks of
// the fields that sit at fixed offsets on LP64 platforms.
constexpr size_t kXlaCallFrameSize = FSPMM_XLA_STRUCT_SIZE(XLA_FFI_CallFrame, attrs);
constexpr size_t kXlaArgsSize = FSPMM_XLA_STRUCT_SIZE(XLA_FFI_Args, args);
constexpr size_t kXlaRetsSize = FSPMM_XLA_STRUCT_SIZE(XLA_FFI_Rets, rets);
constexpr size_t kXlaAttrsSize = FSPMM_XLA_STRUCT_SIZE(XLA_FFI_Attrs, attrs);
constexpr size_t kXlaBufferSize = FSPMM_XLA_STRUCT_SIZE(XLA_FFI_Buffer, dims);
constexpr size_t kXlaApiVersionSize = FSPMM_XLA_STRUCT_SIZE(XLA_FFI_Api_Version, minor_version);
constexpr size_t kXlaMetadataSize = FSPMM_XLA_STRUCT_SIZE(XLA_FFI_Metadata, traits);
constexpr size_t kXlaMetadataExtensionSize = FSPMM_XLA_STRUCT_SIZE(XLA_FFI_Metadata_Extension, metadata);
constexpr size_t kXlaErrorCreateArgsSize = FSPMM_XLA_STRUCT_SIZE(XLA_FFI_Error_Create_Args, errc);
constexpr size_t kXlaStreamGetArgsSize = FSPMM_XLA_STRUCT_SIZE(XLA_FFI_Stream_Get_Args, stream);
static_assert(sizeof(void*) == 8, "the XLA FFI layouts below are those of a 64-bit platform");
static_assert(kXlaBufferSize == 48 && offsetof(XLA_FFI_Buffer, data) == 24, "XLA_FFI_Buffer layout");
static_assert(kXlaArgsSize == 40 && kXlaRetsSize == 40 && kXlaAttrsSize == 48, "XLA_FFI_Args/Rets/Attrs layout");
static_assert(offsetof(XLA_FFI_CallFrame, args) == 40 && kXlaCallFrameSize == 168, "XLA_FFI_CallFrame layout");
static_assert(kXlaApiVersionSize == 24 && offsetof(XLA_FFI_Metadata, traits) == 32, "XLA_FFI_Metadata layout");
static_assert(offsetof(XLA_FFI_Api, XLA_FFI_Error_Create) == 48 && offsetof(XLA_FFI_Api, XLA_FFI_Stream_Get) == 80,
              "XLA_FFI_Api layout");
