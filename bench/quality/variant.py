#!/usr/bin/env python3
"""Writes a variant of a policy file with some fields changed, for a quality comparison made in
one `headwise eval` run beside the original (the variant is not committed).

  variant.py SRC OUT PATH=VALUE ...     e.g.  assignment.head_scores.threshold=0

PATH is dotted (list items by index); VALUE is JSON (a bare word is a string). Relative file
paths in the policy (head_scores.path) resolve against the policy's folder, so OUT is best
written beside SRC."""
import json
import pathlib
import sys


def main():
    src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    doc = json.loads(src.read_text())
    for edit in sys.argv[3:]:
        path, _, value = edit.partition("=")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        keys = path.split(".")
        node = doc
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            if last not in node:
                sys.exit(f"variant.py: {path}: no such field in {src}")
            node[last] = value
    doc["name"] = f'{doc["name"]}-{out.stem}'
    doc["description"] = f"Variant ({' '.join(sys.argv[3:])}) of {src.name}: " + doc["description"]
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
