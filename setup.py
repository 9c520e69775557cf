"""Package layout (the rest of the metadata is in pyproject.toml).

methods/, tasks/ and leaderboard/ live at the top of the repository but install as
harness.methods, harness.tasks and harness.leaderboard, so the distribution claims no generic
top-level import name. Sub-packages (one per method family) are found automatically."""
from setuptools import find_packages, setup

MAPPED = ("methods", "tasks", "leaderboard")
packages = find_packages(include=["harness", "harness.*"])
package_dir = {"harness": "harness"}
for top in MAPPED:
    packages.append(f"harness.{top}")
    package_dir[f"harness.{top}"] = top
    for sub in find_packages(top):
        packages.append(f"harness.{top}.{sub}")
        package_dir[f"harness.{top}.{sub}"] = f"{top}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
