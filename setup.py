"""setuptools needs this file to hand the cffi module and the C fast path to the build."""

from setuptools import Extension, setup

fastpath = Extension(
    "shmslice._fastpath",
    sources=["csrc/fastpath.c", "csrc/slice.c"],
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                        "-Wno-cast-function-type", "-Wno-unused-parameter"],
)

setup(cffi_modules=["build_ffi.py:ffibuilder"], ext_modules=[fastpath])
