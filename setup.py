"""Package layout (the rest of the metadata is in pyproject.toml).

methods/, tasks/, backbones/ and leaderboard/ live at the top of the repository but install as
harness.methods, harness.tasks, harness.backbones and harness.leaderboard, so the distribution
claims no generic top-level import name. Sub-packages (one per method family) are found automatically."""

from setuptools import find_packages, setup

MAPPED = ("methods", "tasks", "backbones", "leaderboard")
# folders of package data only (no __init__.py): named as packages so that setuptools ships them
# without its "Package would be ignored" warning; their files are listed in pyproject's package-data
DATA = {"harness.zoo.models": "harness/zoo/models", "harness.tasks.prompts": "tasks/prompts"}
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

setup(packages=packages, package_dir=package_dir)
