"""Benchmarks: the library half of `vitfast bench`, in the manner of Liger-Kernel's benchmarks (one shared
harness; per op only its cases, its call and its FLOP count). Top down: ``suite`` (`vitfast bench all`), the
benchmarks (``attention``, ``window``, ``clip_loss``, ``model``, each with the ``plan`` its command calls),
``sweep`` (the one mode × case × backend loop and ``Sweep``, a benchmark with every argument settled), then
``harness`` (measuring a call, device defaults, the environment) and ``report`` (files, plots, tables).

Import the modules themselves (``from vitfast.bench import attention``); this file imports nothing, so
that loading one benchmark does not load the others.
"""
