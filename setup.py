"""Build fastattn: the pybind11 extensions come from CMake + Ninja, the rest is pure Python.

The pattern is vLLM's ``cmake_build_ext``: each extension is a ``CMakeExtension`` with no
sources naming a CMake target; ``csrc/`` is configured once (Ninja generator), the targets
are built in one Ninja run, and each module is copied where setuptools expects it (the
wheel's staging dir, or the source tree for ``pip install -e .``).

Environment knobs (all optional):

``FASTATTN_BUILD_CUDA``   auto (default) | 1 | 0: build ``fastattn._cuda`` when nvcc is
                          found / always (a missing nvcc is an error) / never.
``FASTATTN_CUDA_ARCHS``   semicolon list, default ``80;86;89;90a``.
``FASTATTN_BUILD_TYPE``   CMake build type, default Release.
``FASTATTN_BUILD_DIR``    the CMake build tree, default ``build/cmake-<python>-<type>``.
                          It persists between builds, so rebuilds are incremental (even
                          for editable installs, whose setuptools build dirs are temporary).
``MAX_JOBS``              parallel compile jobs; default: CPUs, capped by free memory.
``CMAKE_ARGS``            extra arguments passed to the CMake configure step.
``VERBOSE=1``             show the compiler command lines.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()

DEFAULT_CUDA_ARCHS = "80;86;89;90a"

# Memory one compile job may take at peak; nvcc on a template-heavy kernel TU is the
# worst case. Used to cap the job count on small machines instead of thrashing.
_GIB_PER_JOB = 1.5


class CMakeExtension(Extension):
    """A Python extension module produced by the CMake target ``target``."""

    def __init__(self, name: str, target: str, optional: bool = False) -> None:
        super().__init__(name, sources=[], optional=optional)
        self.target = target


# Every pybind11 module that csrc/CMakeLists.txt may define. Optional ones are skipped
# when CMake did not define them (no nvcc, FASTATTN_BUILD_CUDA=0, no csrc/sim yet).
EXTENSIONS = [
    CMakeExtension("fastattn._C", "_C"),
    CMakeExtension("fastattn._cuda", "_cuda", optional=True),
    CMakeExtension("fastattn._cuda_sim", "_cuda_sim", optional=True),
]


def _max_jobs() -> int:
    if os.environ.get("MAX_JOBS"):
        return max(1, int(os.environ["MAX_JOBS"]))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        avail_gib = int(info["MemAvailable"].split()[0]) / 2**20
        cpus = min(cpus, max(1, int(avail_gib / _GIB_PER_JOB)))
    except (OSError, KeyError, ValueError):
        pass
    return cpus


def _tool(module: str, exe: str) -> str:
    """Prefer the pip-installed cmake/ninja (a build requirement) over whatever is on PATH."""
    try:
        mod = __import__(module)
        candidate = Path(getattr(mod, "BIN_DIR", getattr(mod, "CMAKE_BIN_DIR", ""))) / exe
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which(exe)
    if found is None:
        raise RuntimeError(f"{exe} not found: pip install {module}")
    return found


class cmake_build_ext(build_ext):
    """Configure csrc/, build every module target in one Ninja run, copy each module."""

    def _build_dir(self) -> Path:
        if os.environ.get("FASTATTN_BUILD_DIR"):
            return Path(os.environ["FASTATTN_BUILD_DIR"]).resolve()
        build_type = os.environ.get("FASTATTN_BUILD_TYPE", "Release")
        tag = f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}-{build_type}".lower()
        return ROOT / "build" / f"cmake-{tag}"

    def _configure(self) -> Path:
        """Run the CMake configure step (cheap when the build tree exists) and return it."""
        import pybind11

        build_dir = self._build_dir()
        build_dir.mkdir(parents=True, exist_ok=True)
        jobs = _max_jobs()
        args = [
            _tool("cmake", "cmake"),
            "-S", str(ROOT / "csrc"),
            "-B", str(build_dir),
            "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={_tool('ninja', 'ninja')}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('FASTATTN_BUILD_TYPE', 'Release')}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DFASTATTN_BUILD_CUDA={os.environ.get('FASTATTN_BUILD_CUDA', 'auto')}",
            # Always passed, so a value from an earlier build never lingers in the cache.
            f"-DFASTATTN_CUDA_ARCHS={os.environ.get('FASTATTN_CUDA_ARCHS', DEFAULT_CUDA_ARCHS)}",
            f"-DFASTATTN_JOBS={jobs}",
        ]
        if shutil.which("ccache"):
            args += [f"-DCMAKE_{lang}_COMPILER_LAUNCHER=ccache" for lang in ("C", "CXX", "CUDA")]
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        print(f"fastattn: configuring {build_dir} with {jobs} compile job(s)", flush=True)
        subprocess.check_call(args)
        return build_dir

    def _modules(self, build_dir: Path) -> dict[str, str]:
        """{target: path of the built module file}, as CMake wrote it at configure time."""
        manifest = build_dir / "fastattn_modules.txt"
        modules = {}
        for line in manifest.read_text().splitlines():
            if line.strip():
                target, path = line.split("=", 1)
                modules[target] = path
        known = {ext.target for ext in self.extensions}
        unknown = sorted(set(modules) - known)
        if unknown:
            raise RuntimeError(
                f"csrc/CMakeLists.txt defines module(s) {unknown} that setup.py does not "
                "know: add a CMakeExtension for each to EXTENSIONS in setup.py"
            )
        return modules

    def build_extensions(self) -> None:
        # One build of every module target, so Ninja overlaps all their compile jobs.
        build_dir = self._configure()
        modules = self._modules(build_dir)
        targets = [ext.target for ext in self.extensions if ext.target in modules]
        cmd = [_tool("cmake", "cmake"), "--build", str(build_dir), "-j", str(_max_jobs()),
               "--target", *targets]
        if os.environ.get("VERBOSE"):
            cmd.append("--verbose")
        subprocess.check_call(cmd)
        for ext in self.extensions:
            self._install(ext, modules)

    def _install(self, ext: CMakeExtension, modules: dict[str, str]) -> None:
        """Copy the built module where setuptools expects ``ext`` (wheel staging dir; the
        editable install copies it on into the source tree)."""
        if ext.target not in modules:
            if not ext.optional:
                raise RuntimeError(f"CMake did not define the required target {ext.target}")
            print(f"fastattn: skipping {ext.name} (CMake did not define {ext.target})", flush=True)
            return
        built = Path(modules[ext.target])
        dest = Path(self.get_ext_fullpath(ext.name))
        if built.name != dest.name:
            raise RuntimeError(f"CMake built {built.name} but Python expects {dest.name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, dest)

setup(
    # kernels/ (Triton) ships as fastattn.kernels, never as a top-level "kernels" package.
    packages=find_packages(include=["fastattn", "fastattn.*"])
    + ["fastattn.kernels"]
    + [f"fastattn.kernels.{p}" for p in find_packages("kernels")],
    package_dir={"fastattn.kernels": "kernels"},
    # The measured CPU crossovers (decoding, feed-forward size floors) that backend="auto" reads.
    package_data={"fastattn.backends.cpu": ["*_crossover.json"]},
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": cmake_build_ext},
    zip_safe=False,
)
