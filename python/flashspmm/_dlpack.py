"""DLPack in and out, with ctypes only (no framework imported).

Import (:func:`import_array`): ``obj.__dlpack__(max_version=(1, 0), stream=...)`` first, the legacy
``obj.__dlpack__(stream=...)`` when the producer rejects ``max_version`` (TypeError). The capsule is renamed to
``used_dltensor[_versioned]`` at once (a capsule is consumed once) and its deleter is called when the returned
:class:`Imported` is garbage collected, so the producer's memory stays valid while flashspmm uses it.

Export (:func:`export_capsule`): a ``dltensor[_versioned]`` capsule over memory flashspmm owns; the owner object
stays referenced until the consumer calls the deleter (or the capsule dies unconsumed).

Layouts and rules follow the DLPack 1.0 header (dlpack.h) and the array API standard's ``__dlpack__`` protocol.
"""

import ctypes
import threading
import weakref

__all__ = ["Imported", "import_array", "export_capsule", "is_capsule", "DEVICE_CPU", "DEVICE_CUDA"]

DEVICE_CPU, DEVICE_CUDA, DEVICE_CUDA_HOST, DEVICE_CUDA_MANAGED = 1, 2, 3, 13
_CODE_FLOAT, _CODE_BFLOAT = 2, 4
_FLAG_READ_ONLY = 1


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _Device),
        ("ndim", ctypes.c_int32),
        ("dtype", _DataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _Managed(ctypes.Structure):  # DLManagedTensor (legacy)
    pass


class _ManagedVersioned(ctypes.Structure):  # DLManagedTensorVersioned (DLPack >= 1.0)
    pass


_Deleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(_Managed))
_DeleterVersioned = ctypes.CFUNCTYPE(None, ctypes.POINTER(_ManagedVersioned))
_Managed._fields_ = [("dl_tensor", _Tensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter)]
_ManagedVersioned._fields_ = [
    ("version", _Version),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _DeleterVersioned),
    ("flags", ctypes.c_uint64),
    ("dl_tensor", _Tensor),
]

# Private prototypes of the CPython capsule API (so the shared ctypes.pythonapi attributes stay untouched).
_api = ctypes.pythonapi
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(("PyCapsule_IsValid", _api))
_capsule_get = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(("PyCapsule_GetPointer", _api))
_capsule_set_name = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(("PyCapsule_SetName", _api))
_CapsuleDestructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, _CapsuleDestructor)(
    ("PyCapsule_New", _api)
)
# Used from the capsule destructor, which gets a raw pointer to a capsule that is being destroyed.
_capsule_get_name_raw = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)(("PyCapsule_GetName", _api))
_capsule_get_raw = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(("PyCapsule_GetPointer", _api))

_NAMES = {False: b"dltensor", True: b"dltensor_versioned"}
_USED = {False: b"used_dltensor", True: b"used_dltensor_versioned"}


def is_capsule(obj):
    return type(obj).__name__ == "PyCapsule"


# ---- import -----------------------------------------------------------------------------------------------
class Imported:
    """A consumed DLPack tensor: address, shape, strides (elements), dtype name, device, read-only flag.

    Keep it alive while the memory is used; the producer's deleter runs when it is collected.
    """

    def __init__(self, address, versioned):
        self._managed_address = address
        self._versioned = versioned
        managed = ctypes.cast(address, ctypes.POINTER(_ManagedVersioned if versioned else _Managed)).contents
        t = managed.dl_tensor
        self.ndim = int(t.ndim)
        self.shape = tuple(int(t.shape[i]) for i in range(self.ndim))
        if t.strides:
            self.strides = tuple(int(t.strides[i]) for i in range(self.ndim))
        else:  # NULL strides: compact row-major
            strides, acc = [], 1
            for n in reversed(self.shape):
                strides.append(acc)
                acc *= max(n, 1)
            self.strides = tuple(reversed(strides))
        self.ptr = int(t.data or 0) + int(t.byte_offset)
        self.device_type = int(t.device.device_type)
        self.device_id = int(t.device.device_id)
        self.dtype = _dtype_name(t.dtype)
        self.read_only = bool(versioned and managed.flags & _FLAG_READ_ONLY)
        self._finalizer = weakref.finalize(self, _call_deleter, address, versioned)

    def release(self):
        """Give the tensor back to its producer now (idempotent)."""
        self._finalizer()


def _dtype_name(dt):
    if dt.lanes != 1:
        return f"vector{dt.lanes}"
    if dt.code == _CODE_FLOAT and dt.bits == 16:
        return "float16"
    if dt.code == _CODE_BFLOAT and dt.bits == 16:
        return "bfloat16"
    kind = {0: "int", 1: "uint", 2: "float", 5: "complex", 6: "bool"}.get(int(dt.code), f"code{dt.code}-")
    return f"{kind}{dt.bits}"


def _call_deleter(address, versioned):
    managed = ctypes.cast(address, ctypes.POINTER(_ManagedVersioned if versioned else _Managed))
    deleter = managed.contents.deleter
    if deleter:
        deleter(managed)


def import_array(obj, stream=None):
    """Consume ``obj`` (an object with ``__dlpack__``, or a DLPack capsule) into an :class:`Imported`.

    ``stream``: for CUDA producers, the integer stream the caller will use (the producer orders its work
    before it); None lets the producer use the legacy default stream.
    """
    if is_capsule(obj):
        capsule = obj
    else:
        kwargs = {} if stream is None else {"stream": stream}
        try:
            capsule = obj.__dlpack__(max_version=(1, 0), **kwargs)
        except TypeError:  # a producer that predates DLPack 1.0 / the max_version keyword
            capsule = obj.__dlpack__(**kwargs)
    for versioned in (True, False):
        if _capsule_is_valid(capsule, _NAMES[versioned]):
            address = _capsule_get(capsule, _NAMES[versioned])
            _capsule_set_name(capsule, _USED[versioned])  # consumed: its destructor no longer frees it
            return Imported(address, versioned)
    for versioned in (True, False):
        if _capsule_is_valid(capsule, _USED[versioned]):
            raise ValueError(
                "this DLPack capsule was already consumed; a capsule can be used once, call "
                "__dlpack__() again (or pass the array itself) for a new one"
            )
    raise TypeError("the object's __dlpack__() did not return a DLPack capsule")


# ---- export -----------------------------------------------------------------------------------------------
_live = {}  # managed-tensor address -> (structures, owner): kept alive until the deleter runs
_live_lock = threading.Lock()


def _release(address):
    with _live_lock:
        _live.pop(address, None)


@_Deleter
def _deleter_legacy(managed):
    _release(ctypes.addressof(managed.contents))


@_DeleterVersioned
def _deleter_versioned(managed):
    _release(ctypes.addressof(managed.contents))


@_CapsuleDestructor
def _capsule_destructor(capsule_address):
    # An unconsumed capsule that dies still owns its tensor: run the deleter (DLPack's rule).
    name = _capsule_get_name_raw(capsule_address)
    if name in (_NAMES[True], _NAMES[False]):
        address = _capsule_get_raw(capsule_address, name)
        if address:
            _call_deleter(address, name == _NAMES[True])


def export_capsule(ptr, shape, dtype, device_type, device_id, owner, versioned=True, read_only=False):
    """A DLPack capsule over ``ptr`` ([shape], C-contiguous, dtype "float16"/"bfloat16"/"uint8").

    ``owner`` is kept referenced until the consumer calls the deleter.
    """
    code, bits = {"float16": (_CODE_FLOAT, 16), "bfloat16": (_CODE_BFLOAT, 16), "uint8": (1, 8)}[dtype]
    ndim = len(shape)
    shape_array = (ctypes.c_int64 * max(ndim, 1))(*shape)
    managed = _ManagedVersioned() if versioned else _Managed()
    t = managed.dl_tensor
    t.data = ptr
    t.device = _Device(device_type, device_id)
    t.ndim = ndim
    t.dtype = _DataType(code, bits, 1)
    t.shape = ctypes.cast(shape_array, ctypes.POINTER(ctypes.c_int64))
    t.strides = None
    t.byte_offset = 0
    if versioned:
        managed.version = _Version(1, 0)
        managed.flags = _FLAG_READ_ONLY if read_only else 0
        managed.deleter = _deleter_versioned
    else:
        managed.deleter = _deleter_legacy
    address = ctypes.addressof(managed)
    with _live_lock:
        _live[address] = (managed, shape_array, owner)
    return _capsule_new(address, _NAMES[versioned], _capsule_destructor)


def live_exports():
    """Number of exported tensors whose consumer has not called the deleter yet (for tests)."""
    with _live_lock:
        return len(_live)
