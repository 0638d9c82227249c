"""Build hook: generate the gRPC stubs (archloop/v1) from protos/ before packaging.

All metadata lives in pyproject.toml; this file only adds the code-generation step, which runs for
regular and editable installs alike.
"""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate = runpy.run_path(str(ROOT / "protos" / "generate.py"))["generate"]
        generate(ROOT)
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
