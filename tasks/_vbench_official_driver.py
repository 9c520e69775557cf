"""Run by `vbench_official` with the interpreter of a separate environment that has the official
`vbench` package (it pins old transformers and numpy<2, so it cannot share the harness's
environment). Reads its arguments, calls VBench's documented Python API in custom-input mode, and
prints the path of the `<name>_eval_results.json` it wrote plus the package version as JSON."""

import argparse
import json
import os
import sys

# this file sits next to the harness's own tasks/vbench.py: drop its folder so `import vbench` finds
# the official package of the interpreter's environment
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--videos", required=True)
    p.add_argument("--dimension", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--full-info", default="")
    p.add_argument("--device", default="cuda")
    p.add_argument("--name", default="harness")
    a = p.parse_args()
    import torch
    import vbench
    from vbench import VBench

    bench = VBench(torch.device(a.device), a.full_info, a.out)
    bench.evaluate(videos_path=a.videos, name=a.name, dimension_list=[a.dimension], mode="custom_input")
    result = os.path.join(a.out, f"{a.name}_eval_results.json")
    print(json.dumps({"results": result, "version": getattr(vbench, "__version__", "unknown")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
