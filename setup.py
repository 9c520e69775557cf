"""Package layout (the rest of the metadata is in pyproject.toml).

methods/, tasks/, backbones/ and leaderboard/ live at the top of the repository but install as
harness.methods, harness.tasks, harness.backbones and harness.leaderboard, so the distribution
claims no generic top-level import name. Sub-packages (one per method family) are found automatically.

Both wheel builds (regular and editable) also install `harness_eval_lm_eval.pth` into
site-packages: at interpreter start it arms a hook that registers lm-eval's `--model harness`
when lm-eval loads (lm-eval 0.4.13 has no plugin mechanism; see tasks/lm_eval/_hook.py)."""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

MAPPED = ("methods", "tasks", "backbones", "leaderboard")
# folders of package data only (no __init__.py): named as packages so that setuptools ships them
# without its "Package would be ignored" warning; their files are listed in pyproject's package-data
DATA = {"harness.zoo.models": "harness/zoo/models", "harness.backbones.data": "backbones/data"}
packages = find_packages(include=["harness", "harness.*"])
package_dir = {"harness": "harness"}
for top in MAPPED:
    packages.append(f"harness.{top}")
    package_dir[f"harness.{top}"] = top
    for sub in find_packages(top):
        packages.append(f"harness.{top}.{sub}")
        package_dir[f"harness.{top}.{sub}"] = f"{top}/{sub.replace('.', '/')}"
packages += list(DATA)
package_dir.update(DATA)

PTH = "harness_eval_lm_eval.pth"
PTH_LINE = "import harness.tasks.lm_eval._hook as _h; _h.install()\n"


class build_py_with_pth(build_py):
    """Regular wheels: the .pth goes to the root of build_lib, i.e. of site-packages."""

    def run(self):
        super().run()
        if not self.editable_mode:
            Path(self.build_lib, PTH).write_text(PTH_LINE)

    def get_outputs(self, include_bytecode=True):
        extra = [] if self.editable_mode else [str(Path(self.build_lib, PTH))]
        return super().get_outputs(include_bytecode) + extra


class editable_wheel_with_pth(editable_wheel):
    """Editable installs (`pip install -e .`): the .pth goes next to setuptools' own."""

    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        Path(installation_dir, PTH).write_text(PTH_LINE)


setup(
    packages=packages,
    package_dir=package_dir,
    cmdclass={"build_py": build_py_with_pth, "editable_wheel": editable_wheel_with_pth},
)
