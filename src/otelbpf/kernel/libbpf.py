"""ctypes bindings to libbpf.so.1 (>= 1.1): only the functions the agent uses.

Importing this module does no work: libbpf is opened, its print callback installed and each
function bound on first use (module __getattr__), so `otelbpf --help`, the store commands
and unprivileged tests never touch libbpf. libbpf's own log goes through one print
callback; we keep the most recent lines so that a failed load can show the verifier's
reasons in the exception it raises.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import threading

c_int, c_uint, c_char_p, c_void_p, c_size_t = (
    ctypes.c_int, ctypes.c_uint, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t)
c_u32, c_u64, c_bool = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_bool

LIBBPF_MIN_VERSION = (1, 1)


class LibbpfMissing(ImportError):
    """libbpf.so.1 cannot be opened on this host."""


_lib: ctypes.CDLL | None = None
_bind_lock = threading.Lock()
_SIGNATURES: dict[str, tuple] = {}  # function name -> (restype, *argtypes), bound on first use


def _load() -> ctypes.CDLL:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise LibbpfMissing("libbpf.so.1 not found: install it (Debian: apt-get install libbpf1)")


def library() -> ctypes.CDLL:
    """libbpf, opened once, with our print callback installed before any other call."""
    global _lib
    with _bind_lock:
        if _lib is None:
            lib = _load()
            set_print = lib.libbpf_set_print
            set_print.restype, set_print.argtypes = c_void_p, [PRINT_FN]
            set_print(_print_cb)
            _lib = lib
        return _lib


def _fn(name: str, restype, *argtypes) -> None:
    """Declares a libbpf function; it is bound when first used."""
    _SIGNATURES[name] = (restype, *argtypes)


def __getattr__(name: str):
    signature = _SIGNATURES.get(name)
    if signature is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    f = getattr(library(), name)
    f.restype, f.argtypes = signature[0], list(signature[1:])
    globals()[name] = f  # later uses find it without coming here
    return f


# --- version ---------------------------------------------------------------------------
_fn("libbpf_major_version", c_u32)
_fn("libbpf_minor_version", c_u32)


def version() -> tuple[int, int]:
    return __getattr__("libbpf_major_version")(), __getattr__("libbpf_minor_version")()


# --- log capture -----------------------------------------------------------------------
PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
_vsnprintf = ctypes.CDLL(None).vsnprintf  # libc, already mapped into every process
_vsnprintf.restype = c_int
_vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]

_log_lock = threading.Lock()
_log_lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=400)
_log_seq = 0
_print_buffer: ctypes.Array | None = None  # made on libbpf's first print
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
_log_level = LIBBPF_INFO


@PRINT_FN
def _print_cb(level: int, fmt: bytes, va_list: int) -> int:
    global _log_seq, _print_buffer
    if level > _log_level:
        return 0
    with _log_lock:
        if _print_buffer is None:
            _print_buffer = ctypes.create_string_buffer(4 << 20)
        # One buffer big enough for a whole verifier log (libbpf prints it in one call and a
        # va_list cannot be replayed): its end holds the reason for a rejection.
        n = _vsnprintf(_print_buffer, len(_print_buffer), fmt, va_list)
        text = _print_buffer.value.decode("utf-8", "replace")
        for line in text.splitlines():
            _log_seq += 1
            _log_lines.append((_log_seq, line))
    return n


def log_mark() -> int:
    """A position in libbpf's log, so a caller can take the lines written after it."""
    with _log_lock:
        return _log_seq


def log_since(mark: int) -> str:
    with _log_lock:
        return "\n".join(line for seq, line in _log_lines if seq > mark)


# --- objects and programs --------------------------------------------------------------
_fn("bpf_object__open_file", c_void_p, c_char_p, c_void_p)
_fn("bpf_object__load", c_int, c_void_p)
_fn("bpf_object__close", None, c_void_p)
_fn("bpf_object__name", c_char_p, c_void_p)
_fn("bpf_object__btf", c_void_p, c_void_p)
_fn("bpf_object__next_program", c_void_p, c_void_p, c_void_p)
_fn("bpf_object__next_map", c_void_p, c_void_p, c_void_p)
_fn("bpf_object__find_program_by_name", c_void_p, c_void_p, c_char_p)
_fn("bpf_object__find_map_by_name", c_void_p, c_void_p, c_char_p)

_fn("bpf_program__name", c_char_p, c_void_p)
_fn("bpf_program__section_name", c_char_p, c_void_p)
_fn("bpf_program__fd", c_int, c_void_p)
_fn("bpf_program__set_autoload", c_int, c_void_p, c_bool)
_fn("bpf_program__autoload", c_bool, c_void_p)
_fn("bpf_program__attach", c_void_p, c_void_p)
_fn("bpf_program__attach_perf_event", c_void_p, c_void_p, c_int)
_fn("bpf_program__attach_cgroup", c_void_p, c_void_p, c_int)
_fn("bpf_program__attach_iter", c_void_p, c_void_p, c_void_p)
_fn("bpf_iter_create", c_int, c_int)
_fn("bpf_program__attach_tracepoint", c_void_p, c_void_p, c_char_p, c_char_p)


class bpf_uprobe_opts(ctypes.Structure):
    # libbpf 1.1 layout; `sz` lets newer libbpf versions accept it.
    _fields_ = [
        ("sz", c_size_t),
        ("ref_ctr_offset", c_size_t),
        ("bpf_cookie", c_u64),
        ("retprobe", c_bool),
        ("func_name", c_char_p),
    ]


_fn("bpf_program__attach_uprobe_opts", c_void_p, c_void_p, c_int, c_char_p, c_size_t,
    ctypes.POINTER(bpf_uprobe_opts))

_fn("bpf_link__destroy", c_int, c_void_p)
_fn("bpf_link__fd", c_int, c_void_p)

# --- maps ------------------------------------------------------------------------------
_fn("bpf_map__name", c_char_p, c_void_p)
_fn("bpf_map__fd", c_int, c_void_p)
_fn("bpf_map__type", c_int, c_void_p)
_fn("bpf_map__key_size", c_u32, c_void_p)
_fn("bpf_map__value_size", c_u32, c_void_p)
_fn("bpf_map__max_entries", c_u32, c_void_p)
_fn("bpf_map__set_max_entries", c_int, c_void_p, c_u32)
_fn("bpf_map__set_value_size", c_int, c_void_p, c_u32)
_fn("bpf_map__initial_value", c_void_p, c_void_p, ctypes.POINTER(c_size_t))
_fn("bpf_map__set_initial_value", c_int, c_void_p, c_void_p, c_size_t)

_fn("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
_fn("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, c_u64)
_fn("bpf_map_delete_elem", c_int, c_int, c_void_p)
_fn("bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p)


class bpf_map_batch_opts(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_u64), ("flags", c_u64)]


_fn("bpf_map_lookup_and_delete_batch", c_int, c_int, c_void_p, c_void_p, c_void_p, c_void_p,
    ctypes.POINTER(c_u32), ctypes.POINTER(bpf_map_batch_opts))
_fn("bpf_map_lookup_batch", c_int, c_int, c_void_p, c_void_p, c_void_p, c_void_p,
    ctypes.POINTER(c_u32), ctypes.POINTER(bpf_map_batch_opts))

_fn("bpf_map_create", c_int, c_int, c_char_p, c_u32, c_u32, c_u32, c_void_p)
_fn("libbpf_num_possible_cpus", c_int)
_fn("libbpf_probe_bpf_prog_type", c_int, c_int, c_void_p)
_fn("libbpf_probe_bpf_map_type", c_int, c_int, c_void_p)
_fn("libbpf_probe_bpf_helper", c_int, c_int, c_int, c_void_p)

# --- program runs (BPF_PROG_RUN) and program info --------------------------------------


class bpf_test_run_opts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_u32),
        ("data_size_out", c_u32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_u32),
        ("ctx_size_out", c_u32),
        ("retval", c_u32),
        ("repeat", c_int),
        ("duration", c_u32),
        ("flags", c_u32),
        ("cpu", c_u32),
        ("batch_size", c_u32),
    ]


_fn("bpf_prog_test_run_opts", c_int, c_int, ctypes.POINTER(bpf_test_run_opts))


class bpf_prog_info(ctypes.Structure):
    """The head of struct bpf_prog_info up to the run-time statistics (uapi order)."""

    _fields_ = [
        ("type", c_u32), ("id", c_u32), ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", c_u32), ("xlated_prog_len", c_u32),
        ("jited_prog_insns", c_u64), ("xlated_prog_insns", c_u64),
        ("load_time", c_u64), ("created_by_uid", c_u32), ("nr_map_ids", c_u32),
        ("map_ids", c_u64), ("name", ctypes.c_char * 16), ("ifindex", c_u32),
        ("gpl_compatible", c_u32), ("netns_dev", c_u64), ("netns_ino", c_u64),
        ("nr_jited_ksyms", c_u32), ("nr_jited_func_lens", c_u32),
        ("jited_ksyms", c_u64), ("jited_func_lens", c_u64), ("btf_id", c_u32),
        ("func_info_rec_size", c_u32), ("func_info", c_u64), ("nr_func_info", c_u32),
        ("nr_line_info", c_u32), ("line_info", c_u64), ("jited_line_info", c_u64),
        ("nr_jited_line_info", c_u32), ("line_info_rec_size", c_u32),
        ("jited_line_info_rec_size", c_u32), ("nr_prog_tags", c_u32), ("prog_tags", c_u64),
        ("run_time_ns", c_u64), ("run_cnt", c_u64),
    ]


_fn("bpf_obj_get_info_by_fd", c_int, c_int, c_void_p, ctypes.POINTER(c_u32))

# --- ring buffer (libbpf's callback path; the agent uses kernel.ringbuf instead) ---------
RING_BUFFER_SAMPLE_FN = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
_fn("ring_buffer__new", c_void_p, c_int, RING_BUFFER_SAMPLE_FN, c_void_p, c_void_p)
_fn("ring_buffer__poll", c_int, c_void_p, c_int)
_fn("ring_buffer__free", None, c_void_p)

# --- BTF -------------------------------------------------------------------------------
_fn("btf__find_by_name_kind", ctypes.c_int32, c_void_p, c_char_p, c_u32)
_fn("btf__type_by_id", c_void_p, c_void_p, c_u32)
_fn("btf__name_by_offset", c_char_p, c_void_p, c_u32)
_fn("btf__resolve_size", ctypes.c_int64, c_void_p, c_u32)
_fn("btf__resolve_type", c_int, c_void_p, c_u32)


def errno_of(ret: int | None) -> int:
    """libbpf returns -errno or NULL + errno; normalise both to a positive errno."""
    if ret is None or ret == 0:
        return ctypes.get_errno() or 1
    return -ret if ret < 0 else ret
