"""The package mapping: stage folders install as sampleiqa.<stage>, and serving/clients
stay free of torch."""

import subprocess
import sys

import tomllib

from .helpers import REPO_ROOT


def test_every_python_package_folder_is_listed_in_pyproject():
    tool = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = tool["package-dir"]
    on_disk = set()
    for package, folder in mapping.items():
        for init in (REPO_ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO_ROOT / folder).parts
            if package != "sampleiqa" or not rel or rel[0] not in {k.split(".")[1] for k in mapping if "." in k}:
                on_disk.add(".".join((package, *rel)))
    assert on_disk == set(tool["packages"])


def test_scoring_path_never_imports_torch():
    code = (
        "import sys, sampleiqa.cli, sampleiqa.clients, sampleiqa.clients.aio, sampleiqa.clients.bulk, "
        "sampleiqa.server, sampleiqa.runtime.preprocessing, sampleiqa.build.triton_config, "
        "sampleiqa.clients.ray_driver, sampleiqa.clients.ray_engine, ray.data; "
        "sampleiqa.cli.build_parser(); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
