"""setuptools needs this file only to hand the cffi module to the build."""

from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder"])
