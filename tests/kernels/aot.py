"""Ahead-of-time compilation of Triton kernels for GPUs this machine need not have.

A kernel's compile gate builds every launch configuration of kernels/tiles.json (:func:`row_uses`: each
row where the launcher takes it, first match wins) for every architecture of the row's tile families
(:data:`FAMILY_ARCHS`: sm_80; sm_86, sm_89, sm_120; sm_90, sm_100, as far as the installed Triton can
target them, see :func:`targetable`: Triton 3.4 and later build all six, 3.2 not sm_100 or sm_120) with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` and reads the cubin back with the
tools the Triton wheel ships (``triton/backends/nvidia/bin``): registers, stack and static shared
memory from ``cuobjdump --dump-resource-usage``; spill (STL/LDL) and tensor-core (HMMA, HGMMA, UTCHMMA,
...) instructions from the SASS that ``nvdisasm`` prints. Dynamic shared memory and tensor memory come
from Triton's metadata: Triton kernels use dynamic shared memory, which cuobjdump does not see (from
sm_90 on, ptxas adds 1 KiB of static shared memory, which it does see).

Each build is then held against its architecture's limits (:data:`SM_LIMITS`; per-block shared memory
from vitfast.kernels.arch, the one source of those numbers): shared memory (dynamic + static) within
the per-block opt-in limit, and :func:`ctas_per_sm`, the blocks one SM holds at once by registers,
threads, shared memory, tensor memory and the block limit. sm_89 runs sm_86's build (:data:`SAME_BUILD`:
Triton emits the same PTX for both, and ptxas the same resources), checked against sm_89's limits.

Checked with Triton 3.8 (this environment) and 3.6 (the GPU machines'): the three gates pass with both.
Triton 3.4 builds everything within the limits but spills on sm_90 where 3.6 does not; Triton 3.2
(torch 2.6) crashes compiling some kernels for sm_90 (``_ast_source`` is its only API difference here).

Builds run in separate Python processes that import Triton with ``TRITON_INTERPRET=0``. Under the
interpreter (conftest.py turns it on where there is no CUDA) ``@triton.jit`` returns interpreter
objects, Triton's own library functions included, and nothing in such a process can be compiled.
A worker imports the kernel's module itself, so a kernel must live at the top level of a module.
Workers inherit the environment and get the parent's ``sys.path`` as PYTHONPATH, so
``PYTHONPATH=/some/triton-3.6 pytest ...`` compiles with that Triton.

    sig, consts, div = launch_signature({"X": torch.float16, "stride": 64, "n": 197})
    sig["BLOCK"], consts["BLOCK"] = "constexpr", 128
    result = compile_for(my_kernel, sig, consts, arch=90, num_warps=4, num_stages=3, divisible_by_16=div)
    result.registers, result.spills, result.shared_total, result.ctas_per_sm, result.tensor_cores

`compile_all` builds many requests on all cores and returns each one's result or exception;
`build_all` builds a gate's variants, each distinct build once, and prints the table (`print_table`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vitfast.kernels import arch as gpu_arch
from vitfast.kernels import tables

# Shared memory one block may opt in to, per compute capability: kernels/arch.py holds the numbers.
MAX_SHARED_BYTES = gpu_arch.SHARED_MEMORY_PER_BLOCK
# CUDA reserves 1 KiB of shared memory per resident block on compute capability 8.0 and later; an
# SM's shared memory is its largest per-block opt-in plus that reserve (164, 100 and 228 KiB).
RESERVED_SHARED_PER_BLOCK = 1024
# Shared memory is allocated to a block in units of 128 bytes (cuda_occupancy.h, 7.x and later).
SHARED_ALLOCATION_UNIT = 128
REGISTERS_PER_SM = 65536  # 64K 32-bit registers per SM (and at most 64K per block) on every arch here
# Registers are allocated per warp, in units of 256, within each of an SM's four sub-partitions (each
# holds a quarter of the register file and a quarter of the warps).
REGISTER_ALLOCATION_UNIT = 256
SM_SUBPARTITIONS = 4
# Tensor memory (sm_100): 512 columns per SM, shared by its resident blocks (Triton's own check).
TENSOR_MEMORY_COLUMNS = 512


@dataclass(frozen=True)
class SmLimits:
    threads: int  # resident threads per SM
    blocks: int  # resident blocks per SM


# CUDA C++ Programming Guide (12.8 / 13.0), "Technical Specifications per Compute Capability": maximum
# resident threads (warps × 32) and resident blocks per SM.
SM_LIMITS = {
    80: SmLimits(threads=2048, blocks=32),
    86: SmLimits(threads=1536, blocks=16),
    89: SmLimits(threads=1536, blocks=24),
    90: SmLimits(threads=2048, blocks=32),
    100: SmLimits(threads=2048, blocks=32),
    120: SmLimits(threads=1536, blocks=32),
}

# The architectures each tile family (kernels/arch.py) is built for: the GPUs users have.
FAMILY_ARCHS = {"sm_80": (80,), "sm_86": (86, 89, 120), "sm_90": (90, 100)}
# sm_89 runs sm_86's build: Triton emits the same PTX for both (the .target line apart) and ptxas gives
# the same registers, stack and shared memory (measured on every kernel; test_aot.py rechecks a few).
SAME_BUILD = {89: 86}
# The SASS opcode of the tensor-core matmul a 16-bit or TF32 dot should use on each architecture:
# mma.sync (HMMA) on sm_8x and sm_120, wgmma (HGMMA) on sm_90, tcgen05.mma (UTCHMMA) on sm_100.
TENSOR_CORE_OPS = {80: "HMMA", 86: "HMMA", 89: "HMMA", 90: "HGMMA", 100: "UTCHMMA", 120: "HMMA"}

# What Triton's JIT attaches to a pointer, or to an integer divisible by 16, when it specializes a launch.
_DIVISIBILITY = [["tt.divisibility", 16]]


def ctas_per_sm(arch: int, registers: int, num_warps: int, shared_bytes: int, tensor_memory: int = 0) -> dict[str, int]:
    """How many blocks of a kernel one SM of compute capability `arch` holds at once, by each limit:
    {"registers", "threads", "shared", "tmem", "blocks"}; the least of them is the answer.

    `registers` per thread (as ptxas reports them), `shared_bytes` per block (dynamic + static),
    `tensor_memory` in columns. A block whose registers exceed the per-block limit gets 0.
    """
    limits = SM_LIMITS[arch]
    warps_needed = -(-num_warps // SM_SUBPARTITIONS) * SM_SUBPARTITIONS  # the hardware's per-block check
    per_warp = -(-registers * 32 // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    if per_warp == 0:
        by_registers = limits.blocks
    elif per_warp * warps_needed > REGISTERS_PER_SM:
        by_registers = 0
    else:
        warps = REGISTERS_PER_SM // SM_SUBPARTITIONS // per_warp * SM_SUBPARTITIONS
        by_registers = warps // num_warps
    shared = -(-shared_bytes // SHARED_ALLOCATION_UNIT) * SHARED_ALLOCATION_UNIT + RESERVED_SHARED_PER_BLOCK
    return {
        "registers": by_registers,
        "threads": limits.threads // (num_warps * 32),
        "shared": (MAX_SHARED_BYTES[arch] + RESERVED_SHARED_PER_BLOCK) // shared,
        "tmem": TENSOR_MEMORY_COLUMNS // tensor_memory if tensor_memory else limits.blocks,
        "blocks": limits.blocks,
    }


@dataclass(frozen=True)
class AotRequest:
    """One kernel variant to build, as plain data that can travel to a worker process."""

    module: str  # where the kernel is defined, e.g. "vitfast.kernels.flash_attention"
    name: str
    signature: tuple[tuple[str, str], ...]  # (argument, type) for every argument, in order
    constexprs: tuple[tuple[str, object], ...]
    divisible_by_16: tuple[str, ...]
    arch: int  # compute capability: 80, 90, ...
    num_warps: int | None  # None: Triton's default
    num_stages: int | None
    maxnreg: int | None = None  # register cap per thread (ptxas --maxrregcount); None: ptxas decides

    @classmethod
    def of(cls, kernel, signature: Mapping[str, str], constexprs: Mapping[str, object], *, arch: int,
           num_warps: int | None = None, num_stages: int | None = None, maxnreg: int | None = None,
           divisible_by_16: Iterable[str] = ()) -> AotRequest:
        """A request for `kernel`, a ``@triton.jit`` function (interpreted or not).

        `signature` gives every argument's type: "*fp16", "*bf16", "*fp32", "i32", "i64", "fp32", or
        "constexpr" with the value in `constexprs`. `divisible_by_16` names the arguments the
        compiler may assume to be multiples of 16 (see :func:`launch_signature`).
        """
        py_fn = getattr(kernel, "fn", kernel)  # JITFunction and InterpretedFunction both keep it in .fn
        module, name = py_fn.__module__, py_fn.__qualname__
        if module == "__main__" or "<locals>" in name:
            raise ValueError(f"{module}.{name} cannot be compiled ahead of time: the worker process "
                             "imports it, so define the kernel at the top level of an importable module.")
        missing = [a for a, ty in signature.items() if ty == "constexpr" and a not in constexprs]
        if missing:
            raise ValueError(f"{name}: the constexpr arguments {missing} have no value in `constexprs`.")
        return cls(module, name, tuple(signature.items()), tuple(constexprs.items()),
                   tuple(sorted(divisible_by_16)), arch, num_warps, num_stages, maxnreg)

    def describe(self) -> str:
        return (f"{self.name} for sm_{self.arch} (num_warps={self.num_warps}, num_stages={self.num_stages}, "
                f"{', '.join(f'{k}={v!r}' for k, v in self.constexprs)})")


@dataclass(frozen=True)
class AotResult:
    """What one build needs on the GPU, read from its cubin, and how it fares on `arch`."""

    name: str
    arch: int  # the architecture whose limits apply (the build's target, or see `on`)
    num_warps: int
    num_stages: int
    registers: int  # per thread
    stack_bytes: int  # per-thread stack frame: where spilled registers go
    spill_stores: int  # STL (store to local memory) instructions in the SASS
    spill_loads: int  # LDL instructions
    shared_bytes: int  # dynamic shared memory per block (Triton's)
    static_shared_bytes: int  # static shared memory per block (the cubin's: 1 KiB from sm_90 on)
    tensor_memory: int  # tensor-memory columns per block (sm_100's tcgen05), 0 where none
    mma_ops: dict[str, int]  # matrix opcode (e.g. "HGMMA.64x64x16.F32") -> instructions in the SASS
    seconds: float = 0.0  # how long the build took (near 0 from Triton's cache)
    built_for: int | None = None  # set by `on`: the architecture the cubin was built for

    @property
    def spills(self) -> bool:
        return bool(self.stack_bytes or self.spill_stores or self.spill_loads)

    @property
    def shared_total(self) -> int:
        """Shared memory one block takes: what the launch must be allowed (dynamic + static)."""
        return self.shared_bytes + self.static_shared_bytes

    @property
    def fits_shared_memory(self) -> bool:
        return self.shared_total <= MAX_SHARED_BYTES[self.arch]

    @property
    def fits_tensor_memory(self) -> bool:
        return self.tensor_memory <= TENSOR_MEMORY_COLUMNS

    @property
    def mma_families(self) -> dict[str, int]:
        """Matrix instructions by opcode without modifiers: {"HGMMA": 24, "HMMA": 8}."""
        families: Counter[str] = Counter()
        for op, n in self.mma_ops.items():
            families[op.split(".")[0]] += n
        return dict(families)

    @property
    def tensor_cores(self) -> bool:
        """Whether the SASS has the arch's tensor-core matmul (TENSOR_CORE_OPS)."""
        return TENSOR_CORE_OPS[self.arch] in self.mma_families

    @property
    def occupancy(self) -> dict[str, int]:
        """CTAs per SM by each limit (see :func:`ctas_per_sm`)."""
        return ctas_per_sm(self.arch, self.registers, self.num_warps, self.shared_total, self.tensor_memory)

    @property
    def ctas_per_sm(self) -> int:
        return min(self.occupancy.values())

    @property
    def occupancy_limiter(self) -> str:
        """The limit that sets CTAs per SM ("registers", "threads", "shared", "tmem" or "blocks")."""
        occ = self.occupancy
        return min(occ, key=occ.get)

    def on(self, arch: int) -> AotResult:
        """This build judged by another architecture's limits: for sm_89, which runs sm_86's build."""
        return dataclasses.replace(self, arch=arch, built_for=self.built_for or self.arch)


def targetable(arch: int) -> bool:
    """Whether the installed Triton can build for sm_`arch` (probed once with a tiny kernel)."""
    return arch in _targetable_archs()


@functools.lru_cache(maxsize=None)
def _targetable_archs() -> frozenset[int]:
    import aot_probe

    archs = sorted({a for family in FAMILY_ARCHS.values() for a in family})
    results = compile_all([AotRequest.of(aot_probe.probe_dot, {"X": "*fp16", "Y": "*fp32", "BLOCK": "constexpr"},
                                         {"BLOCK": 64}, arch=a, num_warps=4, divisible_by_16=("X", "Y"))
                           for a in archs])
    return frozenset(a for a, r in zip(archs, results) if not isinstance(r, Exception))


def family_archs(families: Iterable[str]) -> tuple[int, ...]:
    """The architectures a row for these tile families runs on, that the installed Triton can target."""
    return tuple(sorted({a for f in families for a in FAMILY_ARCHS.get(f, ()) if targetable(a)}))


def build_arch(arch: int) -> int:
    """The architecture whose build runs on sm_`arch` (sm_89 runs sm_86's)."""
    return SAME_BUILD.get(arch, arch)


DTYPE_CLASSES = ("16bit", "fp32")
# What the compile gate builds for each dtype class: (element type, tl.dot input_precision). The
# launchers pass "tf32" or "ieee" for float32 (kernels/precision.py); 16-bit dots ignore it.
def build_label(config, dtype: str, precision: str) -> str:
    """A build's tile and numerics as test ids write them: "M=64-N=64-w4-s3-bf16", "...-fp32-ieee"."""
    tile = str(config).replace(" ", "-").replace(",", "")
    return f"{tile}-{dtype}-{precision}" if dtype == "fp32" else f"{tile}-{dtype}"


CLASS_NUMERICS = {"16bit": (("fp16", "tf32"), ("bf16", "tf32")), "fp32": (("fp32", "tf32"), ("fp32", "ieee"))}


@dataclass(frozen=True)
class RowUse:
    """Where the launcher takes one row of tiles.json: the first row matching (family, dtype class,
    head dim, size) is the one launched, so a row is reached only where no earlier row matches."""

    index: int  # the row's position among the kernel's rows
    row: tables.TileRow
    family: str
    dtype_class: str
    head_dims: tuple[int, ...]  # those reached among the candidates, ascending
    sizes: tuple[int, ...]


def row_uses(kernel: str, head_dims: Iterable[int], sizes: Iterable[int]) -> list[RowUse]:
    """For every GPU row of `kernel` in the tile table, each (family, dtype class) it is launched for,
    with the candidate head dims and sizes at which it is the first match."""
    rows = tables.tile_rows(kernel)
    head_dims, sizes = sorted(set(head_dims)), sorted(set(sizes))
    reached: dict[tuple[int, str, str], tuple[set[int], set[int]]] = {}
    for family in gpu_arch.FAMILIES:
        for dclass in DTYPE_CLASSES:
            for d in head_dims:
                for n in sizes:
                    i = next((i for i, r in enumerate(rows) if r.matches(family, dclass, d, n)), None)
                    if i is not None:
                        dims, ns = reached.setdefault((i, family, dclass), (set(), set()))
                        dims.add(d)
                        ns.add(n)
    return [RowUse(i, rows[i], family, dclass, tuple(sorted(dims)), tuple(sorted(ns)))
            for (i, family, dclass), (dims, ns) in sorted(reached.items())]


def launch_signature(args: Mapping[str, object]) -> tuple[dict[str, str], dict[str, object], set[str]]:
    """(signature, constexprs, divisible_by_16) for runtime arguments, specialized as a launch would.

    `args` maps each non-constexpr argument to an example value: a ``torch.dtype`` (or a type string
    such as "*fp16") for a pointer, taken as 16-byte aligned like torch's allocations; an int; a float.
    As in Triton's JIT: ints equal to 1 become constexprs, ints divisible by 16 are marked so, ints
    outside int32 are i64, floats are fp32.
    """
    signature: dict[str, str] = {}
    constexprs: dict[str, object] = {}
    divisible: set[str] = set()
    for name, value in args.items():
        if isinstance(value, bool):
            signature[name] = "u1"
        elif isinstance(value, int):
            if value == 1:
                signature[name], constexprs[name] = "constexpr", 1
                continue
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                divisible.add(name)
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            signature[name] = value if isinstance(value, str) else "*" + _triton_dtype(value)
            if signature[name].startswith("*"):
                divisible.add(name)
    return signature, constexprs, divisible


def launch_request(kernel, args: Mapping[str, object], meta: Mapping[str, object], *, arch: int,
                   num_warps: int | None = None, num_stages: int | None = None,
                   maxnreg: int | None = None) -> AotRequest:
    """A request for `kernel` specialized like a launch: `args` as for :func:`launch_signature`, `meta`
    the constexpr (block-size) arguments; the signature follows the kernel's own argument order."""
    signature, constexprs, divisible = launch_signature(args)
    signature.update(dict.fromkeys(meta, "constexpr"))
    constexprs.update(meta)
    params = list(inspect.signature(getattr(kernel, "fn", kernel)).parameters)
    missing = [p for p in params if p not in signature]
    if missing:
        raise ValueError(f"no value for the kernel arguments {missing} in `args` or `meta`.")
    return AotRequest.of(kernel, {p: signature[p] for p in params}, constexprs, arch=arch, num_warps=num_warps,
                         num_stages=num_stages, maxnreg=maxnreg, divisible_by_16=divisible)


def build_all(title: str, builds: Mapping[str, tuple[int, AotRequest]]) -> dict[str, AotResult | Exception]:
    """Compile `builds` (name -> (arch, request for build_arch(arch))), each distinct request once, and
    print the table; returns each name's result judged by its own arch's limits."""
    start = time.perf_counter()
    unique = list(dict.fromkeys(req for _, req in builds.values()))
    compiled = dict(zip(unique, compile_all(unique)))
    results = {name: r if isinstance(r := compiled[req], Exception) or r.arch == a else r.on(a)
               for name, (a, req) in builds.items()}
    print(f"\n{title}: {len(unique)} builds for {len(builds)} variants in {time.perf_counter() - start:.0f} s")
    print_table(results)
    return results


def print_table(results: Mapping[str, AotResult | Exception]) -> None:
    """One line per build: per thread registers, stack bytes and spill instructions; per block shared
    memory (dynamic + static) against the arch's limit; CTAs per SM and what limits them; matrix ops;
    seconds the build took (near 0 from Triton's cache)."""
    width = max(map(len, results), default=0) + 2
    print(f"{'variant':{width}s}{'regs':>4} {'stack':>5} {'STL/LDL':<9} {'smem':>6} {'limit':>6} "
          f"{'CTAs/SM':<14} {'matrix ops':<22} {'s':>5} flags")
    for name, r in results.items():
        if isinstance(r, Exception):
            print(f"{name:{width}s}FAILED: {str(r).splitlines()[-1] if str(r) else type(r).__name__}")
            continue
        mma = "+".join(f"{op}:{n}" for op, n in sorted(r.mma_families.items())) or "-"
        flags = " ".join(f for f, bad in (("!spill", r.spills), ("!smem", not r.fits_shared_memory),
                                          ("!tmem", not r.fits_tensor_memory)) if bad)
        built = f" (sm_{r.built_for} build)" if r.built_for else ""
        print(f"{name:{width}s}{r.registers:4d} {r.stack_bytes:5d} {r.spill_stores:>4}/{r.spill_loads:<4} "
              f"{r.shared_total:6d} {MAX_SHARED_BYTES[r.arch]:6d} {r.ctas_per_sm:2d} {r.occupancy_limiter:<11} "
              f"{mma:<22} {r.seconds:5.1f} {flags}{built}")


def check_build(result: AotResult | Exception, name: str, *, precision: str | None, no_spills: bool) -> None:
    """A compile gate's assertions for one build: it compiled and fits shared (and tensor) memory; with
    a matmul precision, "ieee" stays off tensor cores and anything else runs on the arch's
    (TENSOR_CORE_OPS); with `no_spills`, nothing spills on sm_90, the architecture the tiles are
    tuned for (spills elsewhere are printed, not asserted)."""
    if isinstance(result, Exception):
        raise result
    arch = result.arch
    assert result.fits_shared_memory, (
        f"{name} needs {result.shared_total} bytes of shared memory ({result.shared_bytes} dynamic + "
        f"{result.static_shared_bytes} static); sm_{arch} allows {MAX_SHARED_BYTES[arch]} per block. "
        "Change its row in kernels/tiles.json: smaller tiles or fewer stages.")
    assert result.fits_tensor_memory, (
        f"{name} needs {result.tensor_memory} columns of tensor memory; sm_{arch} has {TENSOR_MEMORY_COLUMNS}.")
    if precision is None:
        return
    if precision == "ieee":
        assert not result.mma_ops, f"{name} runs 'ieee' float32 matmuls on tensor cores: {result.mma_ops}"
        return
    native = TENSOR_CORE_OPS[arch]
    assert result.tensor_cores, (
        f"{name} has no {native} instruction (matrix ops: {result.mma_ops or 'none'}). "
        "On sm_90 Triton uses wgmma (HGMMA) only when a dot's M dimension fills a 64-row warp group.")
    if no_spills and arch == 90:
        assert not result.spills, (
            f"{name} spills on sm_{arch}: {result.stack_bytes} stack bytes, {result.spill_stores} STL / "
            f"{result.spill_loads} LDL. Use more warps or smaller tiles.")


def _triton_dtype(dtype) -> str:
    names = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64",
             "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64", "uint8": "u8", "bool": "i1"}
    key = str(dtype).removeprefix("torch.")
    if key not in names:
        raise ValueError(f"no Triton pointer type for {dtype!r}; pass a type string such as '*fp16'.")
    return names[key]


def compile_for(kernel, signature: Mapping[str, str], constexprs: Mapping[str, object], arch: int,
                num_warps: int | None = None, num_stages: int | None = None,
                divisible_by_16: Iterable[str] = ()) -> AotResult:
    """Build one variant of `kernel` for sm_`arch` and return what it uses; raises if it fails to build."""
    request = AotRequest.of(kernel, signature, constexprs, arch=arch, num_warps=num_warps,
                            num_stages=num_stages, divisible_by_16=divisible_by_16)
    (result,) = compile_all([request], processes=1)
    if isinstance(result, Exception):
        raise result
    return result


def compile_all(requests: Iterable[AotRequest], processes: int | None = None) -> list[AotResult | Exception]:
    """Build every request, `processes` (default: all cores) at a time.

    Returns one entry per request, in order: its result, or the exception that says why it failed.
    """
    requests = list(requests)
    results: list[AotResult | Exception | None] = [None] * len(requests)
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(requests)):
        todo.put(i)

    def drive() -> None:
        worker = _Worker()
        try:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                results[i] = worker.build(requests[i])
        finally:
            worker.close()

    n = max(1, min(processes or os.cpu_count() or 1, len(requests)))
    threads = [threading.Thread(target=drive, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [RuntimeError(f"{req.describe()}: no worker process could be started (see stderr).")
            if r is None else r for req, r in zip(requests, results)]


class _Worker:
    """A Python process with the interpreter off that builds requests sent to it as JSON lines.

    A plain subprocess rather than multiprocessing's spawn, which re-imports the parent's __main__
    (and whatever Triton that imports, under the interpreter) before running any worker code.
    """

    def __init__(self) -> None:
        path = [os.path.dirname(os.path.abspath(__file__)), *filter(None, sys.path)]
        env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=os.pathsep.join(path))
        self.proc = subprocess.Popen([sys.executable, "-c", "import aot; aot._serve()"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def build(self, req: AotRequest) -> AotResult | Exception:
        try:
            self.proc.stdin.write(json.dumps(dataclasses.asdict(req)) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            code = self.proc.wait()
            self.__init__()  # later requests get a fresh process
            return RuntimeError(f"{req.describe()}: the compiling process died (exit code {code}).")
        reply = json.loads(line)
        if "error" in reply:
            return RuntimeError(f"{req.describe()} failed to compile: {reply['error']}")
        return AotResult(**reply)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _serve() -> None:
    """Worker loop: one JSON request per line of stdin, one JSON reply per line on the original stdout."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # Triton prints ptxas failures to stdout: keep them off the reply channel
    for line in sys.stdin:
        fields = json.loads(line)
        req = AotRequest(**dict(fields, signature=tuple(map(tuple, fields["signature"])),
                                constexprs=tuple(map(tuple, fields["constexprs"])),
                                divisible_by_16=tuple(fields["divisible_by_16"])))
        try:
            reply = vars(_build(req))
        except Exception as exc:  # noqa: BLE001 - the parent raises it for this variant
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def _build(req: AotRequest) -> AotResult:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    start = time.perf_counter()
    fn = getattr(importlib.import_module(req.module), req.name)
    if not isinstance(fn, triton.runtime.JITFunction):
        raise TypeError(f"{req.module}.{req.name} is a {type(fn).__name__}, not a triton.JITFunction.")
    signature = dict(req.signature)
    if list(signature) != fn.arg_names:
        raise ValueError(f"the signature lists {list(signature)} but the kernel takes {fn.arg_names}.")
    source = _ast_source(ASTSource, fn, req)
    options = {k: v for k, v in (("num_warps", req.num_warps), ("num_stages", req.num_stages),
                                 ("maxnreg", req.maxnreg)) if v is not None}
    compiled = triton.compile(source, target=GPUTarget("cuda", req.arch, 32), options=options)
    meta = compiled.metadata
    return AotResult(name=req.name, arch=req.arch, num_warps=meta.num_warps, num_stages=meta.num_stages,
                     shared_bytes=meta.shared, tensor_memory=getattr(meta, "tmem_size", None) or 0,
                     **_cubin_facts(compiled), seconds=round(time.perf_counter() - start, 2))


def _ast_source(ast_source, fn, req: AotRequest):
    """``ASTSource`` as this Triton takes it: from 3.3 on, every argument is in the signature (constexprs
    typed "constexpr") and constexprs and attributes are keyed by argument-index tuples; Triton 3.2 names
    only runtime arguments in the signature, keys constants by name and takes an AttrsDescriptor."""
    index = {a: i for i, a in enumerate(fn.arg_names)}
    if "constexprs" in inspect.signature(ast_source).parameters:
        return ast_source(fn, dict(req.signature), constexprs={(index[a],): v for a, v in req.constexprs},
                          attrs={(index[a],): _DIVISIBILITY for a in req.divisible_by_16})
    from triton.backends.compiler import AttrsDescriptor

    declared = {p.name for p in fn.params if p.is_constexpr}  # the rest of req's constexprs are ints equal to 1
    signature = {a: "i32" if ty == "constexpr" else ty for a, ty in req.signature if a not in declared}
    hints = {index[a]: 16 for a in req.divisible_by_16} | {index[a]: 1 for a, _ in req.constexprs if a not in declared}
    return ast_source(fn, signature, dict(req.constexprs), AttrsDescriptor.from_hints(hints))


def _cubin_facts(compiled) -> dict:
    """Registers, stack, static shared memory, spill and matrix instructions of a build, kept next to
    it in Triton's cache."""
    from triton.runtime.cache import get_cache_manager

    cache = get_cache_manager(compiled.hash)
    cached = cache.get_file("aot_cubin_facts_v2.json")
    if cached is not None:
        with open(cached) as f:
            return json.load(f)
    usage, sass = _inspect(compiled.asm["cubin"])
    # SASS lines read "/*0a30*/   @!P0 HMMA.16816.F32 R52, ..."; count opcodes after the optional predicate.
    opcodes = Counter(re.findall(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][\w.]*)", sass, re.M))

    def count(prefix: str) -> int:
        return sum(n for op, n in opcodes.items() if op.split(".")[0] == prefix)

    # Matrix instructions: HMMA (mma.sync), HGMMA (wgmma), UTCHMMA/UTCQMMA/... (tcgen05.mma), IMMA, DMMA.
    facts = dict(registers=_usage(usage, "REG"), stack_bytes=_usage(usage, "STACK"),
                 static_shared_bytes=_usage(usage, "SHARED"), spill_stores=count("STL"), spill_loads=count("LDL"),
                 mma_ops={op: n for op, n in opcodes.items() if op.split(".")[0].endswith("MMA")})
    cache.put(json.dumps(facts), "aot_cubin_facts_v2.json", binary=False)
    return facts


def _usage(report: str, key: str) -> int:
    match = re.search(rf"\b{key}:(\d+)", report.split("Function", 1)[-1])
    if match is None:
        raise ValueError(f"cuobjdump reported no {key}:\n{report}")
    return int(match.group(1))


def _inspect(cubin: bytes) -> tuple[str, str]:
    """(resource usage, SASS) of a cubin, from the cuobjdump and nvdisasm shipped with Triton."""
    import triton

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "--dump-resource-usage", path],
                               check=True, capture_output=True, text=True).stdout
        # Code sections only, without the branch-target analysis: the same instructions, 20% faster
        # than `cuobjdump -sass`.
        sass = subprocess.run([os.path.join(bin_dir, "nvdisasm"), "--print-code", "--no-dataflow", path],
                              check=True, capture_output=True, text=True).stdout
    return usage, sass
