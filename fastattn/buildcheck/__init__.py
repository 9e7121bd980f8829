"""Build verification: what the compilers say about every GPU kernel, with no GPU.

* :mod:`~fastattn.buildcheck.triton_aot`: every Triton config the autotuners can pick, compiled
  ahead of time for sm_80..sm_90 (registers, spills, shared memory, occupancy; cached on disk).
* :mod:`~fastattn.buildcheck.ptxas`: nvcc's ``-Xptxas -v`` report of every CUDA C++ kernel.
* :mod:`~fastattn.buildcheck.kernel_report`: both merged into one table
  (``python -m fastattn info --kernels``).
* :mod:`~fastattn.buildcheck.sass`, :mod:`~fastattn.buildcheck.sass_ceiling`,
  :mod:`~fastattn.buildcheck.sass_report`: the main-loop machine-code analysis and its static
  throughput ceilings (``info --kernels --sass``).

Only the command line, the tests and ``benchmarks/static_analysis.py`` import this package;
no runtime module does (``tests/test_import_layers.py``), so importing ``fastattn`` never
loads a compiler driver. Importing this package imports none of its modules.
"""
