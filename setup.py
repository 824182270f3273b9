"""Builds the native sampling core `fastmix.kernels._native` from `csrc/` (pybind11, C++17)."""

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "fastmix.kernels._native",
        sources=["csrc/module.cpp"],
        include_dirs=["csrc"],
        depends=sorted(glob("csrc/*.hpp")),  # a header change rebuilds the module
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
