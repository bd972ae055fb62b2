#!/usr/bin/env python3
"""The layering rule of docs/architecture.md, checked: a header under include/protomem includes only
headers of its own layer or below (the foundation from anywhere). Prints each violation and exits
1 if there is one."""
import pathlib
import re
import sys

# Layer of a header path relative to include/, lowest first.
LAYERS = [
    ("foundation", r"protomem/(types|view|error|device|detail/language)\.hpp"),
    ("communicator concept", r"protomem/comm/communicator\.hpp"),
    ("detail", r"protomem/detail/.*"),
    ("backend", r"protomem/backend/.*"),
    ("policies", r"protomem/policies/.*"),
    ("public", r"protomem/.*"),  # memory.hpp, sharded.hpp, cuda.hpp, torch.hpp, data/, comm/
]


def layer_of(header):
    for rank, (name, pattern) in enumerate(LAYERS):
        if re.fullmatch(pattern, header):
            return rank, name
    raise ValueError(header)


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "include")
    include = re.compile(r'^\s*#\s*include\s*<(protomem/[^>]+)>', re.M)
    problems = []
    headers = sorted(p for p in root.rglob("*") if p.suffix in (".hpp", ".cuh"))
    for path in headers:
        header = path.relative_to(root).as_posix()
        rank, name = layer_of(header)
        for used in include.findall(path.read_text()):
            used_rank, used_name = layer_of(used)
            if used_rank > rank:
                problems.append(f"{header} ({name}) includes {used} ({used_name})")
    for p in problems:
        print("layering:", p)
    print(f"{len(headers)} headers checked, {len(problems)} violations")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
