"""Ahead-of-time compilation of Triton kernels for GPUs this machine need not have.

A kernel's compile gate builds every launch configuration for sm_80 and sm_90 with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` and reads the cubin back with
the tools the Triton wheel ships (``triton/backends/nvidia/bin``): registers and stack from
``cuobjdump --dump-resource-usage``; spill (STL/LDL) and tensor-core (HMMA/HGMMA) instructions from
the SASS that ``nvdisasm`` prints. Shared memory comes from Triton's metadata: Triton kernels use
dynamic shared memory only, which cuobjdump does not see.

Builds run in separate Python processes that import Triton with ``TRITON_INTERPRET=0``. Under the
interpreter (conftest.py turns it on where there is no CUDA) ``@triton.jit`` returns interpreter
objects, Triton's own library functions included, and nothing in such a process can be compiled.
A worker imports the kernel's module itself, so a kernel must live at the top level of a module.

    sig, consts, div = launch_signature({"X": torch.float16, "stride": 64, "n": 197})
    sig["BLOCK"], consts["BLOCK"] = "constexpr", 128
    result = compile_for(my_kernel, sig, consts, arch=90, num_warps=4, num_stages=3, divisible_by_16=div)
    result.registers, result.spills, result.shared_bytes, result.tensor_cores

`compile_all` builds many requests on all cores and returns each one's result or exception.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Shared memory one block may opt in to (CUDA programming guide, "Technical Specifications per
# Compute Capability"): 163 KiB on compute capability 8.0 (A100), 227 KiB on 9.0 (H100).
MAX_SHARED_BYTES = {80: 163 * 1024, 90: 227 * 1024}

# What Triton's JIT attaches to a pointer, or to an integer divisible by 16, when it specializes a launch.
_DIVISIBILITY = [["tt.divisibility", 16]]


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
    """What one build needs on the GPU, read from its cubin."""

    name: str
    arch: int
    num_warps: int
    num_stages: int
    registers: int  # per thread
    stack_bytes: int  # per-thread stack frame: where spilled registers go
    spill_stores: int  # STL (store to local memory) instructions in the SASS
    spill_loads: int  # LDL instructions
    shared_bytes: int  # dynamic shared memory per block
    mma_ops: dict[str, int]  # tensor-core opcode (e.g. "HGMMA.64x64x16.F32") -> instructions in the SASS

    @property
    def spills(self) -> bool:
        return bool(self.stack_bytes or self.spill_stores or self.spill_loads)

    @property
    def tensor_cores(self) -> bool:
        """Whether the SASS has the arch's tensor-core matmul: HGMMA (wgmma) on sm_90, HMMA before."""
        native = "HGMMA" if self.arch >= 90 else "HMMA"
        return any(op.split(".")[0] == native for op in self.mma_ops)

    @property
    def fits_shared_memory(self) -> bool:
        return self.shared_bytes <= MAX_SHARED_BYTES[self.arch]


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


def print_results(title: str, results: Mapping[str, AotResult | Exception]) -> None:
    """One line per build: registers, stack bytes, shared memory and tensor-core ops (or why it failed)."""
    width = max(map(len, results), default=0) + 2
    print(f"\n{title}: registers, stack bytes, shared memory, tensor-core ops")
    for name, r in results.items():
        print(f"{name:{width}s}" + (f"FAILED: {r}" if isinstance(r, Exception) else
                                    f"{r.registers:4d} {r.stack_bytes:5d} {r.shared_bytes:7d} {dict(r.mma_ops)}"))


def compile_variants(title: str, variants: Iterable[tuple], name, request) -> dict[str, AotResult | Exception]:
    """Build ``request(*variant)`` for each variant, keyed by ``name(variant)``; print the results under `title`."""
    variants = list(variants)
    results = dict(zip(map(name, variants), compile_all(request(*v) for v in variants)))
    print_results(title, results)
    return results


def check_build(result: AotResult | Exception, name: str, *, precision: str | None, no_spills: bool) -> None:
    """A compile gate's assertions for one build: it compiled and fits shared memory; with a matmul
    precision, "ieee" stays off tensor cores and anything else runs on them (HGMMA on sm_90, HMMA
    before); with `no_spills`, nothing spills on sm_90 and later."""
    if isinstance(result, Exception):
        raise result
    arch = result.arch
    assert result.fits_shared_memory, (
        f"{name} needs {result.shared_bytes} bytes of shared memory; sm_{arch} allows {MAX_SHARED_BYTES[arch]} "
        "per block. Use smaller tiles or fewer stages.")
    if precision is None:
        return
    if precision == "ieee":
        assert not result.mma_ops, f"{name} runs 'ieee' float32 matmuls on tensor cores: {result.mma_ops}"
        return
    native = "HGMMA" if arch >= 90 else "HMMA"
    assert result.tensor_cores, (
        f"{name} has no {native} instruction (tensor-core ops: {result.mma_ops or 'none'}). "
        "On sm_90 Triton uses wgmma (HGMMA) only when a dot's M dimension fills a 64-row warp group.")
    if no_spills and arch >= 90:
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

    fn = getattr(importlib.import_module(req.module), req.name)
    if not isinstance(fn, triton.runtime.JITFunction):
        raise TypeError(f"{req.module}.{req.name} is a {type(fn).__name__}, not a triton.JITFunction.")
    signature = dict(req.signature)
    if list(signature) != fn.arg_names:
        raise ValueError(f"the signature lists {list(signature)} but the kernel takes {fn.arg_names}.")
    index = {a: i for i, a in enumerate(fn.arg_names)}
    source = ASTSource(fn, signature, constexprs={(index[a],): v for a, v in req.constexprs},
                       attrs={(index[a],): _DIVISIBILITY for a in req.divisible_by_16})
    options = {k: v for k, v in (("num_warps", req.num_warps), ("num_stages", req.num_stages),
                                 ("maxnreg", req.maxnreg)) if v is not None}
    compiled = triton.compile(source, target=GPUTarget("cuda", req.arch, 32), options=options)

    return AotResult(name=req.name, arch=req.arch, num_warps=compiled.metadata.num_warps,
                     num_stages=compiled.metadata.num_stages, shared_bytes=compiled.metadata.shared,
                     **_cubin_facts(compiled))


def _cubin_facts(compiled) -> dict:
    """Registers, stack, spill and tensor-core instructions of a build, kept next to it in Triton's cache."""
    from triton.runtime.cache import get_cache_manager

    cache = get_cache_manager(compiled.hash)
    cached = cache.get_file("aot_cubin_facts.json")
    if cached is not None:
        with open(cached) as f:
            return json.load(f)
    usage, sass = _inspect(compiled.asm["cubin"])
    # SASS lines read "/*0a30*/   @!P0 HMMA.16816.F32 R52, ..."; count opcodes after the optional predicate.
    opcodes = Counter(re.findall(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][\w.]*)", sass, re.M))

    def count(prefix: str) -> int:
        return sum(n for op, n in opcodes.items() if op.split(".")[0] == prefix)

    facts = dict(registers=_usage(usage, "REG"), stack_bytes=_usage(usage, "STACK"),
                 spill_stores=count("STL"), spill_loads=count("LDL"),
                 mma_ops={op: n for op, n in opcodes.items() if op.split(".")[0] in ("HMMA", "HGMMA")})
    cache.put(json.dumps(facts), "aot_cubin_facts.json", binary=False)
    return facts


def _usage(report: str, key: str) -> int:
    match = re.search(rf"\b{key}:(\d+)", report)
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
