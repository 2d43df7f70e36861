"""Benchmarks: the library half of `vitfast bench`, in the manner of Liger-Kernel's benchmarks (one shared
harness; per op only its cases, its call and its FLOP count).

- ``harness``: how a call is measured (median time, peak memory), the guard that turns a failed case
  into a status, device defaults and the environment recorded with results.
- ``sweep``: the one mode × case × backend loop, its argument checks, the kernel row, and ``Sweep``, a
  benchmark with every argument settled as the commands and ``bench all`` run it.
- ``report``: JSON, CSV, speedups, plots and the tables the commands print.
- ``attention``, ``window``, ``clip_loss`` (with its largest-batch search), ``model`` (whole models
  beside timm / open_clip): each benchmark, with the ``plan`` its command calls.
- ``suite``: `vitfast bench all`, every sweep and a summary.

Import the modules themselves (``from vitfast.bench import attention``); this file imports nothing, so
that loading one benchmark does not load the others.
"""
